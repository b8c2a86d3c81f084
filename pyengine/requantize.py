"""Re-quantizing a GGUF model file to another type, choosing each tensor's type as llama.cpp's
quantizer (llama-quantize) does, so that a file made here has the tensor types of the file llama.cpp
would make; with an importance matrix (pyengine/imatrix.py), its weighted quantization too.

The type choice is `choose_tensor_types` (a pure function of the tensor names and shapes, a few
hyper-parameters and the preset); `quantize_model` applies it to a file. The rules are data:

- PRESETS: one row per target TYPE (llama.cpp's presets q4_k_m, q3_k_s, ..., the plain types q4_0,
  q8_0, f16, ..., and pyengine's own nf4, nf4_dq): its general.file_type (llama_ftype), its default
  tensor type, and the per-category rules that give some tensors more bits (attn_v, ffn_down,
  attn_output), each a list of (condition, type) of which the first that holds wins.
- The rules shared by every quantized preset (llama.cpp's llama_tensor_get_type_impl):
  the output tensor (or token_embd when the output is tied to it) becomes Q8_0 when its rows are not
  a multiple of the default type's block, else Q6_K (Q8_0 stays Q8_0); 80-layer "70B" models give
  attn_v Q5_K instead of Q3_K/Q4_K.
- FALLBACK: the type a tensor gets when its rows are not a multiple of its chosen type's block
  (llama.cpp's tensor_type_fallback), then F16 when that does not fit either.
- Tensors llama.cpp never quantizes (1-D tensors, norms, names not ending in "weight", ...) keep
  their type; so does every tensor under a float target (f32, f16, bf16 convert every 2-D weight).

Source: llama.cpp's src/llama-quant.cpp (tensor_allows_quantization, tensor_get_category,
llama_tensor_get_type_impl, llama_tensor_get_type, tensor_type_fallback, llama_ftype_get_default_type).
Left out: MoE rules (n_expert > 1 is refused), Falcon's own rules (pyengine does not run Falcon),
the IQ1/IQ2/IQ3/TQ/Q2_K_S/MXFP4 presets (they need an importance matrix or types pyengine lacks),
and --tensor-type overrides. With an importance matrix, llama.cpp's two rules that depend on one hold
(IQ4_NL/IQ4_XS keep the first eighth of ffn_down at their type instead of Q5_K; Q4_0/Q5_0 raise it to
Q4_1/Q5_1), and every tensor it has an entry for is quantized with its type's weighted search. The other architectures pyengine runs (qwen2,
qwen3, gemma3, phi3) follow the same rules as llama, with two differences that come from their
shapes or size only: phi3's fused attn_qkv counts as an attn_v (llama.cpp's attn_qkv branch below
the attn_v one is never reached), and qwen2 is "70B" at 80 layers whatever its GQA (llama only with
GQA). gemma3 ties its output to token_embd, so token_embd gets the output rule there.

pyengine's own targets, nf4 and nf4_dq (llama.cpp cannot read them), keep the output (or tied
token_embd) at Q8_0 and give no tensor more bits; their rows fall back nf4_dq (256) -> nf4 (64) ->
q4_0 (32). Every tensor is dequantized to F32 and quantized again with the reference quantizers
(llama.cpp's exact bytes). The output is written to a temporary file and renamed into place when
complete.
"""

from __future__ import annotations

import functools
import heapq
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from . import _core
from .gguf import (PYENGINE_TYPES, TYPE_TRAITS, GGMLType, GGUFError, GGUFReader, GGUFWriter, metadata_int,
                   tensor_nbytes, type_by_name)
from .imatrix import Imatrix, importance_for
from .calibrate import AWQ_GROUPS, Calibration, awq_search, gptq_quantize, has_codes
from .quants import dequantize, has_weighted_quantizer, quantize

G = GGMLType
QK_K = 256  # llama.cpp's k-quant super-block

FLOAT_TYPES = frozenset({G.F32, G.F16, G.BF16})

