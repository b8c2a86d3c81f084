"""The importance matrix (imatrix): how large each input column of each weight matrix is on real
text, for the weighted quantizers (a column that carries large activations costs more when its
weights are rounded badly). What llama.cpp's `llama-imatrix` computes, in its GGUF file format, so
that each tool reads the other's files.

    imatrix = collect(model, text, n_ctx=512, n_chunks=None)   # runs the model over the text
    imatrix.save("imatrix.gguf"); Imatrix.load("imatrix.gguf")
    imatrix.importance("blk.0.attn_q.weight")    # float32 [cols]: mean squared input, per column

Collection follows llama-imatrix: the text is tokenized once and cut into chunks of n_ctx tokens
(the first token of each the BOS when the model adds one, as llama-perplexity does), each chunk is
evaluated from position 0 in one batch, and for every layer matrix W of every product W x the sum
over the tokens of x_j^2 is added per column j (in float32, token after token), with the count of
tokens. The output matrix is left out, as llama-imatrix leaves it by default. A fused tensor (phi3's
attn_qkv, a gate-up ffn_up) has one entry under its own name.

The file: general.type = "imatrix", imatrix.datasets (the text files), imatrix.chunk_count,
imatrix.chunk_size; for each matrix NAME, two F32 tensors: NAME.in_sum2 ([cols], the sums) and
NAME.counts ([1], the tokens), in name order. The importance a quantizer uses is in_sum2 / counts
(llama-quantize's reading of this format; an entry with no tokens gives ones).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

from . import _core
from .gguf import GGMLType, GGUFError, GGUFReader, GGUFValueType, GGUFWriter

if TYPE_CHECKING:
    from .model import Model

__all__ = ["Imatrix", "collect"]

IN_SUM2, COUNTS = ".in_sum2", ".counts"


@dataclass
class Imatrix:
    """entries: {tensor name: (float32 sums of squared inputs [cols], token count)}."""

    entries: dict[str, tuple[np.ndarray, int]] = field(default_factory=dict)
    chunk_count: int = 0
    chunk_size: int = 0
    datasets: list[str] = field(default_factory=list)

    def importance(self, name: str) -> np.ndarray | None:
        """The mean squared input per column of tensor `name` (None when the file has no entry for
        it); ones for an entry that saw no tokens, as llama-quantize does."""
        entry = self.entries.get(name)
        if entry is None:
            return None
        sums, count = entry
        if count <= 0:
            return np.ones_like(sums)
        return (sums / np.float32(count)).astype(np.float32)

    def save(self, path: str | os.PathLike) -> None:
        """Writes llama.cpp's imatrix GGUF (a temporary file renamed into place when complete)."""
        with GGUFWriter(path) as writer:
            writer.add_string("general.type", "imatrix")
            writer.add_array("imatrix.datasets", [str(d) for d in self.datasets], GGUFValueType.STRING)
            writer.add_uint32("imatrix.chunk_count", self.chunk_count)
            writer.add_uint32("imatrix.chunk_size", self.chunk_size)
            for name in sorted(self.entries):
                sums, count = self.entries[name]
                writer.add_tensor(name + IN_SUM2, np.asarray(sums, np.float32).reshape(1, -1), GGMLType.F32)
                writer.add_tensor(name + COUNTS, np.array([[count]], np.float32), GGMLType.F32)
            writer.write()

    @classmethod
    def load(cls, path: str | os.PathLike) -> Imatrix:
        """Reads llama.cpp's imatrix GGUF; GGUFError for anything else (a model file, the legacy .dat
        format, sums without counts, values that are not finite and nonnegative)."""
        with GGUFReader(path) as reader:
            md = reader.metadata
            if md.get("general.type") != "imatrix" and not any(n.endswith(IN_SUM2) for n in reader.tensors):
                raise GGUFError(f"{path}: not an imatrix file (general.type is {md.get('general.type')!r})")
            names = {}
            for tensor_name in reader.tensors:
                for suffix in (IN_SUM2, COUNTS):
                    if tensor_name.endswith(suffix):
                        names.setdefault(tensor_name[:-len(suffix)], set()).add(suffix)
                        break
                else:
                    raise GGUFError(f"{path}: tensor {tensor_name!r} is neither NAME.in_sum2 nor NAME.counts")
            entries = {}
            for name, parts in sorted(names.items()):
                if parts != {IN_SUM2, COUNTS}:
                    raise GGUFError(f"{path}: {name} has {'no counts' if COUNTS not in parts else 'no sums'}")
                sums_info, counts_info = reader.tensors[name + IN_SUM2], reader.tensors[name + COUNTS]
                if sums_info.type != GGMLType.F32 or counts_info.type != GGMLType.F32:
                    raise GGUFError(f"{path}: {name}'s sums and counts must be F32")
                sums = np.array(sums_info.data, np.float32).reshape(-1)
                counts = np.array(counts_info.data, np.float32).reshape(-1)
                if counts.size != 1 or sums.size == 0:
                    raise GGUFError(f"{path}: {name} has {counts.size} counts for {sums.size} sums "
                                    "(pyengine reads one matrix per tensor, not experts)")
                if not (np.all(np.isfinite(sums)) and np.all(sums >= 0) and np.isfinite(counts[0]) and counts[0] >= 0):
                    raise GGUFError(f"{path}: {name} holds values that are not finite and nonnegative")
                entries[name] = (sums, int(round(float(counts[0]))))
            datasets = md.get("imatrix.datasets", [])
            return cls(entries, reader.get_int("imatrix.chunk_count", 0), reader.get_int("imatrix.chunk_size", 0),
                       [str(d) for d in datasets] if isinstance(datasets, (list, tuple)) else [str(datasets)])


