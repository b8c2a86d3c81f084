"""The sampling chain: each processor on 4-token distributions with hand-computed results (as ggml's
and transformers' tests do), the fast candidate paths against plain full-vocabulary versions, the
seeded draw, and the checks of every parameter."""

import math

import numpy as np
import pytest

import pyengine
import pyengine.chat
import pyengine.generate
from pyengine.sampling import (FrequencyPresencePenalty, LogitBias, MinP, RepetitionPenalty, Sampler, SamplingError,
                               SamplingParams, Temperature, TopK, TopP, softmax)

NEG = -np.inf


def logits_of(probs):
    return np.log(np.asarray(probs, np.float64))


def kept(logits):
    return [i for i, v in enumerate(logits) if v > NEG]


# --- processors ---


def test_repetition_penalty_divides_positive_multiplies_negative():
    logits = np.array([2.0, -2.0, 1.0, 0.5])
    out = RepetitionPenalty(2.0, last_n=64)([0, 1, 1], logits)
    np.testing.assert_array_equal(out, [1.0, -4.0, 1.0, 0.5])  # token 1 twice: penalized once
    np.testing.assert_array_equal(logits, [2.0, -2.0, 1.0, 0.5])  # the input is untouched


def test_repetition_penalty_window():
    logits = np.array([2.0, 2.0, 2.0, 2.0])
    np.testing.assert_array_equal(RepetitionPenalty(2.0, last_n=2)([0, 1, 2], logits), [2, 1, 1, 2])
    np.testing.assert_array_equal(RepetitionPenalty(2.0, last_n=-1)([0, 1, 2], logits), [1, 1, 1, 2])
    np.testing.assert_array_equal(RepetitionPenalty(2.0, last_n=0)([0, 1, 2], logits), logits)
    np.testing.assert_array_equal(RepetitionPenalty(0.5, last_n=1)([3], logits), [2, 2, 2, 4])  # < 1 boosts


def test_frequency_and_presence_penalties():
    logits = np.array([1.0, 1.0, 1.0, 1.0])
    out = FrequencyPresencePenalty(0.5, 1.0, last_n=64)([0, 0, 2], logits)
    # token 0: 2 * 0.5 + 1; token 2: 1 * 0.5 + 1
    np.testing.assert_allclose(out, [-1.0, 1.0, -0.5, 1.0])
    out = FrequencyPresencePenalty(0.5, 0.0, last_n=2)([0, 0, 2], logits)  # the window sees [0, 2]
    np.testing.assert_allclose(out, [0.5, 1.0, 0.5, 1.0])


def test_logit_bias_adds_and_bans():
    out = LogitBias({1: 5.0, 3: -np.inf})([], np.array([0.0, 1.0, 2.0, 3.0]))
    np.testing.assert_array_equal(out, [0.0, 6.0, 2.0, NEG])


def test_temperature_scales():
    np.testing.assert_allclose(Temperature(0.5)([], np.array([1.0, -2.0, 0.0, 3.0])), [2.0, -4.0, 0.0, 6.0])
    np.testing.assert_allclose(Temperature(2.0)([], np.array([1.0, -2.0, 0.0, 3.0])), [0.5, -1.0, 0.0, 1.5])


def test_top_k():
    logits = np.array([1.0, 4.0, 2.0, 3.0])
    assert kept(TopK(2)([], logits)) == [1, 3]
    assert kept(TopK(1)([], logits)) == [1]
    assert kept(TopK(4)([], logits)) == [0, 1, 2, 3]
    assert kept(TopK(10)([], logits)) == [0, 1, 2, 3]
    # ties with the k-th value stay (transformers removes only what is below it)
    assert kept(TopK(2)([], np.array([1.0, 3.0, 3.0, 3.0]))) == [1, 2, 3]
    np.testing.assert_array_equal(TopK(2)([], logits), [NEG, 4.0, NEG, 3.0])


def test_top_p():
    logits = logits_of([0.1, 0.2, 0.3, 0.4])
    # ascending cumulative: 0.1 0.3 0.6 1.0; a token goes when its cumulative is <= 1 - p
    assert kept(TopP(0.5)([], logits)) == [2, 3]      # remove <= 0.5: 0.1, 0.2
    assert kept(TopP(0.35)([], logits)) == [3]        # remove <= 0.65: 0.1, 0.2, 0.3
    assert kept(TopP(0.75)([], logits)) == [1, 2, 3]  # remove <= 0.25: 0.1
    assert kept(TopP(0.95)([], logits)) == [0, 1, 2, 3]
    assert kept(TopP(0.01)([], logits)) == [3]        # the most likely token always stays
    assert kept(TopP(1.0)([], logits)) == [0, 1, 2, 3]


