"""Text generation: the prompt evaluated in one batch, then one token at a time through Context.eval,
each chosen by the sampling chain (pyengine/sampling.py), until a stop condition. With a draft
(pyengine/speculative.py) a step evaluates the last token and the drafted ones in one batch, and
may give several tokens: the same tokens with temperature 0, the same distribution when sampling.

    generate(model, prompt, ...) -> Completion       # or an iterator of text pieces (stream=True)
    TokenStream(ctx, new_ids, sampler, ...)          # the loop itself, on a context the caller keeps

Stop conditions, checked after each sampled token:
- an end-of-generation token of the file (tokenizer.eog_ids: EOS, end of turn): finish_reason "stop";
  the token is not part of .tokens or .text, and is not evaluated;
- one of the `stop` strings in the generated text (found across token boundaries): "stop"; the text
  ends just before the stop string (the tokens that made it stay in .tokens);
- max_tokens tokens generated, or the context full: "length".

Streaming is UTF-8 safe (the tokenizer's StreamDecoder holds back half a character) and holds back
any text that could be the start of a stop string until the next tokens decide it; at the end
whatever is held back comes out, so the pieces joined are always exactly the Completion's .text.
Control tokens (<|im_start|>, ...) give no text, as llama.cpp prints them by default.
"""

from __future__ import annotations

from collections.abc import Mapping, Set as AbstractSet
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterator, Sequence

from .sampling import Sampler, SamplingParams
from .speculative import DRAFT_MAX, Speculator, check_draft, speculator, verify

if TYPE_CHECKING:
    from .model import Context, Model

__all__ = ["Completion", "TextOutput", "TokenStream", "reusable_prefix", "keep_prefix", "generate", "generate_ids", "check_max_tokens", "check_stop", "check_options",
           "prompt_ids"]


@dataclass
class Completion:
    """The result of a generation. tokens: the generated ids only (no prompt, no end-of-generation
    token); finish_reason: "stop" (end of generation token or stop string) or "length" (max_tokens or
    the context full); score: beam search's score, None for sampling."""

    text: str
    tokens: list[int] = field(default_factory=list)
    finish_reason: str = "length"
    score: float | None = None


def check_max_tokens(max_tokens) -> int:
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 0:
        raise ValueError(f"max_tokens must be an integer >= 0, got {max_tokens!r}")
    return max_tokens


def check_stop(stop) -> tuple[str, ...]:
    """stop strings: one str or a sequence of them, none empty."""
    if stop is None:
        return ()
    if isinstance(stop, str):
        stop = (stop,)
    if isinstance(stop, (Mapping, AbstractSet, bytes, bytearray)):  # keys, no order, bytes: not a list of strings
        raise ValueError(f"stop must be a string or a sequence of strings, got {type(stop).__name__}")
    try:
        stop = tuple(stop)
    except TypeError:
        raise ValueError(f"stop must be a string or a sequence of strings, got {stop!r}") from None
    for s in stop:
        if not isinstance(s, str) or not s:
            raise ValueError(f"each stop string must be a non-empty str, got {s!r}")
    return stop


def prompt_ids(model: Model, prompt) -> list[int]:
    """Token ids of a prompt: a str (tokenized with the file's add_bos, special tokens parsed) or a
    sequence of ids (each checked against the vocabulary). An empty prompt becomes [BOS]."""
    if isinstance(prompt, str):
        ids = model.tokenize(prompt)
    elif isinstance(prompt, (bytes, bytearray)):
        raise ValueError("prompt must be a str or a sequence of token ids, not bytes")
    else:
        try:
            ids = list(prompt)
        except TypeError:
            raise ValueError(f"prompt must be a str or a sequence of token ids, got {type(prompt).__name__}") from None
        n_vocab = model.n_vocab
        for i in ids:
            if isinstance(i, bool) or not hasattr(i, "__index__"):
                raise ValueError(f"prompt token ids must be integers, got {i!r}")
            if not 0 <= int(i) < n_vocab:
                raise ValueError(f"prompt token id {int(i)} is outside the vocabulary ({n_vocab} tokens)")
        ids = [int(i) for i in ids]
    if not ids:
        bos = model.tokenizer.bos_id
        if bos is None:
            raise ValueError("the prompt is empty and the vocabulary has no BOS token to start from")
        ids = [bos]
    return ids


def _held_back(text: str, stop: Sequence[str]) -> int:
    """Length of the longest end of text that is the start of a stop string (held back)."""
    longest = 0
    for s in stop:
        for n in range(min(len(s) - 1, len(text)), longest, -1):
            if text.endswith(s[:n]):
                longest = n
                break
    return longest


