"""Re-quantizing a GGUF model file to another type, choosing per-tensor types as llama.cpp's
quantizer (llama-quantize) does, so that a file made here is the file llama.cpp would make.

llama.cpp's rules for the types pyengine supports:
- 1-D tensors (norms, biases) stay F32; so does anything whose row does not fit the block size.
- F32 / F16 / BF16 targets convert every 2-D tensor to that type.
- Quantized targets (q4_0, q4_1, q8_0): the output tensor (or token_embd when the output is tied to
  it) becomes Q8_0 when its row length is not a multiple of 256 (the k-quant super-block), and Q6_K
  otherwise; pyengine has no Q6_K, so it keeps Q8_0 there and says so. --pure skips these rules.

pyengine's own targets, nf4 and nf4_dq (llama.cpp cannot read them), follow the same rules: the
output (or tied token_embd) is kept at Q8_0, as for q4_0. A tensor whose rows do not fit the block
falls back to the next format whose block fits, as llama.cpp's k-quants fall back to 32-blocks:
nf4_dq (256) -> nf4 (64) -> q4_0 (32), each fallback noted in the report; F32 if none fits.
Every tensor is dequantized to F32 and quantized again with the reference quantizers (llama.cpp's
exact bytes). The output is written to a temporary file and renamed into place when complete.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from .gguf import PYENGINE_TYPES, TYPE_TRAITS, GGMLType, GGUFReader, GGUFWriter, type_by_name
from .quants import dequantize, quantize

# llama.cpp's llama_ftype values for general.file_type; pyengine's own types take 1000 and up, far
# outside llama.cpp's range (which ends below 100), so no llama.cpp ftype is ever taken for them.
FILE_TYPES = {GGMLType.F32: 0, GGMLType.F16: 1, GGMLType.Q4_0: 2, GGMLType.Q4_1: 3, GGMLType.Q8_0: 7,
              GGMLType.BF16: 32, GGMLType.NF4: 1000, GGMLType.NF4_DQ: 1001}
QUANTIZED_TARGETS = {GGMLType.Q4_0, GGMLType.Q4_1, GGMLType.Q8_0, GGMLType.NF4, GGMLType.NF4_DQ}
QK_K = 256  # llama.cpp's k-quant super-block
# The type a tensor gets when its rows are not a multiple of its target's block.
FALLBACK = {GGMLType.NF4_DQ: GGMLType.NF4, GGMLType.NF4: GGMLType.Q4_0}


@dataclass
class QuantizeReport:
    input_bytes: int = 0
    output_bytes: int = 0
    types: dict[str, str] = field(default_factory=dict)  # tensor -> type name written
    kept_higher: list[str] = field(default_factory=list)  # tensors kept above the target type
    notes: list[str] = field(default_factory=list)


def _bits_per_weight(ggml_type: GGMLType) -> float:
    traits = TYPE_TRAITS[ggml_type]
    return 8 * traits.type_size / traits.block_size


def _fitting_type(cols: int, target: GGMLType) -> GGMLType | None:
    """The target, or its first fallback, whose block divides a row of `cols`; None if none does."""
    ggml_type: GGMLType | None = target
    while ggml_type is not None and cols % TYPE_TRAITS[ggml_type].block_size != 0:
        ggml_type = FALLBACK.get(ggml_type)
    return ggml_type


def _tensor_type(name: str, dims: tuple[int, ...], target: GGMLType, has_output: bool, pure: bool,
                 output_type: GGMLType | None, embedding_type: GGMLType | None, notes: list[str]) -> GGMLType:
    fitting = _fitting_type(dims[0], target) if len(dims) >= 2 else None
    if fitting is None:
        return GGMLType.F32
    is_output = name == "output.weight" or (not has_output and name == "token_embd.weight")
    if is_output and output_type is not None:
        return output_type
    if name == "token_embd.weight" and embedding_type is not None:
        return embedding_type
    if not pure and target in QUANTIZED_TARGETS and is_output and target != GGMLType.Q8_0:
        if dims[0] % QK_K == 0 and target not in PYENGINE_TYPES:
            notes.append(f"{name}: llama.cpp would choose Q6_K here; pyengine has no Q6_K and keeps Q8_0")
        return GGMLType.Q8_0
    if fitting != target:
        notes.append(f"{name}: rows of {dims[0]} are not a multiple of the {TYPE_TRAITS[target].name} block "
                     f"({TYPE_TRAITS[target].block_size}); falls back to {TYPE_TRAITS[fitting].name}")
    return fitting


def quantize_model(src: str | os.PathLike, dst: str | os.PathLike, type: str, *, pure: bool = False,
                   output_tensor_type: str | None = None, token_embedding_type: str | None = None,
                   progress: bool = False) -> QuantizeReport:
    """Writes `src` re-quantized to `type` at `dst`; returns what was written."""
    target = type_by_name(type)
    if target not in FILE_TYPES:
        raise ValueError(f"cannot quantize a model to {type}")
    output_type = type_by_name(output_tensor_type) if output_tensor_type else None
    embedding_type = type_by_name(token_embedding_type) if token_embedding_type else None
    report = QuantizeReport()
    reader = GGUFReader(src)
    try:
        report.input_bytes = reader.file_size
        has_output = "output.weight" in reader.tensors
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=len(reader.tensors), unit="tensor", desc=f"quantizing to {TYPE_TRAITS[target].name}")
        with GGUFWriter(dst, alignment=reader.alignment) as writer:
            for key, value in reader.metadata.items():
                if key in ("general.alignment", "general.file_type", "general.quantization_version"):
                    continue
                t = reader.metadata_types[key]
                writer.add(key, value, t[0] if isinstance(t, tuple) else t, t[1] if isinstance(t, tuple) else None)
            writer.add_uint32("general.file_type", FILE_TYPES[target])
            if target in QUANTIZED_TARGETS - PYENGINE_TYPES:  # ggml's version of its block layouts
                writer.add_uint32("general.quantization_version", 2)
            for name, info in reader.tensors.items():
                new_type = _tensor_type(name, info.shape, target, has_output, pure, output_type, embedding_type,
                                        report.notes)
                cols = info.shape[0]
                rows = info.n_elements // cols
                if info.type == new_type:
                    data = np.asarray(info.data).reshape(rows, -1)
                else:
                    values = dequantize(np.asarray(info.data).reshape(-1), info.type.value, (rows, cols))
                    data = quantize(values, TYPE_TRAITS[new_type].name)
                if new_type == GGMLType.F32:
                    writer.add_tensor(name, data.view(np.float32).reshape(tuple(reversed(info.shape))))
                else:
                    writer.add_tensor(name, data.view(np.uint8), new_type, shape=info.shape)
                report.types[name] = TYPE_TRAITS[new_type].name
                if _bits_per_weight(new_type) > _bits_per_weight(target) and len(info.shape) >= 2:
                    report.kept_higher.append(f"{name} ({TYPE_TRAITS[new_type].name})")
                if bar is not None:
                    bar.update(1)
        if bar is not None:
            bar.close()
    finally:
        reader.close()
    report.output_bytes = os.path.getsize(dst)
    return report
