"""Hostile GGUF files made by mutating a real one: a corpus for the loaders (tests/test_hostile_models.py)
and the seeds of the fuzzer (bench/fuzz/fuzz_gguf.py).

A file is taken apart into a RawGGUF (header counts, key-value pairs as raw value bytes, tensor infos,
the data section), changed at that level, and put together again; each part's byte span is recorded,
so that truncations can land inside every section. The layout is written here independently of
pyengine's writer, so that fields the writer would refuse (empty keys, zero dims, unknown types) can
be made.

mutants(path) yields Mutant(name, data, words): `words` are strings the GGUFError's message must hold,
or None where the change may leave a valid file (a loader may then accept it).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterator, NamedTuple, Sequence

import numpy as np

import pyengine.gguf as pg
from pyengine.gguf import GGMLType, GGUFReader, GGUFValueType

VT = GGUFValueType
TOKENS = "tokenizer.ggml.tokens"


def u32(v: int) -> bytes:
    return struct.pack("<I", v)


def u64(v: int) -> bytes:
    return struct.pack("<Q", v)


def string(s: str | bytes) -> bytes:
    data = s.encode("utf-8") if isinstance(s, str) else s
    return u64(len(data)) + data


def value_bytes(value, vtype: VT, element_type: VT | None = None) -> bytes:
    """The bytes of one value (no type id): a scalar, a string, or an array of element_type."""
    if vtype == VT.STRING:
        return string(value)
    if vtype != VT.ARRAY:
        return struct.pack("<" + pg._SCALAR_FORMATS[vtype], value)
    if element_type == VT.STRING:
        return u32(VT.STRING) + u64(len(value)) + b"".join(string(v) for v in value)
    fmt = pg._SCALAR_FORMATS[element_type]
    return u32(element_type) + u64(len(value)) + struct.pack(f"<{len(value)}{fmt}", *value)


@dataclass
class RawKV:
    key: bytes
    vtype: int
    value: bytes  # the encoded value, without the type id


@dataclass
class RawTensor:
    name: bytes
    dims: tuple[int, ...]
    type: int
    offset: int  # relative to the data section
    n_dims: int | None = None  # written instead of len(dims) when set


class Span(NamedTuple):
    label: str
    start: int
    end: int


@dataclass
class RawGGUF:
    kvs: list[RawKV]
    tensors: list[RawTensor]
    data: bytes  # the data section
    alignment: int = 32  # where the data section starts (not the general.alignment key)
    version: int = 3
    magic: bytes = b"GGUF"
    n_kv: int | None = None  # written instead of len(kvs) when set
    n_tensors: int | None = None
    spans: list[Span] = field(default_factory=list)  # filled by to_bytes

    @classmethod
    def from_file(cls, path) -> RawGGUF:
        with GGUFReader(path) as r:
            kvs = []
            for key, value in r.metadata.items():
                desc = r.metadata_types[key]
                desc = desc if isinstance(desc, tuple) else (desc,)
                kvs.append(RawKV(key.encode(), int(desc[0]), pg._encode_value(value, desc)))
            raw = Path(path).read_bytes()
            tensors = [RawTensor(t.name.encode(), t.shape, int(t.type), t.offset - r.data_offset)
                       for t in r.tensors.values()]
            return cls(kvs, tensors, raw[r.data_offset:], r.alignment)

    def kv(self, key: str) -> RawKV:
        return next(kv for kv in self.kvs if kv.key == key.encode())

    def tensor(self, name: str) -> RawTensor:
        return next(t for t in self.tensors if t.name == name.encode())

    def to_bytes(self) -> bytes:
        out = bytearray()
        spans = self.spans = []

        def put(label: str, data: bytes) -> None:
            spans.append(Span(label, len(out), len(out) + len(data)))
            out.extend(data)

        put("magic", self.magic)
        put("version", u32(self.version))
        put("tensor count", u64(len(self.tensors) if self.n_tensors is None else self.n_tensors))
        put("kv count", u64(len(self.kvs) if self.n_kv is None else self.n_kv))
        for kv in self.kvs:
            name = kv.key.decode("utf-8", "replace")
            put(f"key {name}", string(kv.key))
            put(f"value type of {name}", u32(kv.vtype))
            put(f"value of {name}", kv.value)
        for t in self.tensors:
            name = t.name.decode("utf-8", "replace")
            put(f"name of tensor {name}", string(t.name))
            n_dims = len(t.dims) if t.n_dims is None else t.n_dims
            put(f"dims of tensor {name}", u32(n_dims) + b"".join(u64(d) for d in t.dims))
            put(f"type of tensor {name}", u32(t.type))
            put(f"offset of tensor {name}", u64(t.offset))
        put("padding", bytes(-len(out) % self.alignment))
        start = len(out)
        for t in sorted(self.tensors, key=lambda t: t.offset):
            name = t.name.decode("utf-8", "replace")
            try:
                nbytes = pg.tensor_nbytes(t.dims, GGMLType(t.type))
            except (ValueError, KeyError):
                continue
            if start + t.offset + nbytes <= start + len(self.data):
                spans.append(Span(f"data of tensor {name}", start + t.offset, start + t.offset + nbytes))
        out.extend(self.data)
        return bytes(out)

    def copy(self) -> RawGGUF:
        return replace(self, kvs=[replace(kv) for kv in self.kvs], tensors=[replace(t) for t in self.tensors],
                       spans=[])


class Mutant(NamedTuple):
    name: str
    data: bytes
    words: tuple[str, ...] | None  # what the GGUFError's message must hold; None: may load


# ---------------------------------------------------------------------------------------------------
# The mutations
# ---------------------------------------------------------------------------------------------------


def _set(raw: RawGGUF, key: str, vtype: VT, value, element_type: VT | None = None) -> RawGGUF:
    """raw with `key` set to value (added at the end if absent)."""
    raw = raw.copy()
    encoded = value_bytes(value, vtype, element_type)
    for kv in raw.kvs:
        if kv.key == key.encode():
            kv.vtype, kv.value = int(vtype), encoded
            return raw
    raw.kvs.append(RawKV(key.encode(), int(vtype), encoded))
    return raw


def _drop_key(raw: RawGGUF, key: str) -> RawGGUF:
    raw = raw.copy()
    raw.kvs = [kv for kv in raw.kvs if kv.key != key.encode()]
    return raw


def _array_values(raw: RawGGUF, key: str) -> tuple[VT, list]:
    """(element type, values) of an array key of raw."""
    value = raw.kv(key).value
    element_type = VT(struct.unpack_from("<I", value)[0])
    count = struct.unpack_from("<Q", value, 4)[0]
    if element_type == VT.STRING:
        values, pos = [], 12
        for _ in range(count):
            n = struct.unpack_from("<Q", value, pos)[0]
            values.append(value[pos + 8: pos + 8 + n].decode("utf-8"))
            pos += 8 + n
        return element_type, values
    fmt = pg._SCALAR_FORMATS[element_type]
    return element_type, list(struct.unpack_from(f"<{count}{fmt}", value, 12))


def _string(raw: RawGGUF, key: str) -> str:
    """The value of a string key of raw."""
    value = raw.kv(key).value
    n = struct.unpack_from("<Q", value)[0]
    return value[8:8 + n].decode("utf-8")


# Keys a file may leave out (a default applies), of every architecture's.
OPTIONAL_KEYS = {"attention.head_count_kv", "rope.dimension_count", "attention.key_length", "attention.value_length",
                 "attention.sliding_window", "rope.scaling.original_context_length"}


def _with_tensor(raw: RawGGUF, name: str, **changes) -> RawGGUF:
    raw = raw.copy()
    for t in raw.tensors:
        if t.name == name.encode():
            for k, v in changes.items():
                setattr(t, k, v)
    return raw


def _hyper_parameter_mutants(raw: RawGGUF) -> Iterator[Mutant]:
    n_vocab = len(_array_values(raw, TOKENS)[1])
    p = _string(raw, "general.architecture") + "."  # the architecture's keys: llama., gemma3., ...
    arch_keys = [kv.key.decode() for kv in raw.kvs if kv.key.startswith(p.encode())]
    int_keys = [k for k in arch_keys if raw.kv(k).vtype == VT.UINT32]
    float_keys = [k for k in arch_keys if raw.kv(k).vtype == VT.FLOAT32]
    for key in int_keys:
        short = key.split(".", 1)[1]
        for value in (0, 1, 3, 7, 2**31 - 1, 2**31, 2**32 - 1):
            valid = value in (1, 3, 7, 2**31 - 1) or (value == 0 and short == "attention.sliding_window")
            yield Mutant(f"{short} = {value}", _set(raw, key, VT.UINT32, value).to_bytes(), None if valid else (short,))
        yield Mutant(f"{short} = -1 (int32)", _set(raw, key, VT.INT32, -1).to_bytes(), (short,))
        yield Mutant(f"{short} = 2**40 (uint64)", _set(raw, key, VT.UINT64, 2**40).to_bytes(), (short,))
        yield Mutant(f"{short} as a string", _set(raw, key, VT.STRING, "64").to_bytes(), (short,))
        yield Mutant(f"{short} as a float", _set(raw, key, VT.FLOAT32, 64.0).to_bytes(), (short,))
        yield Mutant(f"{short} as a bool", _set(raw, key, VT.BOOL, 1).to_bytes(), (short,))
        yield Mutant(f"{short} as an array", _set(raw, key, VT.ARRAY, [64], VT.UINT32).to_bytes(), (short,))
        yield Mutant(f"{short} as uint8", _set(raw, key, VT.UINT8, 2).to_bytes(), None)
        required = short not in OPTIONAL_KEYS
        yield Mutant(f"{short} missing", _drop_key(raw, key).to_bytes(), (short,) if required else None)
    for key in float_keys:
        short = key.split(".", 1)[1]
        for value in (0.0, -1.0, float("nan"), float("inf"), 1e-30):
            yield Mutant(f"{short} = {value}", _set(raw, key, VT.FLOAT32, value).to_bytes(),
                         None if value == 1e-30 else (short,))
        yield Mutant(f"{short} as a string", _set(raw, key, VT.STRING, "1e-5").to_bytes(), (short,))
        yield Mutant(f"{short} as float64", _set(raw, key, VT.FLOAT64, 1e-5).to_bytes(), None)
    arch = "general.architecture"
    yield Mutant("architecture missing", _drop_key(raw, arch).to_bytes(), ("architecture",))
    yield Mutant("architecture gpt2", _set(raw, arch, VT.STRING, "gpt2").to_bytes(), ("architecture",))
    yield Mutant("architecture as uint32", _set(raw, arch, VT.UINT32, 1).to_bytes(), ("architecture",))
    # contradictions between hyper-parameters, and with the tensors
    heads = struct.unpack("<I", raw.kv(p + "attention.head_count").value)[0]
    embd = struct.unpack("<I", raw.kv(p + "embedding_length").value)[0]
    blocks = struct.unpack("<I", raw.kv(p + "block_count").value)[0]
    head_dim = embd // heads
    if any(kv.key == (p + "attention.key_length").encode() for kv in raw.kvs):
        head_dim = struct.unpack("<I", raw.kv(p + "attention.key_length").value)[0]
    no_rope = _drop_key(raw, p + "rope.dimension_count")  # else its check comes first
    for h, kv_h in ((heads, heads + 1), (heads, 3), (embd + 1, 1), (3, 1), (heads * 2, heads)):
        m = _set(_set(no_rope, p + "attention.head_count", VT.UINT32, h), p + "attention.head_count_kv",
                 VT.UINT32, kv_h)
        # twice the heads of half the size: the same tensor shapes, a valid (other) model
        yield Mutant(f"head_count {h}, head_count_kv {kv_h}", m.to_bytes(),
                     None if h == heads * 2 else ("head_count",))
    for n in (blocks + 1, blocks * 1000, 2**31 - 1):
        yield Mutant(f"block_count {n} beyond the tensors", _set(raw, p + "block_count", VT.UINT32, n).to_bytes(),
                     ("block_count",))
    ffn = "ffn_up.weight" if p == "phi3." else "ffn_gate.weight"
    for key, value, words in ((p + "embedding_length", embd * 2, ("embedding_length",)),
                              (p + "embedding_length", embd // 2, ("embedding_length",)),
                              (p + "feed_forward_length", 1, (ffn,)),
                              (p + "rope.dimension_count", head_dim + 2, ("rope.dimension_count",)),
                              (p + "rope.dimension_count", 3, ("rope.dimension_count",))):
        m = _set(no_rope if "embedding" in key else raw, key, VT.UINT32, value)
        yield Mutant(f"{key.split('.', 1)[1]} {value} against the tensors", m.to_bytes(), words)
    for key in ("tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id", "tokenizer.ggml.padding_token_id",
                "tokenizer.ggml.unknown_token_id", "tokenizer.ggml.eot_token_id"):
        for value in (n_vocab, 2**31, 2**32 - 1):
            yield Mutant(f"{key} = {value}", _set(raw, key, VT.UINT32, value).to_bytes(), (key, "outside"))
        yield Mutant(f"{key} = -1 (int32)", _set(raw, key, VT.INT32, -1).to_bytes(), (key,))
        yield Mutant(f"{key} as a string", _set(raw, key, VT.STRING, "1").to_bytes(), (key,))
        yield Mutant(f"{key} = 2**64 - 1 (uint64)", _set(raw, key, VT.UINT64, 2**64 - 1).to_bytes(), (key,))


def _vocabulary_mutants(raw: RawGGUF) -> Iterator[Mutant]:
    _, tokens = _array_values(raw, TOKENS)
    n = len(tokens)
    for key in ("tokenizer.ggml.scores", "tokenizer.ggml.token_type"):
        if not any(kv.key == key.encode() for kv in raw.kvs):
            continue
        element_type, values = _array_values(raw, key)
        for count in (0, 1, n - 1, n + 1):
            cut = (values * 2)[:count]
            yield Mutant(f"{key} of {count} entries for {n} tokens",
                         _set(raw, key, VT.ARRAY, cut, element_type).to_bytes(), (key,))
        yield Mutant(f"{key} as strings", _set(raw, key, VT.ARRAY, ["1"] * n, VT.STRING).to_bytes(), (key,))
        if element_type == VT.INT32:  # narrower than the reader expects: the values still fit
            yield Mutant(f"{key} as int8", _set(raw, key, VT.ARRAY, values, VT.INT8).to_bytes(), None)
            yield Mutant(f"{key} as uint8", _set(raw, key, VT.ARRAY, values, VT.UINT8).to_bytes(), None)
            yield Mutant(f"{key} as float32", _set(raw, key, VT.ARRAY, values, VT.FLOAT32).to_bytes(), (key,))
            for bad in (7, -1, 2**31 - 1):
                yield Mutant(f"{key}[5] = {bad}", _set(raw, key, VT.ARRAY, values[:5] + [bad] + values[6:],
                                                       VT.INT32).to_bytes(), (key,))
            byte_typed = values[:-1] + [6]  # the last token (not <0xNN>) typed BYTE
            yield Mutant(f"{key}[-1] = BYTE", _set(raw, key, VT.ARRAY, byte_typed, VT.INT32).to_bytes(), (TOKENS,))
    for bad in ("<0x-1>", "<0x100>", "<0xZZ>", "<0x>"):
        if "<0x00>" in tokens:
            at = tokens.index("<0x00>")
            yield Mutant(f"byte token {bad}", _set(raw, TOKENS, VT.ARRAY, tokens[:at] + [bad] + tokens[at + 1:],
                                                   VT.STRING).to_bytes(), (TOKENS, bad))
    yield Mutant("duplicate token", _set(raw, TOKENS, VT.ARRAY, tokens[:-1] + [tokens[3]], VT.STRING).to_bytes(),
                 (TOKENS, "duplicates"))
    yield Mutant("empty token string", _set(raw, TOKENS, VT.ARRAY, tokens[:-1] + [""], VT.STRING).to_bytes(), None)
    yield Mutant("one token too few", _set(raw, TOKENS, VT.ARRAY, tokens[:-1], VT.STRING).to_bytes(), None)
    yield Mutant("one token too many", _set(raw, TOKENS, VT.ARRAY, tokens + ["<extra>"], VT.STRING).to_bytes(),
                 None)
    yield Mutant("no tokens", _set(raw, TOKENS, VT.ARRAY, [], VT.STRING).to_bytes(), (TOKENS,))
    yield Mutant("tokens as int32", _set(raw, TOKENS, VT.ARRAY, list(range(n)), VT.INT32).to_bytes(), (TOKENS,))
    yield Mutant("tokens as a string", _set(raw, TOKENS, VT.STRING, "abc").to_bytes(), (TOKENS,))
    yield Mutant("tokens missing", _drop_key(raw, TOKENS).to_bytes(), (TOKENS,))
    yield Mutant("tokenizer model unknown", _set(raw, "tokenizer.ggml.model", VT.STRING, "bert").to_bytes(),
                 ("tokenizer.ggml.model",))
    yield Mutant("tokenizer model missing", _drop_key(raw, "tokenizer.ggml.model").to_bytes(),
                 ("tokenizer.ggml.model",))
    yield Mutant("tokenizer pre unknown", _set(raw, "tokenizer.ggml.pre", VT.STRING, "nope").to_bytes(), None)
    if any(kv.key == b"tokenizer.ggml.merges" for kv in raw.kvs):
        yield Mutant("merge of one part", _set(raw, "tokenizer.ggml.merges", VT.ARRAY, ["ab"], VT.STRING).to_bytes(),
                     ("tokenizer.ggml.merges",))
        yield Mutant("merges as uint8", _set(raw, "tokenizer.ggml.merges", VT.ARRAY, [1], VT.UINT8).to_bytes(),
                     ("tokenizer.ggml.merges",))
    yield Mutant("add_bos_token as a string", _set(raw, "tokenizer.ggml.add_bos_token", VT.STRING, "yes").to_bytes(),
                 ("add_bos_token",))
    yield Mutant("chat_template as uint32", _set(raw, "tokenizer.chat_template", VT.UINT32, 1).to_bytes(), None)


def _tensor_mutants(raw: RawGGUF) -> Iterator[Mutant]:
    names = [t.name.decode() for t in raw.tensors]
    embd = raw.tensor("token_embd.weight")
    for name in names:
        yield Mutant(f"{name} missing", _without(raw, name).to_bytes(), None if name == "output.weight" else (name,))
    t0 = raw.tensors[0]
    dup = raw.copy()
    dup.tensors.append(replace(t0, offset=t0.offset))
    yield Mutant("duplicate tensor", dup.to_bytes(), ("duplicate tensor",))
    extra = raw.copy()
    extra.tensors.append(replace(raw.tensor("output_norm.weight"), name=b"blk.99.attn_norm.weight"))
    yield Mutant("tensor for block 99 (overlapping)", extra.to_bytes(), ("overlap",))
    renamed = raw.copy()
    renamed.tensors[-1].name = b"rope_freqs.weight"
    yield Mutant("unknown tensor name", renamed.to_bytes(), ("rope_freqs.weight",))

    for name in (names[0], names[-1], "token_embd.weight", "output_norm.weight"):
        t = raw.tensor(name)
        d = t.dims
        cases = {
            "dim 0": ((0,) + d[1:], None, (name, "dimension of 0")),
            "dims swapped": (tuple(reversed(d)), None, None),
            "dims[0] + 1": ((d[0] + 1,) + d[1:], None, (name,)),
            "dims[0] * 2": ((d[0] * 2,) + d[1:], None, (name,)),
            "dim 2**32": ((2**32,) + d[1:], None, (name,)),
            "dim 2**63": ((2**63,) + d[1:], None, (name,)),
            "dim 2**64-1": ((2**64 - 1,) + d[1:], None, (name,)),
            "product wraps to 0": ((2**32, 2**32, 2**32, 2**32), None, (name,)),
            "product wraps to 1": ((2**32 + 1, 2**32 - 1, 1, 1), None, (name,)),
            "n_dims 0": ((), None, (name, "0 dimensions")),
            "n_dims 5": (d + (1,) * (5 - len(d)), None, (name, "5 dimensions")),
            "n_dims 3 of 1": (d + (1,), None, None),  # a vector as (n, 1) is still n values
            "n_dims 4, 2**16 each": ((2**16,) * 4, None, (name,)),
            "n_dims 2**32-1": (d, 2**32 - 1, (name,)),
            "n_dims 2**31": (d, 2**31, (name,)),
        }
        for label, (dims, n_dims, words) in cases.items():
            yield Mutant(f"{name}: {label}", _with_tensor(raw, name, dims=dims, n_dims=n_dims).to_bytes(), words)
        for label, type_id, words in (("unknown type 99", 99, ("99",)), ("type IQ1_S", GGMLType.IQ1_S, ("IQ1_S",)),
                                      ("type IQ2_XXS", GGMLType.IQ2_XXS, ("IQ2_XXS",)), ("type 2**32-1", 2**32 - 1, ()),
                                      ("type Q8_1", GGMLType.Q8_1, ()), ("type F16", GGMLType.F16, ()),
                                      ("type BF16", GGMLType.BF16, ())):
            yield Mutant(f"{name}: {label}", _with_tensor(raw, name, type=int(type_id)).to_bytes(),
                         (name,) + words if words != () else None)
        for label, offset in (("offset + 1", t.offset + 1), ("offset + alignment", t.offset + raw.alignment),
                              ("offset of the first tensor", raw.tensors[0].offset if t is not raw.tensors[0]
                               else raw.tensors[1].offset),
                              ("offset = data size", len(raw.data)), ("offset 2**63", 2**63),
                              ("offset 2**64 - 32", 2**64 - 32)):
            yield Mutant(f"{name}: {label}", _with_tensor(raw, name, offset=offset).to_bytes(), (name,))
    for label, name in (("empty tensor name", b""), ("tensor name of invalid UTF-8", b"w\xff"),
                        ("tensor name 2**63 bytes", None)):
        m = raw.copy()
        if name is None:
            data = bytearray(m.to_bytes())
            span = next(s for s in m.spans if s.label == f"name of tensor {embd.name.decode()}")
            data[span.start: span.start + 8] = u64(2**63)
            yield Mutant(label, bytes(data), ("string of",))
            continue
        m.tensors[0].name = name
        yield Mutant(label, m.to_bytes(), ("tensor info 1",))
    # weights that are not finite: loading succeeds, evaluation must not crash
    nan = raw.copy()
    span_data = bytearray(nan.data)
    norm = raw.tensor("output_norm.weight")
    span_data[norm.offset: norm.offset + 16] = np.full(4, np.nan, np.float32).tobytes()
    nan.data = bytes(span_data)
    yield Mutant("NaN in output_norm.weight", nan.to_bytes(), None)


def _without(raw: RawGGUF, name: str) -> RawGGUF:
    raw = raw.copy()
    raw.tensors = [t for t in raw.tensors if t.name != name.encode()]
    return raw


def _layout_mutants(raw: RawGGUF) -> Iterator[Mutant]:
    data = raw.to_bytes()
    n_kv, n_tensors = len(raw.kvs), len(raw.tensors)
    for label, count_n_kv, count_n_t in (("kv count + 1", n_kv + 1, None), ("kv count - 1", n_kv - 1, None),
                                         ("kv count 0", 0, None), ("kv count 2**32", 2**32, None),
                                         ("kv count 2**64-1", 2**64 - 1, None),
                                         ("tensor count + 1", None, n_tensors + 1),
                                         ("tensor count - 1", None, n_tensors - 1),
                                         ("tensor count 0", None, 0), ("tensor count 2**40", None, 2**40),
                                         ("tensor count 2**63", None, 2**63)):
        m = raw.copy()
        m.n_kv, m.n_tensors = count_n_kv, count_n_t
        may_load = label in ("tensor count - 1", "tensor count 0")
        yield Mutant(label, m.to_bytes(), None if may_load else ())
    for version in (0, 1, 4, 2**32 - 1):
        m = raw.copy()
        m.version = version
        yield Mutant(f"version {version}", m.to_bytes(), (f"version {version}",))
    m = raw.copy()
    m.magic = b"GGML"
    yield Mutant("magic GGML", m.to_bytes(), ("not a GGUF file",))
    for value, vtype in ((0, VT.UINT32), (1, VT.UINT32), (3, VT.UINT32), (48, VT.UINT32), (2**31, VT.UINT32),
                         (64, VT.UINT32), (2**32 - 1, VT.UINT32), (32, VT.UINT64), (32, VT.INT32),
                         ("32", VT.STRING)):
        words = None if value in (1, 64, 2**31) and vtype == VT.UINT32 else ("general.alignment",)
        yield Mutant(f"general.alignment {value!r} ({vtype.name})",
                     _set(raw, "general.alignment", vtype, value).to_bytes(), words)
    # keys: empty, invalid UTF-8, duplicate, absurd lengths, unknown value types
    for label, key, words in (("empty key", b"", ("empty",)), ("key of invalid UTF-8", b"k\xc3", ("UTF-8",)),
                              ("duplicate key", raw.kvs[0].key, ("duplicate key",))):
        m = raw.copy()
        m.kvs.append(RawKV(key, VT.UINT8, b"\x01"))
        yield Mutant(label, m.to_bytes(), words)
    for i, kv in enumerate(raw.kvs):
        name = kv.key.decode()
        key_span = next(s for s in raw.spans if s.label == f"key {name}")
        type_span = next(s for s in raw.spans if s.label == f"value type of {name}")
        value_span = next(s for s in raw.spans if s.label == f"value of {name}")
        for length in (2**31, 2**63, 2**64 - 1):
            yield Mutant(f"key {name}: length {length}", _patch(data, key_span.start, u64(length)), ("string of",))
        for type_id in (13, 2**32 - 1):
            yield Mutant(f"key {name}: value type {type_id}", _patch(data, type_span.start, u32(type_id)),
                         (f"unknown value type {type_id}",))
        if kv.vtype == VT.STRING:
            for length in (2**30, 2**64 - 1):
                yield Mutant(f"key {name}: string of {length} bytes", _patch(data, value_span.start, u64(length)),
                             ("string of", name))
        if kv.vtype == VT.ARRAY:
            for count in (2**30, 2**61, 2**64 - 1):
                yield Mutant(f"key {name}: array count {count}", _patch(data, value_span.start + 4, u64(count)),
                             ("array of", name))
            element_type = VT(struct.unpack_from("<I", data, value_span.start)[0])
            count = struct.unpack_from("<Q", data, value_span.start + 4)[0]
            for type_id in (13, VT.ARRAY):
                yield Mutant(f"key {name}: element type {type_id}", _patch(data, value_span.start, u32(type_id)),
                             () if count else None)
            if element_type == VT.STRING and count:
                yield Mutant(f"key {name}: first string of 2**40 bytes",
                             _patch(data, value_span.start + 12, u64(2**40)), ("string of", name))
            if element_type in (VT.INT32, VT.FLOAT32):  # narrower elements: the count no longer matches
                narrow = VT.INT8 if element_type == VT.INT32 else VT.UINT16
                yield Mutant(f"key {name}: element type {narrow.name} over {element_type.name} data",
                             _patch(data, value_span.start, u32(narrow)), ())
    # a 160-byte file (a real file's start) that declares gigabyte strings and arrays
    for kv in raw.kvs:
        if kv.vtype == VT.ARRAY:
            span = next(s for s in raw.spans if s.label == f"value of {kv.key.decode()}")
            if span.start + 12 <= 160:
                small = _patch(data, span.start + 4, u64(2**30))[:160]
                yield Mutant(f"160 bytes declaring 2**30 elements of {kv.key.decode()}", small, ("array of",))
    tokens_span = next(s for s in raw.spans if s.label == f"value of {TOKENS}")
    big = _patch(data, tokens_span.start + 12, u64(2**30))[: tokens_span.start + 160]
    yield Mutant("a gigabyte token string", big, ())


def _patch(data: bytes, at: int, new: bytes) -> bytes:
    return data[:at] + new + data[at + len(new):]


def _truncation_mutants(raw: RawGGUF) -> Iterator[Mutant]:
    """The file cut inside every section: at the start of each span, one byte in, and in its middle."""
    data = raw.to_bytes()
    cuts: dict[int, str] = {}
    for span in raw.spans:
        for at in (span.start, span.start + 1, (span.start + span.end) // 2, span.end - 1):
            if span.start <= at < span.end and at < len(data):
                cuts.setdefault(at, span.label)
    for at in sorted(cuts):
        words = ("empty",) if at == 0 else None
        yield Mutant(f"cut at {at} ({cuts[at]})", data[:at], words if at == 0 else ())


GROUPS = {
    "layout": _layout_mutants,  # header, counts, alignment, keys, value types, lengths
    "truncation": _truncation_mutants,
    "hyper-parameters": _hyper_parameter_mutants,  # llama.* and special token ids
    "vocabulary": _vocabulary_mutants,
    "tensors": _tensor_mutants,  # missing, duplicate, dims, types, offsets
}


def mutants(path, groups: Sequence[str] | None = None) -> Iterator[Mutant]:
    """The corpus built from the GGUF file at `path` (a small model: tests/tiny_models.py), or the
    named groups of it."""
    raw = RawGGUF.from_file(path)
    raw.to_bytes()  # fills raw.spans
    if groups is None:
        yield Mutant("unchanged", raw.to_bytes(), None)
    for name in groups or GROUPS:
        yield from GROUPS[name](raw)


def check_words(message: str, words: Sequence[str] | None) -> bool:
    return words is None or all(w in message for w in words)