class TextOutput:
    """The text of one generation, token by token: the stop conditions and what text to release.

    add(token, room) takes each sampled token and returns the text it releases (may be ""); it sets
    finish_reason when the generation ends: "stop" at an end-of-generation token of the file (not
    kept in .tokens, its text not released) or a stop string (the text ends just before it), "length"
    at max_tokens tokens or when `room` is False (the context has no position left for another).
    Text that could be the start of a stop string, and half a UTF-8 character, are held back until
    the next tokens decide them; at the end whatever is held comes out, so the pieces joined are
    always .text. TokenStream (here) and the server's batch (pyengine/serve) both run on it."""

    def __init__(self, tokenizer, max_tokens: int, stop: Sequence[str] = ()) -> None:
        self.eog = tokenizer.eog_ids
        self.decoder = tokenizer.stream_decoder(skip_special=True, continuation=True)
        self.max_tokens = check_max_tokens(max_tokens)
        self.stop = check_stop(stop)
        self.tokens: list[int] = []
        self.text = ""
        self.finish_reason: str | None = "length" if self.max_tokens == 0 else None
        self._pending = ""  # decoded, not yet released: it could be the start of a stop string

    def add(self, token: int, room: bool = True) -> str:
        if self.finish_reason is not None:
            raise RuntimeError("the generation has ended")
        if token in self.eog:
            self.finish_reason = "stop"
            return self._release(self._pending + self.decoder.flush())
        self.tokens.append(token)
        pending = self._pending + self.decoder.feed(token)
        last = len(self.tokens) >= self.max_tokens or not room
        if last:
            pending += self.decoder.flush()
        if self.stop:
            cut = min((i for i in (pending.find(s) for s in self.stop) if i >= 0), default=-1)
            if cut >= 0:
                self.finish_reason = "stop"
                return self._release(pending[:cut])
        if last:
            self.finish_reason = "length"
            return self._release(pending)
        keep = _held_back(pending, self.stop) if self.stop else 0
        self._pending = pending[len(pending) - keep:]
        return self._release(pending[:len(pending) - keep])

    def _release(self, piece: str) -> str:
        if self.finish_reason is not None:
            self._pending = ""
        self.text += piece
        return piece


def reusable_prefix(held: Sequence[int], ids: Sequence[int]) -> int:
    """How many of `ids` a context holding `held` can keep: their common prefix, but not the last of
    ids, which is evaluated again for its logits."""
    n = 0
    for a, b in zip(held, ids[:len(ids) - 1]):
        if a != b:
            break
        n += 1
    return n


def keep_prefix(ctx: Context, n: int) -> int:
    """Truncates ctx to its first n positions and returns n; or to none, returning 0, where a
    sliding-window cache no longer holds the window before position n."""
    try:
        ctx.truncate(n)
    except ValueError:
        ctx.truncate(0)
        return 0
    return n


class TokenStream:
    """Generation on a context the caller keeps (the chat REPL's conversation).

    ctx holds `history` (the ids already evaluated into it, len == ctx.n_past); `new_ids` are
    evaluated in one batch, then tokens are sampled and evaluated one at a time. Iterating yields
    (token_id, text) for each generated token, text being what that token released (may be ""), and
    one last (None, text) when text held back was released by the end. With a speculator
    (pyengine/speculative.py) a step evaluates the last token and a draft in one batch and may give
    several tokens. After (or during) iteration:

        .tokens          generated ids (no end-of-generation token)
        .text            the text released so far (the completion's text when finished)
        .finish_reason   None while running, then "stop" or "length"
        .ids             the ids the context holds: ctx.n_past >= len(ids) at any moment (an
                         interrupt between eval and bookkeeping, or a stop amid a draft, leaves ctx
                         ahead: truncate ctx to len(ids) after a KeyboardInterrupt or close())
        .n_evaluated     tokens evaluated by this stream (new_ids, generated and drafted)

    The last generated token is not evaluated (nothing needs its logits), nor is an end-of-generation
    token."""

    def __init__(self, ctx: Context, new_ids: Sequence[int], sampler: Sampler, max_tokens: int,
                 stop: Sequence[str] = (), history: Sequence[int] = (), speculator: Speculator | None = None) -> None:
        if len(history) != ctx.n_past:
            raise ValueError(f"history has {len(history)} ids but the context holds {ctx.n_past}")
        if not new_ids:
            raise ValueError("new_ids must hold at least one id (the logits come from the last)")
        if ctx.n_past + len(new_ids) > ctx.n_ctx:
            raise ValueError(f"{len(new_ids)} tokens after {ctx.n_past} do not fit the context of {ctx.n_ctx} tokens")
        self.ctx = ctx
        self.new_ids = list(new_ids)
        self.sampler = sampler
        self.speculator = speculator
        self.output = TextOutput(ctx.model.tokenizer, max_tokens, stop)
        self.ids = list(history)
        self.n_evaluated = 0
        self._started = False

    @property
    def tokens(self) -> list[int]:
        return self.output.tokens

    @property
    def text(self) -> str:
        return self.output.text

    @property
    def finish_reason(self) -> str | None:
        return self.output.finish_reason if self._started else None

    def __iter__(self) -> Iterator[tuple[int | None, str]]:
        if self._started:
            raise RuntimeError("a TokenStream runs once")
        self._started = True
        out = self.output
        if out.finish_reason is not None:  # max_tokens 0
            return
        ctx, ids, sampler, speculator = self.ctx, self.ids, self.sampler, self.speculator
        rows = [ctx.eval(self.new_ids)]  # the logits after ids, then after each token of `drafts`
        ids.extend(self.new_ids)
        self.n_evaluated += len(self.new_ids)
        drafts: list[int] = []
        qs: list = []
        while True:
            taken = 0
            for i, logits in enumerate(rows):
                if i < len(drafts):
                    token, accepted = verify(sampler, ids, logits, drafts[i], qs[i])
                else:
                    token, accepted = sampler(ids, logits), False
                taken += accepted
                piece = out.add(token, room=len(ids) < ctx.n_ctx)
                if out.finish_reason is not None or not accepted:
                    break
                yield token, piece
                ids.append(token)  # a draft taken: already evaluated
            if drafts:
                speculator.feedback(len(drafts), taken)
                if ctx.n_past > len(ids):
                    ctx.truncate(len(ids))
            if out.finish_reason is not None:
                if token not in out.eog:
                    yield token, piece
                elif piece:
                    yield None, piece
                return
            yield token, piece
            drafts, qs = [], []
            if speculator is not None:
                room = min(ctx.n_ctx - len(ids) - 1, out.max_tokens - len(out.tokens) - 1)
                drafts, qs = speculator.propose([*ids, token], room)
            if drafts:
                rows = ctx.eval_all([token, *drafts])
            else:
                rows = [ctx.eval((token,))]
            ids.append(token)
            self.n_evaluated += 1 + len(drafts)


