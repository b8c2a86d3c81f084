"""Perplexity and KL-divergence (llama.cpp's method), bench and info on tiny models."""

import math

import numpy as np
import pytest

import pyengine
from pyengine.bench import bench_model, format_table, sweep
from pyengine.info import format_info, info
from pyengine.perplexity import perplexity
from pyengine.requantize import quantize_model

from reference_model import ReferenceModel
from tiny_models import write_tiny_llama

TEXT = "The quick brown fox jumps over the lazy dog. " * 40  # ~1800 byte-level tokens


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("ppl")
    f32 = write_tiny_llama(d / "f32.gguf", weight_type="f32", n_ctx_train=128, seed=3)
    q4 = d / "q4_0.gguf"
    quantize_model(f32, q4, "q4_0")
    return f32, q4


def test_perplexity_follows_llamacpp_method(models):
    f32, _ = models
    m = pyengine.Model(f32, n_ctx=64)
    res = perplexity(m, TEXT, n_ctx=64, n_chunks=3)
    assert res.n_chunks == 3 and res.n_scored == 3 * (64 - 32 - 1)
    # the same by hand with the numpy reference: chunks of 64 tokens, the second half scored
    ref = ReferenceModel(f32)
    tokens = m.tokenize(TEXT)
    nll, count = 0.0, 0
    for c in range(3):
        chunk = tokens[c * 64:(c + 1) * 64]
        logits = ref.logits(chunk)
        logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
            - logits.max(-1, keepdims=True)
        for j in range(32, 63):
            nll -= logp[j, chunk[j + 1]]
            count += 1
    assert res.ppl == pytest.approx(math.exp(nll / count), rel=1e-3)
    assert len(res.chunk_ppl) == 3 and res.chunk_ppl[-1] == pytest.approx(res.ppl)


def test_scored_positions_alone_give_the_whole_chunks_bits(models):
    """perplexity reads a chunk's first half for the cache alone and takes logits only where it scores,
    and its log-softmax goes eight rows at a time: the same bits as the whole chunk's logits and a
    log-softmax of them all at once."""
    from pyengine.beam import log_softmax
    from pyengine.perplexity import chunk_tokens, scored_logits

    for path in models:
        m = pyengine.Model(path, n_ctx=64)
        for chunk in chunk_tokens(m, TEXT, 64, 2) + [m.tokenize(TEXT)[:37]]:
            whole = m.logits(chunk)[len(chunk) // 2:len(chunk) - 1]
            assert np.array_equal(scored_logits(m, chunk), whole)
            x = whole.astype(np.float64)
            x = x - x.max(axis=-1, keepdims=True)
            assert np.array_equal(log_softmax(whole), x - np.log(np.exp(x).sum(axis=-1, keepdims=True)))
            assert np.array_equal(log_softmax(whole[3]), log_softmax(whole)[3])


def test_special_token_text_is_read_as_text(models):
    """As llama-perplexity (and llama-imatrix) tokenize: "<|endoftext|>" in the text is its characters,
    not the control token."""
    from pyengine.perplexity import chunk_tokens

    m = pyengine.Model(models[0], n_ctx=64)
    eos = m.tokenizer.eos_id
    text = TEXT.replace(". ", ". <|endoftext|>")
    assert "<|endoftext|>" in text and eos in m.tokenize(text)  # the chat and generation path parse it
    tokens = [t for chunk in chunk_tokens(m, text, 64, None) for t in chunk]
    assert eos not in tokens and tokens[:40] == m.tokenizer.encode(text, parse_special=False)[:40]


def test_kl_divergence_against_a_base(models):
    f32, q4 = models
    base = pyengine.Model(f32, n_ctx=64)
    same = perplexity(base, TEXT, n_ctx=64, n_chunks=2, kl_base=base)
    assert same.kld_mean == pytest.approx(0.0, abs=1e-12)
    assert same.top1_agreement == 1.0 and same.delta_ppl == 0.0
    quant = perplexity(pyengine.Model(q4, n_ctx=64), TEXT, n_ctx=64, n_chunks=2, kl_base=base)
    assert quant.kld_mean > 0 and quant.kld_median <= quant.kld_p99 <= quant.kld_max
    assert 0.0 < quant.top1_agreement <= 1.0
    assert quant.base_ppl == pytest.approx(same.ppl)
    d = quant.to_dict()
    assert {"ppl", "kld_mean", "kld_median", "kld_p99", "top1_agreement", "delta_ppl"} <= set(d)


def test_perplexity_refuses_bad_input(models):
    f32, _ = models
    m = pyengine.Model(f32, n_ctx=64)
    with pytest.raises(ValueError, match="fewer than one chunk"):
        perplexity(m, "short text", n_ctx=64)
    with pytest.raises(ValueError, match="shorter than the chunk"):
        perplexity(m, TEXT, n_ctx=128)
    with pytest.raises(ValueError, match="chunks"):
        perplexity(m, TEXT, n_ctx=64, n_chunks=0)


def test_bench_and_info(models, tmp_path):
    f32, q4 = models
    r = bench_model(q4, n_prompt=16, n_gen=4, n_threads=1, repetitions=2, depth=8)
    assert r.pp_tok_s > 0 and r.tg_tok_s > 0 and r.ttft_s > 0 and r.threads == 1
    assert 4.5 < r.bpw < 9  # Q4_0 with a Q8_0 output and F32 norms
    results = sweep([f32, q4], threads=(1, 2), prompts=(8,), gens=(2,), repetitions=1)
    assert len(results) == 4
    table = format_table(results)
    assert "pp8" in table and "tg2" in table
    d = info(q4)
    assert d["architecture"] == "llama" and d["file_type"] == "mostly Q4_0"
    assert set(d["types"]) == {"q4_0", "q8_0", "f32"}
    assert "bits per weight" in format_info(d)
    with pytest.raises(ValueError):
        bench_model(q4, n_prompt=-1)


def test_precomputed_base_logprobs_give_the_same_divergence(models):
    from pyengine.perplexity import chunk_tokens, scored_logprobs

    f32, q4 = models
    base = pyengine.Model(f32, n_ctx=64)
    m = pyengine.Model(q4, n_ctx=64)
    direct = perplexity(m, TEXT, n_ctx=64, n_chunks=2, kl_base=base)
    cached = perplexity(m, TEXT, n_ctx=64, n_chunks=2,
                        kl_base=scored_logprobs(base, chunk_tokens(base, TEXT, 64, 2)))
    assert cached.kld_mean == pytest.approx(direct.kld_mean, rel=1e-4)
    assert cached.top1_agreement == direct.top1_agreement
