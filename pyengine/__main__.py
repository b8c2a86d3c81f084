"""python -m pyengine COMMAND ...: argument parsing only; each command runs a function of pyengine.cli.

Flags follow llama.cpp's names. A new command adds a parser in `build_parser` and a function in
cli.py that takes the parsed values as keyword arguments.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import warnings


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        # one line, no usage block: "pyengine chat: error: argument --temp: invalid float value: 'x'"
        self.exit(2, f"{self.prog}: error: {message}\n")


def _add_model_args(p: argparse.ArgumentParser, model_help: str) -> None:
    p.add_argument("-m", "--model", default=None, metavar="MODEL", help=model_help)
    p.add_argument("-c", "--ctx-size", type=int, default=None, metavar="N_CTX",
                   help="context length in tokens (default: the model's, at most 4096)")
    p.add_argument("-t", "--threads", type=int, default=None, metavar="THREADS",
                   help="threads (default: the physical cores)")


def _add_sampling_args(p: argparse.ArgumentParser, n_default: int, n_help: str) -> None:
    g = p.add_argument_group("sampling (applied in this order: penalties, temperature, top-k, top-p, min-p)")
    g.add_argument("-n", "--n-predict", type=int, default=n_default, metavar="N", help=n_help)
    g.add_argument("--temp", type=float, default=0.8, metavar="T", help="temperature; 0 is greedy (default 0.8)")
    g.add_argument("--top-k", type=int, default=40, metavar="K", help="0 disables (default 40)")
    g.add_argument("--top-p", type=float, default=0.95, metavar="P", help="1.0 disables (default 0.95)")
    g.add_argument("--min-p", type=float, default=0.05, metavar="P", help="0 disables (default 0.05)")
    g.add_argument("--repeat-penalty", type=float, default=1.0, metavar="R", help="1.0 disables (default 1.0)")
    g.add_argument("--repeat-last-n", type=int, default=64, metavar="N",
                   help="tokens the penalties look back on; 0 disables, -1 the whole context (default 64)")
    g.add_argument("--presence-penalty", type=float, default=0.0, metavar="P", help="default 0")
    g.add_argument("--frequency-penalty", type=float, default=0.0, metavar="F", help="default 0")
    g.add_argument("--seed", type=int, default=-1, metavar="S", help="random seed; -1 a fresh one (default)")


def _sampling(args: argparse.Namespace) -> dict:
    return {"temperature": args.temp, "top_k": args.top_k, "top_p": args.top_p, "min_p": args.min_p,
            "repetition_penalty": args.repeat_penalty, "repeat_last_n": args.repeat_last_n,
            "presence_penalty": args.presence_penalty, "frequency_penalty": args.frequency_penalty,
            "seed": None if args.seed == -1 else args.seed}


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
    chat.set_defaults(run=lambda a: ("run_chat", {
        "model": a.model, "system": a.system, "max_tokens": a.n_predict, "sampling": _sampling(a),
        "n_ctx": a.ctx_size, "n_threads": a.threads}))

    gen = commands.add_parser("generate", help="complete a prompt (streamed to stdout)",
                              description="Complete a prompt; the completion is streamed to stdout.")
    _add_model_args(gen, "GGUF file (default: SmolLM2-135M-Instruct)")
    gen.add_argument("-p", "--prompt", required=True, metavar="PROMPT", help="the text to complete")
    gen.add_argument("--stop", action="append", default=[], metavar="TEXT",
                     help="stop before this text (may be given several times)")
    gen.add_argument("--beams", type=int, default=None, metavar="K", help="beam search with K beams; prints the best")
    _add_sampling_args(gen, 128, "tokens to generate; -1: until the end of generation (default 128)")
    gen.set_defaults(run=lambda a: ("run_generate", {
        "model": a.model, "prompt": a.prompt, "max_tokens": a.n_predict, "sampling": _sampling(a),
        "stop": a.stop, "beams": a.beams, "n_ctx": a.ctx_size, "n_threads": a.threads}))

    from .cli_tools import add_commands  # quantize, perplexity, bench, info

    add_commands(commands)
    return parser


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    return f"pyengine: warning: {message}\n"


def main(argv: list[str] | None = None) -> int:
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C: KeyboardInterrupt from here on
    try:
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
    except KeyboardInterrupt:  # before the command runs (importing numpy, ...): the same one line
        print("pyengine: interrupted", file=sys.stderr, flush=True)
        return 130


if __name__ == "__main__":
    code = main()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the command is over: a late Ctrl-C changes nothing
    sys.exit(code)
