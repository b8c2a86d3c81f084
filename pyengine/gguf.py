"""Reading and writing GGUF files: validated metadata, and zero-copy views of the tensors.

File layout (GGUF version 3; every number little-endian):

    header        magic b"GGUF" | version u32 | tensor_count u64 | kv_count u64
    metadata      kv_count x (key: string | value_type u32 | value)
    tensor infos  tensor_count x (name: string | n_dims u32 | dims u64 x n_dims | type u32 | offset u64)
    padding       zeros up to the next multiple of the alignment (`general.alignment`, default 32)
    data          the tensors' bytes; each offset (counted from the start of the data) is a
                  multiple of the alignment

    string        length u64 | UTF-8 bytes, no terminator
    value         u8 i8 u16 i16 u32 i32 f32 bool(1 byte) u64 i64 f64, a string, or an
    array         element_type u32 | count u64 | count x element (elements carry no type id)

dims[0] is the contiguous dimension: a weight of `out x in` is stored with dims [in, out] and its numpy
view has shape (out, in). A block type packs dims[0] into blocks of `block_size` values, `type_size`
bytes each, so a row of dims[0] values takes dims[0] / block_size * type_size bytes.

Everything read from a file is untrusted: each length and count is checked against the bytes that are
left before anything is read or allocated, and every refusal is a one-line `GGUFError` that names the
key or tensor. Version 2 has the same layout and is read too; the writer writes version 3.
"""

from __future__ import annotations

import math
import mmap
import os
import secrets
import struct
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path
from typing import Any, Callable, Mapping, NamedTuple, Sequence, Tuple, Union

import numpy as np

GGUF_MAGIC = b"GGUF"
GGUF_VERSION = 3  # the version the writer writes
READABLE_VERSIONS = (2, 3)  # version 1 had 32-bit counts; we do not read it
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4
MAX_ARRAY_DEPTH = 8  # arrays of arrays of ...: a bound on the reader's recursion
# Bounds on what a small file can make the reader build (each costs ~100-2000 bytes of Python objects
# against a few bytes of file): far above any model's (llama.cpp files have ~20-60 keys, a few hundred
# to a few thousand tensors, and no arrays of arrays, which llama.cpp's own reader refuses).
MAX_KEYS = 65536
MAX_TENSORS = 65536
MAX_INNER_ARRAYS = 65536  # arrays inside arrays, in the whole file
MAX_ALIGNMENT = 2**20  # llama.cpp writes 32; a larger one only pads (a 57-byte file asked for 2 GiB)
MAX_ELEMENTS = 2**62  # a bound on any dimension and on a tensor's element count


class GGUFError(ValueError):
    """A file that is not valid GGUF, or that holds something pyengine cannot use. The message is one
    line: control characters a file's names may carry (newlines, terminal escapes) come out escaped."""

    def __init__(self, message: str = "", *args) -> None:
        super().__init__(_one_line(str(message)), *args)


def _one_line(text: str) -> str:
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() or c == " " else repr(c)[1:-1] for c in text)


# ---------------------------------------------------------------------------------------------------
# Value types and tensor types
# ---------------------------------------------------------------------------------------------------


class GGUFValueType(IntEnum):
    UINT8 = 0
    INT8 = 1
    UINT16 = 2
    INT16 = 3
    UINT32 = 4
    INT32 = 5
    FLOAT32 = 6
    BOOL = 7
    STRING = 8
    ARRAY = 9
    UINT64 = 10
    INT64 = 11
    FLOAT64 = 12


# The type of a value as a tuple: (UINT32,) for a scalar, (ARRAY, STRING) for an array of strings,
# (ARRAY, ARRAY, INT32) for an array of arrays of int32. GGUFReader.metadata_types shows scalars as a
# bare GGUFValueType and arrays as this tuple.
ValueTypeDesc = Tuple[GGUFValueType, ...]
ValueTypeLike = Union[GGUFValueType, int, Sequence[Union[GGUFValueType, int]]]

_SCALAR_FORMATS = {  # struct format characters
    GGUFValueType.UINT8: "B",
    GGUFValueType.INT8: "b",
    GGUFValueType.UINT16: "H",
    GGUFValueType.INT16: "h",
    GGUFValueType.UINT32: "I",
    GGUFValueType.INT32: "i",
    GGUFValueType.FLOAT32: "f",
    GGUFValueType.BOOL: "B",  # one byte that must be 0 or 1
    GGUFValueType.UINT64: "Q",
    GGUFValueType.INT64: "q",
    GGUFValueType.FLOAT64: "d",
}
_SCALAR_STRUCTS = {t: struct.Struct("<" + f) for t, f in _SCALAR_FORMATS.items()}
_SCALAR_DTYPES = {t: np.dtype("<" + f) for t, f in _SCALAR_FORMATS.items()}
# numpy (kind, itemsize) -> value type, for arrays and numpy scalars handed to the writer
_DTYPE_VALUE_TYPES = {
    ("b", 1): GGUFValueType.BOOL,
    ("u", 1): GGUFValueType.UINT8,
    ("i", 1): GGUFValueType.INT8,
    ("u", 2): GGUFValueType.UINT16,
    ("i", 2): GGUFValueType.INT16,
    ("u", 4): GGUFValueType.UINT32,
    ("i", 4): GGUFValueType.INT32,
    ("f", 4): GGUFValueType.FLOAT32,
    ("u", 8): GGUFValueType.UINT64,
    ("i", 8): GGUFValueType.INT64,
    ("f", 8): GGUFValueType.FLOAT64,
}
# The fewest bytes an array element of each type can take: bounds an array's count before reading.
_MIN_ELEMENT_BYTES = {
    **{t: s.size for t, s in _SCALAR_STRUCTS.items()},
    GGUFValueType.STRING: 8,  # the length
    GGUFValueType.ARRAY: 12,  # element type + count
}


