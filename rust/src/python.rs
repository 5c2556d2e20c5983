//! PyO3 bindings (the `python` feature): a thin layer that converts arguments,
//! releases the GIL for the work, and maps core errors to ValueError.

use numpy::ndarray::Array2;
use numpy::{IntoPyArray, PyArray1, PyArray2, PyReadonlyArray1};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use crate::{Buckets, Error, TokenBucketCounts, DEFAULT_BUCKET_EDGES};

fn value_error(e: Error) -> PyErr {
    PyValueError::new_err(e.to_string())
}

fn buckets_from(edges: Option<Vec<u32>>) -> PyResult<Buckets> {
    match edges {
        None => Ok(Buckets::default()),
        Some(e) => Buckets::new(e).map_err(value_error),
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
    let out = py.detach(|| {
        pos.iter()
            .enumerate()
            .map(|(row, &p)| {
                b.bucket_of(p)
                    .map(|x| x as u32)
                    .ok_or(Error::ZeroPosition { row })
            })
            .collect::<Result<Vec<u32>, Error>>()
    });
    Ok(out.map_err(value_error)?.into_pyarray(py))
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
    let counts = py
        .detach(|| TokenBucketCounts::from_rows(toks, pos, vocab_size, &b))
        .map_err(value_error)?;
    let shape = (counts.buckets().len(), counts.vocab());
    let table = Array2::from_shape_vec(shape, counts.into_vec())
        .map_err(|e| PyValueError::new_err(e.to_string()))?;
    Ok(table.into_pyarray(py))
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("DEFAULT_BUCKET_EDGES", DEFAULT_BUCKET_EDGES.to_vec())?;
    m.add_function(wrap_pyfunction!(bucket_of, m)?)?;
    m.add_function(wrap_pyfunction!(bucket_index, m)?)?;
    m.add_function(wrap_pyfunction!(token_bucket_counts, m)?)?;
    Ok(())
}
