use std::fmt;

/// Every way the core can refuse its input. Nothing in the core panics on bad data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// Bucket edges must start at 1 and strictly increase.
    BadEdges(String),
    /// Positions count response tokens from 1.
    ZeroPosition { row: usize },
    /// A token id at or above the vocabulary size.
    TokenOutOfRange { row: usize, token: u32, vocab: usize },
    /// Parallel columns of different lengths.
    LengthMismatch { tokens: usize, positions: usize },
    /// Two aggregates of different shapes cannot merge.
    ShapeMismatch(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::BadEdges(why) => write!(f, "bad bucket edges: {why}"),
            Error::ZeroPosition { row } => {
                write!(f, "row {row}: position 0 (positions count from 1)")
            }
            Error::TokenOutOfRange { row, token, vocab } => {
                write!(f, "row {row}: token id {token} is outside the vocabulary of {vocab}")
            }
            Error::LengthMismatch { tokens, positions } => write!(
                f,
                "tokens and positions differ in length ({tokens} vs {positions})"
            ),
            Error::ShapeMismatch(why) => write!(f, "cannot merge: {why}"),
        }
    }
}

impl std::error::Error for Error {}
