"""A plain numpy float64 forward pass of every architecture pyengine runs (llama, qwen2, qwen3,
gemma3, phi3): the slow, independent reference for pyengine's engine. Each architecture's recipe is
written out here from the papers' and llama.cpp's definitions, not taken from pyengine's descriptions.

It reads the file with pyengine's pure-Python reader (held against gguf-py on ggml's types in
test_gguf; gguf-py's own reader takes 4-25 s over a real vocabulary), dequantizes with gguf.quants
(not our kernels), and computes every step in float64 with exact RoPE angles. pyengine's own formats
(NF4, NF4_DQ: type ids gguf-py does not know) are dequantized here in numpy from the raw bytes, not
by the C++ core. Two options make it see what the engine sees, so that differences shrink to float
rounding:
- quantize_activations: each matmul input with a quantized weight goes through a round trip of the
  activation format that llama.cpp and pyengine multiply the weight's type with (ACTIVATION): Q8_0
  (per 32-block absmax / 127, fp16 scale), Q8_1 (Q8_0's values, plus s = fp16(d * sum(q)) that the
  minimum term of Q4_1 and Q5_1 is computed with) or Q8_K (per 256-block, float32 scale);
- kv_f16: keys and values are rounded to float16, as stored in an F16 KV cache.
"""

from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf import quants

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
    """(metadata, [(name, type id, GGUF dims, raw data)]), read with pyengine's reader: gguf-py's
    parses every string of the vocabulary into numpy views (4 s for SmolLM2's, 15-25 s for Qwen's),
    and cannot parse pyengine's own types. The bytes this reference computes with are held to other
    readers elsewhere: tests/test_gguf.py holds pyengine's reader to gguf-py's on every type, and the
    golden tests compare with llama.cpp, which reads the same files with its own."""
    with pyengine.gguf.GGUFReader(path) as r:
        return dict(r.metadata), [(t.name, int(t.type), t.shape, t.data) for t in r.tensors.values()]


def _dequantize(type_id, raw):
    if type_id in (NF4, NF4_DQ):
        return dequantize_nf4(raw, type_id)
    if type_id == T.F32:
        return np.array(raw)
    return quants.dequantize(np.asarray(raw), T(type_id))


def gelu_tanh(x):
    """GELU (tanh form) as llama.cpp's CPU backend computes it, from a float16 table: x rounded to
    float16, the result rounded to float16; linear beyond +-10."""
    x16 = x.astype(np.float16).astype(np.float32)  # the table's entries are float32 arithmetic, as ggml's
    c, a = np.float32(np.sqrt(2.0 / np.pi)), np.float32(0.044715)
    g = np.float32(0.5) * x16 * (np.float32(1) + np.tanh(c * x16 * (np.float32(1) + a * x16 * x16)))
    return np.where(x <= -10, 0.0, np.where(x >= 10, x, g.astype(np.float16).astype(np.float64)))


def silu(x):
    return x / (1.0 + np.exp(-x))