class GGMLType(IntEnum):
    """ggml's tensor type ids, and pyengine's own from 100 on (PYENGINE_TYPES). Only those in
    TYPE_TRAITS can be read or written by pyengine."""

    F32 = 0
    F16 = 1
    Q4_0 = 2
    Q4_1 = 3
    Q5_0 = 6
    Q5_1 = 7
    Q8_0 = 8
    Q8_1 = 9
    Q2_K = 10
    Q3_K = 11
    Q4_K = 12
    Q5_K = 13
    Q6_K = 14
    Q8_K = 15
    IQ2_XXS = 16
    IQ2_XS = 17
    IQ3_XXS = 18
    IQ1_S = 19
    IQ4_NL = 20
    IQ3_S = 21
    IQ2_S = 22
    IQ4_XS = 23
    I8 = 24
    I16 = 25
    I32 = 26
    I64 = 27
    F64 = 28
    IQ1_M = 29
    BF16 = 30
    TQ1_0 = 34
    TQ2_0 = 35
    MXFP4 = 39
    # pyengine's own formats, outside ggml's range (llama.cpp cannot read them): 4-bit NormalFloat
    # (QLoRA's quantile code book of the normal distribution, 64-weight blocks), and the same with the
    # block scales double-quantized to 8 bits per 256-weight super-block. Layouts: cpp/quant/blocks.h.
    NF4 = 100
    NF4_DQ = 101


PYENGINE_TYPES = frozenset({GGMLType.NF4, GGMLType.NF4_DQ})


class TypeTraits(NamedTuple):
    name: str  # llama.cpp's name: "q4_0", "f16"
    block_size: int  # values per block
    type_size: int  # bytes per block


def _native_type_table() -> dict[GGMLType, TypeTraits]:
    """The native core's type table (cpp/quant/blocks.h, reference.cpp): the one source of each
    type's name and block geometry. Adding a type there adds it here."""
    from . import _core

    table = {}
    for ggml_type in GGMLType:
        info = _core.type_info(int(ggml_type))
        if info is not None:
            name, block_size, type_size, _ = info
            table[ggml_type] = TypeTraits(name, block_size, type_size)
    return table


TYPE_TRAITS: dict[GGMLType, TypeTraits] = _native_type_table()

# Types whose numpy view has one element per value; block types are viewed as bytes.
# BF16 has no numpy type: its view holds the raw 16-bit patterns.
_ELEMENT_DTYPES = {
    GGMLType.F32: np.dtype("<f4"),
    GGMLType.F16: np.dtype("<f2"),
    GGMLType.BF16: np.dtype("<u2"),
}


def type_by_name(name: str) -> GGMLType:
    """The supported tensor type called `name` ("q4_0", "F16", ...); ValueError for any other."""
    wanted = str(name).strip().lower()
    for ggml_type, traits in TYPE_TRAITS.items():
        if traits.name == wanted:
            return ggml_type
    supported = ", ".join(traits.name for traits in TYPE_TRAITS.values())
    if wanted.upper() in GGMLType.__members__:
        raise ValueError(f"tensor type {name!r} is not supported by pyengine (supported: {supported})")
    raise ValueError(f"unknown tensor type {name!r} (known: {supported})")


def type_name(type_id: int) -> str:
    """'Q5_0 (6)' for a ggml id, 'NF4 (100, pyengine)' for one of ours, '99' for an unknown one: how
    messages (and `info`) name a type."""
    try:
        ggml_type = GGMLType(type_id)
    except ValueError:
        return str(int(type_id))
    owner = ", pyengine" if ggml_type in PYENGINE_TYPES else ""
    return f"{ggml_type.name} ({int(type_id)}{owner})"


def tensor_nbytes(shape: Sequence[int], type: GGMLType) -> int:
    """Bytes of a tensor with GGUF dims `shape` (dims[0] contiguous) of a supported type.

    ValueError for a shape no tensor can have: no dims or more than MAX_DIMS, a dim below 1,
    more than MAX_ELEMENTS values, dims[0] not a multiple of the block size."""
    traits = TYPE_TRAITS[GGMLType(type)]
    if not 1 <= len(shape) <= MAX_DIMS:
        raise ValueError(f"shape {list(shape)} has {len(shape)} dimensions; tensors have 1 to {MAX_DIMS}")
    n_elements = 1
    for dim in shape:
        if dim < 1:
            raise ValueError(
                f"shape {list(shape)} has a dimension of {dim}; every dimension must be at least 1"
            )
        n_elements *= dim
        if n_elements > MAX_ELEMENTS:
            raise ValueError(f"shape {list(shape)} has more than 2**62 elements")
    if shape[0] % traits.block_size != 0:
        raise ValueError(
            f"shape {list(shape)}: dims[0] = {shape[0]} is not a multiple of the "
            f"{traits.name} block size {traits.block_size}"
        )
    return n_elements // traits.block_size * traits.type_size


def _write_zeros(f, n: int) -> None:
    """n bytes of padding, a MiB at a time (an alignment may be up to 2**31: no such buffer at once)."""
    while n > 0:
        f.write(bytes(min(n, 1 << 20)))
        n -= 1 << 20


def _align_up(offset: int, alignment: int) -> int:
    return (offset + alignment - 1) // alignment * alignment


