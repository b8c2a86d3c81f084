"""Calibrated quantization (pyengine/calibrate.py): the block formats' codes, GPTQ against a plain numpy
implementation of its sequential form, the statistics against a numpy forward pass, AWQ's folding
(the model's function unchanged in float), and `quantize --calib`."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import pyengine
import pyengine.perplexity
from pyengine import _core
from pyengine.calibrate import GRAM_STRIDE, _gptq, awq_search, calibrate, gptq_quantize, output_error
from pyengine.gguf import GGMLType, GGUFReader
from pyengine.imatrix import Imatrix
from pyengine.requantize import quantize_model
from reference_model import ReferenceModel
from tiny_models import write_tiny_llama

G = GGMLType
CODED = [G.Q4_0, G.Q4_1, G.Q5_0, G.Q5_1, G.Q8_0, G.IQ4_NL, G.Q2_K, G.Q3_K, G.Q4_K, G.Q5_K, G.Q6_K, G.IQ4_XS]
WORDS = ("the quick brown fox jumps over a lazy dog while seven wizards quietly hex the jovial boxer "
         "and a sphinx of black quartz judges my vow ") * 40


def grid_values(raw, type, rows, cols, codes=None):
    c, scale, offset = _core.unpack_codes(raw, int(type), rows, cols)
    levels = _core.code_levels(int(type)).astype(np.float32)
    return scale * levels[c if codes is None else codes] + offset


@pytest.mark.parametrize("type", CODED, ids=lambda t: t.name)
def test_codes_read_and_write_each_layout(type):
    rng = np.random.default_rng(int(type))
    x = rng.standard_normal((3, 512)).astype(np.float32)
    raw = pyengine.quantize(x, int(type))
    codes, _, _ = _core.unpack_codes(raw, int(type), 3, 512)
    np.testing.assert_array_equal(grid_values(raw, type, 3, 512), pyengine.dequantize(raw, int(type), (3, 512)))
    np.testing.assert_array_equal(_core.pack_codes(raw, int(type), 3, 512, codes), raw)
    others = rng.integers(0, len(_core.code_levels(int(type))), (3, 512)).astype(np.uint8)
    rewritten = _core.pack_codes(raw, int(type), 3, 512, others)
    np.testing.assert_array_equal(_core.unpack_codes(rewritten, int(type), 3, 512)[0], others)
    np.testing.assert_array_equal(pyengine.dequantize(rewritten, int(type), (3, 512)),
                                  grid_values(raw, type, 3, 512, others))
    if len(_core.code_levels(int(type))) < 256:
        with pytest.raises(ValueError, match="not below"):
            _core.pack_codes(raw, int(type), 3, 512, np.full((3, 512), 255, np.uint8))


def correlated(rows, cols, n=4096, seed=0):
    """A weight matrix and the Hessian E[x x^T] of inputs with correlated columns and a few large ones."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, cols)) @ (np.eye(cols) + rng.standard_normal((cols, cols)) / np.sqrt(cols))
    x[:, rng.choice(cols, cols // 16, replace=False)] *= 8
    w = (rng.standard_normal((rows, cols)) * 0.05).astype(np.float32)
    h = x.T @ x / n
    return w, h, np.diag(h).astype(np.float32)


def reference_gptq(w, type, hessian, importance, damp=0.01):
    """GPTQ's sequential form (its paper's eq. 2 and 3, without the Cholesky reformulation or lazy
    batches): each column rounded to the nearest value of its block's grid (the block's scales chosen
    by pyengine.quantize on the block's current weights when the rounding reaches it), the rest of
    the row updated by -e / [H^-1]_jj [H^-1]_j,:, and the rounded column eliminated from H^-1."""
    rows, cols = w.shape
    _, bs, _ = pyengine.quants.type_info(int(type))
    levels = _core.code_levels(int(type)).astype(np.float32)
    h = hessian + damp * np.mean(np.diag(hessian)) * np.eye(cols)
    hinv = np.linalg.inv(h)
    W = w.astype(np.float64)
    out = np.zeros((rows, cols), np.float32)
    weighted = pyengine.quants.has_weighted_quantizer(int(type))
    for b0 in range(0, cols, bs):
        raw = pyengine.quantize(W[:, b0:b0 + bs].astype(np.float32), int(type),
                                imatrix=importance[b0:b0 + bs] if weighted else None)
        _, scale, offset = _core.unpack_codes(raw, int(type), rows, bs)
        for k in range(bs):
            j = b0 + k
            grid = scale[:, k, None] * levels[None, :] + offset[:, k, None]
            q = grid[np.arange(rows), np.abs(grid - W[:, j, None]).argmin(axis=1)]
            out[:, j] = q
            W[:, j:] -= np.outer((W[:, j] - q) / hinv[j, j], hinv[j, j:])
            hinv -= np.outer(hinv[:, j], hinv[j, :]) / hinv[j, j]
    return out


@pytest.mark.parametrize("type", [G.Q4_0, G.Q5_1, G.IQ4_NL, G.Q8_0, G.Q2_K, G.Q3_K, G.Q4_K, G.Q6_K, G.IQ4_XS],
                         ids=lambda t: t.name)
def test_gptq_matches_the_sequential_numpy_form_and_writes_its_values(type):
    cols = 512 if pyengine.quants.type_info(int(type))[1] == 256 else 128
    w, h, importance = correlated(12, cols, seed=int(type))
    raw, chosen = _gptq(w, int(type), h, importance, damp=0.01, batch=64)
    np.testing.assert_array_equal(pyengine.dequantize(raw, int(type), w.shape), chosen)
    reference = reference_gptq(w, type, h, importance)
    np.testing.assert_array_equal(chosen, reference)


@pytest.mark.parametrize("type", [G.Q4_0, G.Q5_0, G.Q3_K, G.Q4_K, G.IQ4_XS], ids=lambda t: t.name)
def test_gptq_lowers_the_output_error_of_weighted_rounding(type):
    w, h, importance = correlated(64, 512, seed=1)
    rtn = pyengine.dequantize(pyengine.quantize(w, int(type), imatrix=importance), int(type), w.shape)
    gptq = pyengine.dequantize(gptq_quantize(w, int(type), h, importance), int(type), w.shape)
    assert output_error(w, gptq, h) < 0.85 * output_error(w, rtn, h)


@pytest.mark.parametrize("type", [G.Q4_0, G.Q4_1, G.Q5_0, G.Q5_1, G.IQ4_NL, G.Q2_K, G.Q3_K, G.Q4_K, G.Q5_K, G.Q6_K,
                                  G.IQ4_XS], ids=lambda t: t.name)
def test_weighted_quantizers_lower_the_weighted_error(type):
    rng = np.random.default_rng(int(type))
    x = rng.standard_normal((64, 512)).astype(np.float32)
    importance = np.exp(2 * rng.standard_normal(512)).astype(np.float32)

    def weighted_error(raw):
        return float((importance * (pyengine.dequantize(raw, int(type), x.shape) - x) ** 2).sum())

    assert weighted_error(pyengine.quantize(x, int(type), imatrix=importance)) < \
        0.9 * weighted_error(pyengine.quantize(x, int(type)))


class Recorder(ReferenceModel):
    """The numpy reference forward pass, keeping the Gram matrix of every product's input."""

    def __init__(self, path):
        super().__init__(path)
        self.gram = {}

    def _matmul(self, name, x, quantize_activations):
        if name.startswith("blk.") and len(x) >= 16:
            x64 = np.asarray(x, np.float64)[::GRAM_STRIDE]
            self.gram[name] = self.gram.get(name, 0) + x64.T @ x64
        return super()._matmul(name, x, quantize_activations)


def test_the_statistics_match_a_numpy_forward_pass(tmp_path):
    path = write_tiny_llama(tmp_path / "tiny.gguf", n_ctx_train=64)
    model = pyengine.Model(path, n_ctx=64, n_threads=2)
    calib = calibrate(model, WORDS, n_ctx=32, n_chunks=3)
    reference = Recorder(path)
    for chunk in pyengine.perplexity.chunk_tokens(model, WORDS, 32, 3):
        reference.hidden(chunk)
    assert calib.imatrix.chunk_count == 3 and set(calib.readers) == set(reference.gram)
    assert calib.readers["blk.1.attn_v.weight"] == "blk.1.attn_q.weight"
    assert calib.readers["blk.1.ffn_up.weight"] == "blk.1.ffn_gate.weight"
    assert calib.readers["blk.1.ffn_down.weight"] == "blk.1.ffn_down.weight"
    for name, gram in reference.gram.items():
        assert calib.count[calib.readers[name]] == 3 * len(range(0, 32, GRAM_STRIDE))
        np.testing.assert_allclose(calib.hessian(name) * calib.count[calib.readers[name]], gram,
                                   rtol=1e-4, atol=1e-4 * np.abs(gram).max(), err_msg=name)
    calib.save(tmp_path / "c.npz")
    back = type(calib).load(tmp_path / "c.npz")
    assert back.readers == calib.readers and back.imatrix.entries.keys() == calib.imatrix.entries.keys()
    np.testing.assert_allclose(back.hessian("blk.0.attn_k.weight"), calib.hessian("blk.0.attn_k.weight"), rtol=1e-6)


def strong_scales(n_layers, n_embd, seed=0):
    """AWQ scales far from one (e^-1 .. e) for every norm and the matrices behind it."""
    rng = np.random.default_rng(seed)
    scales = {}
    for i in range(n_layers):
        for norm, matrices in (("attn_norm", ("attn_q", "attn_k", "attn_v")), ("ffn_norm", ("ffn_gate", "ffn_up"))):
            s = np.exp(rng.uniform(-1, 1, n_embd)).astype(np.float32)
            scales.update({f"blk.{i}.{n}.weight": s for n in (norm, *matrices)})
    return scales


def test_awq_search_on_inputs_with_large_columns():
    w, h, importance = correlated(64, 256, seed=2)
    mean_abs = np.sqrt(np.diag(h))  # what E|x| is proportional to for these Gaussian inputs
    s, before, after = awq_search([(w, int(G.Q4_0)), (w[:32], int(G.Q4_K))], h, mean_abs, importance)
    assert after < 0.9 * before and np.ptp(s) > 0.2
    assert np.corrcoef(np.log(s), np.log(mean_abs))[0, 1] > 0.99  # s = mean|x|^alpha, normalised


def test_awq_folds_into_the_norms_and_keeps_the_function(tmp_path):
    src = write_tiny_llama(tmp_path / "tiny.gguf", n_embd=256, n_ff=512, n_ctx_train=64)
    model = pyengine.Model(src, n_ctx=64)
    calib = calibrate(model, WORDS, n_ctx=32, n_chunks=3)
    report = quantize_model(src, tmp_path / "q.gguf", "q4_0", calibration=calib, awq=True)
    assert report.awq == ["blk.0.attn_norm.weight", "blk.0.ffn_norm.weight", "blk.1.attn_norm.weight",
                          "blk.1.ffn_norm.weight"]
    before, after = report.awq_error
    assert after <= before
    searched = report.awq_scales
    assert searched["blk.0.attn_q.weight"] is searched["blk.0.attn_norm.weight"] is searched["blk.0.attn_v.weight"]
    assert set(searched) == {f"blk.{i}.{n}.weight" for i in range(2) for n in
                             ("attn_norm", "attn_q", "attn_k", "attn_v", "ffn_norm", "ffn_gate", "ffn_up")}
    # scales far from one folded into a float model: the same function, other weights
    scales = strong_scales(2, 256)
    folded = tmp_path / "folded.gguf"
    quantize_model(src, folded, "f32", awq=scales)
    with GGUFReader(src) as a, GGUFReader(folded) as b:
        q0, q1 = (np.asarray(r.tensors["blk.0.attn_q.weight"].data) for r in (a, b))
        n0, n1 = (np.asarray(r.tensors["blk.0.attn_norm.weight"].data) for r in (a, b))
        np.testing.assert_array_equal(q1, q0 * scales["blk.0.attn_q.weight"])
        np.testing.assert_array_equal(n1, n0 / scales["blk.0.attn_norm.weight"])
    ids = model.tokenize(WORDS)[:40]
    expected = model.logits(ids)
    np.testing.assert_allclose(pyengine.Model(folded, n_ctx=64).logits(ids), expected, rtol=0,
                               atol=1e-4 * np.abs(expected).max())


def test_quantize_calib_command(tmp_path):
    model = write_tiny_llama(tmp_path / "tiny.gguf", n_embd=256, n_ff=512, n_ctx_train=64)
    text = tmp_path / "calib.txt"
    text.write_text(WORDS)
    q = tmp_path / "q.gguf"
    run = [sys.executable, "-m", "pyengine", "quantize", str(model), str(q), "q4_k_m"]
    r = subprocess.run(run + ["--calib", str(text), "-c", "32", "--chunks", "2"], capture_output=True, text=True,
                       cwd=tmp_path, timeout=600)
    assert r.returncode == 0, r.stderr
    assert "importance-weighted: 14 tensors (imatrix of 2 chunks of 32 tokens)" in r.stdout
    assert "AWQ: scales folded into 4 norms" in r.stdout and "GPTQ: 14 tensors" in r.stdout
    assert pyengine.Model(q).generate("the", max_tokens=4, temperature=0).tokens
    for bad, message in ((["--gptq"], "give it with --calib"),
                         (["--calib", str(text), "--imatrix", str(model)], "not both"),
                         (["--calib", "/no/such"], "no such file"),
                         (["--calib", str(text), "--chunks", "0"], "at least 1")):
        r = subprocess.run(run + bad, capture_output=True, text=True, cwd=tmp_path, timeout=600)
        assert r.returncode == 1 and message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def relative_error(w, type, h):
    q = pyengine.dequantize(pyengine.quantize(w, int(type), imatrix=None if type == G.Q8_0 else h), int(type), w.shape)
    return float(((w - q).astype(np.float64) ** 2 @ h).sum() / ((w.astype(np.float64) ** 2) @ h).sum())


def test_outliers_raise_the_matrices_with_the_most_error_per_byte_within_the_budget(tmp_path):
    """quantize --outliers: the matrices go a type up in the order of their relative importance-weighted
    error reduction per added byte (checked here in numpy), and the file grows by at most the budget.
    blk.1.ffn_up gets outlier input channels (8 columns of 256 with 400x the importance, 8x the
    weights): the measure must hold with them too (the weighted quantizer fits those columns, which
    carry nearly all of its output, so its relative error is small and it is not what goes up first)."""
    src = write_tiny_llama(tmp_path / "tiny.gguf", n_embd=256, n_ff=512, n_ctx_train=64)
    rng = np.random.default_rng(7)
    with GGUFReader(src) as r:
        info = r.tensors["blk.1.ffn_up.weight"]
        offset, w = info.offset, np.array(info.data)
        weights = {n: np.array(t.data) for n, t in r.tensors.items() if len(t.shape) == 2 and n != "token_embd.weight"}
    channels = rng.choice(256, 8, replace=False)
    w[:, channels] *= 8
    weights["blk.1.ffn_up.weight"] = w
    with open(src, "r+b") as f:
        f.seek(offset)
        f.write(w.astype(np.float32).tobytes())
    importance = {n: rng.uniform(0.5, 2, v.shape[1]).astype(np.float32) for n, v in weights.items()}
    importance["blk.1.ffn_up.weight"][channels] *= 400
    imatrix = Imatrix({n: (h * 10, 10) for n, h in importance.items()}, chunk_count=1, chunk_size=10)
    plain = quantize_model(src, tmp_path / "plain.gguf", "q4_k_m", imatrix=imatrix)
    budget = 0.02
    report = quantize_model(src, tmp_path / "outliers.gguf", "q4_k_m", imatrix=imatrix, outliers=budget)
    assert report.promoted and plain.output_bytes < report.output_bytes <= plain.output_bytes * (1 + budget)
    # the first step: the largest error reduction per added byte over every matrix's first step
    up = {"q4_k": G.Q5_K, "q5_k": G.Q6_K, "q6_k": G.Q8_0}

    def nbytes(v, type):
        _, block, size = pyengine.quants.type_info(int(type))
        return v.size // block * size

    gains = {}
    for name, v in weights.items():
        t, t_up = G[plain.types[name].upper()], up[plain.types[name]]
        h = importance[name]
        gains[name] = ((relative_error(v, t, h) - relative_error(v, t_up, h))
                       / (nbytes(v, t_up) - nbytes(v, t)))
    first = max(gains, key=gains.get)
    assert first != "blk.1.ffn_up.weight"
    assert report.promoted[0] == f"{first} ({plain.types[first]} -> {up[plain.types[first]].name.lower()})"
    promoted = {e.split(" (")[0]: e.split(" -> ")[1].rstrip(")") for e in report.promoted}
    assert {n: report.types[n] for n in promoted} == promoted  # the last step of each
    assert {n: t for n, t in report.types.items() if n not in promoted} == \
        {n: t for n, t in plain.types.items() if n not in promoted}
    with pytest.raises(ValueError, match="importance matrix or a calibration"):
        quantize_model(src, tmp_path / "x.gguf", "q4_k_m", outliers=0.01)
    # the command: --imatrix FILE --outliers PERCENT, the same file
    imatrix.save(tmp_path / "imatrix.gguf")
    run = [sys.executable, "-m", "pyengine", "quantize", str(src), str(tmp_path / "cli.gguf"), "q4_k_m"]
    r = subprocess.run(run + ["--imatrix", str(tmp_path / "imatrix.gguf"), "--outliers", "2"], capture_output=True,
                       text=True, cwd=tmp_path, timeout=600)
    assert r.returncode == 0, r.stderr
    assert f"outliers: {len(report.promoted)} matrices a type up: {report.promoted[0]}" in r.stdout
    assert (tmp_path / "cli.gguf").read_bytes() == (tmp_path / "outliers.gguf").read_bytes()
    for bad, message in ((["--outliers"], "give --calib or --imatrix"),
                         (["--imatrix", str(tmp_path / "imatrix.gguf"), "--outliers", "50"], "at most 10")):
        r = subprocess.run(run + bad, capture_output=True, text=True, cwd=tmp_path, timeout=600)
        assert r.returncode == 1 and message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
