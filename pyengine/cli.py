"""The commands behind `python -m pyengine ...` (argument parsing lives in __main__.py).

Each command is a plain function taking keyword arguments, usable without the command line:

    run_generate(model="m.gguf", prompt="Hello", max_tokens=32, sampling={"seed": 1})
    run_chat(model=None, system="Be brief.", sampling={"temperature": 0.7})
    chat_repl(session, read=input)        # the REPL loop on a ChatSession, drivable from tests

run_command(fn, **kwargs) runs one and turns a bad input (a missing file, a malformed GGUF, a bad
value) into a one-line error on stderr and a non-zero exit code.
"""

from __future__ import annotations

import os
import sys
from typing import Callable, TextIO

from ._startup import caused_by_interrupt
from .cli_tools import run_bench, run_imatrix, run_info, run_perplexity, run_quantize  # noqa: F401  (run by name)
from .sampling import SamplingParams
from .speculative import DRAFT_MAX, MAX_DRAFT_MAX, check_draft_max

HELP = """commands:
  /reset   forget the conversation (the system prompt stays)
  /help    this text
  /exit    quit (Ctrl-D too)
Ctrl-C stops the answer being written (the conversation goes on); at the prompt it quits."""


class CommandError(Exception):
    """A bad input found by a command: reported as one line, exit code 1."""


INTERRUPTED = 130  # the exit code of a command stopped by Ctrl-C (128 + SIGINT), as shells report it


def report_interrupt() -> int:
    """The one line a command stopped by Ctrl-C prints; returns its exit code."""
    # on a terminal the cursor may follow "^C" or a half-written line: start a new one
    lead = "\n" if sys.stderr.isatty() else ""
    print(f"{lead}pyengine: interrupted", file=sys.stderr, flush=True)
    return INTERRUPTED


def run_command(fn: Callable[..., int | None], **kwargs) -> int:
    """Runs fn(**kwargs); returns the process exit code. Errors caused by the input become one line
    on stderr: 1 for a bad input, 130 for Ctrl-C."""
    from .fetch import FetchError  # (a Ctrl-C while importing it reaches __main__.main: the same line)

    try:
        return fn(**kwargs) or 0
    except KeyboardInterrupt:
        return report_interrupt()
    except BrokenPipeError:  # the reader of stdout went away (`| head`): quiet, as other tools are
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        except (OSError, ValueError):
            pass
        return 1
    except Exception as e:
        if caused_by_interrupt(e):
            return report_interrupt()
        if not isinstance(e, (CommandError, ValueError, OSError, FetchError, UnicodeError, MemoryError)):
            raise
        # ValueError covers GGUFError (a malformed file), bad sampling values and chat template errors
        message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if isinstance(e, FileNotFoundError) and e.filename:
            message = f"{e.filename}: no such file"
        elif isinstance(e, IsADirectoryError) and e.filename:
            message = f"{e.filename}: a directory, not a file"
        elif isinstance(e, MemoryError):  # an allocation the machine (or a ulimit) refused
            message = "out of memory" + (f": {e}" if str(e) else "")
        print(f"pyengine: error: {message}", file=sys.stderr)
        return 1


def load_model(path: str | None, n_ctx: int | None = None, n_threads: int | None = None,
               cache_types: tuple[str | None, str | None] = (None, None)):
    """The model of a command; cache_types: its -ctk and -ctv."""
    from .cli_tools import cache_type
    from .model import Model

    if path is not None and not os.path.isfile(path):
        raise CommandError(f"{path}: no such file" if not os.path.exists(path) else f"{path}: not a file")
    if n_ctx is not None and n_ctx <= 0:
        raise CommandError(f"-c must be a positive number of tokens, got {n_ctx}")
    if n_threads is not None and n_threads <= 0:
        raise CommandError(f"-t must be a positive number of threads, got {n_threads}")
    return Model(path, n_ctx=n_ctx, n_threads=n_threads, kv_type=cache_type(*cache_types))


def load_draft(draft: str | None, model):
    """--draft: None, "lookup", or a GGUF file loaded like the model (its context and threads) and
    checked to share its vocabulary."""
    if draft is None or draft == "lookup":
        return draft
    from .speculative import check_draft

    d = load_model(draft, model.n_ctx, model.n_threads)
    check_draft(model, d, 1)
    return d


