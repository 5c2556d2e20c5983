//! bftcore's Rust core: position buckets and token statistics over scored corpora.
//!
//! Python-free: `cargo test` needs no interpreter. The PyO3 bindings live in
//! `python.rs` and are compiled only with the `python` feature (as in tiktoken).

pub mod bfti;
mod buckets;
mod counts;
mod error;
pub mod index;
#[cfg(feature = "python")]
mod python;
pub mod query;
pub mod shard;

pub use buckets::{Buckets, DEFAULT_BUCKET_EDGES};
pub use counts::TokenBucketCounts;
pub use error::Error;
pub use index::{Batch, Header, IndexBuilder, IndexData, LabelStats};
pub use query::{BucketTable, IndexQuery, LabelView, TokenHistogram, TopToken};
