"""Q5_0, Q5_1, the K-quants, IQ4_NL and IQ4_XS: our quantizers give llama.cpp's exact bytes.

The reference bytes are llama.cpp's own (ggml_quantize_chunk of llama-cpp-python's libggml-base, as
llama-quantize runs it), stored in tests/data/kquant_golden.npz by tests/data/make_kquant_golden.py
because CI has no llama.cpp: adversarial rows of 256, 512 and 2048 values, and a few runs of a real
model's weights, each quantized without and with an importance matrix. Q5_0 and Q5_1 are also held
against gguf-py's numpy port on fresh random rows.
"""

from pathlib import Path

import numpy as np
import pytest

import pyengine

GOLDEN = Path(__file__).parent / "data" / "kquant_golden.npz"
LENGTHS = (256, 512, 2048)

# name: (values per block, bytes per block). A new type is a new row here and in the generator.
TYPES = {
    "q4_0": (32, 18),
    "q4_1": (32, 20),
    "q5_0": (32, 22),
    "q5_1": (32, 24),
    "q2_K": (256, 84),
    "q3_K": (256, 110),
    "q4_K": (256, 144),
    "q5_K": (256, 176),
    "q6_K": (256, 210),
    "iq4_nl": (32, 18),
    "iq4_xs": (256, 136),
}


def quantize(x, type_name, imatrix=None):
    """Our bytes for rows x, without or with an importance vector (one value per column)."""
    return pyengine.quantize(np.ascontiguousarray(x, np.float32), type_name, imatrix=imatrix)


@pytest.fixture(scope="module")
def golden():
    with np.load(GOLDEN) as data:
        return {k: data[k] for k in data.files}


def differing_blocks(ours, ref, type_name):
    """(row, block) of each block whose bytes differ."""
    block_bytes = TYPES[type_name][1]
    ours = ours.reshape(ref.shape[0], -1, block_bytes)
    ref = ref.reshape(ref.shape[0], -1, block_bytes)
    return [tuple(int(i) for i in rb) for rb in np.argwhere((ours != ref).any(axis=2))]


@pytest.mark.parametrize("weighted", [False, True], ids=["plain", "imatrix"])
@pytest.mark.parametrize("cols", LENGTHS)
@pytest.mark.parametrize("type_name", list(TYPES))
def test_bytes_match_llama_cpp(golden, type_name, cols, weighted):
    x = golden[f"x_{cols}"]
    imatrix = golden[f"imatrix_{cols}"] if weighted else None
    ref = golden[f"{type_name}_{cols}" + ("_w" if weighted else "")]
    ours = quantize(x, type_name, imatrix)
    assert ours.dtype == np.uint8 and ours.shape == ref.shape
    bad = differing_blocks(ours, ref, type_name)
    assert not bad, f"{len(bad)} of {ref.size // TYPES[type_name][1]} blocks differ (row, block): {bad[:20]}"


def test_golden_covers_every_type(golden):
    for type_name in TYPES:
        for cols in LENGTHS:
            assert f"{type_name}_{cols}" in golden and f"{type_name}_{cols}_w" in golden


@pytest.mark.parametrize("type_name", ["q5_0", "q5_1"])
@pytest.mark.parametrize("shape", [(1, 32), (3, 64), (17, 96), (64, 256)])
def test_q5_matches_gguf_py(rng, type_name, shape):
    gguf = pytest.importorskip("gguf")
    from gguf import quants

    x = (rng.standard_normal(shape) * rng.uniform(0.01, 10)).astype(np.float32)
    with np.errstate(all="ignore"):
        ref = quants.quantize(x, gguf.GGMLQuantizationType[type_name.upper()]).view(np.uint8).reshape(shape[0], -1)
    np.testing.assert_array_equal(quantize(x, type_name), ref)


@pytest.mark.parametrize("type_name", list(TYPES))
def test_rows_are_independent(golden, type_name):
    """A row's bytes do not depend on the rows quantized with it (the imatrix paths of Q5_0 and Q5_1
    use a per-row statistic, so they must be called row by row)."""
    x = golden["x_512"][:6]
    imatrix = golden["imatrix_512"]
    for im in (None, imatrix):
        whole = quantize(x, type_name, im)
        for r in range(len(x)):
            np.testing.assert_array_equal(quantize(x[r:r + 1], type_name, im)[0], whole[r])
