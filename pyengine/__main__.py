"""python -m pyengine COMMAND ...: argument parsing only; each command runs a function of pyengine.cli.

Flags follow llama.cpp's names. A new command adds a parser in `build_parser` and a function in
cli.py that takes the parsed values as keyword arguments.
"""

from __future__ import annotations

import _thread
import argparse
import dataclasses
import os
import signal
import sys
import threading
import warnings
from typing import Callable

from ._startup import Terminated, caused_by_interrupt


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        # one line, no usage block: "pyengine chat: error: argument --temp: invalid float value: 'x'"
        self.exit(2, f"{self.prog}: error: {message}\n")


def _add_model_args(p: argparse.ArgumentParser, model_help: str) -> None:
    from .cli_tools import add_cache_type_args

    p.add_argument("-m", "--model", default=None, metavar="MODEL", help=model_help)
    p.add_argument("-c", "--ctx-size", type=int, default=None, metavar="N_CTX",
                   help="context length in tokens (default: the model's, at most 4096)")
    p.add_argument("-t", "--threads", type=int, default=None, metavar="THREADS",
                   help="threads (default: the physical cores)")
    add_cache_type_args(p)


def _add_sampling_args(p: argparse.ArgumentParser, n_default: int, n_help: str) -> None:
    """-n and a flag for each SamplingParams field that names one, with the field's default."""
    from .sampling import SamplingParams

    g = p.add_argument_group("sampling (applied in this order: penalties, temperature, top-k, top-p, min-p)")
    g.add_argument("-n", "--n-predict", type=int, default=n_default, metavar="N", help=n_help)
    for f in dataclasses.fields(SamplingParams):
        flag = f.metadata["flag"]
        if not flag:
            continue
        kind = float if f.type in ("float", float) else int
        default = -1 if f.default is None else f.default  # the seed: -1 is "a fresh one"
        g.add_argument(flag, dest=f"sampling_{f.name}", type=kind, default=default,
                       metavar=flag.lstrip("-").split("-")[-1].upper(), help=f"{f.metadata['help']} (default {default})")


def _add_draft_args(p: argparse.ArgumentParser, *aliases: str) -> None:
    from .speculative import DRAFT_MAX

    g = p.add_argument_group("speculative decoding (with --temp 0 the same tokens as without)")
    g.add_argument("--draft", *aliases, dest="draft", default=None, metavar="lookup|MODEL",
                   help="draft the next tokens by n-gram lookup in the prompt and the text so far ('lookup'), "
                        "or with a smaller GGUF model of the same vocabulary, and verify them in one batch")
    g.add_argument("--draft-max", type=int, default=DRAFT_MAX, metavar="N",
                   help=f"tokens drafted per step at most (default {DRAFT_MAX})")


def _sampling(args: argparse.Namespace) -> dict:
    """The sampling flags as SamplingParams keywords (seed -1 becomes None)."""
    options = {k.removeprefix("sampling_"): v for k, v in vars(args).items() if k.startswith("sampling_")}
    if options.get("seed") == -1:
        options["seed"] = None
    return options


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="pyengine", description="A CPU inference engine for small LLMs in GGUF files.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True

    chat = commands.add_parser("chat", help="chat with a model (streamed, multi-turn)",
                               description="Chat in the terminal through the model's chat template. "
                                           "/help lists the commands; Ctrl-C stops an answer.")
    _add_model_args(chat, "GGUF file (default: SmolLM2-135M-Instruct, fetched on first use)")
    chat.add_argument("--system", "-sys", "--system-prompt", dest="system", default=None, metavar="TEXT",
                      help="system prompt")
    _add_sampling_args(chat, -1, "at most this many tokens per answer; -1: until the end of the turn (default)")
    _add_draft_args(chat)
    chat.set_defaults(run=lambda a: ("run_chat", {
        "model": a.model, "system": a.system, "max_tokens": a.n_predict, "sampling": _sampling(a),
        "n_ctx": a.ctx_size, "n_threads": a.threads, "draft": a.draft, "draft_max": a.draft_max,
        "cache_types": (a.cache_type_k, a.cache_type_v)}))

    gen = commands.add_parser("generate", help="complete a prompt (streamed to stdout)",
                              description="Complete a prompt; the completion is streamed to stdout.")
    _add_model_args(gen, "GGUF file (default: SmolLM2-135M-Instruct)")
    gen.add_argument("-p", "--prompt", required=True, metavar="PROMPT", help="the text to complete")
    gen.add_argument("--stop", action="append", default=[], metavar="TEXT",
                     help="stop before this text (may be given several times)")
    gen.add_argument("--beams", type=int, default=None, metavar="K", help="beam search with K beams (transformers' num_beams, no sampling: "
                     "the sampling flags do not apply); prints the best")
    _add_sampling_args(gen, 128, "tokens to generate; -1: until the end of generation (default 128)")
    _add_draft_args(gen)
    gen.set_defaults(run=lambda a: ("run_generate", {
        "model": a.model, "prompt": a.prompt, "max_tokens": a.n_predict, "sampling": _sampling(a),
        "stop": a.stop, "beams": a.beams, "n_ctx": a.ctx_size, "n_threads": a.threads, "draft": a.draft,
        "draft_max": a.draft_max,
        "cache_types": (a.cache_type_k, a.cache_type_v)}))

    serve = commands.add_parser("serve", help="an OpenAI-compatible HTTP server, with a chat page",
                                description="Serve the model over HTTP: OpenAI's /v1/chat/completions, "
                                            "/v1/completions and /v1/models, /health, and a chat page at /. "
                                            "Needs pip install \"pyengine[serve]\".")
    _add_model_args(serve, "GGUF file (default: SmolLM2-135M-Instruct)")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8080, help="port (default 8080; 0 picks a free one)")
    serve.add_argument("-np", "--parallel", type=int, default=4, metavar="N",
                       help="sequences generated at once, batched together (default 4)")
    serve.add_argument("--api-key", default=None, metavar="KEY", help="require 'Authorization: Bearer KEY'")
    serve.add_argument("-a", "--alias", default=None, metavar="NAME", help="the model's name in the API (default: the file's)")
    serve.add_argument("--cache-ram", type=int, default=1024, metavar="MIB",
                       help="KV cache kept for finished conversations to reuse, MiB (default 1024)")
    serve.add_argument("--prefill-chunk", type=int, default=128, metavar="N",
                       help="prompt tokens read per step while others generate (default 128)")
    _add_draft_args(serve, "-md", "--model-draft")
    serve.set_defaults(run=lambda a: ("run_serve", {
        "model": a.model, "host": a.host, "port": a.port, "parallel": a.parallel, "api_key": a.api_key,
        "alias": a.alias, "cache_ram_mib": a.cache_ram, "prefill_chunk": a.prefill_chunk,
        "n_ctx": a.ctx_size, "n_threads": a.threads, "draft": a.draft, "draft_max": a.draft_max,
        "cache_types": (a.cache_type_k, a.cache_type_v)}))

    from .cli_tools import add_commands  # quantize, imatrix, perplexity, bench, info

    add_commands(commands)
    return parser


