"""Every SIMD kernel path against the scalar reference, on random and adversarial blocks.

The activation quantizers of each ISA must give the scalar reference's exact bytes. Dot products
sum integers exactly inside a block and differ from the reference only in the order of the float
accumulation over blocks, so they must agree within a few float32 roundings of sum |w_i x_i|.
"""

import numpy as np
import pytest

import pyengine
from pyengine import _core

from conftest import ISAS, reference_product

SIMD_ISAS = [isa for isa in ISAS if isa != "scalar"]
TYPE_IDS = {"f32": 0, "f16": 1, "q4_0": 2, "q4_1": 3, "q8_0": 8, "q8_1": 9, "bf16": 30}
BLOCK_BYTES = {"q4_0": 18, "q4_1": 20, "q8_0": 34}
FP16_MAX = 65504.0
FP16_TINY = 2.0**-24  # smallest subnormal


def fp16_bits(values):
    return np.asarray(values, dtype=np.float16).view(np.uint8).reshape(-1, 2)


def raw_blocks(rng, type_name, n_blocks, scales=None, mins=None, qs=None):
    """Raw weight blocks: the given (or random) fp16 scales and minimums and quant bytes."""
    nb = BLOCK_BYTES[type_name]
    out = np.zeros((n_blocks, nb), np.uint8)
    if scales is None:
        scales = rng.uniform(-0.1, 0.1, n_blocks)
    out[:, :2] = fp16_bits(np.broadcast_to(scales, (n_blocks,)))
    start = 2
    if type_name == "q4_1":
        out[:, 2:4] = fp16_bits(np.broadcast_to(rng.uniform(-0.1, 0.1, n_blocks) if mins is None else mins,
                                                (n_blocks,)))
        start = 4
    if qs is None:
        qs = rng.integers(0, 256, (n_blocks, nb - start))
    out[:, start:] = np.broadcast_to(np.asarray(qs, dtype=np.int64) & 0xFF, (n_blocks, nb - start))
    return out.reshape(-1)


def activation_rows(rng, n):
    """Float activations, random and adversarial, each of length n."""
    rows = [
        rng.standard_normal(n),
        np.zeros(n),
        np.full(n, 3.5),
        np.where(np.arange(n) % 32 == 7, 500.0, 0.01),   # one outlier per block
        rng.standard_normal(n) * 1e-7,                   # tiny activation scales
        rng.standard_normal(n) * 3e4,                     # huge
        (np.arange(n) % 32 - 15.5) * (127 / 15.5) / 127 * 2.0,  # values landing on .5 ties
        rng.standard_normal(n) * np.exp(rng.uniform(-8, 8, n)),
    ]
    return [np.asarray(r, dtype=np.float32) for r in rows]


def weight_rows(rng, type_name, n):
    """Weight rows of n values as raw bytes: random and adversarial."""
    if type_name in ("f32", "f16", "bf16"):
        floats = [rng.standard_normal(n), np.zeros(n), np.full(n, -2.25), rng.standard_normal(n) * 1e4,
                  np.where(np.arange(n) == n - 1, 1e3, 1e-3)]
        return [pyengine.quantize(np.asarray(f, np.float32), type_name) for f in floats]
    nb = n // 32
    rows = [
        raw_blocks(rng, type_name, nb),                                        # random bytes, random scales
        raw_blocks(rng, type_name, nb, scales=0.0, mins=0.0),                  # all-zero scales
        raw_blocks(rng, type_name, nb, scales=FP16_MAX, mins=-FP16_MAX),       # +- max magnitude scales
        raw_blocks(rng, type_name, nb, scales=FP16_TINY, mins=FP16_TINY),      # subnormal scales
        raw_blocks(rng, type_name, nb, qs=0x00),                               # nibbles 0 / bytes 0
        raw_blocks(rng, type_name, nb, qs=0xFF),                               # nibbles 15 / bytes -1
        raw_blocks(rng, type_name, nb, qs=0x80),                               # q8_0: -128 everywhere
        raw_blocks(rng, type_name, nb, qs=0x7F),                               # q8_0: 127 everywhere
        pyengine.quantize(rng.standard_normal(n).astype(np.float32), type_name),  # a real quantized row
    ]
    return rows


