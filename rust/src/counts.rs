//! Token occurrences per position bucket: the first aggregate of the index.
//!
//! Built in parallel (rayon) with per-thread partial tables merged at the end, so
//! memory is O(threads x buckets x vocab), never O(rows).

use rayon::prelude::*;

use crate::{Buckets, Error};

/// Rows per parallel work item: large enough to amortise a partial table.
const CHUNK: usize = 1 << 16;

/// counts[bucket * vocab + token] = occurrences of `token` at a position in `bucket`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenBucketCounts {
    vocab: usize,
    buckets: Buckets,
    counts: Vec<u64>,
}

impl TokenBucketCounts {
    pub fn zeros(vocab: usize, buckets: Buckets) -> Self {
        let counts = vec![0; vocab * buckets.len()];
        TokenBucketCounts {
            vocab,
            buckets,
            counts,
        }
    }

    /// Count `tokens[i]` at 1-based `positions[i]` over all rows.
    pub fn from_rows(
        tokens: &[u32],
        positions: &[u32],
        vocab: usize,
        buckets: &Buckets,
    ) -> Result<Self, Error> {
        if tokens.len() != positions.len() {
            return Err(Error::LengthMismatch {
                tokens: tokens.len(),
                positions: positions.len(),
            });
        }
        let empty = || TokenBucketCounts::zeros(vocab, buckets.clone());
        tokens
            .par_chunks(CHUNK)
            .zip(positions.par_chunks(CHUNK))
            .enumerate()
            .try_fold(empty, |mut acc, (chunk, (toks, poss))| {
                acc.add_rows(toks, poss, chunk * CHUNK)?;
                Ok(acc)
            })
            .try_reduce(empty, |mut a, b| {
                a.merge(&b)?;
                Ok(a)
            })
    }

    fn add_rows(&mut self, tokens: &[u32], positions: &[u32], first_row: usize) -> Result<(), Error> {
        for (i, (&tok, &pos)) in tokens.iter().zip(positions).enumerate() {
            let row = first_row + i;
            let b = self.buckets.bucket_of(pos).ok_or(Error::ZeroPosition { row })?;
            if tok as usize >= self.vocab {
                return Err(Error::TokenOutOfRange {
                    row,
                    token: tok,
                    vocab: self.vocab,
                });
            }
            self.counts[b * self.vocab + tok as usize] += 1;
        }
        Ok(())
    }

    /// Exact merge: the counts of the union of both inputs.
    pub fn merge(&mut self, other: &TokenBucketCounts) -> Result<(), Error> {
        if self.vocab != other.vocab || self.buckets != other.buckets {
            return Err(Error::ShapeMismatch(format!(
                "vocab {} / {} buckets vs vocab {} / {} buckets",
                self.vocab,
                self.buckets.len(),
                other.vocab,
                other.buckets.len()
            )));
        }
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        Ok(())
    }

    pub fn vocab(&self) -> usize {
        self.vocab
    }

    pub fn buckets(&self) -> &Buckets {
        &self.buckets
    }

    /// Row-major [bucket][token] table.
    pub fn as_slice(&self) -> &[u64] {
        &self.counts
    }

    pub fn into_vec(self) -> Vec<u64> {
        self.counts
    }

    pub fn get(&self, bucket: usize, token: u32) -> u64 {
        self.counts[bucket * self.vocab + token as usize]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Straightforward single-threaded reference.
    fn naive(tokens: &[u32], positions: &[u32], vocab: usize, b: &Buckets) -> Vec<u64> {
        let mut out = vec![0u64; vocab * b.len()];
        for (&t, &p) in tokens.iter().zip(positions) {
            out[b.bucket_of(p).unwrap() * vocab + t as usize] += 1;
        }
        out
    }

    /// Small deterministic generator so the test needs no extra crate.
    fn lcg(seed: &mut u64) -> u32 {
        *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (*seed >> 33) as u32
    }

    #[test]
    fn parallel_equals_naive_across_chunks() {
        let mut s = 7u64;
        let n = 3 * CHUNK + 123;
        let vocab = 97;
        let tokens: Vec<u32> = (0..n).map(|_| lcg(&mut s) % vocab as u32).collect();
        let positions: Vec<u32> = (0..n).map(|_| 1 + lcg(&mut s) % 600).collect();
        let b = Buckets::default();
        let got = TokenBucketCounts::from_rows(&tokens, &positions, vocab, &b).unwrap();
        assert_eq!(got.as_slice(), naive(&tokens, &positions, vocab, &b).as_slice());
        assert_eq!(got.as_slice().iter().sum::<u64>(), n as u64);
    }

    #[test]
    fn merge_is_the_union() {
        let b = Buckets::default();
        let (t, p) = (vec![1u32, 2, 3, 1], vec![1u32, 2, 3, 300]);
        let whole = TokenBucketCounts::from_rows(&t, &p, 4, &b).unwrap();
        let mut left = TokenBucketCounts::from_rows(&t[..2], &p[..2], 4, &b).unwrap();
        let right = TokenBucketCounts::from_rows(&t[2..], &p[2..], 4, &b).unwrap();
        left.merge(&right).unwrap();
        assert_eq!(left, whole);
        assert_eq!(whole.get(9, 1), 1);
        let other = TokenBucketCounts::zeros(5, b);
        assert!(left.merge(&other).is_err());
    }

    #[test]
    fn bad_rows_are_errors_with_their_row() {
        let b = Buckets::default();
        let err = TokenBucketCounts::from_rows(&[0, 9], &[1, 2], 4, &b).unwrap_err();
        assert_eq!(err, Error::TokenOutOfRange { row: 1, token: 9, vocab: 4 });
        let err = TokenBucketCounts::from_rows(&[0, 1], &[1, 0], 4, &b).unwrap_err();
        assert_eq!(err, Error::ZeroPosition { row: 1 });
        let err = TokenBucketCounts::from_rows(&[0], &[1, 2], 4, &b).unwrap_err();
        assert!(matches!(err, Error::LengthMismatch { .. }));
    }

    #[test]
    fn empty_input_gives_zeros() {
        let b = Buckets::default();
        let got = TokenBucketCounts::from_rows(&[], &[], 3, &b).unwrap();
        assert_eq!(got, TokenBucketCounts::zeros(3, b));
    }
}
