use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

/// Every way the core can refuse its input. Nothing in the core panics on bad data.
///
/// Three families, which the Python bindings raise as three kinds of exception: `Io` (the file
/// system refused: an `OSError` subclass chosen by the kind), `State` (a call the object's state
/// does not allow: a `StateError`) and every other variant (bad data: a `CoreError`, a ValueError).
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
    /// A constructor argument no index can have (vocabulary size 0, a non-finite tau, ...).
    BadArgument(String),
    /// NaN or infinity in a scored column.
    NonFinite { row: usize, column: String },
    /// Reading or writing a file failed. The kind and the OS error number are kept, so that a
    /// missing file and a refused one stay different errors all the way to Python.
    Io {
        path: PathBuf,
        kind: io::ErrorKind,
        /// The OS error number (errno), where the error came from the OS.
        errno: Option<i32>,
        /// The OS's description, without the "(os error N)" that Rust appends.
        message: String,
    },
    /// The file is not a `.bfti` index (wrong magic).
    NotAnIndex(String),
    /// The file was written by a newer bftcore.
    NewerVersion { found: u32, supported: u32 },
    /// The file is shorter or longer than its header says, or its header is unreadable.
    Corrupt(String),
    /// The stored checksum does not match the contents.
    ChecksumMismatch,
    /// A scored shard the core cannot read: not Arrow IPC, damaged, or other columns.
    BadShard(String),
    /// A merge of no indexes at all.
    NothingToMerge,
    /// A query for a label the index does not have.
    NoSuchLabel { label: String, labels: Vec<String> },
    /// A query for a bucket past the index's last.
    NoSuchBucket { bucket: usize, buckets: usize },
    /// A query for a token id at or above the index's vocabulary size.
    NoSuchToken { token: u32, vocab: usize },
    /// A call the object's state does not allow: a builder used after it wrote its index, or
    /// after a call on it panicked. A bug in the caller, not bad data.
    State(String),
}

impl Error {
    /// The I/O error `e` on `path`, keeping its kind and OS error number.
    pub fn io(path: &Path, e: &io::Error) -> Self {
        let errno = e.raw_os_error();
        let text = e.to_string();
        let message = match errno {
            Some(n) => text.strip_suffix(&format!(" (os error {n})")).unwrap_or(&text).to_string(),
            None => text,
        };
        Error::Io { path: path.to_path_buf(), kind: e.kind(), errno, message }
    }
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
            Error::BadArgument(why) => write!(f, "bad argument: {why}"),
            Error::NonFinite { row, column } => {
                write!(f, "row {row}: {column} is NaN or infinite")
            }
            Error::Io { path, message, .. } => write!(f, "{}: {message}", path.display()),
            Error::NotAnIndex(path) => write!(f, "{path}: not a .bfti index (wrong magic bytes)"),
            Error::NewerVersion { found, supported } => write!(
                f,
                "index format version {found} is newer than this bftcore reads ({supported}); upgrade bftcore"
            ),
            Error::Corrupt(why) => write!(f, "corrupt index: {why}"),
            Error::ChecksumMismatch => {
                write!(f, "corrupt index: checksum mismatch (the file was altered or damaged)")
            }
            Error::BadShard(why) => write!(f, "{why}"),
            Error::NothingToMerge => write!(f, "nothing to merge"),
            Error::NoSuchLabel { label, labels } if labels.is_empty() => {
                write!(f, "no label {label:?} in the index (it has no labels)")
            }
            Error::NoSuchLabel { label, labels } => {
                write!(f, "no label {label:?} in the index (labels: {})", labels.join(", "))
            }
            Error::NoSuchBucket { bucket, buckets } => {
                write!(f, "no bucket {bucket} (the index has {buckets} buckets, from 0)")
            }
            Error::NoSuchToken { token, vocab } => {
                write!(f, "token id {token} is outside the vocabulary of {vocab}")
            }
            Error::State(why) => write!(f, "{why}"),
        }
    }
}

impl std::error::Error for Error {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_errors_keep_kind_errno_and_path() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.bfti");
        let os = std::fs::File::open(&missing).unwrap_err();
        let err = Error::io(&missing, &os);
        let Error::Io { path, kind, errno, message } = &err else { panic!("{err:?}") };
        assert_eq!(path, &missing);
        assert_eq!(*kind, io::ErrorKind::NotFound);
        assert_eq!(*errno, os.raw_os_error());
        assert!(errno.is_some());
        assert!(!message.contains("os error"), "{message}");
        assert!(err.to_string().starts_with(&missing.display().to_string()));
    }

    #[test]
    fn io_errors_without_an_os_number_keep_their_text() {
        let e = io::Error::new(io::ErrorKind::InvalidData, "half a page");
        let err = Error::io(Path::new("x"), &e);
        assert_eq!(
            err,
            Error::Io {
                path: "x".into(),
                kind: io::ErrorKind::InvalidData,
                errno: None,
                message: "half a page".into()
            }
        );
        assert_eq!(err.to_string(), "x: half a page");
    }
}
