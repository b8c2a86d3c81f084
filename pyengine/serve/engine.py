"""Continuous batching: many generations sharing one model, on one thread of their own.

    engine = Engine(model, parallel=4)
    handle = engine.submit(Job(ids, params, max_tokens, stop, n=1, top_logprobs=None, emit=callback))
    handle.cancel()                      # from any thread; the job's sequences are freed
    engine.close()

The engine thread runs a loop of steps. Each step
  1. admits waiting jobs while their choices fit in the `parallel` sequences (first come, first
     served), each on a cached sequence that shares the longest prefix with its prompt (below);
  2. evaluates one chunk (`prefill_chunk` tokens) of one prompt still being read, the one that has
     waited longest, so that a long prompt does not stall the others;
  3. evaluates the last sampled token of every generating sequence in one batched forward call
     (Model.eval_sequences, as the beam search does for its beams), then samples each one's next
     token with the job's own Sampler. Steps 2 and 3 are one call where they can be
     (Model.eval_batch with last_only: the chunk's tokens beside the others' next tokens, the
     weights read once for all). With a draft (Engine(draft="lookup" or a draft Model), see
     pyengine/speculative.py) each sequence may add a draft of its next tokens, and the batch holds
     every sequence's last token and draft (Model.eval_batch); each sequence takes the drafted
     tokens its sampler agrees with, so a step may give it several tokens (with temperature 0
     exactly those it gives without a draft).
A job joins or leaves between steps. The logits of a sequence are bit-identical whatever else is in
the batch (the determinism promise: batch rows never mix, threads split rows), and each job samples
with its own seeded generator, so a request gives the same text alone or beside seven others.

Reuse: a finished (or cancelled) sequence stays in memory, idle, with the ids its KV cache holds. A
new job takes the idle sequence with the longest common prefix, keeps that prefix and evaluates only
the rest: a conversation's next turn re-reads only the new messages. Idle sequences are kept in
least-recently-used order up to `cache_bytes` of KV cache; beyond that the oldest are freed (or
reused from position 0), so memory stays under (parallel + cache_bytes / sequence size) sequences.

What a job hears, through its `emit` callback, called on the engine thread (keep it short: the
server's puts the event on an asyncio queue):
    Token(choice, token, text, logprobs)   a sampled token and the text it released (may be ""); the
                                           end-of-generation token gives no Token, only its text
                                           held back, with token None
    Done(choice, finish_reason, usage)     a choice ended ("stop" or "length")
    Failed(message)                        the job could not run (nothing can be sampled, ...)
    Prompt(ids, logprobs)                  (Job.prompt_logprobs) the prompt's tokens and their
                                           log-probabilities, once it is read, before any Token
"""

from __future__ import annotations

import collections
import dataclasses
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, NamedTuple

import numpy as np

from ..generate import TextOutput, keep_prefix, reusable_prefix
from ..model import kv_cache_bytes
from ..sampling import Sampler, SamplingError, SamplingParams
from ..speculative import DRAFT_MAX, LookupDrafter, ModelDrafter, Speculator, check_draft, verify

if TYPE_CHECKING:
    from ..model import Context, Model

__all__ = ["Engine", "Job", "Handle", "Token", "Done", "Failed", "Prompt", "Usage", "TokenLogprob", "SHUTTING_DOWN"]

SHUTTING_DOWN = "the server is shutting down"  # the Failed message of the jobs Engine.stop ends


class TokenLogprob(NamedTuple):
    """The log-probability of a sampled token under the model (log-softmax of the raw logits, before
    penalties and temperature, as OpenAI reports them) and the `top` most likely alternatives."""

    logprob: float
    top: list[tuple[int, float]]


class Token(NamedTuple):
    choice: int
    token: int | None
    text: str
    logprobs: TokenLogprob | None = None


class Usage(NamedTuple):
    prompt_tokens: int       # the prompt's ids
    cached_tokens: int       # of those, kept from an idle sequence (not evaluated again)
    completion_tokens: int   # tokens sampled for this choice (an end-of-generation token counts)


class Done(NamedTuple):
    choice: int
    finish_reason: str
    usage: Usage


class Failed(NamedTuple):
    message: str


class Prompt(NamedTuple):
    """A prompt's tokens and their log-probabilities (Job.prompt_logprobs): logprobs[i] is ids[i]'s
    under the logits after ids[:i] (top: Job.top_logprobs alternatives), None for ids[0]."""

    ids: list[int]
    logprobs: list[TokenLogprob | None]


Event = Token | Done | Failed | Prompt


