"""generate() and the TokenStream loop: stop conditions, streaming, Completion fields, the context
limit, reproducibility; on tiny random models (fast) and a few on SmolLM2-135M Q4_0."""

import sys
from pathlib import Path

import numpy as np
import pytest

import pyengine
from pyengine.generate import Completion, TokenStream
from pyengine.sampling import Sampler, SamplingParams
from tiny_models import write_tiny_llama

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "models"))
from recipes import smollm2  # noqa: E402

EOS = 256  # the tiny models' <|endoftext|>


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return pyengine.Model(write_tiny_llama(tmp_path_factory.mktemp("gen") / "tiny.gguf"), n_ctx=128, n_threads=1)


@pytest.fixture(scope="module")
def smol():
    return pyengine.Model(smollm2("q4_0"), n_ctx=512, n_threads=1)  # one thread: robust on a busy machine


class Script:
    """A sampler that returns fixed tokens, whatever the logits."""

    def __init__(self, tokens):
        self.tokens = list(tokens)
        self.calls = 0

    def __call__(self, ids, logits):
        assert logits.shape == (300,)
        self.calls += 1
        return self.tokens.pop(0)


def scripted(model, text, stop=(), max_tokens=100, eos=True):
    """TokenStream on `text` spelled one byte token at a time (the tiny vocabulary has no merges)."""
    tokens = model.tokenize(text) + ([EOS] if eos else [])
    stream = TokenStream(model.context(), model.tokenize("> "), Script(tokens), max_tokens, stop)
    return stream, list(stream)


# --- stop conditions on scripted tokens ---


def test_eos_stops_and_is_not_part_of_the_text(tiny):
    stream, items = scripted(tiny, "Hi there")
    assert stream.text == "Hi there" and stream.finish_reason == "stop"
    assert stream.tokens == tiny.tokenize("Hi there")
    assert "".join(piece for _, piece in items) == "Hi there"
    assert [t for t, _ in items] == stream.tokens
    # the context holds the prompt and every generated token but the last; EOS is not evaluated
    assert stream.ctx.n_past == 2 + len(stream.tokens) - 1 + 1 == len(stream.ids)


def test_stop_string_across_token_boundaries(tiny):
    stream, items = scripted(tiny, "Hello STOP world", stop=["STOP"])
    assert stream.text == "Hello " and stream.finish_reason == "stop"
    pieces = [piece for _, piece in items]
    assert "".join(pieces) == "Hello "
    assert not any("S" in p for p in pieces)  # the start of STOP was held back, never released
    assert stream.tokens == tiny.tokenize("Hello STOP")  # the tokens that made the stop string stay


def test_held_back_text_is_released_when_it_is_not_a_stop(tiny):
    stream, items = scripted(tiny, "a STar STOP", stop=["STOP"])
    assert stream.text == "a STar "
    pieces = [piece for _, piece in items]
    # "ST" was held back until "a" showed it is not "STOP"
    assert pieces[:5] == ["a", " ", "", "", "STa"]


def test_overlapping_prefixes(tiny):
    stream, _ = scripted(tiny, "aab", stop=["ab"])
    assert stream.text == "a"
    stream, _ = scripted(tiny, "xyz", stop=["yy", "z", "xyz!"])  # the earliest match wins
    assert stream.text == "xy"


def test_nothing_is_lost_at_the_end(tiny):
    stream, items = scripted(tiny, "xxST", stop=["STOP"], eos=False, max_tokens=4)
    assert stream.text == "xxST" and stream.finish_reason == "length"
    assert items[-1] == (stream.tokens[-1], "ST")
    stream, items = scripted(tiny, "xxST", stop=["STOP"], eos=True)
    assert stream.text == "xxST" and stream.finish_reason == "stop"
    assert items[-1] == (None, "ST")  # released by the end of generation, after the last token


def test_streaming_never_splits_a_character(tiny):
    text = "né 日本 🙂!"
    stream, items = scripted(tiny, text)
    pieces = [piece for _, piece in items]
    assert "".join(pieces) == text
    assert all("\ufffd" not in p for p in pieces)
    stream, _ = scripted(tiny, text, stop=["本 🙂"])
    assert stream.text == "né 日"


def test_max_tokens_and_the_unevaluated_last_token(tiny):
    stream, items = scripted(tiny, "abcdef", eos=False, max_tokens=3)
    assert stream.tokens == tiny.tokenize("abc") and stream.finish_reason == "length"
    assert stream.n_evaluated == 2 + 2  # the prompt and the first two tokens; the third is not needed
    assert stream.ctx.n_past == len(stream.ids) == 4


def test_a_full_context_stops_with_length(tiny, tmp_path):
    model = pyengine.Model(tiny.path, n_ctx=16)
    prompt = model.tokenize("0123456789")
    c = model.generate(prompt, max_tokens=100, seed=0, logit_bias={EOS: -np.inf})
    assert c.finish_reason == "length"
    assert len(c.tokens) == 16 - len(prompt) + 1  # the context full, one more token sampled from it
    with pytest.raises(ValueError, match="context"):
        model.generate("x" * 17, max_tokens=1)


# --- generate() on the tiny model ---


def test_greedy_generate_is_the_argmax_loop(tiny):
    prompt = tiny.tokenize("Hello")
    c = tiny.generate(prompt, max_tokens=20, temperature=0, logit_bias={EOS: -np.inf})
    ctx = tiny.context()
    logits = ctx.eval(prompt)
    expected = []
    for _ in range(20):
        logits = logits.copy()
        logits[EOS] = -np.inf
        expected.append(int(np.argmax(logits)))
        logits = ctx.eval([expected[-1]])
    assert c.tokens == expected
    assert c.text == tiny.tokenizer.decode(expected, skip_special=True, continuation=True)