# A rule: (condition, type); the first whose condition holds gives the tensor's type. Conditions are
# over i (the tensor's index among its kind, in llama.cpp's tensor order), n (how many there are:
# the attn_v tensors for attn_v, the layer count for ffn_down), n_gqa (n_head / n_head_kv) and
# imatrix (whether an importance matrix is given: llama.cpp's qs.has_imatrix).
CONDITIONS = {
    "always": lambda i, n, n_gqa, imatrix: True,
    "n_gqa>=4": lambda i, n, n_gqa, imatrix: n_gqa >= 4,
    "i<2": lambda i, n, n_gqa, imatrix: i < 2,
    "i<4": lambda i, n, n_gqa, imatrix: i < 4,
    "i<n/8": lambda i, n, n_gqa, imatrix: i < n // 8,
    "i<n/16": lambda i, n, n_gqa, imatrix: i < n // 16,
    "i<n/8 without imatrix": lambda i, n, n_gqa, imatrix: i < n // 8 and not imatrix,
    "i<n/8 with imatrix": lambda i, n, n_gqa, imatrix: i < n // 8 and imatrix,
    # llama.cpp's use_more_bits: the first and last eighth of the layers, and every third between
    "more_bits": lambda i, n, n_gqa, imatrix: i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2,
}
Rules = tuple[tuple[str, GGMLType], ...]


@dataclass(frozen=True)
class Preset:
    name: str  # as the command line takes it, lower-case
    ftype: int  # general.file_type: llama.cpp's llama_ftype (pyengine's own from 1000 on)
    default: GGMLType  # every quantizable 2-D tensor, unless a rule below says otherwise
    attn_v: Rules = ()  # attn_v (and fused attn_qkv)
    ffn_down: Rules = ()
    attn_output: Rules = ()
    output: GGMLType | None = None  # a fixed type for the output tensor instead of llama.cpp's rule


_MORE_V_DOWN = dict(attn_v=(("more_bits", G.Q6_K),), ffn_down=(("more_bits", G.Q6_K),))
_IQ4 = dict(attn_v=(("n_gqa>=4", G.Q5_K),), ffn_down=(("i<n/8 without imatrix", G.Q5_K),))

PRESETS: dict[str, Preset] = {p.name: p for p in [
    Preset("f32", 0, G.F32),
    Preset("f16", 1, G.F16),
    Preset("bf16", 32, G.BF16),
    # with an imatrix, the first eighth of ffn_down one step up ("craziness" guard, llama.cpp says)
    Preset("q4_0", 2, G.Q4_0, ffn_down=(("i<n/8 with imatrix", G.Q4_1),)),
    Preset("q4_1", 3, G.Q4_1),
    Preset("q8_0", 7, G.Q8_0),
    Preset("q5_0", 8, G.Q5_0, ffn_down=(("i<n/8 with imatrix", G.Q5_1),)),
    Preset("q5_1", 9, G.Q5_1),
    Preset("q2_k", 10, G.Q2_K, attn_v=(("n_gqa>=4", G.Q4_K), ("always", G.Q3_K)),
           ffn_down=(("always", G.Q3_K),), attn_output=(("always", G.Q3_K),)),
    Preset("q3_k_s", 11, G.Q3_K),
    Preset("q3_k_m", 12, G.Q3_K, attn_v=(("i<2", G.Q5_K), ("always", G.Q4_K)),
           ffn_down=(("i<n/16", G.Q5_K), ("always", G.Q4_K)), attn_output=(("always", G.Q4_K),)),
    Preset("q3_k_l", 13, G.Q3_K, attn_v=(("always", G.Q5_K),), ffn_down=(("always", G.Q5_K),),
           attn_output=(("always", G.Q5_K),)),
    Preset("q4_k_s", 14, G.Q4_K, attn_v=(("i<4", G.Q5_K),), ffn_down=(("i<n/8", G.Q5_K),)),
    Preset("q4_k_m", 15, G.Q4_K, **_MORE_V_DOWN),
    Preset("q5_k_s", 16, G.Q5_K),
    Preset("q5_k_m", 17, G.Q5_K, **_MORE_V_DOWN),
    Preset("q6_k", 18, G.Q6_K),
    Preset("iq4_nl", 25, G.IQ4_NL, **_IQ4),
    Preset("iq4_xs", 30, G.IQ4_XS, **_IQ4),
    Preset("nf4", 1000, G.NF4, output=G.Q8_0),  # pyengine's own: outside llama.cpp's ftypes (< 100)
    Preset("nf4_dq", 1001, G.NF4_DQ, output=G.Q8_0),
]}
# llama-quantize's aliases: a plain k-quant type name means its _M preset.
ALIASES = {"q3_k": "q3_k_m", "q4_k": "q4_k_m", "q5_k": "q5_k_m"}

