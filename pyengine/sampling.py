"""Choosing the next token from the logits: a chain of small logits processors and a seeded draw.

Each processor is an object with one method, `__call__(ids, logits) -> logits`: `ids` are the tokens
of the sequence so far (prompt and generated; in a chat, the whole conversation held in the KV
cache), `logits` a 1-D float array. A processor never changes its input; it returns a new array in
which a removed token has the logit -inf. The chain runs in this order (HF transformers' order:
processors, then warpers; the two extra penalties are llama.cpp's and OpenAI's):

    1. RepetitionPenalty(penalty, last_n)     CTRL (Keskar et al. 2019): each distinct token of the
                                              window has a positive logit divided by the penalty, a
                                              negative one multiplied by it
    2. FrequencyPresencePenalty(f, p, last_n) logit -= count * f + (count > 0) * p, count = the
                                              token's occurrences in the window
    3. LogitBias({id: bias})                  logit += bias (-inf bans a token)
       -- temperature 0: greedy, the argmax of the logits so far (ties: the lowest id) --
    4. Temperature(t)                         logits / t
    5. TopK(k)                                keep the tokens whose logit is >= the k-th largest
                                              (ties with the k-th are kept, as transformers does)
    6. TopP(p)                                nucleus: keep the smallest set of most likely tokens
                                              whose probability sums to >= p (transformers'
                                              TopPLogitsWarper: sorted ascending, a token goes when
                                              the cumulative probability up to it is <= 1 - p;
                                              the most likely token always stays)
    7. MinP(p)                                keep the tokens with probability >= p * the largest
                                              probability (transformers' MinPLogitsWarper)
    then one token is drawn from the softmax of what is left, with the Sampler's numpy Generator.

The repetition window: the last `repeat_last_n` ids of the sequence (the prompt counts, as in
transformers, which penalizes every id of input_ids; llama.cpp's window of the last n tokens). 0
turns the penalties off; -1 takes the whole sequence.

Disabled steps are left out of the chain: repetition_penalty 1, both other penalties 0, an empty
logit_bias, temperature 1, top_k 0 (or >= the vocabulary), top_p 1, min_p 0.

The draw walks the tokens left in vocabulary order: u ~ U[0, 1) from the Generator (one number per
token, none when a single token is left) picks the first whose cumulative weight exceeds u * total.

Speed: temperature, top-k, top-p and min-p depend only on the values, not on which token sits
where, so the Sampler keeps just the candidates each filter leaves and runs the next steps on those.
With top-k on (the default) or greedy, on the model's float32 logits, native code does the
whole-vocabulary part (_core.top_candidates, cpp/top_k.cpp: two passes over the logits, no copy or
sort of the vocabulary): it adds the logit bias, finds the largest logit (the checks below, the
greedy token) and returns the top k after the temperature, ties included, scaled and sorted. Top-p
and min-p then become cut points in that short sorted array, and the draw runs on what is left. It
picks the same token as the chain run as written (tests/test_sampling.py checks it).
"""

from __future__ import annotations

import bisect
import itertools
import math
import numbers
from dataclasses import dataclass, field, fields
from typing import Mapping, NamedTuple, Sequence

import numpy as np

from . import _core

__all__ = ["SamplingParams", "Sampler", "SamplingError", "RepetitionPenalty", "FrequencyPresencePenalty",
           "LogitBias", "Temperature", "TopK", "TopP", "MinP", "softmax"]


class SamplingError(ValueError):
    """The logits leave nothing to sample: every token is banned (-inf) or a logit is NaN/inf."""


def softmax(logits: np.ndarray) -> np.ndarray:
    """Probabilities of logits (-inf gives 0); logits must hold at least one finite value."""
    e = np.exp(logits - logits.max())
    return e / e.sum()


def _window(ids: Sequence[int], last_n: int) -> np.ndarray:
    if last_n == 0 or len(ids) == 0:
        return np.empty(0, np.int64)
    window = ids if last_n < 0 else ids[-last_n:]
    return np.asarray(window, dtype=np.int64)


# ---------------------------------------------------------------------------------------------------
# Processors: they look at which tokens came before
# ---------------------------------------------------------------------------------------------------