def generate(model: Model, prompt, max_tokens: int = 128, *, stop=(), stream: bool = False, draft=None,
             draft_max: int = DRAFT_MAX, **sampling):
    """Generates from `prompt` (str, or a sequence of token ids) on a fresh context.

    sampling: SamplingParams' fields by name (temperature, top_k, top_p, min_p, repetition_penalty,
    repeat_last_n, frequency_penalty, presence_penalty, logit_bias, seed), each defaulting to
    SamplingParams'. draft: None, "lookup" (n-grams of the prompt and the text so far) or a Model with
    the same vocabulary, drafting up to draft_max tokens per step (speculative decoding: with
    temperature 0 the same tokens as without). Returns a Completion, or with stream=True an iterator
    of text pieces whose concatenation is the Completion's text for the same seed. Every argument is
    checked (ValueError) before any model work, streaming or not. See sampling.py for the parameters'
    meaning and order."""
    params = SamplingParams.from_options(sampling)
    check_options(model, params, max_tokens, stop, stream)
    check_draft(model, draft, draft_max)
    return generate_ids(model, prompt_ids(model, prompt), params, max_tokens, stop, stream, draft, draft_max)


def check_options(model: Model, params: SamplingParams, max_tokens, stop, stream) -> None:
    """ValueError for a bad max_tokens, stop, stream, or a logit_bias id outside the vocabulary."""
    check_max_tokens(max_tokens)
    check_stop(stop)
    if not isinstance(stream, bool):
        raise ValueError(f"stream must be True or False, got {stream!r}")
    params.check_vocab(model.n_vocab)


def generate_ids(model: Model, ids: list[int], params: SamplingParams, max_tokens: int = 128, stop=(),
                 stream: bool = False, draft=None, draft_max: int = DRAFT_MAX):
    """generate() on checked prompt ids (see prompt_ids) and parameters."""
    check_options(model, params, max_tokens, stop, stream)
    check_draft(model, draft, draft_max)
    stop = check_stop(stop)
    sampler = Sampler(params, model.n_vocab)
    if len(ids) > model.n_ctx:
        raise ValueError(f"the prompt has {len(ids)} tokens, more than the context of {model.n_ctx}")
    if max_tokens == 0:
        return iter(()) if stream else Completion("", [], "length")
    # A context just big enough: allocating the whole n_ctx costs more than a short generation.
    ctx = model.context(min(model.n_ctx, len(ids) + max_tokens))
    tokens = TokenStream(ctx, ids, sampler, max_tokens, stop,
                         speculator=speculator(model, draft, draft_max, params, ctx.n_ctx))
    if stream:
        return (piece for _, piece in tokens if piece)
    for _ in tokens:
        pass
    return Completion(tokens.text, tokens.tokens, tokens.finish_reason)
