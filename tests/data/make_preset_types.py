"""Dev-only: the tensor types llama.cpp's own quantizer (llama_model_quantize, through
llama-cpp-python, no importance matrix) chooses for each preset on small random llama models,
written to tests/data/llamacpp_preset_types.json for tests/test_presets.py, which checks
pyengine.requantize.choose_tensor_types against them without llama.cpp.

    pip install llama-cpp-python      # builds llama.cpp from source; never a runtime need
    python tests/data/make_preset_types.py [--smollm2]

The models (random F32 weights, written by pyengine's GGUFWriter) have shapes that exercise the rules:
1 to 80 layers (use_more_bits, the i < n/8 and i < n/16 layers, the "70B" attn_v rule at 80 layers
with GQA), rows that are multiples of 256 and rows that are not (the K-quant fallbacks, and rows of
200 that fit no block: F16), GQA 1 to 4, tied and untied output. The 80-layer model has no per-layer
norms (1-D tensors: no rule looks at them, and they would only make the file bigger). --smollm2 adds
the real SmolLM2-135M-Instruct F32 file (models/recipes.py f32) as a case, if it is in the cache.

JSON: {"llama_cpp": version, "cases": {case: {"hparams": {...}, "tensors": [[name, shape], ...],
"results": {key: {"preset", "options", "file_type", "common", "types"}}}}}. To stay small, a result's
types lists only the tensors whose type is not their baseline: "common" (the type most tensors got)
for a tensor of 2 or more dimensions, its own type in the source (F32) for a 1-D tensor. key is the
preset, or preset+options ("q4_k_m+pure"). The 80-layer case runs only the presets whose attn_v
rules it exercises (and q8_0), without options.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from pyengine.gguf import GGUFValueType, GGUFWriter  # noqa: E402

from tiny_models import byte_level_vocab  # noqa: E402

OUT = Path(__file__).with_name("llamacpp_preset_types.json")

PRESET_FTYPES = {"f32": 0, "f16": 1, "q4_0": 2, "q4_1": 3, "q8_0": 7, "q5_0": 8, "q5_1": 9, "q2_k": 10,
                 "q3_k_s": 11, "q3_k_m": 12, "q3_k_l": 13, "q4_k_s": 14, "q4_k_m": 15, "q5_k_s": 16,
                 "q5_k_m": 17, "q6_k": 18, "iq4_nl": 25, "iq4_xs": 30, "bf16": 32}
# ggml type ids of the types the options name, and their block sizes (an option is used only where
# llama.cpp can apply it: it quantizes an untied output / any token_embd to the named type as is).
GGML_IDS = {"q8_0": 8, "q6_k": 14, "q5_k": 13, "q4_0": 2, "f16": 1}
BLOCKS = {"q8_0": 32, "q6_k": 256, "q5_k": 256, "q4_0": 32, "f16": 1}
OPTION_SETS = [
    ("q4_k_m", {"pure": True}),
    ("q3_k_m", {"pure": True}),
    ("q4_0", {"pure": True}),
    ("q4_k_m", {"output_tensor_type": "q8_0"}),
    ("q4_k_m", {"output_tensor_type": "q5_k"}),
    ("q4_k_m", {"token_embedding_type": "q8_0"}),
    ("q2_k", {"output_tensor_type": "q4_0", "token_embedding_type": "q6_k"}),
    ("q5_k_s", {"output_tensor_type": "f16", "pure": True}),
]

# The presets the 80-layer case runs: those whose attn_v may be Q3_K or Q4_K (the "70B" rule), and q8_0.
PRESETS_70B = ("q2_k", "q3_k_s", "q3_k_m", "q3_k_l", "q4_k_s", "q4_k_m", "iq4_xs", "q8_0")

# name: (n_layer, n_embd, n_ff, n_head, n_head_kv, tied, with_norms)
CASES = {
    "l1_e256_gqa4": (1, 256, 512, 4, 1, False, True),
    "l4_e256_mha_tied": (4, 256, 768, 4, 4, True, True),
    "l8_e576_gqa3_tied": (8, 576, 1536, 9, 3, True, True),
    "l12_e96_gqa4": (12, 96, 160, 4, 1, False, True),
    "l16_e256_ff200_gqa2": (16, 256, 200, 4, 2, False, True),
    "l32_e256_mha_tied": (32, 256, 256, 4, 4, True, True),
    "l80_e256_gqa2": (80, 256, 256, 4, 2, False, False),
}
N_VOCAB = 300


def tensor_list(n_layer, n_embd, n_ff, n_head, n_head_kv, tied, with_norms):
    """[(name, GGUF shape)], the row length first."""
    head_dim = n_embd // n_head
    t = [("token_embd.weight", (n_embd, N_VOCAB)), ("output_norm.weight", (n_embd,))]
    if not tied:
        t.append(("output.weight", (n_embd, N_VOCAB)))
    for i in range(n_layer):
        b = f"blk.{i}."
        t += [(b + "attn_norm.weight", (n_embd,)), (b + "ffn_norm.weight", (n_embd,))] if with_norms else []
        n_q, n_kv = n_head * head_dim, n_head_kv * head_dim
        t += [(b + "attn_q.weight", (n_embd, n_q)), (b + "attn_k.weight", (n_embd, n_kv)),
              (b + "attn_v.weight", (n_embd, n_kv)), (b + "attn_output.weight", (n_q, n_embd)),
              (b + "ffn_gate.weight", (n_embd, n_ff)), (b + "ffn_up.weight", (n_embd, n_ff)),
              (b + "ffn_down.weight", (n_ff, n_embd))]
    return t


def write_model(path, n_layer, n_embd, n_ff, n_head, n_head_kv, tensors):
    rng = np.random.default_rng(0)
    with GGUFWriter(path) as w:
        w.add_string("general.architecture", "llama")
        w.add_string("general.name", "preset-types")
        w.add_uint32("llama.block_count", n_layer)
        w.add_uint32("llama.context_length", 256)
        w.add_uint32("llama.embedding_length", n_embd)
        w.add_uint32("llama.feed_forward_length", n_ff)
        w.add_uint32("llama.attention.head_count", n_head)
        w.add_uint32("llama.attention.head_count_kv", n_head_kv)
        w.add_uint32("llama.rope.dimension_count", n_embd // n_head)
        w.add_float32("llama.rope.freq_base", 10000.0)
        w.add_float32("llama.attention.layer_norm_rms_epsilon", 1e-5)
        tokens, types = byte_level_vocab(N_VOCAB)
        w.add_string("tokenizer.ggml.model", "gpt2")
        w.add_string("tokenizer.ggml.pre", "gpt-2")
        w.add_array("tokenizer.ggml.tokens", tokens, GGUFValueType.STRING)
        w.add_array("tokenizer.ggml.token_type", np.array(types, np.int32), GGUFValueType.INT32)
        w.add_array("tokenizer.ggml.merges", [], GGUFValueType.STRING)
        w.add_uint32("tokenizer.ggml.bos_token_id", 256)
        w.add_uint32("tokenizer.ggml.eos_token_id", 256)
        for name, shape in tensors:
            w.add_tensor(name, (0.02 * rng.standard_normal(tuple(reversed(shape)), dtype=np.float32)))


def llamacpp_types(llama_cpp, src, dst, preset, options):
    """(general.file_type, {tensor: type name}) of the file llama.cpp writes."""
    from gguf import GGUFReader

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = PRESET_FTYPES[preset]
    params.nthread = 2
    params.pure = bool(options.get("pure", False))
    if "output_tensor_type" in options:
        params.output_tensor_type = GGML_IDS[options["output_tensor_type"]]
    if "token_embedding_type" in options:
        params.token_embedding_type = GGML_IDS[options["token_embedding_type"]]
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    if rc != 0:
        raise RuntimeError(f"llama_model_quantize failed for {preset} {options}")
    r = GGUFReader(dst)
    file_type = int(r.fields["general.file_type"].parts[-1][0])
    types = {t.name: t.tensor_type.name.lower() for t in r.tensors}
    del r
    dst.unlink()
    return file_type, types


def applicable(options, tensors):
    """llama.cpp quantizes an untied output.weight / a token_embd to an option's type without a
    fallback: use the option only where the rows fit its block (else llama.cpp fails)."""
    shapes = dict(tensors)
    for key, name in (("output_tensor_type", "output.weight"), ("token_embedding_type", "token_embd.weight")):
        if key in options and name in shapes and shapes[name][0] % BLOCKS[options[key]] != 0:
            return False
    return True


def run_case(llama_cpp, d, name, hparams, tensors, src):
    results = {}
    if hparams["n_layer"] == 80:
        runs = [(p, {}) for p in PRESETS_70B]
    else:
        runs = [(p, {}) for p in PRESET_FTYPES] + [(p, o) for p, o in OPTION_SETS if applicable(o, tensors)]
    dims = {n: len(s) for n, s in tensors}
    for preset, options in runs:
        key = "+".join([preset] + [k if v is True else f"{k}={v}" for k, v in options.items()])
        file_type, types = llamacpp_types(llama_cpp, src, Path(d) / "out.gguf", preset, options)
        counts = {}
        for t in types.values():
            counts[t] = counts.get(t, 0) + 1
        common = max(counts, key=lambda t: (counts[t], t))
        results[key] = {"preset": preset, "options": options, "file_type": file_type, "common": common,
                        "types": {n: t for n, t in types.items() if t != (common if dims[n] >= 2 else "f32")}}
        print(f"  {name} {key}: {counts}", file=sys.stderr)
    return {"hparams": hparams, "tensors": [[n, list(s)] for n, s in tensors], "results": results}


def write_json(out):
    """One line per tensor and per result: readable diffs, a small file."""
    def line(value):
        return json.dumps(value, separators=(", ", ": "))

    parts = ["{", f' "llama_cpp": {line(out["llama_cpp"])},', ' "cases": {']
    for i, (name, case) in enumerate(out["cases"].items()):
        parts.append(f'  {line(name)}: {{')
        parts.append(f'   "hparams": {line(case["hparams"])},')
        parts.append('   "tensors": [')
        parts += [f"    {line(t)}," for t in case["tensors"][:-1]] + [f"    {line(case['tensors'][-1])}"]
        parts.append('   ],')
        parts.append('   "results": {')
        items = list(case["results"].items())
        parts += [f"    {line(k)}: {line(r)}" + ("," if j < len(items) - 1 else "") for j, (k, r) in enumerate(items)]
        parts.append("   }")
        parts.append("  }" + ("," if i < len(out["cases"]) - 1 else ""))
    parts += [" }", "}"]
    OUT.write_text("\n".join(parts) + "\n")
    json.loads(OUT.read_text())  # well-formed


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--smollm2", action="store_true", help="add SmolLM2-135M-Instruct F32 from the cache")
    args = ap.parse_args()
    import llama_cpp

    out = {"llama_cpp": f"llama-cpp-python {llama_cpp.__version__}", "cases": {}}
    with tempfile.TemporaryDirectory() as d:
        for name, (n_layer, n_embd, n_ff, n_head, n_head_kv, tied, norms) in CASES.items():
            tensors = tensor_list(n_layer, n_embd, n_ff, n_head, n_head_kv, tied, norms)
            src = Path(d) / f"{name}.gguf"
            write_model(src, n_layer, n_embd, n_ff, n_head, n_head_kv, tensors)
            hparams = {"arch": "llama", "n_layer": n_layer, "n_head": n_head, "n_head_kv": n_head_kv}
            out["cases"][name] = run_case(llama_cpp, d, name, hparams, tensors, src)
            src.unlink()
        if args.smollm2:
            from pyengine.fetch import cache_dir
            from pyengine.gguf import GGUFReader
            from pyengine.requantize import HParams

            src = next(iter(sorted(cache_dir().glob("SmolLM2-135M-Instruct.F32.gguf"))), None)
            if src is None:
                sys.exit("no SmolLM2-135M-Instruct.F32.gguf in the cache: python models/recipes.py f32")
            with GGUFReader(src) as r:
                tensors = [(n, tuple(i.shape)) for n, i in r.tensors.items()]
                h = HParams.from_metadata(r.metadata)
            hparams = {"arch": h.arch, "n_layer": h.n_layer, "n_head": h.n_head, "n_head_kv": h.n_head_kv}
            out["cases"]["smollm2_135m"] = run_case(llama_cpp, d, "smollm2_135m", hparams, tensors, src)
    write_json(out)
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes)", file=sys.stderr)


if __name__ == "__main__":
    main()