class RepetitionPenalty:
    """CTRL's penalty over the distinct tokens of the last `last_n` ids (-1: all of them)."""

    def __init__(self, penalty: float, last_n: int = 64) -> None:
        self.penalty = float(penalty)
        self.last_n = int(last_n)

    def __call__(self, ids: Sequence[int], logits: np.ndarray) -> np.ndarray:
        seen = np.unique(_window(ids, self.last_n))
        out = logits.copy()
        if seen.size:
            score = out[seen]
            out[seen] = np.where(score < 0, score * self.penalty, score / self.penalty)
        return out


class FrequencyPresencePenalty:
    """OpenAI's (and llama.cpp's) penalties: logit -= count * frequency + (count > 0) * presence,
    counting each token's occurrences in the last `last_n` ids (-1: all of them)."""

    def __init__(self, frequency: float, presence: float, last_n: int = 64) -> None:
        self.frequency = float(frequency)
        self.presence = float(presence)
        self.last_n = int(last_n)

    def __call__(self, ids: Sequence[int], logits: np.ndarray) -> np.ndarray:
        seen, counts = np.unique(_window(ids, self.last_n), return_counts=True)
        out = logits.copy()
        if seen.size:
            out[seen] -= (counts * self.frequency + self.presence).astype(out.dtype)
        return out


class LogitBias:
    """Adds a fixed bias to chosen token ids; -inf bans a token."""

    def __init__(self, bias: Mapping[int, float]) -> None:
        items = sorted((int(i), float(v)) for i, v in bias.items())  # ids ascending, as the native pass takes them
        self.ids = np.fromiter((i for i, _ in items), np.int64, len(items))
        self.values = np.fromiter((v for _, v in items), np.float64, len(items))

    def __call__(self, ids: Sequence[int], logits: np.ndarray) -> np.ndarray:
        out = logits.copy()
        out[self.ids] += self.values.astype(out.dtype)
        return out


# ---------------------------------------------------------------------------------------------------
# Warpers: they only look at the values, so they work on any subset of the vocabulary
# ---------------------------------------------------------------------------------------------------


class Temperature:
    def __init__(self, temperature: float) -> None:
        if not temperature > 0:
            raise ValueError(f"Temperature needs temperature > 0 (0 is the Sampler's greedy argmax), got {temperature}")
        self.temperature = float(temperature)

    def __call__(self, ids: Sequence[int], logits: np.ndarray) -> np.ndarray:
        with np.errstate(over="ignore"):  # far below the top at a tiny temperature: -inf, probability 0
            return logits / logits.dtype.type(self.temperature)


def _top_superset(logits: np.ndarray, m: int) -> np.ndarray:
    """Ascending indices of every token whose logit is >= some threshold that at least min(m, n)
    tokens reach: a superset of the m largest, usually not much bigger. The threshold comes from a
    strided sample (a 1/16 subsample's top values estimate the whole vocabulary's), so a large
    vocabulary costs two cheap passes instead of an argpartition; when the estimate falls short,
    the exact m-th largest value is the threshold."""
    n = logits.size
    if m >= n:
        return np.arange(n)
    stride = 16
    sample = logits[::stride]
    j = 2 * m // stride + 2  # the sample's j-th largest: about the (2m + 32)-th largest overall
    if n >= 1024 and j < sample.size:
        threshold = np.partition(sample, sample.size - j)[sample.size - j]
        kept = np.flatnonzero(logits >= threshold)
        if kept.size >= m:
            return kept
    threshold = np.partition(logits, n - m)[n - m]
    return np.flatnonzero(logits >= threshold)


class TopK:
    """Keeps the tokens whose logit is >= the k-th largest (ties with it stay too, as transformers'
    TopKLogitsWarper, which removes what is below the k-th value)."""

    def __init__(self, k: int) -> None:
        self.k = int(k)

    def kth(self, logits: np.ndarray):
        """The k-th largest value (k < logits.size), without a sort of the whole vocabulary."""
        if logits.size > 1024:
            logits = logits[_top_superset(logits, self.k)]
        return np.partition(logits, logits.size - self.k)[logits.size - self.k]

    def select(self, logits: np.ndarray) -> np.ndarray:
        """Ascending indices of the tokens kept."""
        if self.k >= logits.size:
            return np.arange(logits.size)
        return np.flatnonzero(logits >= self.kth(logits))

    def __call__(self, ids: Sequence[int], logits: np.ndarray) -> np.ndarray:
        return _keep(logits, self.select(logits))


