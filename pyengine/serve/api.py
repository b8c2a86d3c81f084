"""The HTTP side of `python -m pyengine serve`: OpenAI's API on Starlette, over the Engine.

    POST /v1/chat/completions     messages -> the assistant's reply (the file's chat template)
    POST /v1/completions          prompt(s) -> continuations
    GET  /v1/models               the one model served
    GET  /health                  {"status": "ok", ...} and what the engine is doing
    GET  /                        the chat page (pyengine/serve/static/index.html)

Requests follow OpenAI's API (and llama.cpp's server for its extra sampling fields: top_k, min_p,
repeat_penalty, repeat_last_n). Every sampling field is read, defaulted and checked by SamplingParams
(pyengine/sampling.py): a field absent takes the same default as the Python API and the command line.
Fields this server does not know are ignored, as OpenAI's clients send some (user, ...); a known
field with a wrong type or value, malformed JSON, a prompt too long for the context, an unknown model
name: an OpenAI-style error, {"error": {"message", "type", "param", "code"}}, with status 400, 401,
404 or 413, never a 500. A client that goes away stops its generation.
"""

from __future__ import annotations

import asyncio
import dataclasses
from html import escape
import json
import os
import threading
import time
import uuid
import weakref
from importlib import resources
from typing import Any, AsyncIterator, Callable

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from ..chat import ChatTemplate, ChatTemplateError, chat_ids, check_messages
from ..generate import check_stop, prompt_ids
from ..sampling import SamplingParams
from .engine import SHUTTING_DOWN, Done, Engine, Failed, Job, Prompt, Token, TokenLogprob

__all__ = ["create_app", "APIError"]

MAX_BODY_BYTES = 8 << 20
MAX_N = 16            # choices per request (and never more than the engine's parallel sequences)
MAX_TOP_LOGPROBS = 20  # OpenAI's limit (chat); completions' logprobs: 5
MAX_STOP = 16


def _json_text(data: Any) -> bytes:
    """data as compact UTF-8 JSON; where a string holds a lone surrogate (JSON's "\\ud800" decodes to
    one, and a model name or an echoed prompt may send it back), as ASCII JSON with it escaped again."""
    try:
        return json.dumps(data, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()
    except UnicodeEncodeError:
        return json.dumps(data, allow_nan=False, separators=(",", ":")).encode()


class _JSON(JSONResponse):
    def render(self, content: Any) -> bytes:
        return _json_text(content)


class APIError(Exception):
    """An error answered to the client: status and OpenAI's error object."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self, headers: dict | None = None) -> JSONResponse:
        return _JSON(self.body(), status_code=self.status, headers=headers)


# ---------------------------------------------------------------------------------------------------
# Reading a request
# ---------------------------------------------------------------------------------------------------

_JSON_TYPES = {bool: "a boolean", int: "an integer", str: "a string", dict: "an object"}


def _field(body: dict, name: str, kind: type, default: Any = None) -> Any:
    """body[name] if present and not null, checked to be of JSON type `kind` (a boolean is not an
    integer), else default."""
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise APIError(400, f"'{name}' must be {_JSON_TYPES[kind]}, got {json.dumps(value)[:80]}", name)
    return value


_CANONICAL = {a: f.name for f in dataclasses.fields(SamplingParams) for a in f.metadata["aliases"]}


def _sampling(body: dict, n_vocab: int) -> SamplingParams:
    """The request's sampling fields, defaulted and checked by SamplingParams."""
    options = {}
    for name in SamplingParams.option_names():
        if body.get(name) is not None:
            options[name] = body[name]
    if "seed" in options and options["seed"] == -1:  # llama.cpp's "a fresh seed"
        del options["seed"]
    bias = options.get("logit_bias")
    if bias is not None:
        if not isinstance(bias, dict):
            raise APIError(400, "'logit_bias' must be an object of token id -> bias", "logit_bias")
        converted = {}
        for key, value in bias.items():
            if not (key.isascii() and key.isdigit()):  # JSON keys are strings: "1234", nothing looser
                raise APIError(400, f"logit_bias key {key!r} is not a token id", "logit_bias")
            token = int(key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not -100 <= value <= 100:
                raise APIError(400, f"logit_bias[{key}] must be a number in [-100, 100], got {value!r}", "logit_bias")
            converted[token] = value
        options["logit_bias"] = converted
    try:
        params = SamplingParams.from_options(options)
        params.check_vocab(n_vocab)
    except ValueError as e:
        message = str(e)
        named = message.split(" ", 1)[0].strip("'")  # the field's name, or the request's alias of it
        param = next((o for o in options if o == named or _CANONICAL.get(o) == named), None)
        raise APIError(400, message, param) from None
    return params


def _common(body: dict, engine: Engine, max_tokens_names: tuple[str, ...]) -> dict:
    """The fields both endpoints share: max_tokens, stop, n, stream, stream_options."""
    max_tokens = None
    for name in max_tokens_names:
        value = _field(body, name, int)
        if value is not None:
            if value < 0 and value != -1:
                raise APIError(400, f"'{name}' must be >= 0 (or -1: until the context is full), got {value}", name)
            max_tokens = None if value == -1 else value
    stop = body.get("stop")
    try:
        stop = check_stop(stop)
    except ValueError as e:
        raise APIError(400, str(e), "stop") from None
    if len(stop) > MAX_STOP:
        raise APIError(400, f"at most {MAX_STOP} stop strings, got {len(stop)}", "stop")
    n = _field(body, "n", int, 1)
    limit = min(MAX_N, engine.parallel)
    if not 1 <= n <= limit:
        raise APIError(400, f"'n' must be between 1 and {limit} (the server's --parallel), got {n}", "n")
    stream = _field(body, "stream", bool, False)
    options = _field(body, "stream_options", dict, {})
    include_usage = _field(options, "include_usage", bool, False)
    return {"max_tokens": max_tokens, "stop": stop, "n": n, "stream": stream, "include_usage": include_usage}


_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})  # OpenAI's


