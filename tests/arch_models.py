"""Small random-weight F32 models of the architectures beside llama: qwen2, qwen3, gemma3, phi3.

write_tiny_arch(path, arch, vocab_gguf=..., seed=0, **shape) writes one with gguf-py's GGUFWriter
(not pyengine's), its tokenizer metadata (every tokenizer.* key: tokenizer.ggml.* and the chat
template) copied from a real vocabulary: vocab_gguf(arch) names it (the shared vocab-only files for
qwen2/qwen3 and phi3, the real Gemma 3 270M file, fetched, for gemma3). The same arguments give the
same bytes, so tests regenerate a model and compare with llama.cpp's outputs on it
(tests/data/make_llamacpp_arch_golden.py, tests/data/llamacpp_arch_golden.npz).

Each model exercises what its architecture adds to llama (llama.cpp's src/models/<arch>.cpp):
- qwen2: biases on attn_q / attn_k / attn_v; NEOX RoPE; tied (no output.weight) or untied.
- qwen3: attn_q_norm / attn_k_norm (RMS norm over each head, before RoPE), no biases, head_dim from
  attention.key_length (32) unlike n_embd / n_head (16): attn_q has n_head * head_dim rows.
- gemma3: embeddings times sqrt(n_embd); q/k norms; post_attention_norm and post_ffw_norm; GELU
  (tanh) gated FFN; head_dim 32 from key_length; attention scale 1/sqrt(head_dim); sliding-window
  attention of 8 positions in every layer but each 6th (layers 0-4 and 6 local, layer 5 global);
  local layers use RoPE base 10000, the global ones rope.freq_base (1e6); tied output.
- phi3: fused attn_qkv (q, k, v rows in that order), ffn_up of 2 * n_ff rows (gate half first, then
  up), partial NEOX RoPE (rope.dimension_count 16 of head_dim 24), rope_factors_long/short
  (n_rot / 2 floats: llama.cpp divides each pair's frequency by its factor, long ones when the
  context n_ctx > rope.scaling.original_context_length), rope.scaling.attn_factor (the rotated
  dims' cos and sin multiplied by it); untied output.

Weights are normal: matrices N(0, gain^2 / fan_in), norm weights 1 + 0.1 N(0, 1) (so that a norm
applied to the wrong tensor, or missed, shows), biases N(0, 0.5^2); the logits have a std of about 5
(SCALES), peaked enough that greedy decoding has few near-ties (llamacpp_arch_golden.npz records
llama.cpp's top-2 gaps). The same arguments, vocabulary file and gguf-py give the same bytes (the
golden file records each model's sha256).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

ARCHS = ("qwen2", "qwen3", "gemma3", "phi3")
VOCAB_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "vocab"

# Default shapes; any of them can be overridden as a keyword of write_tiny_arch.
SHAPES = {
    "qwen2": dict(n_layers=2, n_embd=64, n_ff=128, n_heads=4, n_kv_heads=2, head_dim=16, tied=False,
                  n_ctx_train=1024, rope_theta=1e6, rms_eps=1e-6),
    "qwen3": dict(n_layers=3, n_embd=64, n_ff=128, n_heads=4, n_kv_heads=2, head_dim=32, tied=True,
                  n_ctx_train=1024, rope_theta=1e6, rms_eps=1e-6),
    "gemma3": dict(n_layers=7, n_embd=64, n_ff=128, n_heads=4, n_kv_heads=1, head_dim=32, tied=True,
                   n_ctx_train=1024, rope_theta=1e6, rms_eps=1e-6, sliding_window=8),
    "phi3": dict(n_layers=3, n_embd=96, n_ff=128, n_heads=4, n_kv_heads=2, head_dim=24, tied=False,
                 n_ctx_train=2048, rope_theta=10000.0, rms_eps=1e-5, n_rot=16, n_ctx_orig=512, attn_factor=None),
}
# Scales. Matrices N(0, gain^2 / fan_in); norm weights 1 + norm_std N(0, 1); biases N(0, bias_std^2).
# Logits of std about out_std: an untied output.weight N(0, out_std^2 / n_embd) (token_embd N(0,
# embd_std^2), default 1). A tied embedding is also the output, and a token's own embedding in the
# final hidden state then raises its own logit: a random model repeats one token for ever unless the
# embedding is small beside what the layers add. So tied: token_embd N(0, embd_std^2) with a small
# embd_std (default TIED_EMBD_STD: gemma3's is smaller, its embeddings enter times sqrt(n_embd)), and
# output_norm.weight times out_std / (sqrt(n_embd) embd_std) instead (12.5, gemma3 21: the logits' scale).
SCALES = dict(gain=1.0, out_std=5.0, embd_std=None, bias_std=0.5, norm_std=0.1)
TIED_EMBD_STD = {"qwen2": 0.05, "qwen3": 0.05, "gemma3": 0.03, "phi3": 0.05}


def vocab_gguf(arch: str) -> Path:
    """The GGUF whose tokenizer a tiny model of arch copies (gemma3's is fetched: 253 MB)."""
    if arch in ("qwen2", "qwen3", "phi3"):
        path = VOCAB_DIR / ("ggml-vocab-llama-spm.gguf" if arch == "phi3" else "ggml-vocab-qwen2.gguf")
        if not path.exists():
            import pytest

            pytest.skip(f"{path} is absent: the shared test data (shared/data beside the repository) is not here")
        return path
    if arch == "gemma3":
        from pyengine.fetch import fetch_gemma3_270m

        return fetch_gemma3_270m()
    raise ValueError(f"no tiny model of {arch!r}; known: {', '.join(ARCHS)}")


def tiny_arch_shape(arch: str, **shape) -> dict:
    """The hyper-parameters a tiny model of arch is written with: the defaults, overridden."""
    if arch not in SHAPES:
        raise ValueError(f"no tiny model of {arch!r}; known: {', '.join(ARCHS)}")
    unknown = set(shape) - set(SHAPES[arch]) - set(SCALES)
    if unknown:
        raise TypeError(f"{arch}: unknown shape keys {sorted(unknown)}")
    c = {**SHAPES[arch], **SCALES, **shape}
    if arch == "phi3" and c["attn_factor"] is None:
        # as the converter computes it for LongRoPE (Phi-3 128k): sqrt(1 + ln(s) / ln(n_ctx_orig)) with
        # s = n_ctx_train / n_ctx_orig; 1.1051 here
        c["attn_factor"] = math.sqrt(1 + math.log(c["n_ctx_train"] / c["n_ctx_orig"]) / math.log(c["n_ctx_orig"]))
    return c


def _tokenizer_fields(path):
    """[(key, value, type, sub type)] of every tokenizer.* key of a GGUF, in file order, as gguf-py's
    writer takes them. Read with pyengine's reader (gguf-py's takes ~15 s on a 150k-token vocabulary)."""
    import gguf

    from pyengine.gguf import GGUFReader

    out = []
    with GGUFReader(path) as reader:
        for key, value in reader.metadata.items():
            if not key.startswith("tokenizer."):
                continue
            vtype = reader.metadata_types[key]
            if isinstance(vtype, tuple):  # (ARRAY, element type): arrays of arrays do not occur here
                vtype, sub = gguf.GGUFValueType(int(vtype[0])), gguf.GGUFValueType(int(vtype[1]))
                value = value.tolist() if isinstance(value, np.ndarray) else list(value)
            else:
                vtype, sub = gguf.GGUFValueType(int(vtype)), None
            out.append((key, value, vtype, sub))
    if not out:
        raise ValueError(f"{path} has no tokenizer metadata")
    return out


def _n_vocab(fields) -> int:
    return next(len(value) for key, value, _, _ in fields if key == "tokenizer.ggml.tokens")


def write_tiny_arch(path, arch: str, *, vocab_gguf, seed: int = 0, **shape) -> Path:
    """Writes a tiny random model of arch (F32) to path; returns path. shape overrides SHAPES[arch] and
    SCALES. The same arguments (and vocabulary file) give the same bytes."""
    import gguf

    c = tiny_arch_shape(arch, **shape)
    fields = _tokenizer_fields(vocab_gguf)
    n_vocab = _n_vocab(fields)
    rng = np.random.default_rng(seed)
    E, F, H, KV, hd = c["n_embd"], c["n_ff"], c["n_heads"], c["n_kv_heads"], c["head_dim"]

    def normal(*dims, std):
        return (rng.standard_normal(dims, dtype=np.float32) * np.float32(std)).astype(np.float32)

    def matrix(rows, cols):
        return normal(rows, cols, std=c["gain"] / math.sqrt(cols))

    def norm(n):
        return (1.0 + normal(n, std=c["norm_std"])).astype(np.float32)

    w = gguf.GGUFWriter(str(path), arch)
    p = arch + "."
    # (not the arch: a name with "phi3" in it makes llama.cpp look up phi-3 tokens, "<|endoftext|>", that
    # the llama-spm vocabulary lacks)
    w.add_string("general.name", "tiny random model")
    w.add_uint32("general.file_type", 0)  # all F32
    w.add_uint32(p + "block_count", c["n_layers"])
    w.add_uint32(p + "context_length", c["n_ctx_train"])
    w.add_uint32(p + "embedding_length", E)
    w.add_uint32(p + "feed_forward_length", F)
    w.add_uint32(p + "attention.head_count", H)
    w.add_uint32(p + "attention.head_count_kv", KV)
    w.add_float32(p + "rope.freq_base", c["rope_theta"])
    w.add_float32(p + "attention.layer_norm_rms_epsilon", c["rms_eps"])
    if hd != E // H:
        w.add_uint32(p + "attention.key_length", hd)
        w.add_uint32(p + "attention.value_length", hd)
    if arch == "gemma3":
        w.add_uint32(p + "attention.sliding_window", c["sliding_window"])
    if arch == "phi3":
        if hd != E // H:
            raise ValueError("phi3: head_dim must be n_embd / n_heads (llama.cpp's attn_output is n_embd x n_embd)")
        w.add_uint32(p + "rope.dimension_count", c["n_rot"])
        w.add_uint32(p + "rope.scaling.original_context_length", c["n_ctx_orig"])
        w.add_float32(p + "rope.scaling.attn_factor", c["attn_factor"])
    for key, value, vtype, sub in fields:
        w.add_key_value(key, value, vtype, sub_type=sub)

    # the output matrix (or tied embedding): logits of std about out_std
    embd_std = c["embd_std"] or (TIED_EMBD_STD[arch] if c["tied"] else 1.0)
    w.add_tensor("token_embd.weight", normal(n_vocab, E, std=embd_std))
    out_gain = c["out_std"] / (math.sqrt(E) * embd_std) if c["tied"] else 1.0
    w.add_tensor("output_norm.weight", (out_gain * norm(E)).astype(np.float32))
    if not c["tied"]:
        w.add_tensor("output.weight", normal(n_vocab, E, std=c["out_std"] / math.sqrt(E)))
    if arch == "phi3":
        half = c["n_rot"] // 2
        # short: about 1; long: growing with the pair index (low frequencies stretched most), as LongRoPE's
        w.add_tensor("rope_factors_short.weight", (1.0 + np.abs(normal(half, std=0.1))).astype(np.float32))
        long = np.exp(np.linspace(0.0, math.log(16.0), half)) * (1.0 + normal(half, std=0.05))
        w.add_tensor("rope_factors_long.weight", long.astype(np.float32))
    for i in range(c["n_layers"]):
        b = f"blk.{i}."
        w.add_tensor(b + "attn_norm.weight", norm(E))
        if arch == "phi3":
            w.add_tensor(b + "attn_qkv.weight", matrix(H * hd + 2 * KV * hd, E))
        else:
            w.add_tensor(b + "attn_q.weight", matrix(H * hd, E))
            w.add_tensor(b + "attn_k.weight", matrix(KV * hd, E))
            w.add_tensor(b + "attn_v.weight", matrix(KV * hd, E))
        if arch == "qwen2":
            w.add_tensor(b + "attn_q.bias", normal(H * hd, std=c["bias_std"]))
            w.add_tensor(b + "attn_k.bias", normal(KV * hd, std=c["bias_std"]))
            w.add_tensor(b + "attn_v.bias", normal(KV * hd, std=c["bias_std"]))
        if arch in ("qwen3", "gemma3"):
            w.add_tensor(b + "attn_q_norm.weight", norm(hd))
            w.add_tensor(b + "attn_k_norm.weight", norm(hd))
        w.add_tensor(b + "attn_output.weight", matrix(E, H * hd))
        if arch == "gemma3":
            w.add_tensor(b + "post_attention_norm.weight", norm(E))
        w.add_tensor(b + "ffn_norm.weight", norm(E))
        if arch == "phi3":
            w.add_tensor(b + "ffn_up.weight", matrix(2 * F, E))
        else:
            w.add_tensor(b + "ffn_gate.weight", matrix(F, E))
            w.add_tensor(b + "ffn_up.weight", matrix(F, E))
        w.add_tensor(b + "ffn_down.weight", matrix(E, F))
        if arch == "gemma3":
            w.add_tensor(b + "post_ffw_norm.weight", norm(E))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return Path(path)