# The type a tensor gets when its rows are not a multiple of its type's block (then F16 if that does
# not fit either); llama.cpp's table, and pyengine's chain for its own types.
FALLBACK = {G.Q2_K: G.Q4_0, G.Q3_K: G.Q4_0, G.Q4_K: G.Q5_0, G.Q5_K: G.Q5_1, G.Q6_K: G.Q8_0,
            G.IQ4_XS: G.IQ4_NL, G.NF4_DQ: G.NF4, G.NF4: G.Q4_0}
# attn_v of an 80-layer "70B" model (8 heads share each attn_v): more bits at little cost.
ATTN_V_70B = {G.Q3_K: G.Q5_K, G.Q4_K: G.Q5_K}

# The file type of each preset named after its default type (what recipes and older callers use).
FILE_TYPES = {p.default: p.ftype for p in PRESETS.values() if p.name == p.default.name.lower()}
QUANTIZED_TARGETS = frozenset(p.default for p in PRESETS.values() if p.default not in FLOAT_TYPES)

# llama.cpp's tensor categories, by name: the first pattern found in the name wins.
_CATEGORIES = (("attn_qkv.weight", "attn_v"), ("attn_kv_b.weight", "attn_v"), ("attn_v.weight", "attn_v"),
               ("attn_k.weight", "attn_k"), ("attn_q.weight", "attn_q"), ("attn_output.weight", "attn_output"),
               ("ffn_up", "ffn_up"), ("ffn_gate", "ffn_gate"), ("ffn_down", "ffn_down"))
# Parts of names llama.cpp never quantizes (besides 1-D tensors and names not ending in "weight").
_NEVER_QUANTIZED = ("_norm.weight", "ffn_gate_inp.weight", "altup", "laurel", "per_layer_model_proj",
                    "ssm_conv1d", "shortconv.conv.weight", "attn_rel_b.weight", ".position_embd", ".rel_pos",
                    ".patch_embd", "time_mix_first.weight", "time_mix_w0.weight", "time_mix_w1.weight",
                    "time_mix_w2.weight", "time_mix_v0.weight", "time_mix_v1.weight", "time_mix_v2.weight",
                    "time_mix_a0.weight", "time_mix_a1.weight", "time_mix_a2.weight", "time_mix_g1.weight",
                    "time_mix_g2.weight", "time_mix_decay_w1.weight", "time_mix_decay_w2.weight",
                    "time_mix_lerp_fused.weight")
_NEVER_QUANTIZED_NAMES = ("position_embd.weight", "token_types.weight")
# "70B" in llama.cpp's quantizer: (arch, n_layer) -> whether grouped-query attention is required too.
_70B = {("llama", 80): True, ("qwen2", 80): False, ("deci", 80): False, ("olmo", 80): False,
        ("jais2", 68): False}


@dataclass(frozen=True)
class HParams:
    """The hyper-parameters llama.cpp's type choice reads."""

    n_layer: int  # {arch}.block_count
    n_head: int = 1  # {arch}.attention.head_count (of layer 0)
    n_head_kv: int | None = None  # {arch}.attention.head_count_kv (of layer 0); None: n_head
    arch: str = "llama"
    n_expert: int = 0

    @property
    def n_gqa(self) -> int:
        n_kv = self.n_head if self.n_head_kv is None else self.n_head_kv
        return self.n_head // n_kv if n_kv else 0

    @property
    def is_70b(self) -> bool:
        needs_gqa = _70B.get((self.arch, self.n_layer))
        n_kv = self.n_head if self.n_head_kv is None else self.n_head_kv
        return needs_gqa is not None and (not needs_gqa or self.n_head != n_kv)

    @classmethod
    def from_metadata(cls, metadata: Mapping, path: str = "metadata") -> HParams:
        """From a file's metadata (GGUFReader.metadata); GGUFError, naming path and the key, for a
        value that is not an integer (or a list of them, per layer: the first counts)."""
        arch = metadata.get("general.architecture", "llama")
        if not isinstance(arch, str):
            raise GGUFError(f"{path}: key 'general.architecture' must be a string, got {type(arch).__name__}")

        def first(key: str, default: int | None) -> int | None:
            return metadata_int(metadata, f"{arch}.{key}", default, path, first=True)

        return cls(n_layer=first("block_count", 0), n_head=first("attention.head_count", 0),
                   n_head_kv=first("attention.head_count_kv", None), arch=arch,
                   n_expert=first("expert_count", 0))


