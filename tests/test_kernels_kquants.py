"""The K-quant, Q5_0, Q5_1 and IQ4_NL dot products and the Q8_K activation quantizer of every ISA.

Unlike the Q4_0 / Q8_0 dots (tests/test_kernels.py: equal within a rounding bound), these kernels
must be BIT-IDENTICAL to the scalar reference: they compute each block's integer sums exactly and
then do the reference's float operations in its order. So:

- every ISA's vec_dot equals the scalar one exactly (the same float32 bits; NaN matches NaN), on
  random and adversarial weight blocks against random and adversarial activation rows;
- the scalar vec_dot is within a float32 rounding bound of the float64 product of the dequantized
  weights and the dequantized activation (pyengine.dequantize of quantize_activation's bytes);
- every ISA's Q8_K quantizer writes the scalar one's exact bytes, and the scalar one matches an
  independent numpy port of ggml's quantize_row_q8_K_ref.

Weight bytes are made directly (random bytes, fp16 fields set): the quantizers of these formats
are not needed here.
"""

import numpy as np
import pytest

import pyengine
from pyengine import _core

from conftest import ISAS

TYPE_Q8_K = 15
QK_K = 256
FP16_MAX = 65504.0

# Per weight type: ggml type id, values per block, bytes per block, activation type, the byte offsets
# of the fp16 fields (scale first; the minimum's scale second where there is one), the bytes of the
# sub-block scales (start, end) or None, and the byte ranges of the quant levels.
FORMATS = {
    #          id  block  bytes  act      fp16      sub-scales  levels
    "q5_0":   (6,  32,    22,   "q8_0", (0,),     None,       [(2, 6), (6, 22)]),
    "q5_1":   (7,  32,    24,   "q8_1", (0, 2),   None,       [(4, 8), (8, 24)]),
    "iq4_nl": (20, 32,    18,   "q8_0", (0,),     None,       [(2, 18)]),
    "q2_k":   (10, 256,   84,   "q8_k", (80, 82), (0, 16),    [(16, 80)]),
    "q3_k":   (11, 256,   110,  "q8_k", (108,),   (96, 108),  [(0, 32), (32, 96)]),
    "q4_k":   (12, 256,   144,  "q8_k", (0, 2),   (4, 16),    [(16, 144)]),
    "q5_k":   (13, 256,   176,  "q8_k", (0, 2),   (4, 16),    [(16, 48), (48, 176)]),
    "q6_k":   (14, 256,   210,  "q8_k", (208,),   (192, 208), [(0, 128), (128, 192)]),
    "iq4_xs": (23, 256,   136,  "q8_k", (0,),     (2, 8),     [(8, 136)]),
}
# Formats whose second fp16 field scales the minimums of a K-quant (dot = d-part - dmin-part).
HAS_DMIN = {"q2_k", "q4_k", "q5_k"}
# The sub-block scale bytes giving the largest and the smallest (most negative) scales: 6-bit 63
# (Q4_K, Q5_K: scales and minimums; Q3_K and IQ4_XS: 63 - 32 = 31, and 0 - 32 = -32), Q2_K's 4-bit
# 15, Q6_K's int8 127 and -128.
SCALE_BYTES = {"q2_k": (0xFF, 0x00), "q3_k": (0xFF, 0x00), "q4_k": (0xFF, 0x00), "q5_k": (0xFF, 0x00),
               "q6_k": (0x7F, 0x80), "iq4_xs": (0xFF, 0x00)}
LENGTHS = {32: [1, 3, 7, 64], 256: [1, 2, 3, 8]}  # blocks per row
ACT_TYPE_IDS = {"q8_0": 8, "q8_1": 9, "q8_k": TYPE_Q8_K}


def fp16_field(values):
    return np.asarray(values, dtype=np.float16).view(np.uint8).reshape(-1, 2)


def random_fp16(rng, n):
    """Finite fp16 scales over a wide range of magnitudes, either sign."""
    return rng.standard_normal(n) * np.exp2(rng.integers(-14, 3, n))


def set_fp16(blocks, offset, values):
    blocks[:, offset:offset + 2] = fp16_field(np.broadcast_to(values, (blocks.shape[0],)))


def set_region(blocks, region, value):
    start, end = region
    blocks[:, start:end] = value


