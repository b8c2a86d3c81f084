"""Speculative decoding (pyengine/speculative.py): with temperature 0 exactly the tokens of plain
greedy decoding (prompt lookup and a draft model, on many prompts, stop strings, max_tokens, EOS
inside a draft, a full context); with sampling the target's distribution (chi-square against the
exact distribution of a tiny model's chain, and of the rule alone); the batched binding; the checks."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest

import pyengine
from pyengine.chat import ChatSession
from pyengine.generate import TokenStream
from pyengine.sampling import Sampler, SamplingParams, softmax
from pyengine.speculative import LookupDrafter, ModelDrafter, Speculator, speculator, verify
from tiny_models import write_tiny_llama

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "models"))
from recipes import smollm2  # noqa: E402

EOS = 256  # the tiny models' <|endoftext|>


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("spec")


@pytest.fixture(scope="module")
def tiny(tiny_dir):
    return pyengine.Model(write_tiny_llama(tiny_dir / "tiny.gguf"), n_ctx=128, n_threads=1)


@pytest.fixture(scope="module")
def smol():
    return pyengine.Model(n_ctx=1024, n_threads=2)


@pytest.fixture(scope="module")
def smol_draft():
    return pyengine.Model(smollm2("q4_0"), n_ctx=1024, n_threads=2)  # the same vocabulary, other weights


def run(model, ids, draft=None, draft_max=8, max_tokens=40, stop=(), n_ctx=None, p_min=None, **sampling):
    """generate() through its TokenStream, keeping the speculator for its counts. p_min: a draft
    model's, instead of its default (tiny random models are never sure of a token)."""
    params = SamplingParams.from_options(sampling)
    ctx = model.context(n_ctx or min(model.n_ctx, len(ids) + max_tokens))
    spec = speculator(model, draft, draft_max, params, ctx.n_ctx)
    if p_min is not None:
        spec.drafter.p_min = p_min
    stream = TokenStream(ctx, ids, Sampler(params, model.n_vocab), max_tokens, stop, speculator=spec)
    pieces = [piece for _, piece in stream]
    assert "".join(pieces) == stream.text
    assert ctx.n_past == len(stream.ids)  # nothing drafted is left in the cache
    return stream, spec


def same(a, b):
    assert (a.tokens, a.text, a.finish_reason) == (b.tokens, b.text, b.finish_reason)


# --- greedy: exactly plain decoding ---


def test_greedy_lookup_gives_the_plain_tokens_on_many_prompts(tiny):
    rng = np.random.default_rng(0)
    drafted = taken = 0
    for i in range(100):
        motif = rng.integers(0, 256, size=int(rng.integers(2, 6))).tolist()
        ids = (motif * int(rng.integers(1, 8)) + rng.integers(0, 300, size=int(rng.integers(1, 12))).tolist())[:80]
        stop = () if i % 3 else (tiny.detokenize(motif[:2]),)
        kw = dict(max_tokens=int(rng.integers(1, 64)), stop=stop, temperature=0.0,
                  repetition_penalty=1.0 if i % 2 else 1.3, draft_max=int(rng.integers(1, 9)))
        plain, _ = run(tiny, ids, **{**kw, "draft_max": 8})
        spec_stream, spec = run(tiny, ids, draft="lookup", **kw)
        same(plain, spec_stream)
        drafted, taken = drafted + spec.n_drafted, taken + spec.n_taken
    assert taken > 50 and drafted > taken  # drafts were taken and rejected


def test_greedy_draft_model_gives_the_plain_tokens(tiny, tiny_dir):
    close = pyengine.Model(write_tiny_llama(tiny_dir / "q8.gguf", weight_type="q8_0"), n_ctx=128, n_threads=1)
    other = pyengine.Model(write_tiny_llama(tiny_dir / "other.gguf", seed=1), n_ctx=64, n_threads=1)
    rng = np.random.default_rng(1)
    counts = {}
    for i in range(12):
        ids = rng.integers(0, 300, size=int(rng.integers(1, 30))).tolist()
        plain, _ = run(tiny, ids, max_tokens=60, temperature=0.0)
        for name, draft in (("close", close), ("other", other)):
            stream, spec = run(tiny, ids, draft=draft, max_tokens=60, temperature=0.0, p_min=0.0)
            same(plain, stream)
            d, t = counts.get(name, (0, 0))
            counts[name] = (d + spec.n_drafted, t + spec.n_taken)
    assert counts["close"][1] > 0.8 * counts["close"][0] > 0  # a draft model close to the target
    assert counts["other"][0] > counts["other"][1]  # and one whose drafts fail (its context is smaller too)