def test_min_p():
    logits = logits_of([0.1, 0.2, 0.3, 0.4])
    assert kept(MinP(0.6)([], logits)) == [2, 3]      # threshold 0.24
    assert kept(MinP(0.3)([], logits)) == [1, 2, 3]   # threshold 0.12
    assert kept(MinP(0.2)([], logits)) == [0, 1, 2, 3]
    assert kept(MinP(1.0)([], logits)) == [3]
    assert kept(MinP(0.0)([], logits)) == [0, 1, 2, 3]


def test_warpers_ignore_banned_tokens():
    logits = np.array([NEG, np.log(0.25), np.log(0.75), NEG])
    assert kept(TopP(0.5)([], logits)) == [2]
    assert kept(MinP(0.5)([], logits)) == [2]
    assert kept(TopK(3)([], logits)) == [1, 2]


# --- the fast paths on a large vocabulary against plain versions ---


def plain_top_k(logits, k):
    kth = np.sort(logits)[-k]
    return np.flatnonzero(logits >= kth)


def plain_top_p(logits, p):
    order = np.argsort(logits, kind="stable")
    cumulative = np.cumsum(softmax(logits[order].astype(np.float64)))
    remove = cumulative <= 1 - p
    remove[-1] = False
    return np.sort(order[~remove])


@pytest.mark.parametrize("scale", [0.5, 3.0, 20.0])
def test_large_vocabulary_paths_match_plain_versions(rng, scale):
    for trial in range(5):
        logits = (rng.standard_normal(49152) * scale).astype(np.float32)
        if trial == 4:
            logits = np.round(logits)  # many ties
        for k in (1, 2, 40, 1000):
            np.testing.assert_array_equal(TopK(k).select(logits), plain_top_k(logits, k))
        for p in (0.1, 0.5, 0.9, 0.95, 0.999):
            got, want = TopP(p).select(logits), plain_top_p(logits, p)
            if trial == 4:  # ties at the cut may go either way; the kept mass is the same
                assert abs(softmax(logits.astype(np.float64))[got].sum()
                           - softmax(logits.astype(np.float64))[want].sum()) < 1e-6
            else:
                np.testing.assert_array_equal(got, want)


def plain_candidates(logits, k, temperature, bias):
    """_core.top_candidates written plainly: the bias added, the max and its first index, and every
    token whose scaled value reaches the k-th largest scaled value, ascending by it (ties by id)."""
    v = logits.copy()
    with np.errstate(invalid="ignore"):  # inf - inf: NaN, as the native pass adds it too
        for i, b in bias.items():
            v[i] += np.float32(b)
    if np.isnan(v).any():
        return math.nan, None, None, None
    scaled = v / np.float32(temperature)
    kth = np.sort(scaled)[-min(max(k, 1), v.size)]
    ids = np.flatnonzero(scaled >= kth)
    ids = ids[np.argsort(scaled[ids], kind="stable")]
    return float(v.max()), int(np.argmax(v)), ids, scaled[ids]


def check_candidates(logits, k, temperature=1.0, bias=None):
    bias = bias or {}
    ids = np.array(sorted(bias), np.int64)
    values = np.array([bias[i] for i in sorted(bias)], np.float64).astype(np.float32)
    got = pyengine._core.top_candidates(logits, k, temperature, ids, values)
    want = plain_candidates(logits, k, temperature, bias)
    if math.isnan(want[0]):
        assert math.isnan(got[0])
        return got
    assert got[0] == want[0] and got[1] == want[1]
    np.testing.assert_array_equal(got[2], want[2])
    np.testing.assert_array_equal(got[3], want[3])
    return got