def weight_rows(rng, type_name, nb):
    """(kind, raw bytes) weight rows of nb blocks: random and adversarial."""
    _, _, size, _, fp16, scales, levels = FORMATS[type_name]

    def base():
        blocks = rng.integers(0, 256, (nb, size), dtype=np.uint8)
        for off in fp16:
            set_fp16(blocks, off, random_fp16(rng, nb))
        return blocks

    rows = [("random", base())]
    b = base()
    for off in fp16:
        set_fp16(b, off, 0.0)
    rows.append(("zero scales", b))
    # The largest fp16 scales (either sign) with every level at one extreme, or each level region at
    # a random extreme (Q3_K: hmask 0 or 0xFF with low bits 0 or 3; Q5: fifth bits all clear or set).
    for extreme in (0x00, 0xFF, None):
        b = base()
        for off in fp16:
            set_fp16(b, off, FP16_MAX * rng.choice([-1.0, 1.0], nb))
        for region in levels:
            set_region(b, region, extreme if extreme is not None else rng.choice([0x00, 0xFF], (nb, 1)))
        if scales:
            set_region(b, scales, SCALE_BYTES[type_name][0])
        rows.append((f"max fp16 scales, levels {extreme if extreme is not None else 'mixed'}", b))
    if type_name in HAS_DMIN or type_name == "q5_1":
        b = base()
        set_fp16(b, fp16[1], 0.0)
        rows.append(("dmin 0", b))
    if scales:
        for which, byte in zip(("max", "min"), SCALE_BYTES[type_name]):
            b = base()
            set_region(b, scales, byte)
            rows.append((f"sub-block scales at {which}", b))
    # A single outlier block: large scales and extreme levels among blocks of small ones.
    b = base()
    for off in fp16:
        set_fp16(b, off, random_fp16(rng, nb) * 1e-3)
    k = rng.integers(nb)
    for off in fp16:
        b[k, off:off + 2] = fp16_field([FP16_MAX * rng.choice([-1.0, 1.0])])[0]
    for region in levels:
        b[k, region[0]:region[1]] = 0xFF
    rows.append(("one outlier block", b))
    # Subnormal fp16 scales (products that underflow float32 once multiplied by tiny activations).
    b = base()
    for off in fp16:
        set_fp16(b, off, rng.choice([1, -1, 3, -1023], nb) * 2.0**-24)
    rows.append(("subnormal scales", b))
    return [(kind, r.reshape(-1)) for kind, r in rows]


def activation_rows(rng, n):
    """(kind, float32 row) activation rows of n values: random and adversarial."""
    idx = np.arange(n)
    rows = [
        ("normal", rng.standard_normal(n)),
        ("zeros", np.zeros(n)),
        ("huge", rng.standard_normal(n) * 1e30),
        ("tiny", rng.standard_normal(n) * 1e-30),
        ("one outlier", np.where(idx == rng.integers(n), 1e4, 1e-3 * rng.standard_normal(n))),
        ("wide range", rng.standard_normal(n) * np.exp(rng.uniform(-10, 10, n))),
    ]
    return [(kind, np.asarray(r, dtype=np.float32)) for kind, r in rows]


def same_float(a, b):
    a, b = np.float32(a), np.float32(b)
    return (np.isnan(a) and np.isnan(b)) or a.tobytes() == b.tobytes()


def all_cases(rng, type_name):
    block = FORMATS[type_name][1]
    for nb in LENGTHS[block]:
        acts = activation_rows(rng, nb * block)
        for wkind, w in weight_rows(rng, type_name, nb):
            for akind, x in acts:
                yield f"{nb} blocks, weights {wkind}, activations {akind}", w, x


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("type_name", sorted(FORMATS))
def test_vec_dot_bit_identical_to_scalar(isa, type_name):
    rng = np.random.default_rng([1, sorted(FORMATS).index(type_name)])
    type_id = FORMATS[type_name][0]
    failures = []
    n_cases = 0
    for what, w, x in all_cases(rng, type_name):
        with np.errstate(all="ignore"):
            got = _core.vec_dot(isa, type_id, w, x)
            want = _core.vec_dot("scalar", type_id, w, x)
        n_cases += 1
        if not same_float(got, want):
            failures.append(f"{what}: {isa} {got!r} vs scalar {want!r}")
    assert not failures, f"{len(failures)} of {n_cases} differ:\n" + "\n".join(failures[:20])


