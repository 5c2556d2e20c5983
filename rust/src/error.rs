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
    /// A batch whose columns do not fit together.
    BadBatch(String),
    /// NaN or infinity in a scored column.
    NonFinite { row: usize, column: String },
    /// Reading or writing a file failed.
    Io(String),
    /// The file is not a `.bfti` index (wrong magic).
    NotAnIndex(String),
    /// The file was written by a newer bftcore.
    NewerVersion { found: u32, supported: u32 },
    /// The file is shorter or longer than its header says, or its header is unreadable.
    Corrupt(String),
    /// The stored checksum does not match the contents.
    ChecksumMismatch,
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
            Error::BadBatch(why) => write!(f, "bad batch: {why}"),
            Error::NonFinite { row, column } => {
                write!(f, "row {row}: {column} is NaN or infinite")
            }
            Error::Io(why) => write!(f, "{why}"),
            Error::NotAnIndex(path) => write!(f, "{path}: not a .bfti index (wrong magic bytes)"),
            Error::NewerVersion { found, supported } => write!(
                f,
                "index format version {found} is newer than this bftcore reads ({supported}); upgrade bftcore"
            ),
            Error::Corrupt(why) => write!(f, "corrupt index: {why}"),
            Error::ChecksumMismatch => {
                write!(f, "corrupt index: checksum mismatch (the file was altered or damaged)")
            }
        }
    }
}

impl std::error::Error for Error {}
