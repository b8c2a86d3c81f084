"""The model: GGUF weights used in place by the native forward pass (any architecture of
pyengine/architectures.py), and the per-sequence context (KV cache) that the generation loop drives.

    m = Model("model.gguf")             # or Model() for the default model, fetched on first use
    m.logits(m.tokenize("Hello"))       # float32 [n_tokens, n_vocab], a fresh sequence
    ctx = m.context(); ctx.eval(ids)    # logits of the last token; the cache keeps the prefix

The logits at a position are bit-identical whatever the batching, chunking, cached prefix or
thread count (see README: Determinism).
"""

from __future__ import annotations

import mmap
import os
import warnings
from typing import Iterable, Sequence

import numpy as np

from . import _core
from .architectures import ModelConfig, read_config, tensor_table
from .gguf import GGMLType, GGUFError, GGUFReader
from .quants import thread_pool
from .speculative import DRAFT_MAX
from .tokenizer import Tokenizer

DEFAULT_MAX_CTX = 4096  # the default n_ctx is min(the file's context length, this)
MAX_CTX = 2**31 - 1  # positions are int32 in the core; beyond, no machine holds the cache anyway


def _integer(value, what: str = "a token id") -> int:
    """value as an int where it is an integer (Python's or numpy's, not a bool); ValueError else: a
    float or a string is not taken for the integer it would round or parse to."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{what} must be an integer, got {value!r:.40}")
    return int(value)


def _id_lists(ids) -> list[list[int]]:
    out = []
    for x in ids:
        if isinstance(x, (str, bytes)):
            raise ValueError(f"eval_batch takes a sequence of token ids per context, not a string ({x!r:.40})")
        if not hasattr(x, "__iter__"):
            raise ValueError(f"eval_batch takes a sequence of token ids per context, got {x!r:.40}")
        out.append([_integer(i) for i in x])
    return out


def _check_n_ctx(n_ctx) -> int:
    if not 0 < _integer(n_ctx, "n_ctx") <= MAX_CTX:
        raise ValueError(f"n_ctx must be an integer from 1 to {MAX_CTX}, got {n_ctx!r}")
    return int(n_ctx)


KV_TYPES = {"f16": int(GGMLType.F16), "f32": int(GGMLType.F32), "q8_0": int(GGMLType.Q8_0)}


class OversubscriptionWarning(RuntimeWarning):
    """More threads were asked for than there are CPUs this process may run on: they work, but take
    turns on the CPUs, and every step of the forward pass waits for the slowest."""


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask), or all of them where there is no mask."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def kv_cache_bytes(config: ModelConfig, n_ctx: int, kv_type: str = "f16") -> int:
    """Bytes of one sequence's KV cache: keys and values of every layer at every position (a
    sliding-window layer keeps a ring of its window and one batch)."""
    return _core.kv_cache_bytes(config.n_layers, n_ctx, config.kv_dim, KV_TYPES[kv_type], list(config.windows))


def _available_memory() -> int | None:
    """MemAvailable from /proc/meminfo, in bytes (None where there is no such file)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _check_kv_cache_fits(config: ModelConfig, n_ctx: int, kv_type: str) -> None:
    """Refuses up front an n_ctx whose KV cache could not be allocated, with the numbers."""
    need = kv_cache_bytes(config, n_ctx, kv_type)
    available = _available_memory()
    if available is not None and need > available:
        raise ValueError(f"n_ctx {n_ctx} needs a KV cache of {need / 2**30:.2f} GiB per sequence "
                         f"({kv_type}), but only {available / 2**30:.2f} GiB of memory is available")