def test_eos_inside_a_draft_and_the_full_context(tiny):
    # the prompt holds 5 6 A EOS 7 8: after "5 6 A" lookup drafts "EOS 7 8 ...", and the target, which
    # says A then EOS (biased to A, but A just said is penalized), stops inside the draft
    a = 100
    sampling = dict(temperature=0.0, logit_bias={a: 50.0, EOS: 40.0}, presence_penalty=20.0, repeat_last_n=1)
    ids = [5, 6, a, EOS, 7, 8, 5, 6]
    plain, _ = run(tiny, ids, **sampling)
    spec_stream, spec = run(tiny, ids, draft="lookup", **sampling)
    same(plain, spec_stream)
    assert spec_stream.tokens == [a] and spec_stream.finish_reason == "stop" and spec.n_drafted > 1
    # a context that fills mid-draft: the same last token, finish "length"
    ids = [5, 6, 7] * 10
    for n_ctx in range(31, 40):
        plain, _ = run(tiny, ids, max_tokens=100, n_ctx=n_ctx, temperature=0.0)
        spec_stream, _ = run(tiny, ids, draft="lookup", max_tokens=100, n_ctx=n_ctx, temperature=0.0)
        same(plain, spec_stream)
        assert spec_stream.finish_reason == "length" and len(spec_stream.ids) <= n_ctx


def test_greedy_on_the_default_model_api_and_chat(smol, smol_draft):
    text = ("The old lighthouse keeper climbed the stairs every evening at dusk, lit the great lamp, and "
            "watched the ships pass along the rocky coast until the morning came.")
    messages = [{"role": "user", "content": "Repeat this text exactly:\n\n" + text}]
    plain = smol.chat(messages, max_tokens=48, temperature=0)
    assert smol.chat(messages, max_tokens=48, temperature=0, draft="lookup").tokens == plain.tokens
    assert smol.chat(messages, max_tokens=48, temperature=0, draft=smol_draft, draft_max=4).tokens == plain.tokens
    prompt = "Numbers: one, two, three, one, two, three, one, two,"
    plain = smol.generate(prompt, max_tokens=24, temperature=0, stop=["three, one, two, three, one"])
    spec = smol.generate(prompt, max_tokens=24, temperature=0, stop=["three, one, two, three, one"], draft="lookup")
    same(plain, spec)
    streamed = "".join(smol.generate(prompt, max_tokens=24, temperature=0, stream=True, draft="lookup"))
    assert streamed == smol.generate(prompt, max_tokens=24, temperature=0).text
    # a chat session drafts across turns and keeps its cache exact
    for draft_option in (None, "lookup"):
        session = ChatSession(smol, max_tokens=24, temperature=0, draft=draft_option)
        replies = ["".join(session.ask(q)) for q in ("Say 'red green blue' twice.", "Again, please.")]
        assert session.ctx.n_past == len(session.ctx_ids)
        if draft_option is None:
            expected = replies
        else:
            assert replies == expected and session.speculator.n_taken > 0


# --- sampling: the target's distribution ---


def chi_square_p(observed, expected) -> float:
    """p-value of Pearson's statistic (cells with expected < 5 pooled), Wilson-Hilferty's approximation."""
    observed, expected = np.asarray(observed, float), np.asarray(expected, float)
    small = expected < 5
    if small.any():
        observed = np.append(observed[~small], observed[small].sum())
        expected = np.append(expected[~small], expected[small].sum())
    stat = float(((observed - expected) ** 2 / expected).sum())
    k = observed.size - 1
    z = ((stat / k) ** (1 / 3) - (1 - 2 / (9 * k))) / math.sqrt(2 / (9 * k))
    return 0.5 * math.erfc(z / math.sqrt(2))


