"""pyengine.gguf: round trips against gguf-py (the reference implementation), hostile files,
zero-copy views and the writer's atomicity."""

from __future__ import annotations

import mmap
import os
import struct
import weakref
from pathlib import Path

import gguf as gguf_py
import numpy as np
import pytest

import pyengine.gguf as pg
from pyengine.gguf import GGMLType, GGUFError, GGUFReader, GGUFValueType, GGUFWriter, TensorInfo, type_by_name

VT = GGUFValueType
REPO_ROOT = Path(__file__).resolve().parent.parent
VOCAB_DIR = REPO_ROOT.parent / "shared" / "data" / "vocab"


# ---------------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------------


def _flatten(value):
    """Our value as gguf-py's ReaderField.contents() shows it: nested arrays flattened."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, list):
        return [x for v in value for x in (_flatten(v) if isinstance(v, (list, np.ndarray)) else [v])]
    return value


def _desc(t):
    return t if isinstance(t, tuple) else (t,)


def read_with_gguf_py(path: Path) -> gguf_py.GGUFReader:
    """gguf-py's reader over the file's bytes in a plain array rather than an np.memmap: the same
    parsing, without memmap's cost per slice (seconds for a vocabulary of 50,000 strings)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(np, "memmap", lambda path, mode="r": np.fromfile(path, dtype=np.uint8))
        return gguf_py.GGUFReader(path)


def assert_matches_gguf_py(path: Path) -> None:
    """Everything our reader sees in `path` is what gguf-py sees."""
    ref = read_with_gguf_py(path)
    with GGUFReader(path) as ours:
        fields = {k: f for k, f in ref.fields.items() if not k.startswith("GGUF.")}
        assert list(ours.metadata) == list(fields)
        assert ours.version == ref.fields["GGUF.version"].contents()
        for key, field in fields.items():
            ref_types = [int(t) for t in field.types]
            our_types = [int(t) for t in _desc(ours.metadata_types[key])]
            if len(field.data) == 0:  # gguf-py gives an empty array no element type
                assert our_types[: len(ref_types)] == ref_types, key
            else:
                assert our_types == ref_types, key
            assert _flatten(ours.metadata[key]) == field.contents(), key

        assert ours.alignment == ref.alignment
        assert ours.data_offset == ref.data_offset
        assert list(ours.tensors) == [t.name for t in ref.tensors]
        for t in ref.tensors:
            info = ours.tensors[t.name]
            assert info.shape == tuple(t.shape.tolist())
            assert info.type == int(t.tensor_type)
            assert info.offset == t.data_offset
            assert info.nbytes == t.n_bytes
            assert info.data.tobytes() == t.data.tobytes()
            if info.type != GGMLType.BF16:  # gguf-py shows BF16 as bytes, we as uint16
                assert info.data.shape == t.data.shape and info.data.dtype == t.data.dtype


def _owner(a):
    """The object at the end of an array's base chain."""
    while True:
        if isinstance(a, np.ndarray) and a.base is not None:
            a = a.base
        elif isinstance(a, memoryview):
            a = a.obj
        else:
            return a


RNG = np.random.default_rng(1234)
F32_ARRAYS = {  # numpy shapes 1-D to 4-D, odd sizes
    "t.f32.1d": RNG.standard_normal(7).astype(np.float32),
    "t.f32.2d": RNG.standard_normal((3, 5)).astype(np.float32),
    "t.f32.3d": RNG.standard_normal((2, 3, 5)).astype(np.float32),
    "t.f32.4d": RNG.standard_normal((2, 1, 3, 3)).astype(np.float32),
}
F16_ARRAY = RNG.standard_normal((5, 3)).astype(np.float16)

SCALARS = [  # key, value, type
    ("s.u8", 255, VT.UINT8),
    ("s.i8", -128, VT.INT8),
    ("s.u16", 65535, VT.UINT16),
    ("s.i16", -32768, VT.INT16),
    ("s.u32", 2**32 - 1, VT.UINT32),
    ("s.i32", -(2**31), VT.INT32),
    ("s.f32", 0.5, VT.FLOAT32),
    ("s.bool.true", True, VT.BOOL),
    ("s.bool.false", False, VT.BOOL),
    ("s.str", "héllo wörld ✓", VT.STRING),
    ("s.str.empty", "", VT.STRING),
    ("s.u64", 2**64 - 1, VT.UINT64),
    ("s.i64", -(2**63), VT.INT64),
    ("s.f64", 1e300, VT.FLOAT64),
]
NUMERIC_ARRAYS = {  # element type -> values
    VT.UINT8: [0, 7, 255],
    VT.INT8: [-128, 0, 127],
    VT.UINT16: [0, 65535],
    VT.INT16: [-32768, 32767, 1],
    VT.UINT32: [0, 2**32 - 1],
    VT.INT32: [-(2**31), 2**31 - 1, 5],
    VT.FLOAT32: [0.25, -1.5, 3.0],
    VT.BOOL: [True, False, True],
    VT.UINT64: [0, 2**64 - 1],
    VT.INT64: [-(2**63), 2**63 - 1],
    VT.FLOAT64: [1e-300, -2.5],
}


