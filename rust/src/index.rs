//! The base-favored-token index (docs/method.md §1, "The index"): corpus-level aggregates of scored
//! response tokens, per label and position bucket, built in one streaming pass.
//!
//! Memory is O(partials x labels x buckets x vocab), never O(rows). Each `add_batch` splits its
//! rows into one contiguous range per partial state and fills the partials in parallel; `finish`
//! merges them in a fixed order, so a build is deterministic for a given thread count and budget.
//!
//! The partials are one per thread, but no more than fit a memory budget (`partial_count`): a
//! 128k vocabulary has 40 MiB of tables per label and partial, and one partial per thread of a
//! 64-thread machine would be gigabytes. A few partials keep the aggregation ahead of the Parquet
//! decoding that feeds it (benches/RESULTS.md), so the cap costs little time.

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::{Buckets, Error};

/// Float sums kept per (label, bucket), in this order.
pub const BUCKET_SUMS: [&str; 4] = ["kl_sum", "bf_mass_sum", "retain_sum", "log_ratio_sum"];

/// Everything about an index that is not an array. Stored as JSON in the `.bfti` file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Header {
    pub format: String,
    pub version: u32,
    pub vocab_size: usize,
    pub bucket_edges: Vec<u32>,
    /// Labels in array order (sorted by name in every finished index).
    pub labels: Vec<String>,
    /// Stored top-k of the base model per position.
    pub k: usize,
    /// Base-favored threshold on log pi_b - log pi_a.
    pub tau: f64,
    pub tokenizer_hash: String,
    /// Model ids and anything else the caller records (both models, scorer settings).
    pub meta: serde_json::Map<String, serde_json::Value>,
    /// Response tokens aggregated.
    pub rows: u64,
}

pub const FORMAT: &str = "bfti";
pub const VERSION: u32 = 1;

/// The aggregates of one label.
#[derive(Debug, Clone, PartialEq)]
pub struct LabelStats {
    /// [bucket] response tokens.
    pub bucket_count: Vec<u64>,
    /// [bucket] realised base-favored tokens (sum of r_t).
    pub bucket_bf_realised: Vec<u64>,
    /// [bucket][4] sums of KL_t, M_t, R_t, rho_t (see BUCKET_SUMS).
    pub bucket_sums: Vec<f64>,
    /// [bucket][token] occurrences as the realised token.
    pub token_occ: Vec<u64>,
    /// [bucket][token] realised base-favored occurrences.
    pub token_bf: Vec<u64>,
    /// [bucket][token] memberships in B_t (the token among the base top-k and favored).
    pub token_member: Vec<u64>,
    /// [bucket][token] sum of rho_t where the token was realised.
    pub token_log_ratio: Vec<f64>,
}

impl LabelStats {
    /// Bytes of one label's arrays (what `zeros` allocates); saturates rather than overflow.
    pub fn bytes(buckets: usize, vocab: usize) -> usize {
        let cells = buckets.saturating_mul(vocab);
        let counts = (2 + BUCKET_SUMS.len()).saturating_mul(buckets).saturating_add(cells.saturating_mul(4));
        counts.saturating_mul(8)
    }

    pub fn zeros(buckets: usize, vocab: usize) -> Self {
        LabelStats {
            bucket_count: vec![0; buckets],
            bucket_bf_realised: vec![0; buckets],
            bucket_sums: vec![0.0; buckets * BUCKET_SUMS.len()],
            token_occ: vec![0; buckets * vocab],
            token_bf: vec![0; buckets * vocab],
            token_member: vec![0; buckets * vocab],
            token_log_ratio: vec![0.0; buckets * vocab],
        }
    }

    pub fn add(&mut self, other: &LabelStats) {
        fn add_u(a: &mut [u64], b: &[u64]) {
            a.iter_mut().zip(b).for_each(|(x, y)| *x += y);
        }
        fn add_f(a: &mut [f64], b: &[f64]) {
            a.iter_mut().zip(b).for_each(|(x, y)| *x += y);
        }
        add_u(&mut self.bucket_count, &other.bucket_count);
        add_u(&mut self.bucket_bf_realised, &other.bucket_bf_realised);
        add_f(&mut self.bucket_sums, &other.bucket_sums);
        add_u(&mut self.token_occ, &other.token_occ);
        add_u(&mut self.token_bf, &other.token_bf);
        add_u(&mut self.token_member, &other.token_member);
        add_f(&mut self.token_log_ratio, &other.token_log_ratio);
    }
}

