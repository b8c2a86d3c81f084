"""Calibrated quantization: what the layer matrices see on calibration text, and the two methods that
use more of it than the importance matrix does.

    calib = calibrate(model, text)                  # one pass over the text (pyengine/imatrix.py's)
    calib.imatrix                                   # llama.cpp's importance matrix of the same pass
    calib.hessian("blk.0.attn_q.weight")            # float64 (cols, cols): mean x x^T of its input
    raw = gptq_quantize(w, GGMLType.Q5_0, calib.hessian(name), calib.imatrix.importance(name))

GPTQ (Frantar et al. 2022, error-compensated rounding): the columns of W are rounded in order, and
each column's rounding error is spread over the columns not yet rounded so that the product W x
changes least on the calibration inputs (the Hessian H = E[x x^T] of the error ||(W - Q) x||^2),
through the upper Cholesky factor U of H^-1 (H damped by a hundredth of its mean diagonal), in
batches of columns with lazy updates of the rest. On ggml's block formats the grid is a block's: when
the rounding reaches a block (32 weights, or a 256-weight super-block), its scales are chosen by the
type's own (importance-weighted) quantizer on the block's current, error-updated weights, and the
block's columns are then rounded one by one to the nearest value of that grid (codes.h: value = scale
* level + offset). The bytes are the type's standard layout: dequantize gives back exactly the values
GPTQ chose.

AWQ (Lin et al. 2023, activation-aware scaling): the columns j of the matrices that read one RMS
norm's output are multiplied by s_j and the norm's weight divided by s_j, which leaves the model's
function unchanged in exact arithmetic but moves rounding precision to the columns whose inputs are
large. s = mean|x|^alpha (normalised to a geometric mean of 1 between its extremes), alpha searched on
a grid for the least output error tr(E H E^T) of the matrices quantized as they will be written
(alpha = 0, no scaling, is on the grid: the search never chooses worse than unscaled on that
measure). Only matrices behind a norm are scaled (attn_q, attn_k, attn_v, attn_qkv behind attn_norm;
ffn_gate, ffn_up behind ffn_norm): the file stays a standard GGUF of the same architecture.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

from . import _core
from .gguf import GGMLType
from .imatrix import Imatrix, collect
from .quants import dequantize, has_weighted_quantizer, quantize, type_info

if TYPE_CHECKING:
    from .model import Model

__all__ = ["Calibration", "calibrate", "gptq_quantize", "awq_search", "AWQ_GROUPS"]

# The norm whose output each group of matrices reads (within one layer), for AWQ's folding.
AWQ_GROUPS = {"attn_norm": ("attn_q", "attn_k", "attn_v", "attn_qkv"), "ffn_norm": ("ffn_gate", "ffn_up")}
GPTQ_DAMP = 0.01  # of the mean diagonal of H, added to it (GPTQ's percdamp)
GPTQ_BATCH = 128  # columns per lazy batch (whole blocks)
AWQ_GRID = 10  # alpha in 0, 1/10, ..., 1
# Every GRAM_STRIDE-th token of each chunk enters the Gram matrices (and mean magnitudes): their cost
# per token is that of a forward pass in float, and a quarter of a text of some 100k tokens is still
# tens of times the widest input.
GRAM_STRIDE = 4
# What `quantize --calib` applies by default: the best of the methods measured by bench/calibration.py.
BEST = ("awq", "gptq")


@dataclass
class Calibration:
    """The statistics of one calibration pass. readers maps each layer matrix to the name its input
    is kept under (the first matrix of its product group: wq for wq, wk, wv); gram[key] is the sum
    over the tokens of x x^T (float64), abs_sum[key] the sum of |x| per column, count[key] the tokens
    (every GRAM_STRIDE-th of each chunk)."""

    imatrix: Imatrix
    readers: dict[str, str] = field(default_factory=dict)
    gram: dict[str, np.ndarray] = field(default_factory=dict)
    abs_sum: dict[str, np.ndarray] = field(default_factory=dict)
    count: dict[str, int] = field(default_factory=dict)

    def hessian(self, name: str) -> np.ndarray | None:
        """E[x x^T] of the input of matrix `name` (float64 (cols, cols)); None without one."""
        key = self.readers.get(name)
        return None if key is None else self.gram[key] / self.count[key]

    def mean_abs(self, name: str) -> np.ndarray | None:
        key = self.readers.get(name)
        return None if key is None else self.abs_sum[key] / self.count[key]

    def add(self, inputs: list[tuple[str, np.ndarray]]) -> None:
        """Adds one chunk's inputs (_core.InputRecorder.take)."""
        done: dict[int, str] = {}
        for name, x in inputs:
            key = done.setdefault(id(x), name)
            self.readers.setdefault(name, key)
            if key != name:
                continue
            x = x[::GRAM_STRIDE]
            gram = (x.T @ x).astype(np.float64)
            if key in self.gram:
                self.gram[key] += gram
                self.abs_sum[key] += np.abs(x).sum(axis=0, dtype=np.float64)
                self.count[key] += len(x)
            else:
                self.gram[key], self.abs_sum[key], self.count[key] = gram, np.abs(x).sum(0, dtype=np.float64), len(x)

    def save(self, path: str | os.PathLike) -> None:
        """An .npz of everything (the Gram matrices as float32), for reuse across quantizations."""
        arrays = {"readers": np.array(sorted(self.readers.items()), dtype=str).reshape(-1, 2)}
        for key in self.gram:
            arrays[f"gram/{key}"] = self.gram[key].astype(np.float32)
            arrays[f"abs/{key}"] = self.abs_sum[key]
            arrays[f"count/{key}"] = np.array(self.count[key])
        for name, (sums, count) in self.imatrix.entries.items():
            arrays[f"imatrix/{name}"] = sums
            arrays[f"imatrix_count/{name}"] = np.array(count)
        arrays["imatrix_meta"] = np.array([self.imatrix.chunk_count, self.imatrix.chunk_size])
        with open(path, "wb") as f:
            np.savez(f, **arrays)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Calibration:
        with np.load(path) as z:
            chunk_count, chunk_size = (int(v) for v in z["imatrix_meta"])
            imatrix = Imatrix({k[8:]: (z[k], int(z["imatrix_count/" + k[8:]])) for k in z.files
                               if k.startswith("imatrix/")}, chunk_count, chunk_size)
            c = cls(imatrix, {str(a): str(b) for a, b in z["readers"]})
            for k in z.files:
                if k.startswith("gram/"):
                    key = k[5:]
                    c.gram[key] = z[k].astype(np.float64)
                    c.abs_sum[key], c.count[key] = z["abs/" + key], int(z["count/" + key])
        return c


