"""The block formats against independent references, one table row per format.

- dequantize: bit-identical to gguf-py's numpy dequantizers (gguf.quants, written from ggml's C),
  on random blocks and on blocks that llama.cpp's quantizer wrote (tests/data/llamacpp_blocks.npz);
- quantize: llama.cpp's exact bytes on the real rows those blocks were made from (the adversarial
  and imatrix cases are in test_quants_k.py and test_quants.py);
- the scalar dot product with the type's activation format: within float32 rounding of the float64
  product of the dequantized weights and the dequantized activations (SIMD paths are held to the
  scalar one bit for bit in test_kernels_kquants.py);
- the Q8_K activation quantizer: an independent numpy port of ggml's quantize_row_q8_K_ref.
"""

from pathlib import Path

import numpy as np
import pytest

import pyengine
from pyengine import _core
from pyengine.gguf import TYPE_TRAITS, GGMLType

gguf = pytest.importorskip("gguf")
from gguf import quants  # noqa: E402

# Byte offsets of each format's fp16 fields (scales and minimums): set to finite values in random
# blocks so that the comparison is between numbers. Adding a format adds a row.
FP16_FIELDS = {
    "q4_0": [0], "q4_1": [0, 2], "q8_0": [0], "q5_0": [0], "q5_1": [0, 2], "iq4_nl": [0],
    "q2_k": [80, 82], "q3_k": [108], "q4_k": [0, 2], "q5_k": [0, 2], "q6_k": [208], "iq4_xs": [0],
}
BLOCK_FORMATS = list(FP16_FIELDS)
REAL = np.load(Path(__file__).parent / "data" / "llamacpp_blocks.npz")
REAL_FORMATS = sorted(k[: -len("_raw")] for k in REAL.files if k.endswith("_raw"))


def geometry(name):
    traits = TYPE_TRAITS[getattr(GGMLType, name.upper())]
    return traits.block_size, traits.type_size


def random_blocks(rng, name, n_blocks, scale=1.0):
    """Random bytes with finite random fp16 scales (and minimums) of magnitude ~scale."""
    _, type_size = geometry(name)
    raw = rng.integers(0, 256, (n_blocks, type_size), dtype=np.uint8)
    for offset in FP16_FIELDS[name]:
        values = np.clip(rng.standard_normal(n_blocks) * scale, -65504, 65504).astype(np.float16)
        raw[:, offset:offset + 2] = values.view(np.uint8).reshape(n_blocks, 2)
    return raw


def gguf_dequantize(raw, name):
    return quants.dequantize(raw, getattr(gguf.GGMLQuantizationType, name.upper())).astype(np.float32)


def assert_bits_equal(ours, ref):
    np.testing.assert_array_equal(ours.view(np.uint32), np.asarray(ref, np.float32).reshape(ours.shape).view(np.uint32))


def test_every_gguf_py_block_format_has_a_row():
    """The table covers each ggml block type pyengine supports (the activation-only Q8_1 and Q8_K aside)."""
    ours = {t.name for t in TYPE_TRAITS.values() if t.block_size > 1 and t.name not in ("q8_1", "q8_k", "nf4", "nf4_dq")}
    assert ours == set(BLOCK_FORMATS)


@pytest.mark.parametrize("name", BLOCK_FORMATS)
@pytest.mark.parametrize("scale", [1e-3, 1.0, 3e4])
def test_dequantize_matches_gguf_py(rng, name, scale):
    block_size, _ = geometry(name)
    raw = random_blocks(rng, name, 24, scale)
    ours = pyengine.dequantize(raw.reshape(-1), name, (3, 8 * block_size))
    with np.errstate(all="ignore"):
        assert_bits_equal(ours, gguf_dequantize(raw.reshape(3, -1), name))


@pytest.mark.parametrize("name", BLOCK_FORMATS)
def test_dequantize_extreme_bytes(rng, name):
    """All-zero and all-ones bytes (every level, scale nibble and high bit at its extreme)."""
    block_size, type_size = geometry(name)
    for fill in (0x00, 0xFF, 0x55, 0xAA):
        raw = np.full((2, type_size), fill, np.uint8)
        for offset in FP16_FIELDS[name]:
            raw[:, offset:offset + 2] = np.array([0.5, -65504.0], np.float16).view(np.uint8).reshape(2, 2)
        ours = pyengine.dequantize(raw.reshape(-1), name, (2, block_size))
        with np.errstate(all="ignore"):
            assert_bits_equal(ours, gguf_dequantize(raw, name))


@pytest.mark.parametrize("name", REAL_FORMATS)
def test_real_llamacpp_blocks(name):
    """Blocks llama.cpp wrote for SmolLM2: our dequantizer is gguf-py's, and our quantizer gives
    llama.cpp's bytes from the same F32 rows."""
    raw, x = REAL[f"{name}_raw"], REAL[f"{name}_f32"]
    assert_bits_equal(pyengine.dequantize(raw.reshape(-1), name, x.shape), gguf_dequantize(raw, name))
    np.testing.assert_array_equal(pyengine.quantize(x, name), raw)


def test_real_blocks_cover_the_formats_of_the_presets():
    assert {"q2_k", "q3_k", "q4_k", "q5_k", "q6_k", "q5_0", "q5_1", "q8_0", "iq4_nl", "iq4_xs"} <= set(REAL_FORMATS)