def write_full_file(path: Path, alignment: int) -> None:
    """Every kind of value and tensor our writer makes."""
    with GGUFWriter(path, alignment=alignment) as w:
        w.add("general.architecture", "llama")
        for key, value, vtype in SCALARS:
            w.add(key, value, vtype)
        w.add_array("a.str", ["", "a", "ünï", "<0x0A>"])
        for vtype, values in NUMERIC_ARRAYS.items():
            w.add_array(f"a.{vtype.name.lower()}", values, vtype)
        w.add("a.nested", [[1, 2], [3, 4, 5]], VT.ARRAY, (VT.ARRAY, VT.INT32))
        w.add("a.nested.str", [["x"], ["y", "z"]])
        for name, array in F32_ARRAYS.items():
            w.add_tensor(name, array)
        w.add_tensor("t.f16", F16_ARRAY)
        # raw blocks with GGUF dims: Q8_0 [64, 3] and Q4_0 [32, 3, 1, 2]
        w.add_tensor("t.q8_0", RNG.integers(0, 256, (3, 68), dtype=np.uint8), GGMLType.Q8_0, shape=(64, 3))
        w.add_tensor("t.q4_0", RNG.integers(0, 256, 6 * 18, dtype=np.uint8), "q4_0", shape=(32, 3, 1, 2))
        w.add_tensor("t.bf16", RNG.integers(0, 2**16, (2, 3), dtype=np.uint16), GGMLType.BF16)


# ---------------------------------------------------------------------------------------------------
# Types
# ---------------------------------------------------------------------------------------------------


def test_type_table():
    assert pg.TYPE_TRAITS[GGMLType.Q4_0] == ("q4_0", 32, 18)
    assert pg.TYPE_TRAITS[GGMLType.Q8_1] == ("q8_1", 32, 36)
    assert type_by_name("q8_0") is GGMLType.Q8_0
    assert type_by_name("F16") is GGMLType.F16
    with pytest.raises(ValueError, match="q4_0"):
        type_by_name("q3_x")
    with pytest.raises(ValueError, match="not supported"):
        type_by_name("iq2_xxs")
    assert pg.tensor_nbytes((64, 3), GGMLType.Q8_0) == 2 * 3 * 34
    # the ids agree with gguf-py's, and pyengine's own (NF4, NF4_DQ) are outside ggml's range
    for t in GGMLType:
        if t in pg.PYENGINE_TYPES:
            assert t.name not in gguf_py.GGMLQuantizationType.__members__ and t > max(gguf_py.GGMLQuantizationType)
        else:
            assert gguf_py.GGMLQuantizationType[t.name] == t
    for t in VT:
        assert gguf_py.GGUFValueType[t.name] == t


def test_type_table_matches_gguf_py():
    """Every ggml type the native table supports has gguf-py's name and block geometry."""
    assert len(pg.TYPE_TRAITS) >= 19
    for t, traits in pg.TYPE_TRAITS.items():
        if t in pg.PYENGINE_TYPES:
            continue
        assert traits.name == t.name.lower()
        if t == GGMLType.Q8_1:  # gguf-py still says 40 (float d and s); ggml's block_q8_1 has fp16 ones: 36
            assert traits.type_size == 36 and gguf_py.GGML_QUANT_SIZES[gguf_py.GGMLQuantizationType.Q8_1] == (32, 40)
            continue
        assert (traits.block_size, traits.type_size) == gguf_py.GGML_QUANT_SIZES[gguf_py.GGMLQuantizationType(t)]


# ---------------------------------------------------------------------------------------------------
# Round trips
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("alignment", [32, 64])
def test_our_writer_read_by_gguf_py(tmp_path, alignment):
    path = tmp_path / "full.gguf"
    write_full_file(path, alignment)
    assert_matches_gguf_py(path)

    ref = read_with_gguf_py(path)
    assert ref.alignment == alignment
    assert ("general.alignment" in ref.fields) == (alignment != 32)
    for key, value, vtype in SCALARS:
        assert ref.fields[key].types == [vtype]
        assert ref.fields[key].contents() == value
    for vtype, values in NUMERIC_ARRAYS.items():
        field = ref.fields[f"a.{vtype.name.lower()}"]
        assert field.types == [VT.ARRAY, vtype] and field.contents() == values
    assert ref.fields["a.nested"].types == [VT.ARRAY, VT.ARRAY, VT.INT32]
    ref_tensors = {t.name: t for t in ref.tensors}
    for name, array in F32_ARRAYS.items():
        np.testing.assert_array_equal(ref_tensors[name].data, array)
        assert list(ref_tensors[name].shape) == list(reversed(array.shape))
    np.testing.assert_array_equal(ref_tensors["t.f16"].data, F16_ARRAY)
    assert list(ref_tensors["t.q4_0"].shape) == [32, 3, 1, 2]
    for t in ref.tensors:
        assert t.data_offset % alignment == 0


@pytest.mark.parametrize("alignment", [32, 64])
def test_our_round_trip(tmp_path, alignment):
    path = tmp_path / "full.gguf"
    write_full_file(path, alignment)
    with GGUFReader(path) as r:
        assert r.version == 3 and r.alignment == alignment
        assert r.file_size == path.stat().st_size
        for key, value, vtype in SCALARS:
            assert r.metadata_types[key] == vtype
            assert r.get(key) == value and type(r.get(key)) is type(value)
        assert r.get("missing", 7) == 7
        assert r.metadata["a.str"] == ["", "a", "ünï", "<0x0A>"]
        assert r.metadata_types["a.str"] == (VT.ARRAY, VT.STRING)
        for vtype, values in NUMERIC_ARRAYS.items():
            array = r.metadata[f"a.{vtype.name.lower()}"]
            assert isinstance(array, np.ndarray) and array.tolist() == values
        assert [a.tolist() for a in r.metadata["a.nested"]] == [[1, 2], [3, 4, 5]]
        assert r.metadata["a.nested.str"] == [["x"], ["y", "z"]]
        assert r.metadata_types["a.nested.str"] == (VT.ARRAY, VT.ARRAY, VT.STRING)
        for name, array in F32_ARRAYS.items():
            info = r.tensors[name]
            assert info.type == GGMLType.F32 and info.shape == tuple(reversed(array.shape))
            assert info.data.dtype == np.float32 and info.n_elements == array.size
            np.testing.assert_array_equal(info.data, array)
        assert r.tensors["t.f16"].data.dtype == np.float16
        np.testing.assert_array_equal(r.tensors["t.f16"].data, F16_ARRAY)
        assert r.tensors["t.q8_0"].data.shape == (3, 68)
        assert r.tensors["t.q4_0"].data.shape == (2, 1, 3, 18)
        assert r.tensors["t.bf16"].data.dtype == np.uint16 and r.tensors["t.bf16"].shape == (3, 2)

        # Writing back what we read, with the types we read, gives the same bytes.
        copy = tmp_path / "copy.gguf"
        with GGUFWriter(copy, alignment=r.alignment) as w:
            for key, value in r.metadata.items():
                if key != "general.alignment":
                    w.add(key, value, r.metadata_types[key])
            for info in r.tensors.values():
                w.add_tensor(info.name, info.data, info.type)
    assert copy.read_bytes() == path.read_bytes()


