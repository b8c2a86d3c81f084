import os

import numpy as np
import pytest

import pyengine

# Every ISA this CPU can run (the scalar reference first); kernel tests hold each against scalar.
ISAS = pyengine.available_isas()


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


# Modules whose subject is not the kernel path: they run no kernels (tokenizers, the GGUF reader,
# fetching, the reference side of the architecture goldens, the quantizers given an
# importance matrix and its file format, calibrated quantization against its numpy references, the
# quantizers' bytes against llama.cpp's and its loading our files), build
# and run their own binaries whatever PYENGINE_ISA says (the native kernel tests: natively, through
# SIMDe and under qemu), or drive the model as a user does (the chat session and templates, the
# command line, beam search against transformers, the server, its load test and the chat page in a
# browser, speculative decoding, whose exactness rests on the determinism the forward-pass tests hold
# on every ISA). The passes of .ci/run with PYENGINE_ISA forced would repeat them with the same
# outcome: each kernel path's exactness is held there by the kernel, matmul, forward-pass,
# determinism and llama.cpp-golden tests. A single test of that kind elsewhere says so with
# @pytest.mark.isa_independent.
ISA_INDEPENDENT = {"test_tokenizer.py", "test_gguf.py", "test_fetch.py", "test_arch_models.py",
                   "test_native_kernels.py", "test_chat.py", "test_cli.py", "test_beam.py", "test_imatrix.py",
                   "test_calibrate.py", "test_serve.py", "test_serve_load.py", "test_serve_page.py",
                   "test_speculative.py", "test_llamacpp_interop.py"}


def pytest_collection_modifyitems(config, items):
    if not os.environ.get("PYENGINE_ISA"):
        return
    skip = pytest.mark.skip(reason="not about the kernel path: the run without PYENGINE_ISA covers it")
    for item in items:
        if item.path.name in ISA_INDEPENDENT or item.get_closest_marker("isa_independent"):
            item.add_marker(skip)


def pytest_report_header(config):
    forced = os.environ.get("PYENGINE_ISA", "")
    return f"pyengine isa: {pyengine.isa()} (available: {', '.join(ISAS)}){' forced' if forced else ''}"


ACTIVATION_TYPE = {"q4_0": "q8_0", "q4_1": "q8_1", "q8_0": "q8_0", "nf4": "q8_0", "nf4_dq": "q8_0", "f32": None,
                   "f16": None, "bf16": None}


def reference_product(w_raw, type_name, shape, x):
    """(exact, scale): the product x @ W.T in float64 as the kernels define it, and the matching sum
    of |terms| that bounds float32 rounding. W is dequantized; x is quantized per 32-block to the
    weight's partner format first. For Q4_1 the minimum's term uses the Q8_1 block's stored fp16
    s = d * sum(q), as llama.cpp does, so only float32 rounding separates kernel and exact value."""
    rows, cols = shape
    x = np.asarray(x, np.float32).reshape(-1, cols)
    w = pyengine.dequantize(w_raw, type_name, (rows, cols)).astype(np.float64)
    act = ACTIVATION_TYPE[type_name]
    with np.errstate(all="ignore"):  # fp16 s may overflow for huge activations: inf or nan, as in llama.cpp
        if act is None:
            xq = x.astype(np.float64)
            return xq @ w.T, np.abs(xq) @ np.abs(w).T
        x_raw = pyengine.quantize(x, act)
        xq = pyengine.dequantize(x_raw, act, x.shape).astype(np.float64)
        if type_name != "q4_1":
            return xq @ w.T, np.abs(xq) @ np.abs(w).T
        nb = cols // 32
        m = np.ascontiguousarray(np.asarray(w_raw).reshape(rows, nb, 20)[..., 2:4]).view(np.float16)[..., 0]
        s = np.ascontiguousarray(x_raw.reshape(-1, nb, 36)[..., 2:4]).view(np.float16)[..., 0]
        m, s = m.astype(np.float64), s.astype(np.float64)
        w_no_min = (w.reshape(rows, nb, 32) - m[..., None]).reshape(rows, cols)
        exact = xq @ w_no_min.T + s @ m.T
        scale = np.abs(xq) @ np.abs(w_no_min).T + np.abs(s) @ np.abs(m).T
        return exact, scale


def check_matmul_against_float64(rng, isa, type_name, rows, cols, n_tokens):
    """pyengine.matmul of a random (rows, cols) weight quantized to type_name and random activations,
    held to the float64 product as the kernels define it (reference_product): within ~(terms + 4)
    float32 roundings of 2^-24 relative to sum |w x|. Returns (w, x, y, exact) for further checks."""
    w = rng.standard_normal((rows, cols)).astype(np.float32)
    x = rng.standard_normal((n_tokens, cols)).astype(np.float32)
    w_raw = pyengine.quantize(w, type_name)
    y = pyengine.matmul(w_raw, type_name, (rows, cols), x, n_threads=2, isa=isa)
    assert y.shape == (n_tokens, rows) and y.dtype == np.float32
    exact, scale = reference_product(w_raw, type_name, (rows, cols), x)
    terms = cols if ACTIVATION_TYPE[type_name] is None else cols // 32
    np.testing.assert_array_less(np.abs(y - exact), (terms + 4) * 2.0**-23 * scale + 1e-30)
    return w, x, y, exact
