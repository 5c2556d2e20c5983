"""Type stubs for the Rust extension module `bftcore._core` (rust/src/python.rs)."""

import numpy as np
import numpy.typing as npt

__version__: str
DEFAULT_BUCKET_EDGES: list[int]

def bucket_of(pos: int, edges: list[int] | None = None) -> int: ...
def bucket_index(
    positions: npt.NDArray[np.uint32], edges: list[int] | None = None
) -> npt.NDArray[np.uint32]: ...
def token_bucket_counts(
    tokens: npt.NDArray[np.uint32],
    positions: npt.NDArray[np.uint32],
    vocab_size: int,
    edges: list[int] | None = None,
) -> npt.NDArray[np.uint64]: ...