def test_the_rule_keeps_p_for_any_draft_distribution():
    """verify() on a constructed chain: the tokens that come out follow p, whether the draft is
    deterministic (one-hot q) or drawn from a q that differs from p."""
    logits = np.log(np.array([0.05, 0.3, 0.02, 0.4, 0.13, 0.1], np.float32))
    sampler = Sampler(SamplingParams(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=5), 6)
    p = softmax(logits.astype(np.float64))
    q = np.array([0.3, 0.05, 0.3, 0.1, 0.05, 0.2])
    draws = np.random.default_rng(6)
    n = 10000
    for case in ("one-hot", "sampled"):
        counts, accepted = np.zeros(6), 0
        for _ in range(n):
            if case == "one-hot":
                x, dist = 1, None
            else:
                x, dist = int(draws.choice(6, p=q)), (np.arange(6), q)
            token, ok = verify(sampler, [], logits, x, dist)
            counts[token] += 1
            accepted += ok
        assert chi_square_p(counts, n * p) > 1e-3, (case, counts / n, p)
        expected_accepted = p[1] if case == "one-hot" else np.minimum(p, q).sum()
        assert abs(accepted / n - expected_accepted) < 0.02


class FixedDrafts:
    """A drafter that always proposes `draft` (as a Speculator would, without adapting)."""

    def __init__(self, draft, q=None, seed=0):
        self.draft, self.q, self.rng = draft, q, np.random.default_rng(seed)
        self.n_taken = 0

    def propose(self, ids, room):
        if room < 1:
            return [], []
        if self.q is None:
            return self.draft[:room], [None] * min(room, len(self.draft))
        candidates, probs = self.q
        tokens = [int(self.rng.choice(candidates, p=probs)) for _ in range(room)]
        return tokens, [self.q] * room

    def feedback(self, drafted, taken):
        self.n_taken += taken


@pytest.mark.parametrize("kind", ["one-hot", "sampled", "draft model"])
def test_sampled_generation_keeps_the_models_distribution(tiny, kind):
    """Three tokens sampled with drafts at the second and third (penalties over the window that holds
    the drafts taken), against the exact joint distribution of the chain on the model's logits. The
    draft model (the model itself: q = p) drafts where its most likely token reaches p_min, set just
    under that of the first position: keeping only draws that reached it would give the top token
    every time there."""
    params = dict(temperature=1.5, top_k=4, top_p=0.95, min_p=0.0, repetition_penalty=1.5, repeat_last_n=3,
                  logit_bias={EOS: -np.inf})
    prompt = [40, 41, 42]
    chain = Sampler(SamplingParams(**params), tiny.n_vocab)

    def dist(ids):
        return chain.distribution(ids, tiny.logits(ids)[-1])

    exact = {}
    for a, pa in zip(*dist(prompt)):
        for b, pb in zip(*dist(prompt + [a])):
            for c, pc in zip(*dist(prompt + [a, b])):
                exact[(int(a), int(b), int(c))] = pa * pb * pc
    first = dist(prompt)[0]
    likely = [int(first[0]), int(first[-1])]  # drafts that are sometimes right
    q = (np.array(sorted({*likely, 299})), np.array([0.5, 0.3, 0.2]))  # 299: a token the chain never keeps
    n = 3000
    counts = dict.fromkeys(exact, 0)
    taken = 0
    p_min = 0.99 * float(dist(prompt)[1].max())
    for seed in range(n):
        if kind == "draft model":
            drafter = Speculator(ModelDrafter(tiny, SamplingParams(**params, seed=10_000 + seed), 8, p_min=p_min), 2)
        else:
            drafter = FixedDrafts(likely, None if kind == "one-hot" else q, seed=10_000 + seed)
        stream = TokenStream(tiny.context(8), prompt, Sampler(SamplingParams(**params, seed=seed), tiny.n_vocab), 3,
                             speculator=drafter)
        for _ in stream:
            pass
        counts[tuple(stream.tokens)] += 1
        taken += drafter.n_taken
    assert taken > n / 10
    keys = list(exact)
    assert chi_square_p([counts[k] for k in keys], [n * exact[k] for k in keys]) > 1e-3


def test_same_seed_same_text_with_a_draft(smol, smol_draft):
    prompt = "List the days of the week: Monday, Tuesday, Wednesday,"
    for d in ("lookup", smol_draft):
        a = smol.generate(prompt, max_tokens=16, seed=3, draft=d)
        b = smol.generate(prompt, max_tokens=16, seed=3, draft=d)
        assert a.tokens == b.tokens