/// A finished index in memory: the header and one `LabelStats` per header label.
#[derive(Debug, Clone, PartialEq)]
pub struct IndexData {
    pub header: Header,
    pub stats: Vec<LabelStats>,
}

/// One batch of scored rows: parallel columns of n rows, top-k columns of n * k values.
#[derive(Debug, Clone, Copy)]
pub struct Batch<'a> {
    pub tokens: &'a [u32],
    pub positions: &'a [u32],
    pub lp_base: &'a [f32],
    pub lp_aligned: &'a [f32],
    pub kl: &'a [f32],
    pub bf_mass: &'a [f32],
    pub retain: &'a [f32],
    /// Per row, an index into `label_names`.
    pub label_codes: &'a [u16],
    pub label_names: &'a [String],
    pub topk_token: &'a [u32],
    pub topk_lp_base: &'a [f32],
    pub topk_lp_aligned: &'a [f32],
}

impl Batch<'_> {
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// Every row checked before any is added, so a bad batch leaves the builder unchanged.
    fn validate(&self, vocab: usize, k: usize) -> Result<(), Error> {
        let n = self.tokens.len();
        let columns = [
            ("pos", self.positions.len()),
            ("lp_base", self.lp_base.len()),
            ("lp_aligned", self.lp_aligned.len()),
            ("kl", self.kl.len()),
            ("bf_mass", self.bf_mass.len()),
            ("retain", self.retain.len()),
            ("label", self.label_codes.len()),
        ];
        for (name, len) in columns {
            if len != n {
                return Err(Error::BadBatch(format!("column {name} has {len} rows, token has {n}")));
            }
        }
        for (name, len) in [
            ("topk_token", self.topk_token.len()),
            ("topk_lp_base", self.topk_lp_base.len()),
            ("topk_lp_aligned", self.topk_lp_aligned.len()),
        ] {
            if len != n * k {
                return Err(Error::BadBatch(format!(
                    "column {name} has {len} values, expected {n} rows x k={k}"
                )));
            }
        }
        // Whole-column checks vectorise; only a failing column is searched for its first bad row.
        let floats: [(&str, &[f32], usize); 7] = [
            ("lp_base", self.lp_base, 1),
            ("lp_aligned", self.lp_aligned, 1),
            ("kl", self.kl, 1),
            ("bf_mass", self.bf_mass, 1),
            ("retain", self.retain, 1),
            ("topk_lp_base", self.topk_lp_base, k.max(1)),
            ("topk_lp_aligned", self.topk_lp_aligned, k.max(1)),
        ];
        for (name, col, per_row) in floats {
            if !col.iter().fold(true, |ok, v| ok & v.is_finite()) {
                let at = col.iter().position(|v| !v.is_finite()).unwrap_or(0);
                return Err(Error::NonFinite { row: at / per_row, column: name.into() });
            }
        }
        let tokens: [(&[u32], usize); 2] = [(self.tokens, 1), (self.topk_token, k.max(1))];
        for (col, per_row) in tokens {
            if col.iter().fold(0u32, |m, &t| m.max(t)) as usize >= vocab {
                let at = col.iter().position(|&t| t as usize >= vocab).unwrap_or(0);
                return Err(Error::TokenOutOfRange { row: at / per_row, token: col[at], vocab });
            }
        }
        if let Some(row) = self.positions.iter().position(|&p| p == 0) {
            return Err(Error::ZeroPosition { row });
        }
        let names = self.label_names.len();
        if let Some(row) = self.label_codes.iter().position(|&c| c as usize >= names) {
            return Err(Error::BadBatch(format!("row {row}: label code out of range")));
        }
        Ok(())
    }
}

/// Default bound on the bytes of the builder's partial states, all of them together.
pub const DEFAULT_PARTIALS_BUDGET: usize = 256 << 20;

/// Environment variable that sets the partials budget, in MiB, of builders made from Python.
pub const PARTIALS_BUDGET_ENV: &str = "BFTCORE_INDEX_MEMORY_MIB";