def _is_power_of_two(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def _public_type(desc: ValueTypeDesc) -> Any:
    return desc[0] if len(desc) == 1 else desc


def _describe(desc: ValueTypeDesc) -> str:
    return "[" * (len(desc) - 1) + desc[-1].name + "]" * (len(desc) - 1)


# ---------------------------------------------------------------------------------------------------
# Reader
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class TensorInfo:
    name: str
    shape: tuple[int, ...]  # GGUF dims: shape[0] is contiguous (the numpy shape reversed)
    type: GGMLType
    offset: int  # absolute offset of the first byte in the file
    nbytes: int
    # Zero-copy, read-only view of the mapped file. F32/F16: float32/float16 of numpy shape
    # reversed(shape); BF16: uint16 bit patterns; block types: uint8 (rows..., bytes per row).
    data: np.ndarray = field(repr=False)

    @property
    def n_elements(self) -> int:
        return math.prod(self.shape)


class _Cursor:
    """Reads little-endian values from the mapped file, refusing to read past its end.

    `context` says what is being read ("key 17 of 24"), for the messages."""

    def __init__(self, buf: mmap.mmap) -> None:
        self.buf = buf
        self.size = len(buf)
        self.pos = 0
        self.context = "the header"
        self.inner_arrays = 0  # arrays read inside arrays so far (MAX_INNER_ARRAYS)

    def remaining(self) -> int:
        return self.size - self.pos

    def truncated(self, at: int, needed: str) -> GGUFError:
        return GGUFError(
            f"truncated while reading {self.context} at offset {at}: {needed}, "
            f"but only {self.size - at} bytes are left"
        )

    def need(self, n_bytes: int) -> None:
        if n_bytes > self.remaining():
            raise self.truncated(self.pos, f"needs {n_bytes} bytes")

    def scalar(self, vtype: GGUFValueType) -> Any:
        fmt = _SCALAR_STRUCTS[vtype]
        self.need(fmt.size)
        (value,) = fmt.unpack_from(self.buf, self.pos)
        self.pos += fmt.size
        return value

    def u32(self) -> int:
        return self.scalar(GGUFValueType.UINT32)

    def u64(self) -> int:
        return self.scalar(GGUFValueType.UINT64)

    def raw(self, n_bytes: int) -> bytes:
        self.need(n_bytes)
        data = self.buf[self.pos : self.pos + n_bytes]
        self.pos += n_bytes
        return data

    def string(self) -> str:
        start = self.pos
        length = self.u64()
        if length > self.remaining():
            raise self.truncated(self.pos, f"a string of {length} bytes")
        data = self.raw(length)
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise GGUFError(f"invalid UTF-8 in {self.context} at offset {start + 8 + e.start}") from None

    def strings(self, count: int) -> list[str]:
        """`count` strings one after another (an array's elements): string()'s values in one tight
        loop (gemma-3's 262,144 tokens in 0.15 s; 0.48 s a string() call each). At the first string
        that is truncated or not UTF-8, string() reads it again and raises its error."""
        buf, size, pos = self.buf, self.size, self.pos
        unpack_length = _SCALAR_STRUCTS[GGUFValueType.UINT64].unpack_from
        values: list[str] = []
        append = values.append
        for _ in range(count):
            end = pos + 8
            if end > size:
                break
            end += unpack_length(buf, pos)[0]
            if end > size:
                break
            try:
                append(str(buf[pos + 8 : end], "utf-8"))
            except UnicodeDecodeError:
                break
            pos = end
        self.pos = pos
        if len(values) < count:
            self.string()  # raises
            raise AssertionError("string() accepted what strings() refused")
        return values

    def value_type(self) -> GGUFValueType:
        start = self.pos
        type_id = self.u32()
        try:
            return GGUFValueType(type_id)
        except ValueError:
            raise GGUFError(f"unknown value type {type_id} in {self.context} at offset {start}") from None


def _read_value(cur: _Cursor, vtype: GGUFValueType, depth: int = 0) -> tuple[Any, ValueTypeDesc]:
    """One value of type `vtype` and its full type: str, int, float, bool, list or numpy array."""
    if vtype == GGUFValueType.ARRAY:
        return _read_array(cur, depth + 1)
    if vtype == GGUFValueType.STRING:
        return cur.string(), (vtype,)
    start = cur.pos
    value = cur.scalar(vtype)
    if vtype == GGUFValueType.BOOL:
        if value > 1:
            raise GGUFError(f"bool value {value} in {cur.context} at offset {start} is neither 0 nor 1")
        value = bool(value)
    return value, (vtype,)


def _read_array(cur: _Cursor, depth: int) -> tuple[Any, ValueTypeDesc]:
    """Strings -> list[str]; numbers and bools -> a numpy array (a copy, native byte order);
    arrays -> a list of those, which must all have the same element type."""
    if depth > MAX_ARRAY_DEPTH:
        raise GGUFError(f"{cur.context} has arrays nested more than {MAX_ARRAY_DEPTH} deep")
    element_type = cur.value_type()
    count = cur.u64()
    min_bytes = count * _MIN_ELEMENT_BYTES[element_type]
    if min_bytes > cur.remaining():
        raise cur.truncated(
            cur.pos, f"an array of {count} {element_type.name} needs at least {min_bytes} bytes"
        )

    if element_type == GGUFValueType.STRING:
        return cur.strings(count), (GGUFValueType.ARRAY, element_type)

    if element_type == GGUFValueType.ARRAY:
        cur.inner_arrays += count
        if cur.inner_arrays > MAX_INNER_ARRAYS:
            raise GGUFError(f"{cur.context} makes the file's arrays inside arrays more than pyengine reads "
                            f"({MAX_INNER_ARRAYS}; llama.cpp reads none)")
        values, inner = [], None
        for _ in range(count):
            value, desc = _read_array(cur, depth + 1)
            if inner is not None and desc != inner:
                raise GGUFError(
                    f"{cur.context} is an array of arrays of different types "
                    f"({_describe(inner)} and {_describe(desc)}), which pyengine does not support"
                )
            inner = desc
            values.append(value)
        return values, (GGUFValueType.ARRAY,) + (inner or (GGUFValueType.ARRAY,))

    dtype = _SCALAR_DTYPES[element_type]
    at = cur.pos
    cur.pos += count * dtype.itemsize  # checked above
    raw = np.frombuffer(cur.buf, dtype=dtype, count=count, offset=at) if count else np.empty(0, dtype)
    if element_type == GGUFValueType.BOOL:
        if count and raw.max() > 1:
            bad = int(np.argmax(raw > 1))
            raise GGUFError(
                f"bool value {raw[bad]} in {cur.context} at offset {at + bad} is neither 0 nor 1"
            )
        return raw.astype(np.bool_), (GGUFValueType.ARRAY, element_type)
    # A copy: metadata is small, and must not pin the mapping after close().
    return raw.astype(dtype.newbyteorder("=")), (GGUFValueType.ARRAY, element_type)


# The fewest bytes a key-value pair (key of 1 byte, one-byte value) and a tensor info (name of
# 1 byte, one dim) can take: bounds the header's counts before anything is read.
_MIN_KV_BYTES = 8 + 1 + 4 + 1
_MIN_TENSOR_INFO_BYTES = 8 + 1 + 4 + 8 + 4 + 8


def _read_header(cur: _Cursor) -> tuple[int, int, int]:
    """(version, tensor_count, kv_count)"""
    cur.context = "the magic"
    magic = cur.raw(4)
    if magic != GGUF_MAGIC:
        raise GGUFError(f"not a GGUF file: it starts with {magic!r}, not {GGUF_MAGIC!r}")
    cur.context = "the version"
    version = cur.u32()
    if version not in READABLE_VERSIONS:
        swapped = int.from_bytes(version.to_bytes(4, "little"), "big")
        hint = " (a big-endian file?)" if swapped in READABLE_VERSIONS else ""
        raise GGUFError(f"unsupported GGUF version {version}{hint}: pyengine reads versions 2 and 3")
    cur.context = "the tensor count"
    tensor_count = cur.u64()
    cur.context = "the key-value count"
    kv_count = cur.u64()
    if kv_count > MAX_KEYS or tensor_count > MAX_TENSORS:
        raise GGUFError(f"the header declares {kv_count} keys and {tensor_count} tensors; pyengine reads at most "
                        f"{MAX_KEYS} keys and {MAX_TENSORS} tensors (models have tens of keys and hundreds of tensors)")
    min_bytes = kv_count * _MIN_KV_BYTES + tensor_count * _MIN_TENSOR_INFO_BYTES
    if min_bytes > cur.remaining():
        raise GGUFError(
            f"the header declares {kv_count} keys and {tensor_count} tensors, which need at least "
            f"{min_bytes} bytes, but only {cur.remaining()} follow (truncated or corrupt)"
        )
    return version, tensor_count, kv_count


def _read_metadata(cur: _Cursor, kv_count: int, spans: dict[str, tuple[int, int]]
                   ) -> tuple[dict[str, Any], dict[str, ValueTypeDesc]]:
    """The keys' values and types; spans gets where each key's value type and value lie in the file."""
    metadata: dict[str, Any] = {}
    types: dict[str, ValueTypeDesc] = {}
    for i in range(kv_count):
        where = f"key {i + 1} of {kv_count}"
        cur.context = where
        start = cur.pos
        key = cur.string()
        if not key:
            raise GGUFError(f"{where} at offset {start} is empty")
        if key in metadata:
            raise GGUFError(f"duplicate key {key!r} ({where}, at offset {start})")
        cur.context = f"the value of key {key!r} ({where})"
        value_start = cur.pos
        metadata[key], types[key] = _read_value(cur, cur.value_type())
        spans[key] = (value_start, cur.pos)
    return metadata, types


def _read_alignment(metadata: dict[str, Any], types: dict[str, ValueTypeDesc]) -> int:
    key = "general.alignment"
    if key not in metadata:
        return DEFAULT_ALIGNMENT
    if types[key] != (GGUFValueType.UINT32,):
        raise GGUFError(f"key {key!r} has type {_describe(types[key])}; it must be UINT32")
    alignment = metadata[key]
    if not _is_power_of_two(alignment):
        raise GGUFError(f"key {key!r} is {alignment}; it must be a non-zero power of two")
    if alignment > MAX_ALIGNMENT:
        raise GGUFError(f"key {key!r} is {alignment}; pyengine reads alignments up to {MAX_ALIGNMENT} "
                        "(llama.cpp writes 32)")
    return alignment


class _TensorEntry(NamedTuple):
    name: str
    dims: tuple[int, ...]
    type: GGMLType
    relative_offset: int
    nbytes: int


def _read_tensor_info(cur: _Cursor, where: str, seen: dict[str, _TensorEntry]) -> _TensorEntry:
    cur.context = where
    start = cur.pos
    name = cur.string()
    if not name:
        raise GGUFError(f"{where} at offset {start} has an empty name")
    if name in seen:
        raise GGUFError(f"duplicate tensor name {name!r} ({where}, at offset {start})")
    cur.context = f"{where} ({name!r})"
    n_dims = cur.u32()
    if not 1 <= n_dims <= MAX_DIMS:
        raise GGUFError(f"tensor {name!r} has {n_dims} dimensions; GGUF tensors have 1 to {MAX_DIMS}")
    dims = tuple(cur.u64() for _ in range(n_dims))
    ggml_type = _read_tensor_type(cur, name)
    relative_offset = cur.u64()
    try:
        nbytes = tensor_nbytes(dims, ggml_type)
    except ValueError as e:
        raise GGUFError(f"tensor {name!r}: {e}") from None
    return _TensorEntry(name, dims, ggml_type, relative_offset, nbytes)


def _read_tensor_type(cur: _Cursor, name: str) -> GGMLType:
    type_id = cur.u32()
    try:
        ggml_type = GGMLType(type_id)
    except ValueError:
        raise GGUFError(f"tensor {name!r} has unknown type id {type_id}") from None
    if ggml_type not in TYPE_TRAITS:
        raise GGUFError(f"tensor {name!r} has type {type_name(type_id)}, which pyengine does not support")
    return ggml_type


def _read_tensor_infos(cur: _Cursor, tensor_count: int) -> list[_TensorEntry]:
    if tensor_count * _MIN_TENSOR_INFO_BYTES > cur.remaining():
        raise GGUFError(
            f"the header declares {tensor_count} tensors, which need at least "
            f"{tensor_count * _MIN_TENSOR_INFO_BYTES} bytes of tensor infos at offset {cur.pos}, "
            f"but only {cur.remaining()} are left (truncated or corrupt)"
        )
    entries: dict[str, _TensorEntry] = {}
    for i in range(tensor_count):
        entry = _read_tensor_info(cur, f"tensor info {i + 1} of {tensor_count}", entries)
        entries[entry.name] = entry
    return list(entries.values())


def _check_placement(entries: list[_TensorEntry], data_offset: int, alignment: int, file_size: int) -> None:
    """Each tensor aligned, inside the file, and overlapping no other."""
    for e in entries:
        if e.relative_offset % alignment != 0:
            raise GGUFError(
                f"tensor {e.name!r}: offset {e.relative_offset} is not a multiple of the alignment {alignment}"
            )
        start = data_offset + e.relative_offset
        if start + e.nbytes > file_size:
            raise GGUFError(
                f"tensor {e.name!r}: offset {start} + {e.nbytes} bytes runs past the end of the file "
                f"({file_size} bytes)"
            )
    by_offset = sorted(entries, key=lambda e: e.relative_offset)
    for before, after in zip(by_offset, by_offset[1:]):
        end = before.relative_offset + before.nbytes
        if after.relative_offset < end:
            raise GGUFError(
                f"tensors {before.name!r} and {after.name!r} overlap: {before.name!r} covers data bytes "
                f"[{before.relative_offset}, {end}) and {after.name!r} starts at {after.relative_offset}"
            )


def _tensor_view(buf: mmap.mmap, offset: int, dims: tuple[int, ...], ggml_type: GGMLType) -> np.ndarray:
    numpy_shape = tuple(reversed(dims))
    dtype = _ELEMENT_DTYPES.get(ggml_type)
    if dtype is None:  # a block type: rows of bytes
        traits = TYPE_TRAITS[ggml_type]
        numpy_shape = numpy_shape[:-1] + (dims[0] // traits.block_size * traits.type_size,)
        dtype = np.dtype(np.uint8)
    count = math.prod(numpy_shape)
    return np.frombuffer(buf, dtype=dtype, count=count, offset=offset).reshape(numpy_shape)


def metadata_int(metadata: Mapping[str, Any], key: str, default: int | None, path: str | os.PathLike,
                 first: bool = False, maximum: int = 2**31 - 1) -> int | None:
    """An integer key's value from 0 to maximum, else default where the key is absent; first: an
    array's first element (a per-layer key; its default where the array is empty). GGUFError, naming
    the file at path and the key, for anything else (a float, a string, an array of arrays)."""
    value = metadata.get(key)
    if first and isinstance(value, (list, tuple, np.ndarray)):
        value = value[0] if len(value) else None
    if value is None:
        return default
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise GGUFError(f"{path}: key {key!r} must be an integer, got {type(value).__name__}")
    if not 0 <= int(value) <= maximum:
        raise GGUFError(f"{path}: key {key!r} = {value} is out of range (0 to {maximum})")
    return int(value)


class GGUFReader:
    """A GGUF file, memory-mapped read-only and validated when opened.

    Attributes: path, version, file_size, alignment, data_offset (where the tensor data starts),
    metadata (key -> str, int, float, bool, list[str], numpy array, or a list of arrays),
    metadata_types (key -> GGUFValueType for a scalar or string; a tuple such as
    (ARRAY, FLOAT32) for an array), tensors (name -> TensorInfo, in file order).

    close() (or leaving a `with` block) releases the reader's hold on the mapping and empties
    `tensors`; tensor views taken earlier stay valid, keeping the mapping alive until they go."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._mmap: mmap.mmap | None = None
        self.tensors: dict[str, TensorInfo] = {}
        with open(self.path, "rb") as f:
            if os.fstat(f.fileno()).st_size == 0:
                raise GGUFError(f"{self.path}: the file is empty, not GGUF")
            self._mmap = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        self.file_size = len(self._mmap)
        try:
            self._parse(self._mmap)
        except GGUFError as e:
            self.close()
            raise GGUFError(f"{self.path}: {e}") from None
        except BaseException:
            self.close()
            raise

    def _parse(self, buf: mmap.mmap) -> None:
        cur = _Cursor(buf)
        self.version, tensor_count, kv_count = _read_header(cur)
        self._metadata_spans: dict[str, tuple[int, int]] = {}
        metadata, types = _read_metadata(cur, kv_count, self._metadata_spans)
        self.metadata = metadata
        self.metadata_types = {key: _public_type(desc) for key, desc in types.items()}
        self.alignment = _read_alignment(metadata, types)
        entries = _read_tensor_infos(cur, tensor_count)
        # A file without tensors (vocab only) may end before this offset.
        self.data_offset = _align_up(cur.pos, self.alignment)
        _check_placement(entries, self.data_offset, self.alignment, self.file_size)
        for e in entries:
            offset = self.data_offset + e.relative_offset
            self.tensors[e.name] = TensorInfo(
                e.name, e.dims, e.type, offset, e.nbytes, _tensor_view(buf, offset, e.dims, e.type)
            )

    def get(self, key: str, default: Any = None) -> Any:
        return self.metadata.get(key, default)

    def encoded_value(self, key: str) -> bytes:
        """Key's value type and value as the file stores them (GGUF versions 2 and 3 encode values
        alike), for GGUFWriter.copy_key; KeyError for a key the file lacks."""
        start, end = self._metadata_spans[key]
        if self._mmap is None:
            raise ValueError(f"{self.path} is closed")
        return self._mmap[start:end]

    def get_int(self, key: str, default: int | None, first: bool = False) -> int | None:
        """metadata_int of this file's metadata."""
        return metadata_int(self.metadata, key, default, self.path, first)

    def close(self) -> None:
        self.tensors = {}
        buf, self._mmap = self._mmap, None
        if buf is not None:
            try:
                buf.close()
            except BufferError:
                pass  # views handed out still use the mapping; it is unmapped when the last one goes

    def __enter__(self) -> GGUFReader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"GGUFReader({str(self.path)!r}: version {getattr(self, 'version', '?')}, "
            f"{len(getattr(self, 'metadata', {}))} keys, {len(self.tensors)} tensors)"
        )


