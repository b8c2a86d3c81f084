"""The threaded matrix product: against numpy float64, and bit-identical across thread counts,
batch sizes and chunkings (the forward pass relies on it)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import pyengine

from conftest import ISAS, check_matmul_against_float64

TYPES = ["q4_0", "q4_1", "q8_0", "f32", "f16", "bf16"]


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("type_name", TYPES)
@pytest.mark.parametrize("rows,cols,n_tokens", [(1, 32, 1), (3, 64, 2), (17, 96, 5), (33, 256, 3), (100, 160, 17)])
def test_matmul_matches_float64(rng, isa, type_name, rows, cols, n_tokens):
    check_matmul_against_float64(rng, isa, type_name, rows, cols, n_tokens)


@pytest.mark.parametrize("type_name", ["q4_0", "q8_0", "f32"])
def test_matmul_close_to_unquantized_product(rng, type_name):
    w = rng.standard_normal((64, 512)).astype(np.float32)
    x = rng.standard_normal((4, 512)).astype(np.float32)
    y = pyengine.matmul(pyengine.quantize(w, type_name), type_name, w.shape, x)
    exact = x.astype(np.float64) @ w.astype(np.float64).T
    rel = np.linalg.norm(y - exact) / np.linalg.norm(exact)
    assert rel < {"q4_0": 0.15, "q8_0": 0.01, "f32": 1e-6}[type_name]


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("type_name", TYPES + ["nf4", "nf4_dq"])
def test_bit_identical_across_threads_and_batches(rng, isa, type_name):
    rows, cols, n_tokens = 75, 768, 37  # 768: a whole number of blocks for every type, NF4_DQ's 256 too
    w_raw = pyengine.quantize(rng.standard_normal((rows, cols)).astype(np.float32), type_name)
    x = rng.standard_normal((n_tokens, cols)).astype(np.float32)
    base = pyengine.matmul(w_raw, type_name, (rows, cols), x, n_threads=1, isa=isa)
    for n_threads in (2, 3, 4, 7):
        np.testing.assert_array_equal(pyengine.matmul(w_raw, type_name, (rows, cols), x, n_threads=n_threads,
                                                      isa=isa), base)
    # token by token, and in uneven chunks
    one_by_one = np.stack([pyengine.matmul(w_raw, type_name, (rows, cols), x[t], n_threads=2, isa=isa)
                           for t in range(n_tokens)])
    np.testing.assert_array_equal(one_by_one, base)
    chunks = [x[0:5], x[5:6], x[6:29], x[29:]]
    chunked = np.concatenate([pyengine.matmul(w_raw, type_name, (rows, cols), c, n_threads=3, isa=isa)
                              for c in chunks])
    np.testing.assert_array_equal(chunked, base)


def test_matmul_validates_shapes(rng):
    w_raw = pyengine.quantize(rng.standard_normal((4, 64)).astype(np.float32), "q4_0")
    x = np.zeros((2, 64), np.float32)
    with pytest.raises(ValueError, match="bytes"):
        pyengine.matmul(w_raw, "q4_0", (5, 64), x)
    with pytest.raises(ValueError):
        pyengine.matmul(w_raw, "q4_0", (4, 64), np.zeros((2, 32), np.float32))
    with pytest.raises(ValueError, match="n_threads"):
        pyengine.matmul(w_raw, "q4_0", (4, 64), x, n_threads=0)
    with pytest.raises(ValueError):
        pyengine.matmul(w_raw, "q4_0", (8, 32), x)  # same bytes, wrong shape


def test_thread_pool_size_is_checked():
    from pyengine import _core

    for n in (0, -1, 1025):
        with pytest.raises(ValueError, match="n_threads"):
            _core.ThreadPool(n)


def test_matmul_from_several_python_threads(rng):
    import threading

    w_raw = pyengine.quantize(rng.standard_normal((200, 256)).astype(np.float32), "q4_0")
    xs = [rng.standard_normal((3, 256)).astype(np.float32) for _ in range(8)]
    expected = [pyengine.matmul(w_raw, "q4_0", (200, 256), x, n_threads=2) for x in xs]
    results = [None] * len(xs)

    def work(i):
        for _ in range(20):
            results[i] = pyengine.matmul(w_raw, "q4_0", (200, 256), xs[i], n_threads=2)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(xs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for got, want in zip(results, expected):
        np.testing.assert_array_equal(got, want)


SCRIPT = """
import json, numpy as np, pyengine
rng = np.random.default_rng(5)
w = pyengine.quantize(rng.standard_normal((40, 128)).astype(np.float32), "q4_1")
x = rng.standard_normal((3, 128)).astype(np.float32)
print(json.dumps({"isa": pyengine.isa(), "y": pyengine.matmul(w, "q4_1", (40, 128), x).tolist()}))
"""


@pytest.mark.parametrize("isa", ISAS)
def test_pyengine_isa_environment_variable(isa, tmp_path):
    # cwd elsewhere: from the repository root, `import pyengine` would find the source tree, not the build
    env = dict(os.environ, PYENGINE_ISA=isa)
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, check=True,
                         cwd=tmp_path)
    result = json.loads(out.stdout.strip().splitlines()[-1])  # an editable build may print first
    assert result["isa"] == isa
    rng = np.random.default_rng(5)
    w = pyengine.quantize(rng.standard_normal((40, 128)).astype(np.float32), "q4_1")
    x = rng.standard_normal((3, 128)).astype(np.float32)
    np.testing.assert_array_equal(np.array(result["y"], np.float32), pyengine.matmul(w, "q4_1", (40, 128), x, isa=isa))


def test_unavailable_isa_is_refused(tmp_path):
    env = dict(os.environ, PYENGINE_ISA="sse9")
    out = subprocess.run([sys.executable, "-c", "import pyengine; pyengine.isa()"], env=env, capture_output=True,
                         text=True, cwd=tmp_path)
    assert out.returncode != 0
    assert "PYENGINE_ISA=sse9 is not available" in out.stderr


# Packed weights (the layout a Model repacks its matrices into at load time, where the ISA has
# packed kernels): every output must equal the scalar reference's vec_dot bit for bit.
#
# The raw block layout of each packable type, field by field: "f16" a random finite fp16 scale or
# minimum of either sign, an integer n that many random quant bytes (all `fill` in the adversarial
# test). One row per type: a type joins the packed tests by a row here.
BLOCK_FIELDS = {
    "q4_0": ["f16", 16],
    "q4_1": ["f16", "f16", 16],
    "q8_0": ["f16", 32],  # random bytes include -128, which the file format allows
    "q5_0": ["f16", 4, 16],
    "q5_1": ["f16", "f16", 4, 16],
    "iq4_nl": ["f16", 16],
    "q4_k": ["f16", "f16", 12, 128],
    "q6_k": [128, 64, 16, "f16"],
    "q5_k": ["f16", "f16", 12, 32, 128],
    "iq4_xs": ["f16", 2, 4, 128],
}
PACKED = [(isa, t) for isa in ISAS for t in BLOCK_FIELDS if pyengine._core.can_pack(pyengine.quants._type_id(t), isa)]


def _block_size(type_name):
    return pyengine._core.type_info(pyengine.quants._type_id(type_name))[1]


def _fp16_scales(rng, n, lo=-12, hi=4):
    """n random finite fp16 values of both signs, magnitudes 2^lo .. 2^hi, as uint16."""
    mags = np.exp2(rng.uniform(lo, hi, n)) * rng.choice([-1.0, 1.0], n)
    return mags.astype(np.float16).view(np.uint16)


def _raw_blocks(rng, type_name, rows, cols, fill=None):
    """Raw rows of type_name (BLOCK_FIELDS) with random (or all `fill`) quant bytes and random fp16
    scales / minimums."""
    nb = rows * cols // _block_size(type_name)
    parts = []
    for field in BLOCK_FIELDS[type_name]:
        if field == "f16":
            parts.append(_fp16_scales(rng, nb).reshape(nb, 1).view(np.uint8))
        elif fill is None:
            parts.append(rng.integers(0, 256, (nb, field), dtype=np.uint8))
        else:
            parts.append(np.full((nb, field), fill, np.uint8))
    return np.concatenate(parts, axis=1).reshape(-1)


def _assert_packed_is_scalar(w_raw, type_name, shape, x, isa, n_threads):
    ref = pyengine.matmul(w_raw, type_name, shape, x, n_threads=1, isa="scalar")
    got = pyengine.matmul(w_raw, type_name, shape, x, n_threads=n_threads, isa=isa, packed=True)
    np.testing.assert_array_equal(got, ref)


@pytest.mark.skipif(not PACKED, reason="no packed kernels on this CPU")
@pytest.mark.parametrize("isa,type_name", PACKED)
@pytest.mark.parametrize("rows,cols_32,cols_256", [(8, 32, 256), (16, 64, 512), (24, 576, 2304), (64, 2048, 5632)])
def test_packed_matmul_equals_scalar_reference(rng, isa, type_name, rows, cols_32, cols_256):
    cols = cols_32 if _block_size(type_name) == 32 else cols_256
    w_raw = pyengine.quantize(rng.standard_normal((rows, cols)).astype(np.float32), type_name)
    for n_tokens in [*range(1, 10), 16, 17]:  # every remainder of the 8- and 4-token passes, and several passes
        x = rng.standard_normal((n_tokens, cols)).astype(np.float32) * rng.uniform(0.01, 100)
        _assert_packed_is_scalar(w_raw, type_name, (rows, cols), x, isa, n_threads=1 + n_tokens % 3)


@pytest.mark.skipif(not PACKED, reason="no packed kernels on this CPU")
@pytest.mark.parametrize("isa,type_name", PACKED)
def test_packed_matmul_adversarial_blocks(rng, isa, type_name):
    """Random bytes and random fp16 scales of both signs, and the extremes of the integer sums:
    every nibble 15 (or 0; for Q8_0 every weight -128, -1, 0x0F, -16; every fifth bit, scale and
    minimum byte set or clear) against activations that quantize to +-127 everywhere."""
    rows, cols = 16, 512
    x_cases = [np.full((4, cols), 3.0, np.float32), np.full((4, cols), -3.0, np.float32),
               np.tile(np.array([1.0, -1.0], np.float32), (3, cols // 2)),
               rng.standard_normal((5, cols)).astype(np.float32)]
    for fill in (None, 0xFF, 0x00, 0x0F, 0xF0, 0x80):
        w_raw = _raw_blocks(rng, type_name, rows, cols, fill)
        for x in x_cases:
            _assert_packed_is_scalar(w_raw, type_name, (rows, cols), x, isa, n_threads=1)


@pytest.mark.skipif(not PACKED, reason="no packed kernels on this CPU")
@pytest.mark.parametrize("isa,type_name", PACKED)
def test_packed_bit_identical_across_threads_and_batches(rng, isa, type_name):
    rows, cols, n_tokens = 72, 768, 37  # 3 super-blocks of 256
    w_raw = pyengine.quantize(rng.standard_normal((rows, cols)).astype(np.float32), type_name)
    x = rng.standard_normal((n_tokens, cols)).astype(np.float32)
    base = pyengine.matmul(w_raw, type_name, (rows, cols), x, n_threads=1, isa=isa, packed=True)
    for n_threads in (2, 3, 7):
        np.testing.assert_array_equal(
            pyengine.matmul(w_raw, type_name, (rows, cols), x, n_threads=n_threads, isa=isa, packed=True), base)
    one_by_one = np.stack([pyengine.matmul(w_raw, type_name, (rows, cols), x[t], isa=isa, packed=True)
                           for t in range(n_tokens)])
    np.testing.assert_array_equal(one_by_one, base)


def test_packing_refused_where_it_cannot_apply(rng):
    w_raw = pyengine.quantize(rng.standard_normal((12, 64)).astype(np.float32), "q4_0")
    with pytest.raises(ValueError, match="groups of 8"):
        pyengine.matmul(w_raw, "q4_0", (12, 64), np.zeros((1, 64), np.float32), isa="scalar", packed=True)
    with pytest.raises(ValueError, match="groups of 8"):
        pyengine.matmul(w_raw, "q4_0", (12, 64), np.zeros((1, 64), np.float32), packed=True)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("type_name,packed", [("q4_0", True), ("q4_k", True), ("q6_k", True), ("q4_0", False),
                                              ("f32", False)])
@pytest.mark.parametrize("n_tokens", [1, 3, 8])
@pytest.mark.parametrize("n_shares,order", [(2, [0, 1]), (2, [1, 0]), (3, [2, 0, 1]), (2, [0])])
def test_balanced_products_take_units_from_other_threads(rng, isa, type_name, packed, n_tokens, n_shares, order):
    """A short batch's products (SharedInput in the forward pass) go to the threads in units, and a
    thread that has finished its own takes units from the back of the others' shares (WorkShares).
    Run in turn, the first thread takes every unit, its own from the front and the others' from their
    backs: each output must be the plain product's bits, and the `after` step (the SwiGLU of gate and
    up) must see each row once, with both products' outputs done."""
    if packed and not pyengine._core.can_pack(pyengine.quants._type_id(type_name), isa):
        pytest.skip(f"{isa} does not pack {type_name}")
    rows, cols = 8 * 150, 2048  # several 256 KB units a share, for every type here
    w_raw = pyengine.quantize(rng.standard_normal((rows, cols)).astype(np.float32), type_name)
    x = rng.standard_normal((n_tokens, cols)).astype(np.float32)
    base = pyengine.matmul(w_raw, type_name, (rows, cols), x, n_threads=1, isa=isa, packed=packed)
    y, complete, incomplete = pyengine._core.matmul_in_shares(w_raw, pyengine.quants._type_id(type_name), rows, cols,
                                                              x, isa, packed, n_shares, order)
    np.testing.assert_array_equal(y, base)
    assert (complete == 1).all() and (incomplete == 0).all()