/// The partials budget from `BFTCORE_INDEX_MEMORY_MIB`, or the default when it is unset.
pub fn partials_budget_from_env() -> Result<usize, Error> {
    let value = match std::env::var(PARTIALS_BUDGET_ENV) {
        Err(std::env::VarError::NotPresent) => return Ok(DEFAULT_PARTIALS_BUDGET),
        Err(std::env::VarError::NotUnicode(v)) => v.to_string_lossy().into_owned(),
        Ok(v) => v,
    };
    value
        .trim()
        .parse::<usize>()
        .ok()
        .and_then(|mib| mib.checked_mul(1 << 20))
        .ok_or_else(|| {
            Error::BadArgument(format!("{PARTIALS_BUDGET_ENV}={value:?}: expected a whole number of MiB"))
        })
}

/// How many partial states `add_batch` fills in parallel: one per thread, but no more than fit
/// `budget` bytes with every label's tables, and at least one (the index itself needs one).
pub fn partial_count(threads: usize, labels: usize, buckets: usize, vocab: usize, budget: usize) -> usize {
    let per_partial = labels.max(1).saturating_mul(LabelStats::bytes(buckets, vocab));
    (budget / per_partial.max(1)).clamp(1, threads.max(1))
}

/// The most bytes a builder's partial states hold for these sizes: what the budget bounds.
/// Above the budget only when a single partial is (the index's own size).
pub fn partials_bytes(threads: usize, labels: usize, buckets: usize, vocab: usize, budget: usize) -> usize {
    let partials = partial_count(threads, labels, buckets, vocab, budget);
    partials.saturating_mul(labels).saturating_mul(LabelStats::bytes(buckets, vocab))
}

/// Streaming builder: feed batches, then `finish`.
pub struct IndexBuilder {
    header: Header,
    buckets: Buckets,
    labels: Vec<String>,
    /// partials[p][label]; a partial holds tables only once it got rows.
    partials: Vec<Vec<LabelStats>>,
    /// Bound on the bytes of all partials together (see `partial_count`).
    partials_budget: usize,
}

impl IndexBuilder {
    pub fn new(
        vocab_size: usize,
        buckets: Buckets,
        k: usize,
        tau: f64,
        tokenizer_hash: String,
        meta: serde_json::Map<String, serde_json::Value>,
    ) -> Result<Self, Error> {
        if vocab_size == 0 {
            return Err(Error::BadArgument("vocabulary size 0".into()));
        }
        if !tau.is_finite() {
            return Err(Error::BadArgument("tau must be finite".into()));
        }
        let header = Header {
            format: FORMAT.into(),
            version: VERSION,
            vocab_size,
            bucket_edges: buckets.edges().to_vec(),
            labels: vec![],
            k,
            tau,
            tokenizer_hash,
            meta,
            rows: 0,
        };
        Ok(IndexBuilder {
            header,
            buckets,
            labels: vec![],
            partials: vec![],
            partials_budget: DEFAULT_PARTIALS_BUDGET,
        })
    }

    /// Bound the partial states to `bytes` together (`DEFAULT_PARTIALS_BUDGET` otherwise).
    pub fn with_partials_budget(mut self, bytes: usize) -> Self {
        self.partials_budget = bytes;
        self
    }

    pub fn rows(&self) -> u64 {
        self.header.rows
    }

    /// Bytes the partial states hold now.
    pub fn partials_bytes(&self) -> usize {
        let per_label = LabelStats::bytes(self.buckets.len(), self.header.vocab_size);
        self.partials.iter().map(|p| p.len() * per_label).sum()
    }

    /// Keep `count` partials (at least one): extra ones merge into the first, in order (exact
    /// for counts, a fixed order for float sums); missing ones start empty.
    fn set_partial_count(&mut self, count: usize) {
        let count = count.max(1);
        if self.partials.len() > count {
            let extra = self.partials.split_off(count);
            let first = &mut self.partials[0];
            for partial in extra {
                for (label, table) in partial.into_iter().enumerate() {
                    // tables are filled for labels 0.. in order, so `first` has at least `label`
                    match first.get_mut(label) {
                        Some(acc) => acc.add(&table),
                        None => first.push(table),
                    }
                }
            }
        }
        self.partials.resize_with(count, Vec::new);
    }