# ---------------------------------------------------------------------------------------------------
# Writer
# ---------------------------------------------------------------------------------------------------

_INT_RANGES = (  # the first that holds every value is inferred
    (GGUFValueType.INT32, -(2**31), 2**31 - 1),
    (GGUFValueType.INT64, -(2**63), 2**63 - 1),
    (GGUFValueType.UINT64, 0, 2**64 - 1),
)


def _is_sequence(value: Any) -> bool:
    return isinstance(value, (list, tuple, np.ndarray))


def _dtype_value_type(dtype: np.dtype) -> GGUFValueType:
    vtype = _DTYPE_VALUE_TYPES.get((dtype.kind, dtype.itemsize))
    if vtype is None:
        raise ValueError(f"numpy dtype {dtype} has no GGUF value type")
    return vtype


def _int_type(low: int, high: int) -> GGUFValueType:
    for vtype, type_low, type_high in _INT_RANGES:
        if type_low <= low and high <= type_high:
            return vtype
    raise ValueError(f"integers in [{low}, {high}] fit no GGUF integer type")


def _infer_scalar_type(value: Any) -> GGUFValueType:
    if isinstance(value, (bool, np.bool_)):
        return GGUFValueType.BOOL
    if isinstance(value, str):
        return GGUFValueType.STRING
    if isinstance(value, np.generic):
        return _dtype_value_type(value.dtype)
    if isinstance(value, int):
        return _int_type(value, value)
    if isinstance(value, float):
        return GGUFValueType.FLOAT32
    raise ValueError(f"cannot store a {type(value).__name__} in GGUF")


