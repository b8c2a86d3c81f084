"""Perplexity and KL-divergence, by llama.cpp's method (tools/perplexity).

The text is tokenized once (with BOS if the file adds one) and cut into chunks of n_ctx tokens;
each chunk is a fresh sequence whose first token is replaced by BOS when the model adds one, and
only the second half of each chunk is scored: the logits at positions n_ctx/2 ... n_ctx-2 predict
the tokens that follow them. ppl = exp(mean negative log-likelihood).

With a base model (`kl_base`), both models see the same chunks, and at every scored position the
KL-divergence of this model's next-token distribution from the base's, KL(base || model), is
taken, with the agreement of their top-1 tokens, as llama.cpp's --kl-divergence reports them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .beam import log_softmax
from .model import Model


@dataclass
class PerplexityResult:
    ppl: float
    n_chunks: int
    n_ctx: int
    n_scored: int
    chunk_ppl: list[float] = field(default_factory=list)  # running estimate after each chunk
    # with a base model
    base_ppl: float | None = None
    kld_mean: float | None = None
    kld_median: float | None = None
    kld_p99: float | None = None
    kld_max: float | None = None
    top1_agreement: float | None = None  # fraction of scored positions with the same top-1 token

    @property
    def delta_ppl(self) -> float | None:
        return None if self.base_ppl is None else self.ppl - self.base_ppl

    def to_dict(self) -> dict:
        d = {k: v for k, v in self.__dict__.items() if v is not None}
        if self.base_ppl is not None:
            d["delta_ppl"] = self.delta_ppl
        return d


def chunk_tokens(model: Model, text: str, n_ctx: int, n_chunks: int | None) -> list[list[int]]:
    if n_ctx < 8:
        raise ValueError(f"the chunk size must be at least 8 tokens, got {n_ctx}")
    # As llama-perplexity and llama-imatrix read a text: special-token text in it ("<|endoftext|>",
    # "<s>") is text, not control tokens (llama.cpp's parse_special is off there)
    tokens = model.tokenizer.encode(text, add_bos=model.tokenizer.add_bos, parse_special=False)
    available = len(tokens) // n_ctx
    if available == 0:
        raise ValueError(f"the text has {len(tokens)} tokens, fewer than one chunk of {n_ctx}")
    if n_chunks is not None:
        if n_chunks < 1:
            raise ValueError(f"--chunks must be at least 1, got {n_chunks}")
        available = min(available, n_chunks)
    chunks = []
    bos = model.tokenizer.bos_id if model.tokenizer.add_bos else None
    for i in range(available):
        chunk = tokens[i * n_ctx:(i + 1) * n_ctx]
        if bos is not None:
            chunk[0] = bos
        chunks.append(chunk)
    return chunks


def scored_logprobs(model: Model, chunks: list[list[int]]) -> list[np.ndarray]:
    """float32 log-probabilities at the scored positions of each chunk: a base model's, computed once
    and reused against several models (bench/formats.py)."""
    return [log_softmax(scored_logits(model, c)).astype(np.float32) for c in chunks]


def scored_logits(model: Model, chunk: list[int]) -> np.ndarray:
    """float32 logits at a chunk's scored positions, len(chunk) // 2 ... len(chunk) - 2: the first
    half read for the cache alone, without the logits it does not score (the same bits, by the
    determinism promise; with Gemma's 262,144-token vocabulary the output matrix over the whole chunk
    took 3x the time of the chunk's forward pass with only these rows)."""
    first = len(chunk) // 2
    ctx = model.context()
    ctx.eval(chunk[:first])
    return ctx.eval_all(chunk[first:len(chunk) - 1])


def perplexity(model: Model, text: str, n_ctx: int = 512, n_chunks: int | None = None,
               kl_base: Model | list[np.ndarray] | None = None, progress: bool = False) -> PerplexityResult:
    """Perplexity of `model` on `text` (and its divergence from `kl_base`, if given: a Model, or
    the scored_logprobs of one on the same chunks)."""
    base_model = kl_base if isinstance(kl_base, Model) else None
    for m in (model, base_model):
        if m is not None and m.n_ctx < n_ctx:
            raise ValueError(f"the model's context ({m.n_ctx}) is shorter than the chunk size {n_ctx}")
    if base_model is not None and base_model.n_vocab != model.n_vocab:
        raise ValueError(f"the base model has {base_model.n_vocab} tokens, this one {model.n_vocab}")
    chunks = chunk_tokens(model, text, n_ctx, n_chunks)
    if kl_base is not None and base_model is None:
        if len(kl_base) != len(chunks):
            raise ValueError(f"{len(kl_base)} chunks of base log-probabilities for {len(chunks)} chunks")
        if kl_base and kl_base[0].shape[-1] != model.n_vocab:
            raise ValueError(f"the base model has {kl_base[0].shape[-1]} tokens, this one {model.n_vocab}")
    first = n_ctx // 2
    nll, base_nll, count = 0.0, 0.0, 0
    klds, agree, chunk_ppl = [], 0, []
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(chunks), unit="chunk", desc="perplexity")
    for i, chunk in enumerate(chunks):
        targets = np.asarray(chunk[first + 1:])
        logits = scored_logits(model, chunk)
        base_logits = scored_logits(base_model, chunk) if base_model is not None else None
        # Eight scored positions at a time, so that no chunk-sized float64 array is made (535 MB a
        # chunk with Gemma's vocabulary, which cost more than the forward pass); the per-position
        # values are summed once a chunk, as before.
        target_logp, base_target_logp = np.empty(len(targets)), np.empty(len(targets))
        kld = np.empty(len(targets))
        for start in range(0, len(targets), 8):
            rows = slice(start, start + 8)
            at = (np.arange(len(targets[rows])), targets[rows])
            logp = log_softmax(logits[rows])
            target_logp[rows] = logp[at]
            if kl_base is not None:
                base_logp = (log_softmax(base_logits[rows]) if base_model is not None
                             else kl_base[i][rows].astype(np.float64))
                base_target_logp[rows] = base_logp[at]
                kld[rows] = (np.exp(base_logp) * (base_logp - logp)).sum(axis=-1)
                agree += int((base_logp.argmax(-1) == logp.argmax(-1)).sum())
        nll -= float(target_logp.sum())
        if kl_base is not None:
            base_nll -= float(base_target_logp.sum())
            klds.append(kld)
        count += len(targets)
        chunk_ppl.append(math.exp(nll / count))
        if bar is not None:
            bar.set_postfix(ppl=f"{chunk_ppl[-1]:.4f}")
            bar.update(1)
    if bar is not None:
        bar.close()
    result = PerplexityResult(ppl=math.exp(nll / count), n_chunks=len(chunks), n_ctx=n_ctx, n_scored=count,
                              chunk_ppl=chunk_ppl)
    if kl_base is not None:
        kld = np.concatenate(klds)
        result.base_ppl = math.exp(base_nll / count)
        result.kld_mean = float(kld.mean())
        result.kld_median = float(np.median(kld))
        result.kld_p99 = float(np.percentile(kld, 99))
        result.kld_max = float(kld.max())
        result.top1_agreement = agree / count
    return result