    pub fn add_batch(&mut self, batch: &Batch) -> Result<(), Error> {
        let (vocab, k) = (self.header.vocab_size, self.header.k);
        batch.validate(vocab, k)?;
        // batch label codes -> builder label ids, allocating tables for new labels
        let mut map = Vec::with_capacity(batch.label_names.len());
        for name in batch.label_names {
            let id = match self.labels.iter().position(|l| l == name) {
                Some(id) => id,
                None => {
                    self.labels.push(name.clone());
                    self.labels.len() - 1
                }
            };
            map.push(id);
        }
        let n_labels = self.labels.len();
        let nb = self.buckets.len();
        // new labels can lower the count: the tables of every label must fit the budget
        let threads = rayon::current_num_threads();
        self.set_partial_count(partial_count(threads, n_labels, nb, vocab, self.partials_budget));
        let n = batch.len();
        let parts = self.partials.len();
        let per = n.div_ceil(parts).max(1);
        let buckets = &self.buckets;
        let tau = self.header.tau as f32;
        self.partials.par_iter_mut().enumerate().for_each(|(p, tables)| {
            let (lo, hi) = ((p * per).min(n), ((p + 1) * per).min(n));
            if lo == hi {
                return;
            }
            while tables.len() < n_labels {
                tables.push(LabelStats::zeros(nb, vocab));
            }
            for row in lo..hi {
                let t = &mut tables[map[batch.label_codes[row] as usize]];
                // validated: position >= 1
                let b = buckets.bucket_of(batch.positions[row]).unwrap_or(0);
                let tok = batch.tokens[row] as usize;
                let rho = batch.lp_base[row] - batch.lp_aligned[row];
                let topk = row * k..(row + 1) * k;
                // branch-free: membership is a coin flip per entry, a branch on it mispredicts
                let member = &mut t.token_member[b * vocab..(b + 1) * vocab];
                for j in topk {
                    let v = batch.topk_token[j] as usize;
                    member[v] += (batch.topk_lp_base[j] - batch.topk_lp_aligned[j] > tau) as u64;
                }
                let realised_bf = rho > tau && batch.topk_token[row * k..(row + 1) * k].contains(&(tok as u32));
                t.bucket_count[b] += 1;
                t.bucket_bf_realised[b] += realised_bf as u64;
                let sums = &mut t.bucket_sums[b * 4..b * 4 + 4];
                sums[0] += batch.kl[row] as f64;
                sums[1] += batch.bf_mass[row] as f64;
                sums[2] += batch.retain[row] as f64;
                sums[3] += rho as f64;
                let cell = b * vocab + tok;
                t.token_occ[cell] += 1;
                t.token_bf[cell] += realised_bf as u64;
                t.token_log_ratio[cell] += rho as f64;
            }
        });
        self.header.rows += n as u64;
        Ok(())
    }

    /// Merge the partial states (in a fixed order) into a finished index; labels sorted by name.
    /// The first partial becomes the index: no further copy of the tables.
    pub fn finish(mut self) -> IndexData {
        let nb = self.buckets.len();
        let vocab = self.header.vocab_size;
        self.set_partial_count(1);
        let mut total = self.partials.pop().unwrap_or_default();
        // labels named in a batch without any of its rows have no tables yet
        total.resize_with(self.labels.len(), || LabelStats::zeros(nb, vocab));
        let mut order: Vec<usize> = (0..self.labels.len()).collect();
        order.sort_by(|&a, &b| self.labels[a].cmp(&self.labels[b]));
        let mut header = self.header;
        header.labels = order.iter().map(|&i| self.labels[i].clone()).collect();
        let mut slots: Vec<Option<LabelStats>> = total.into_iter().map(Some).collect();
        let stats = order.iter().map(|&i| slots[i].take().expect("each label once")).collect();
        IndexData { header, stats }
    }
}