def with_fp16(raw, type_name, offset, value):
    size = FORMATS[type_name][2]
    b = np.array(raw, dtype=np.uint8).reshape(-1, size)
    set_fp16(b, offset, value)
    return b.reshape(-1)


def exact_product(w, x, type_name):
    """(exact, S, absolute slack): the float64 dot of the dequantized weights with the dequantized
    scalar activation, the sum of |terms| that bounds its float32 rounding, and an absolute allowance
    for float32 underflow. The two parts of a K-quant with minimums (d * sc * q and -dmin * m) are
    dequantized apart (the other fp16 factor zeroed) so that S covers both before they cancel; Q5_1's
    minimum term uses the Q8_1 block's stored fp16 s = d * sum(q), as the kernels (and llama.cpp) do."""
    type_id, block, size, act, fp16, _, _ = FORMATS[type_name]
    n = x.size
    nb = n // block
    x_raw = _core.quantize_activation("scalar", x, ACT_TYPE_IDS[act])
    xq = pyengine.dequantize(x_raw, act, (n,)).astype(np.float64)
    parts = []
    if type_name in HAS_DMIN or type_name == "q5_1":
        parts.append(pyengine.dequantize(with_fp16(w, type_name, fp16[1], 0.0), type_name, (n,)))
        if type_name in HAS_DMIN:
            parts.append(pyengine.dequantize(with_fp16(w, type_name, fp16[0], 0.0), type_name, (n,)))
    else:
        parts.append(pyengine.dequantize(w, type_name, (n,)))
    exact = sum(float(xq @ p.astype(np.float64)) for p in parts)
    S = sum(float(np.abs(xq) @ np.abs(p.astype(np.float64))) for p in parts)
    if type_name == "q5_1":
        m = np.ascontiguousarray(w.reshape(nb, size)[:, 2:4]).view(np.float16)[:, 0].astype(np.float64)
        s = np.ascontiguousarray(x_raw.reshape(nb, 36)[:, 2:4]).view(np.float16)[:, 0].astype(np.float64)
        exact += float(m @ s)
        S += float(np.abs(m) @ np.abs(s))
    # Underflow: each dequantized weight, and each product d * dx of the kernel (times an integer sum
    # under 2^28), may lose up to 2^-150 absolutely.
    slack = 2.0**-148 * float(np.abs(xq).sum()) + 2.0**-120 * nb
    return exact, S, slack


@pytest.mark.parametrize("type_name", sorted(FORMATS))
def test_scalar_vec_dot_against_float64(type_name):
    """The oracle itself: within (blocks + 8) float32 roundings of sum |terms| of the exact product."""
    rng = np.random.default_rng([2, sorted(FORMATS).index(type_name)])
    type_id = FORMATS[type_name][0]
    failures = []
    checked = 0
    for what, w, x in all_cases(rng, type_name):
        with np.errstate(all="ignore"):
            got = _core.vec_dot("scalar", type_id, w, x)
            exact, S, slack = exact_product(w, x, type_name)
        if not (np.isfinite(S) and S < 1e38):
            continue  # an intermediate may overflow float32: no order-independent answer to hold it to
        checked += 1
        nb = x.size // FORMATS[type_name][1]
        bound = (nb + 8) * 2.0**-23 * S + slack
        if not (np.isfinite(got) and abs(float(got) - exact) <= bound):
            failures.append(f"{what}: scalar {got!r}, exact {exact!r}, |diff| {abs(float(got) - exact):.3g}, "
                            f"bound {bound:.3g}")
    assert checked > 100
    assert not failures, "\n".join(failures[:20])


# ---------------------------------------------------------------------------------------------------
# The Q8_K activation quantizer.