def _terminated(signum, frame) -> None:
    raise Terminated(128 + signum)


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    return f"pyengine: warning: {message}\n"


def main(argv: list[str] | None = None) -> int:
    try:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C: KeyboardInterrupt from here on
            # SIGTERM (kill, timeout, a service manager) ends the command as an exception, so that what
            # it was writing is removed as after a Ctrl-C (GGUFWriter's temporary file), with 143
            signal.signal(signal.SIGTERM, _terminated)
        args = build_parser().parse_args(argv)
        # Text that is not UTF-8 (a pasted line, a file) becomes U+FFFD instead of ending the command;
        # warnings are one line, as errors are.
        for stream, errors in ((sys.stdin, "replace"), (sys.stdout, "replace"), (sys.stderr, "backslashreplace")):
            if hasattr(stream, "reconfigure"):
                stream.reconfigure(errors=errors)
        warnings.formatwarning = _one_line_warning
        from . import cli

        name, kwargs = args.run(args)
        return cli.run_command(getattr(cli, name), **kwargs)
    except BaseException as e:  # a Ctrl-C before the command runs (importing numpy, ...): the same one line
        if not caused_by_interrupt(e):
            raise
        print("pyengine: interrupted", file=sys.stderr, flush=True)
        return 130


def keep_swallowed_interrupts(hook: Callable = sys.__unraisablehook__) -> Callable:
    """An unraisable-exception hook for the commands. A Ctrl-C that lands in a finalizer or a weakref
    callback (importlib's module locks run one after each import) cannot propagate there: Python
    prints "Exception ignored in ..." and goes on as if no key had been pressed. This hook sends it
    again to the main thread, where it stops the command as any other Ctrl-C does; everything else
    goes to `hook`. It is sent from another thread a moment later: sent at once it would land in
    the hook itself, where it would be swallowed again."""

    def keep_interrupts(unraisable) -> None:
        if unraisable.exc_type is not None and issubclass(unraisable.exc_type, KeyboardInterrupt):
            again = threading.Timer(0.01, _thread.interrupt_main)
            again.daemon = True
            again.start()
        else:
            hook(unraisable)

    return keep_interrupts


def exit_process(code: int) -> None:
    """Ends `python -m pyengine` with the command's exit code. After a Ctrl-C the process leaves
    without Python's shutdown: CPython remembers a KeyboardInterrupt that went through code run from
    a string (dataclasses and namedtuple build their methods with exec) even when the program caught
    it, and then ends a `-m` run by SIGINT instead of with the code it was given."""
    # The command is over: a late Ctrl-C or SIGTERM changes nothing. Ignored, not left to the handlers
    # above, which Python's shutdown sets back to the default: a SIGTERM there killed a quantize whose
    # file was complete (exit -15 beside the file written).
    for signum in (signal.SIGTERM, signal.SIGINT):
        try:
            signal.signal(signum, signal.SIG_IGN)
        except (KeyboardInterrupt, SystemExit):  # one that came as it ended, handled as SIG_IGN was set
            pass
    if code != 130:
        sys.exit(code)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


if __name__ == "__main__":
    sys.unraisablehook = keep_swallowed_interrupts(sys.unraisablehook)
    exit_process(main())