impl IndexData {
    /// The index of the union of both inputs' rows. Counts add exactly; float sums add.
    pub fn merge(&self, other: &IndexData) -> Result<IndexData, Error> {
        let (a, b) = (&self.header, &other.header);
        let mismatch = |what: &str, x: String, y: String| {
            Err(Error::ShapeMismatch(format!("{what} differs ({x} vs {y})")))
        };
        if a.vocab_size != b.vocab_size {
            return mismatch("vocabulary size", a.vocab_size.to_string(), b.vocab_size.to_string());
        }
        if a.bucket_edges != b.bucket_edges {
            return mismatch("bucket edges", format!("{:?}", a.bucket_edges), format!("{:?}", b.bucket_edges));
        }
        if a.k != b.k {
            return mismatch("k", a.k.to_string(), b.k.to_string());
        }
        if a.tau != b.tau {
            return mismatch("tau", a.tau.to_string(), b.tau.to_string());
        }
        if a.tokenizer_hash != b.tokenizer_hash {
            return mismatch("tokenizer hash", a.tokenizer_hash.clone(), b.tokenizer_hash.clone());
        }
        for key in ["base", "aligned"] {
            if a.meta.get(key) != b.meta.get(key) {
                return mismatch(
                    &format!("{key} model"),
                    format!("{:?}", a.meta.get(key)),
                    format!("{:?}", b.meta.get(key)),
                );
            }
        }
        let mut labels: Vec<String> = a.labels.iter().chain(&b.labels).cloned().collect();
        labels.sort();
        labels.dedup();
        let nb = a.bucket_edges.len();
        let stats = labels
            .iter()
            .map(|l| {
                let mut acc = LabelStats::zeros(nb, a.vocab_size);
                for side in [self, other] {
                    if let Some(i) = side.header.labels.iter().position(|x| x == l) {
                        acc.add(&side.stats[i]);
                    }
                }
                acc
            })
            .collect();
        let mut header = a.clone();
        header.labels = labels;
        header.rows = a.rows + b.rows;
        Ok(IndexData { header, stats })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A small batch in owned columns, for tests.
    pub struct Owned {
        pub tokens: Vec<u32>,
        pub positions: Vec<u32>,
        pub lp_base: Vec<f32>,
        pub lp_aligned: Vec<f32>,
        pub kl: Vec<f32>,
        pub bf_mass: Vec<f32>,
        pub retain: Vec<f32>,
        pub label_codes: Vec<u16>,
        pub label_names: Vec<String>,
        pub topk_token: Vec<u32>,
        pub topk_lp_base: Vec<f32>,
        pub topk_lp_aligned: Vec<f32>,
    }

    impl Owned {
        pub fn batch(&self) -> Batch<'_> {
            Batch {
                tokens: &self.tokens,
                positions: &self.positions,
                lp_base: &self.lp_base,
                lp_aligned: &self.lp_aligned,
                kl: &self.kl,
                bf_mass: &self.bf_mass,
                retain: &self.retain,
                label_codes: &self.label_codes,
                label_names: &self.label_names,
                topk_token: &self.topk_token,
                topk_lp_base: &self.topk_lp_base,
                topk_lp_aligned: &self.topk_lp_aligned,
            }
        }

        pub fn slice(&self, lo: usize, hi: usize, k: usize) -> Owned {
            Owned {
                tokens: self.tokens[lo..hi].to_vec(),
                positions: self.positions[lo..hi].to_vec(),
                lp_base: self.lp_base[lo..hi].to_vec(),
                lp_aligned: self.lp_aligned[lo..hi].to_vec(),
                kl: self.kl[lo..hi].to_vec(),
                bf_mass: self.bf_mass[lo..hi].to_vec(),
                retain: self.retain[lo..hi].to_vec(),
                label_codes: self.label_codes[lo..hi].to_vec(),
                label_names: self.label_names.clone(),
                topk_token: self.topk_token[lo * k..hi * k].to_vec(),
                topk_lp_base: self.topk_lp_base[lo * k..hi * k].to_vec(),
                topk_lp_aligned: self.topk_lp_aligned[lo * k..hi * k].to_vec(),
            }
        }
    }

    fn lcg(seed: &mut u64) -> u32 {
        *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (*seed >> 33) as u32
    }

    pub fn random(n: usize, k: usize, vocab: u32, seed: u64) -> Owned {
        let mut s = seed;
        let mut f = |scale: f32| (lcg(&mut s) % 10_000) as f32 / 10_000.0 * scale;
        let mut o = Owned {
            tokens: vec![],
            positions: vec![],
            lp_base: vec![],
            lp_aligned: vec![],
            kl: vec![],
            bf_mass: vec![],
            retain: vec![],
            label_codes: vec![],
            label_names: vec!["harmful".into(), "benign".into()],
            topk_token: vec![],
            topk_lp_base: vec![],
            topk_lp_aligned: vec![],
        };
        for i in 0..n {
            o.lp_base.push(-f(8.0));
            o.lp_aligned.push(-f(8.0));
            o.kl.push(f(5.0));
            o.bf_mass.push(f(1.0));
            o.retain.push(f(1.0));
            o.label_codes.push((i % 3 == 0) as u16);
            for _ in 0..k {
                o.topk_lp_base.push(-f(8.0));
                o.topk_lp_aligned.push(-f(8.0));
            }
        }
        let mut s2 = seed ^ 0x5555;
        for _ in 0..n {
            o.tokens.push(lcg(&mut s2) % vocab);
            o.positions.push(1 + lcg(&mut s2) % 300);
            for _ in 0..k {
                o.topk_token.push(lcg(&mut s2) % vocab);
            }
        }
        o
    }