class TopP:
    """Nucleus sampling, as transformers' TopPLogitsWarper (min_tokens_to_keep=1): with the tokens
    sorted by ascending probability, one goes when the cumulative probability up to and including
    it is <= 1 - p; the most likely token always stays."""

    def __init__(self, p: float) -> None:
        self.p = float(p)

    def select(self, logits: np.ndarray) -> np.ndarray:
        """Ascending indices of the tokens kept. On a large vocabulary only the m most likely tokens
        are sorted (m = 64, 256, ... until the mass outside them is <= 1 - p: all of it goes)."""
        n = logits.size
        if n <= 1024:
            return self._cut(logits, np.argsort(logits, kind="stable"), 0.0)
        top_logit = logits.max()
        total = np.exp(logits - top_logit).sum(dtype=np.float64)
        m = 64
        while True:
            top = _top_superset(logits, m) if m < n else np.arange(n)
            order = top[np.argsort(logits[top], kind="stable")]
            rest = total - np.exp(logits[order] - top_logit).sum(dtype=np.float64)
            if top.size == n or rest <= (1.0 - self.p) * total:
                return self._cut(logits, order, rest)
            m *= 4

    def _cut(self, logits: np.ndarray, order: np.ndarray, rest: float) -> np.ndarray:
        """order: indices ascending by logit (the most likely last); rest: the unnormalized mass of
        the tokens not in order (all below them)."""
        cumulative = rest + np.cumsum(np.exp(logits[order] - logits[order[-1]]), dtype=np.float64)
        remove = cumulative <= (1.0 - self.p) * cumulative[-1]
        remove[-1] = False
        return np.sort(order[~remove])

    def __call__(self, ids: Sequence[int], logits: np.ndarray) -> np.ndarray:
        return _keep(logits, self.select(logits))


class MinP:
    """Keeps the tokens with probability >= p * the top probability, as transformers'
    MinPLogitsWarper (the top token always stays)."""

    def __init__(self, p: float) -> None:
        self.p = float(p)

    def select(self, logits: np.ndarray) -> np.ndarray:
        # probs / max(probs) = exp(logit - max(logit))
        e = np.exp(logits - logits.max())
        return np.flatnonzero(e >= e.dtype.type(self.p))

    def __call__(self, ids: Sequence[int], logits: np.ndarray) -> np.ndarray:
        return _keep(logits, self.select(logits))


def _keep(logits: np.ndarray, keep: np.ndarray) -> np.ndarray:
    out = np.full_like(logits, -np.inf)
    out[keep] = logits[keep]
    return out


# ---------------------------------------------------------------------------------------------------
# Parameters, checked up front
# ---------------------------------------------------------------------------------------------------


def _number(name: str, value, integer: bool = False):
    if isinstance(value, bool) or not isinstance(value, numbers.Real if not integer else numbers.Integral):
        kind = "an integer" if integer else "a number"
        raise ValueError(f"{name} must be {kind}, got {value!r}")
    if integer:
        return int(value)
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return value


def _option(default, flag: str, help: str, *aliases: str, **kw):
    """A SamplingParams field: its default, the command-line flag that sets it (llama.cpp's name) with
    its help, and the other names a server request may use for it (llama.cpp server's names)."""
    return field(default=default, metadata={"flag": flag, "help": help, "aliases": aliases}, **kw)


