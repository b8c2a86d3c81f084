"""A plain numpy float64 llama forward pass: the slow, independent reference for pyengine's engine.

It reads the file with gguf-py (not our reader), dequantizes with gguf.quants (not our kernels),
and computes every step in float64 with exact RoPE angles. pyengine's own formats (NF4, NF4_DQ:
type ids gguf-py does not know, so it cannot parse such a file) are dequantized here in numpy from
the raw bytes, and a file holding them is read with pyengine's pure-Python reader (held against
gguf-py on ggml's types in test_gguf), not by the C++ core. Two options make it see what the
engine sees, so that differences shrink to float rounding:
- quantize_activations: each matmul input with a quantized weight goes through a round trip of the
  activation format that llama.cpp and pyengine multiply the weight's type with (ACTIVATION): Q8_0
  (per 32-block absmax / 127, fp16 scale), Q8_1 (Q8_0's values, plus s = fp16(d * sum(q)) that the
  minimum term of Q4_1 and Q5_1 is computed with) or Q8_K (per 256-block, float32 scale);
- kv_f16: keys and values are rounded to float16, as stored in an F16 KV cache.
"""

from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf import GGUFReader, quants

import pyengine.gguf

# pyengine's own type ids, and the NF4 levels: QLoRA's normal-quantile code book times 127, rounded
# (the derivation is in cpp/quant/blocks.h; test_nf4 recomputes it).
NF4, NF4_DQ = 100, 101
NF4_LEVELS = np.array([-127, -88, -67, -50, -36, -23, -12, 0, 10, 20, 31, 43, 56, 71, 92, 127], np.float32)


def q8_0_round_trip(x):
    """float64 values of x (..., n) quantized to Q8_0 (gguf-py's quantizer: ggml's reference)."""
    raw = quants.quantize(np.asarray(x, np.float32), T.Q8_0)
    return quants.dequantize(raw, T.Q8_0).reshape(x.shape).astype(np.float64)


def q8_1_sums(x):
    """Q8_1's s per 32-block of x (rows, n) -> (rows, n / 32): fp16(d * sum(q)) with d = absmax / 127
    the unrounded float32 scale and q the Q8_0 values (Q8_0 and Q8_1 quantize alike)."""
    x32 = np.asarray(x, np.float32)
    blocks = x32.reshape(x.shape[0], -1, 32)
    d = np.abs(blocks).max(axis=-1) / np.float32(127)
    raw = quants.quantize(x32, T.Q8_0).reshape(blocks.shape[0], blocks.shape[1], 34)
    qsum = raw[..., 2:].view(np.int8).astype(np.int32).sum(-1)
    return (qsum.astype(np.float32) * d).astype(np.float16).astype(np.float64)


def q8_k_round_trip(x):
    """float64 values of x (..., n) quantized to Q8_K, as ggml's quantize_row_q8_K_ref: per 256-block,
    iscale = -127 / v with v the first value of largest magnitude, q = min(127, round-half-to-even(
    iscale * x)), d = 1 / iscale, all in float32 (gguf-py has no Q8_K quantizer)."""
    blocks = np.asarray(x, np.float32).reshape(-1, 256)
    v = np.take_along_axis(blocks, np.abs(blocks).argmax(-1)[:, None], -1)
    nonzero = v != 0
    iscale = np.where(nonzero, np.float32(-127) / np.where(nonzero, v, np.float32(1)), np.float32(0))
    q = np.minimum(np.rint(iscale * blocks), np.float32(127))
    d = np.where(nonzero, np.float32(1) / np.where(nonzero, iscale, np.float32(1)), np.float32(0))
    return (d.astype(np.float64) * q).reshape(x.shape)