def q8_k_reference(x):
    """numpy port of ggml's quantize_row_q8_K_ref: (d float32, qs int8 [256], bsums int16 [16]) per block."""
    out = []
    for block in np.asarray(x, np.float32).reshape(-1, 256):
        i = int(np.argmax(np.abs(block)))  # the first of the largest magnitudes
        if block[i] == 0:
            out.append((np.float32(0), np.zeros(256, np.int8), np.zeros(16, np.int16)))
            continue
        iscale = np.float32(-127.0) / block[i]
        scaled = (iscale * block).astype(np.float32)
        q = np.minimum(np.rint(scaled), 127).astype(np.int8)  # rint: ties to even, as nearest_int
        out.append((np.float32(1) / iscale, q, q.reshape(16, 16).astype(np.int16).sum(-1).astype(np.int16)))
    return out


def parse_q8_k(raw):
    blocks = np.asarray(raw, np.uint8).reshape(-1, 292)
    return [(b[:4].view(np.float32)[0], b[4:260].view(np.int8), b[260:].view(np.int16)) for b in blocks]


def q8_k_rows(rng):
    n = 512
    return [rng.standard_normal(n), np.zeros(n), np.full(n, -3.0), np.where(np.arange(n) % 256 == 9, 70.0, 0.01),
            (np.arange(n) % 16 - 7.5) * (127 / 7.5) / 127 * 3.0,  # values that land on .5 after scaling
            rng.standard_normal(n) * 1e-30, rng.standard_normal(n) * 1e30,
            np.concatenate([np.zeros(256), rng.standard_normal(256)])]


def test_q8_k_quantizer_matches_ggml(rng):
    for x in q8_k_rows(rng):
        x = np.asarray(x, np.float32)
        ours = parse_q8_k(_core.quantize_activation("scalar", x, int(GGMLType.Q8_K)))
        for (d, q, s), (rd, rq, rs) in zip(ours, q8_k_reference(x)):
            assert d.view(np.uint32) == np.float32(rd).view(np.uint32)
            np.testing.assert_array_equal(q, rq)
            np.testing.assert_array_equal(s, rs)


ACTIVATION = {name: TYPE_TRAITS[getattr(GGMLType, name.upper())] for name in BLOCK_FORMATS}


@pytest.mark.parametrize("name", BLOCK_FORMATS)
@pytest.mark.parametrize("n_blocks", [1, 3, 8])
def test_scalar_dot_matches_float64(rng, name, n_blocks):
    """The scalar reference's dot against the float64 product of what it multiplies: the dequantized
    weights and the activation dequantized from its quantized form (for Q4_1 and Q5_1 the minimum's
    term uses the Q8_1 block's stored fp16 s, so only float32 rounding separates the two)."""
    block_size, type_size = geometry(name)
    n = n_blocks * max(block_size, 256)
    type_id = int(getattr(GGMLType, name.upper()))
    act_id = _core.type_info(type_id)[3]
    act = TYPE_TRAITS[GGMLType(act_id)]
    for raw in (random_blocks(rng, name, n // block_size), pyengine.quantize(rng.standard_normal(n), name)):
        w = pyengine.dequantize(raw.reshape(-1), name, (n,)).astype(np.float64)
        for x in (rng.standard_normal(n), rng.standard_normal(n) * np.exp(rng.uniform(-5, 5, n))):
            x = np.asarray(x, np.float32)
            ours = _core.vec_dot("scalar", type_id, raw.reshape(-1), x)
            xq_raw = _core.quantize_activation("scalar", x, act_id)
            xq = pyengine.dequantize(xq_raw, act.name, (n,)).astype(np.float64)
            if act.name == "q8_1":  # the minimum's term: m * s with the block's fp16 s
                blocks = raw.reshape(-1, type_size)
                m = blocks[:, 2:4].copy().view(np.float16)[:, 0].astype(np.float64)
                s = xq_raw.reshape(-1, 36)[:, 2:4].copy().view(np.float16)[:, 0].astype(np.float64)
                w_no_min = (w.reshape(-1, 32) - m[:, None]).reshape(-1)
                exact = xq @ w_no_min + s @ m
                magnitude = np.abs(xq) @ np.abs(w_no_min) + np.abs(s) @ np.abs(m)
            else:
                exact, magnitude = xq @ w, np.abs(xq) @ np.abs(w)
            # a few float32 roundings per block or super-block, and the dequantizer's own (d * sc) * q
            assert abs(ours - exact) <= (n / 32 + 8) * 2.0**-22 * magnitude + 1e-30, (name, ours, exact)


def test_core_stubs_name_what_the_module_has():
    """pyengine/_core.pyi (the native module's type stubs) lists exactly the module's functions and
    classes, and each class's public members."""
    import ast

    stub = ast.parse((Path(pyengine.__file__).parent / "_core.pyi").read_text())
    def declared(body):
        return {n.name if not isinstance(n, ast.AnnAssign) else n.target.id: n for n in body
                if isinstance(n, (ast.FunctionDef, ast.ClassDef, ast.AnnAssign))}

    names = declared(stub.body)
    public = {n for n in dir(_core) if not n.startswith("_")}
    assert set(names) == public
    for name, node in names.items():
        if isinstance(node, ast.ClassDef):
            members = {m for m in declared(node.body) if not m.startswith("_")}
            native = getattr(_core, name)
            if hasattr(native, "__members__"):  # an enum: its values, beside pybind11's name and value
                members |= {"name", "value"}
            assert members == {m for m in dir(native) if not m.startswith("_")}, name