@pytest.mark.parametrize("n", [1, 7, 16, 17, 1000, 49152, 49155])
def test_native_candidates_match_a_plain_version(rng, n):
    """The native pass over the vocabulary on random logits, ties, bans, sorted orders, values raised
    where it samples its guess of the k-th largest (so that the guesses fail, down to its selection
    over all the values) and lengths that are not a multiple of its 16-value chunks."""
    cases = [(rng.standard_normal(n) * 3).astype(np.float32), np.round(rng.standard_normal(n)).astype(np.float32),
             np.zeros(n, np.float32), np.sort(rng.standard_normal(n)).astype(np.float32),
             np.sort(rng.standard_normal(n))[::-1].astype(np.float32).copy()]
    banned = (rng.standard_normal(n) * 3).astype(np.float32)
    banned[rng.random(n) < 0.9] = NEG
    cases.append(banned)
    raised = (rng.standard_normal(n)).astype(np.float32)
    raised[::16] += 4  # every 16th value, as the pass samples them: its guesses of the k-th come out high
    cases.append(raised)
    for logits in cases:
        for k in (1, 2, 40, 1000, n + 5):
            for t in (1.0, 0.8, 3.0):
                check_candidates(logits, k, t)
        bias = {0: 5.0, n - 1: -math.inf, n // 2: 2.5} if n > 2 else {0: -1.0}
        check_candidates(logits, 40, 0.7, bias)
        # biased positions side by side, among the first k (which fill the heap) and at the end
        bias = {i: b for i, b in zip([0, 1, 2, 3, n - 2, n - 1], [1.0, -math.inf, 3.0, -0.5, 4.0, 2.0]) if 0 <= i < n}
        for k in (1, 3, 5, 40):
            check_candidates(logits, k, 0.9, bias)


def test_native_candidates_take_the_ties_the_temperature_makes():
    """Values a unit in the last place apart can divide to the same float: those below the k-th
    largest raw value then tie with the k-th scaled one, and stay (as the chain keeps them)."""
    base = np.float32(1.7)
    near = np.array([np.nextafter(base, np.float32(0)) if i % 2 else base for i in range(64)], np.float32)
    rng = np.random.default_rng(5)
    found = 0
    for t in rng.uniform(0.3, 5.0, 200):
        logits = np.concatenate([rng.standard_normal(4000).astype(np.float32) - 10, near])
        logits = logits[rng.permutation(logits.size)]
        got = check_candidates(logits, 32, float(t))  # the 32nd largest is the last `base`
        found += np.unique(logits[got[2]]).size > 1
    assert found  # some temperatures joined the two raw values


def test_native_candidates_nan_inf_and_bad_arguments():
    for at in (0, 5, 16, 47, 48):
        logits = np.zeros(49, np.float32)
        logits[at] = np.nan
        assert math.isnan(check_candidates(logits, 3)[0])
    logits = np.zeros(49, np.float32)
    logits[30] = np.inf
    assert check_candidates(logits, 3)[:2] == (math.inf, 30)
    assert math.isnan(check_candidates(logits, 3, bias={30: -math.inf})[0])  # inf - inf, as numpy adds it
    core = pyengine._core
    none_i, none_f = np.empty(0, np.int64), np.empty(0, np.float32)
    with pytest.raises(ValueError):
        core.top_candidates(np.empty(0, np.float32), 1, 1.0, none_i, none_f)
    with pytest.raises(ValueError):
        core.top_candidates(np.zeros((2, 2), np.float32), 1, 1.0, none_i, none_f)
    for t in (0.0, -1.0, math.inf, math.nan):
        with pytest.raises(ValueError):
            core.top_candidates(logits, 1, t, none_i, none_f)
    for ids in ([3, 3], [4, 2], [-1], [49]):
        with pytest.raises(ValueError):
            core.top_candidates(logits, 1, 1.0, np.array(ids, np.int64), np.zeros(len(ids), np.float32))
    with pytest.raises(ValueError):
        core.top_candidates(logits, 1, 1.0, np.array([1], np.int64), np.zeros(2, np.float32))


def reference_sample(params, history, logits, rng):
    """The chain applied as written: every processor on the whole vocabulary (-inf for removed
    tokens), then a draw over the vocabulary in order."""
    chain = []
    if params.repeat_last_n and params.repetition_penalty != 1:
        chain.append(RepetitionPenalty(params.repetition_penalty, params.repeat_last_n))
    if params.repeat_last_n and (params.frequency_penalty or params.presence_penalty):
        chain.append(FrequencyPresencePenalty(params.frequency_penalty, params.presence_penalty, params.repeat_last_n))
    if params.logit_bias:
        chain.append(LogitBias(params.logit_bias))
    for p in chain:
        logits = p(history, logits)
    if params.temperature == 0:
        return int(np.argmax(logits))
    for w in [Temperature(params.temperature), TopK(params.top_k) if params.top_k else None,
              TopP(params.top_p), MinP(params.min_p)]:
        if w is not None:
            logits = w(history, logits)
    finite = np.flatnonzero(logits > NEG)
    if finite.size == 1:
        return int(finite[0])
    cumulative = np.cumsum(np.exp(logits - logits.max(), dtype=np.float64))
    return int(np.searchsorted(cumulative, rng.random() * cumulative[-1], side="right"))


@pytest.mark.parametrize("setting", [
    {}, {"top_k": 0}, {"top_k": 5, "top_p": 0.5}, {"temperature": 1.5, "min_p": 0.0, "top_p": 1.0},
    {"repetition_penalty": 1.3, "frequency_penalty": 0.2, "presence_penalty": 0.4, "logit_bias": {3: 2.0}},
    {"temperature": 0.0, "repetition_penalty": 1.3},
])
def test_sampler_matches_the_chain_applied_as_written(rng, setting):
    params = SamplingParams(seed=7, **setting)
    sampler = Sampler(params, 1000)
    reference_rng = np.random.default_rng(7)
    history = list(rng.integers(0, 1000, 50))
    for _ in range(40):
        logits = (rng.standard_normal(1000) * 2).astype(np.float32)
        token = sampler(history, logits)
        assert token == reference_sample(params, history, logits, reference_rng)
        history.append(token)


@pytest.mark.parametrize("setting", [{}, {"top_p": 0.5, "min_p": 0.0}, {"top_k": 3, "temperature": 2.0}])
def test_distribution_is_the_chains(rng, setting):
    """Sampler.distribution (what the speculative rule compares) gives the tokens and probabilities of
    the chain applied as written."""
    params = SamplingParams(seed=1, **setting)
    sampler = Sampler(params, 2000)
    for _ in range(10):
        raw = (rng.standard_normal(2000) * 3).astype(np.float32)
        chain = raw
        for w in [Temperature(params.temperature), TopK(params.top_k), TopP(params.top_p), MinP(params.min_p)]:
            chain = w([], chain)
        want = np.flatnonzero(chain > NEG)
        weights = np.exp(chain[want] - chain.max(), dtype=np.float64)
        tokens, probs = sampler.distribution([], raw)
        np.testing.assert_array_equal(tokens, want)
        np.testing.assert_allclose(probs, weights / weights.sum(), rtol=1e-12)


# --- the sampler ---


def test_greedy_is_the_argmax_after_penalties_and_bias():
    logits = np.array([1.0, 3.0, 2.0, 0.0], np.float32)
    assert Sampler(SamplingParams(temperature=0))([], logits) == 1
    assert Sampler(SamplingParams(temperature=0, logit_bias={2: 1.5}))([], logits) == 2
    assert Sampler(SamplingParams(temperature=0, repetition_penalty=4.0))([1], logits) == 2


def test_top_k_1_and_temperature_0_are_greedy(rng):
    greedy = Sampler(SamplingParams(temperature=0))
    top1 = Sampler(SamplingParams(top_k=1, temperature=1.7, seed=3))
    for _ in range(50):
        logits = rng.standard_normal(500).astype(np.float32)
        assert top1([], logits) == greedy([], logits) == int(np.argmax(logits))


def test_same_seed_same_tokens(rng):
    all_logits = [rng.standard_normal(300).astype(np.float32) for _ in range(100)]

    def run(seed):
        s = Sampler(SamplingParams(seed=seed, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0))
        return [s([], x) for x in all_logits]

    assert run(11) == run(11)
    assert run(11) != run(12)


def test_draw_follows_the_distribution():
    probs = np.array([0.1, 0.2, 0.3, 0.4])
    s = Sampler(SamplingParams(seed=0, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0))
    counts = np.bincount([s([], logits_of(probs)) for _ in range(20000)], minlength=4)
    np.testing.assert_allclose(counts / 20000, probs, atol=0.015)


def test_draw_only_from_what_the_filters_keep():
    probs = np.array([0.1, 0.2, 0.3, 0.4])
    s = Sampler(SamplingParams(seed=0, temperature=1.0, top_k=3, top_p=1.0, min_p=0.6))
    assert {s([], logits_of(probs)) for _ in range(500)} == {2, 3}


@pytest.mark.parametrize("temperature", [1e-46, 1e-40, 1e-38])
def test_a_temperature_too_small_for_float32_is_greedy(rng, temperature):
    """logits / t overflowing float32 (or t rounding to 0) would leave NaN probabilities: the sampler
    takes the limit t -> 0, the argmax, on every path, with no numpy warning (errors here)."""
    for top_k in (40, 0):
        sampler = Sampler(SamplingParams(seed=0, temperature=temperature, top_k=top_k), 5000)
        for _ in range(5):
            logits = (rng.standard_normal(5000) * 3).astype(np.float32)
            assert sampler([], logits) == int(np.argmax(logits))
            tokens, probs = sampler.distribution([], logits)
            assert tokens.tolist() == [int(np.argmax(logits))] and probs.tolist() == [1.0]
            assert sampler([], -np.abs(logits)) == int(np.argmax(-np.abs(logits)))  # all negative: -inf


def test_all_banned_or_nan_raises():
    s = Sampler(SamplingParams(seed=0))
    with pytest.raises(SamplingError, match="-inf"):
        s([], np.full(4, NEG, np.float32))
    with pytest.raises(SamplingError, match="NaN"):
        s([], np.array([0.0, np.nan, 1.0, 2.0], np.float32))
    with pytest.raises(SamplingError):
        Sampler(SamplingParams(temperature=0))([], np.full(4, NEG, np.float32))
    with pytest.raises(SamplingError, match="-inf"):
        Sampler(SamplingParams(logit_bias={i: -math.inf for i in range(4)}))([], np.zeros(4, np.float32))
    assert issubclass(SamplingError, ValueError)


@pytest.mark.parametrize("bad", [
    {"temperature": -0.1}, {"temperature": math.nan}, {"temperature": math.inf}, {"temperature": "hot"},
    {"top_k": -1}, {"top_k": 2.5}, {"top_k": True},
    {"top_p": 0.0}, {"top_p": 1.01}, {"top_p": math.nan},
    {"min_p": -0.1}, {"min_p": 1.5},
    {"repetition_penalty": 0.0}, {"repetition_penalty": -1.0}, {"repetition_penalty": math.inf},
    {"repeat_last_n": -2}, {"frequency_penalty": math.nan}, {"presence_penalty": -math.inf},
    {"logit_bias": {1: math.nan}}, {"logit_bias": {1: math.inf}}, {"logit_bias": {-1: 1.0}},
    {"logit_bias": {"a": 1.0}}, {"logit_bias": [1, 2]}, {"seed": -5}, {"seed": 1.5},
])
def test_bad_values_raise(bad):
    with pytest.raises(ValueError):
        SamplingParams(**bad)


def test_logit_bias_ids_checked_against_the_vocabulary():
    with pytest.raises(ValueError, match="outside the vocabulary"):
        Sampler(SamplingParams(logit_bias={300: 1.0}), n_vocab=300)
    Sampler(SamplingParams(logit_bias={299: -math.inf}), n_vocab=300)


def test_disabled_steps_are_left_out():
    s = Sampler(SamplingParams(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0))
    assert s.processors == [] and s.warpers == []
    assert Sampler(SamplingParams(temperature=0)).warpers == []
    assert [type(w).__name__ for w in Sampler(SamplingParams()).warpers] == ["Temperature", "TopK", "TopP", "MinP"]


def test_sampling_params_is_the_one_source_of_defaults_and_names():
    """The command line's flags, the Python API and the server take every default from SamplingParams."""
    import dataclasses
    import inspect

    from pyengine.__main__ import _sampling, build_parser

    for command in (["generate", "-p", "x"], ["chat"]):
        args = build_parser().parse_args(command)
        assert SamplingParams.from_options(_sampling(args)) == SamplingParams()
    flags = {f.metadata["flag"] for f in dataclasses.fields(SamplingParams)} - {""}
    assert {"--temp", "--top-k", "--top-p", "--min-p", "--repeat-penalty", "--seed"} <= flags
    for fn in (pyengine.Model.generate, pyengine.generate.generate, pyengine.chat.chat, pyengine.chat.ChatSession):
        params = inspect.signature(fn).parameters
        assert not {f.name for f in dataclasses.fields(SamplingParams)} & set(params), fn
    assert SamplingParams.from_options({"repeat_penalty": 1.3}).repetition_penalty == 1.3
    with pytest.raises(ValueError, match="unknown sampling option 'temprature'"):
        SamplingParams.from_options({"temprature": 0.5})
    with pytest.raises(ValueError, match="given twice"):
        SamplingParams.from_options({"repeat_penalty": 1.3, "repetition_penalty": 1.2})