def magnitude(type_name, w_raw, x, n):
    """(sum |terms|, exact value) of one dot product, in float64."""
    exact, scale = reference_product(w_raw, type_name, (1, n), x)
    return float(scale[0, 0]), float(exact[0, 0])


@pytest.mark.parametrize("isa", SIMD_ISAS)
@pytest.mark.parametrize("act", ["q8_0", "q8_1"])
@pytest.mark.parametrize("n", [32, 64, 96, 256, 2048])
def test_activation_quantizer_bytes_match_scalar(rng, isa, act, n):
    for x in activation_rows(rng, n):
        ours = _core.quantize_activation(isa, x, TYPE_IDS[act])
        ref = _core.quantize_activation("scalar", x, TYPE_IDS[act])
        np.testing.assert_array_equal(ours, ref)


@pytest.mark.parametrize("act", ["q8_0", "q8_1"])
def test_scalar_activation_quantizer_is_the_storage_quantizer(rng, act):
    x = rng.standard_normal(512).astype(np.float32)
    np.testing.assert_array_equal(_core.quantize_activation("scalar", x, TYPE_IDS[act]), pyengine.quantize(x, act))


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("type_name", ["q4_0", "q4_1", "q8_0", "f32", "f16", "bf16"])
@pytest.mark.parametrize("n_blocks", [1, 2, 3, 7, 8, 9, 64])
def test_vec_dot_matches_scalar_and_float64(rng, isa, type_name, n_blocks):
    n = 32 * n_blocks
    for w_raw in weight_rows(rng, type_name, n):
        for x in activation_rows(rng, n):
            ref = _core.vec_dot("scalar", TYPE_IDS[type_name], w_raw, x)
            ours = _core.vec_dot(isa, TYPE_IDS[type_name], w_raw, x)
            scale, exact = magnitude(type_name, w_raw, x, n)
            if not np.isfinite(exact):  # an fp16 s = d * sum(q) overflowed, in llama.cpp too
                assert ref == exact and ours == exact or np.isnan(ref) and np.isnan(ours)
                continue
            # A float32 sum of k terms is within ~k * 2^-24 * sum|terms| of the exact value; each path
            # rounds each block's scale product and its sum once more.
            tol = (n_blocks + 4) * 2.0**-23 * scale + 1e-30
            if type_name in ("f32", "f16", "bf16"):
                tol = (n + 4) * 2.0**-23 * scale + 1e-30
            assert abs(ref - exact) <= tol, (type_name, ref, exact)
            assert abs(ours - ref) <= 2 * tol, (isa, type_name, ours, ref)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("type_name", ["f32", "f16", "bf16"])
@pytest.mark.parametrize("n", [1, 7, 15, 17, 33, 100])
def test_float_dots_any_length(rng, isa, type_name, n):
    w = rng.standard_normal(n).astype(np.float32)
    x = rng.standard_normal(n).astype(np.float32)
    w_raw = pyengine.quantize(w, type_name)
    ref = _core.vec_dot("scalar", TYPE_IDS[type_name], w_raw, x)
    ours = _core.vec_dot(isa, TYPE_IDS[type_name], w_raw, x)
    scale, exact = magnitude(type_name, w_raw, x, n)
    assert abs(ours - exact) <= (n + 4) * 2.0**-23 * scale


@pytest.mark.parametrize("isa", ISAS)
def test_kernels_are_deterministic(rng, isa):
    w = pyengine.quantize(rng.standard_normal(4096).astype(np.float32), "q4_0")
    x = rng.standard_normal(4096).astype(np.float32)
    values = {_core.vec_dot(isa, TYPE_IDS["q4_0"], w, x) for _ in range(20)}
    assert len(values) == 1


def test_isa_selection():
    assert pyengine.isa() in ISAS
    assert ISAS[0] == "scalar"
    with pytest.raises(ValueError, match="not available"):
        _core.vec_dot("mmx", TYPE_IDS["f32"], np.zeros(32, np.float32).view(np.uint8), np.zeros(32, np.float32))


# The attention kernel (one KV head, the query heads that share it): against float64 softmax
# attention, scalar against each ISA, and each query head's output independent of how many heads
# share the call.
def _attention64(q, k, v, scale):
    s = (q.astype(np.float64) @ k.astype(np.float64).T) * scale
    w = np.exp(s - s.max(-1, keepdims=True))
    return (w / w.sum(-1, keepdims=True)) @ v.astype(np.float64)