@pytest.mark.parametrize("alignment", [32, 64])
def test_gguf_py_writer_read_by_us(tmp_path, alignment):
    path = tmp_path / "ref.gguf"
    rng = np.random.default_rng(5)
    f32 = rng.standard_normal((3, 5)).astype(np.float32)
    f32_4d = rng.standard_normal((2, 3, 1, 4)).astype(np.float32)
    f16 = rng.standard_normal(9).astype(np.float16)
    q8 = gguf_py.quants.quantize(rng.standard_normal((3, 64)).astype(np.float32), gguf_py.GGMLQuantizationType.Q8_0)
    q4 = gguf_py.quants.quantize(rng.standard_normal((5, 96)).astype(np.float32), gguf_py.GGMLQuantizationType.Q4_0)

    w = gguf_py.GGUFWriter(path, arch="llama")
    if alignment != 32:
        w.add_custom_alignment(alignment)
    w.add_uint8("s.u8", 200)
    w.add_int8("s.i8", -3)
    w.add_uint16("s.u16", 60000)
    w.add_int16("s.i16", -30000)
    w.add_uint32("s.u32", 4000000000)
    w.add_int32("s.i32", -2000000000)
    w.add_float32("s.f32", 1.25)
    w.add_uint64("s.u64", 2**64 - 1)
    w.add_int64("s.i64", -(2**62))
    w.add_float64("s.f64", 2.0**-60)
    w.add_bool("s.bool", True)
    w.add_string("s.str", "GGUF ✓")
    w.add_array("a.str", ["<s>", "</s>", "▁the"])
    w.add_array("a.int", [1, -2, 3])
    w.add_array("a.float", [0.5, -0.25])
    w.add_array("a.bool", [True, False])
    for vtype, values in NUMERIC_ARRAYS.items():
        w.add_key_value(f"a.{vtype.name.lower()}", values, VT.ARRAY, sub_type=vtype)
    w.add_array("a.nested", [[1, 2], [3, 4, 5]])
    w.add_tensor("t.f32", f32)
    w.add_tensor("t.f32.4d", f32_4d)
    w.add_tensor("t.f16", f16)
    w.add_tensor("t.q8_0", q8, raw_dtype=gguf_py.GGMLQuantizationType.Q8_0)
    w.add_tensor("t.q4_0", q4, raw_dtype=gguf_py.GGMLQuantizationType.Q4_0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()

    assert_matches_gguf_py(path)
    with GGUFReader(path) as r:
        assert r.alignment == alignment
        assert r.metadata["s.str"] == "GGUF ✓" and r.metadata_types["s.u64"] == VT.UINT64
        assert r.metadata["s.u64"] == 2**64 - 1
        assert r.metadata_types["a.nested"] == (VT.ARRAY, VT.ARRAY, VT.INT32)
        np.testing.assert_array_equal(r.tensors["t.f32"].data, f32)
        np.testing.assert_array_equal(r.tensors["t.f32.4d"].data, f32_4d)
        np.testing.assert_array_equal(r.tensors["t.f16"].data, f16)
        np.testing.assert_array_equal(r.tensors["t.q8_0"].data, q8)
        assert r.tensors["t.q4_0"].shape == (96, 5)
        np.testing.assert_array_equal(r.tensors["t.q4_0"].data, q4)


@pytest.mark.parametrize("name", ["ggml-vocab-llama-spm.gguf", "ggml-vocab-gpt-2.gguf"])
def test_real_vocab_files(name):
    path = VOCAB_DIR / name
    if not path.exists():
        pytest.skip(f"{path} is absent: the shared test data (../shared/data beside the repository) is not here")
    assert_matches_gguf_py(path)
    with GGUFReader(path) as r:
        tokens = r.metadata["tokenizer.ggml.tokens"]
        assert isinstance(tokens, list) and all(isinstance(t, str) for t in tokens)
        assert len(tokens) == len(r.metadata["tokenizer.ggml.token_type"])
        assert r.tensors == {} and r.file_size == path.stat().st_size


def test_an_interrupt_the_moment_the_temporary_file_exists_leaves_nothing(tmp_path, monkeypatch):
    """GGUFWriter writes a temporary file and renames it into place; a Ctrl-C right after the file is
    created (before a single byte is written) removes it too (tests/test_interrupt.py sends real
    signals at growing delays, and one landed in that moment)."""
    real_open = os.open

    def open_then_interrupted(*args, **kwargs):
        real_open(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(pg.os, "open", open_then_interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_full_file(tmp_path / "out.gguf", 32)
    assert os.listdir(tmp_path) == []


def test_version_2_is_read(tmp_path):
    path = tmp_path / "v2.gguf"
    write_full_file(path, 32)
    data = bytearray(path.read_bytes())
    data[4:8] = struct.pack("<I", 2)
    path.write_bytes(bytes(data))
    with GGUFReader(path) as r:
        assert r.version == 2 and len(r.tensors) == 8


# ---------------------------------------------------------------------------------------------------
# Zero copy
# ---------------------------------------------------------------------------------------------------


def test_tensor_views_are_zero_copy(tmp_path):
    path = tmp_path / "full.gguf"
    write_full_file(path, 64)
    reader = GGUFReader(path)
    view = reader.tensors["t.f32.3d"].data
    assert view.shape == (2, 3, 5) and view.dtype == np.float32
    assert not view.flags.owndata and not view.flags.writeable
    assert isinstance(_owner(view), mmap.mmap)
    assert np.shares_memory(view, np.frombuffer(_owner(view), np.uint8))
    q8 = reader.tensors["t.q8_0"]
    assert isinstance(_owner(q8.data), mmap.mmap) and q8.data.shape == (3, 68)
    raw = path.read_bytes()
    assert q8.data.tobytes() == raw[q8.offset : q8.offset + q8.nbytes]
    # Metadata arrays are copies, and views taken before close() stay valid after it.
    assert reader.metadata["a.float32"].flags.owndata
    reader.close()
    assert reader.tensors == {}
    np.testing.assert_array_equal(view, F32_ARRAYS["t.f32.3d"])
    reader.close()  # twice is fine


def test_tensor_info_repr_is_short(tmp_path):
    path = tmp_path / "full.gguf"
    write_full_file(path, 32)
    with GGUFReader(path) as r:
        info = r.tensors["t.f32.2d"]
        assert isinstance(info, TensorInfo)
        assert "t.f32.2d" in repr(info) and "data" not in repr(info)


# ---------------------------------------------------------------------------------------------------
# Hostile files
# ---------------------------------------------------------------------------------------------------


def _str(text) -> bytes:
    data = text.encode() if isinstance(text, str) else text
    return struct.pack("<Q", len(data)) + data


def _kv(key, vtype: int, payload: bytes) -> bytes:
    return _str(key) + struct.pack("<I", vtype) + payload


def _u32(v):
    return struct.pack("<I", v)


def _u64(v):
    return struct.pack("<Q", v)


def _info(name, dims, ggml_type=GGMLType.F32, offset=0, n_dims=None) -> bytes:
    n_dims = len(dims) if n_dims is None else n_dims
    return _str(name) + _u32(n_dims) + b"".join(_u64(d) for d in dims) + struct.pack("<IQ", ggml_type, offset)


def _file(kvs=(), infos=(), data=b"", *, magic=b"GGUF", version=3, n_kv=None, n_tensors=None,
          alignment=32, pad_to=0) -> bytes:
    head = magic + struct.pack("<IQQ", version, len(infos) if n_tensors is None else n_tensors,
                               len(kvs) if n_kv is None else n_kv)
    head += b"".join(kvs) + b"".join(infos)
    body = head + bytes(-len(head) % alignment) + data
    return body + bytes(max(0, pad_to - len(body)))


F32_4x2 = _info("w", (4, 2))  # 32 bytes at offset 0
DATA_32 = bytes(32)

HOSTILE = {  # id: (file bytes, words the message must hold)
    "empty file": (b"", ["empty"]),
    "short header": (b"GGU", ["truncated", "magic"]),
    "bad magic": (_file(magic=b"GGML"), ["not a GGUF file"]),
    "version 1": (_file(version=1), ["version 1"]),
    "version 4": (_file(version=4), ["version 4"]),
    "big-endian": (_file(version=3 << 24), ["big-endian"]),
    "absurd key length": (_file([_u64(2**30)], pad_to=160), ["string of 1073741824 bytes", "key 1 of 1"]),
    "too many keys for the file": (_file([_u64(2**30)]), ["1 keys", "truncated or corrupt"]),
    "absurd string value": (_file([_kv("k", VT.STRING, _u64(2**40))], pad_to=160), ["string of", "'k'"]),
    "absurd array count": (_file([_kv("k", VT.ARRAY, _u32(VT.UINT32) + _u64(2**60))], pad_to=160),
                           ["array of 1152921504606846976", "'k'"]),
    "absurd string array count": (_file([_kv("k", VT.ARRAY, _u32(VT.STRING) + _u64(2**61))], pad_to=160),
                                  ["array of", "STRING"]),
    "absurd nested array count": (_file([_kv("k", VT.ARRAY, _u32(VT.ARRAY) + _u64(2**61))], pad_to=160),
                                  ["array of", "ARRAY"]),
    "absurd kv count": (_file(n_kv=2**64 - 1, pad_to=160), ["18446744073709551615 keys"]),
    "absurd tensor count": (_file(n_tensors=2**63, pad_to=160), ["9223372036854775808 tensors"]),
    "unknown value type": (_file([_kv("k", 13, bytes(8))]), ["unknown value type 13", "'k'"]),
    "unknown element type": (_file([_kv("k", VT.ARRAY, _u32(77) + _u64(1) + bytes(8))]), ["unknown value type 77"]),
    "bool value 2": (_file([_kv("flag", VT.BOOL, b"\x02")]), ["bool", "'flag'"]),
    "bool array value 5": (_file([_kv("flags", VT.ARRAY, _u32(VT.BOOL) + _u64(3) + b"\x01\x05\x00")]),
                           ["bool value 5", "'flags'"]),
    "nested too deep": (_file([_kv("deep", VT.ARRAY, (_u32(VT.ARRAY) + _u64(1)) * 20 + _u32(VT.INT32) + _u64(0))]),
                        ["nested", "'deep'"]),
    "nested of different types": (
        _file([_kv("mix", VT.ARRAY, _u32(VT.ARRAY) + _u64(2) + _u32(VT.INT32) + _u64(1) + _u32(7)
                   + _u32(VT.STRING) + _u64(1) + _str("x"))]),
        ["different types", "'mix'"]),
    "duplicate key": (_file([_kv("k", VT.UINT8, b"\x01"), _kv("k", VT.UINT8, b"\x02")]), ["duplicate key", "'k'"]),
    "empty key": (_file([_kv("", VT.UINT8, b"\x01")]), ["empty"]),
    "invalid utf-8 key": (_file([_kv(b"k\xff", VT.UINT8, b"\x01")]), ["UTF-8", "key 1 of 1"]),
    "invalid utf-8 value": (_file([_kv("name", VT.STRING, _str(b"\xc3\x28"))]), ["UTF-8", "'name'"]),
    "invalid utf-8 in string array": (
        _file([_kv("toks", VT.ARRAY, _u32(VT.STRING) + _u64(2) + _str("ok") + _str(b"\xed\xa0\x80"))]),
        ["UTF-8", "'toks'"]),
    "invalid utf-8 tensor name": (_file(infos=[_info(b"w\x80", (4, 2))], data=DATA_32), ["UTF-8", "tensor info 1"]),
    "alignment 0": (_file([_kv("general.alignment", VT.UINT32, _u32(0))]), ["power of two"]),
    "alignment 3": (_file([_kv("general.alignment", VT.UINT32, _u32(3))]), ["power of two", "3"]),
    "alignment as u64": (_file([_kv("general.alignment", VT.UINT64, _u64(32))]), ["UINT32"]),
    "duplicate tensor": (_file(infos=[F32_4x2, _info("w", (4, 2), offset=32)], data=DATA_32 * 2),
                         ["duplicate tensor", "'w'"]),
    "empty tensor name": (_file(infos=[_info("", (4, 2))], data=DATA_32), ["empty name"]),
    "unknown tensor type": (_file(infos=[_info("w", (32,), 99)], data=DATA_32), ["tensor 'w'", "unknown type id 99"]),
    "unsupported tensor type": (_file(infos=[_info("blk.0.attn_q.weight", (256,), GGMLType.IQ2_XXS)], data=DATA_32),
                                ["tensor 'blk.0.attn_q.weight' has type IQ2_XXS (16), which pyengine does not support"]),
    "zero dim": (_file(infos=[_info("w", (4, 0))], data=DATA_32), ["tensor 'w'", "dimension of 0"]),
    "n_dims 0": (_file(infos=[_info("w", ())], data=DATA_32), ["tensor 'w'", "0 dimensions"]),
    "n_dims 5": (_file(infos=[_info("w", (1, 1, 1, 1, 1))], data=DATA_32), ["tensor 'w'", "5 dimensions"]),
    "huge n_dims": (_file(infos=[_info("w", (4,), n_dims=2**32 - 1)], data=DATA_32), ["tensor 'w'"]),
    "dims product overflow": (_file(infos=[_info("w", (2**32, 2**32, 2**32))], data=DATA_32), ["tensor 'w'", "2**62"]),
    "dim over 2**62": (_file(infos=[_info("w", (2**63,))], data=DATA_32), ["tensor 'w'", "2**62"]),
    "dims[0] not whole blocks": (_file(infos=[_info("w", (33, 2), GGMLType.Q8_0)], data=DATA_32 * 3),
                                 ["tensor 'w'", "block size 32"]),
    "offset past end": (_file(infos=[_info("blk.3.attn_q.weight", (4, 2), offset=32)], data=DATA_32 * 2, pad_to=0)[:-1],
                        ["tensor 'blk.3.attn_q.weight': offset", "runs past the end of the file"]),
    "huge offset": (_file(infos=[_info("w", (4, 2), offset=2**64 - 32)], data=DATA_32), ["past the end"]),
    "misaligned offset": (_file(infos=[_info("w", (4,), offset=4)], data=DATA_32), ["tensor 'w'", "alignment 32"]),
    "overlapping tensors": (_file(infos=[F32_4x2, _info("v", (4,), offset=0)], data=DATA_32), ["overlap", "w", "v"]),
    "tensor infos truncated": (_file(infos=[F32_4x2], n_tensors=2, data=DATA_32), ["tensor"]),
    # a name's newline or terminal escape stays escaped, on the one line with the reason
    "newline in a tensor name": (_file(infos=[_info("w\nx\x1b[2J", (32,), 99)], data=DATA_32),
                                 ["tensor 'w\\nx\\x1b[2J'", "unknown type id 99"]),
    "alignment 2**31": (_file([_kv("general.alignment", VT.UINT32, _u32(2**31))]), ["alignments up to"]),
    "too many tensors": (_file(infos=[F32_4x2], n_tensors=2**17, data=DATA_32), ["131072 tensors", "at most"]),
    "arrays of many arrays": (_file([_kv("many", VT.ARRAY, _u32(VT.ARRAY) + _u64(70000)
                                         + (_u32(VT.INT32) + _u64(0)) * 70000)]),
                              ["'many'", "arrays inside arrays"]),
}


@pytest.mark.parametrize("case", list(HOSTILE), ids=list(HOSTILE))
def test_hostile_file_is_refused(tmp_path, case):
    data, words = HOSTILE[case]
    path = tmp_path / "bad.gguf"
    path.write_bytes(data)
    with pytest.raises(GGUFError) as caught:
        GGUFReader(path)
    message = str(caught.value)
    assert "\n" not in message and str(path) in message
    for word in words:
        assert word in message, (case, message)


def test_offset_past_end_message_has_the_facts(tmp_path):
    path = tmp_path / "bad.gguf"
    path.write_bytes(_file(infos=[_info("blk.3.attn_q.weight", (4, 2), offset=32)], data=bytes(40)))
    with pytest.raises(GGUFError, match=r"tensor 'blk\.3\.attn_q\.weight': offset \d+ \+ 32 bytes runs past "
                                        r"the end of the file \(\d+ bytes\)"):
        GGUFReader(path)


def test_the_hostile_builder_makes_valid_files(tmp_path):
    """The baseline the hostile cases change is itself accepted."""
    path = tmp_path / "ok.gguf"
    path.write_bytes(_file([_kv("general.alignment", VT.UINT32, _u32(64))], infos=[F32_4x2], data=DATA_32, alignment=64))
    with GGUFReader(path) as r:
        assert r.alignment == 64 and r.tensors["w"].data.shape == (2, 4)
    path.write_bytes(_file(infos=[F32_4x2, _info("v", (4,), offset=32)], data=DATA_32 * 2))
    with GGUFReader(path) as r:
        assert list(r.tensors) == ["w", "v"]


def _small_file(tmp_path) -> bytes:
    path = tmp_path / "small.gguf"
    with GGUFWriter(path) as w:
        w.add("general.name", "tiny")
        w.add_uint32("n", 3)
        w.add_bool("b", True)
        w.add_array("scores", [0.5, -1.0, 2.0])
        w.add_array("tokens", ["a", "bc", "déf"])
        w.add("nested", [[1], [2, 3]])
        w.add_tensor("f32", np.arange(6, dtype=np.float32).reshape(2, 3))
        w.add_tensor("q8", np.zeros((2, 34), np.uint8), GGMLType.Q8_0)
    return path.read_bytes()


def test_every_truncation_is_refused(tmp_path):
    data = _small_file(tmp_path)
    with GGUFReader(tmp_path / "small.gguf") as r:
        end = max(info.offset + info.nbytes for info in r.tensors.values())
    assert len(data) % 32 == 0 and end <= len(data)  # the last tensor is padded too, as ggml writes it
    path = tmp_path / "cut.gguf"
    path.write_bytes(data)
    for n in reversed(range(end, len(data))):  # only the padding cut: every tensor still whole
        os.truncate(path, n)
        with GGUFReader(path) as r:
            assert max(info.offset + info.nbytes for info in r.tensors.values()) == end
    for n in reversed(range(end)):
        os.truncate(path, n)
        with pytest.raises(GGUFError) as caught:
            GGUFReader(path)
        message = str(caught.value)
        assert any(w in message for w in ("truncated", "past the end", "empty")), (n, message)


def test_random_corruption_gives_only_gguf_errors(tmp_path):
    data = _small_file(tmp_path)
    with GGUFReader(tmp_path / "small.gguf") as r:
        header_end = r.data_offset
    rng = np.random.default_rng(7)
    path = tmp_path / "mutant.gguf"
    path.write_bytes(data)
    refused = 0
    with open(path, "r+b") as f:
        for _ in range(300):
            mutant = bytearray(data)
            for at in rng.integers(0, header_end, rng.integers(1, 4)):
                mutant[at] = rng.choice([0, 1, 0x7F, 0x80, 0xFF, int(rng.integers(0, 256))])
            os.pwrite(f.fileno(), bytes(mutant), 0)
            try:
                GGUFReader(path).close()
            except GGUFError:
                refused += 1
    assert refused > 100


def _strings_one_by_one(buf: bytes, count: int) -> tuple[list[str] | None, str | None, int]:
    """(values, error, position after) of string() called count times, as strings() must give them."""
    cur = pg._Cursor(buf)
    cur.context = "key 1 of 1"
    try:
        return [cur.string() for _ in range(count)], None, cur.pos
    except GGUFError as e:
        return None, str(e), cur.pos


@pytest.mark.parametrize("seed", range(40))
def test_an_array_of_strings_reads_as_its_strings_one_by_one(seed):
    # Cursor.strings, the fast path of string arrays (vocabularies), against string() in a loop: the same
    # values, and for a truncated length, a truncated string or bad UTF-8, the same error at the same offset.
    rng = np.random.default_rng(seed)
    texts = ["", "a", "▁the", "<0x0A>", "日本語", "x" * 300] + ["".join(map(chr, rng.integers(32, 0x3000, rng.integers(0, 9))))
                                                          for _ in range(20)]
    buf = bytearray(b"".join(struct.pack("<Q", len(t.encode())) + t.encode() for t in texts))
    if seed % 4 == 1:  # one byte of a text made invalid UTF-8
        buf[rng.integers(0, len(buf))] = 0xFF
    elif seed % 4 == 2:  # cut anywhere
        del buf[rng.integers(0, len(buf)):]
    elif seed % 4 == 3:  # one length made too long
        at = sum(8 + len(t.encode()) for t in texts[:rng.integers(0, len(texts))])
        buf[at:at + 8] = struct.pack("<Q", [len(buf), 2**63, 2**64 - 1][rng.integers(0, 3)])
    values, error, end = _strings_one_by_one(bytes(buf), len(texts))
    cur = pg._Cursor(bytes(buf))
    cur.context = "key 1 of 1"
    if error is None:
        assert cur.strings(len(texts)) == values == texts
        assert cur.pos == end == len(buf)
    else:
        with pytest.raises(GGUFError) as caught:
            cur.strings(len(texts))
        assert str(caught.value) == error


# ---------------------------------------------------------------------------------------------------
# Writer
# ---------------------------------------------------------------------------------------------------


def test_writer_infers_types(tmp_path):
    path = tmp_path / "infer.gguf"
    with GGUFWriter(path) as w:
        w.add("bool", True)
        w.add("int", -5)
        w.add("int64", 2**31)
        w.add("uint64", 2**63)
        w.add("float", 0.5)
        w.add("str", "x")
        w.add("np.f64", np.float64(0.25))
        w.add("np.u16", np.uint16(7))
        w.add("ints", [1, 2, 3])
        w.add("big ints", (1, 2**40))
        w.add("floats", [1, 2.5])
        w.add("strs", ["a"])
        w.add("bools", [True, False])
        w.add("nd.u16", np.arange(3, dtype=np.uint16))
        w.add("nd.f64", np.array([0.5]))
        w.add("nested", [[1, 2], [3]])
        w.add("empty", [], element_type=VT.STRING)
        w.add("empty nd", np.zeros(0, np.int16))
    with GGUFReader(path) as r:
        t = r.metadata_types
        assert (t["bool"], t["int"], t["int64"], t["uint64"], t["float"], t["str"]) == (
            VT.BOOL, VT.INT32, VT.INT64, VT.UINT64, VT.FLOAT32, VT.STRING)
        assert (t["np.f64"], t["np.u16"]) == (VT.FLOAT64, VT.UINT16)
        assert t["ints"] == (VT.ARRAY, VT.INT32) and t["big ints"] == (VT.ARRAY, VT.INT64)
        assert t["floats"] == (VT.ARRAY, VT.FLOAT32) and t["strs"] == (VT.ARRAY, VT.STRING)
        assert t["bools"] == (VT.ARRAY, VT.BOOL) and t["nd.u16"] == (VT.ARRAY, VT.UINT16)
        assert t["nd.f64"] == (VT.ARRAY, VT.FLOAT64) and t["nested"] == (VT.ARRAY, VT.ARRAY, VT.INT32)
        assert r.metadata["empty"] == [] and t["empty"] == (VT.ARRAY, VT.STRING)
        assert r.metadata["empty nd"].dtype == np.int16 and r.metadata["empty nd"].size == 0
        assert r.metadata["uint64"] == 2**63 and "general.alignment" not in r.metadata


@pytest.mark.parametrize("call, words", [
    (lambda w: w.add("k", 2**64), "fit no GGUF integer type"),
    (lambda w: w.add("k", []), "give element_type"),
    (lambda w: w.add("k", [1, "a"]), "give element_type"),
    (lambda w: w.add("k", {"a": 1}), "dict"),
    (lambda w: w.add("", 1), "non-empty"),
    (lambda w: w.add("general.alignment", 64), "alignment="),
    (lambda w: w.add_uint8("k", 300), "UINT8"),
    (lambda w: w.add_int32("k", 1.5), "INT32"),
    (lambda w: w.add_float32("k", 1e40), "FLOAT32"),
    (lambda w: w.add_string("k", 5), "str"),
    (lambda w: w.add_bool("k", 2), "BOOL"),
    (lambda w: w.add_array("k", [1, 2], VT.UINT8) or w.add("k", 1), "duplicate key"),
    (lambda w: w.add("k", 1, VT.UINT8, VT.UINT8), "element_type"),
    (lambda w: w.add("k", [1], (VT.UINT8, VT.ARRAY)), "only ARRAY"),
    (lambda w: w.add("k", 1, 99), "unknown value type"),
    (lambda w: w.add("k", [1, 2], VT.ARRAY, VT.ARRAY), r"expected an array of arrays, got \[INT32\]"),
    (lambda w: w.add_tensor("t", np.zeros(4)), "float64"),
    (lambda w: w.add_tensor("t", np.zeros(34, np.uint8)), "type="),
    (lambda w: w.add_tensor("t", np.zeros(30, np.uint8), GGMLType.Q8_0, shape=(32,)), "34 bytes"),
    (lambda w: w.add_tensor("t", np.zeros(33, np.uint8), GGMLType.Q8_0), "blocks of 34 bytes"),
    (lambda w: w.add_tensor("t", np.zeros(36, np.uint8), GGMLType.Q8_0, shape=(33,)), "block size"),
    (lambda w: w.add_tensor("t", np.zeros((1,) * 5, np.float32)), "5 dimensions"),
    (lambda w: w.add_tensor("t", np.zeros(32, np.float32), GGMLType.Q8_0), "uint8"),
    (lambda w: w.add_tensor("t", np.zeros(66, np.uint8), GGMLType.IQ2_XXS), "not supported"),
    (lambda w: w.add_tensor("t", np.zeros(4, np.float32)) or w.add_tensor("t", np.zeros(4, np.float32)),
     "duplicate tensor"),
    (lambda w: w.add_tensor("", np.zeros(4, np.float32)), "non-empty"),
    (lambda w: w.add_tensor("t", lambda: np.zeros(34, np.uint8), GGMLType.Q8_0), "its type and shape"),
    (lambda w: w.add_tensor("t", lambda: np.zeros(34, np.uint8), shape=(32,)), "its type and shape"),
    (lambda w: w.add_tensor("t", lambda: np.zeros(34, np.uint8), GGMLType.Q8_0, shape=(33,)), "block size"),
])
def test_writer_refuses_bad_input(tmp_path, call, words):
    w = GGUFWriter(tmp_path / "x.gguf")
    with pytest.raises(ValueError, match=words):
        call(w)


def test_copy_key_writes_the_bytes_add_writes(tmp_path):
    """GGUFWriter.copy_key takes a key's value type and value from a GGUFReader as the file has them
    (quantize copies a vocabulary so): the same file as adding the decoded value with its type, for
    every kind of value the full file holds."""
    write_full_file(tmp_path / "src.gguf", 32)
    with GGUFReader(tmp_path / "src.gguf") as r:
        keys = [k for k in r.metadata if k != "general.alignment"]
        with GGUFWriter(tmp_path / "copied.gguf") as w:
            for key in keys:
                w.copy_key(r, key)
        with GGUFWriter(tmp_path / "added.gguf") as w:
            for key in keys:
                t = r.metadata_types[key]
                w.add(key, r.metadata[key], t[0] if isinstance(t, tuple) else t, t[1] if isinstance(t, tuple) else None)
        w = GGUFWriter(tmp_path / "x.gguf")
        with pytest.raises(KeyError):
            w.copy_key(r, "no.such.key")
        w.copy_key(r, keys[0])
        with pytest.raises(ValueError, match="duplicate key"):
            w.copy_key(r, keys[0])
    assert len(keys) > 10
    assert (tmp_path / "copied.gguf").read_bytes() == (tmp_path / "added.gguf").read_bytes()


def test_tensors_made_when_written_give_the_same_file_one_at_a_time(tmp_path):
    """A tensor given as a function is made when write() comes to it, after the tensors before it are
    written and dropped: the same bytes as the arrays given at once, with one made tensor alive at a
    time (quantize_model holds one tensor's new bytes, not the whole file's)."""
    rng = np.random.default_rng(0)
    arrays = {f"t{i}": rng.integers(0, 256, (4, 34 * (i + 1)), dtype=np.uint8) for i in range(6)}
    arrays["f"] = rng.standard_normal((3, 5)).astype(np.float32)
    with GGUFWriter(tmp_path / "eager.gguf") as w:
        for name, a in arrays.items():
            w.add_tensor(name, a, GGMLType.F32 if a.dtype == np.float32 else GGMLType.Q8_0)
    made = []  # weak references to what each maker returned, in call order

    def maker(name):
        def make():
            assert all(ref() is None for ref in made), "an earlier made tensor is still alive"
            a = arrays[name].copy()
            made.append(weakref.ref(a))
            return a
        return make

    with GGUFWriter(tmp_path / "lazy.gguf") as w:
        for name, a in arrays.items():
            if a.dtype == np.float32:
                w.add_tensor(name, maker(name), GGMLType.F32, shape=a.shape[::-1])
            else:
                w.add_tensor(name, maker(name), GGMLType.Q8_0, shape=(a.shape[1] // 34 * 32, a.shape[0]))
        assert made == []  # nothing made before the file is written
    assert len(made) == len(arrays)
    assert (tmp_path / "lazy.gguf").read_bytes() == (tmp_path / "eager.gguf").read_bytes()


@pytest.mark.parametrize("make, words", [
    (lambda: np.zeros(30, np.uint8), "tensor 'bad': dims \\[32\\] of type Q8_0 take 34 bytes"),
    (lambda: np.zeros(32, np.float32), "tensor 'bad': type Q8_0 takes uint8"),
    (lambda: 1 / 0, "division by zero"),
])
def test_a_tensor_made_wrong_when_written_leaves_nothing(tmp_path, make, words):
    with pytest.raises((ValueError, ZeroDivisionError), match=words):
        with GGUFWriter(tmp_path / "out.gguf") as w:
            w.add_tensor("good", np.ones(32, np.float32))
            w.add_tensor("bad", make, GGMLType.Q8_0, shape=(32,))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("alignment", [0, 3, 48, -32, 2**32, 32.0])
def test_writer_refuses_bad_alignment(tmp_path, alignment):
    with pytest.raises(ValueError, match="power of two"):
        GGUFWriter(tmp_path / "x.gguf", alignment=alignment)


def test_writer_alignment_key_is_written_when_not_default(tmp_path):
    with GGUFWriter(tmp_path / "a.gguf", alignment=128) as w:
        w.add_tensor("x", np.ones(3, np.float32))
        w.add_tensor("y", np.ones(5, np.float32))
    with GGUFReader(tmp_path / "a.gguf") as r:
        assert r.metadata_types["general.alignment"] == VT.UINT32 and r.alignment == 128
        assert all(t.offset % 128 == 0 for t in r.tensors.values())


def test_writer_add_time_error_leaves_nothing(tmp_path):
    with pytest.raises(ValueError, match="tensor 'w'"):
        with GGUFWriter(tmp_path / "out.gguf") as w:
            w.add("general.name", "x")
            w.add_tensor("w", np.zeros(10, np.uint8), GGMLType.Q8_0, shape=(32,))
    assert list(tmp_path.iterdir()) == []


def test_writer_mid_write_failure_leaves_nothing(tmp_path, monkeypatch):
    out = tmp_path / "out.gguf"
    out.write_bytes(b"the previous file")

    def fail_halfway(f, data):
        f.write(memoryview(data).cast("B")[: data.nbytes // 2])
        raise OSError("disk full")

    monkeypatch.setattr(pg, "_write_tensor_data", fail_halfway)
    w = GGUFWriter(out)
    w.add_tensor("w", np.ones((4, 8), np.float32))
    with pytest.raises(OSError, match="disk full"):
        w.write()
    assert list(tmp_path.iterdir()) == [out] and out.read_bytes() == b"the previous file"
    with pytest.raises(ValueError, match="already written"):
        w.write()


def test_writer_failed_rename_leaves_no_temp(tmp_path, monkeypatch):
    def refuse(src, dst):
        raise PermissionError("no")

    monkeypatch.setattr(pg.os, "replace", refuse)
    with pytest.raises(PermissionError):
        with GGUFWriter(tmp_path / "out.gguf") as w:
            w.add_tensor("w", np.ones(4, np.float32))
    assert list(tmp_path.iterdir()) == []


def test_writer_success_leaves_only_the_file(tmp_path):
    out = tmp_path / "out.gguf"
    w = GGUFWriter(out)
    w.add_string("general.name", "x")
    w.write()
    assert list(tmp_path.iterdir()) == [out]
    with GGUFReader(out) as r:
        assert r.metadata == {"general.name": "x"} and r.tensors == {}