def _infer_element_desc(values: Any) -> ValueTypeDesc:
    """The element type of an array: from the dtype of a numpy array, else from the contents."""
    if isinstance(values, np.ndarray):
        return (_dtype_value_type(values.dtype),)
    if len(values) == 0:
        raise ValueError("cannot infer the element type of an empty array: give element_type")
    if all(_is_sequence(v) for v in values):
        inner = {_infer_element_desc(v) for v in values if isinstance(v, np.ndarray) or len(v) > 0}
        if len(inner) != 1:
            raise ValueError("cannot infer one element type for these nested arrays: give element_type")
        return (GGUFValueType.ARRAY,) + inner.pop()
    if all(isinstance(v, str) for v in values):
        return (GGUFValueType.STRING,)
    if all(isinstance(v, (bool, np.bool_)) for v in values):
        return (GGUFValueType.BOOL,)
    if all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values):
        return (_int_type(int(min(values)), int(max(values))),)
    if all(isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) for v in values):
        return (GGUFValueType.FLOAT32,)
    raise ValueError("cannot infer one element type for these values: give element_type")


def _as_desc(type: ValueTypeLike) -> ValueTypeDesc:
    parts = tuple(type) if isinstance(type, (tuple, list)) else (type,)
    try:
        desc = tuple(GGUFValueType(t) for t in parts)
    except ValueError:
        raise ValueError(f"unknown value type in {type!r}") from None
    if not desc or any(t != GGUFValueType.ARRAY for t in desc[:-1]):
        raise ValueError(f"{type!r} is not a value type: only ARRAY can be followed by an element type")
    return desc


