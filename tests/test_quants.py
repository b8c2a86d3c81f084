"""Block formats: our quantizers give gguf.quants' (llama.cpp's reference) exact bytes."""

import numpy as np
import pytest

import pyengine

gguf = pytest.importorskip("gguf")
from gguf import quants  # noqa: E402

STORAGE_TYPES = ["f32", "f16", "bf16", "q8_0", "q4_0", "q4_1"]


def reference_type(name):
    return getattr(gguf.GGMLQuantizationType, name.upper())


def reference_quantize(x, name):
    """gguf.quants' bytes (numpy warns on values that overflow fp16; the bytes are what count)."""
    with np.errstate(all="ignore"):
        return quants.quantize(x, reference_type(name)).view(np.uint8)


def adversarial_rows(rng, cols=256):
    """Rows that stress the rounding and scale rules of the reference quantizers."""
    rows = [
        np.zeros(cols),                                   # all zero: the d == 0 guard
        np.full(cols, 0.3),                               # all equal (q4_1: max == min)
        np.full(cols, -7.0),                              # all equal, negative
        np.where(np.arange(cols) == 5, 1000.0, 0.001),    # a single outlier per row
        rng.standard_normal(cols) * 1e-6,                 # tiny scales (fp16 subnormal d)
        rng.standard_normal(cols) * 60000.0,              # near fp16's largest finite value
        np.tile([1.0, -1.0], cols // 2),                  # +- equal magnitudes: Q4_0 picks the first
        np.tile([-1.0, 1.0], cols // 2),
        (np.arange(cols) % 32 - 16) * 0.5,               # exact .5 ties after scaling
        np.linspace(-1, 1, cols),
        rng.standard_normal(cols) * np.exp(rng.uniform(-10, 10, cols)),  # wild dynamic range
        # Q8_0 / Q8_1's exact ties: amax 127 makes d = 1, so each value is its own scaled value
        np.tile(np.array([127.0, 0.5, -0.5, 1.5, -1.5, 2.5, -2.5, 126.5, -126.5, 0.49999997, -0.49999997,
                          0.50000006, -0.0, 0.0, 1e-30, -1e-30, 63.5, -63.5, 3.4999998, -3.5000002, 99.5,
                          -99.5, 0.25, -0.75, 5.5, -5.5, 6.5, -6.5, 7.5, -7.5, 8.5, -127.0]), cols // 32),
    ]
    return np.array(rows, dtype=np.float32)


@pytest.mark.parametrize("type_name", STORAGE_TYPES)
@pytest.mark.parametrize("shape", [(1, 32), (3, 64), (17, 96), (64, 256)])
def test_quantize_matches_gguf_reference(rng, type_name, shape):
    x = (rng.standard_normal(shape) * rng.uniform(0.01, 10)).astype(np.float32)
    ours = pyengine.quantize(x, type_name)
    ref = reference_quantize(x, type_name).reshape(ours.shape)
    assert ours.dtype == np.uint8
    np.testing.assert_array_equal(ours, ref)


@pytest.mark.parametrize("type_name", STORAGE_TYPES)
def test_quantize_adversarial_matches_gguf_reference(rng, type_name):
    x = adversarial_rows(rng)
    ours = pyengine.quantize(x, type_name)
    ref = reference_quantize(x, type_name).reshape(ours.shape)
    np.testing.assert_array_equal(ours, ref)


@pytest.mark.parametrize("type_name", STORAGE_TYPES)
def test_dequantize_matches_gguf_reference(rng, type_name):
    x = np.concatenate([adversarial_rows(rng), rng.standard_normal((5, 256)).astype(np.float32)])
    raw = pyengine.quantize(x, type_name)
    ours = pyengine.dequantize(raw, type_name, x.shape)
    ref = quants.dequantize(raw, reference_type(type_name)).reshape(x.shape)
    np.testing.assert_array_equal(ours, ref)


def test_float_formats_special_values():
    x = np.array([[0.0, -0.0, np.inf, -np.inf, 65504, 65520, 1e-8, 6e-8, -3e-5, 1.0 + 2**-11, 1.0 + 3 * 2**-11,
                   np.nan, 2**-24, 2**-25, 3 * 2**-26, 1e30]], dtype=np.float32)
    with np.errstate(all="ignore"):
        x16 = x.astype(np.float16)
    f16 = pyengine.quantize(x, "f16")
    np.testing.assert_array_equal(f16.view(np.float16), x16)
    np.testing.assert_array_equal(pyengine.quantize(x, "bf16"), reference_quantize(x, "bf16"))
    np.testing.assert_array_equal(pyengine.dequantize(f16, "f16", x.shape), x16.astype(np.float32))


def test_f16_conversion_exhaustive_on_a_grid():
    # Every fp16 bit pattern round-trips, and floats between them round to nearest even.
    halves = np.arange(65536, dtype=np.uint32).astype(np.uint16).view(np.float16)
    finite = halves[np.isfinite(halves)].astype(np.float32)
    x = finite.reshape(1, -1)
    np.testing.assert_array_equal(pyengine.quantize(x, "f16").view(np.float16), x.astype(np.float16))
    mids = np.nextafter(x, np.float32(np.inf))
    with np.errstate(all="ignore"):
        expected = mids.astype(np.float16)
    np.testing.assert_array_equal(pyengine.quantize(mids, "f16").view(np.float16), expected)


def test_q8_1_layout(rng):
    # Q8_1 (activations for Q4_1): d, then s = d * sum(q), then the same int8 values as Q8_0.
    x = rng.standard_normal((4, 64)).astype(np.float32)
    q81 = pyengine.quantize(x, "q8_1").reshape(4, 2, 36)
    q80 = pyengine.quantize(x, "q8_0").reshape(4, 2, 34)
    np.testing.assert_array_equal(q81[..., :2], q80[..., :2])
    np.testing.assert_array_equal(q81[..., 4:], q80[..., 2:])
    d = np.abs(x.reshape(4, 2, 32)).max(-1) / np.float32(127)  # the unrounded float32 scale
    s = q81[..., 2:4].copy().view(np.float16)[..., 0]
    qsum = q81[..., 4:].view(np.int8).astype(np.int32).sum(-1)
    np.testing.assert_array_equal(s, (qsum.astype(np.float32) * d).astype(np.float16))
    np.testing.assert_allclose(pyengine.dequantize(q81, "q8_1", x.shape), x, atol=np.abs(x).max() / 127)


def test_one_dimensional_input(rng):
    x = rng.standard_normal(64).astype(np.float32)
    raw = pyengine.quantize(x, "q4_0")
    assert raw.shape == (36,)
    assert pyengine.dequantize(raw, "q4_0", (64,)).shape == (64,)


@pytest.mark.parametrize("bad", ["iq1_s", "nope", "", 16, 99])
def test_unknown_type_is_a_value_error(bad):
    with pytest.raises(ValueError):
        pyengine.quantize(np.zeros((1, 32), np.float32), bad)


def test_shapes_whose_size_overflows_are_refused():
    # (2**30, 2**32) float32 is 2**64 bytes: a size that wraps to 0 must not pass for an empty array
    with pytest.raises(ValueError, match="do not fit in memory"):
        pyengine.dequantize(np.zeros(0, np.uint8), "f32", (2**30, 2**32))
    with pytest.raises(ValueError, match="do not fit in memory"):
        pyengine.dequantize(np.zeros(0, np.uint8), "q8_0", (2**62, 2**34))
    with pytest.raises(ValueError, match="do not fit in memory"):
        pyengine.matmul(np.zeros(0, np.uint8), "f32", (2**56, 256), np.zeros((1, 256), np.float32))


def test_row_length_must_fit_the_block():
    with pytest.raises(ValueError, match="multiple of 32"):
        pyengine.quantize(np.zeros((2, 33), np.float32), "q4_0")
    with pytest.raises(ValueError, match="bytes"):
        pyengine.dequantize(np.zeros(17, np.uint8), "q4_0", (1, 32))


QUANTIZED = sorted(name for t in pyengine.gguf.TYPE_TRAITS.values()
                   if t.block_size > 1 and (name := t.name) not in ("q8_k",))


@pytest.mark.parametrize("type_name", QUANTIZED)
def test_rows_split_over_a_pool_give_the_same_bytes(rng, type_name):
    """_core.quantize with a pool (pyengine.quantize passes one for large matrices): the threads take
    runs of rows, and every row's bytes are those of the one-thread call, imatrix or not; fewer rows
    than threads, one row, uneven splits."""
    from pyengine import _core
    from pyengine.quants import _type_id, has_weighted_quantizer, thread_pool

    type_id = _type_id(type_name)
    cols = 256
    for rows in (1, 2, 3, 17):
        x = rng.standard_normal((rows, cols)).astype(np.float32) * rng.uniform(0.01, 10, (rows, 1)).astype(np.float32)
        weights = rng.uniform(0, 2, cols).astype(np.float32) if has_weighted_quantizer(type_name) else None
        expected = _core.quantize(x, type_id, weights)
        for n_threads in (2, 3):
            np.testing.assert_array_equal(_core.quantize(x, type_id, weights, thread_pool(n_threads)), expected)
