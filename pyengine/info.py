"""What a GGUF file holds: metadata, tensor types, sizes and bits per weight (`python -m pyengine info`)."""

from __future__ import annotations

import os
from collections import Counter

import numpy as np

from .gguf import GGUFError, GGUFReader, TYPE_TRAITS, type_name

# general.file_type values (llama.cpp's llama_ftype, and pyengine's own beyond its range).
FILE_TYPE_NAMES = {0: "all F32", 1: "mostly F16", 2: "mostly Q4_0", 3: "mostly Q4_1", 7: "mostly Q8_0",
                   32: "mostly BF16", 1000: "mostly NF4 (pyengine's own)", 1001: "mostly NF4_DQ (pyengine's own)"}


def model_stats(reader: GGUFReader) -> dict:
    """Parameters, tensor bytes and bits per weight of the whole file, and per tensor type."""
    by_type: dict[str, dict] = {}
    n_params = n_bytes = 0
    for info in reader.tensors.values():
        name = TYPE_TRAITS[info.type].name
        row = by_type.setdefault(name, {"tensors": 0, "params": 0, "bytes": 0})
        row["tensors"] += 1
        row["params"] += info.n_elements
        row["bytes"] += info.nbytes
        n_params += info.n_elements
        n_bytes += info.nbytes
    for row in by_type.values():
        row["bpw"] = 8 * row["bytes"] / row["params"]
    return {"params": n_params, "tensor_bytes": n_bytes, "bpw": 8 * n_bytes / max(n_params, 1),
            "file_bytes": reader.file_size, "types": by_type}


def _short(value) -> str:
    if isinstance(value, np.ndarray):
        return f"[{value.dtype} x {value.size}]"
    if isinstance(value, list):
        head = ", ".join(repr(v) for v in value[:4])
        return f"[{len(value)} items: {head}{', ...' if len(value) > 4 else ''}]"
    text = repr(value)
    return text if len(text) <= 100 else text[:97] + "..."


def _plain(value, kind: type):
    """A general.* value of the type it should have (numpy integers as int); any other shown by _short
    (a file may hold an array there), None where it is absent."""
    if kind is int and isinstance(value, np.integer):
        value = int(value)
    if value is None or (isinstance(value, kind) and not isinstance(value, bool)):
        return value
    return _short(value)


def load_error(path: str | os.PathLike, reader: GGUFReader) -> str | None:
    """Why pyengine would refuse to run the file (a model: Model; a vocabulary-only file: Tokenizer),
    or None."""
    from .model import Model
    from .tokenizer import KEY_MODEL, Tokenizer

    try:
        if reader.tensors:
            Model(path, n_ctx=1, n_threads=1)
        elif KEY_MODEL in reader.metadata:
            Tokenizer.from_metadata(reader.metadata)
    except GGUFError as e:
        return str(e)
    return None


def describe_architecture(reader: GGUFReader) -> list[tuple[str, str]]:
    """How pyengine runs the file's architecture (pyengine/architectures.py), or [] where it would not."""
    from .architectures import describe, read_config

    if not reader.tensors:
        return []
    try:
        return describe(read_config(reader))
    except GGUFError:
        return []


def info(path: str | os.PathLike) -> dict:
    """What the file holds; "error" says why pyengine would refuse to run it (None if it would not).
    GGUFError for a file that is not valid GGUF."""
    with GGUFReader(path) as reader:
        stats = model_stats(reader)
        ftype = _plain(reader.get("general.file_type"), int)
        return {
            "error": load_error(path, reader),
            "path": os.fspath(path),
            "version": reader.version,
            "architecture": _plain(reader.get("general.architecture"), str),
            "description": [list(line) for line in describe_architecture(reader)],
            "name": _plain(reader.get("general.name"), str),
            "file_type": FILE_TYPE_NAMES.get(ftype, ftype) if isinstance(ftype, int) else ftype,
            "metadata": {k: _short(v) for k, v in reader.metadata.items()},
            "tensor_count": len(reader.tensors),
            "tensor_types": dict(Counter(type_name(t.type) for t in reader.tensors.values())),
            **stats,
        }


def format_info(d: dict) -> str:
    lines = [f"{d['path']}: GGUF v{d['version']}, {d['architecture']} ({d['name']}), {d['file_type']}",
             f"{d['params'] / 1e6:.2f} M parameters, {d['tensor_count']} tensors, "
             f"{d['tensor_bytes'] / 1e6:.2f} MB of tensor data ({d['bpw']:.3f} bits per weight), "
             f"file {d['file_bytes'] / 1e6:.2f} MB"]
    if d["description"]:
        lines += ["", "how pyengine runs it:"] + [f"  {what}: {value}" for what, value in d["description"]]
    lines += ["", "tensor types:"]
    for name, row in sorted(d["types"].items(), key=lambda kv: -kv[1]["bytes"]):
        lines.append(f"  {name:8s} {row['tensors']:4d} tensors {row['params'] / 1e6:9.2f} M params "
                     f"{row['bytes'] / 1e6:9.2f} MB {row['bpw']:7.3f} bpw")
    lines += ["", "metadata:"]
    lines += [f"  {k} = {v}" for k, v in d["metadata"].items()]
    return "\n".join(lines)
