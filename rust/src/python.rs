//! PyO3 bindings (the `python` feature): a thin layer that converts arguments and answers,
//! releases the GIL for the work, and maps core errors to Python exceptions (`to_py_err`).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use numpy::ndarray::Array2;
use numpy::{IntoPyArray, PyArray1, PyArray2, PyReadonlyArray1};
use pyo3::exceptions::{PyOSError, PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::bfti::{self, MappedIndex};
use crate::index::partials_budget_from_env;
use crate::shard;
use crate::{Batch, Buckets, Error, IndexBuilder, IndexQuery, TokenBucketCounts, DEFAULT_BUCKET_EDGES};

pyo3::create_exception!(
    _core,
    CoreError,
    PyValueError,
    "Bad input to the Rust core: a bad batch, or a damaged or incompatible index."
);

pyo3::create_exception!(
    _core,
    StateError,
    PyRuntimeError,
    "A call the object's state does not allow: an IndexBuilder used after write()."
);

/// The rayon pool the bindings run parallel work in, one per process. Rayon's global pool does
/// not survive `fork()`: its threads are gone in the child, and the first parallel call there
/// waits for them forever. So the bindings keep their own pool, keyed by the pid that built it; a
/// forked child builds a fresh one (the parent's is leaked in the child, never joined: its
/// threads do not exist there). RAYON_NUM_THREADS sizes it, as it would the global pool.
static POOL: Mutex<Option<(u32, Arc<rayon::ThreadPool>)>> = Mutex::new(None);

fn pool() -> Arc<rayon::ThreadPool> {
    let pid = std::process::id();
    let mut held = POOL.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((owner, pool)) = held.as_ref() {
        if *owner == pid {
            return Arc::clone(pool);
        }
    }
    if let Some((_, stale)) = held.take() {
        std::mem::forget(stale); // the parent's pool: dropping it would wait on threads that do not exist here
    }
    let fresh = Arc::new(
        rayon::ThreadPoolBuilder::new()
            .thread_name(|i| format!("bftcore-{i}"))
            .build()
            .expect("cannot start the rayon thread pool"),
    );
    *held = Some((pid, Arc::clone(&fresh)));
    fresh
}

/// Release the GIL and run `f` in this process's pool.
fn parallel<T: Send, F: FnOnce() -> T + Send>(py: Python<'_>, f: F) -> T {
    py.detach(|| pool().install(f))
}

/// File system errors become the OSError subclass of their kind (FileNotFoundError,
/// PermissionError, IsADirectoryError, ...) with errno and filename set; misuse becomes
/// StateError; bad data becomes CoreError.
fn to_py_err(e: Error) -> PyErr {
    match e {
        Error::Io { path, errno: Some(errno), message, .. } => {
            // OSError(errno, strerror, filename), as Python's own I/O raises it: Python picks the
            // subclass from errno, and str() shows "[Errno N] message: 'path'".
            PyOSError::new_err((errno, message, path.into_os_string()))
        }
        Error::Io { path, kind, errno: None, message } => {
            // no OS error number: PyO3 picks the subclass from the kind
            PyErr::from(std::io::Error::new(kind, format!("{}: {message}", path.display())))
        }
        Error::State(_) => StateError::new_err(e.to_string()),
        other => CoreError::new_err(other.to_string()),
    }
}

fn buckets_from(edges: Option<Vec<u32>>) -> PyResult<Buckets> {
    match edges {
        None => Ok(Buckets::default()),
        Some(e) => Buckets::new(e).map_err(to_py_err),
    }
}

/// The bucket of one 1-based response position.
#[pyfunction]
#[pyo3(signature = (pos, edges=None))]
fn bucket_of(pos: u32, edges: Option<Vec<u32>>) -> PyResult<usize> {
    let b = buckets_from(edges)?;
    b.bucket_of(pos)
        .ok_or_else(|| PyValueError::new_err("position 0 (positions count from 1)"))
}

/// Buckets of an array of positions.
#[pyfunction]
#[pyo3(signature = (positions, edges=None))]
fn bucket_index<'py>(
    py: Python<'py>,
    positions: PyReadonlyArray1<'py, u32>,
    edges: Option<Vec<u32>>,
) -> PyResult<Bound<'py, PyArray1<u32>>> {
    let b = buckets_from(edges)?;
    let pos = positions.as_slice()?;
    let out = parallel(py, || {
        pos.iter()
            .enumerate()
            .map(|(row, &p)| {
                b.bucket_of(p)
                    .map(|x| x as u32)
                    .ok_or(Error::ZeroPosition { row })
            })
            .collect::<Result<Vec<u32>, Error>>()
    });
    Ok(out.map_err(to_py_err)?.into_pyarray(py))
}