def preset_by_name(name: str) -> Preset:
    """The preset TYPE names ("Q4_K_M", "q8_0", "q4_k" = q4_k_m as in llama-quantize), case-insensitive;
    ValueError for any other name."""
    wanted = str(name).strip().lower()
    wanted = ALIASES.get(wanted, wanted)
    if wanted in PRESETS:
        return PRESETS[wanted]
    known = ", ".join(PRESETS)
    if wanted.upper() in GGMLType.__members__:
        raise ValueError(f"cannot quantize a model to tensor type {name!r}: not one of the presets ({known})")
    raise ValueError(f"unknown tensor type or preset {name!r} (known: {known})")


def tensor_type_by_name(name: str) -> GGMLType:
    """A tensor type for --output-tensor-type / --token-embedding-type; ValueError for any other, and
    for the activation-only types (Q8_1, Q8_K), which no engine multiplies as weights."""
    ggml_type = type_by_name(name)
    if not _core.is_weight_type(int(ggml_type)):
        raise ValueError(f"{name!r} is an activation type, not a weight type: a file with it would not load")
    return ggml_type


def block_size(ggml_type: GGMLType) -> int:
    return TYPE_TRAITS[ggml_type].block_size


def _category(name: str) -> str:
    if name == "output.weight":
        return "output"
    if name in ("token_embd.weight", "per_layer_token_embd.weight"):
        return "token_embd"
    for pattern, category in _CATEGORIES:
        if pattern in name:
            return category
    return "other"


def _allows_quantization(name: str, dims: tuple[int, ...]) -> bool:
    return (len(dims) >= 2 and name.endswith("weight") and name not in _NEVER_QUANTIZED_NAMES
            and not any(part in name for part in _NEVER_QUANTIZED))


_LAYER = re.compile(r"blk\.\s*([+-]?\d+)")


def _llamacpp_order(name: str) -> tuple[int, str]:
    """llama.cpp's order of the tensors (its counters count in it): by layer (others first), then name."""
    m = _LAYER.match(name)
    return (int(m.group(1)) if m else -1, name)


def _apply(rules: Rules, i: int, n: int, n_gqa: int, imatrix: bool, default: GGMLType) -> GGMLType:
    for condition, ggml_type in rules:
        if CONDITIONS[condition](i, n, n_gqa, imatrix):
            return ggml_type
    return default


def _output_rule(preset: Preset, cols: int) -> GGMLType:
    if preset.output is not None:
        return preset.output
    if cols % block_size(preset.default) != 0 or preset.default == G.Q8_0:
        return G.Q8_0
    return G.Q6_K


def _fitting(ggml_type: GGMLType, cols: int) -> GGMLType:
    """ggml_type, or its fallback whose block divides a row of `cols`; F16 when none does."""
    while cols % block_size(ggml_type) != 0:
        if ggml_type not in FALLBACK:
            return G.F16
        ggml_type = FALLBACK[ggml_type]
    return ggml_type


TensorSpec = tuple[str, Sequence[int]] | tuple[str, Sequence[int], "GGMLType | str"]


def _choose(tensors: Iterable[TensorSpec], hparams: HParams, preset: Preset, pure: bool,
            output_type: GGMLType | None, embedding_type: GGMLType | None,
            fallbacks: dict[str, GGMLType] | None = None, imatrix: bool = False) -> dict[str, GGMLType]:
    """choose_tensor_types on GGMLTypes; `fallbacks` receives {tensor: the type it did not fit}."""
    if hparams.n_expert > 1:
        raise ValueError(f"{hparams.arch} with {hparams.n_expert} experts: pyengine does not quantize "
                         "mixture-of-experts models")
    specs = []
    for spec in tensors:
        name, dims = spec[0], tuple(int(d) for d in spec[1])
        source = spec[2] if len(spec) > 2 else G.F32
        specs.append((name, dims, tensor_type_by_name(source) if isinstance(source, str) else GGMLType(source)))
    tied = not any(name == "output.weight" for name, _, _ in specs)
    n_attn_v = sum(_category(name) == "attn_v" for name, _, _ in specs)
    quantized = preset.default not in FLOAT_TYPES
    i_attn_v = i_ffn_down = 0
    chosen: dict[str, GGMLType] = {}
    for name, dims, source in sorted(specs, key=lambda s: _llamacpp_order(s[0])):
        category = _category(name)
        if not _allows_quantization(name, dims):
            chosen[name] = source
            continue
        if embedding_type is not None and category == "token_embd":
            chosen[name] = embedding_type
            continue
        if output_type is not None and category == "output":
            chosen[name] = output_type
            continue
        new = preset.default
        if quantized and not pure:  # the rules (the counters count only here, as llama.cpp's)
            if category == "output" or (tied and category == "token_embd"):
                new = output_type if output_type is not None else _output_rule(preset, dims[0])
            elif category == "attn_v":
                new = _apply(preset.attn_v, i_attn_v, n_attn_v, hparams.n_gqa, imatrix, new)
                if hparams.is_70b:
                    new = ATTN_V_70B.get(new, new)
                i_attn_v += 1
            elif category == "ffn_down":
                new = _apply(preset.ffn_down, i_ffn_down, hparams.n_layer, hparams.n_gqa, imatrix, new)
                i_ffn_down += 1
            elif category == "attn_output":
                new = _apply(preset.attn_output, 0, 0, hparams.n_gqa, imatrix, new)
        if quantized:  # float targets never fall back
            fitting = _fitting(new, dims[0])
            if fitting != new and fallbacks is not None:
                fallbacks[name] = new
            new = fitting
        chosen[name] = new
    return {spec[0]: chosen[spec[0]] for spec in specs}  # in the order given