def calibrate(model: Model, text: str, n_ctx: int = 512, n_chunks: int | None = None, datasets: Sequence[str] = (),
              progress: Callable[[int, int], None] | None = None) -> Calibration:
    """One pass of `model` over `text` (as imatrix.collect: chunks of n_ctx tokens, at most n_chunks),
    gathering the imatrix and each layer input's Gram matrix and mean magnitudes."""
    calib = Calibration(Imatrix())
    calib.imatrix = collect(model, text, n_ctx, n_chunks, datasets, progress, inputs=calib.add)
    return calib


def has_codes(type: int) -> bool:
    """Whether GPTQ can round to this type's grid (a block format of codes.h)."""
    return _core.type_info(int(type)) is not None and _core.code_levels(int(type)) is not None


def _inverse_cholesky(h: np.ndarray) -> np.ndarray:
    """Upper U with U^T U = h^-1."""
    lower_inv = np.linalg.inv(np.linalg.cholesky(h))
    return np.linalg.cholesky(lower_inv.T @ lower_inv).T


def _damped(hessian: np.ndarray, damp: float) -> np.ndarray:
    """H with a dead input's diagonal 1 (its weights then take no part) and damp * mean diagonal added."""
    h = np.array(hessian, np.float64)
    diag = np.diag(h).copy()
    dead = np.flatnonzero(diag <= 0)
    h[dead, dead] = 1.0
    live = diag[diag > 0]
    h[np.diag_indices_from(h)] += damp * (live.mean() if live.size else 1.0)
    return h


def _nearest_codes(x: np.ndarray, scale: np.ndarray, offset: np.ndarray, levels: np.ndarray,
                   uniform: bool, fallback: np.ndarray) -> np.ndarray:
    """The code of the grid value nearest each x (a block whose scale is 0 keeps its codes)."""
    if uniform:
        with np.errstate(divide="ignore", invalid="ignore"):
            t = np.rint((x - offset) / scale) - levels[0]
        t = np.where(scale != 0, np.clip(np.nan_to_num(t), 0, len(levels) - 1), fallback)
        return t.astype(np.uint8)
    values = scale[:, None] * levels[None, :] + offset[:, None]
    return np.abs(values - x[:, None]).argmin(axis=1).astype(np.uint8)