def _write(out: TextIO, text: str) -> None:
    out.write(text)
    out.flush()


# ---------------------------------------------------------------------------------------------------
# generate
# ---------------------------------------------------------------------------------------------------


def _check_draft_flags(draft: str | None, draft_max: int) -> None:
    try:
        check_draft_max(draft_max)
    except ValueError:
        raise CommandError(f"--draft-max must be between 1 and {MAX_DRAFT_MAX}, got {draft_max}") from None
    if draft is not None and draft != "lookup" and not os.path.isfile(draft):
        raise CommandError(f"--draft takes 'lookup' or a GGUF file: {draft}: no such file")


def run_generate(model: str | None, prompt: str, max_tokens: int = 128, sampling: dict | None = None,
                 stop=(), beams: int | None = None, n_ctx: int | None = None, n_threads: int | None = None,
                 draft: str | None = None, draft_max: int = DRAFT_MAX, cache_types=(None, None),
                 out: TextIO | None = None) -> int:
    """Streams the completion of `prompt` to `out` (stdout), then a newline. max_tokens -1: until
    the end of generation or the context is full. beams: beam search (prints the best). draft:
    "lookup" or a draft model's file (speculative decoding, up to draft_max tokens a step)."""
    out = out or sys.stdout
    params = SamplingParams.from_options(sampling or {})  # checked before the model loads
    if max_tokens < -1:
        raise CommandError(f"-n must be >= -1 (-1: until the end), got {max_tokens}")
    if beams is not None and beams < 1:
        raise CommandError(f"--beams must be >= 1, got {beams}")
    _check_draft_flags(draft, draft_max)
    if beams is not None and draft is not None:
        raise CommandError("--draft does not apply to beam search (--beams)")
    if beams is not None:
        # The search scores the model's own log-probabilities (transformers' num_beams without logits
        # processors): refused, not silently dropped, the flags that would change what it finds.
        default = SamplingParams()
        changed = [flag for name, flag in (("repetition_penalty", "--repeat-penalty"),
                                           ("frequency_penalty", "--frequency-penalty"),
                                           ("presence_penalty", "--presence-penalty"))
                   if getattr(params, name) != getattr(default, name)]
        if stop:
            changed.insert(0, "--stop")
        if changed:
            raise CommandError(f"{', '.join(changed)}: not applied by beam search (--beams)")
    m = load_model(model, n_ctx, n_threads, cache_types)
    n = m.n_ctx if max_tokens == -1 else max_tokens
    if beams is not None:
        if not hasattr(m, "beam_search"):
            raise CommandError("beam search is not available in this version")
        best = m.beam_search(prompt, num_beams=beams, max_tokens=n)[0]
        _write(out, best.text + "\n")
        return 0
    from .generate import generate_ids, prompt_ids

    ids = prompt_ids(m, prompt)
    if max_tokens == -1:
        n = max(0, m.n_ctx - len(ids) + 1)
    for piece in generate_ids(m, ids, params, n, stop, True, load_draft(draft, m), draft_max):
        _write(out, piece)
    _write(out, "\n")
    return 0


# ---------------------------------------------------------------------------------------------------
# chat
# ---------------------------------------------------------------------------------------------------


def run_chat(model: str | None = None, system: str | None = None, max_tokens: int = -1,
             sampling: dict | None = None, n_ctx: int | None = None, n_threads: int | None = None,
             draft: str | None = None, draft_max: int = DRAFT_MAX, cache_types=(None, None)) -> int:
    """The interactive chat on stdin/stdout (a terminal or a pipe)."""
    from .chat import ChatSession

    SamplingParams.from_options(sampling or {})  # checked before the model loads
    if max_tokens < -1:
        raise CommandError(f"-n must be >= -1 (-1: until the end of the turn), got {max_tokens}")
    _check_draft_flags(draft, draft_max)
    m = load_model(model, n_ctx, n_threads, cache_types)
    session = ChatSession(m, system=system, max_tokens=m.n_ctx if max_tokens == -1 else max_tokens,
                          draft=load_draft(draft, m), draft_max=draft_max, **(sampling or {}))
    if sys.stdin.isatty():
        try:
            import readline  # noqa: F401  (line editing and history for input())
        except ImportError:
            pass
    threads = f"{m.n_threads} thread{'s' if m.n_threads > 1 else ''}"
    print(f"pyengine chat: {os.path.basename(m.path)}, context {m.n_ctx} tokens, {threads}. "
          "/help for commands, Ctrl-C stops an answer, Ctrl-D or /exit quits.", file=sys.stderr)
    chat_repl(session)
    return 0


