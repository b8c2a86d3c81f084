"""Architectures: each described once, as data. A description names the hyper-parameter keys the file
must or may hold (under `general.architecture`'s name), the tensors with their shapes (which are
optional), and the per-layer recipe (RoPE style, activation, embedding scale, sliding windows, ...).
`read_config` validates a file against its description once, when it is read, and gives the typed
`ModelConfig` that the native block function runs on (cpp/model.h).

Adding an architecture is a description here plus the operations it needs in the block function.
llama.cpp's `src/models/<arch>.cpp` and `src/llama-arch.cpp` are the reference for each recipe.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from . import _core
from .gguf import GGMLType, GGUFError, GGUFReader

# --------------------------------------------------------------------------------------------------
# Hyper-parameters, and what the block function is given
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelConfig:
    """The validated hyper-parameters of one file (see cpp/model.h: ModelConfig for each field)."""

    arch: str
    n_layers: int
    n_embd: int
    n_ff: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    n_rot: int
    n_vocab: int
    n_ctx_train: int
    rope_theta: float
    rms_eps: float
    rope_style: str = "adjacent"        # "adjacent" (llama's GGUF) or "halves" (NeoX)
    activation: str = "silu"            # "silu" (SwiGLU) or "gelu_tanh" (GeGLU)
    rope_theta_local: float = 10000.0   # the RoPE base of sliding-window layers
    rope_scale: float = 1.0             # linear RoPE scaling: positions times this
    rope_attn_factor: float = 1.0       # LongRoPE: cos and sin times this
    rope_factors: tuple[float, ...] = ()  # divisors of the RoPE frequencies (n_rot / 2), or none
    embd_scale: float = 1.0
    attn_scale: float = 0.0             # 0: 1 / sqrt(head_dim)
    windows: tuple[int, ...] = ()       # per layer: 0 (global) or the sliding window; () none

    @property
    def q_dim(self) -> int:
        return self.n_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.n_kv_heads * self.head_dim

    def native(self) -> _core.ModelConfig:
        c = _core.ModelConfig()
        for name in ("n_layers", "n_embd", "n_ff", "n_heads", "n_kv_heads", "head_dim", "n_rot", "n_vocab",
                     "rope_theta", "rope_theta_local", "rope_scale", "rope_attn_factor", "rms_eps", "embd_scale",
                     "attn_scale"):
            setattr(c, name, getattr(self, name))
        c.rope_factors = list(self.rope_factors)
        c.windows = list(self.windows)
        c.rope_style = {"adjacent": _core.RopeStyle.ADJACENT, "halves": _core.RopeStyle.HALVES}[self.rope_style]
        c.activation = {"silu": _core.Activation.SILU, "gelu_tanh": _core.Activation.GELU_TANH}[self.activation]
        return c


Shape = Callable[[ModelConfig], tuple]


@dataclass(frozen=True)
class Tensor:
    """A tensor of the architecture: its name (in each block `blk.N.` for layer tensors), its shape as
    (rows, cols) of a matrix or (n,) of a vector, and whether a file may leave it out."""

    name: str
    shape: Shape
    optional: bool = False


def _vector(n: Callable[[ModelConfig], int]) -> Shape:
    return lambda c: (n(c),)


EMBD = _vector(lambda c: c.n_embd)
HEAD = _vector(lambda c: c.head_dim)

# The llama block's tensors, which most architectures share.
ATTN_NORM = Tensor("attn_norm.weight", EMBD)
ATTN_Q = Tensor("attn_q.weight", lambda c: (c.q_dim, c.n_embd))
ATTN_K = Tensor("attn_k.weight", lambda c: (c.kv_dim, c.n_embd))
ATTN_V = Tensor("attn_v.weight", lambda c: (c.kv_dim, c.n_embd))
ATTN_OUT = Tensor("attn_output.weight", lambda c: (c.n_embd, c.q_dim))
FFN_NORM = Tensor("ffn_norm.weight", EMBD)
FFN_GATE = Tensor("ffn_gate.weight", lambda c: (c.n_ff, c.n_embd))
FFN_UP = Tensor("ffn_up.weight", lambda c: (c.n_ff, c.n_embd))
FFN_DOWN = Tensor("ffn_down.weight", lambda c: (c.n_embd, c.n_ff))
LLAMA_LAYER = (ATTN_NORM, ATTN_Q, ATTN_K, ATTN_V, ATTN_OUT, FFN_NORM, FFN_GATE, FFN_UP, FFN_DOWN)

QK_NORMS = (Tensor("attn_q_norm.weight", HEAD), Tensor("attn_k_norm.weight", HEAD))
QKV_BIASES = (Tensor("attn_q.bias", _vector(lambda c: c.q_dim)), Tensor("attn_k.bias", _vector(lambda c: c.kv_dim)),
              Tensor("attn_v.bias", _vector(lambda c: c.kv_dim)))

ROPE_FACTORS = _vector(lambda c: c.n_rot // 2)


@dataclass(frozen=True)
class Architecture:
    """One architecture, described: its block's tensors, the global tensors beyond token_embd,
    output_norm and output (optional: tied), and its recipe."""

    name: str
    summary: str
    layer: tuple[Tensor, ...]
    rope_style: str
    activation: str = "silu"
    head_dim_from_key_length: bool = True  # attention.key_length sets the head dimension when present
    extra_tensors: tuple[Tensor, ...] = ()
    # Reads what the recipe needs beyond the common keys, given the context length the model will
    # run: returns fields of ModelConfig to replace.
    recipe: Callable[[Keys, ModelConfig, dict, int], dict] = field(default=lambda keys, c, tensors, n_ctx: {})


class Keys:
    """Checked reads of `<arch>.<key>` metadata: a missing required key, a value of the wrong type or
    out of range is a GGUFError naming the key."""

    def __init__(self, reader: GGUFReader, arch: str) -> None:
        self.reader, self.prefix = reader, arch + "."

    def error(self, key: str, why: str) -> GGUFError:
        return GGUFError(f"{self.reader.path}: metadata key {self.prefix}{key} {why}")

    def has(self, key: str) -> bool:
        return self.prefix + key in self.reader.metadata

    def int(self, key: str, default: int | None = None, minimum: int = 1) -> int:
        value = self.reader.get(self.prefix + key, default)
        if value is None:
            raise GGUFError(f"{self.reader.path}: missing metadata key {self.prefix}{key}")
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
            raise self.error(key, f"must be an integer, got {type(value).__name__}")
        if not minimum <= int(value) < 2**31:
            raise self.error(key, f"= {value} is out of range")
        return int(value)

    def float(self, key: str, default: float) -> float:
        value = self.reader.get(self.prefix + key, default)
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.floating, np.integer)):
            raise self.error(key, f"must be a number, got {type(value).__name__}")
        value = float(value)
        if not math.isfinite(value) or value <= 0:
            raise self.error(key, f"= {value} is out of range")
        return value

    def str(self, key: str, default: str) -> str:
        value = self.reader.get(self.prefix + key, default)
        if not isinstance(value, str):
            raise self.error(key, f"must be a string, got {type(value).__name__}")
        return value


def _float_vector(tensors: dict, name: str, n: int, path: str) -> tuple[float, ...]:
    info = tensors[name]
    if int(info.type) != GGMLType.F32 or tuple(info.shape) != (n,):
        raise GGUFError(f"{path}: tensor {name} must be {n} float32 values")
    values = np.asarray(info.data, dtype=np.float32).reshape(-1)
    if not (np.isfinite(values).all() and (values > 0).all()):
        raise GGUFError(f"{path}: tensor {name} holds values that are not positive")
    return tuple(float(v) for v in values)


# --------------------------------------------------------------------------------------------------
# The recipes
# --------------------------------------------------------------------------------------------------


def _llama_recipe(keys: Keys, c: ModelConfig, tensors: dict, n_ctx: int) -> dict:
    # Llama 3.1 and later store their RoPE scaling as frequency factors, one tensor for every layer.
    if "rope_freqs.weight" in tensors:
        return dict(rope_factors=_float_vector(tensors, "rope_freqs.weight", c.n_rot // 2, keys.reader.path))
    return {}


def _gemma3_recipe(keys: Keys, c: ModelConfig, tensors: dict, n_ctx: int) -> dict:
    softcap = keys.reader.get(keys.prefix + "final_logit_softcapping", 0)
    if isinstance(softcap, (bool, np.bool_)) or not isinstance(softcap, (int, float, np.integer, np.floating)) \
            or softcap != 0:
        raise GGUFError(f"{keys.reader.path}: final logit soft-capping ({keys.prefix}final_logit_softcapping) "
                        "is not supported")
    # Sliding-window attention on 5 of every 6 layers (attention.sliding_window_pattern changes the
    # period; the last layer of each period is global), the local layers with their own RoPE base.
    windows = ()
    if keys.has("attention.sliding_window"):
        window = keys.int("attention.sliding_window", minimum=0)
        if window > 0:
            pattern = keys.reader.get(keys.prefix + "attention.sliding_window_pattern", 6)
            if isinstance(pattern, (list, tuple, np.ndarray)):
                if len(pattern) != c.n_layers or not all(isinstance(v, (bool, np.bool_)) for v in pattern):
                    raise keys.error("attention.sliding_window_pattern", "must hold one bool per layer")
                local = [bool(v) for v in pattern]
            else:
                period = keys.int("attention.sliding_window_pattern", 6, minimum=0)
                local = [period == 0 or layer % period < period - 1 for layer in range(c.n_layers)]
            windows = tuple(window if is_local else 0 for is_local in local)
    # Gemma's query scale: 1/sqrt(head_dim), except the 27B model's (62 layers), 1/sqrt(n_embd / n_heads).
    scale_dim = c.n_embd // c.n_heads if c.n_layers == 62 else c.head_dim
    return dict(embd_scale=float(np.sqrt(np.float32(c.n_embd))), attn_scale=float(1.0 / np.sqrt(np.float32(scale_dim))),
                windows=windows, rope_theta_local=keys.float("rope.freq_base_swa", 10000.0))


def _phi3_recipe(keys: Keys, c: ModelConfig, tensors: dict, n_ctx: int) -> dict:
    # LongRoPE: frequency factors for contexts up to the original length ("short") and beyond it
    # ("long"), and an attention factor on cos and sin. Phi's sliding window is not applied, as in
    # llama.cpp (its files do not say which layers would use it).
    out = dict(rope_attn_factor=keys.float("rope.scaling.attn_factor", 1.0))
    path = keys.reader.path
    factors = {kind: _float_vector(tensors, f"rope_factors_{kind}.weight", c.n_rot // 2, path)
               for kind in ("long", "short") if f"rope_factors_{kind}.weight" in tensors}
    if len(factors) == 1:
        missing = "short" if "long" in factors else "long"
        raise GGUFError(f"{path}: tensor rope_factors_{missing}.weight is missing "
                        "(rope_factors_long.weight and rope_factors_short.weight come together)")
    if factors:  # the long factors when the context exceeds the original one, as llama.cpp
        n_ctx_orig = keys.int("rope.scaling.original_context_length", c.n_ctx_train)
        out["rope_factors"] = factors["long" if n_ctx > n_ctx_orig else "short"]
    return out


ARCHITECTURES: dict[str, Architecture] = {a.name: a for a in [
    Architecture("llama", "RMSNorm, RoPE on adjacent pairs, SwiGLU", LLAMA_LAYER, rope_style="adjacent",
                 extra_tensors=(Tensor("rope_freqs.weight", ROPE_FACTORS, optional=True),), recipe=_llama_recipe),
    Architecture("qwen2", "llama with q/k/v biases and NeoX RoPE", LLAMA_LAYER + QKV_BIASES, rope_style="halves"),
    Architecture("qwen3", "llama with per-head RMS norms of q and k, NeoX RoPE", LLAMA_LAYER + QK_NORMS,
                 rope_style="halves"),
    Architecture("gemma3", "embeddings x sqrt(n_embd), q/k norms, post-attention and post-FFN norms, GeGLU, "
                 "sliding-window attention on 5 of 6 layers with a local RoPE base", LLAMA_LAYER + QK_NORMS + (
                     Tensor("post_attention_norm.weight", EMBD), Tensor("post_ffw_norm.weight", EMBD)),
                 rope_style="halves", activation="gelu_tanh", recipe=_gemma3_recipe),
    Architecture("phi3", "fused qkv and gate-up, partial NeoX RoPE with LongRoPE factors", (
        ATTN_NORM, Tensor("attn_qkv.weight", lambda c: (c.q_dim + 2 * c.kv_dim, c.n_embd)), ATTN_OUT, FFN_NORM,
        Tensor("ffn_up.weight", lambda c: (2 * c.n_ff, c.n_embd)), FFN_DOWN), rope_style="halves",
        head_dim_from_key_length=False,
        extra_tensors=(Tensor("rope_factors_long.weight", ROPE_FACTORS, optional=True),
                       Tensor("rope_factors_short.weight", ROPE_FACTORS, optional=True)), recipe=_phi3_recipe),
]}

GLOBAL_TENSORS = (Tensor("token_embd.weight", lambda c: (c.n_vocab, c.n_embd)), Tensor("output_norm.weight", EMBD),
                  Tensor("output.weight", lambda c: (c.n_vocab, c.n_embd), optional=True))

ROPE_SCALING = ("none", "linear", "longrope")


def architecture_of(reader: GGUFReader) -> Architecture:
    arch = reader.get("general.architecture")
    if not isinstance(arch, str):
        raise GGUFError(f"{reader.path}: general.architecture is missing")
    if arch not in ARCHITECTURES:
        raise GGUFError(f"{reader.path}: architecture {arch[:60]!r} is not supported "
                        f"(pyengine runs {', '.join(ARCHITECTURES)})")
    return ARCHITECTURES[arch]


def _shape(info) -> tuple:
    """(rows, cols) of a GGUF matrix (dims [cols, rows]), (n,) of a vector."""
    return tuple(int(d) for d in reversed(info.shape))


def read_config(reader: GGUFReader, n_ctx: int | None = None) -> ModelConfig:
    """The file's hyper-parameters through its architecture's description, each checked against the
    others and against every tensor's shape. n_ctx (the context the model will run) picks LongRoPE's
    factors; None takes the training context."""
    a = architecture_of(reader)
    keys = Keys(reader, a.name)
    path = reader.path
    n_embd = keys.int("embedding_length")
    n_heads = keys.int("attention.head_count")
    n_kv_heads = keys.int("attention.head_count_kv", n_heads)
    if n_heads % n_kv_heads:
        raise GGUFError(f"{path}: head_count {n_heads} is not a multiple of head_count_kv {n_kv_heads}")
    if a.head_dim_from_key_length and keys.has("attention.key_length"):
        head_dim = keys.int("attention.key_length")
        if keys.int("attention.value_length", head_dim) != head_dim:
            raise GGUFError(f"{path}: attention.value_length differs from key_length: not supported")
    else:
        if n_embd % n_heads:
            raise GGUFError(f"{path}: embedding_length {n_embd} is not a multiple of head_count {n_heads}")
        head_dim = n_embd // n_heads
    n_rot = keys.int("rope.dimension_count", head_dim)
    if n_rot > head_dim or n_rot % 2:
        raise GGUFError(f"{path}: rope.dimension_count {n_rot} does not fit the head dimension {head_dim}")
    embd = reader.tensors.get("token_embd.weight")
    if embd is None:
        raise GGUFError(f"{path}: tensor token_embd.weight is missing")
    if len(embd.shape) != 2 or embd.shape[0] != n_embd:
        raise GGUFError(f"{path}: token_embd.weight has dims {list(embd.shape)}, embedding_length is {n_embd}")
    scaling = keys.str("rope.scaling.type", "none")
    if scaling not in ROPE_SCALING:
        raise GGUFError(f"{path}: RoPE scaling {scaling[:40]!r} is not supported (pyengine: {', '.join(ROPE_SCALING)})")
    n_layers = keys.int("block_count")
    if n_layers > 4096:
        raise GGUFError(f"{path}: block_count {n_layers} is out of range")
    c = ModelConfig(
        arch=a.name, n_layers=n_layers, n_embd=n_embd, n_ff=keys.int("feed_forward_length"), n_heads=n_heads,
        n_kv_heads=n_kv_heads, head_dim=head_dim, n_rot=n_rot, n_vocab=int(embd.shape[1]),
        n_ctx_train=keys.int("context_length"), rope_theta=keys.float("rope.freq_base", 10000.0),
        rms_eps=keys.float("attention.layer_norm_rms_epsilon", 1e-5), rope_style=a.rope_style,
        activation=a.activation,
        rope_scale=1.0 / keys.float("rope.scaling.factor", 1.0) if scaling == "linear" else 1.0)
    _check_tensors(reader, a, c)
    extra = a.recipe(keys, c, reader.tensors, n_ctx or c.n_ctx_train)
    return ModelConfig(**{**c.__dict__, **extra})


def _check_tensors(reader: GGUFReader, a: Architecture, c: ModelConfig) -> None:
    """Every required tensor is present with its shape; nothing else is there."""
    expected = {t.name: t for t in GLOBAL_TENSORS + a.extra_tensors}
    for layer in range(c.n_layers):
        expected.update({f"blk.{layer}.{t.name}": t for t in a.layer})
    unused = [name for name in reader.tensors if name not in expected]
    if unused:
        more = f" and {len(unused) - 3} more" if len(unused) > 3 else ""
        raise GGUFError(f"{reader.path}: tensors the {a.name} architecture does not have: "
                        f"{', '.join(map(repr, unused[:3]))}{more}")
    for name, t in expected.items():
        info = reader.tensors.get(name)
        if info is None:
            if t.optional:
                continue
            block = name[:name.index(".", 4) + 1] if name.startswith("blk.") else None
            if block and not any(n.startswith(block) for n in reader.tensors):
                raise GGUFError(f"{reader.path}: block_count is {c.n_layers} but tensor {name} is missing")
            raise GGUFError(f"{reader.path}: tensor {name} is missing")
        want = t.shape(c)
        if _shape(info) != want:
            raise GGUFError(f"{reader.path}: tensor {name} has shape {_shape(info)}, the hyper-parameters need "
                            f"{want} (embedding_length {c.n_embd}, head_count {c.n_heads}, head_count_kv "
                            f"{c.n_kv_heads}, head dimension {c.head_dim}, feed_forward_length {c.n_ff})")


def tensor_table(reader: GGUFReader) -> dict[str, tuple]:
    """name -> (zero-copy view, type id, rows, cols) of every tensor, for the native model."""
    table = {}
    for name, info in reader.tensors.items():
        if len(info.shape) > 2:
            raise GGUFError(f"{reader.path}: tensor {name} has {len(info.shape)} dimensions, expected at most 2")
        cols = info.shape[0]
        rows = info.shape[1] if len(info.shape) == 2 else 1
        table[name] = (info.data, int(info.type), int(rows), int(cols))
    return table


def describe(config: ModelConfig) -> list[tuple[str, str]]:
    """(what, value) lines that tell how the file's architecture runs, for `pyengine info`."""
    a = ARCHITECTURES[config.arch]
    lines = [("architecture", f"{a.name}: {a.summary}"),
             ("layers", f"{config.n_layers} x (attention: {config.n_heads} heads, {config.n_kv_heads} KV heads of "
                        f"{config.head_dim}; feed-forward {config.n_ff}, {config.activation})"),
             ("rope", f"{config.rope_style}, {config.n_rot} of {config.head_dim} dims, base {config.rope_theta:g}"
                      + (f", factors x{len(config.rope_factors)}" if config.rope_factors else "")
                      + (f", scale {config.rope_scale:g}" if config.rope_scale != 1 else ""))]
    local = [w for w in config.windows if w]
    if local:
        lines.append(("sliding window", f"{local[0]} tokens on {len(local)} of {config.n_layers} layers, "
                                        f"local RoPE base {config.rope_theta_local:g}"))
    return lines