def choose_tensor_types(tensors: Iterable[TensorSpec], hparams: HParams, preset: str | Preset, *,
                        pure: bool = False, output_tensor_type: str | None = None,
                        token_embedding_type: str | None = None, imatrix: bool = False) -> dict[str, str]:
    """{tensor name: type name} as llama.cpp's quantizer chooses them (imatrix: with an importance
    matrix given, which changes a few rules).

    tensors: (name, shape) or (name, shape, source type) for every tensor of the model, the shape in
    GGUF's order (the row length first, as GGUFReader's TensorInfo.shape); the source type (default
    f32) is what a tensor llama.cpp never quantizes keeps. hparams: HParams (HParams.from_metadata of
    the file's metadata). preset: a TYPE name ("q4_k_m", "Q5_0", ...) or a Preset. pure,
    output_tensor_type, token_embedding_type: llama-quantize's --pure, --output-tensor-type,
    --token-embedding-type. Type names are ggml's, lower-case ("q6_k", "f32")."""
    if not isinstance(preset, Preset):
        preset = preset_by_name(preset)
    output_type = tensor_type_by_name(output_tensor_type) if output_tensor_type else None
    embedding_type = tensor_type_by_name(token_embedding_type) if token_embedding_type else None
    chosen = _choose(tensors, hparams, preset, pure, output_type, embedding_type, imatrix=imatrix)
    return {name: t.name.lower() for name, t in chosen.items()}


def _can_write(ggml_type: GGMLType) -> bool:
    return ggml_type in TYPE_TRAITS


def _label(ggml_type: GGMLType) -> str:
    return ggml_type.name.lower()


@dataclass
class QuantizeReport:
    input_bytes: int = 0
    output_bytes: int = 0
    types: dict[str, str] = field(default_factory=dict)  # tensor -> type name written
    kept_higher: list[str] = field(default_factory=list)  # tensors kept above the target type
    weighted: list[str] = field(default_factory=list)  # tensors quantized with the imatrix's importance
    gptq: list[str] = field(default_factory=list)  # tensors rounded by GPTQ
    awq: list[str] = field(default_factory=list)  # norms AWQ's scales were folded into
    awq_error: tuple[float, float] = (0.0, 0.0)  # the scaled matrices' output error before and after AWQ
    awq_scales: dict[str, np.ndarray] = field(default_factory=dict)  # {matrix or norm: s} as applied
    promoted: list[str] = field(default_factory=list)  # "name (q4_k -> q5_k)", in order: outliers' extra bits
    notes: list[str] = field(default_factory=list)


def _bits_per_weight(ggml_type: GGMLType) -> float:
    traits = TYPE_TRAITS[ggml_type]
    return 8 * traits.type_size / traits.block_size