def _cache_rows(x, kv):
    """(raw bytes, the values they hold) of rows x in the KV cache type kv."""
    if kv == "q8_0":
        raw = pyengine.quantize(x, "q8_0")
        return raw.ravel(), pyengine.dequantize(raw, "q8_0", x.shape)
    held = x.astype(np.float16 if kv == "f16" else np.float32)
    return held.view(np.uint8).ravel(), held


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("kv", ["f16", "f32", "q8_0"])
@pytest.mark.parametrize("hd,n_q,n_pos", [(64, 3, 1), (64, 3, 13), (64, 8, 100), (128, 1, 37), (32, 5, 9),
                                          (48, 2, 20), (6, 3, 7)])
def test_attention_kernel(rng, isa, kv, hd, n_q, n_pos):
    if kv == "q8_0" and hd % 32:
        with pytest.raises(ValueError, match="whole number"):  # a Q8_0 row is whole blocks of 32
            _core.attend(isa, TYPE_IDS[kv], np.zeros((1, hd), np.float32), np.zeros(hd, np.uint8),
                         np.zeros(hd, np.uint8), 1, 1.0)
        return
    q = rng.standard_normal((n_q, hd)).astype(np.float32)
    (k_raw, k), (v_raw, v) = (_cache_rows(rng.standard_normal((n_pos, hd)).astype(np.float32) * s, kv)
                              for s in (2, 1))
    kv_id = TYPE_IDS[kv]
    scale = 1 / np.sqrt(hd)
    out = _core.attend(isa, kv_id, q, k_raw, v_raw, n_pos, scale)
    np.testing.assert_allclose(out, _attention64(q, k, v, scale), rtol=0, atol=2e-5)
    ref = _core.attend("scalar", kv_id, q, k_raw, v_raw, n_pos, scale)
    np.testing.assert_allclose(out, ref, rtol=0, atol=2e-5)
    # head j alone gives the same bits as head j among n_q
    for j in range(n_q):
        alone = _core.attend(isa, kv_id, q[j:j + 1], k_raw, v_raw, n_pos, scale)
        np.testing.assert_array_equal(alone[0], out[j])


@pytest.mark.skipif(not {"avx2", "avx512"} <= set(ISAS), reason="needs a CPU with AVX-512")
@pytest.mark.parametrize("kv", ["f16", "f32", "q8_0"])
def test_attention_avx512_is_avx2_bit_for_bit(rng, kv):
    """The AVX-512 attention runs AVX2's arithmetic on 16 lanes (two keys' 8-lane chains in one
    register, the softmax sum in the same 8 double lanes): the same bits, so a model's logits do not
    depend on which of the two tables runs it."""
    for hd in (32, 64, 96, 128, 256):
        for n_pos in (1, 3, 4, 5, 8, 15, 16, 17, 33, 100, 300):
            n_q = int(rng.integers(1, 6))
            q = rng.standard_normal((n_q, hd)).astype(np.float32)
            (k_raw, _), (v_raw, _) = (_cache_rows(rng.standard_normal((n_pos, hd)).astype(np.float32) * s, kv)
                                      for s in (2, 1))
            args = (TYPE_IDS[kv], q, k_raw, v_raw, n_pos, 1 / np.sqrt(hd))
            np.testing.assert_array_equal(_core.attend("avx512", *args), _core.attend("avx2", *args),
                                          err_msg=f"hd {hd}, {n_pos} positions, {n_q} heads")


@pytest.mark.parametrize("isa", ISAS)
def test_attention_kernel_extreme_scores(rng, isa):
    """Scores far apart (softmax weights that underflow to 0) and all equal (uniform weights)."""
    hd, n_pos = 64, 40
    k = rng.standard_normal((n_pos, hd)).astype(np.float16)
    v = rng.standard_normal((n_pos, hd)).astype(np.float16)
    for q in (rng.standard_normal((3, hd)).astype(np.float32) * 300, np.zeros((3, hd), np.float32)):
        out = _core.attend(isa, TYPE_IDS["f16"], q, k.view(np.uint8).ravel(), v.view(np.uint8).ravel(), n_pos, 0.125)
        assert np.all(np.isfinite(out))
        np.testing.assert_allclose(out, _attention64(q, k, v, 0.125), rtol=0, atol=5e-5)