@dataclass(frozen=True)
class SamplingParams:
    """The sampling settings, each checked when made (ValueError). The single source of the defaults
    and of the checks for the Python API (generate, chat, Context loops), the command line (each
    field's metadata names its flag) and the server (the request fields of the same names, or the
    aliases in the metadata)."""

    temperature: float = _option(0.8, "--temp", "temperature; 0 is greedy")
    top_k: int = _option(40, "--top-k", "keep the K most likely tokens; 0 disables")
    top_p: float = _option(0.95, "--top-p", "nucleus: keep the most likely tokens up to this mass; 1.0 disables")
    min_p: float = _option(0.05, "--min-p", "keep tokens at least this times as likely as the top one; 0 disables")
    repetition_penalty: float = _option(1.0, "--repeat-penalty", "CTRL's penalty on recent tokens; 1.0 disables",
                                        "repeat_penalty")
    repeat_last_n: int = _option(64, "--repeat-last-n",
                                 "tokens the penalties look back on; 0 disables, -1 the whole context")
    frequency_penalty: float = _option(0.0, "--frequency-penalty", "logit -= count in the window x F")
    presence_penalty: float = _option(0.0, "--presence-penalty", "logit -= P for a token in the window")
    logit_bias: Mapping[int, float] | None = _option(None, "", "token id -> added logit (-inf bans)", hash=False)
    seed: int | None = _option(None, "--seed", "random seed; -1 a fresh one")

    @classmethod
    def from_options(cls, options: Mapping) -> SamplingParams:
        """From a mapping of field names (or their aliases) to values; ValueError for an unknown name
        or a bad value. Names absent take the defaults."""
        names = {}
        for f in fields(cls):
            for name in (f.name, *f.metadata["aliases"]):
                names[name] = f.name
        values = {}
        for key, value in options.items():
            if key not in names:
                raise ValueError(f"unknown sampling option {key!r} (known: {', '.join(sorted(names))})")
            if names[key] in values:
                raise ValueError(f"sampling option {names[key]!r} is given twice")
            values[names[key]] = value
        return cls(**values)

    @classmethod
    def option_names(cls) -> frozenset[str]:
        """Every name from_options takes."""
        return frozenset(n for f in fields(cls) for n in (f.name, *f.metadata["aliases"]))

    def __post_init__(self) -> None:
        set_ = object.__setattr__  # frozen: normalize the values once, here
        t = _number("temperature", self.temperature)
        if t < 0:
            raise ValueError(f"temperature must be >= 0 (0 is greedy), got {t}")
        k = _number("top_k", self.top_k, integer=True)
        if k < 0:
            raise ValueError(f"top_k must be >= 0 (0 disables it), got {k}")
        top_p = _number("top_p", self.top_p)
        if not 0 < top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1] (1 disables it), got {top_p}")
        min_p = _number("min_p", self.min_p)
        if not 0 <= min_p <= 1:
            raise ValueError(f"min_p must be in [0, 1] (0 disables it), got {min_p}")
        rp = _number("repetition_penalty", self.repetition_penalty)
        if rp <= 0:
            raise ValueError(f"repetition_penalty must be > 0 (1 disables it), got {rp}")
        last_n = _number("repeat_last_n", self.repeat_last_n, integer=True)
        if last_n < -1:
            raise ValueError(f"repeat_last_n must be >= -1 (-1: the whole context, 0: off), got {last_n}")
        fp = _number("frequency_penalty", self.frequency_penalty)
        pp = _number("presence_penalty", self.presence_penalty)
        bias = {}
        if self.logit_bias is not None:
            if not isinstance(self.logit_bias, Mapping):
                raise ValueError(f"logit_bias must be a dict of token id -> bias, got {type(self.logit_bias).__name__}")
            for token_id, value in self.logit_bias.items():
                token_id = _number("a logit_bias token id", token_id, integer=True)
                if token_id < 0:
                    raise ValueError(f"logit_bias token id {token_id} is negative")
                if isinstance(value, bool) or not isinstance(value, numbers.Real) or math.isnan(value) \
                        or value == math.inf:
                    raise ValueError(f"logit_bias[{token_id}] must be a finite number or -inf, got {value!r}")
                bias[token_id] = float(value)
        seed = self.seed
        if seed is not None:
            seed = _number("seed", seed, integer=True)
            if seed < 0:
                raise ValueError(f"seed must be >= 0 (or None for a fresh one), got {seed}")
        for name, value in (("temperature", t), ("top_k", k), ("top_p", top_p), ("min_p", min_p),
                            ("repetition_penalty", rp), ("repeat_last_n", last_n), ("frequency_penalty", fp),
                            ("presence_penalty", pp), ("logit_bias", bias), ("seed", seed)):
            set_(self, name, value)

    def check_vocab(self, n_vocab: int) -> None:
        """ValueError when a logit_bias id is outside a vocabulary of n_vocab tokens."""
        for token_id in self.logit_bias:
            if token_id >= n_vocab:
                raise ValueError(f"logit_bias token id {token_id} is outside the vocabulary ({n_vocab} tokens)")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