def plan_types(tensors: Sequence[tuple[str, Sequence[int], GGMLType]], hparams: HParams, preset: Preset, *,
               pure: bool = False, output_type: GGMLType | None = None, embedding_type: GGMLType | None = None,
               notes: list[str] | None = None, imatrix: bool = False) -> dict[str, GGMLType]:
    """The type to write for each (name, GGUF shape, source type): llama.cpp's choice
    (choose_tensor_types), checked against what this build can write. ValueError, before anything is
    written, for a type it has no quantizer for or a
    row its block does not divide. `notes` receives a line per fallback."""
    notes = [] if notes is None else notes
    fallbacks: dict[str, GGMLType] = {}
    chosen = _choose(tensors, hparams, preset, pure, output_type, embedding_type, fallbacks, imatrix)
    for name, shape, source in tensors:
        new, cols = chosen[name], int(shape[0])
        if name in fallbacks:
            notes.append(f"{name}: rows of {cols} are not a multiple of the {_label(fallbacks[name])} block "
                         f"({block_size(fallbacks[name])}); falls back to {_label(new)}")
        if new == source:
            continue
        if not _can_write(new):
            raise ValueError(f"tensor type {_label(new)} (for {name}) has no quantizer in this build of pyengine")
        if cols % block_size(new) != 0:
            raise ValueError(f"{name}: rows of {cols} are not a multiple of the {_label(new)} block "
                             f"({block_size(new)})")
    return chosen


# One step up for a promotion (quantize_model's outliers): the next type of the ladder whose block
# divides the same rows (every K type's 256 is a multiple of Q8_0's 32; the 32-blocks go to Q8_0).
PROMOTION = {G.Q2_K: G.Q3_K, G.Q3_K: G.Q4_K, G.Q4_K: G.Q5_K, G.Q5_K: G.Q6_K, G.Q6_K: G.Q8_0,
             G.IQ4_XS: G.Q5_K, G.IQ4_NL: G.Q8_0, G.Q4_0: G.Q8_0, G.Q4_1: G.Q8_0, G.Q5_0: G.Q8_0,
             G.Q5_1: G.Q8_0}


def _weights(ggml_type: GGMLType, importance: np.ndarray | None) -> np.ndarray | None:
    """The importance a tensor of this type is quantized with: its type's weighted search, where it
    has one (Q8_0 and the float types have none, as in llama.cpp)."""
    return importance if has_weighted_quantizer(ggml_type) else None


def _outlier_promotions(reader: GGUFReader, plan: dict[str, GGMLType], importance: Mapping[str, np.ndarray | None],
                        budget: float, report: QuantizeReport) -> None:
    """The seeds' channel separation ("the channels where outliers concentrate, kept at higher
    precision") at the granularity a GGUF file has, the tensor. Each matrix's error is weighted by its
    input columns' importance h (the calibration's mean squared activation per column, in which the
    outlier channels dominate) and taken relative to its output's energy: sum h (W - Q(W))^2 /
    sum h W^2, i.e. E|(W - Q(W)) x|^2 / E|W x|^2 over the calibration's x (columns independent), with
    Q the weighted quantizer of the type. Matrices move up PROMOTION's ladder a step at a time, the
    largest error reduction per added byte first, while the added bytes stay within `budget` (a
    fraction) of the planned file. Updates `plan` in place; matrices without importance (token_embd)
    keep their type."""

    def values_of(name: str) -> np.ndarray:
        info = reader.tensors[name]
        return dequantize(np.asarray(info.data).reshape(-1), info.type.value, (info.n_elements // info.shape[0],
                                                                               info.shape[0]))

    def errors(name: str, types: Sequence[GGMLType]) -> list[float]:
        w, h = values_of(name), importance[name].astype(np.float64)
        energy = float((w.astype(np.float64) ** 2 @ h).sum()) or 1.0
        out = []
        for t in types:
            q = dequantize(quantize(w, int(t), imatrix=_weights(t, importance[name])), int(t), w.shape)
            out.append(float(((w - q).astype(np.float64) ** 2 @ h).sum()) / energy)
        return out

    allowance = budget * sum(tensor_nbytes(i.shape, plan[n]) for n, i in reader.tensors.items())
    heap = []  # (-error reduction per added byte, name, from, to, added bytes, error at `to`)

    def push(name: str, current: GGMLType, err: float | None) -> None:
        up, info = PROMOTION.get(current), reader.tensors[name]
        if up is None or not _can_write(up) or info.shape[0] % block_size(up) != 0:
            return
        cost = tensor_nbytes(info.shape, up) - tensor_nbytes(info.shape, current)
        if not 0 < cost <= allowance:
            return
        if err is None:
            err, err_up = errors(name, [current, up])
        else:
            (err_up,) = errors(name, [up])
        if err_up < err:
            heapq.heappush(heap, (-(err - err_up) / cost, name, current, up, cost, err_up))

    for name, info in reader.tensors.items():
        if len(info.shape) == 2 and importance.get(name) is not None and plan[name] in PROMOTION:
            push(name, plan[name], None)
    spent = 0
    while heap:
        _, name, current, up, cost, err_up = heapq.heappop(heap)
        if spent + cost > allowance:
            continue
        plan[name] = up
        spent += cost
        report.promoted.append(f"{name} ({_label(current)} -> {_label(up)})")
        push(name, up, err_up)