def _page_dropper(reader: GGUFReader):
    """release(address, nbytes) for the native Model.pack: drops the whole pages of that range of the
    file mapping from this process (MADV_DONTNEED on a read-only shared file mapping: the data stays
    in the page cache and a later read maps it in again, so nothing can be lost)."""
    mm = reader._mmap
    if mm is None or not hasattr(mm, "madvise") or not hasattr(mmap, "MADV_DONTNEED"):
        return None
    view = np.frombuffer(mm, dtype=np.uint8)
    base, size = view.ctypes.data, view.size
    del view  # only the address is kept: no export of the mapping outlives this call

    def release(address: int, nbytes: int) -> None:
        start, end = address - base, address - base + nbytes
        if start < 0 or end > size:
            return  # not from this mapping
        page = mmap.PAGESIZE
        lo, hi = -(-start // page) * page, end // page * page
        if hi > lo:
            mm.madvise(mmap.MADV_DONTNEED, lo, hi - lo)

    return release


class Model:
    """A model from a GGUF file (llama, qwen2, qwen3, gemma3, phi3), ready to evaluate.

    path: the GGUF file; None fetches the default model (SmolLM2-135M-Instruct) on first use.
    n_ctx: context length of each sequence (default: min(the file's context_length, 4096)).
    n_threads: threads of the matmuls (default: the physical performance cores); more than the CPUs
    this process may run on works, with an OversubscriptionWarning."""

    def __init__(self, path: str | os.PathLike | None = None, n_ctx: int | None = None,
                 n_threads: int | None = None, kv_type: str = "f16") -> None:
        if path is None:
            from .fetch import default_model_path

            path = default_model_path()
        self.path = os.fspath(path)
        self._reader = GGUFReader(self.path)
        try:
            if n_ctx is not None:
                n_ctx = _check_n_ctx(n_ctx)
            self.config = read_config(self._reader, n_ctx)
            self.metadata = self._reader.metadata
            try:
                self.tokenizer = Tokenizer.from_metadata(self._reader.metadata)
            except GGUFError as e:
                raise GGUFError(f"{self.path}: {e}") from None
            if self.tokenizer.n_vocab != self.config.n_vocab:
                raise GGUFError(f"{self.path}: the tokenizer has {self.tokenizer.n_vocab} tokens, "
                                f"token_embd.weight has {self.config.n_vocab} rows")
            try:
                self._core = _core.Model(self.config.native(), tensor_table(self._reader))
            except ValueError as e:
                raise GGUFError(f"{self.path}: {e}") from None
            if n_ctx is None:
                n_ctx = min(self.config.n_ctx_train, DEFAULT_MAX_CTX)
            self.n_ctx = int(n_ctx)
            if kv_type not in KV_TYPES:
                raise ValueError(f"kv_type must be one of {sorted(KV_TYPES)}, got {kv_type!r}")
            if kv_type == "q8_0" and self.config.head_dim % 32:
                raise ValueError(f"kv_type 'q8_0' needs a head dimension that is a multiple of 32; "
                                 f"this model's is {self.config.head_dim}")
            self.kv_type = kv_type
            _check_kv_cache_fits(self.config, self.n_ctx, kv_type)
            self._pool = thread_pool(n_threads)
            self.n_threads = self._pool.n_threads
            # Matrices repacked for the kernels (where the ISA has packed kernels): the mapped pages
            # of each packed source are dropped, so the process holds one copy of the weights.
            self._core.pack(self._pool, _page_dropper(self._reader))
        finally:
            # The native model holds the tensor views (and through them the mapping); the reader's
            # own hold is not needed past loading.
            self._reader.close()
        cpus = usable_cpus()
        if self.n_threads > cpus:
            warnings.warn(f"{self.n_threads} threads on {cpus} CPUs: they will take turns, and run slower "
                          f"than {cpus}", OversubscriptionWarning, stacklevel=2)

    @property
    def arch(self) -> str:
        """general.architecture: "llama", "qwen2", "qwen3", "gemma3" or "phi3"."""
        return self.config.arch

    @property
    def n_vocab(self) -> int:
        return self.config.n_vocab

    def tokenize(self, text: str, add_bos: bool | None = None) -> list[int]:
        """Token ids of text; add_bos None follows the file (tokenizer.ggml.add_bos_token)."""
        return self.tokenizer.encode(text, add_bos=self.tokenizer.add_bos if add_bos is None else add_bos)

    def detokenize(self, ids: Iterable[int]) -> str:
        return self.tokenizer.decode(list(ids))

    def context(self, n_ctx: int | None = None) -> Context:
        """A fresh sequence with its own KV cache."""
        return Context(self, self.n_ctx if n_ctx is None else n_ctx)

    def logits(self, ids: Sequence[int]) -> np.ndarray:
        """float32 [len(ids), n_vocab]: the logits at every position of a fresh sequence."""
        return self.context().eval_all(ids)

    def generate(self, prompt, max_tokens: int = 128, *, stop=(), stream: bool = False, draft=None,
                 draft_max: int = DRAFT_MAX, **sampling):
        """Text from `prompt` (str or token ids): a Completion, or with stream=True an iterator of
        text pieces. sampling: SamplingParams' fields (temperature 0 is greedy). draft: None,
        "lookup" or a Model with the same vocabulary (speculative decoding, up to draft_max tokens
        per step). See pyengine.generate.generate."""
        from .generate import generate

        return generate(self, prompt, max_tokens=max_tokens, stop=stop, stream=stream, draft=draft,
                        draft_max=draft_max, **sampling)

    def chat(self, messages, **sampling):
        """The assistant's reply to messages ([{"role": ..., "content": ...}]) through the file's chat
        template: a Completion, or an iterator with stream=True. See pyengine.chat.chat."""
        from .chat import chat

        return chat(self, messages, **sampling)

    def eval_sequences(self, contexts: Sequence[Context], ids: Sequence[int]) -> np.ndarray:
        """Appends ids[i] to contexts[i] for every i in one batched forward call (the live beams of a
        beam search); float32 logits [len(contexts), n_vocab], each bit-identical to contexts[i].eval."""
        if len(contexts) != len(ids) or not contexts:
            raise ValueError("eval_sequences needs one token id per context, and at least one context")
        for ctx in contexts:
            if not isinstance(ctx, Context) or ctx.model is not self:
                raise ValueError("every context must be one of this model's")
        return _core.Context.eval_sequences(self._pool, [c._ctx for c in contexts], [_integer(i) for i in ids])

    def eval_batch(self, contexts: Sequence[Context], ids: Sequence[Sequence[int]], last_only: bool = False
                   ) -> list[np.ndarray]:
        """Appends the tokens ids[i] to contexts[i] for every i in one batched forward call (the
        server's speculative step: each sequence's last token and draft); for each context the float32
        logits of each of its tokens, [len(ids[i]), n_vocab], bit-identical to contexts[i].eval_all.
        last_only: of its last token alone, [1, n_vocab] (the server's step that reads a prompt chunk
        beside the other sequences' next tokens: the output projection for those rows only).
        Everything is checked first: on a ValueError no context changes."""
        if len(contexts) != len(ids) or not contexts:
            raise ValueError("eval_batch needs one list of token ids per context, and at least one context")
        for ctx in contexts:
            if not isinstance(ctx, Context) or ctx.model is not self:
                raise ValueError("every context must be one of this model's")
        return _core.Context.eval_batch(self._pool, [c._ctx for c in contexts], _id_lists(ids), bool(last_only))

    def beam_search(self, prompt, num_beams: int = 4, max_tokens: int = 64, length_penalty: float = 1.0,
                    early_stopping: bool | str = False, num_return_sequences: int = 1) -> list:
        """The num_return_sequences best hypotheses of a beam search from prompt (str or token ids),
        best first, each a Completion with .score: transformers' generate(num_beams=...,
        do_sample=False). See pyengine/beam.py."""
        from .beam import beam_search

        return beam_search(self, prompt, num_beams=num_beams, max_tokens=max_tokens, length_penalty=length_penalty,
                           early_stopping=early_stopping, num_return_sequences=num_return_sequences)


class Context:
    """One sequence: its KV cache and position. eval() appends tokens and returns the logits of
    the last; fork() copies the cache (beam search, chat branches)."""

    def __init__(self, model: Model, n_ctx: int) -> None:
        n_ctx = _check_n_ctx(n_ctx)
        self.model = model
        _check_kv_cache_fits(model.config, int(n_ctx), model.kv_type)
        self._ctx = _core.Context(model._core, int(n_ctx), KV_TYPES[model.kv_type])
        self._n_vocab = model.n_vocab

    @property
    def n_past(self) -> int:
        """Positions evaluated so far (the next token goes at this position)."""
        return self._ctx.n_past

    @property
    def n_ctx(self) -> int:
        return self._ctx.n_ctx

    def _ids(self, ids: Sequence[int]) -> np.ndarray | list[int]:
        n_vocab = self._n_vocab
        if (type(ids) is list or type(ids) is tuple) and ids and all(type(i) is int and 0 <= i < n_vocab for i in ids):
            # A list (or tuple) of ids in range, as a generation loop passes its one token, goes to the
            # binding as it is (which converts it in C and checks the context's room). Right after a
            # forward pass, with the weights in the caches, the numpy steps below cost ~100 us together:
            # ~3% of a SmolLM2 token.
            return ids
        arr = np.asarray(ids)
        if arr.ndim != 1 or arr.size == 0:
            raise ValueError("ids must be a non-empty sequence of token ids")
        if arr.dtype.kind not in "iu":
            raise ValueError(f"token ids must be integers, got {arr.dtype}")
        bad = (arr < 0) | (arr >= n_vocab)
        if bad.any():
            raise ValueError(f"token id {int(arr[bad][0])} is outside the vocabulary ({n_vocab} tokens)")
        if self.n_past + arr.size > self.n_ctx:
            raise ValueError(f"{arr.size} tokens after {self.n_past} do not fit the context of {self.n_ctx} tokens")
        return arr.astype(np.int32)

    def eval(self, ids: Sequence[int]) -> np.ndarray:
        """Appends ids at the next positions; float32 logits of the last one, [n_vocab]."""
        return self._ctx.eval(self.model._pool, self._ids(ids), False)

    def eval_all(self, ids: Sequence[int]) -> np.ndarray:
        """Appends ids; float32 logits of each of them, [len(ids), n_vocab]."""
        return self._ctx.eval(self.model._pool, self._ids(ids), True)

    def truncate(self, n: int) -> None:
        """Forgets every position from n on (0 <= n <= n_past)."""
        n = _integer(n, "truncate's n")
        if not 0 <= n <= self.n_past:
            raise ValueError(f"cannot truncate to {n}: the sequence has {self.n_past} positions")
        self._ctx.truncate(n)

    def fork(self) -> Context:
        """A new context holding a copy of this one's cache."""
        other = Context(self.model, self.n_ctx)
        other._ctx.copy_from(self._ctx)
        return other
