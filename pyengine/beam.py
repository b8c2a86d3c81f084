"""Beam search with the semantics of HF transformers' `generate(num_beams=k, do_sample=False)`
(transformers 5's vectorized beam search, batch of one), on KV caches that fork.

    beam_search(model, prompt, num_beams=4, max_tokens=64) -> [Completion, ...]   # best first

The algorithm, step by step (`n` = tokens generated after the step):
- Every running beam's next-token log-probs (log_softmax of its logits) are added to the beam's
  running score (its summed log-probs). Of all k * n_vocab candidates the best `n_keep` are taken,
  n_keep = max(2, 1 + n_eos) * k: enough that, after the end-of-generation candidates are set aside,
  k others are always left (each beam has n_eos of them).
- A candidate "stops" when its token is end-of-generation (the file's eog_ids: EOS, end of turn) or
  when n == max_tokens. Stopped candidates among the best k ranks become finished hypotheses, scored
  running score / n ** length_penalty (n counts the EOS); the k best hypotheses seen so far are kept.
  Stopped candidates below rank k are dropped.
- The k best candidates that did not stop are the next running beams.
- The search ends when n == max_tokens, or with early_stopping=True as soon as k hypotheses are
  finished, or when the best running beam cannot beat the worst of k finished hypotheses any more.
  How "cannot beat" is judged is transformers' heuristic: the best running score divided by
  n ** length_penalty (early_stopping False, or "never" with length_penalty <= 0), or by
  max_tokens ** length_penalty (early_stopping "never" with length_penalty > 0: a longer beam may
  still win). With early_stopping=True no hypothesis is added once k are finished.
- num_beams=1 is greedy search, as transformers' generate dispatches it: the same as one beam with
  early_stopping=True (stop at the first end-of-generation token).

Transformers' bookkeeping is followed literally, its "very large negative" (-1e9) masks included:
at the start the k beams are k copies of the prompt, the first scored 0 and the others -1e9 (so
that the first step expands one beam only); a stopped candidate that must still fill a running beam
(only when the vocabulary is smaller than n_keep) keeps running with -1e9 added. Scores are summed
in float64 (transformers: float32), so -1e9 + x keeps x; ties between equal scores go to the lower
index (beam-major, then token id), where torch.topk leaves the order unspecified.

The prompt is evaluated once, in one context. A running beam owns a context holding the prompt and
its tokens; a step's children of one parent share it (the first takes it, the others fork a copy of
the cache), a parent with no child is dropped, so at most k contexts are live. All running beams go
through one batched forward call per step (Model.eval_sequences). The last token of a hypothesis is
never evaluated.

Results follow pyengine.generate's Completion: .tokens are the generated ids without the final
end-of-generation token (finish_reason "stop"; "length" when the hypothesis ran to max_tokens), .text
their text (control tokens give none), .score the hypothesis score above (transformers'
`sequences_scores`).
"""

from __future__ import annotations

import math
import numbers
from typing import TYPE_CHECKING

import numpy as np

from .generate import Completion, check_max_tokens, prompt_ids

if TYPE_CHECKING:
    from .model import Model

__all__ = ["beam_search", "log_softmax"]

NEG = -1.0e9  # transformers' mask value: what a banned candidate or an empty slot scores


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """float64 log-probabilities of each row of logits (a new array). Eight rows at a time: the
    temporaries of a whole perplexity chunk (255 rows of Gemma's 262,144 logits: 535 MB each) made it
    ~7x slower than the same operations row block by row block, which give the same bits."""
    x = np.array(logits, np.float64)
    rows = x.reshape(-1, x.shape[-1])
    for start in range(0, len(rows), 8):
        block = rows[start:start + 8]
        block -= block.max(axis=-1, keepdims=True)
        block -= np.log(np.exp(block).sum(axis=-1, keepdims=True))
    return x


def _step_logprobs(logits: np.ndarray) -> np.ndarray:
    logprobs = log_softmax(logits)
    if np.isnan(logprobs).any():  # NaN or +inf logits: no ranking of the candidates means anything
        raise ValueError("the model's logits hold NaN or +inf; beam search cannot rank the candidates")
    return logprobs


def _top(scores: np.ndarray, m: int) -> np.ndarray:
    """Indices of the m largest scores, best first; equal scores by lower index."""
    m = min(m, scores.size)
    if m < scores.size:
        kth = np.partition(scores, scores.size - m)[scores.size - m]  # the m-th largest value
        above = np.flatnonzero(scores > kth)
        tied = np.flatnonzero(scores == kth)[:m - above.size]
        idx = np.concatenate([above, tied])
    else:
        idx = np.arange(scores.size)
    return idx[np.lexsort((idx, -scores[idx]))]


def _check_params(num_beams, max_tokens, length_penalty, early_stopping, num_return_sequences) -> None:
    if isinstance(num_beams, bool) or not isinstance(num_beams, numbers.Integral) or num_beams < 1:
        raise ValueError(f"num_beams must be an integer >= 1, got {num_beams!r}")
    if (isinstance(num_return_sequences, bool) or not isinstance(num_return_sequences, numbers.Integral)
            or not 1 <= num_return_sequences <= num_beams):
        raise ValueError(f"num_return_sequences must be an integer from 1 to num_beams ({num_beams}), "
                         f"got {num_return_sequences!r}")
    check_max_tokens(max_tokens)
    if (isinstance(length_penalty, bool) or not isinstance(length_penalty, numbers.Real)
            or not math.isfinite(length_penalty)):
        raise ValueError(f"length_penalty must be a finite number, got {length_penalty!r}")
    # transformers tests `early_stopping is True`: 1 or "true" would silently mean False there
    if not (isinstance(early_stopping, bool) or (isinstance(early_stopping, str) and early_stopping == "never")):
        raise ValueError(f"early_stopping must be True, False or 'never', got {early_stopping!r}")