# The activation format each quantized weight type is multiplied with (ggml's vec_dot_type); a type
# absent here (F32, F16) multiplies the float activations.
ACTIVATION = {
    **dict.fromkeys([T.Q4_0, T.Q5_0, T.Q8_0, T.IQ4_NL, NF4, NF4_DQ], "q8_0"),
    **dict.fromkeys([T.Q4_1, T.Q5_1], "q8_1"),
    **dict.fromkeys([T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K, T.IQ4_XS], "q8_k"),
}
# Q8_1's values are Q8_0's; its s enters _matmul through the minimum term. The K-quants' minimum
# terms need nothing of the kind: with Q8_K's values and the dequantized weights they are exact.
ROUND_TRIP = {"q8_0": q8_0_round_trip, "q8_1": q8_0_round_trip, "q8_k": q8_k_round_trip}
# Q4_1 and Q5_1 blocks: fp16 d at byte 0, fp16 minimum m at byte 2; their size in bytes.
MIN_BLOCK_BYTES = {T.Q4_1: 20, T.Q5_1: 24}


def _nf4_values(qs, d):
    """64-blocks: nibble bytes (..., 32) and float32 scales (...) -> float32 values (..., 64); weight j
    is the low nibble of byte j, weight j + 32 its high nibble."""
    levels = NF4_LEVELS[np.concatenate([qs & 0x0F, qs >> 4], axis=-1)]
    return d[..., None] * levels


def dequantize_nf4(raw, type_id):
    """float32 values of NF4 (fp16 d, 32 nibble bytes) or NF4_DQ (fp16 D, 4 scale codes c, 4 x 32
    nibble bytes; block scale D * c / 127 in float32) blocks, flattened."""
    if type_id == NF4:
        b = np.asarray(raw, np.uint8).reshape(-1, 34)
        d = b[:, :2].copy().view(np.float16)[:, 0].astype(np.float32)
        return _nf4_values(b[:, 2:], d).reshape(-1)
    b = np.asarray(raw, np.uint8).reshape(-1, 134)
    D = b[:, :2].copy().view(np.float16)[:, 0].astype(np.float32)
    d = D[:, None] * b[:, 2:6].astype(np.float32) / np.float32(127)
    return _nf4_values(b[:, 6:].reshape(-1, 4, 32), d).reshape(-1)


def _read(path):
    """(metadata, [(name, type id, GGUF dims, raw data)]): read with gguf-py, or for a file holding
    pyengine's own types, which gguf-py cannot parse, with pyengine's pure-Python reader."""
    with pyengine.gguf.GGUFReader(path) as ours:
        if any(t.type in pyengine.gguf.PYENGINE_TYPES for t in ours.tensors.values()):
            return dict(ours.metadata), [(t.name, int(t.type), t.shape, t.data) for t in ours.tensors.values()]
    r = GGUFReader(path)
    kv = {f.name: f.contents() for f in r.fields.values()}
    return kv, [(t.name, int(t.tensor_type), tuple(int(d) for d in t.shape), t.data) for t in r.tensors]


def _dequantize(type_id, raw):
    if type_id in (NF4, NF4_DQ):
        return dequantize_nf4(raw, type_id)
    if type_id == T.F32:
        return np.array(raw)
    return quants.dequantize(np.asarray(raw), T(type_id))


