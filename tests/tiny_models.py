"""Small random-weight models written by our GGUF writer, for forward-pass tests: llama, and the
other architectures pyengine runs (qwen2, qwen3, gemma3, phi3) in the shapes that test their recipes."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest

import pyengine
from pyengine.gguf import GGMLType, GGUFReader, GGUFValueType, GGUFWriter


def byte_level_vocab(n_vocab):
    """A GPT-2 byte-level vocabulary: the 256 byte symbols, <|endoftext|>, then filler tokens."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    tokens = [chr(c) for c in cs] + ["<|endoftext|>"]
    tokens += [f"<filler{i}>" for i in range(n_vocab - len(tokens))]
    types = [1] * 256 + [3] + [4] * (n_vocab - 257)
    return tokens, types


def sentencepiece_vocab(n_vocab):
    """A SentencePiece vocabulary: <unk> <s> </s>, the 256 byte tokens <0xNN>, then scored pieces."""
    letters = "abcdefghijklmnopqrstuvwxyz"
    pieces = ["\u2581"] + list(letters) + ["\u2581" + c for c in letters]
    pieces += [f"\u2581{a}{b}" for a in letters for b in letters]
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + pieces[: n_vocab - 259]
    types = [2, 3, 3] + [6] * 256 + [1] * (len(tokens) - 259)
    scores = [0.0] * 259 + [-float(i) for i in range(len(tokens) - 259)]
    return tokens, types, scores