def _chat_messages(body: dict) -> list[dict]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise APIError(400, "'messages' must be a non-empty array of {role, content} objects", "messages")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise APIError(400, f"messages[{i}] must be an object", "messages")
        content = m.get("content")
        if content is None and m.get("role") == "assistant":  # OpenAI lets an assistant message have none
            content = ""
        if isinstance(content, list):  # content parts: only text is understood
            texts = []
            for part in content:
                if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                    kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                    raise APIError(400, f"messages[{i}]: content parts of type {kind!r} are not supported "
                                        "(this server reads text only)", "messages")
                texts.append(part["text"])
            content = "".join(texts)
        role = m.get("role")
        if role not in _ROLES:
            raise APIError(400, f"messages[{i}]: 'role' must be one of {', '.join(sorted(_ROLES))}, got "
                                f"{json.dumps(role)[:80]}", "messages")
        if role == "developer":  # OpenAI's newer name for the system message
            role = "system"
        out.append({"role": role, "content": content})
    try:
        return check_messages(out)
    except ValueError as e:
        raise APIError(400, str(e), "messages") from None


def _refuse_unsupported(body: dict, names: tuple[str, ...]) -> None:
    for name in names:
        if body.get(name) not in (None, [], False):
            raise APIError(400, f"'{name}' is not supported by this server", name)


# ---------------------------------------------------------------------------------------------------
# The app
# ---------------------------------------------------------------------------------------------------


class Server:
    """What the routes share: the model, its engine, the names it answers to."""

    def __init__(self, model, engine: Engine, api_key: str | None, alias: str | None) -> None:
        self.model = model
        self.engine = engine
        self.api_key = api_key
        self.model_id = alias or os.path.basename(model.path)
        self.names = {self.model_id, os.path.basename(model.path), model.path,
                      os.path.splitext(os.path.basename(model.path))[0]}
        self.template = None
        self.created = int(time.time())

    def check_model(self, body: dict) -> None:
        name = _field(body, "model", str)
        if name is not None and name not in self.names:
            raise APIError(404, f"The model '{name}' does not exist (this server runs '{self.model_id}')", "model",
                           "model_not_found")

    def chat_template(self) -> ChatTemplate:
        if self.template is None:
            self.template = ChatTemplate.from_model(self.model)
        return self.template


