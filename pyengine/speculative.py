"""Speculative decoding: a cheap guess of the next tokens (the draft), checked by the model in one
batched forward call instead of one call per token.

    generate(model, prompt, draft="lookup")          # n-grams of the prompt and the text so far
    generate(model, prompt, draft=Model("small.gguf"))  # a smaller model with the same vocabulary

A step of the generation loop (generate.TokenStream, the server's engine) evaluates the last sampled
token together with up to draft_max drafted tokens (Context.eval_all; the server: every sequence's
tokens in one Model.eval_batch). The logits of each position are those a plain step would have given
(the determinism promise), so the target's choice at each drafted position is known at once: the
drafts are taken while they agree with it, the first disagreement is replaced by the target's own
choice, and the cache is truncated back to what was taken. When every draft is taken, the logits
after the last give one more token for free.

The rule at a drafted position (verify): with temperature 0 the target's token is the greedy choice
of the sampling chain, and a draft is taken when it is that token, so the output is exactly that of
plain greedy decoding. Sampling: with p the chain's distribution (penalties over the window that
includes the drafts taken before, temperature, top-k, top-p, min-p) and q the draft's distribution
(a deterministic draft, such as prompt lookup, has q one-hot at its token), the draft x is taken with
probability min(1, p(x) / q(x)); otherwise a token is drawn from max(0, p - q), renormalized. The
token that comes out has the distribution p exactly (Leviathan et al. 2023, Chen et al. 2023).

Drafting adapts so that failing drafts cost little (a batch of k tokens costs more than one token):
a Speculator halves its draft length after a draft that mostly failed and doubles it after one that
was all taken, and after failures in a row it stops drafting for 1, 3, 7, ... up to 63 steps. Its
choices depend only on the tokens, so a seed gives the same text each time.
"""

from __future__ import annotations

import numbers
from typing import TYPE_CHECKING, Sequence

import numpy as np

from .sampling import Sampler, SamplingParams

if TYPE_CHECKING:
    from .model import Model

__all__ = ["DRAFT_MAX", "MAX_DRAFT_MAX", "check_draft", "check_draft_max", "speculator", "verify", "Speculator", "LookupDrafter",
           "ModelDrafter"]

DRAFT_MAX = 8  # the default of draft_max: tokens drafted per step at most
MAX_DRAFT_MAX = 64  # a ring of a sliding-window cache can go back at most 256 positions; more never pays on a CPU


def check_draft_max(draft_max) -> int:
    if isinstance(draft_max, bool) or not isinstance(draft_max, numbers.Integral) \
            or not 1 <= draft_max <= MAX_DRAFT_MAX:
        raise ValueError(f"draft_max must be an integer in [1, {MAX_DRAFT_MAX}], got {draft_max!r}")
    return int(draft_max)


def check_draft(model: Model, draft, draft_max) -> None:
    """ValueError for a bad draft (None, "lookup" or a Model with the same vocabulary) or draft_max."""
    check_draft_max(draft_max)
    if draft is None or (isinstance(draft, str) and draft == "lookup"):
        return
    from .model import Model

    if not isinstance(draft, Model):
        raise ValueError(f"draft must be None, 'lookup' or a pyengine.Model, got {draft!r}")
    if not draft.tokenizer.same_vocabulary(model.tokenizer):
        raise ValueError(f"the draft model {draft.path} has another vocabulary than {model.path} "
                         f"({draft.n_vocab} and {model.n_vocab} tokens): it cannot draft for it")


def speculator(model: Model, draft, draft_max: int, params: SamplingParams, n_ctx: int | None = None) -> Speculator | None:
    """The Speculator of one sequence of up to n_ctx tokens (default: the model's) for generate()'s
    draft and draft_max (checked); None for no draft."""
    check_draft(model, draft, draft_max)
    if draft is None:
        return None
    drafter = LookupDrafter() if isinstance(draft, str) else ModelDrafter(draft, params, n_ctx or model.n_ctx)
    return Speculator(drafter, int(draft_max))