class ReferenceLlama:
    def __init__(self, path):
        kv, tensors = _read(path)
        p = "llama."
        self.n_layers = int(kv[p + "block_count"])
        self.n_embd = int(kv[p + "embedding_length"])
        self.n_heads = int(kv[p + "attention.head_count"])
        self.n_kv_heads = int(kv.get(p + "attention.head_count_kv", self.n_heads))
        self.head_dim = self.n_embd // self.n_heads
        self.n_rot = int(kv.get(p + "rope.dimension_count", self.head_dim))
        self.theta = float(kv.get(p + "rope.freq_base", 10000.0))
        self.eps = float(kv.get(p + "attention.layer_norm_rms_epsilon", 1e-5))
        self.w, self.types, self.mins = {}, {}, {}
        for name, type_id, dims, raw in tensors:
            if type_id in MIN_BLOCK_BYTES:
                # the per-block minimum m, (rows, n_blocks): its term is m * s with Q8_1's fp16 s.
                blocks = np.asarray(raw).reshape(-1, MIN_BLOCK_BYTES[type_id])
                self.mins[name] = blocks[:, 2:4].copy().view(np.float16)[:, 0].astype(np.float64).reshape(
                    int(dims[1]), -1)
            shape = [int(d) for d in reversed(dims)]
            self.w[name] = np.asarray(_dequantize(type_id, raw), np.float64).reshape(shape)
            self.types[name] = type_id
        if "output.weight" not in self.w:
            for table in (self.w, self.types, self.mins):
                if "token_embd.weight" in table:
                    table["output.weight"] = table["token_embd.weight"]

    def _rms_norm(self, x, weight):
        return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + self.eps) * weight

    def _matmul(self, name, x, quantize_activations):
        activation = ACTIVATION.get(self.types[name]) if quantize_activations else None
        if activation is None:
            return x @ self.w[name].T
        xq = ROUND_TRIP[activation](x)
        if activation != "q8_1":
            return xq @ self.w[name].T
        # Q8_1: the weight's minimum m multiplies Q8_1's s instead of the sum of the values
        m = self.mins[name]
        w_no_min = (self.w[name].reshape(m.shape[0], m.shape[1], 32) - m[..., None]).reshape(self.w[name].shape)
        return xq @ w_no_min.T + q8_1_sums(x) @ m.T

    def _rope(self, x, positions):
        # x: (T, heads, head_dim); rotate adjacent pairs of the first n_rot dims.
        i = np.arange(self.n_rot // 2)
        freqs = self.theta ** (-2.0 * i / self.n_rot)
        angles = positions[:, None] * freqs[None, :]  # (T, n_rot/2)
        cos, sin = np.cos(angles)[:, None, :], np.sin(angles)[:, None, :]
        out = x.copy()
        x0, x1 = x[..., 0:self.n_rot:2], x[..., 1:self.n_rot:2]
        out[..., 0:self.n_rot:2] = x0 * cos - x1 * sin
        out[..., 1:self.n_rot:2] = x0 * sin + x1 * cos
        return out

    def logits(self, ids, quantize_activations=True, kv_f16=True):
        """float64 logits [len(ids), n_vocab] of a fresh sequence."""
        n = len(ids)
        hd, H, KV = self.head_dim, self.n_heads, self.n_kv_heads
        x = self.w["token_embd.weight"][np.asarray(ids)]
        positions = np.arange(n, dtype=np.float64)
        mask = np.triu(np.full((n, n), -np.inf), 1)
        for layer in range(self.n_layers):
            b = f"blk.{layer}."
            xn = self._rms_norm(x, self.w[b + "attn_norm.weight"])
            q = self._matmul(b + "attn_q.weight", xn, quantize_activations).reshape(n, H, hd)
            k = self._matmul(b + "attn_k.weight", xn, quantize_activations).reshape(n, KV, hd)
            v = self._matmul(b + "attn_v.weight", xn, quantize_activations).reshape(n, KV, hd)
            q, k = self._rope(q, positions), self._rope(k, positions)
            if kv_f16:
                k = k.astype(np.float16).astype(np.float64)
                v = v.astype(np.float16).astype(np.float64)
            group = H // KV
            out = np.empty((n, H, hd))
            for h in range(H):
                scores = q[:, h, :] @ k[:, h // group, :].T / np.sqrt(hd) + mask
                scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
                out[:, h, :] = (scores / scores.sum(axis=-1, keepdims=True)) @ v[:, h // group, :]
            x = x + self._matmul(b + "attn_output.weight", out.reshape(n, H * hd), quantize_activations)
            xn = self._rms_norm(x, self.w[b + "ffn_norm.weight"])
            gate = self._matmul(b + "ffn_gate.weight", xn, quantize_activations)
            up = self._matmul(b + "ffn_up.weight", xn, quantize_activations)
            hidden = gate / (1.0 + np.exp(-gate)) * up
            x = x + self._matmul(b + "ffn_down.weight", hidden, quantize_activations)
        xn = self._rms_norm(x, self.w["output_norm.weight"])
        return self._matmul("output.weight", xn, quantize_activations)