# ---------------------------------------------------------------------------------------------------
# serve
# ---------------------------------------------------------------------------------------------------


def run_serve(model: str | None = None, host: str = "127.0.0.1", port: int = 8080, parallel: int = 4,
              api_key: str | None = None, alias: str | None = None, cache_ram_mib: int = 1024,
              prefill_chunk: int = 128, n_ctx: int | None = None, n_threads: int | None = None,
              draft: str | None = None, draft_max: int = DRAFT_MAX, cache_types=(None, None)) -> int:
    """The HTTP server, until Ctrl-C. draft: "lookup" or a draft model's file (speculative decoding
    of every sequence)."""
    if not 0 <= port <= 65535:
        raise CommandError(f"--port must be in [0, 65535], got {port}")
    if parallel < 1:
        raise CommandError(f"--parallel must be >= 1, got {parallel}")
    if cache_ram_mib < 0:
        raise CommandError(f"--cache-ram must be >= 0, got {cache_ram_mib}")
    if prefill_chunk < 1:
        raise CommandError(f"--prefill-chunk must be >= 1, got {prefill_chunk}")
    if api_key is not None and not api_key:
        raise CommandError("--api-key must not be empty")
    _check_draft_flags(draft, draft_max)
    try:
        from .serve import _require, serve

        _require()
    except ImportError as e:
        raise CommandError(str(e)) from None
    m = load_model(model, n_ctx, n_threads, cache_types)
    draft_model = load_draft(draft, m)

    def ready(url: str) -> None:
        print(f"pyengine serve: {os.path.basename(m.path)} on {url} (OpenAI API at {url}/v1, chat page at {url}/), "
              f"{parallel} parallel sequences, context {m.n_ctx} tokens, {m.n_threads} thread{'s' if m.n_threads > 1 else ''}. "
              "Ctrl-C stops.",
              file=sys.stderr, flush=True)

    try:
        serve(m, host=host, port=port, ready=ready, parallel=parallel, api_key=api_key, alias=alias,
              cache_bytes=cache_ram_mib << 20, prefill_chunk=prefill_chunk, draft=draft_model, draft_max=draft_max)
    except OSError as e:
        raise CommandError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    return 0


def chat_repl(session, read: Callable[[str], str] = input, out: TextIO | None = None,
              err: TextIO | None = None) -> None:
    """Reads messages with read("> ") until /exit or EOF and streams each reply to out. Ctrl-C
    while a reply is written stops it (the partial reply stays in the conversation); Ctrl-C at the
    prompt quits, as in llama.cpp: the KeyboardInterrupt goes to the caller (exit code 130)."""
    out = out or sys.stdout
    err = err or sys.stderr
    while True:
        try:
            line = read("> ")
        except EOFError:
            _write(out, "\n")
            return
        text = line.strip()
        if not text:
            continue
        if text.startswith("/"):
            command = text.split()[0]
            if command in ("/exit", "/quit"):
                return
            if command == "/reset":
                session.reset()
                print("[conversation reset]", file=err, flush=True)
            elif command == "/help":
                print(HELP, file=err, flush=True)
            else:
                print(f"unknown command {command}; /help lists them", file=err, flush=True)
            continue
        try:
            reply = session.ask(line)
        except ValueError as e:  # the message alone does not fit the context
            print(f"[{e}]", file=err, flush=True)
            continue
        except KeyboardInterrupt:
            _write(out, "\n")
            print("[interrupted]", file=err, flush=True)
            continue
        if session.last_dropped:
            n = session.last_dropped
            turns = "oldest turn" if n == 1 else f"{n} oldest turns"
            print(f"[context full: dropped the {turns}]", file=err, flush=True)
        try:
            for piece in reply:
                _write(out, piece)
        except KeyboardInterrupt:
            reply.close()
            _write(out, "\n")
            print("[interrupted]", file=err, flush=True)
            continue
        _write(out, "\n")
        if session.last_finish == "length" and session.ctx.n_past >= session.ctx.n_ctx:
            print("[context full: the next message drops the oldest turns]", file=err, flush=True)