def _silu_mul64(g, u):
    g64 = g.astype(np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        return g64 / (1.0 + np.exp(-g64)) * u.astype(np.float64)


SILU_EDGES = np.array([0.0, -0.0, 1e-30, -1e-30, 1e-7, -1e-7, 0.5, -0.5, 20.0, -20.0, 86.9, -86.9, 87.1, -87.1,
                       88.0, -88.0, 104.0, -104.0, 1e30, -1e30, 3.4e38, -3.4e38], np.float32)


@pytest.mark.parametrize("isa", ISAS)
def test_silu_mul_kernel(rng, isa):
    """The gated feed-forward's SiLU: within a few ulp of silu(g) * u in float64 (the SIMD tables
    compute e^-|g| with the softmax's polynomial, the reference x / (1 + e^-x) with the C library's
    exp), on every length's tail, from tiny to overflowing arguments (below ~-88 the float reference's
    e^-g overflows and its result is -0 where float64's is ~1e-37: hence the absolute 1e-30); NaN and
    infinities as the reference has them."""
    for n in (1, 7, 8, 9, 15, 16, 17, 33, 100, 1536):
        for scale in (0.01, 1.0, 4.0, 30.0):
            g = (rng.standard_normal(n) * scale).astype(np.float32)
            u = rng.standard_normal(n).astype(np.float32)
            np.testing.assert_allclose(_core.silu_mul(isa, g, u), _silu_mul64(g, u), rtol=2e-6, atol=1e-30,
                                       err_msg=f"{n} values, scale {scale}")
    g = np.concatenate([SILU_EDGES, [np.inf, -np.inf, np.nan]]).astype(np.float32)
    u = np.full(g.size, 0.75, np.float32)
    got, want, ref = _core.silu_mul(isa, g, u), _silu_mul64(g, u), _core.silu_mul("scalar", g, u)
    finite = np.isfinite(want)
    np.testing.assert_allclose(got[finite], want[finite], rtol=2e-6, atol=1e-30)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(ref))  # -inf: -inf / inf, NaN: NaN
    np.testing.assert_array_equal(got[np.isinf(ref)], ref[np.isinf(ref)])  # +inf: inf * u


@pytest.mark.parametrize("isa", ISAS)
def test_silu_mul_kernel_does_not_depend_on_where_a_value_sits(rng, isa):
    """Each value takes the same operations in a vector, in the padded tail or alone: a thread's row
    range, whatever its length, gives a row the same bits (the determinism promise)."""
    g = (rng.standard_normal(101) * 5).astype(np.float32)
    u = rng.standard_normal(101).astype(np.float32)
    whole = _core.silu_mul(isa, g, u)
    for start, stop in ((0, 1), (3, 20), (5, 101), (17, 18), (40, 73)):
        np.testing.assert_array_equal(_core.silu_mul(isa, g[start:stop], u[start:stop]), whole[start:stop])


@pytest.mark.skipif(not {"avx2", "avx512"} <= set(ISAS), reason="needs a CPU with AVX-512")
def test_silu_mul_avx512_is_avx2_bit_for_bit(rng):
    """The 16-lane SiLU runs the 8-lane one's arithmetic (lane_math.h): the same bits."""
    for n in (1, 9, 16, 31, 1536):
        g = np.concatenate([(rng.standard_normal(n) * 10).astype(np.float32), SILU_EDGES])
        u = rng.standard_normal(g.size).astype(np.float32)
        np.testing.assert_array_equal(_core.silu_mul("avx512", g, u), _core.silu_mul("avx2", g, u))


@pytest.mark.parametrize("isa", ISAS)
def test_int8_peak_probe(isa):
    """bench/int8_peak.py's probe: the SIMD tables time their multiply-add; the scalar one has none."""
    rate = _core.int8_peak(isa, 100000)
    assert (rate is None) if isa == "scalar" else rate > 1e8
    if rate is not None:
        with pytest.raises(ValueError, match="positive"):
            _core.int8_peak(isa, 0)