/// Occurrences of each token per position bucket: a (buckets, vocab_size) uint64 array.
/// The arrays are read in place (no copy) and the GIL is released while counting.
#[pyfunction]
#[pyo3(signature = (tokens, positions, vocab_size, edges=None))]
fn token_bucket_counts<'py>(
    py: Python<'py>,
    tokens: PyReadonlyArray1<'py, u32>,
    positions: PyReadonlyArray1<'py, u32>,
    vocab_size: usize,
    edges: Option<Vec<u32>>,
) -> PyResult<Bound<'py, PyArray2<u64>>> {
    let b = buckets_from(edges)?;
    let (toks, pos) = (tokens.as_slice()?, positions.as_slice()?);
    let counts = parallel(py, || TokenBucketCounts::from_rows(toks, pos, vocab_size, &b)).map_err(to_py_err)?;
    let shape = (counts.buckets().len(), counts.vocab());
    let table = Array2::from_shape_vec(shape, counts.into_vec())
        .map_err(|e| PyValueError::new_err(e.to_string()))?;
    Ok(table.into_pyarray(py))
}

fn spent(call: &str) -> Error {
    // write() takes the tables out whether or not the file system then takes the file
    Error::State(format!("IndexBuilder.{call}: write() was already called on this builder; make a new one"))
}

fn poisoned() -> Error {
    Error::State("IndexBuilder: an earlier call on this builder panicked; make a new one".into())
}

/// Streaming builder of a base-favored-token index: `add_batch` scored rows, then `write`.
#[pyclass(frozen, name = "IndexBuilder", module = "bftcore._core")]
struct PyIndexBuilder {
    // The lock is taken with the GIL released, so that a second thread never holds the GIL
    // while it waits for a builder that the first thread is filling.
    inner: Mutex<Option<IndexBuilder>>,
}

#[pymethods]
impl PyIndexBuilder {
    #[new]
    #[pyo3(signature = (vocab_size, k, tau, tokenizer_hash, meta_json="{}", edges=None))]
    fn new(
        vocab_size: usize,
        k: usize,
        tau: f64,
        tokenizer_hash: String,
        meta_json: &str,
        edges: Option<Vec<u32>>,
    ) -> PyResult<Self> {
        let meta = serde_json::from_str(meta_json)
            .map_err(|e| PyValueError::new_err(format!("meta_json: {e}")))?;
        let budget = partials_budget_from_env().map_err(to_py_err)?;
        let b = IndexBuilder::new(vocab_size, buckets_from(edges)?, k, tau, tokenizer_hash, meta)
            .map_err(to_py_err)?
            .with_partials_budget(budget);
        Ok(PyIndexBuilder { inner: Mutex::new(Some(b)) })
    }

    /// Add scored rows. Arrays are read in place; the GIL is released while they are counted.
    #[allow(clippy::too_many_arguments)]
    fn add_batch(
        &self,
        py: Python<'_>,
        tokens: PyReadonlyArray1<'_, u32>,
        positions: PyReadonlyArray1<'_, u32>,
        lp_base: PyReadonlyArray1<'_, f32>,
        lp_aligned: PyReadonlyArray1<'_, f32>,
        kl: PyReadonlyArray1<'_, f32>,
        bf_mass: PyReadonlyArray1<'_, f32>,
        retain: PyReadonlyArray1<'_, f32>,
        label_codes: PyReadonlyArray1<'_, u16>,
        label_names: Vec<String>,
        topk_token: PyReadonlyArray1<'_, u32>,
        topk_lp_base: PyReadonlyArray1<'_, f32>,
        topk_lp_aligned: PyReadonlyArray1<'_, f32>,
    ) -> PyResult<()> {
        let batch = Batch {
            tokens: tokens.as_slice()?,
            positions: positions.as_slice()?,
            lp_base: lp_base.as_slice()?,
            lp_aligned: lp_aligned.as_slice()?,
            kl: kl.as_slice()?,
            bf_mass: bf_mass.as_slice()?,
            retain: retain.as_slice()?,
            label_codes: label_codes.as_slice()?,
            label_names: &label_names,
            topk_token: topk_token.as_slice()?,
            topk_lp_base: topk_lp_base.as_slice()?,
            topk_lp_aligned: topk_lp_aligned.as_slice()?,
        };
        parallel(py, || {
            let mut guard = self.inner.lock().map_err(|_| poisoned())?;
            let builder = guard.as_mut().ok_or_else(|| spent("add_batch"))?;
            builder.add_batch(&batch)
        })
        .map_err(to_py_err)
    }