def test_completion_fields(tiny):
    c = tiny.generate("Hello", max_tokens=7, seed=3, logit_bias={EOS: -np.inf})
    assert isinstance(c, Completion) and isinstance(c, pyengine.Completion)
    assert isinstance(c.text, str) and len(c.tokens) == 7 and c.finish_reason == "length" and c.score is None
    assert all(isinstance(t, int) for t in c.tokens)
    c = tiny.generate("Hello", max_tokens=7, logit_bias={EOS: 100.0})
    assert c == Completion("", [], "stop", None)
    assert tiny.generate("Hello", max_tokens=0) == Completion("", [], "length")


def test_stream_concatenation_equals_text(tiny):
    for seed in range(4):
        kwargs = dict(max_tokens=30, seed=seed, temperature=1.2, stop=["e", "\n\n"])
        c = tiny.generate("Hello", **kwargs)
        assert "".join(tiny.generate("Hello", stream=True, **kwargs)) == c.text


def test_prompt_as_ids_or_text(tiny):
    a = tiny.generate("Hello", max_tokens=10, seed=5)
    b = tiny.generate(tiny.tokenize("Hello"), max_tokens=10, seed=5)
    c = tiny.generate(np.array(tiny.tokenize("Hello")), max_tokens=10, seed=5)
    assert a == b == c
    assert tiny.generate("", max_tokens=3, seed=0).finish_reason in ("stop", "length")  # starts from BOS
    for bad in ([0, 300], [-1], [1.5], "abc".encode(), 12):
        with pytest.raises(ValueError):
            tiny.generate(bad, max_tokens=3)


def test_same_seed_same_text_on_the_tiny_model(tiny):
    a = tiny.generate("Hello", max_tokens=20, seed=42, logit_bias={EOS: -np.inf})
    assert a == tiny.generate("Hello", max_tokens=20, seed=42, logit_bias={EOS: -np.inf})
    assert a != tiny.generate("Hello", max_tokens=20, seed=43, logit_bias={EOS: -np.inf})


@pytest.mark.parametrize("bad", [
    {"temperature": -1}, {"top_p": 0}, {"top_p": 1.5}, {"top_k": -1}, {"min_p": 2}, {"repetition_penalty": 0},
    {"max_tokens": -1}, {"max_tokens": 2.0}, {"repeat_last_n": -2}, {"logit_bias": {300: 1.0}},
    {"stop": [""]}, {"stop": [1]}, {"stop": {"a": 1}}, {"stop": b"x"}, {"seed": -1}, {"frequency_penalty": float("nan")},
])
def test_bad_arguments_raise_before_any_work(tiny, monkeypatch, bad):
    def no_work(*args, **kwargs):
        raise AssertionError("the model was used before the arguments were checked")

    monkeypatch.setattr(tiny, "context", no_work)
    for stream in (False, True):
        with pytest.raises(ValueError):
            tiny.generate("Hello", stream=stream, **bad)


def test_token_stream_keeps_the_context_consistent(tiny):
    ctx = tiny.context()
    first = TokenStream(ctx, tiny.tokenize("Hi"), Sampler(SamplingParams(seed=1)), 5)
    list(first)
    second = TokenStream(ctx, tiny.tokenize("!"), Sampler(SamplingParams(seed=1)), 5, history=first.ids)
    list(second)
    assert ctx.n_past == len(second.ids)
    assert second.ids[:len(first.ids)] == first.ids
    with pytest.raises(ValueError, match="history"):
        TokenStream(ctx, [1], Sampler(), 5, history=[])
    with pytest.raises(ValueError):
        TokenStream(ctx, [], Sampler(), 5, history=second.ids)


# --- SmolLM2-135M Q4_0 ---


def test_smollm2_same_seed_same_text(smol):
    a = smol.generate("The capital of France is", max_tokens=24, seed=1234)
    b = smol.generate("The capital of France is", max_tokens=24, seed=1234)
    assert a == b and a.text
    assert "".join(smol.generate("The capital of France is", max_tokens=24, seed=1234, stream=True)) == a.text
    c = smol.generate("The capital of France is", max_tokens=24, seed=99, temperature=1.5)
    assert c.tokens != a.tokens


def test_smollm2_greedy_is_the_argmax_loop(smol):
    prompt = smol.tokenize("The capital of France is")
    c = smol.generate(prompt, max_tokens=16, temperature=0)
    ctx = smol.context()
    logits = ctx.eval(prompt)
    tokens = []
    for _ in range(len(c.tokens)):
        tokens.append(int(np.argmax(logits)))
        logits = ctx.eval([tokens[-1]])
    assert c.tokens == tokens


def test_smollm2_stop_string_spanning_tokens(smol):
    full = smol.generate("The capital of France is", max_tokens=24, temperature=0)
    pieces = [smol.tokenizer.decode([t], skip_special=True, continuation=True) for t in full.tokens]
    # a stop string from the end of the 3rd token's text to the start of the 5th's
    start = len("".join(pieces[:2])) + len(pieces[2]) - 2
    stop = full.text[start:len("".join(pieces[:4])) + 2]
    assert len(stop) >= 4
    c = smol.generate("The capital of France is", max_tokens=24, temperature=0, stop=[stop])
    assert c.text == full.text[:full.text.index(stop)] and c.finish_reason == "stop"
    assert "".join(smol.generate("The capital of France is", max_tokens=24, temperature=0, stop=[stop],
                                 stream=True)) == c.text