def verify(sampler: Sampler, ids: Sequence[int], logits: np.ndarray, token: int,
           q: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[int, bool]:
    """The target's choice at a drafted position: (token, True) when the draft `token` is taken, else
    (the token drawn instead, False). ids: the sequence before this position; logits: the target's
    there; q: the draft's distribution as Sampler.distribution gives it, None for a deterministic
    draft. Greedy: the chain's token, taken when it is the draft."""
    if sampler.params.greedy:
        chosen = sampler(ids, logits)
        return chosen, chosen == token
    candidates, p = sampler.distribution(ids, logits)
    q_token = 1.0 if q is None else _probability(*q, token)
    if sampler.rng.random() * q_token < _probability(candidates, p, token):  # u < p(x) / q(x)
        return token, True
    if q is None:
        residual = np.where(candidates == token, 0.0, p)
    else:
        q_candidates, q_probs = q
        at = np.minimum(np.searchsorted(q_candidates, candidates), q_candidates.size - 1)
        residual = np.maximum(0.0, p - np.where(q_candidates[at] == candidates, q_probs[at], 0.0))
    keep = residual > 0
    if not keep.any():  # p == q up to rounding: then x is taken but for rounding; p is the residual's limit
        keep, residual = p > 0, p
    return int(candidates[keep][sampler.pick(residual[keep])]), False


def _probability(candidates: np.ndarray, probs: np.ndarray, token: int) -> float:
    i = int(np.searchsorted(candidates, token))
    return float(probs[i]) if i < candidates.size and candidates[i] == token else 0.0


class LookupDrafter:
    """Prompt-lookup drafting: the longest n-gram (max_ngram down to min_ngram tokens) that ends the
    sequence and occurred before in it (the prompt or the text generated) proposes the tokens that
    followed its latest occurrence. The n-grams are indexed as the sequence grows; a sequence that
    does not continue the one indexed is indexed again."""

    def __init__(self, min_ngram: int = 3, max_ngram: int = 5) -> None:
        self.min_ngram, self.max_ngram = min_ngram, max_ngram
        self.ids: list[int] = []  # the sequence indexed: the n-grams ending before its last position
        self.after: dict[tuple[int, ...], int] = {}  # n-gram -> the position after its latest occurrence

    def draft(self, ids: Sequence[int], n: int) -> tuple[list[int], list[None]]:
        start = len(self.ids)
        if len(ids) < start or list(ids[:start]) != self.ids:
            self.after.clear()
            start = 0
        self.ids = list(ids)
        for end in range(max(start, 1), len(ids)):  # not the n-grams ending the sequence: not "before" it
            for g in range(self.min_ngram, min(self.max_ngram, end) + 1):
                self.after[tuple(ids[end - g:end])] = end
        for g in range(min(self.max_ngram, len(ids)), self.min_ngram - 1, -1):
            end = self.after.get(tuple(ids[len(ids) - g:]))
            if end is not None:
                tokens = list(ids[end:end + n])
                return tokens, [None] * len(tokens)
        return [], []


class ModelDrafter:
    """Drafting with a smaller model of the same vocabulary: its own context, which keeps the longest
    prefix it shares with the sequence, and the target's sampling chain with a generator of its own
    (greedy when the target is). It stops drafting at a position where its chain's most likely token
    has a probability below p_min (a draft there would likely be rejected)."""

    def __init__(self, model: Model, params: SamplingParams, n_ctx: int, p_min: float = 0.5) -> None:
        self.model = model
        self.ctx = model.context(min(n_ctx, model.n_ctx))
        self.ids: list[int] = []  # what ctx holds
        self.p_min = p_min
        self.use(params)

    def use(self, params: SamplingParams) -> None:
        """Drafts from now on with params' chain (the server gives a drafter, and its cache, to
        another sequence)."""
        self.sampler = Sampler(params, self.model.n_vocab)
        # Independent of the target's generator, however it is seeded (the same numbers on both sides
        # would tie the draws to the acceptance tests).
        self.sampler.rng = np.random.default_rng(None if params.seed is None else (params.seed, 0x5EED))

    def draft(self, ids: Sequence[int], n: int) -> tuple[list[int], list]:
        from .generate import keep_prefix, reusable_prefix

        ctx = self.ctx
        n = min(n, ctx.n_ctx - len(ids) + 1)  # the last draft is not evaluated here
        if n < 1:
            return [], []
        kept = keep_prefix(ctx, reusable_prefix(self.ids, ids))
        self.ids = list(ids)
        logits = ctx.eval(self.ids[kept:])
        tokens, qs = [], []
        history = list(ids)
        while True:
            candidates, probs = self.sampler.distribution(history, logits)
            if self.sampler.params.greedy:
                token, q = int(candidates[0]), None
                if 1.0 / float(np.exp(logits - logits.max(), dtype=np.float64).sum()) < self.p_min:
                    break
            else:
                # Whether to draft here is decided before the draw, on the chain's most likely token: a
                # draw kept only when its own probability is high would be drawn from q cut below p_min,
                # not from the q that verify corrects for, and the output would lean to the draft's
                # likely tokens (with q = p, a token of p >= p_min would come out p + (1 - p) p times).
                if float(probs.max()) < self.p_min:
                    break
                i = self.sampler.pick(probs)
                token, q = int(candidates[i]), (candidates, probs)
            tokens.append(token)
            qs.append(q)
            if len(tokens) == n:
                break
            history.append(token)
            logits = ctx.eval((token,))
            self.ids.append(token)
        return tokens, qs


class Speculator:
    """The drafts of one sequence, their length adapted to how they fare (see the module's doc).

    propose(ids, room) -> (tokens, qs): at most min(room, draft_max) tokens to follow ids (the
    sequence with its last sampled token), each with its distribution for verify (None: one-hot).
    feedback(drafted, taken) after each verification. n_drafted and n_taken count them all."""

    MAX_PAUSE = 63

    def __init__(self, drafter: LookupDrafter | ModelDrafter, draft_max: int) -> None:
        self.drafter = drafter
        self.draft_max = draft_max
        self.length = draft_max  # the next draft's length at most
        self.failures = 0  # failed drafts in a row
        self.pause = 0  # steps left without drafting
        self.n_drafted = self.n_taken = 0

    def propose(self, ids: Sequence[int], room: int) -> tuple[list[int], list]:
        if self.pause:
            self.pause -= 1
            return [], []
        if room < 1:
            return [], []
        return self.drafter.draft(ids, min(room, self.length))

    def feedback(self, drafted: int, taken: int) -> None:
        self.n_drafted += drafted
        self.n_taken += taken
        if taken == drafted:
            self.length = min(self.draft_max, 2 * self.length)
        elif 2 * taken < drafted:
            self.length = max(1, self.length // 2)
        if 2 * taken >= drafted:
            self.failures = 0
        else:
            self.failures += 1
            self.pause = min(self.MAX_PAUSE, 2 ** self.failures - 1)