    /// Add every record batch of an Arrow IPC shard (format version 2), read in place from a
    /// memory map; with `expect` (hex xxh3-128), the file must hash to it. The GIL is released.
    /// Returns (rows, record batches, the file's hex xxh3-128).
    #[pyo3(signature = (path, k, expect=None))]
    fn add_ipc_shard(&self, py: Python<'_>, path: PathBuf, k: usize, expect: Option<&str>) -> PyResult<(u64, usize, String)> {
        let want = expect.map(parse_digest).transpose()?;
        let read = parallel(py, || {
            let mut guard = self.inner.lock().map_err(|_| poisoned())?;
            let builder = guard.as_mut().ok_or_else(|| spent("add_ipc_shard"))?;
            shard::add_ipc_shard(builder, &path, k, want)
        })
        .map_err(to_py_err)?;
        Ok((read.rows, read.batches, format!("{:032x}", read.digest)))
    }

    /// Response tokens added so far.
    #[getter]
    fn rows(&self, py: Python<'_>) -> u64 {
        py.detach(|| self.inner.lock().ok().and_then(|g| g.as_ref().map(|b| b.rows())).unwrap_or(0))
    }

    /// Merge the partial states and write the index atomically; the builder is spent after.
    fn write(&self, py: Python<'_>, path: PathBuf) -> PyResult<String> {
        parallel(py, || {
            let builder = self.inner.lock().map_err(|_| poisoned())?.take().ok_or_else(|| spent("write"))?;
            let data = builder.finish();
            bfti::write(&data, &path)?;
            serde_json::to_string(&data.header).map_err(|e| Error::Corrupt(e.to_string()))
        })
        .map_err(to_py_err)
    }
}

/// A checksum file's text as an xxh3-128: exactly 32 hex digits (`from_str_radix` alone would take
/// a sign or fewer digits), else a ValueError saying what it is not.
fn parse_digest(hex: &str) -> PyResult<u128> {
    let digits = hex.len() == 32 && hex.bytes().all(|b| b.is_ascii_hexdigit());
    digits
        .then(|| u128::from_str_radix(hex, 16).ok())
        .flatten()
        .ok_or_else(|| PyValueError::new_err("not an xxh3-128 digest (32 hex digits)"))
}

/// The hex xxh3-128 of a file's bytes (a scored shard's checksum), read through a memory map.
#[pyfunction]
fn file_xxh3(py: Python<'_>, path: PathBuf) -> PyResult<String> {
    let digest = py.detach(|| shard::file_digest(&path)).map_err(to_py_err)?;
    Ok(format!("{digest:032x}"))
}

/// A `.bfti` index opened by mmap (checksum verified on open).
#[pyclass(frozen, name = "Index", module = "bftcore._core")]
struct PyIndex {
    inner: MappedIndex,
}

#[pymethods]
impl PyIndex {
    #[staticmethod]
    fn open(py: Python<'_>, path: PathBuf) -> PyResult<Self> {
        let inner = parallel(py, || MappedIndex::open(&path)).map_err(to_py_err)?;
        Ok(PyIndex { inner })
    }

    /// The JSON header.
    #[getter]
    fn header_json(&self) -> PyResult<String> {
        serde_json::to_string(&self.inner.header).map_err(|e| PyValueError::new_err(e.to_string()))
    }