# --- the pieces ---


def test_lookup_drafts_what_followed_the_latest_occurrence():
    d = LookupDrafter(min_ngram=2, max_ngram=3)
    assert d.draft([1, 2, 3, 4, 9, 1, 2], 2) == ([3, 4], [None, None])
    assert d.draft([1, 2, 3, 4, 9, 1, 2, 3], 5) == ([4, 9, 1, 2, 3], [None] * 5)  # the longest n-gram: 1 2 3
    assert d.draft([1, 2, 3, 4, 9, 1, 2, 3, 5, 2, 3], 1) == ([5], [None])  # the latest occurrence of 2 3
    assert d.draft([7, 8], 3) == ([], [])  # another sequence: indexed again, nothing before
    assert d.draft([7, 8, 7], 3) == ([], [])  # an n-gram of one token is not enough


def test_a_failing_drafter_pauses():
    class Never:
        def draft(self, ids, n):
            return [0] * n, [None] * n

    s = Speculator(Never(), 8)
    steps = []
    for _ in range(200):
        tokens, _ = s.propose([1, 2, 3], 100)
        steps.append(len(tokens))
        if tokens:
            s.feedback(len(tokens), 0)
    assert sum(1 for n in steps if n) <= 9 and steps[:3] == [8, 0, 4]


def test_eval_batch_is_eval_all_of_each_context(tiny):
    a, b = tiny.context(16), tiny.context(16)
    a.eval([1, 2, 3])
    rows = tiny.eval_batch([a, b], [[4, 5], [6, 7, 8]])
    assert [r.shape for r in rows] == [(2, 300), (3, 300)] and (a.n_past, b.n_past) == (5, 3)
    np.testing.assert_array_equal(rows[0], tiny.logits([1, 2, 3, 4, 5])[3:])
    np.testing.assert_array_equal(rows[1], tiny.logits([6, 7, 8]))
    for contexts, ids, match in (([a, a], [[1], [2]], "twice"), ([a, b], [[1], []], "no tokens"),
                                 ([a, b], [[1], [300]], "outside the vocabulary"),
                                 ([a, b], [[1], [1] * 14], "do not fit"), ([a], [[1], [2]], "one list")):
        with pytest.raises(ValueError, match=match):
            tiny.eval_batch(contexts, ids)
        assert (a.n_past, b.n_past) == (5, 3)  # nothing half-done


def test_eval_batch_last_only_gives_each_contexts_last_row(tiny):
    """The server's step that reads a prompt chunk beside the other sequences' next tokens: only
    each context's last token gets logits, the same bits as all of them give; the tokens span two
    micro-batches (256 tokens a pass), so the wanted rows are scattered across both."""
    a, b, c = tiny.context(400), tiny.context(400), tiny.context(400)
    a.eval([1, 2, 3])
    ids = [[4], [(7 * i) % 300 for i in range(270)], [6, 7, 8]]
    want = [tiny.context(400).eval(x) for x in ([1, 2, 3, 4], ids[1], ids[2])]
    rows = tiny.eval_batch([a, b, c], ids, last_only=True)
    assert [r.shape for r in rows] == [(1, 300)] * 3 and (a.n_past, b.n_past, c.n_past) == (4, 270, 3)
    for got, expected in zip(rows, want):
        np.testing.assert_array_equal(got[0], expected)


def test_bad_draft_options_are_refused_up_front(tiny, tiny_dir):
    for kw, match in ((dict(draft_max=0), "draft_max"), (dict(draft_max=True), "draft_max"),
                      (dict(draft="ngram"), "draft must be"), (dict(draft=3), "draft must be")):
        with pytest.raises(ValueError, match=match):
            tiny.generate([1, 2], max_tokens=2, **kw)
        with pytest.raises(ValueError, match=match):
            ChatSession(tiny, **kw)
    spm = pyengine.Model(write_tiny_llama(tiny_dir / "spm.gguf", vocab="spm"), n_threads=1)
    with pytest.raises(ValueError, match="another vocabulary"):
        tiny.generate([1, 2], max_tokens=2, draft=spm)
    with pytest.raises(ValueError, match="another vocabulary"):
        tiny.chat([{"role": "user", "content": "hi"}], draft=spm)