@dataclass
class Job:
    """One request: a prompt (token ids) and how to continue it. n: independent choices, each with
    its own sampler; choice i seeds its generator with params.seed + i (so choice 0 of a request
    gives what Model.generate gives with that seed). max_tokens None: until the context is full.
    top_logprobs: None for no log-probabilities, else how many alternatives (0-20) with each token."""

    ids: list[int]
    params: SamplingParams
    emit: Callable[[Event], None]
    max_tokens: int | None = None
    stop: tuple[str, ...] = ()
    n: int = 1
    top_logprobs: int | None = None
    # The prompt's log-probabilities too (a Prompt event; top_logprobs alternatives each): every prompt
    # token is evaluated, none taken from a cached prefix (a cached position's logits are not kept).
    prompt_logprobs: bool = False
    # Called once after each engine step in which the job's events were emitted: emit may hold events
    # until then (one wake-up of a listener's event loop per step, not per token).
    flush: Callable[[], None] | None = None
    cancelled: bool = field(default=False, init=False)


class Handle:
    def __init__(self, engine: Engine, job: Job) -> None:
        self._engine, self.job = engine, job

    def cancel(self) -> None:
        """Stops the job (between steps); its sequences go back to the cache. Idempotent."""
        self._engine._cancel(self.job)


class _Sequence:
    """A context and the ids its KV cache holds."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.ids: list[int] = []

    def keep(self, n: int) -> int:
        """Keeps the first n positions (none where a sliding window no longer holds them); returns
        how many it kept."""
        n = keep_prefix(self.ctx, n)
        del self.ids[n:]
        return n


class SequenceCache:
    """The model's sequences: at most `parallel` in use, and idle ones kept for their prefixes in
    least-recently-used order while their KV caches fit in cache_bytes."""

    def __init__(self, model: Model, parallel: int, cache_bytes: int) -> None:
        self.model = model
        self.sequence_bytes = kv_cache_bytes(model.config, model.n_ctx, model.kv_type)
        self.max_idle = int(cache_bytes // self.sequence_bytes)
        self.max_sequences = parallel + self.max_idle
        self.idle: collections.OrderedDict[int, _Sequence] = collections.OrderedDict()  # oldest first
        self.n_sequences = 0

    def take(self, ids: list[int]) -> tuple[_Sequence, int]:
        """A sequence for a prompt, and how many of the prompt's ids it already holds (at most
        len(ids) - 1: the last one is evaluated again for its logits)."""
        best, best_n = None, 0
        for key, seq in self.idle.items():
            n = reusable_prefix(seq.ids, ids)
            if n > best_n:
                best, best_n = key, n
        if best is None:
            return self.fresh(), 0
        seq = self.idle.pop(best)
        return seq, seq.keep(best_n)

    def fresh(self) -> _Sequence:
        """An empty sequence: a new one while under the cap, else the least recently used idle one."""
        if self.n_sequences < self.max_sequences or not self.idle:
            self.n_sequences += 1
            return _Sequence(self.model.context())
        seq = self.idle.popitem(last=False)[1]
        seq.keep(0)
        return seq

    def give_back(self, seq: _Sequence) -> None:
        self.idle[id(seq)] = seq
        while len(self.idle) > self.max_idle:
            self.idle.popitem(last=False)
            self.n_sequences -= 1


def _logprobs(logits: np.ndarray, token: int, top: int) -> TokenLogprob:
    x = logits.astype(np.float64)
    m = x.max()
    log_z = m + np.log(np.exp(x - m).sum())
    best = []
    if top:
        ids = np.argpartition(-x, top - 1)[:top]
        ids = ids[np.lexsort((ids, -x[ids]))]  # most likely first, ties by id
        best = [(int(i), _finite(x[i] - log_z)) for i in ids]
    return TokenLogprob(_finite(x[token] - log_z), best)


def _finite(logprob: float) -> float:
    """A log-probability for JSON, which has no -Infinity: a token the model gives logit -inf (probability
    0) reads -9999.0, as OpenAI reports such tokens."""
    return max(float(logprob), -9999.0)


class _Choice:
    def __init__(self, index: int, seq: _Sequence, job: Job, n_vocab: int, n_ctx: int) -> None:
        self.index, self.seq = index, seq
        params = job.params
        if params.seed is not None and index:
            params = dataclasses.replace(params, seed=params.seed + index)
        self.sampler = Sampler(params, n_vocab)
        self.output: TextOutput | None = None
        self.max_tokens = n_ctx if job.max_tokens is None else job.max_tokens
        self.next: int | None = None  # sampled, to be evaluated in the next step
        self.n_sampled = 0
        self.done = False
        self.speculator: Speculator | None = None


class _Active:
    """A job being served: its prompt still to read, then its choices."""

    def __init__(self, job: Job, seq: _Sequence, n_cached: int) -> None:
        self.job = job
        self.seq = seq
        self.n_cached = n_cached
        self.todo = job.ids[n_cached:]  # prompt ids still to evaluate
        self.choices: list[_Choice] = []
        self.waiting_since = time.monotonic()
        self.prompt_logprobs: list[TokenLogprob | None] | None = [None] if job.prompt_logprobs else None
        self.last_logits: np.ndarray | None = None  # of the chunk read last (prompt_logprobs)


class Engine:
    def __init__(self, model: Model, parallel: int = 4, cache_bytes: int = 1 << 30, prefill_chunk: int = 128,
                 draft=None, draft_max: int = DRAFT_MAX) -> None:
        if parallel < 1:
            raise ValueError(f"parallel must be >= 1, got {parallel}")
        if prefill_chunk < 1:
            raise ValueError(f"prefill_chunk must be >= 1, got {prefill_chunk}")
        check_draft(model, draft, draft_max)
        self.draft, self.draft_max = draft, int(draft_max)
        self._drafters: list[ModelDrafter] = []  # a draft model's drafters not in use (each holds a context)
        self.model = model
        self.parallel = parallel
        self.prefill_chunk = prefill_chunk
        self.cache = SequenceCache(model, parallel, cache_bytes)
        self._waiting: collections.deque[Job] = collections.deque()
        self._active: list[_Active] = []
        self._lock = threading.Condition()
        self._closing = False
        self.steps = 0
        self._flushes: dict[Callable[[], None], None] = {}  # of the events sent since the last _flush
        self.counts = {"finished": 0, "cancelled": 0, "failed": 0, "tokens_generated": 0, "draft_tokens": 0,
                       "draft_accepted": 0}
        self._thread = threading.Thread(target=self._run, name="pyengine-batch", daemon=True)
        self._thread.start()

    # -- any thread --------------------------------------------------------------------------------

    def submit(self, job: Job) -> Handle:
        if not job.ids:
            raise ValueError("a job needs at least one prompt id")
        if not 1 <= job.n <= self.parallel:
            raise ValueError(f"n must be between 1 and the server's parallel sequences ({self.parallel}), got {job.n}")
        if len(job.ids) >= self.model.n_ctx:
            raise ValueError(f"the prompt has {len(job.ids)} tokens; the context holds {self.model.n_ctx}, "
                             "with room for at least one generated token")
        job.params.check_vocab(self.model.n_vocab)
        with self._lock:
            if self._closing:
                raise RuntimeError(SHUTTING_DOWN)
            self._waiting.append(job)
            self._lock.notify()
        return Handle(self, job)

    def _cancel(self, job: Job) -> None:
        with self._lock:
            job.cancelled = True
            self._lock.notify()

    def stats(self) -> dict:
        """waiting and processing: jobs; sequences_in_use: the sequences the processing jobs hold (a
        job of n choices holds n; at most `parallel`)."""
        with self._lock:
            return {"waiting": len(self._waiting), "processing": len(self._active),
                    "sequences_in_use": self._in_use(), "sequences": self.cache.n_sequences,
                    "idle_sequences": len(self.cache.idle), **self.counts}

    def stop(self) -> None:
        """Ends every job, running or waiting, with Failed(SHUTTING_DOWN) after the step in progress,
        and refuses new ones; returns at once (close() waits for the thread)."""
        with self._lock:
            self._closing = True
            self._lock.notify()

    def close(self) -> None:
        self.stop()
        self._thread.join()

    # -- the engine thread -------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._closing and not self._waiting and not self._active:
                    self._lock.wait()
                if self._closing:
                    break
                cancelled = [a for a in self._active if a.job.cancelled]
                waiting = [j for j in self._waiting if not j.cancelled]
                self.counts["cancelled"] += len(self._waiting) - len(waiting)  # gone before they ran
                self._waiting.clear()
                self._waiting.extend(waiting)
            for a in cancelled:
                self.counts["cancelled"] += 1
                self._finish(a)
            self._admit()
            self._step()
            self._flush()
        for a in list(self._active):
            self._fail(a, SHUTTING_DOWN)
        for job in self._waiting:
            self.counts["cancelled" if job.cancelled else "failed"] += 1
            self._send(job, Failed(SHUTTING_DOWN))
        self._flush()

    def _in_use(self) -> int:
        return sum(len(a.choices) or a.job.n for a in self._active)

    def _admit(self) -> None:
        while True:
            with self._lock:
                if not self._waiting or self._in_use() + self._waiting[0].n > self.parallel:
                    return
                job = self._waiting.popleft()
            seq, n_cached = (self.cache.fresh(), 0) if job.prompt_logprobs else self.cache.take(job.ids)
            self._active.append(_Active(job, seq, n_cached))

    def _step(self) -> None:
        self.steps += 1
        reading = [a for a in self._active if a.todo]
        first = min(reading, key=lambda a: a.waiting_since) if reading else None
        live = [c for a in self._active if not a.todo for c in a.choices if not c.done]
        if live:
            self._decode(live, first)
        elif first is not None:
            self._guard(first, self._prefill, first)
        for a in [a for a in self._active if a.choices and all(c.done for c in a.choices)]:
            self.counts["finished"] += 1
            self._finish(a)

    def _guard(self, a: _Active, fn, *args) -> None:
        """Runs one job's part of a step; an error ends that job (with a message), not the engine."""
        try:
            fn(*args)
        except SamplingError as e:
            self._fail(a, str(e))
        except Exception as e:  # noqa: BLE001  (a bug must not stop the other jobs, or the server)
            self._fail(a, f"internal error: {type(e).__name__}: {e}")

    def _prefill(self, a: _Active) -> None:
        chunk = a.todo[:self.prefill_chunk]
        if a.prompt_logprobs is None:
            return self._read(a, chunk, a.seq.ctx.eval(chunk))
        rows = a.seq.ctx.eval_all(chunk)  # each token's logits: the next one's log-probability
        top = a.job.top_logprobs or 0
        for j, token in enumerate(chunk):
            before = rows[j - 1] if j else a.last_logits
            if before is not None:
                a.prompt_logprobs.append(_logprobs(before, token, top))
        a.last_logits = np.array(rows[-1])
        self._read(a, chunk, a.last_logits)

    def _read(self, a: _Active, chunk: list[int], logits: np.ndarray) -> None:
        """A chunk of a's prompt evaluated (logits: its last token's): the prompt's next chunk waits
        for a later step, or the choices start from the last one."""
        a.seq.ids.extend(chunk)
        del a.todo[:len(chunk)]
        a.waiting_since = time.monotonic()
        if a.todo:
            return
        job = a.job
        model = self.model
        if a.prompt_logprobs is not None:
            self._send(job, Prompt(list(job.ids), a.prompt_logprobs))
            a.prompt_logprobs = a.last_logits = None
        seqs = [a.seq] + [self._fork(a.seq) for _ in range(job.n - 1)]
        a.choices = [_Choice(i, s, job, model.n_vocab, model.n_ctx) for i, s in enumerate(seqs)]
        for c in a.choices:
            c.speculator = self._speculator(c.sampler.params)
            self._sample(a, c, [logits])

    def _speculator(self, params: SamplingParams) -> Speculator | None:
        if self.draft is None:
            return None
        if isinstance(self.draft, str):
            return Speculator(LookupDrafter(), self.draft_max)
        if self._drafters:
            drafter = self._drafters.pop()
            drafter.use(params)
        else:
            drafter = ModelDrafter(self.draft, params, self.model.n_ctx)
        return Speculator(drafter, self.draft_max)

    def _fork(self, seq: _Sequence) -> _Sequence:
        other = self.cache.fresh()
        other.ctx._ctx.copy_from(seq.ctx._ctx)
        other.ids = list(seq.ids)
        return other

    def _decode(self, live: list[_Choice], reading: _Active | None = None) -> None:
        """The next token of every live choice in one forward call, and, where no choice has a draft,
        the next chunk of `reading`'s prompt in the same call (llama.cpp's server mixes them too: the
        weights are read once for both, and a joining request does not cost the others a step)."""
        owner = {id(c): a for a in self._active for c in a.choices}
        drafts: dict[int, tuple[list[int], list]] = {}
        for c in live:
            if c.speculator is not None:
                self._guard(owner[id(c)], self._propose, c, drafts)
        live = [c for c in live if not owner[id(c)].job.cancelled]  # a drafter's failure ends its job
        if reading is not None and (drafts or not live or reading.prompt_logprobs is not None):
            self._guard(reading, self._prefill, reading)
            reading = None
        if not live:
            return
        chunk = reading.todo[:self.prefill_chunk] if reading is not None else None
        try:
            if drafts:
                rows = self.model.eval_batch([c.seq.ctx for c in live],
                                             [[c.next, *drafts.get(id(c), ((), ()))[0]] for c in live])
            elif reading is not None:
                rows = self.model.eval_batch([c.seq.ctx for c in live] + [reading.seq.ctx],
                                             [[c.next] for c in live] + [chunk], last_only=True)
                self._guard(reading, self._read, reading, chunk, rows.pop()[0])
            else:
                rows = self.model.eval_sequences([c.seq.ctx for c in live], [c.next for c in live])[:, None]
        except Exception as e:  # noqa: BLE001
            if reading is not None:  # nothing was evaluated (checked first): the prompt alone, then the rest
                self._guard(reading, self._prefill, reading)
                return self._decode(live)
            for a in {id(owner[id(c)]): owner[id(c)] for c in live}.values():
                self._fail(a, f"internal error: {type(e).__name__}: {e}")
            return
        for c, logits in zip(live, rows):
            c.seq.ids.append(c.next)
            a = owner[id(c)]
            if not a.job.cancelled:
                self._guard(a, self._sample, a, c, logits, *drafts.get(id(c), ((), ())))
            ctx = c.seq.ctx
            if ctx.n_past > len(c.seq.ids):  # drafted tokens not taken, or past the end
                ctx.truncate(len(c.seq.ids))

    def _propose(self, c: _Choice, drafts: dict) -> None:
        ids = c.seq.ids
        room = min(c.seq.ctx.n_ctx - len(ids) - 1, c.max_tokens - c.n_sampled - 1)
        tokens, qs = c.speculator.propose([*ids, c.next], room)
        if tokens:
            drafts[id(c)] = (tokens, qs)

    def _sample(self, a: _Active, c: _Choice, rows, drafts=(), qs=()) -> None:
        """Samples from each row of logits in turn (rows[i] follows drafts[:i]) until a draft is not
        taken or the choice ends."""
        job = a.job
        if c.output is None:
            c.output = TextOutput(self.model.tokenizer, c.max_tokens, job.stop)
            if c.output.finish_reason is not None:  # max_tokens 0: the prompt read, nothing to generate
                c.done = True
                self._send(job, Done(c.index, c.output.finish_reason, Usage(len(job.ids), a.n_cached, 0)))
                return
        taken = 0
        for i, logits in enumerate(rows):
            if i < len(drafts):
                token, accepted = verify(c.sampler, c.seq.ids, logits, drafts[i], qs[i])
            else:
                token, accepted = c.sampler(c.seq.ids, logits), False
            taken += accepted
            if not self._emit(a, c, token, logits):
                break
            if not accepted:
                c.next = token
                break
            c.seq.ids.append(token)  # a draft taken: already evaluated
        if drafts:
            c.speculator.feedback(len(drafts), taken)
            self.counts["draft_tokens"] += len(drafts)
            self.counts["draft_accepted"] += taken

    def _emit(self, a: _Active, c: _Choice, token: int, logits: np.ndarray) -> bool:
        """Sends a sampled token (and Done when it ends the choice); whether the choice goes on."""
        job = a.job
        c.n_sampled += 1
        self.counts["tokens_generated"] += 1
        text = c.output.add(token, room=len(c.seq.ids) < c.seq.ctx.n_ctx)
        ended = c.output.finish_reason is not None
        eog = ended and token in c.output.eog
        logprobs = None
        if job.top_logprobs is not None and not eog:
            logprobs = _logprobs(logits, token, job.top_logprobs)
        if not eog or text:
            self._send(job, Token(c.index, None if eog else token, text, logprobs))
        if ended:
            c.done = True
            self._send(job, Done(c.index, c.output.finish_reason, Usage(len(job.ids), a.n_cached, c.n_sampled)))
        return not ended

    def _fail(self, a: _Active, message: str) -> None:
        if a in self._active:
            self._send(a.job, Failed(message))
            self.counts["failed"] += 1
            a.job.cancelled = True  # nothing more is sent, nothing more is sampled
            self._finish(a)

    def _send(self, job: Job, event: Event) -> None:
        if job.cancelled:
            return
        try:
            job.emit(event)
        except Exception:  # the listener is gone (its event loop closed): nobody waits for this job
            job.cancelled = True
            return
        if job.flush is not None:
            self._flushes[job.flush] = None  # an ordered set: equal callbacks (one listener's) run once

    def _flush(self) -> None:
        """Runs the flush callbacks of the events sent since the last call, each once."""
        calls = list(self._flushes)
        self._flushes.clear()
        for flush in calls:
            try:
                flush()
            except Exception:  # noqa: BLE001  (a listener gone; its jobs are cancelled by the next send)
                pass

    def _finish(self, a: _Active) -> None:
        self._active.remove(a)
        for c in a.choices:
            if c.speculator is not None and isinstance(c.speculator.drafter, ModelDrafter):
                self._drafters.append(c.speculator.drafter)
        for seq in [a.seq] + [c.seq for c in a.choices[1:]]:
            self.cache.give_back(seq)