def beam_search(model: Model, prompt, num_beams: int = 4, max_tokens: int = 64, length_penalty: float = 1.0,
                early_stopping: bool | str = False, num_return_sequences: int = 1) -> list[Completion]:
    """The num_return_sequences best hypotheses of a beam search from `prompt` (str, tokenized with
    the file's add_bos, or a sequence of token ids), best first. See the module's docstring for the
    algorithm; every argument is checked (ValueError) before any model work.

    max_tokens is cut to what the model's context holds after the prompt (as generate() stops when
    the context is full); max_tokens=0 gives num_return_sequences empty completions scored 0."""
    _check_params(num_beams, max_tokens, length_penalty, early_stopping, num_return_sequences)
    num_beams, num_return_sequences = int(num_beams), int(num_return_sequences)
    length_penalty = float(length_penalty)
    ids = prompt_ids(model, prompt)
    if len(ids) > model.n_ctx:
        raise ValueError(f"the prompt has {len(ids)} tokens, more than the context of {model.n_ctx}")
    # the last generated token is not evaluated: n_ctx - len(ids) + 1 tokens fit after the prompt
    max_tokens = min(max_tokens, model.n_ctx - len(ids) + 1)
    if max_tokens == 0:
        return [Completion("", [], "length", 0.0) for _ in range(num_return_sequences)]
    if num_beams == 1:
        early_stopping = True  # greedy search

    tokenizer = model.tokenizer
    k, n_vocab = num_beams, model.n_vocab
    is_eog = np.zeros(n_vocab, bool)
    is_eog[sorted(tokenizer.eog_ids)] = True
    n_keep = max(2, 1 + len(tokenizer.eog_ids)) * k
    ranks = np.arange(n_keep)

    # Running beams: generated tokens, summed log-probs, context (prompt + tokens), and the row of
    # `logprobs` holding their next-token log-probs. At the start: k copies of the prompt.
    ctx = model.context(len(ids) + max_tokens - 1)
    logprobs = _step_logprobs(ctx.eval(ids))[None, :]
    beam_tokens: list[list[int]] = [[] for _ in range(k)]
    beam_scores = np.full(k, NEG)
    beam_scores[0] = 0.0
    beam_ctx = [ctx] * k
    del ctx
    beam_rows = np.zeros(k, np.intp)
    # Finished hypotheses: k slots, best first; an empty slot scores NEG.
    hyp_tokens: list[list[int] | None] = [None] * k
    hyp_scores = np.full(k, NEG)
    hyp_done = np.zeros(k, bool)
    can_improve = True

    for n in range(1, max_tokens + 1):
        acc = (beam_scores[:, None] + logprobs[beam_rows]).ravel()
        top = _top(acc, n_keep)
        parent, token = np.divmod(top, n_vocab)
        cand_scores = acc[top]
        stops = is_eog[token] | (n == max_tokens)

        # Finished hypotheses: the stopped candidates among the best k ranks join the slots.
        normed = cand_scores / n ** length_penalty
        if early_stopping is True and hyp_done.all():
            normed = normed + NEG
        if not can_improve:
            normed = normed + NEG
        just_done = stops & (ranks < k)
        normed = normed + NEG * ~just_done
        merged = np.concatenate([hyp_scores, normed])
        pick = _top(merged, k)
        hyp_tokens = [hyp_tokens[i] if i < k else beam_tokens[parent[i - k]] + [int(token[i - k])] for i in pick]
        hyp_scores = merged[pick]
        hyp_done = np.concatenate([hyp_done, just_done])[pick]

        # Next running beams: the best k candidates that did not stop.
        run_scores = cand_scores + NEG * stops
        nxt = _top(run_scores, k)

        limit = max_tokens if early_stopping == "never" and length_penalty > 0 else n
        best_possible = run_scores[nxt[0]] / limit ** length_penalty
        worst_done = np.where(hyp_done, hyp_scores.min(), NEG)
        can_improve = can_improve and bool((best_possible > worst_done).any())
        if not can_improve or (early_stopping is True and hyp_done.all()) or stops.all():
            break

        parents = parent[nxt]
        new_tokens = token[nxt]
        beam_tokens = [beam_tokens[p] + [int(t)] for p, t in zip(parents, new_tokens)]
        beam_scores = run_scores[nxt]
        # Contexts: parents without a child go first (dropping the last reference frees the
        # cache), then a parent's first child takes its context and the others fork it.
        parent_ctx = [beam_ctx[p] for p in parents]
        beam_ctx = []
        taken: set[int] = set()
        for c in parent_ctx:
            if id(c) in taken:
                beam_ctx.append(c.fork())
            else:
                taken.add(id(c))
                beam_ctx.append(c)
        del parent_ctx
        logprobs = _step_logprobs(model.eval_sequences(beam_ctx, new_tokens))
        beam_rows = np.arange(k)

    results = []
    for tokens, score in zip(hyp_tokens[:num_return_sequences], hyp_scores[:num_return_sequences]):
        if tokens is None:  # an empty slot: only when num_beams outnumbers what the vocabulary can fill
            continue
        stopped = bool(tokens) and bool(is_eog[tokens[-1]])
        if stopped:
            tokens = tokens[:-1]
        results.append(Completion(tokenizer.decode(tokens, skip_special=True, continuation=True), list(tokens),
                                  "stop" if stopped else "length", float(score)))
    return results
