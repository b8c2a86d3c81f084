"""Block formats and the matrix product, over the native kernels.

`quantize` / `dequantize` use the scalar reference conversions (llama.cpp's exact bytes; for
pyengine's own NF4 and NF4_DQ, the bytes that define those formats);
`matmul` runs the threaded kernels of the active ISA (see `pyengine.isa()`).
"""

from __future__ import annotations

import numpy as np

from . import _core
from .gguf import GGMLType, type_by_name


def _type_id(type: str | int) -> int:
    if isinstance(type, str):
        type_id = int(type_by_name(type))
    else:
        if isinstance(type, bool) or not isinstance(type, (int, np.integer)):
            raise ValueError(f"type must be a type name or a ggml type id, got {type!r:.40}")
        type_id = int(type)
    if not 0 <= type_id < 2**32 or _core.type_info(type_id) is None:
        raise ValueError(f"type {type!r} has no quantizer in pyengine")
    return type_id


def type_info(type: str | int) -> tuple[str, int, int]:
    """(name, block_size, bytes per block) of a supported type."""
    name, block_size, type_size, _ = _core.type_info(_type_id(type))
    return name, block_size, type_size


# Below this many values per thread, quantizing on one thread is as fast (the searches of the K-quants
# take ~1 us per value, the simple formats ~10 ns).
_VALUES_PER_THREAD = 1 << 18


def quantize(x: np.ndarray, type: str | int, imatrix: np.ndarray | None = None) -> np.ndarray:
    """Raw GGUF block bytes of a float32 matrix (rows, cols), row-major: uint8 (rows, row_bytes).

    A 1-D array is one row and gives 1-D bytes. cols must be a multiple of the type's block size.
    imatrix: optional importance weights, one nonnegative float per column (llama.cpp's imatrix entry
    of the tensor), for the weighted search of the types that have one (Q4_0, Q4_1, Q5_0, Q5_1, the
    K-quants, IQ4_NL, IQ4_XS: has_weighted_quantizer); the bytes are llama.cpp's with the same imatrix."""
    x = np.asarray(x, dtype=np.float32)
    if x.ndim not in (1, 2):
        raise ValueError(f"quantize expects a 1-D or 2-D array, got shape {x.shape}")
    if imatrix is not None:
        imatrix = np.ascontiguousarray(imatrix, dtype=np.float32)
        if imatrix.shape != (x.shape[-1],) or not np.all(np.isfinite(imatrix)) or np.any(imatrix < 0):
            raise ValueError(f"imatrix must be {x.shape[-1]} finite nonnegative values, one per column")
    if x.shape[-1] == 0:
        raise ValueError(f"quantize expects rows of at least one block, got shape {x.shape}")
    rows = np.ascontiguousarray(x.reshape(-1, x.shape[-1]))
    type_id = _type_id(type)
    # Rows are independent: the default pool's threads split them (a ThreadPoolExecutor made per call
    # and a concatenation took longer than one thread on SmolLM2's ~1M-value matrices).
    split = rows.shape[0] > 1 and rows.size >= 2 * _VALUES_PER_THREAD and _core.default_n_threads() > 1
    out = _core.quantize(rows, type_id, imatrix, thread_pool() if split else None)
    return out.reshape(-1) if x.ndim == 1 else out


def has_weighted_quantizer(type: str | int) -> bool:
    """Whether quantize takes an imatrix for this type (llama.cpp's importance-weighted search)."""
    return bool(_core.has_weighted_quantizer(_type_id(type)))


def dequantize(raw: np.ndarray, type: str | int, shape) -> np.ndarray:
    """float32 values of raw block bytes holding a matrix of `shape` (rows, cols) or (cols,)."""
    shape = tuple(int(s) for s in (shape if np.iterable(shape) else (shape,)))
    if len(shape) not in (1, 2) or any(s < 0 for s in shape):
        raise ValueError(f"dequantize expects a 1-D or 2-D shape, got {shape}")
    rows, cols = (1, shape[0]) if len(shape) == 1 else shape
    raw = np.ascontiguousarray(raw).view(np.uint8)
    return _core.dequantize(raw.reshape(-1), _type_id(type), rows, cols).reshape(shape)


_pools: dict[int, "_core.ThreadPool"] = {}

MAX_THREADS = 1024


def thread_pool(n_threads: int | None = None) -> "_core.ThreadPool":
    """A persistent pool of n_threads (default: the physical performance cores), shared per count."""
    n = _core.default_n_threads() if n_threads is None else int(n_threads)
    if not 1 <= n <= MAX_THREADS:
        raise ValueError(f"n_threads must be between 1 and {MAX_THREADS}, got {n_threads}")
    pool = _pools.get(n)
    if pool is None:
        pool = _pools[n] = _core.ThreadPool(n)
    return pool


def matmul(w_raw: np.ndarray, type: str | int, shape, x: np.ndarray, n_threads: int | None = None,
           isa: str = "", packed: bool = False) -> np.ndarray:
    """y = x @ W.T for a weight W of `shape` (rows, cols) stored as raw `type` blocks.

    x: float32 (n_tokens, cols) or (cols,). The activations are quantized to the weight type's
    partner format as llama.cpp does: Q8_0 per 32-block for Q4_0, Q5_0, Q8_0, IQ4_NL, NF4, NF4_DQ; Q8_1
    for Q4_1 and Q5_1; Q8_K per 256 for the K-quants and IQ4_XS; none for float weights.
    Results are bit-identical for any n_threads and any number of tokens. `isa` picks a kernel path
    ('' = active). packed=True first packs the rows as a Model does at load time (ValueError if the
    ISA has no packed kernels for the type, or rows is not a multiple of 8)."""
    rows, cols = (int(s) for s in shape)
    x = np.asarray(x, dtype=np.float32)
    x2 = np.ascontiguousarray(x.reshape(-1, cols) if x.ndim == 1 else x)
    w = np.ascontiguousarray(w_raw).view(np.uint8).reshape(-1)
    y = _core.matmul(thread_pool(n_threads), w, _type_id(type), rows, cols, x2, isa, packed)
    return y.reshape(rows) if x.ndim == 1 else y


__all__ = ["quantize", "dequantize", "matmul", "type_info", "thread_pool", "GGMLType"]