async def _read_json(request: Request) -> dict:
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > MAX_BODY_BYTES:
        raise APIError(413, f"the request body is larger than {MAX_BODY_BYTES} bytes", code="request_too_large")
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                raise APIError(413, f"the request body is larger than {MAX_BODY_BYTES} bytes", code="request_too_large")
            chunks.append(chunk)
    except ClientDisconnect:  # nobody reads the answer; no traceback for it
        raise APIError(400, "the client went away before the request body ended") from None
    try:
        body = json.loads(b"".join(chunks))
    except (ValueError, RecursionError) as e:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise APIError(400, f"the request body is not valid JSON: {str(e)[:200]}") from None
    if not isinstance(body, dict):
        raise APIError(400, "the request body must be a JSON object")
    return body


def _sse(data: Any) -> bytes:
    return b"data: " + _json_text(data) + b"\n\n"


class _Mailbox:
    """Events from the engine's thread to one event loop: held until the engine's step ends
    (Job.flush), then delivered with one wake-up of the loop, so a decoding step of 8 requests costs
    one call_soon_threadsafe (a write to the loop's self-pipe), not 8. Each queue gets its events in
    the order they were posted."""

    _boxes: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = weakref.ref(loop)  # not a strong one: _boxes holds its loops weakly
        self.lock = threading.Lock()
        self.pending: list[tuple[Callable, Any]] = []

    @classmethod
    def of(cls, loop: asyncio.AbstractEventLoop) -> _Mailbox:
        box = cls._boxes.get(loop)
        if box is None:
            box = cls._boxes[loop] = cls(loop)
        return box

    def post(self, put: Callable, item: Any) -> None:
        loop = self._loop()
        if loop is None or loop.is_closed():
            raise RuntimeError("the event loop is closed")  # the engine then cancels the job
        with self.lock:
            self.pending.append((put, item))

    def flush(self) -> None:
        with self.lock:
            if not self.pending:
                return
        loop = self._loop()
        if loop is None:
            raise RuntimeError("the event loop is gone")
        loop.call_soon_threadsafe(self._deliver)

    def _deliver(self) -> None:
        with self.lock:
            items, self.pending = self.pending, []
        for put, item in items:
            put(item)


class _Run:
    """One request's jobs in the engine, their events gathered on this event loop."""

    def __init__(self, engine: Engine, jobs: list[Job]) -> None:
        self.engine = engine
        self.queue: asyncio.Queue = asyncio.Queue()
        box = _Mailbox.of(asyncio.get_running_loop())
        put = self.queue.put_nowait
        self.handles = []
        self.n_open = 0
        for k, job in enumerate(jobs):
            job.emit = (lambda event, k=k: box.post(put, (k, event)))
            job.flush = box.flush
            self.n_open += job.n
        try:
            for job in jobs:
                self.handles.append(engine.submit(job))
        except ValueError as e:
            self.cancel()
            raise APIError(400, str(e)) from None
        except RuntimeError as e:  # the engine is stopping
            self.cancel()
            raise _failure(Failed(str(e))) from None

    async def events(self) -> AsyncIterator[tuple[int, Token | Done | Failed]]:
        try:
            while self.n_open:
                k, event = await self.queue.get()
                if isinstance(event, Done):
                    self.n_open -= 1
                elif isinstance(event, Failed):
                    self.n_open = 0
                yield k, event
        finally:
            self.cancel()

    def cancel(self) -> None:
        for h in self.handles:
            h.cancel()