def _awq_scales(reader: GGUFReader, plan: Mapping[str, GGMLType], calibration: Calibration,
                importance: Mapping[str, np.ndarray | None], report: QuantizeReport) -> dict[str, np.ndarray]:
    """AWQ's column scales of each group of matrices behind a norm ({matrix or norm name: s}: a matrix
    is written as W * s, the norm's weight as weight / s), each searched for the group's types."""
    scales: dict[str, np.ndarray] = {}
    before = after = 0.0
    for norm_name, info in reader.tensors.items():
        m = _LAYER.match(norm_name)
        norm = norm_name[m.end() + 1:-len(".weight")] if m else None
        if norm not in AWQ_GROUPS or info.type != G.F32 or len(info.shape) != 1:
            continue
        names = [f"blk.{m.group(1)}.{matrix}.weight" for matrix in AWQ_GROUPS[norm]]
        names = [n for n in names if n in reader.tensors and calibration.hessian(n) is not None
                 and plan[n] not in FLOAT_TYPES]
        if not names:
            continue
        matrices = []
        for n in names:
            t = reader.tensors[n]
            matrices.append((dequantize(np.asarray(t.data).reshape(-1), t.type.value,
                                        (t.n_elements // t.shape[0], t.shape[0])), int(plan[n])))
        s, err0, err1 = awq_search(matrices, calibration.hessian(names[0]), calibration.mean_abs(names[0]),
                                   importance[names[0]])
        before, after = before + err0, after + err1
        for n in [norm_name, *names]:
            scales[n] = s
        report.awq.append(norm_name)
    report.awq_error = (before, after)
    return scales


def _requantized(name: str, info, new_type: GGMLType, s: np.ndarray | None, importance: np.ndarray | None,
                 calibration: Calibration | None, report: QuantizeReport, bar) -> np.ndarray:
    """Tensor `name` of the input file (info) in new_type: its own bytes where nothing changes, else
    its values (times the AWQ scales s, or over them for a norm) quantized with its importance where
    the type has a weighted search, by GPTQ where a calibration is given and has the matrix's inputs;
    float32 values for F32, uint8 block bytes otherwise. Says what it did in report."""
    cols = info.shape[0]
    rows = info.n_elements // cols
    hessian = calibration.hessian(name) if calibration is not None and has_codes(new_type) else None
    if info.type == new_type and s is None and hessian is None:
        data = np.asarray(info.data).reshape(rows, -1)
    else:
        if info.type == G.F32:  # the mapped values themselves: every step below makes new arrays
            values = np.asarray(info.data).reshape(rows, cols)
        else:
            values = dequantize(np.asarray(info.data).reshape(-1), info.type.value, (rows, cols))
        weights = _weights(new_type, importance)
        if s is not None and len(info.shape) == 1:  # a norm: weight / s
            values = values / s
        elif s is not None:  # a matrix behind it: W * s, its input x / s
            values = values * s
            weights = None if weights is None else weights / s.astype(np.float64) ** 2
            hessian = None if hessian is None else hessian / np.outer(s, s)
        if weights is not None:
            report.weighted.append(name)
        if new_type == G.F32:
            data = values
        elif hessian is not None:
            data = gptq_quantize(values, int(new_type), hessian, weights)
            report.gptq.append(name)
        else:
            data = quantize(values, int(new_type), imatrix=weights)
    if bar is not None:
        bar.update(info.n_elements)
    return data.view(np.float32) if new_type == G.F32 else data.view(np.uint8)


def quantize_model(src: str | os.PathLike, dst: str | os.PathLike, type: str, *, pure: bool = False,
                   output_tensor_type: str | None = None, token_embedding_type: str | None = None,
                   progress: bool = False, imatrix: Imatrix | None = None, calibration: Calibration | None = None,
                   gptq: bool = False, awq: bool | Mapping[str, np.ndarray] = False,
                   outliers: float = 0.0) -> QuantizeReport:
    """Writes `src` re-quantized to `type` (a preset: "q4_k_m", "Q8_0", "nf4", ...; see PRESETS) at
    `dst`, each tensor in the type choose_tensor_types gives; returns what was written.

    imatrix: an importance matrix (pyengine.imatrix.Imatrix, e.g. Imatrix.load of llama-imatrix's
    file): each tensor it has an entry for is quantized with the weighted search of its type (where
    the type has one: Q8_0 and the float types have none, as in llama.cpp), and the type choice takes
    llama.cpp's imatrix rules. Tensors without an entry are quantized plainly, as llama-quantize does.

    calibration: pyengine.calibrate's statistics of a calibration text, whose imatrix serves as
    `imatrix` (give one or the other); with it, awq scales the matrices behind each input norm (the
    scales folded into the norm) and gptq rounds every layer matrix by GPTQ (pyengine/calibrate.py).
    awq may also be the scales to apply ({matrix or norm name: s}, a report's awq_scales).

    outliers: a fraction of the file (0.01: 1%) that the matrices where the importance's outlier
    channels make the most error may take in extra bits, a type up each (_outlier_promotions; needs
    an imatrix or a calibration)."""
    if calibration is not None:
        if imatrix is not None:
            raise ValueError("give an imatrix or a calibration, not both")
        imatrix = calibration.imatrix
    elif gptq or awq is True:
        raise ValueError("GPTQ and AWQ need a calibration (the inputs' statistics, not only an imatrix)")
    if outliers and imatrix is None:
        raise ValueError("outliers are found in an importance matrix or a calibration: give one")
    if not 0 <= outliers < 1:
        raise ValueError(f"outliers is a fraction of the file, 0 <= outliers < 1, not {outliers}")
    preset = preset_by_name(type)
    output_type = tensor_type_by_name(output_tensor_type) if output_tensor_type else None
    embedding_type = tensor_type_by_name(token_embedding_type) if token_embedding_type else None
    report = QuantizeReport()
    reader = GGUFReader(src)
    try:
        report.input_bytes = reader.file_size
        tensors = [(name, info.shape, info.type) for name, info in reader.tensors.items()]
        plan = plan_types(tensors, HParams.from_metadata(reader.metadata, str(reader.path)), preset, pure=pure,
                          output_type=output_type, embedding_type=embedding_type, notes=report.notes,
                          imatrix=imatrix is not None)
        # each tensor's importance (its size checked) before anything is written
        importance = {name: importance_for(imatrix, name, info.shape[0]) for name, info in reader.tensors.items()}
        bar = None
        if progress:
            from tqdm import tqdm

            # counted in weights: one output matrix can take longer than all the norms together
            bar = tqdm(total=sum(info.n_elements for info in reader.tensors.values()), unit="w", unit_scale=True,
                       desc=f"quantizing to {preset.name}")
        if outliers:
            _outlier_promotions(reader, plan, importance, outliers, report)
        if awq is True:
            report.awq_scales = _awq_scales(reader, plan, calibration, importance, report)
        elif awq:
            report.awq_scales = {name: np.asarray(s, np.float32) for name, s in awq.items()}
        scales = report.awq_scales
        with GGUFWriter(dst, alignment=reader.alignment) as writer:
            for key in reader.metadata:
                if key not in ("general.alignment", "general.file_type", "general.quantization_version"):
                    writer.copy_key(reader, key)
            writer.add_uint32("general.file_type", preset.ftype)
            if preset.default in QUANTIZED_TARGETS - PYENGINE_TYPES:  # ggml's version of its block layouts
                writer.add_uint32("general.quantization_version", 2)
            target_bits = _bits_per_weight(preset.default) if preset.default in TYPE_TRAITS else None
            for name, info in reader.tensors.items():
                new_type = plan[name]
                # made when the writer comes to it: one tensor's new bytes in memory at a time
                writer.add_tensor(name, functools.partial(_requantized, name, info, new_type, scales.get(name),
                                                          importance[name], calibration if gptq else None,
                                                          report, bar),
                                  new_type, shape=info.shape)
                report.types[name] = _label(new_type)
                if (target_bits is not None and len(info.shape) >= 2
                        and _bits_per_weight(new_type) > target_bits):
                    report.kept_higher.append(f"{name} ({_label(new_type)})")
        if bar is not None:
            bar.close()
    finally:
        reader.close()
    report.output_bytes = os.path.getsize(dst)
    return report