def quantize_q8_K_numpy(x):
    """ggml's quantize_row_q8_K_ref, written out in numpy float32: bytes of the block_q8_K rows
    (float d, int8 qs[256], int16 bsums[16])."""
    x = np.asarray(x, dtype=np.float32).reshape(-1, QK_K)
    out = []
    for row in x:
        a = np.abs(row)
        finite = ~np.isnan(a)  # the reference's `fabs(x) > amax` never takes a NaN
        amax = a[finite].max() if finite.any() else np.float32(0)
        if amax == 0:
            out.append(np.zeros(292, np.uint8))
            continue
        first = int(np.argmax(finite & (a == amax)))
        with np.errstate(all="ignore"):
            iscale = np.float32(-127.0) / row[first]
            v = (iscale * row).astype(np.float32) + np.float32(12582912.0)  # nearest_int: ties to even
        q = (v.view(np.int32) & 0x007FFFFF) - 0x00400000
        qs = np.minimum(127, q).astype(np.int8)  # the C cast: wraps modulo 256
        bsums = qs.astype(np.int32).reshape(16, 16).sum(axis=1).astype(np.int16)
        with np.errstate(all="ignore"):
            d = np.float32(1.0) / iscale
        out.append(np.concatenate([np.array([d], np.float32).view(np.uint8), qs.view(np.uint8),
                                   bsums.view(np.uint8)]))
    return np.concatenate(out)


def q8_K_rows(rng):
    """(kind, float32 row) rows for the quantizer, each a few 256-blocks."""
    n = 3 * QK_K
    idx = np.arange(n)
    rows = [("normal", rng.standard_normal(n)),
            ("zeros", np.where(rng.integers(0, 2, n) == 1, -0.0, 0.0)),
            ("zero block among others", np.where(idx // QK_K == 1, 0.0, rng.standard_normal(n))),
            ("one outlier", np.where(idx % QK_K == rng.integers(QK_K), -5e3, 1e-2 * rng.standard_normal(n))),
            ("huge", rng.standard_normal(n) * 1e36),
            ("near float max", rng.uniform(-3.4e38, 3.4e38, n)),
            ("tiny", rng.standard_normal(n) * 1e-35),
            ("subnormal", rng.integers(-50, 50, n) * 2.0**-149),  # iscale overflows to -inf
            ("wide range", rng.standard_normal(n) * np.exp(rng.uniform(-20, 20, n)))]
    # Ties: the largest magnitude is 127 * 2^e, so iscale = -2^-e exactly and iscale * x = k + 0.5
    # exactly: the even neighbour must be taken.
    e = rng.integers(-20, 20, n // QK_K).repeat(QK_K)
    ties = (rng.integers(-127, 127, n) + 0.5) * np.exp2(e)
    ties[::QK_K] = 127 * np.exp2(e[::QK_K]) * rng.choice([-1, 1], n // QK_K)
    rows.append(("ties", ties))
    # The largest magnitude with both signs: the first one sets the sign of the scale.
    both = rng.standard_normal(n)
    both[5], both[9] = 7.0, -7.0
    both[QK_K + 5], both[QK_K + 9] = -7.0, 7.0
    rows.append(("max magnitude with both signs", both))
    # All equal values (every level -127).
    rows.append(("all equal", np.full(n, 0.3)))
    return [(kind, np.asarray(r, dtype=np.float32)) for kind, r in rows]


@pytest.mark.parametrize("isa", ISAS)
def test_q8_K_quantizer_bytes(isa):
    rng = np.random.default_rng(8)
    for kind, x in q8_K_rows(rng):
        got = _core.quantize_activation(isa, x, TYPE_Q8_K)
        want = _core.quantize_activation("scalar", x, TYPE_Q8_K)
        assert got.tobytes() == want.tobytes(), f"{kind}: {isa} bytes differ from scalar"


def test_q8_K_scalar_matches_numpy_port():
    rng = np.random.default_rng(9)
    for kind, x in q8_K_rows(rng):
        got = _core.quantize_activation("scalar", x, TYPE_Q8_K)
        want = quantize_q8_K_numpy(x)
        assert got.tobytes() == want.tobytes(), f"{kind}: scalar bytes differ from the numpy port"


def test_q8_K_ties_go_to_even():
    """A hand-made block: the 0.5 ties round to even (2.5 -> 2, -3.5 -> -4), not away from zero."""
    x = np.zeros(QK_K, np.float32)
    x[0] = -127.0  # iscale = 1
    x[1:5] = [2.5, -3.5, 0.5, 126.5]
    raw = _core.quantize_activation("scalar", x, TYPE_Q8_K)
    qs = raw[4:4 + QK_K].view(np.int8)
    assert list(qs[:5]) == [-127, 2, -4, 0, 126]
    assert raw[:4].view(np.float32)[0] == 1.0
