"""A plain numpy float64 forward pass of the F32 tiny models of tests/arch_models.py (qwen2, qwen3,
gemma3, phi3), written from llama.cpp's graphs (src/models/<arch>.cpp) and held to llama.cpp's own
outputs by tests/data/make_llamacpp_arch_golden.py: the semantics an engine must match, in code.

reference_hidden(path, ids, n_ctx) -> the final norm's output [len(ids), n_embd] (llama.cpp's
result_norm / t_embd); logits are that times output.weight (token_embd.weight when tied).

Exact RoPE angles (llama.cpp builds them in float32 by repeated multiplication:
~1e-6 relative). gelu_fp16=True copies llama.cpp's CPU GELU, which rounds its input to float16 and
looks the result up in a float16 table; False is the exact tanh approximation.
"""

from __future__ import annotations

import numpy as np


def _read(path):
    """(metadata, name -> float64 array) of an F32 file, read with pyengine's pure-Python GGUF reader
    (held to gguf-py's in test_gguf; gguf-py's takes ~15 s over a 150k-token vocabulary)."""
    from pyengine.gguf import GGMLType, GGUFReader

    with GGUFReader(path) as r:
        kv = {k: v for k, v in r.metadata.items() if not k.startswith("tokenizer.")}
        w = {}
        for name, t in r.tensors.items():
            if t.type != GGMLType.F32:
                raise ValueError(f"{path}: {name} is {t.type.name}; the reference reads F32 files only")
            w[name] = np.array(t.data, np.float64).reshape(tuple(reversed(t.shape)))
    return kv, w


def gelu_tanh(x, fp16=False):
    if not fp16:
        return 0.5 * x * (1.0 + np.tanh(0.7978845608028654 * x * (1.0 + 0.044715 * x * x)))
    # ggml_vec_geglu_f32 under GGML_GELU_FP16: x <= -10 -> 0, x >= 10 -> x, else
    # fp16(gelu_f32(fp16(x))) computed in float32
    h = x.astype(np.float16).astype(np.float32)
    g = (np.float32(0.5) * h * (np.float32(1) + np.tanh(np.float32(0.7978845608028654) * h *
                                                      (np.float32(1) + np.float32(0.044715) * h * h))))
    g = g.astype(np.float16).astype(np.float64)
    return np.where(x <= -10, 0.0, np.where(x >= 10, x, g))