def gptq_quantize(w: np.ndarray, type: int, hessian: np.ndarray, importance: np.ndarray | None = None,
                  damp: float = GPTQ_DAMP, batch: int = GPTQ_BATCH) -> np.ndarray:
    """Raw bytes (rows, row_bytes) of the float32 matrix w (rows, cols) in `type` (a block format with
    codes: Q4_0 ... Q8_0, the K-quants, IQ4_NL, IQ4_XS) by GPTQ with hessian E[x x^T] (cols, cols);
    each block's scales by the type's quantizer, weighted by `importance` where it has a weighted one."""
    return _gptq(w, type, hessian, importance, damp, batch)[0]


def _gptq(w, type, hessian, importance, damp, batch):
    """gptq_quantize, and the float32 values it chose (what dequantize gives back)."""
    type = int(type)
    rows, cols = w.shape
    _, bs, type_size = type_info(type)
    levels16 = _core.code_levels(type)
    if levels16 is None:
        raise ValueError(f"GPTQ has no codes for type {GGMLType(type).name}")
    levels = levels16.astype(np.float32)
    uniform = bool(np.all(np.diff(levels16) == 1))
    weights = importance if importance is not None and has_weighted_quantizer(type) else None
    u = _inverse_cholesky(_damped(hessian, damp))
    W = np.array(w, np.float64)
    out = np.empty((rows, cols // bs * type_size), np.uint8)
    chosen = np.empty((rows, cols), np.float32)
    step = max(bs, batch // bs * bs)
    for i1 in range(0, cols, step):
        i2 = min(i1 + step, cols)
        err = np.empty((rows, i2 - i1))
        for b0 in range(i1, i2, bs):
            raw = quantize(W[:, b0:b0 + bs].astype(np.float32), type,
                           imatrix=None if weights is None else weights[b0:b0 + bs])
            codes, scale, offset = _core.unpack_codes(raw, type, rows, bs)
            for k in range(bs):
                j = b0 + k
                c = _nearest_codes(W[:, j], scale[:, k], offset[:, k], levels, uniform, codes[:, k])
                codes[:, k] = c
                chosen[:, j] = scale[:, k] * levels[c] + offset[:, k]
                e = (W[:, j] - chosen[:, j]) / u[j, j]
                W[:, j + 1:i2] -= np.outer(e, u[j, j + 1:i2])
                err[:, j - i1] = e
            out[:, b0 // bs * type_size:(b0 + bs) // bs * type_size] = _core.pack_codes(raw, type, rows, bs, codes)
        W[:, i2:] -= err @ u[i1:i2, i2:]
    return out, chosen


def output_error(w: np.ndarray, values: np.ndarray, hessian: np.ndarray) -> float:
    """E||(values - w) x||^2 summed over the rows: tr(E H E^T)."""
    e = np.asarray(values, np.float64) - w
    return float(((e @ hessian) * e).sum())


def _rtn(w: np.ndarray, type: int, importance: np.ndarray | None) -> np.ndarray:
    weights = importance if importance is not None and has_weighted_quantizer(type) else None
    return dequantize(quantize(w, type, imatrix=weights), type, w.shape)


def awq_search(matrices: Sequence[tuple[np.ndarray, int]], hessian: np.ndarray, mean_abs: np.ndarray,
               importance: np.ndarray | None, grid: int = AWQ_GRID) -> tuple[np.ndarray, float, float]:
    """AWQ's column scales s for matrices [(w float32 (rows, cols), type)] that read one input:
    (s, the output error unscaled, the error with s), each matrix quantized with its type's
    (importance-weighted) quantizer as w * s with importance / s^2, and compared as that / s."""
    m = np.maximum(np.asarray(mean_abs, np.float64), 1e-6 * max(float(np.max(mean_abs)), 1e-30))
    best = None
    for alpha in np.linspace(0.0, 1.0, grid + 1):
        s = m ** alpha
        s = (s / np.sqrt(s.max() * s.min())).astype(np.float32)
        imp = None if importance is None else (importance / (s.astype(np.float64) ** 2)).astype(np.float32)
        err = sum(output_error(w, _rtn(w * s, t, imp) / s, hessian) for w, t in matrices)
        if alpha == 0.0:
            unscaled = err
        if best is None or err < best[1]:
            best = (s, err)
    return best[0], unscaled, best[1]
