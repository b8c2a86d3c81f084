"""llama.cpp's quantization presets (q4_k_m, q3_k_s, iq4_xs, ...): each tensor's type chosen as
llama-quantize chooses it (pyengine.requantize.choose_tensor_types), checked against the types in the
files llama.cpp's own quantizer wrote (tests/data/llamacpp_preset_types.json, made by
tests/data/make_preset_types.py), and the command line's TYPE argument."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import pyengine
from pyengine.gguf import GGUFReader
from pyengine.requantize import PRESETS, HParams, choose_tensor_types, preset_by_name, quantize_model

from tiny_models import write_tiny_llama

GOLDEN = json.loads((Path(__file__).parent / "data" / "llamacpp_preset_types.json").read_text())
LLAMACPP_PRESETS = ("q4_k_m", "q4_k_s", "q5_k_m", "q5_k_s", "q6_k", "q3_k_s", "q3_k_m", "q3_k_l", "q2_k", "iq4_nl",
                    "iq4_xs", "q5_0", "q5_1")
RESULTS = [(case, key) for case, c in GOLDEN["cases"].items() for key in c["results"]]


def expected_types(case: dict, result: dict) -> dict[str, str]:
    """The golden file lists a tensor only where its type is not its baseline: the result's common
    type for a matrix, its source type (F32) for a 1-D tensor."""
    return {name: result["types"].get(name, result["common"] if len(shape) >= 2 else "f32")
            for name, shape in case["tensors"]}


@pytest.mark.parametrize("case_name,key", RESULTS)
def test_types_are_llamacpps(case_name, key):
    case = GOLDEN["cases"][case_name]
    result = case["results"][key]
    hparams = HParams(**case["hparams"])
    chosen = choose_tensor_types([(n, s) for n, s in case["tensors"]], hparams, result["preset"], **result["options"])
    expected = expected_types(case, result)
    wrong = {n: (chosen[n], expected[n]) for n in expected if chosen[n] != expected[n]}
    assert not wrong, f"(ours, llama.cpp's): {wrong}"
    assert set(chosen) == set(expected)
    assert PRESETS[result["preset"]].ftype == result["file_type"]


def test_golden_covers_every_preset_and_the_shapes_that_matter():
    keys = {r["preset"] for c in GOLDEN["cases"].values() for r in c["results"].values()}
    assert set(LLAMACPP_PRESETS) | {"q4_0", "q4_1", "q8_0", "f16", "bf16", "f32"} <= keys
    hp = [HParams(**c["hparams"]) for c in GOLDEN["cases"].values()]
    assert {h.n_layer for h in hp} >= {1, 4, 8, 12, 16, 32, 80}
    assert any(h.is_70b for h in hp) and {h.n_gqa for h in hp} >= {1, 2, 3, 4}
    rows = {s[0] for c in GOLDEN["cases"].values() for _, s in c["tensors"] if len(s) == 2}
    assert any(r % 256 == 0 for r in rows) and any(r % 256 and r % 32 == 0 for r in rows)
    assert any(r % 32 for r in rows)  # fits no block: F16
    tied = ["output.weight" not in dict(c["tensors"]) for c in GOLDEN["cases"].values()]
    assert any(tied) and not all(tied)


@pytest.mark.parametrize("name,preset", [("Q4_K_M", "q4_k_m"), ("q4_k_m", "q4_k_m"), (" IQ4_xs ", "iq4_xs"),
                                         ("Q4_K", "q4_k_m"), ("q5_k", "q5_k_m"), ("Q3_K", "q3_k_m"),
                                         ("Q2_K", "q2_k"), ("Q6_K", "q6_k"), ("NF4_DQ", "nf4_dq"), ("F16", "f16")])
def test_preset_names(name, preset):
    assert preset_by_name(name) is PRESETS[preset]


@pytest.mark.parametrize("name,match", [("q4_k_x", "unknown tensor type or preset"), ("", "unknown"),
                                        ("iq2_xxs", "not one of the presets"), ("q8_1", "not one of the presets")])
def test_unknown_presets_are_refused(name, match):
    with pytest.raises(ValueError, match=match):
        preset_by_name(name)


def test_hparams_and_the_70b_rule():
    assert HParams(n_layer=80, n_head=64, n_head_kv=8).is_70b  # Llama-2-70B
    assert not HParams(n_layer=80, n_head=64, n_head_kv=64).is_70b  # LLaMA-65B: no GQA
    assert HParams(n_layer=80, n_head=64, n_head_kv=64, arch="qwen2").is_70b  # qwen2: by layers only
    assert not HParams(n_layer=79, n_head=64, n_head_kv=8).is_70b
    assert HParams(n_layer=4, n_head=9, n_head_kv=3).n_gqa == 3 and HParams(n_layer=4, n_head=8).n_gqa == 1
    h = HParams.from_metadata({"general.architecture": "qwen3", "qwen3.block_count": 28,
                               "qwen3.attention.head_count": 16, "qwen3.attention.head_count_kv": [8] * 28})
    assert (h.arch, h.n_layer, h.n_head, h.n_head_kv) == ("qwen3", 28, 16, 8)
    with pytest.raises(ValueError, match="mixture-of-experts"):
        choose_tensor_types([("blk.0.ffn_down_exps.weight", (256, 256, 8))],
                            HParams(n_layer=1, n_expert=8), "q4_k_m")


def test_fused_qkv_counts_as_attn_v():
    # phi3's attn_qkv: llama.cpp's attn_v rules (use_more_bits over the attn_v-like tensors)
    tensors = [(f"blk.{i}.attn_qkv.weight", (256, 768)) for i in range(8)] + [("output.weight", (256, 100))]
    types = choose_tensor_types(tensors, HParams(n_layer=8, n_head=4, arch="phi3"), "q4_k_m")
    assert [types[f"blk.{i}.attn_qkv.weight"] for i in range(8)] == ["q6_k", "q4_k", "q4_k", "q6_k", "q4_k",
                                                                      "q4_k", "q6_k", "q6_k"]


# --- quantize_model and the command line ---


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("presets")
    return {
        # rows of 256 and 512: no fallback; GQA 4; an output of its own
        "fits": write_tiny_llama(d / "fits.gguf", n_layers=4, n_embd=256, n_ff=512, n_heads=4, n_kv_heads=1, seed=7),
        # rows of 64 and 96: every K-quant falls back; tied output
        "small": write_tiny_llama(d / "small.gguf", n_layers=2, n_embd=64, n_ff=96, tied=True, seed=8),
    }


def run_cli(*args):
    # the pyengine this test imported (the checkout's, when run from the repository root), from another
    # directory: `python -m` puts the working directory first on the path, where a checkout without its
    # built module would otherwise be found
    package_root = Path(pyengine.__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=str(package_root))
    return subprocess.run([sys.executable, "-m", "pyengine", *args], capture_output=True, text=True, timeout=300,
                          env=env, cwd=Path(__file__).resolve().parent)


def file_types(path) -> tuple[int, dict[str, str]]:
    with GGUFReader(path) as r:
        return r.metadata["general.file_type"], {n: i.type.name.lower() for n, i in r.tensors.items()}


def chosen_for(path, preset, **options) -> dict[str, str]:
    with GGUFReader(path) as r:
        tensors = [(n, i.shape, i.type) for n, i in r.tensors.items()]
        return choose_tensor_types(tensors, HParams.from_metadata(r.metadata), preset, **options)


@pytest.mark.parametrize("preset", LLAMACPP_PRESETS)
@pytest.mark.parametrize("model", ["fits", "small"])
def test_quantize_model_writes_the_chosen_types(tmp_path, models, preset, model):
    out = tmp_path / f"{preset}.gguf"
    report = quantize_model(models[model], out, preset)
    file_type, types = file_types(out)
    assert file_type == PRESETS[preset].ftype
    assert types == chosen_for(models[model], preset) == report.types
    assert not [n for n in report.notes if "no quantizer" in n]
    # every tensor written holds the source's values up to its type's quantization error (random
    # Gaussian weights: about 0.3 of their RMS at 2 bits, 0.02 at 6), and the file runs
    with GGUFReader(models[model]) as src, GGUFReader(out) as dst:
        for name, info in dst.tensors.items():
            cols = info.shape[0]
            rows = info.n_elements // cols
            a = pyengine.dequantize(np.asarray(src.tensors[name].data).reshape(-1), int(src.tensors[name].type),
                                    (rows, cols))
            b = pyengine.dequantize(np.asarray(info.data).reshape(-1), int(info.type), (rows, cols))
            assert np.sqrt(np.mean((a - b) ** 2)) <= 0.4 * np.sqrt(np.mean(a**2)) + 1e-12, name
    assert np.all(np.isfinite(pyengine.Model(out).logits([1, 2, 3, 4])))


def test_cli_writes_a_preset_named_in_capitals(tmp_path, models):
    out = tmp_path / "m.gguf"
    r = run_cli("quantize", str(models["fits"]), str(out), "Q4_K_M", "--output-tensor-type", "Q8_0")
    assert r.returncode == 0, r.stderr
    assert file_types(out) == (15, chosen_for(models["fits"], "q4_k_m", output_tensor_type="q8_0"))


def test_cli_accepts_presets_in_any_case(tmp_path, models):
    for name in ("Q8_0", "q4_K_m", "IQ4_XS", "Nf4"):
        out = tmp_path / f"{name}.gguf"
        r = run_cli("quantize", str(models["fits"]), str(out), name)
        preset = preset_by_name(name)
        assert r.returncode == 0, r.stderr
        assert file_types(out) == (preset.ftype, chosen_for(models["fits"], preset.name))


@pytest.mark.parametrize("name,match", [("q4_k_x", "unknown tensor type or preset"),
                                        ("iq2_xxs", "not one of the presets")])
def test_cli_refuses_unknown_presets_in_one_line(tmp_path, models, name, match):
    r = run_cli("quantize", str(models["fits"]), str(tmp_path / "x.gguf"), name)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and match in lines[0], r.stderr
    assert list(tmp_path.iterdir()) == []


def test_q4_0_output_is_q6_k_on_rows_of_256(tmp_path, models):
    report = quantize_model(models["fits"], tmp_path / "q4_0.gguf", "q4_0")
    assert chosen_for(models["fits"], "q4_0")["output.weight"] == "q6_k"
    assert report.types["output.weight"] == "q6_k" and report.notes == []


def test_fallbacks_are_noted_and_unfitting_rows_are_f16(tmp_path):
    src = write_tiny_llama(tmp_path / "odd.gguf", n_embd=64, n_ff=80, tied=True, seed=9)  # rows of 80: no 32-block
    report = quantize_model(src, tmp_path / "q8.gguf", "q8_0")
    assert report.types["blk.0.ffn_down.weight"] == "f16" and report.types["blk.0.ffn_up.weight"] == "q8_0"
    assert "blk.0.ffn_down.weight: rows of 80 are not a multiple of the q8_0 block (32); falls back to f16" \
        in report.notes
