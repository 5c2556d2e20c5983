//! Position buckets: response position t (1-based) to a bucket index.
//!
//! The default edges are log2 buckets 1, 2, 3-4, 5-8, ..., 129-256, 257+ (docs/method.md, "Notation"),
//! i.e. bucket = min(ceil(log2 t), 9).

use crate::Error;

/// Lower bounds of the default log2 buckets.
pub const DEFAULT_BUCKET_EDGES: [u32; 10] = [1, 2, 3, 5, 9, 17, 33, 65, 129, 257];

/// Bucket boundaries given by their lower bounds; the last bucket is open-ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Buckets {
    lower: Vec<u32>,
}

impl Default for Buckets {
    fn default() -> Self {
        Buckets {
            lower: DEFAULT_BUCKET_EDGES.to_vec(),
        }
    }
}

impl Buckets {
    /// Edges must start at 1 and strictly increase.
    pub fn new(lower: Vec<u32>) -> Result<Self, Error> {
        if lower.first() != Some(&1) {
            return Err(Error::BadEdges("the first edge must be 1".into()));
        }
        if let Some(w) = lower.windows(2).find(|w| w[0] >= w[1]) {
            return Err(Error::BadEdges(format!(
                "edges must strictly increase ({} then {})",
                w[0], w[1]
            )));
        }
        Ok(Buckets { lower })
    }

    pub fn edges(&self) -> &[u32] {
        &self.lower
    }

    pub fn len(&self) -> usize {
        self.lower.len()
    }

    pub fn is_empty(&self) -> bool {
        self.lower.is_empty()
    }

    /// The bucket of 1-based position `pos`; `None` for position 0.
    #[inline]
    pub fn bucket_of(&self, pos: u32) -> Option<usize> {
        if pos == 0 {
            return None;
        }
        // index of the last lower bound <= pos
        Some(self.lower.partition_point(|&lo| lo <= pos) - 1)
    }

    /// Inclusive range of bucket `b`: (lo, hi), hi = None for the open last bucket.
    pub fn range(&self, b: usize) -> Option<(u32, Option<u32>)> {
        let lo = *self.lower.get(b)?;
        Some((lo, self.lower.get(b + 1).map(|next| next - 1)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ceil_log2(t: u32) -> usize {
        (32 - (t - 1).leading_zeros()) as usize
    }

    #[test]
    fn default_is_ceil_log2_capped() {
        let b = Buckets::default();
        for t in 1..5000u32 {
            assert_eq!(b.bucket_of(t), Some(ceil_log2(t).min(9)), "t={t}");
        }
        assert_eq!(b.bucket_of(u32::MAX), Some(9));
    }

    #[test]
    fn boundaries_and_ranges() {
        let b = Buckets::default();
        assert_eq!(b.bucket_of(0), None);
        assert_eq!(b.bucket_of(1), Some(0));
        assert_eq!(b.bucket_of(2), Some(1));
        assert_eq!(b.bucket_of(4), Some(2));
        assert_eq!(b.bucket_of(5), Some(3));
        assert_eq!(b.bucket_of(256), Some(8));
        assert_eq!(b.bucket_of(257), Some(9));
        assert_eq!(b.range(0), Some((1, Some(1))));
        assert_eq!(b.range(2), Some((3, Some(4))));
        assert_eq!(b.range(9), Some((257, None)));
        assert_eq!(b.range(10), None);
    }

    #[test]
    fn custom_edges_are_checked() {
        assert!(Buckets::new(vec![]).is_err());
        assert!(Buckets::new(vec![0, 4]).is_err());
        assert!(Buckets::new(vec![1, 4, 4]).is_err());
        let b = Buckets::new(vec![1, 11, 101]).unwrap();
        assert_eq!(b.bucket_of(10), Some(0));
        assert_eq!(b.bucket_of(11), Some(1));
        assert_eq!(b.bucket_of(1000), Some(2));
    }
}