def _value_desc(value: Any, type: ValueTypeLike | None, element_type: ValueTypeLike | None) -> ValueTypeDesc:
    """The full type of `value` from the given type and element type, inferring what is missing."""
    if type is None:
        if not _is_sequence(value):
            if element_type is not None:
                raise ValueError("element_type is only for arrays")
            return (_infer_scalar_type(value),)
        type = GGUFValueType.ARRAY
    desc = _as_desc(type)
    if desc[0] != GGUFValueType.ARRAY:
        if element_type is not None:
            raise ValueError("element_type is only for arrays")
        return desc
    if element_type is not None:
        if len(desc) > 1 and desc[1:] != _as_desc(element_type):
            raise ValueError(f"type {type!r} and element_type {element_type!r} disagree")
        desc = (GGUFValueType.ARRAY,) + _as_desc(element_type)
    if desc == (GGUFValueType.ARRAY,) or (desc == (GGUFValueType.ARRAY,) * 2 and len(value) > 0):
        # the element type, or that of the inner arrays, left open
        inferred = (GGUFValueType.ARRAY,) + _infer_element_desc(value)
        if inferred[: len(desc)] != desc:
            raise ValueError(f"expected an array of arrays, got {_describe(inferred)}")
        desc = inferred
    return desc


def _encode_string(value: Any) -> bytes:
    if not isinstance(value, str):
        raise ValueError(f"expected a str, got {type(value).__name__}")
    data = value.encode("utf-8")
    return struct.pack("<Q", len(data)) + data


def _encode_scalars(values: Any, vtype: GGUFValueType) -> bytes:
    """Packed numbers of type `vtype`; ValueError for any that does not fit it."""
    if isinstance(values, np.ndarray) and _DTYPE_VALUE_TYPES.get((values.dtype.kind, values.itemsize)) == vtype:
        return np.ascontiguousarray(values, dtype=_SCALAR_DTYPES[vtype]).tobytes()  # the exact type: all fit
    values = values.tolist() if isinstance(values, np.ndarray) else list(values)
    if vtype == GGUFValueType.BOOL and not all(isinstance(v, bool) or v in (0, 1) for v in values):
        raise ValueError("BOOL values must be True, False, 0 or 1")
    try:
        return struct.pack(f"<{len(values)}{_SCALAR_FORMATS[vtype]}", *values)
    except (struct.error, OverflowError) as e:
        raise ValueError(f"values do not fit {vtype.name}: {e}") from None


def _encode_value(value: Any, desc: ValueTypeDesc) -> bytes:
    """The bytes of `value` of type `desc`, without the leading type id."""
    vtype = desc[0]
    if vtype == GGUFValueType.STRING:
        return _encode_string(value)
    if vtype != GGUFValueType.ARRAY:
        if _is_sequence(value):
            raise ValueError(f"expected one {vtype.name} value, got a {type(value).__name__}")
        return _encode_scalars([value], vtype)
    if not _is_sequence(value) or (isinstance(value, np.ndarray) and value.ndim != 1):
        raise ValueError(
            f"expected a list, tuple or 1-D numpy array for an ARRAY, got {type(value).__name__}"
        )
    element_desc = desc[1:]
    head = struct.pack("<IQ", element_desc[0], len(value))
    if element_desc[0] == GGUFValueType.STRING:
        return head + b"".join(_encode_string(v) for v in value)
    if element_desc[0] == GGUFValueType.ARRAY:
        if len(element_desc) == 1 and len(value) > 0:
            raise ValueError("the element type of the inner arrays is missing")
        return head + b"".join(_encode_value(v, element_desc) for v in value)
    return head + _encode_scalars(value, element_desc[0])