    /// One label's per-bucket aggregates: count, bf_realised (uint64 [B]) and sums (float64 [B, 4]:
    /// kl, bf_mass, retain, log_ratio).
    fn bucket_table<'py>(&self, py: Python<'py>, label: &str) -> PyResult<Bound<'py, PyDict>> {
        let t = self.inner.bucket_table(label).map_err(to_py_err)?;
        let d = PyDict::new(py);
        d.set_item("count", t.count.into_pyarray(py))?;
        d.set_item("bf_realised", t.bf_realised.into_pyarray(py))?;
        d.set_item("sums", Array2::from(t.sums).into_pyarray(py))?;
        Ok(d)
    }

    /// Copies of every array of one label: bucket_count, bucket_bf_realised [B], bucket_sums
    /// [B, 4], token_occ, token_bf, token_member, token_log_ratio [B, V].
    fn arrays<'py>(&self, py: Python<'py>, label: &str) -> PyResult<Bound<'py, PyDict>> {
        let l = self.inner.label(label).map_err(to_py_err)?;
        let (nb, v) = (l.bucket_count.len(), self.inner.header.vocab_size);
        let shape_err = |e: numpy::ndarray::ShapeError| PyValueError::new_err(e.to_string());
        let d = PyDict::new(py);
        d.set_item("bucket_count", l.bucket_count.to_vec().into_pyarray(py))?;
        d.set_item("bucket_bf_realised", l.bucket_bf_realised.to_vec().into_pyarray(py))?;
        d.set_item("bucket_sums", Array2::from_shape_vec((nb, 4), l.bucket_sums.to_vec()).map_err(shape_err)?.into_pyarray(py))?;
        for (name, a) in [("token_occ", l.token_occ), ("token_bf", l.token_bf), ("token_member", l.token_member)] {
            d.set_item(name, Array2::from_shape_vec((nb, v), a.to_vec()).map_err(shape_err)?.into_pyarray(py))?;
        }
        d.set_item("token_log_ratio", Array2::from_shape_vec((nb, v), l.token_log_ratio.to_vec()).map_err(shape_err)?.into_pyarray(py))?;
        Ok(d)
    }

    /// Top-n base-favored tokens of one (label, bucket), by membership count in B_t: token,
    /// member, occ, bf, log_ratio_sum, one array each.
    fn top_tokens<'py>(
        &self,
        py: Python<'py>,
        label: &str,
        bucket: usize,
        n: usize,
    ) -> PyResult<Bound<'py, PyDict>> {
        let top = parallel(py, || self.inner.top_tokens(label, bucket, n)).map_err(to_py_err)?;
        let column = |f: fn(&crate::TopToken) -> u64| top.iter().map(f).collect::<Vec<u64>>();
        let d = PyDict::new(py);
        d.set_item("token", top.iter().map(|t| t.token).collect::<Vec<u32>>().into_pyarray(py))?;
        d.set_item("member", column(|t| t.member).into_pyarray(py))?;
        d.set_item("occ", column(|t| t.occ).into_pyarray(py))?;
        d.set_item("bf", column(|t| t.bf).into_pyarray(py))?;
        d.set_item("log_ratio_sum", top.iter().map(|t| t.log_ratio_sum).collect::<Vec<f64>>().into_pyarray(py))?;
        Ok(d)
    }

    /// One token's per-bucket histograms for one label: occ, bf, member, log_ratio_sum.
    fn token_histogram<'py>(
        &self,
        py: Python<'py>,
        label: &str,
        token: u32,
    ) -> PyResult<Bound<'py, PyDict>> {
        let h = self.inner.token_histogram(label, token).map_err(to_py_err)?;
        let d = PyDict::new(py);
        d.set_item("occ", h.occ.into_pyarray(py))?;
        d.set_item("bf", h.bf.into_pyarray(py))?;
        d.set_item("member", h.member.into_pyarray(py))?;
        d.set_item("log_ratio_sum", h.log_ratio_sum.into_pyarray(py))?;
        Ok(d)
    }
}

/// Merge `.bfti` files into one (exactly the index of the union of their rows); returns its header.
#[pyfunction]
fn merge_indexes(py: Python<'_>, paths: Vec<PathBuf>, out: PathBuf) -> PyResult<String> {
    parallel(py, || {
        let merged = bfti::merge_files(&paths, &out)?;
        serde_json::to_string(&merged.header).map_err(|e| Error::Corrupt(e.to_string()))
    })
    .map_err(to_py_err)
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("CoreError", m.py().get_type::<CoreError>())?;
    m.add("StateError", m.py().get_type::<StateError>())?;
    m.add_class::<PyIndexBuilder>()?;
    m.add_class::<PyIndex>()?;
    m.add_function(wrap_pyfunction!(merge_indexes, m)?)?;
    m.add_function(wrap_pyfunction!(file_xxh3, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("DEFAULT_BUCKET_EDGES", DEFAULT_BUCKET_EDGES.to_vec())?;
    m.add_function(wrap_pyfunction!(bucket_of, m)?)?;
    m.add_function(wrap_pyfunction!(bucket_index, m)?)?;
    m.add_function(wrap_pyfunction!(token_bucket_counts, m)?)?;
    Ok(())
}