async def _until_disconnect(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def _collect(request: Request, run: _Run, on_event: Callable) -> None:
    """Feeds run's events to on_event until every choice is done; stops the run if the client goes."""
    watcher = asyncio.ensure_future(_until_disconnect(request))
    events = run.events()
    nxt = None
    try:
        while True:
            nxt = asyncio.ensure_future(events.__anext__())
            done, _ = await asyncio.wait({nxt, watcher}, return_when=asyncio.FIRST_COMPLETED)
            if nxt not in done:
                run.cancel()
                raise asyncio.CancelledError("the client went away")
            try:
                k, event = nxt.result()
            except StopAsyncIteration:
                return
            on_event(k, event)
    finally:
        watcher.cancel()
        if nxt is not None and not nxt.done():  # its __anext__ must end before the generator can close
            nxt.cancel()
            await asyncio.wait({nxt})
        await events.aclose()


def _failure(event: Failed) -> APIError:
    if event.message.startswith("internal error"):
        return APIError(500, event.message, type="server_error")
    if event.message == SHUTTING_DOWN:  # a request the server ends as it stops: ask again elsewhere
        return APIError(503, event.message, type="server_error", code="server_shutting_down")
    return APIError(400, event.message)


def _logprob_entry(tokenizer, token: int, lp: TokenLogprob) -> dict:
    def one(t: int, value: float) -> dict:
        raw = tokenizer.token_bytes(t, special=True)
        return {"token": raw.decode("utf-8", "replace"), "logprob": value, "bytes": list(raw)}

    entry = one(token, lp.logprob)
    entry["top_logprobs"] = [one(t, v) for t, v in lp.top]
    return entry


def create_app(model, engine: Engine, api_key: str | None = None, alias: str | None = None) -> Starlette:
    """The ASGI app serving `model` through `engine` (closed when the app shuts down)."""
    server = Server(model, engine, api_key, alias)
    tokenizer = model.tokenizer

    def usage_of(prompt_tokens: int, cached: int, completion: int) -> dict:
        return {"prompt_tokens": prompt_tokens, "completion_tokens": completion,
                "total_tokens": prompt_tokens + completion, "prompt_tokens_details": {"cached_tokens": cached}}

    async def respond(request: Request, jobs: list[Job], stream: bool, include_usage: bool, kind: str,
                      make_choice: Callable, make_delta: Callable, echo: list[str] | None = None,
                      make_echo: Callable | None = None) -> Response:
        """kind: "chat.completion" or "text_completion". make_choice(index, text, finish, logprobs,
        prompt) -> a choice of the full response (prompt: its job's Prompt event, or None);
        make_delta(index, text, logprobs, finish, first) -> a chunk's choice (None: nothing to send);
        echo: each job's prompt text, put before its choices' text, streamed as make_echo(index, prompt)
        (after the job's Prompt event where its job has prompt_logprobs, else first)."""
        rid = ("chatcmpl-" if kind == "chat.completion" else "cmpl-") + uuid.uuid4().hex[:24]
        created = int(time.time())
        n = jobs[0].n
        run = _Run(engine, jobs)
        prompt_total = sum(len(j.ids) for j in jobs)
        cached = [0] * len(jobs)
        completion = [0]

        def note_done(k: int, event: Done) -> None:
            cached[k] = event.usage.cached_tokens
            completion[0] += event.usage.completion_tokens

        if not stream:
            texts = {i: [] for i in range(len(jobs) * n)}
            logprobs = {i: [] for i in range(len(jobs) * n)}
            finish = {}
            failed: list[Failed] = []
            prompt_events: dict[int, Prompt] = {}

            def on_event(k: int, event) -> None:
                if isinstance(event, Failed):
                    failed.append(event)
                    return
                if isinstance(event, Prompt):
                    prompt_events[k] = event
                    return
                index = k * n + event.choice
                if isinstance(event, Token):
                    texts[index].append(event.text)
                    if event.logprobs is not None and event.token is not None:
                        logprobs[index].append((event.token, event.text, event.logprobs))
                else:
                    finish[index] = event.finish_reason
                    note_done(k, event)

            try:
                await _collect(request, run, on_event)
            except asyncio.CancelledError:
                return Response(status_code=499)  # nobody reads it
            if failed:
                return _failure(failed[0]).response()
            choices = []
            for index in sorted(texts):
                text = "".join(texts[index])
                if echo is not None:
                    text = echo[index // n] + text
                choices.append(make_choice(index, text, finish[index],
                                           logprobs[index] if jobs[0].top_logprobs is not None else None,
                                           prompt_events.get(index // n)))
            return _JSON({"id": rid, "object": kind, "created": created, "model": server.model_id,
                          "choices": choices, "usage": usage_of(prompt_total, sum(cached), completion[0]),
                          "system_fingerprint": None})

        chunk_kind = kind + ".chunk" if kind == "chat.completion" else kind

        async def body() -> AsyncIterator[bytes]:
            def chunk(choices: list, **extra) -> bytes:
                return _sse({"id": rid, "object": chunk_kind, "created": created, "model": server.model_id,
                             "system_fingerprint": None, "choices": choices, **extra})

            try:
                started = set()
                if kind == "chat.completion":
                    for index in range(len(jobs) * n):
                        started.add(index)
                        yield chunk([make_delta(index, None, None, None, True)])
                elif echo is not None and not jobs[0].prompt_logprobs:
                    for index in range(len(jobs) * n):
                        yield chunk([make_echo(index, None)])
                async for k, event in run.events():
                    if isinstance(event, Failed):
                        yield _sse(_failure(event).body())
                        return
                    if isinstance(event, Prompt):
                        for index in range(k * n, k * n + n):
                            yield chunk([make_echo(index, event)])
                        continue
                    index = k * n + event.choice
                    if isinstance(event, Token):
                        lp = None
                        if event.logprobs is not None and event.token is not None:
                            lp = (event.token, event.text, event.logprobs)
                        if event.text or lp is not None:
                            yield chunk([make_delta(index, event.text, lp, None, False)])
                    else:
                        note_done(k, event)
                        yield chunk([make_delta(index, None, None, event.finish_reason, False)])
                if include_usage:
                    yield chunk([], usage=usage_of(prompt_total, sum(cached), completion[0]))
                yield b"data: [DONE]\n\n"
            finally:
                run.cancel()

        return StreamingResponse(body(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    def chat_logprobs(items) -> dict:
        return {"content": [_logprob_entry(tokenizer, t, lp) for t, _, lp in items], "refusal": None}

    async def chat_completions(request: Request) -> Response:
        body = await _read_json(request)
        server.check_model(body)
        _refuse_unsupported(body, ("tools", "functions", "audio", "prediction"))
        fmt = _field(body, "response_format", dict, {})
        if fmt.get("type", "text") != "text":
            raise APIError(400, f"response_format {fmt.get('type')!r} is not supported (only 'text')", "response_format")
        common = _common(body, engine, ("max_tokens", "max_completion_tokens"))
        params = _sampling(body, model.n_vocab)
        want_logprobs = _field(body, "logprobs", bool, False)
        top = _field(body, "top_logprobs", int)
        if top is not None and not want_logprobs:
            raise APIError(400, "'top_logprobs' needs 'logprobs': true", "top_logprobs")
        if top is not None and not 0 <= top <= MAX_TOP_LOGPROBS:
            raise APIError(400, f"'top_logprobs' must be between 0 and {MAX_TOP_LOGPROBS}, got {top}", "top_logprobs")
        messages = _chat_messages(body)

        def render() -> list[int]:
            return chat_ids(model, messages, template=server.chat_template())

        try:
            ids = await run_in_threadpool(render)
        except ChatTemplateError as e:
            raise APIError(400, f"the chat template refused the messages: {e}", "messages") from None
        except ValueError as e:
            raise APIError(400, str(e), "messages") from None
        _check_length(ids, model.n_ctx, "messages")
        job = Job(ids, params, emit=None, max_tokens=common["max_tokens"], stop=common["stop"], n=common["n"],
                  top_logprobs=(top or 0) if want_logprobs else None)

        def make_choice(index, text, finish, logprobs, prompt):
            return {"index": index, "message": {"role": "assistant", "content": text, "refusal": None},
                    "logprobs": None if logprobs is None else chat_logprobs(logprobs), "finish_reason": finish}

        def make_delta(index, text, lp, finish, first):
            delta = {"role": "assistant", "content": ""} if first else ({} if text is None else {"content": text})
            return {"index": index, "delta": delta, "logprobs": None if lp is None else chat_logprobs([lp]),
                    "finish_reason": finish}

        return await respond(request, [job], common["stream"], common["include_usage"], "chat.completion",
                             make_choice, make_delta)

    def token_text(t: int) -> str:
        return tokenizer.token_bytes(t, special=True).decode("utf-8", "replace")

    def legacy_logprobs(items, offset: int) -> dict:
        tokens, values, tops, offsets = [], [], [], []
        for t, text, lp in items:
            tokens.append(token_text(t))
            values.append(lp.logprob)
            tops.append({token_text(a): v for a, v in lp.top})
            offsets.append(offset)
            offset += len(text)
        return {"tokens": tokens, "token_logprobs": values, "top_logprobs": tops, "text_offset": offsets}

    def prompt_legacy_logprobs(prompt: Prompt, text: str, bos_added: bool) -> dict:
        """OpenAI's echoed prompt in a completion's logprobs: each prompt token with its log-probability
        (the first: null) and its offset in the echoed text (the BOS that tokenizing added: none)."""
        decoder = tokenizer.stream_decoder()  # model.detokenize's text, piece by piece
        tokens, values, tops, offsets = [], [], [], []
        offset = 0
        for i, (t, lp) in enumerate(zip(prompt.ids, prompt.logprobs)):
            tokens.append(token_text(t))
            values.append(None if lp is None else lp.logprob)
            tops.append(None if lp is None else {token_text(a): v for a, v in lp.top})
            offsets.append(min(offset, len(text)))
            piece = decoder.feed(t)
            if not (i == 0 and bos_added):
                offset += len(piece)
        return {"tokens": tokens, "token_logprobs": values, "top_logprobs": tops, "text_offset": offsets}

    async def completions(request: Request) -> Response:
        body = await _read_json(request)
        server.check_model(body)
        _refuse_unsupported(body, ("suffix",))
        common = _common(body, engine, ("max_tokens",))
        best_of = _field(body, "best_of", int)
        if best_of is not None and best_of != common["n"]:
            raise APIError(400, "'best_of' other than 'n' is not supported", "best_of")
        params = _sampling(body, model.n_vocab)
        top = _field(body, "logprobs", int)
        if top is not None and not 0 <= top <= 5:
            raise APIError(400, f"'logprobs' must be between 0 and 5, got {top}", "logprobs")
        echo = _field(body, "echo", bool, False)
        prompt = body.get("prompt")
        if isinstance(prompt, str) or (isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt)):
            prompts = [prompt]
        elif isinstance(prompt, list) and prompt and all(isinstance(p, (str, list)) for p in prompt):
            prompts = prompt
        else:
            raise APIError(400, "'prompt' must be a string, an array of strings, an array of token ids "
                                "or an array of such arrays", "prompt")
        if len(prompts) * common["n"] > engine.parallel * 4:
            raise APIError(400, f"at most {engine.parallel * 4} choices (prompts x n) per request", "prompt")

        def tokenize() -> list[list[int]]:
            return [prompt_ids(model, p) for p in prompts]

        try:
            all_ids = await run_in_threadpool(tokenize)
        except ValueError as e:
            raise APIError(400, str(e), "prompt") from None
        for ids in all_ids:
            _check_length(ids, model.n_ctx, "prompt")
        max_tokens = 16 if body.get("max_tokens") is None else common["max_tokens"]  # OpenAI's default: 16
        jobs = [Job(ids, params, emit=None, max_tokens=max_tokens, stop=common["stop"], n=common["n"], top_logprobs=top,
                    prompt_logprobs=echo and top is not None)  # OpenAI's echo with logprobs scores the prompt too
                for ids in all_ids]
        echoed = [p if isinstance(p, str) else model.detokenize(ids) for p, ids in zip(prompts, all_ids)] if echo else None
        offsets = [len(e) for e in echoed] if echoed else [0] * len(prompts)
        streamed = {}  # a streamed choice's text so far (its next token's text_offset)

        def echo_logprobs(k: int, prompt: Prompt) -> dict:
            bos_added = isinstance(prompts[k], str) and tokenizer.add_bos and prompt.ids[:1] == [tokenizer.bos_id]
            return prompt_legacy_logprobs(prompt, echoed[k], bos_added)

        def make_choice(index, text, finish, logprobs, prompt):
            k = index // common["n"]
            lp = None if logprobs is None else legacy_logprobs(logprobs, offsets[k])
            if lp is not None and prompt is not None:
                lp = {key: value + lp[key] for key, value in echo_logprobs(k, prompt).items()}
            return {"index": index, "text": text, "finish_reason": finish, "logprobs": lp}

        def make_echo(index, prompt):
            k = index // common["n"]
            return {"index": index, "text": echoed[k], "finish_reason": None,
                    "logprobs": None if prompt is None else echo_logprobs(k, prompt)}

        def make_delta(index, text, lp, finish, first):
            offset = streamed.get(index, offsets[index // common["n"]])
            streamed[index] = offset + len(text or "")
            return {"index": index, "text": text or "", "finish_reason": finish,
                    "logprobs": None if lp is None else legacy_logprobs([lp], offset)}

        return await respond(request, jobs, common["stream"], common["include_usage"], "text_completion",
                             make_choice, make_delta, echo=echoed, make_echo=make_echo)

    def model_object() -> dict:
        return {"id": server.model_id, "object": "model", "created": server.created, "owned_by": "pyengine",
                "meta": {"arch": model.arch, "n_ctx": model.n_ctx, "n_ctx_train": model.config.n_ctx_train,
                         "n_vocab": model.n_vocab}}

    async def models(request: Request) -> Response:
        return _JSON({"object": "list", "data": [model_object()]})

    async def one_model(request: Request) -> Response:  # the openai client's models.retrieve(name)
        server.check_model({"model": request.path_params["name"]})
        return _JSON(model_object())

    async def health(request: Request) -> Response:
        stats = engine.stats()  # slots: llama-server's name for the sequences a batch runs at once
        return _JSON({"status": "ok", "slots_idle": engine.parallel - stats["sequences_in_use"],
                      "slots_processing": stats["sequences_in_use"], **stats})

    async def page(request: Request) -> Response:
        html = resources.files(__package__).joinpath("static", "index.html").read_text(encoding="utf-8")
        return HTMLResponse(html.replace("{{MODEL}}", escape(server.model_id)))

    def guarded(handler):
        async def run(request: Request) -> Response:
            if api_key is not None:
                scheme, _, key = request.headers.get("authorization", "").partition(" ")
                if not (scheme.lower() == "bearer" and key.strip() == api_key) \
                        and request.headers.get("x-api-key") != api_key:
                    return APIError(401, "Invalid API key: give it as 'Authorization: Bearer KEY'", code="invalid_api_key",
                                    type="authentication_error").response()
            try:
                return await handler(request)
            except APIError as e:
                return e.response()
        return run

    async def http_error(request: Request, exc: HTTPException) -> Response:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        return APIError(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}",
                        code=code).response(headers=exc.headers)

    async def server_error(request: Request, exc: Exception) -> Response:
        return APIError(500, f"internal error: {type(exc).__name__}: {exc}", type="server_error").response()

    routes = [
        Route("/v1/chat/completions", guarded(chat_completions), methods=["POST"]),
        Route("/chat/completions", guarded(chat_completions), methods=["POST"]),
        Route("/v1/completions", guarded(completions), methods=["POST"]),
        Route("/completions", guarded(completions), methods=["POST"]),
        Route("/v1/models", guarded(models), methods=["GET"]),
        Route("/models", guarded(models), methods=["GET"]),
        Route("/v1/models/{name:path}", guarded(one_model), methods=["GET"]),
        Route("/models/{name:path}", guarded(one_model), methods=["GET"]),
        Route("/health", health, methods=["GET"]),
        Route("/", page, methods=["GET"]),
    ]

    return Starlette(routes=routes, exception_handlers={HTTPException: http_error, Exception: server_error},
                     lifespan=_lifespan(engine))


def _lifespan(engine: Engine):
    import contextlib

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        await run_in_threadpool(engine.close)

    return lifespan


def _check_length(ids: list[int], n_ctx: int, param: str) -> None:
    if len(ids) >= n_ctx:
        raise APIError(400, f"the prompt has {len(ids)} tokens; the context holds {n_ctx} (with room for at least "
                            "one generated token)", param, "context_length_exceeded")