class ReferenceModel:
    """n_ctx: the context the model runs with (phi3's LongRoPE picks its long factors beyond the
    original context)."""

    def __init__(self, path, n_ctx=None):
        kv, tensors = _read(path)
        self.arch = arch = str(kv.get("general.architecture", "llama"))
        p = arch + "."
        self.n_layers = int(kv[p + "block_count"])
        self.n_embd = int(kv[p + "embedding_length"])
        self.n_heads = int(kv[p + "attention.head_count"])
        self.n_kv_heads = int(kv.get(p + "attention.head_count_kv", self.n_heads))
        self.head_dim = self.n_embd // self.n_heads
        if arch != "phi3":
            self.head_dim = int(kv.get(p + "attention.key_length", self.head_dim))
        self.n_rot = int(kv.get(p + "rope.dimension_count", self.head_dim))
        self.theta = float(kv.get(p + "rope.freq_base", 10000.0))
        self.eps = float(kv.get(p + "attention.layer_norm_rms_epsilon", 1e-5))
        self.neox = arch != "llama"  # every architecture but llama's GGUF rotates halves
        self.activation = gelu_tanh if arch == "gemma3" else silu
        self.embd_scale = np.sqrt(self.n_embd) if arch == "gemma3" else 1.0
        self.attn_scale = 1.0 / np.sqrt(self.head_dim)
        # gemma3: a sliding window on 5 layers of every 6, the local layers with RoPE base 10000
        self.window = [0] * self.n_layers
        self.theta_local = float(kv.get(p + "rope.freq_base_swa", 10000.0))
        if arch == "gemma3" and int(kv.get(p + "attention.sliding_window", 0)) > 0:
            period = int(kv.get(p + "attention.sliding_window_pattern", 6))
            self.window = [int(kv[p + "attention.sliding_window"]) if layer % period < period - 1 else 0
                           for layer in range(self.n_layers)]
        n_ctx_train = int(kv[p + "context_length"])
        self.attn_factor = float(kv.get(p + "rope.scaling.attn_factor", 1.0))
        n_ctx_orig = int(kv.get(p + "rope.scaling.original_context_length", n_ctx_train))
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
        self.rope_factors = np.ones(self.n_rot // 2)
        if "rope_freqs.weight" in self.w:
            self.rope_factors = self.w["rope_freqs.weight"]
        if "rope_factors_long.weight" in self.w:
            long = (n_ctx or n_ctx_train) > n_ctx_orig
            self.rope_factors = self.w["rope_factors_long.weight" if long else "rope_factors_short.weight"]

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

    def _rope(self, x, positions, theta):
        # x: (T, heads, head_dim); rotates the first n_rot dims: adjacent pairs (llama) or halves (NeoX)
        i = np.arange(self.n_rot // 2)
        freqs = theta ** (-2.0 * i / self.n_rot) / self.rope_factors
        angles = positions[:, None] * freqs[None, :]  # (T, n_rot/2)
        cos = np.cos(angles)[:, None, :] * self.attn_factor
        sin = np.sin(angles)[:, None, :] * self.attn_factor
        out = x.copy()
        half = self.n_rot // 2
        first, second = (slice(0, self.n_rot, 2), slice(1, self.n_rot, 2)) if not self.neox else \
            (slice(0, half), slice(half, self.n_rot))
        x0, x1 = x[..., first], x[..., second]
        out[..., first] = x0 * cos - x1 * sin
        out[..., second] = x0 * sin + x1 * cos
        return out

    def _qkv(self, b, xn, qa):
        if b + "attn_qkv.weight" in self.w:  # phi3: q, k, v stacked by rows
            qkv = self._matmul(b + "attn_qkv.weight", xn, qa)
            q_dim, kv_dim = self.n_heads * self.head_dim, self.n_kv_heads * self.head_dim
            return qkv[:, :q_dim], qkv[:, q_dim:q_dim + kv_dim], qkv[:, q_dim + kv_dim:]
        out = [self._matmul(b + f"attn_{t}.weight", xn, qa) for t in "qkv"]
        for i, t in enumerate("qkv"):
            if b + f"attn_{t}.bias" in self.w:  # qwen2
                out[i] = out[i] + self.w[b + f"attn_{t}.bias"]
        return out

    def _gate_up(self, b, xn, qa):
        if b + "ffn_gate.weight" not in self.w:  # phi3: gate and up stacked by rows, the gate first
            both = self._matmul(b + "ffn_up.weight", xn, qa)
            return np.split(both, 2, axis=-1)
        return self._matmul(b + "ffn_gate.weight", xn, qa), self._matmul(b + "ffn_up.weight", xn, qa)

    def _post(self, b, name, y):
        return self._rms_norm(y, self.w[b + name]) if b + name in self.w else y

    def hidden(self, ids, quantize_activations=True, kv_f16=True):
        """float64 final-norm outputs [len(ids), n_embd] of a fresh sequence (what multiplies output)."""
        n, qa = len(ids), quantize_activations
        hd, H, KV = self.head_dim, self.n_heads, self.n_kv_heads
        x = self.w["token_embd.weight"][np.asarray(ids)] * self.embd_scale
        positions = np.arange(n, dtype=np.float64)
        distance = positions[:, None] - positions[None, :]  # query - key
        for layer in range(self.n_layers):
            b = f"blk.{layer}."
            xn = self._rms_norm(x, self.w[b + "attn_norm.weight"])
            q, k, v = self._qkv(b, xn, qa)
            q, k, v = q.reshape(n, H, hd), k.reshape(n, KV, hd), v.reshape(n, KV, hd)
            if b + "attn_q_norm.weight" in self.w:  # qwen3, gemma3: an RMS norm of each head
                q = self._rms_norm(q, self.w[b + "attn_q_norm.weight"])
                k = self._rms_norm(k, self.w[b + "attn_k_norm.weight"])
            window = self.window[layer]
            theta = self.theta_local if window else self.theta
            q, k = self._rope(q, positions, theta), self._rope(k, positions, theta)
            if kv_f16:
                k = k.astype(np.float16).astype(np.float64)
                v = v.astype(np.float16).astype(np.float64)
            masked = (distance < 0) | ((distance >= window) if window else False)
            mask = np.where(masked, -np.inf, 0.0)
            group = H // KV
            out = np.empty((n, H, hd))
            for h in range(H):
                scores = q[:, h, :] @ k[:, h // group, :].T * self.attn_scale + mask
                scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
                out[:, h, :] = (scores / scores.sum(axis=-1, keepdims=True)) @ v[:, h // group, :]
            y = self._matmul(b + "attn_output.weight", out.reshape(n, H * hd), qa)
            x = x + self._post(b, "post_attention_norm.weight", y)
            xn = self._rms_norm(x, self.w[b + "ffn_norm.weight"])
            gate, up = self._gate_up(b, xn, qa)
            y = self._matmul(b + "ffn_down.weight", self.activation(gate) * up, qa)
            x = x + self._post(b, "post_ffw_norm.weight", y)
        return self._rms_norm(x, self.w["output_norm.weight"])

    def logits(self, ids, quantize_activations=True, kv_f16=True):
        """float64 logits [len(ids), n_vocab] of a fresh sequence."""
        return self._matmul("output.weight", self.hidden(ids, quantize_activations, kv_f16), quantize_activations)