def write_tiny_llama(path, *, n_layers=2, n_embd=64, n_ff=96, n_heads=4, n_kv_heads=2, n_vocab=300,
                     weight_type="f32", embd_type=None, tensor_types=None, tied=False, n_ctx_train=256,
                     rope_theta=10000.0, n_rot=None, seed=0, vocab="gpt2", arch="llama", head_dim=None,
                     sliding_window=0, rope_theta_local=None, rope_factors=False, n_ctx_orig=None,
                     rope_attn_factor=None):
    """A model of random weights; vocab "gpt2" (byte-level BPE, GPT-2's byte symbols) or "spm"
    (SentencePiece: byte tokens and pieces of letters). Matrices are of weight_type, token_embd of
    embd_type if given; tensor_types maps a matrix's role (its name without "blk.N." and ".weight":
    "token_embd", "output", "attn_v", "ffn_down", ...) to its type, for mixes such as Q4_K_M's.

    arch other than "llama" adds that architecture's tensors and keys: qwen2 q/k/v biases; qwen3 and
    gemma3 q/k norms and head_dim (attention.key_length, may differ from n_embd / n_heads); gemma3
    post norms, sliding_window (every 6th layer global) and rope_theta_local; phi3 fused attn_qkv
    and gate-up ffn_up, and with rope_factors LongRoPE's long and short factors (n_ctx_orig,
    rope_attn_factor)."""
    rng = np.random.default_rng(seed)
    head_dim = head_dim or n_embd // n_heads
    p = arch + "."
    roles = {"token_embd": embd_type or weight_type, **(tensor_types or {})}

    def type_of(role):
        return roles.get(role, weight_type)

    def matrix(rows, cols, type_name):
        w = (rng.standard_normal((rows, cols)) / np.sqrt(cols)).astype(np.float32)
        return w if type_name == "f32" else pyengine.quantize(w, type_name)

    def add_matrix(writer, name, rows, cols, type_name):
        data = matrix(rows, cols, type_name)
        if type_name == "f32":
            writer.add_tensor(name, data)
        else:
            writer.add_tensor(name, data, getattr(GGMLType, type_name.upper()), shape=(cols, rows))

    def norm(n):
        return (1.0 + 0.1 * rng.standard_normal(n)).astype(np.float32)

    with GGUFWriter(path) as w:
        w.add_string("general.architecture", arch)
        w.add_string("general.name", f"tiny-random-{arch}")
        w.add_uint32(p + "block_count", n_layers)
        w.add_uint32(p + "context_length", n_ctx_train)
        w.add_uint32(p + "embedding_length", n_embd)
        w.add_uint32(p + "feed_forward_length", n_ff)
        w.add_uint32(p + "attention.head_count", n_heads)
        w.add_uint32(p + "attention.head_count_kv", n_kv_heads)
        w.add_uint32(p + "rope.dimension_count", n_rot or head_dim)
        w.add_float32(p + "rope.freq_base", rope_theta)
        w.add_float32(p + "attention.layer_norm_rms_epsilon", 1e-5)
        if arch in ("qwen3", "gemma3"):
            w.add_uint32(p + "attention.key_length", head_dim)
            w.add_uint32(p + "attention.value_length", head_dim)
        if sliding_window:
            w.add_uint32(p + "attention.sliding_window", sliding_window)
        if rope_theta_local:
            w.add_float32(p + "rope.freq_base_swa", rope_theta_local)
        if n_ctx_orig:
            w.add_uint32(p + "rope.scaling.original_context_length", n_ctx_orig)
        if rope_attn_factor:
            w.add_float32(p + "rope.scaling.attn_factor", rope_attn_factor)
        if vocab == "spm":
            tokens, types, scores = sentencepiece_vocab(n_vocab)
            w.add_string("tokenizer.ggml.model", "llama")
            w.add_array("tokenizer.ggml.tokens", tokens, GGUFValueType.STRING)
            w.add_array("tokenizer.ggml.scores", np.array(scores, np.float32), GGUFValueType.FLOAT32)
            w.add_array("tokenizer.ggml.token_type", np.array(types, np.int32), GGUFValueType.INT32)
            w.add_uint32("tokenizer.ggml.bos_token_id", 1)
            w.add_uint32("tokenizer.ggml.eos_token_id", 2)
            w.add_uint32("tokenizer.ggml.unknown_token_id", 0)
        else:
            tokens, types = byte_level_vocab(n_vocab)
            w.add_string("tokenizer.ggml.model", "gpt2")
            w.add_string("tokenizer.ggml.pre", "gpt-2")
            w.add_array("tokenizer.ggml.tokens", tokens, GGUFValueType.STRING)
            w.add_array("tokenizer.ggml.token_type", np.array(types, np.int32), GGUFValueType.INT32)
            w.add_array("tokenizer.ggml.merges", [], GGUFValueType.STRING)
            w.add_uint32("tokenizer.ggml.bos_token_id", 256)
            w.add_uint32("tokenizer.ggml.eos_token_id", 256)
        add_matrix(w, "token_embd.weight", n_vocab, n_embd, type_of("token_embd"))
        w.add_tensor("output_norm.weight", norm(n_embd))
        if not tied:
            add_matrix(w, "output.weight", n_vocab, n_embd, type_of("output"))
        if rope_factors:
            for kind in ("long", "short"):
                w.add_tensor(f"rope_factors_{kind}.weight",
                             (1.0 + rng.uniform(0, 4 if kind == "long" else 0.5, (n_rot or head_dim) // 2)).astype(np.float32))
        q_dim, kv_dim = n_heads * head_dim, n_kv_heads * head_dim
        for i in range(n_layers):
            b = f"blk.{i}."
            w.add_tensor(b + "attn_norm.weight", norm(n_embd))
            if arch == "phi3":
                add_matrix(w, b + "attn_qkv.weight", q_dim + 2 * kv_dim, n_embd, type_of("attn_qkv"))
            else:
                add_matrix(w, b + "attn_q.weight", q_dim, n_embd, type_of("attn_q"))
                add_matrix(w, b + "attn_k.weight", kv_dim, n_embd, type_of("attn_k"))
                add_matrix(w, b + "attn_v.weight", kv_dim, n_embd, type_of("attn_v"))
            add_matrix(w, b + "attn_output.weight", n_embd, q_dim, type_of("attn_output"))
            w.add_tensor(b + "ffn_norm.weight", norm(n_embd))
            if arch == "phi3":
                add_matrix(w, b + "ffn_up.weight", 2 * n_ff, n_embd, type_of("ffn_up"))
            else:
                add_matrix(w, b + "ffn_gate.weight", n_ff, n_embd, type_of("ffn_gate"))
                add_matrix(w, b + "ffn_up.weight", n_ff, n_embd, type_of("ffn_up"))
            add_matrix(w, b + "ffn_down.weight", n_embd, n_ff, type_of("ffn_down"))
            if arch == "qwen2":
                for t, n in (("q", q_dim), ("k", kv_dim), ("v", kv_dim)):
                    w.add_tensor(b + f"attn_{t}.bias", (0.5 * rng.standard_normal(n)).astype(np.float32))
            if arch in ("qwen3", "gemma3"):
                w.add_tensor(b + "attn_q_norm.weight", norm(head_dim))
                w.add_tensor(b + "attn_k_norm.weight", norm(head_dim))
            if arch == "gemma3":
                w.add_tensor(b + "post_attention_norm.weight", norm(n_embd))
                w.add_tensor(b + "post_ffw_norm.weight", norm(n_embd))
    return path


def threads_warning(n_threads):
    """What Model(n_threads=...) must do on this machine: warn (OversubscriptionWarning) when n_threads is
    more than the CPUs the process may run on, else nothing (under filterwarnings=error, a warning
    would fail the test)."""
    from pyengine.model import usable_cpus

    if n_threads > usable_cpus():
        return pytest.warns(pyengine.OversubscriptionWarning, match=f"{n_threads} threads on")
    return contextlib.nullcontext()


def scale_output_row(path, token_id, factor):
    """Multiplies the row of token_id in an F32 output.weight, in place: factor > 1 makes the token's
    logit larger and more variable (an end-of-sequence token that beam search tests can reach)."""
    with GGUFReader(path) as reader:
        info = reader.tensors["output.weight"]
        if info.type != GGMLType.F32:
            raise ValueError(f"{path}: output.weight is {info.type.name}, not F32")
        offset, shape = info.offset, info.data.shape
    weights = np.memmap(path, np.float32, "r+", offset=offset, shape=shape)
    weights[token_id] *= factor
    weights.flush()
    del weights
    return path