    pub fn builder(vocab: usize, k: usize) -> IndexBuilder {
        IndexBuilder::new(vocab, Buckets::default(), k, 0.0, "tok".into(), Default::default()).unwrap()
    }

    /// Single-threaded, obviously-correct aggregation.
    fn naive(o: &Owned, vocab: usize, k: usize) -> Vec<(String, LabelStats)> {
        let b = Buckets::default();
        let mut out: Vec<(String, LabelStats)> = o
            .label_names
            .iter()
            .map(|l| (l.clone(), LabelStats::zeros(b.len(), vocab)))
            .collect();
        for row in 0..o.tokens.len() {
            let t = &mut out[o.label_codes[row] as usize].1;
            let bk = b.bucket_of(o.positions[row]).unwrap();
            let rho = o.lp_base[row] - o.lp_aligned[row];
            let tok = o.tokens[row] as usize;
            let mut r = false;
            for j in 0..k {
                let v = o.topk_token[row * k + j] as usize;
                if o.topk_lp_base[row * k + j] - o.topk_lp_aligned[row * k + j] > 0.0 {
                    t.token_member[bk * vocab + v] += 1;
                }
                if v == tok {
                    r = rho > 0.0;
                }
            }
            t.bucket_count[bk] += 1;
            t.bucket_bf_realised[bk] += r as u64;
            t.bucket_sums[bk * 4] += o.kl[row] as f64;
            t.bucket_sums[bk * 4 + 1] += o.bf_mass[row] as f64;
            t.bucket_sums[bk * 4 + 2] += o.retain[row] as f64;
            t.bucket_sums[bk * 4 + 3] += rho as f64;
            t.token_occ[bk * vocab + tok] += 1;
            t.token_bf[bk * vocab + tok] += r as u64;
            t.token_log_ratio[bk * vocab + tok] += rho as f64;
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    pub fn assert_close(a: &IndexData, b: &IndexData) {
        assert_eq!(a.header, b.header);
        for (x, y) in a.stats.iter().zip(&b.stats) {
            assert_eq!(x.bucket_count, y.bucket_count);
            assert_eq!(x.bucket_bf_realised, y.bucket_bf_realised);
            assert_eq!(x.token_occ, y.token_occ);
            assert_eq!(x.token_bf, y.token_bf);
            assert_eq!(x.token_member, y.token_member);
            for (p, q) in x.bucket_sums.iter().zip(&y.bucket_sums) {
                assert!((p - q).abs() <= 1e-9 * p.abs().max(1.0), "{p} vs {q}");
            }
            for (p, q) in x.token_log_ratio.iter().zip(&y.token_log_ratio) {
                assert!((p - q).abs() <= 1e-9 * p.abs().max(1.0), "{p} vs {q}");
            }
        }
    }

    #[test]
    fn builder_equals_naive() {
        let (vocab, k) = (50, 4);
        let o = random(5000, k, vocab as u32, 1);
        let mut bld = builder(vocab, k);
        bld.add_batch(&o.slice(0, 1234, k).batch()).unwrap();
        bld.add_batch(&o.slice(1234, 5000, k).batch()).unwrap();
        let idx = bld.finish();
        assert_eq!(idx.header.rows, 5000);
        assert_eq!(idx.header.labels, vec!["benign".to_string(), "harmful".to_string()]);
        let want = naive(&o, vocab, k);
        for ((label, w), (l2, got)) in want.iter().zip(idx.header.labels.iter().zip(&idx.stats)) {
            assert_eq!(label, l2);
            assert_eq!(w.token_occ, got.token_occ);
            assert_eq!(w.token_member, got.token_member);
            assert_eq!(w.bucket_bf_realised, got.bucket_bf_realised);
            for (p, q) in w.bucket_sums.iter().zip(&got.bucket_sums) {
                assert!((p - q).abs() < 1e-9 * p.abs().max(1.0));
            }
        }
    }

    #[test]
    fn merge_of_a_split_is_the_whole_in_any_order() {
        let (vocab, k) = (40, 3);
        let o = random(3000, k, vocab as u32, 2);
        let build = |lo: usize, hi: usize| {
            let mut b = builder(vocab, k);
            b.add_batch(&o.slice(lo, hi, k).batch()).unwrap();
            b.finish()
        };
        let whole = build(0, 3000);
        let (x, y, z) = (build(0, 1000), build(1000, 2500), build(2500, 3000));
        assert_close(&x.merge(&y).unwrap().merge(&z).unwrap(), &whole);
        assert_close(&z.merge(&x).unwrap().merge(&y).unwrap(), &whole);
    }

    #[test]
    fn merge_refuses_incompatible_indexes() {
        let o = random(10, 2, 10, 3);
        let mut a = builder(10, 2);
        a.add_batch(&o.batch()).unwrap();
        let a = a.finish();
        let mut other = builder(10, 2).finish();
        other.header.tokenizer_hash = "other".into();
        assert!(a.merge(&other).is_err());
        let mut other = builder(10, 2).finish();
        other.header.tau = 0.5;
        assert!(a.merge(&other).is_err());
    }

    #[test]
    fn bad_batches_change_nothing() {
        let o = random(100, 2, 10, 4);
        let mut b = builder(10, 2);
        let mut bad = o.slice(0, 100, 2);
        bad.kl[57] = f32::NAN;
        let err = b.add_batch(&bad.batch()).unwrap_err();
        assert_eq!(err, Error::NonFinite { row: 57, column: "kl".into() });
        let mut bad = o.slice(0, 100, 2);
        bad.topk_token[9] = 10;
        assert!(matches!(b.add_batch(&bad.batch()), Err(Error::TokenOutOfRange { row: 4, .. })));
        let mut bad = o.slice(0, 100, 2);
        bad.topk_lp_base.pop();
        assert!(matches!(b.add_batch(&bad.batch()), Err(Error::BadBatch(_))));
        assert_eq!(b.rows(), 0);
        b.add_batch(&o.batch()).unwrap();
        assert_eq!(b.rows(), 100);
    }

    #[test]
    fn empty_batches_and_k_zero() {
        let mut b = builder(5, 0);
        let o = random(0, 0, 5, 5);
        b.add_batch(&o.batch()).unwrap();
        let o = random(7, 0, 5, 6);
        b.add_batch(&o.batch()).unwrap();
        let idx = b.finish();
        assert_eq!(idx.header.rows, 7);
        let bf: u64 = idx.stats.iter().map(|s| s.bucket_bf_realised.iter().sum::<u64>()).sum();
        assert_eq!(bf, 0, "with no stored top-k, no token is base-favored");
    }

    /// Run `f` in a pool of `threads` threads, whatever the machine has.
    fn with_threads<T: Send>(threads: usize, f: impl FnOnce() -> T + Send) -> T {
        rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap().install(f)
    }

    #[test]
    fn partials_fit_the_budget_for_a_128k_vocabulary_on_64_threads() {
        let (threads, buckets, vocab) = (64, 10, 128_000);
        let per_label = LabelStats::bytes(buckets, vocab); // 41 MB
        for labels in 1..=16 {
            let capped = partials_bytes(threads, labels, buckets, vocab, DEFAULT_PARTIALS_BUDGET);
            // the budget, or one partial where that alone is over it (7 labels and up here)
            let bound = DEFAULT_PARTIALS_BUDGET.max(labels * per_label);
            assert!(capped <= bound, "{labels} labels: {capped} bytes");
        }
        assert!(partials_bytes(threads, 2, buckets, vocab, DEFAULT_PARTIALS_BUDGET) <= DEFAULT_PARTIALS_BUDGET);
        assert_eq!(partial_count(threads, 2, buckets, vocab, DEFAULT_PARTIALS_BUDGET), 3);
        // one partial per thread, as before the cap: 64 x 2 labels x 41 MB, over 5 GB
        let uncapped = partials_bytes(threads, 2, buckets, vocab, usize::MAX);
        assert_eq!(uncapped, 64 * 2 * per_label);
        assert!(uncapped > 5_000_000_000);
        // a small vocabulary keeps one partial per thread
        assert_eq!(partial_count(threads, 2, buckets, 1000, DEFAULT_PARTIALS_BUDGET), 64);
    }

    #[test]
    fn one_partial_when_even_one_is_over_the_budget() {
        // the index itself must exist: one partial of all labels, however large
        let (labels, buckets, vocab) = (20, 10, 1 << 20);
        assert_eq!(partial_count(64, labels, buckets, vocab, DEFAULT_PARTIALS_BUDGET), 1);
        assert_eq!(
            partials_bytes(64, labels, buckets, vocab, DEFAULT_PARTIALS_BUDGET),
            labels * LabelStats::bytes(buckets, vocab)
        );
        assert_eq!(partial_count(64, 2, 10, 100, 0), 1);
        assert_eq!(partial_count(0, 0, 10, 100, usize::MAX), 1);
        assert_eq!(LabelStats::bytes(usize::MAX, usize::MAX), usize::MAX, "saturates, never wraps");
    }

    /// `o` with a third label on every fifth row.
    fn with_third_label(mut o: Owned) -> Owned {
        o.label_names.push("x".into());
        for code in o.label_codes.iter_mut().step_by(5) {
            *code = 2;
        }
        o
    }

    #[test]
    fn builder_holds_no_more_than_its_budget() {
        let (vocab, k) = (50, 3);
        let per_label = LabelStats::bytes(Buckets::default().len(), vocab);
        // room for 3 partials of 2 labels; 2 partials once a third label arrives
        let budget = 6 * per_label;
        with_threads(8, || {
            let mut b = builder(vocab, k).with_partials_budget(budget);
            b.add_batch(&random(4000, k, vocab as u32, 21).batch()).unwrap();
            assert_eq!(b.partials.len(), 3);
            assert_eq!(b.partials_bytes(), budget);
            b.add_batch(&with_third_label(random(4000, k, vocab as u32, 22)).batch()).unwrap();
            assert_eq!(b.partials.len(), 2);
            assert!(b.partials_bytes() <= budget, "{} > {budget}", b.partials_bytes());
            let mut unbounded = builder(vocab, k);
            unbounded.add_batch(&random(4000, k, vocab as u32, 21).batch()).unwrap();
            assert_eq!(unbounded.partials.len(), 8, "one partial per thread without a tight budget");
        });
    }

    #[test]
    fn capped_build_equals_uncapped_build() {
        let (vocab, k) = (40, 4);
        let first = random(5000, k, vocab as u32, 31);
        let second = with_third_label(random(3000, k, vocab as u32, 32));
        let build = |budget: usize| {
            with_threads(8, || {
                let mut b = builder(vocab, k).with_partials_budget(budget);
                b.add_batch(&first.slice(0, 2000, k).batch()).unwrap();
                b.add_batch(&second.batch()).unwrap();
                b.add_batch(&first.slice(2000, 5000, k).batch()).unwrap();
                b.finish()
            })
        };
        let per_label = LabelStats::bytes(Buckets::default().len(), vocab);
        let uncapped = build(usize::MAX);
        for budget in [0, 3 * per_label, 8 * per_label] {
            assert_close(&build(budget), &uncapped);
        }
        // one partial adds in row order: the single-threaded reference, float sums too
        let single = build(0);
        let reference = with_threads(1, || {
            let mut b = builder(vocab, k);
            b.add_batch(&first.slice(0, 2000, k).batch()).unwrap();
            b.add_batch(&second.batch()).unwrap();
            b.add_batch(&first.slice(2000, 5000, k).batch()).unwrap();
            b.finish()
        });
        assert_eq!(single, reference);
    }

    #[test]
    fn partials_budget_from_the_environment() {
        // the only test that sets the variable, so no other test sees it change
        std::env::remove_var(PARTIALS_BUDGET_ENV);
        assert_eq!(partials_budget_from_env(), Ok(DEFAULT_PARTIALS_BUDGET));
        std::env::set_var(PARTIALS_BUDGET_ENV, " 64 ");
        assert_eq!(partials_budget_from_env(), Ok(64 << 20));
        std::env::set_var(PARTIALS_BUDGET_ENV, "lots");
        assert!(matches!(partials_budget_from_env(), Err(Error::BadArgument(_))));
        std::env::remove_var(PARTIALS_BUDGET_ENV);
    }
}