class _PendingTensor(NamedTuple):
    dims: tuple[int, ...]
    type: GGMLType
    nbytes: int
    data: np.ndarray | None  # C-contiguous, little-endian, exactly the tensor's bytes; None: from make
    make: Callable[[], np.ndarray] | None = None  # a lazy tensor's maker, called once by write()

    def materialize(self, name: str) -> np.ndarray:
        """The bytes to write: data, or make()'s result checked against the dims and type declared."""
        if self.make is None:
            return self.data
        try:
            made = _pending_tensor(np.asarray(self.make()), self.type, self.dims)
        except ValueError as e:
            raise ValueError(f"tensor {name!r}: {e}") from None
        return made.data


def _as_ggml_type(type: GGMLType | int | str) -> GGMLType:
    ggml_type = type_by_name(type) if isinstance(type, str) else GGMLType(type)
    if ggml_type not in TYPE_TRAITS:
        raise ValueError(f"tensor type {type_name(ggml_type)} is not supported by pyengine")
    return ggml_type


def _tensor_dims(data: np.ndarray, ggml_type: GGMLType, shape: Sequence[int] | None) -> tuple[int, ...]:
    """GGUF dims of `data` stored as `ggml_type`: `shape` if given, else from the numpy shape."""
    if shape is not None:
        return tuple(int(d) for d in shape)
    if data.ndim < 1:
        raise ValueError("a tensor needs at least one dimension")
    if ggml_type in _ELEMENT_DTYPES and data.dtype == _ELEMENT_DTYPES[ggml_type]:
        return tuple(reversed(data.shape))
    # raw blocks (rows..., bytes per row), as the reader shows them
    traits = TYPE_TRAITS[ggml_type]
    row_bytes = data.shape[-1]
    if row_bytes % traits.type_size != 0:
        raise ValueError(
            f"rows of {row_bytes} bytes are not whole {traits.name} blocks of {traits.type_size} bytes"
        )
    return (row_bytes // traits.type_size * traits.block_size,) + tuple(reversed(data.shape[:-1]))


class GGUFWriter:
    """Builds a GGUF file (version 3) in memory and writes it at once, atomically.

        with GGUFWriter("model.gguf") as w:
            w.add("general.architecture", "llama")
            w.add_uint32("llama.block_count", 2)
            w.add_tensor("token_embd.weight", embeddings)            # float32 (n_vocab, n_embd)
            w.add_tensor("blk.0.attn_q.weight", q8_bytes, GGMLType.Q8_0)  # uint8 (rows, row bytes)

    The file is written by write(), or on leaving the `with` block without an exception; it goes to
    a temporary file in the same directory, renamed into place once complete, so a failure leaves
    neither a partial file nor the temporary one. Values are checked when added: a bad value
    raises ValueError at add time, naming the key or tensor. A tensor may also be given as a
    function that makes it, called when write() comes to it (add_tensor)."""

    def __init__(self, path: str | os.PathLike, alignment: int = DEFAULT_ALIGNMENT) -> None:
        if isinstance(alignment, bool) or not isinstance(alignment, int) or not _is_power_of_two(alignment) \
                or alignment >= 2**32:
            raise ValueError(f"alignment must be a power of two below 2**32, got {alignment!r}")
        self.path = Path(path)
        self.alignment = alignment
        self._metadata: dict[str, bytes] = {}  # key -> type id + encoded value
        self._tensors: dict[str, _PendingTensor] = {}
        self._written = False
        if alignment != DEFAULT_ALIGNMENT:
            self._metadata["general.alignment"] = _encode_kv(alignment, (GGUFValueType.UINT32,))

    # --- metadata ---

    def add(self, key: str, value: Any, type: ValueTypeLike | None = None,
            element_type: ValueTypeLike | None = None) -> None:
        """Add a key. Types left out are inferred: bool -> BOOL, int -> INT32, INT64 or UINT64
        (the first that holds it), float -> FLOAT32, str -> STRING, list/tuple/numpy array ->
        ARRAY of an element type inferred from the contents or the dtype. `type` may also be a
        full type as in GGUFReader.metadata_types, e.g. (ARRAY, UINT16)."""
        self._check_new_key(key)
        try:
            self._metadata[key] = _encode_kv(value, _value_desc(value, type, element_type))
        except (ValueError, TypeError) as e:
            raise ValueError(f"key {key!r}: {e}") from None

    def copy_key(self, reader: GGUFReader, key: str) -> None:
        """Add key with its value from another file as that file stores it (its value type and value,
        bytes read by GGUFReader, which checked them): no decoding and encoding again, which for a
        vocabulary's hundreds of thousands of strings takes most of a small model's metadata time."""
        self._check_new_key(key)
        self._metadata[key] = reader.encoded_value(key)

    def _check_new_key(self, key: str) -> None:
        self._check_not_written()
        if not isinstance(key, str) or not key:
            raise ValueError(f"a key must be a non-empty str, got {key!r}")
        if key == "general.alignment":
            raise ValueError("set general.alignment with GGUFWriter(path, alignment=...)")
        if key in self._metadata:
            raise ValueError(f"duplicate key {key!r}")

    def add_uint8(self, key: str, value: int) -> None:
        self.add(key, value, GGUFValueType.UINT8)

    def add_int8(self, key: str, value: int) -> None:
        self.add(key, value, GGUFValueType.INT8)

    def add_uint16(self, key: str, value: int) -> None:
        self.add(key, value, GGUFValueType.UINT16)

    def add_int16(self, key: str, value: int) -> None:
        self.add(key, value, GGUFValueType.INT16)

    def add_uint32(self, key: str, value: int) -> None:
        self.add(key, value, GGUFValueType.UINT32)

    def add_int32(self, key: str, value: int) -> None:
        self.add(key, value, GGUFValueType.INT32)

    def add_uint64(self, key: str, value: int) -> None:
        self.add(key, value, GGUFValueType.UINT64)

    def add_int64(self, key: str, value: int) -> None:
        self.add(key, value, GGUFValueType.INT64)

    def add_float32(self, key: str, value: float) -> None:
        self.add(key, value, GGUFValueType.FLOAT32)

    def add_float64(self, key: str, value: float) -> None:
        self.add(key, value, GGUFValueType.FLOAT64)

    def add_bool(self, key: str, value: bool) -> None:
        self.add(key, value, GGUFValueType.BOOL)

    def add_string(self, key: str, value: str) -> None:
        self.add(key, value, GGUFValueType.STRING)

    def add_array(self, key: str, values: Any, element_type: ValueTypeLike | None = None) -> None:
        self.add(key, values, GGUFValueType.ARRAY, element_type)

    # --- tensors ---

    def add_tensor(self, name: str, data: np.ndarray, type: GGMLType | int | str | None = None,
                   shape: Sequence[int] | None = None) -> None:
        """Add a tensor. float32 / float16 arrays are stored as F32 / F16 with GGUF dims the
        reverse of the numpy shape. Block types take raw uint8 bytes and `type`, with `shape`
        the GGUF dims (dims[0] contiguous), or without it a (rows..., bytes per row) array.
        BF16 takes uint16 bit patterns. The byte count is checked against the shape.

        `data` may also be a function of no arguments that returns the array, given `type` and
        `shape`: write() calls it when the tensor's turn comes and drops the result once written, so
        a file made tensor by tensor (quantize_model) holds one of them in memory, not all. What it
        returns is checked as an array given here would be (ValueError from write())."""
        self._check_not_written()
        if not isinstance(name, str) or not name:
            raise ValueError(f"a tensor name must be a non-empty str, got {name!r}")
        if name in self._tensors:
            raise ValueError(f"duplicate tensor name {name!r}")
        try:
            if callable(data):
                if type is None or shape is None:
                    raise ValueError("a tensor made when written needs its type and shape")
                ggml_type = _as_ggml_type(type)
                dims = tuple(int(d) for d in shape)
                self._tensors[name] = _PendingTensor(dims, ggml_type, tensor_nbytes(dims, ggml_type), None, data)
            else:
                self._tensors[name] = _pending_tensor(np.asarray(data), type, shape)
        except ValueError as e:
            raise ValueError(f"tensor {name!r}: {e}") from None

    # --- output ---

    def write(self) -> None:
        """Write the file: header, metadata, tensor infos, then each tensor's data aligned."""
        self._check_not_written()
        self._written = True
        offsets, end = {}, 0
        for name, tensor in self._tensors.items():
            offsets[name] = _align_up(end, self.alignment)
            end = offsets[name] + tensor.nbytes
        head = b"".join([
            struct.pack("<4sIQQ", GGUF_MAGIC, GGUF_VERSION, len(self._tensors), len(self._metadata)),
            *(_encode_string(key) + value for key, value in self._metadata.items()),
            *(_encode_tensor_info(name, t, offsets[name]) for name, t in self._tensors.items()),
        ])
        data_offset = _align_up(len(head), self.alignment)
        tensors, self._tensors = self._tensors, {}  # not kept alive after writing

        tmp_path = self.path.with_name(f".{self.path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
        try:
            # opened inside the try: a Ctrl-C landing the moment the file exists still removes it
            with os.fdopen(os.open(tmp_path, flags, 0o666), "wb") as f:
                f.write(head)
                _write_zeros(f, data_offset - len(head))
                position = 0
                for name, tensor in tensors.items():  # a lazy tensor made here, dropped once written
                    _write_zeros(f, offsets[name] - position)
                    _write_tensor_data(f, tensor.materialize(name))
                    position = offsets[name] + tensor.nbytes
                # the last tensor padded too, as ggml and gguf-py write it: ggml's gguf reader reads
                # the data section as whole aligned tensors (an imatrix file is read so)
                _write_zeros(f, _align_up(position, self.alignment) - position)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp_path, self.path)
        except FileExistsError:  # the name is another writer's (O_EXCL): not ours to remove
            raise
        except BaseException:
            try:
                os.unlink(tmp_path)
            except OSError:
                pass
            raise

    def _check_not_written(self) -> None:
        if self._written:
            raise ValueError(f"this GGUFWriter has already written {self.path}")

    def __enter__(self) -> GGUFWriter:
        return self

    def __exit__(self, exc_type: object, *exc_info: object) -> None:
        if exc_type is None and not self._written:
            self.write()


def _encode_kv(value: Any, desc: ValueTypeDesc) -> bytes:
    return struct.pack("<I", desc[0]) + _encode_value(value, desc)


def _encode_tensor_info(name: str, tensor: _PendingTensor, offset: int) -> bytes:
    return b"".join([
        _encode_string(name),
        struct.pack(f"<I{len(tensor.dims)}Q", len(tensor.dims), *tensor.dims),
        struct.pack("<IQ", tensor.type, offset),
    ])


def _pending_tensor(data: np.ndarray, type: GGMLType | int | str | None,
                    shape: Sequence[int] | None) -> _PendingTensor:
    if type is None:
        if data.dtype == np.float32:
            type = GGMLType.F32
        elif data.dtype == np.float16:
            type = GGMLType.F16
        else:
            raise ValueError(f"a {data.dtype} array needs type= (raw block bytes are uint8)")
    ggml_type = _as_ggml_type(type)
    element_dtype = _ELEMENT_DTYPES.get(ggml_type)
    if data.dtype != np.uint8 and (element_dtype is None or data.dtype != element_dtype):
        wanted = "uint8 block bytes" if element_dtype is None else f"{element_dtype} values or uint8 bytes"
        raise ValueError(f"type {ggml_type.name} takes {wanted}, not {data.dtype}")
    dims = _tensor_dims(data, ggml_type, shape)
    nbytes = tensor_nbytes(dims, ggml_type)
    if data.nbytes != nbytes:
        raise ValueError(
            f"dims {list(dims)} of type {ggml_type.name} take {nbytes} bytes, but the data has {data.nbytes}"
        )
    data = np.ascontiguousarray(data, dtype=data.dtype.newbyteorder("<"))
    return _PendingTensor(dims, ggml_type, nbytes, data)


def _write_tensor_data(f: Any, data: np.ndarray) -> None:
    f.write(memoryview(data).cast("B"))
