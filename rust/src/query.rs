//! Queries over a finished index, mapped from a file or in memory: label lookup, one label's
//! per-bucket table, the top base-favored tokens of a bucket, one token's histogram.
//!
//! Every answer is a plain Rust value; the Python bindings only convert it to numpy.

use std::cmp::Ordering;

use crate::index::{Header, IndexData, BUCKET_SUMS};
use crate::Error;

/// Borrowed views of one label's arrays (layouts as in `LabelStats`).
#[derive(Debug, Clone, Copy)]
pub struct LabelView<'a> {
    pub bucket_count: &'a [u64],
    pub bucket_bf_realised: &'a [u64],
    pub bucket_sums: &'a [f64],
    pub token_occ: &'a [u64],
    pub token_bf: &'a [u64],
    pub token_member: &'a [u64],
    pub token_log_ratio: &'a [f64],
}

/// One label's per-bucket aggregates.
#[derive(Debug, Clone, PartialEq)]
pub struct BucketTable {
    /// [bucket] response tokens.
    pub count: Vec<u64>,
    /// [bucket] realised base-favored tokens.
    pub bf_realised: Vec<u64>,
    /// [bucket] sums of KL_t, M_t, R_t, rho_t (in the order of `BUCKET_SUMS`).
    pub sums: Vec<[f64; BUCKET_SUMS.len()]>,
}

/// One token of a top-n list, with its counts in the (label, bucket) asked for.
#[derive(Debug, Clone, PartialEq)]
pub struct TopToken {
    pub token: u32,
    /// Memberships in B_t: the ranking key.
    pub member: u64,
    /// Occurrences as the realised token.
    pub occ: u64,
    /// Realised base-favored occurrences.
    pub bf: u64,
    /// Sum of rho_t where the token was realised.
    pub log_ratio_sum: f64,
}

/// One token's counts in every bucket of one label.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenHistogram {
    pub occ: Vec<u64>,
    pub bf: Vec<u64>,
    pub member: Vec<u64>,
    pub log_ratio_sum: Vec<f64>,
}

/// Read-only queries over a finished index: implement `header` and `label_at`, get the rest.
pub trait IndexQuery {
    fn header(&self) -> &Header;

    /// The arrays of the label at `i` in header order (`i` < the number of labels).
    fn label_at(&self, i: usize) -> LabelView<'_>;

    /// The arrays of the label named `label`.
    fn label(&self, label: &str) -> Result<LabelView<'_>, Error> {
        let labels = &self.header().labels;
        match labels.iter().position(|l| l == label) {
            Some(i) => Ok(self.label_at(i)),
            None => Err(Error::NoSuchLabel { label: label.into(), labels: labels.clone() }),
        }
    }

    /// Per-bucket counts and sums of one label.
    fn bucket_table(&self, label: &str) -> Result<BucketTable, Error> {
        let l = self.label(label)?;
        let sums = l
            .bucket_sums
            .chunks_exact(BUCKET_SUMS.len())
            .map(|s| s.try_into().expect("chunks of exactly BUCKET_SUMS.len()"))
            .collect();
        Ok(BucketTable {
            count: l.bucket_count.to_vec(),
            bf_realised: l.bucket_bf_realised.to_vec(),
            sums,
        })
    }

    /// The n tokens most often in B_t at positions of `bucket`, most first; ties go to the
    /// smaller token id, so the answer is unique. Tokens never in B_t are left out, so the
    /// list can be shorter than n.
    fn top_tokens(&self, label: &str, bucket: usize, n: usize) -> Result<Vec<TopToken>, Error> {
        let l = self.label(label)?;
        let (vocab, buckets) = (self.header().vocab_size, self.header().bucket_edges.len());
        if bucket >= buckets {
            return Err(Error::NoSuchBucket { bucket, buckets });
        }
        let row = bucket * vocab..(bucket + 1) * vocab;
        let members = &l.token_member[row.clone()];
        let mut ids: Vec<usize> = (0..vocab).filter(|&t| members[t] > 0).collect();
        let ranking = |a: &usize, b: &usize| -> Ordering { members[*b].cmp(&members[*a]).then(a.cmp(b)) };
        // select the n first before sorting them: n is small, the vocabulary is not
        if n < ids.len() {
            ids.select_nth_unstable_by(n, ranking);
            ids.truncate(n);
        }
        ids.sort_unstable_by(ranking);
        let at = |t: usize| row.start + t;
        Ok(ids
            .into_iter()
            .map(|t| TopToken {
                token: t as u32, // t < vocab, and token ids are u32
                member: members[t],
                occ: l.token_occ[at(t)],
                bf: l.token_bf[at(t)],
                log_ratio_sum: l.token_log_ratio[at(t)],
            })
            .collect())
    }

    /// The counts of `token` in every bucket of one label.
    fn token_histogram(&self, label: &str, token: u32) -> Result<TokenHistogram, Error> {
        let vocab = self.header().vocab_size;
        if token as usize >= vocab {
            return Err(Error::NoSuchToken { token, vocab });
        }
        let l = self.label(label)?;
        let buckets = self.header().bucket_edges.len();
        let cells = || (0..buckets).map(|b| b * vocab + token as usize);
        Ok(TokenHistogram {
            occ: cells().map(|c| l.token_occ[c]).collect(),
            bf: cells().map(|c| l.token_bf[c]).collect(),
            member: cells().map(|c| l.token_member[c]).collect(),
            log_ratio_sum: cells().map(|c| l.token_log_ratio[c]).collect(),
        })
    }
}

impl IndexQuery for IndexData {
    fn header(&self) -> &Header {
        &self.header
    }