# ---------------------------------------------------------------------------------------------------
# The sampler
# ---------------------------------------------------------------------------------------------------


class Sampler:
    """The chain for one set of parameters, and its random generator (seeded from params.seed; a
    fresh one from the OS when None). sampler(ids, logits) -> the next token id.

    Calls draw from the same generator in turn, so the same seed and the same logits give the
    same tokens."""

    def __init__(self, params: SamplingParams | None = None, n_vocab: int | None = None) -> None:
        self.params = params = params or SamplingParams()
        if n_vocab is not None:
            params.check_vocab(n_vocab)
        self.rng = np.random.default_rng(params.seed)
        self.processors: list = []
        if params.repeat_last_n != 0 and params.repetition_penalty != 1.0:
            self.processors.append(RepetitionPenalty(params.repetition_penalty, params.repeat_last_n))
        if params.repeat_last_n != 0 and (params.frequency_penalty or params.presence_penalty):
            self.processors.append(FrequencyPresencePenalty(params.frequency_penalty, params.presence_penalty,
                                                            params.repeat_last_n))
        self._penalties = list(self.processors)  # the processors before the bias (the native pass adds it)
        bias = LogitBias(params.logit_bias)
        self._bias_ids, self._bias_values = bias.ids, bias.values.astype(np.float32)  # as LogitBias adds them
        if params.logit_bias:
            self.processors.append(bias)
        self.warpers: list = []
        if not params.greedy:
            if params.temperature != 1.0:
                self.warpers.append(Temperature(params.temperature))
            if params.top_k > 0 and (n_vocab is None or params.top_k < n_vocab):
                self.warpers.append(TopK(params.top_k))
            if params.top_p < 1.0:
                self.warpers.append(TopP(params.top_p))
            if params.min_p > 0.0:
                self.warpers.append(MinP(params.min_p))
        self._temperature = next((w for w in self.warpers if isinstance(w, Temperature)), None)
        self._top_k = next((w for w in self.warpers if isinstance(w, TopK)), None)
        self._t32 = float(np.float32(params.temperature))  # the float32 divisor of Temperature

    def __call__(self, ids: Sequence[int], logits: np.ndarray) -> int:
        kept = self._chain(ids, logits)
        if isinstance(kept, int):  # greedy
            return kept
        if isinstance(kept, _TopK):
            tokens, weights = self._top_k_tail(kept)
            return tokens[self._pick_list(weights)]
        return self._draw(*kept)

    def distribution(self, ids: Sequence[int], logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """What __call__ draws from: (the token ids the chain leaves, ascending; their float64
        probabilities). Greedy: the argmax, with probability 1. Draws nothing from the generator."""
        kept = self._chain(ids, logits)
        if isinstance(kept, int):
            return np.array([kept]), np.ones(1)
        if isinstance(kept, _TopK):
            tokens, weights = self._top_k_tail(kept)
            weights = np.array(weights)
            return np.array(tokens), weights / weights.sum()
        values, candidates = kept
        weights = np.exp(values - values.max(), dtype=np.float64)
        return (np.arange(values.size) if candidates is None else candidates), weights / weights.sum()

    def pick(self, weights: np.ndarray) -> int:
        """An index drawn in proportion to weights (float64, >= 0, the last one > 0), with one number
        of the generator (none for a single weight): the first whose cumulative weight exceeds
        u * total."""
        if weights.size == 1:
            return 0
        cumulative = np.cumsum(weights)
        choice = int(np.searchsorted(cumulative, self.rng.random() * cumulative[-1], side="right"))
        return min(choice, weights.size - 1)  # rounding at the very top

    def _pick_list(self, weights: list[float]) -> int:
        """pick() on a list: the same running sum (in order, as np.cumsum) and the same search."""
        if len(weights) == 1:
            return 0
        cumulative = list(itertools.accumulate(weights))
        return min(bisect.bisect_right(cumulative, self.rng.random() * cumulative[-1]), len(weights) - 1)

    def _chain(self, ids: Sequence[int], logits: np.ndarray) -> int | _TopK | tuple[np.ndarray, np.ndarray | None]:
        """The chain up to the draw: the greedy token; the native pass's top-k candidates (top-p and
        min-p still to apply: _top_k_tail); or (the logits left, in vocabulary order; their
        vocabulary ids, None when all are left)."""
        native = (self.params.greedy or self._top_k is not None) and logits.dtype == np.float32 \
            and logits.ndim == 1 and logits.size > 0
        for processor in (self._penalties if native else self.processors):
            logits = processor(ids, logits)
        if native:
            k = 1 if self.params.greedy else self._top_k.k
            t = 1.0 if self._temperature is None else self._temperature.temperature
            top, argmax, candidates, values = _core.top_candidates(logits, k, t, self._bias_ids, self._bias_values)
        else:
            top = float(logits.max())  # NaN anywhere makes the max NaN
        if not math.isfinite(top):
            if math.isnan(top):
                raise SamplingError("a logit is NaN: nothing can be sampled")
            if top == -math.inf:
                raise SamplingError("every token has the logit -inf (all banned): nothing can be sampled")
            raise SamplingError("a logit is +inf: nothing can be sampled")
        if self.params.greedy or not self._scales(top):
            return int(argmax) if native else int(np.argmax(logits))
        if native:
            return _TopK(candidates, values)
        # The filters (top-k, top-p, min-p) shrink the candidates instead of writing -inf over the
        # whole vocabulary; the candidates stay in vocabulary order, so the draw does not depend on it.
        candidates = None  # vocabulary ids of the entries of `logits`; None: all of them
        for warper in self.warpers:
            if isinstance(warper, Temperature):
                logits = warper(ids, logits)
                continue
            keep = warper.select(logits)
            if keep.size < logits.size:
                logits = logits[keep]
                candidates = keep if candidates is None else candidates[keep]
        return logits, candidates

    def _scales(self, top: float) -> bool:
        """Whether the temperature divides the largest logit to a finite float32. A temperature too
        small for that (1e-40) would leave the chain inf - inf = NaN: the sampler takes its limit as
        the temperature goes to 0, the greedy token."""
        if self._temperature is None:
            return True
        return self._t32 > 0 and abs(top / self._t32) <= _F32_MAX

    def _draw(self, logits: np.ndarray, candidates: np.ndarray | None) -> int:
        """One token from the softmax of logits (in vocabulary order), with one number of the rng
        (none when a single token is left)."""
        choice = self.pick(np.exp(logits - logits.max(), dtype=np.float64))
        return int(choice if candidates is None else candidates[choice])

    def _top_k_tail(self, kept: _TopK) -> tuple[list[int], list[float]]:
        """The chain's top-p and min-p on the native pass's candidates, then the draw's weights: (the
        token ids kept, ascending; their float64 weights exp(value - the top value)). Top-p and min-p
        are cut points in the candidates' ascending order; their numbers are the chain's: TopP's and
        MinP's float32 probabilities / the top one (np.exp), TopP's float64 running sum in order (as
        np.cumsum), the draw's float64 exp of the same differences.

        The steps on these few values are plain Python: right after a forward pass the caches hold
        weights, not numpy's code, and each numpy call costs microseconds there."""
        params = self.params
        d = kept.values - kept.values[-1]
        first = 0
        if params.top_p < 1.0 or params.min_p > 0.0:
            e = np.exp(d).tolist()
            if params.top_p < 1.0:
                cumulative = list(itertools.accumulate(e))
                first = min(bisect.bisect_right(cumulative, (1.0 - params.top_p) * cumulative[-1]), len(e) - 1)
            if params.min_p > 0.0:
                first = max(first, bisect.bisect_left(e, float(np.float32(params.min_p))))
        pairs = sorted(zip(kept.ids[first:].tolist(), np.exp(d[first:], dtype=np.float64).tolist()))
        return [token for token, _ in pairs], [weight for _, weight in pairs]


_F32_MAX = float(np.finfo(np.float32).max)


class _TopK(NamedTuple):
    """The native pass's top-k candidates: their ids and values after the temperature, ascending by
    value (ties by id)."""

    ids: np.ndarray
    values: np.ndarray