def collect(model: Model, text: str, n_ctx: int = 512, n_chunks: int | None = None,
            datasets: Sequence[str] = (), progress: Callable[[int, int], None] | None = None,
            inputs: Callable[[list[tuple[str, np.ndarray]]], None] | None = None) -> Imatrix:
    """Runs `model` over `text` in chunks of n_ctx tokens (at most n_chunks) and gathers the imatrix.
    progress(done, total) is called after each chunk; inputs, when given, after each chunk too, with
    the inputs of the layer matrices in that chunk (_core.InputRecorder.take: [(name, float32
    (n_tokens, cols))], one array shared by the matrices that read the same input)."""
    from .perplexity import chunk_tokens

    if model.n_ctx < n_ctx:
        raise ValueError(f"the model's context ({model.n_ctx}) is shorter than the chunk size {n_ctx}")
    chunks = chunk_tokens(model, text, n_ctx, n_chunks)
    collector = _core.ImatrixCollector(model._core)
    observers: list[_core.Observer] = [collector]
    if inputs is not None:
        observers.append(_core.InputRecorder(model._core))
    ctx = model.context(n_ctx)
    for i, chunk in enumerate(chunks):
        ctx.truncate(0)
        ctx._ctx.eval(model._pool, ctx._ids(chunk), False, observers)
        if inputs is not None:
            inputs(observers[1].take())
        if progress is not None:
            progress(i + 1, len(chunks))
    entries = {name: (sums, int(count)) for name, (sums, count) in collector.entries().items()}
    return Imatrix(entries, len(chunks), n_ctx, list(datasets))


def importance_for(imatrix: Imatrix | None, name: str, cols: int) -> np.ndarray | None:
    """The importance for tensor `name` of `cols` columns, None without an entry; ValueError when the
    entry's size does not match the tensor (an imatrix of another model)."""
    if imatrix is None:
        return None
    values = imatrix.importance(name)
    if values is not None and values.size != cols:
        raise ValueError(f"the imatrix entry for {name} has {values.size} values, the tensor {cols} columns "
                         "(an imatrix of another model?)")
    return values