class ReferenceArch:
    def __init__(self, path):
        kv, self.w = _read(path)
        self.arch = a = kv["general.architecture"]
        g = lambda k, d=None: kv.get(f"{a}.{k}", d)  # noqa: E731
        self.n_layers = int(g("block_count"))
        self.n_embd = int(g("embedding_length"))
        self.n_heads = int(g("attention.head_count"))
        self.n_kv_heads = int(g("attention.head_count_kv", self.n_heads))
        self.head_dim = int(g("attention.key_length", self.n_embd // self.n_heads))
        self.n_rot = int(g("rope.dimension_count", self.head_dim))
        self.theta = float(g("rope.freq_base", 10000.0))
        self.theta_swa = float(g("rope.freq_base_swa", 10000.0))
        self.eps = float(g("attention.layer_norm_rms_epsilon"))
        self.n_swa = int(g("attention.sliding_window", 0)) if a == "gemma3" else 0
        self.n_ctx_orig = int(g("rope.scaling.original_context_length", g("context_length")))
        self.attn_factor = float(g("rope.scaling.attn_factor", 1.0))
        if "output.weight" not in self.w:
            self.w["output.weight"] = self.w["token_embd.weight"]

    def is_swa(self, layer):
        # gemma3: sliding_window_pattern 6 -> every 6th layer (5, 11, ...) global, the others local
        return self.n_swa > 0 and layer % 6 < 5

    def _norm(self, x, weight):
        return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + self.eps) * weight

    def _rope(self, x, positions, theta, factors=None, mscale=1.0):
        """NEOX RoPE on the first n_rot dims of x (T, heads, head_dim): dim i pairs with i + n_rot/2;
        frequency theta^(-2i/n_rot) / factors[i]; the rotated dims' cos and sin times mscale, the
        other dims untouched."""
        n, half = self.n_rot, self.n_rot // 2
        freqs = theta ** (-2.0 * np.arange(half) / n)
        if factors is not None:
            freqs = freqs / factors
        ang = positions[:, None] * freqs[None, :]
        cos, sin = (mscale * np.cos(ang))[:, None, :], (mscale * np.sin(ang))[:, None, :]
        out = x.copy()
        x0, x1 = x[..., :half], x[..., half:n]
        out[..., :half] = x0 * cos - x1 * sin
        out[..., half:n] = x0 * sin + x1 * cos
        return out

    def _attention(self, q, k, v, scale, n_swa):
        n, H, hd = q.shape
        group = H // self.n_kv_heads
        i, j = np.arange(n)[:, None], np.arange(n)[None, :]
        allowed = j <= i
        if n_swa:
            allowed &= (i - j) < n_swa  # llama.cpp masks p1 - p0 >= n_swa
        mask = np.where(allowed, 0.0, -np.inf)
        out = np.empty((n, H, v.shape[-1]))
        for h in range(H):
            s = q[:, h, :] @ k[:, h // group, :].T * scale + mask
            s = np.exp(s - s.max(-1, keepdims=True))
            out[:, h, :] = (s / s.sum(-1, keepdims=True)) @ v[:, h // group, :]
        return out.reshape(n, -1)

    def hidden(self, ids, n_ctx=512, gelu_fp16=True):
        """float64 output of the final norm [len(ids), n_embd] for a fresh sequence. n_ctx: the
        context as llama.cpp sees it (its n_ctx rounded up to a multiple of 256): phi3 takes its long
        rope factors when n_ctx > original_context_length."""
        w, a, n = self.w, self.arch, len(ids)
        H, KV, hd = self.n_heads, self.n_kv_heads, self.head_dim
        pos = np.arange(n, dtype=np.float64)
        x = w["token_embd.weight"][np.asarray(ids)]
        if a == "gemma3":
            x = x * np.sqrt(self.n_embd)
        factors = None
        if a == "phi3":
            factors = w["rope_factors_long.weight" if n_ctx > self.n_ctx_orig else "rope_factors_short.weight"]
        for il in range(self.n_layers):
            b = f"blk.{il}."
            xn = self._norm(x, w[b + "attn_norm.weight"])
            if a == "phi3":
                qkv = xn @ w[b + "attn_qkv.weight"].T
                q, k, v = np.split(qkv, [H * hd, H * hd + KV * hd], axis=-1)
            else:
                q, k, v = (xn @ w[b + f"attn_{t}.weight"].T for t in "qkv")
                if a == "qwen2":
                    q, k, v = q + w[b + "attn_q.bias"], k + w[b + "attn_k.bias"], v + w[b + "attn_v.bias"]
            q, k, v = q.reshape(n, H, hd), k.reshape(n, KV, hd), v.reshape(n, KV, hd)
            if a in ("qwen3", "gemma3"):
                q, k = self._norm(q, w[b + "attn_q_norm.weight"]), self._norm(k, w[b + "attn_k_norm.weight"])
            theta = self.theta_swa if self.is_swa(il) else self.theta
            q = self._rope(q, pos, theta, factors, self.attn_factor)
            k = self._rope(k, pos, theta, factors, self.attn_factor)
            att = self._attention(q, k, v, 1.0 / np.sqrt(hd), self.n_swa if self.is_swa(il) else 0)
            att = att @ w[b + "attn_output.weight"].T
            if a == "gemma3":
                att = self._norm(att, w[b + "post_attention_norm.weight"])
            x = x + att
            xn = self._norm(x, w[b + "ffn_norm.weight"])
            if a == "phi3":
                gate, up = np.split(xn @ w[b + "ffn_up.weight"].T, 2, axis=-1)
            else:
                gate, up = xn @ w[b + "ffn_gate.weight"].T, xn @ w[b + "ffn_up.weight"].T
            act = gelu_tanh(gate, gelu_fp16) if a == "gemma3" else gate / (1.0 + np.exp(-gate))
            f = (act * up) @ w[b + "ffn_down.weight"].T
            if a == "gemma3":
                f = self._norm(f, w[b + "post_ffw_norm.weight"])
            x = x + f
        return self._norm(x, w["output_norm.weight"])

    def logits(self, hidden):
        return hidden @ self.w["output.weight"].T


def reference_hidden(path, ids, n_ctx=512, gelu_fp16=True):
    return ReferenceArch(path).hidden(ids, n_ctx, gelu_fp16)
