"""Type stubs for the Rust extension module `bftcore._core` (rust/src/python.rs)."""

from typing import Self, final

import numpy as np
import numpy.typing as npt

__all__ = [
    "DEFAULT_BUCKET_EDGES",
    "CoreError",
    "Index",
    "IndexBuilder",
    "StateError",
    "__version__",
    "bucket_index",
    "bucket_of",
    "file_xxh3",
    "merge_indexes",
    "token_bucket_counts",
]

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

class CoreError(ValueError): ...
class StateError(RuntimeError): ...

@final
class IndexBuilder:
    def __new__(
        cls,
        vocab_size: int,
        k: int,
        tau: float,
        tokenizer_hash: str,
        meta_json: str = "{}",
        edges: list[int] | None = None,
    ) -> Self: ...
    def add_batch(
        self,
        tokens: npt.NDArray[np.uint32],
        positions: npt.NDArray[np.uint32],
        lp_base: npt.NDArray[np.float32],
        lp_aligned: npt.NDArray[np.float32],
        kl: npt.NDArray[np.float32],
        bf_mass: npt.NDArray[np.float32],
        retain: npt.NDArray[np.float32],
        label_codes: npt.NDArray[np.uint16],
        label_names: list[str],
        topk_token: npt.NDArray[np.uint32],
        topk_lp_base: npt.NDArray[np.float32],
        topk_lp_aligned: npt.NDArray[np.float32],
    ) -> None: ...
    def add_ipc_shard(self, path: str, k: int, expect: str | None = None) -> tuple[int, int, str]: ...
    @property
    def rows(self) -> int: ...
    def write(self, path: str) -> str: ...

@final
class Index:
    @staticmethod
    def open(path: str) -> Index: ...
    @property
    def header_json(self) -> str: ...
    def bucket_table(self, label: str) -> dict[str, npt.NDArray[np.generic]]: ...
    def arrays(self, label: str) -> dict[str, npt.NDArray[np.generic]]: ...
    def top_tokens(self, label: str, bucket: int, n: int) -> dict[str, npt.NDArray[np.generic]]: ...
    def token_histogram(self, label: str, token: int) -> dict[str, npt.NDArray[np.generic]]: ...

def merge_indexes(paths: list[str], out: str) -> str: ...
def file_xxh3(path: str) -> str: ...