    fn label_at(&self, i: usize) -> LabelView<'_> {
        let s = &self.stats[i];
        LabelView {
            bucket_count: &s.bucket_count,
            bucket_bf_realised: &s.bucket_bf_realised,
            bucket_sums: &s.bucket_sums,
            token_occ: &s.token_occ,
            token_bf: &s.token_bf,
            token_member: &s.token_member,
            token_log_ratio: &s.token_log_ratio,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::tests::{builder, random};
    use crate::index::LabelStats;

    fn sample(vocab: usize) -> IndexData {
        let o = random(3000, 4, vocab as u32, 11);
        let mut b = builder(vocab, 4);
        b.add_batch(&o.batch()).unwrap();
        b.finish()
    }

    fn stats<'a>(idx: &'a IndexData, label: &str) -> &'a LabelStats {
        let i = idx.header.labels.iter().position(|l| l == label).unwrap();
        &idx.stats[i]
    }

    /// Every token with a membership, sorted by (membership desc, id asc), cut to n.
    fn naive_top(idx: &IndexData, label: &str, bucket: usize, n: usize) -> Vec<TopToken> {
        let (s, v) = (stats(idx, label), idx.header.vocab_size);
        let mut all: Vec<TopToken> = (0..v)
            .filter(|&t| s.token_member[bucket * v + t] > 0)
            .map(|t| TopToken {
                token: t as u32,
                member: s.token_member[bucket * v + t],
                occ: s.token_occ[bucket * v + t],
                bf: s.token_bf[bucket * v + t],
                log_ratio_sum: s.token_log_ratio[bucket * v + t],
            })
            .collect();
        all.sort_by(|a, b| b.member.cmp(&a.member).then(a.token.cmp(&b.token)));
        all.truncate(n);
        all
    }

    #[test]
    fn top_tokens_equal_a_full_sort() {
        let idx = sample(60);
        for label in ["benign", "harmful"] {
            for bucket in 0..idx.header.bucket_edges.len() {
                for n in [0, 1, 3, 10, 59, 60, 61, 1000] {
                    assert_eq!(
                        idx.top_tokens(label, bucket, n).unwrap(),
                        naive_top(&idx, label, bucket, n),
                        "{label} bucket {bucket} n {n}"
                    );
                }
            }
        }
    }

    #[test]
    fn ties_go_to_the_smaller_token_id() {
        let mut idx = builder(6, 0).finish();
        idx.header.labels = vec!["x".into()];
        let nb = idx.header.bucket_edges.len();
        let mut s = LabelStats::zeros(nb, 6);
        s.token_member[..6].copy_from_slice(&[2, 5, 0, 5, 2, 7]);
        idx.stats = vec![s];
        let tokens = |n| idx.top_tokens("x", 0, n).unwrap().iter().map(|t| t.token).collect::<Vec<_>>();
        assert_eq!(tokens(10), vec![5, 1, 3, 0, 4], "zero memberships are left out");
        assert_eq!(tokens(2), vec![5, 1]);
        assert_eq!(tokens(3), vec![5, 1, 3]);
        assert_eq!(tokens(4), vec![5, 1, 3, 0]);
        assert!(idx.top_tokens("x", 1, 10).unwrap().is_empty(), "an empty bucket has no top tokens");
    }

    #[test]
    fn bucket_tables_and_histograms_are_the_arrays() {
        let idx = sample(30);
        let v = idx.header.vocab_size;
        for label in ["benign", "harmful"] {
            let s = stats(&idx, label);
            let t = idx.bucket_table(label).unwrap();
            assert_eq!(t.count, s.bucket_count);
            assert_eq!(t.bf_realised, s.bucket_bf_realised);
            assert_eq!(t.sums.concat(), s.bucket_sums);
            for token in [0u32, 7, 29] {
                let h = idx.token_histogram(label, token).unwrap();
                for b in 0..idx.header.bucket_edges.len() {
                    let c = b * v + token as usize;
                    assert_eq!(h.occ[b], s.token_occ[c]);
                    assert_eq!(h.bf[b], s.token_bf[c]);
                    assert_eq!(h.member[b], s.token_member[c]);
                    assert_eq!(h.log_ratio_sum[b], s.token_log_ratio[c]);
                }
            }
        }
    }

    #[test]
    fn unknown_labels_buckets_and_tokens_are_errors() {
        let idx = sample(30);
        let nb = idx.header.bucket_edges.len();
        let err = idx.top_tokens("nope", 0, 5).unwrap_err();
        assert_eq!(err, Error::NoSuchLabel { label: "nope".into(), labels: idx.header.labels.clone() });
        assert!(err.to_string().contains("benign, harmful"), "{err}");
        assert!(matches!(idx.bucket_table("nope"), Err(Error::NoSuchLabel { .. })));
        assert!(matches!(idx.token_histogram("nope", 0), Err(Error::NoSuchLabel { .. })));
        assert_eq!(idx.top_tokens("benign", nb, 5).unwrap_err(), Error::NoSuchBucket { bucket: nb, buckets: nb });
        assert!(idx.top_tokens("benign", nb - 1, 5).is_ok());
        assert_eq!(idx.token_histogram("benign", 30).unwrap_err(), Error::NoSuchToken { token: 30, vocab: 30 });
        assert!(idx.token_histogram("benign", 29).is_ok());
    }

    #[test]
    fn an_index_without_labels_has_none_to_query() {
        let idx = builder(5, 2).finish();
        assert!(idx.header.labels.is_empty());
        let err = idx.bucket_table("harmful").unwrap_err();
        assert_eq!(err, Error::NoSuchLabel { label: "harmful".into(), labels: vec![] });
        assert!(err.to_string().contains("no labels"), "{err}");
        assert!(idx.top_tokens("", 0, 5).is_err());
    }
}
