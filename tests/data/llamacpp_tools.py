"""Dev-only helpers of the make_llamacpp_*.py scripts: what they ask llama.cpp (llama-cpp-python, never a
runtime need) in common. Each takes a llama_cpp.Llama made with logits_all=True."""

from __future__ import annotations

import math

import numpy as np


def log_softmax(x):
    x = np.asarray(x, np.float64)
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def top_k(logp, k):
    """(ids int32, values) of the k largest entries of each row, largest first."""
    ids = np.argsort(-logp, axis=-1, kind="stable")[..., :k]
    return ids.astype(np.int32), np.take_along_axis(logp, ids, -1)


def greedy_with_gaps(llm, n):
    """llama.cpp's greedy continuation of n tokens from what llm has evaluated (token by token after
    its last logits), and at each step the gap between its top two log-probabilities (a gap near 0
    is a tie that float noise may break either way). -> (tokens int32, gaps float32)."""
    tokens, gaps = [], []
    scores = np.array(llm.scores[llm.n_tokens - 1])
    for _ in range(n):
        nxt = int(np.argmax(scores))
        top2 = np.sort(log_softmax(scores))[-2:]
        tokens.append(nxt)
        gaps.append(top2[1] - top2[0])
        llm.eval([nxt])
        scores = np.array(llm.scores[llm.n_tokens - 1])
    return np.array(tokens, np.int32), np.array(gaps, np.float32)


def token_by_token_kl(llama_cpp, path, ids, logp, n_threads=2):
    """KL(batch || token by token) at each position: llama.cpp's log-probabilities logp of ids evaluated
    in one batch against its own evaluation of them one token at a time (n_batch 1, default KV cache),
    its noise floor on this model (another matmul path, other roundings)."""
    one = llama_cpp.Llama(model_path=str(path), n_ctx=512, n_batch=1, n_ubatch=1, logits_all=True,
                          n_threads=n_threads, verbose=False)
    one.eval(ids)
    logp_one = log_softmax(np.array(one.scores[: len(ids)]))
    return (np.exp(logp) * (logp - logp_one)).sum(-1).astype(np.float64)


def perplexity_chunks(tokens, n_ctx, n_chunks, bos_id=None):
    """llama-perplexity's chunks of an already tokenized text: consecutive n_ctx tokens, the first of
    each replaced by BOS when the model adds one (bos_id not None)."""
    chunks = []
    for i in range(min(len(tokens) // n_ctx, n_chunks)):
        chunk = list(tokens[i * n_ctx:(i + 1) * n_ctx])
        if bos_id is not None:
            chunk[0] = bos_id
        chunks.append(chunk)
    return chunks


def chunk_nll(llm, chunk):
    """(negative log-likelihood, count) of one chunk as llama-perplexity scores it: evaluated from
    position 0 in one batch, only the second half scored (the logits at j predicting token j + 1 for
    j = n/2 .. n-2)."""
    n = len(chunk)
    llm.reset()
    llm.eval(chunk)
    logp = log_softmax(np.array(llm.scores[:n], np.float32))
    j = np.arange(n // 2, n - 1)
    return float(-logp[j, np.asarray(chunk)[j + 1]].sum()), len(j)


def perplexity(llm, chunks):
    """(ppl, per-chunk NLL sums, count) over the chunks."""
    nlls, count = [], 0
    for chunk in chunks:
        nll, c = chunk_nll(llm, chunk)
        nlls.append(nll)
        count += c
    return math.exp(sum(nlls) / count), np.array(nlls, np.float64), count
