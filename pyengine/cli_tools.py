"""The format tools behind `python -m pyengine quantize | perplexity | bench | info`: their
argument parsers (added to __main__'s by add_commands) and the functions that run them, each usable
without the command line. Errors become one line through cli.run_command."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from typing import Iterator


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list of integers, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one value")
    return values


def add_cache_type_args(p: argparse.ArgumentParser) -> None:
    """llama.cpp's -ctk/-ctv. pyengine keeps keys and values in one type: either flag sets both."""
    from .model import KV_TYPES

    for flag, long in (("-ctk", "--cache-type-k"), ("-ctv", "--cache-type-v")):
        p.add_argument(flag, long, default=None, choices=sorted(KV_TYPES), metavar="TYPE",
                       help=f"KV cache type: {', '.join(sorted(KV_TYPES))} (default f16; keys and values share "
                            "one type, so either flag sets both)")


def cache_type(k: str | None, v: str | None) -> str:
    """The KV cache type that -ctk k / -ctv v name (f16 when neither does)."""
    if k and v and k != v:
        raise ValueError(f"-ctk {k} and -ctv {v} differ: pyengine keeps keys and values in one type")
    return k or v or "f16"


def _existing(path: str) -> str:
    if os.path.isdir(path):
        raise IsADirectoryError(21, "a directory", path)
    if not os.path.isfile(path):
        raise FileNotFoundError(2, "no such file", path)
    return path


def _not_the_input(src: str, dst: str) -> None:
    """ValueError where the output would replace the file being read (the same path, or a link to it)."""
    try:
        same = os.path.samefile(src, dst)
    except OSError:  # either is missing: no file to replace
        same = False
    if same:
        raise ValueError(f"{dst}: the output must be another file than the input")


def _check_writable(path: str) -> None:
    """ValueError now, not after the work, for an output file that cannot be written (the file is
    written as a temporary file in the same directory, then renamed)."""
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise ValueError(f"{path}: cannot be written: there is no directory {directory}")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise ValueError(f"{path}: cannot be written: no permission to write in {directory}")
    if os.path.isdir(path):
        raise ValueError(f"{path}: cannot be written: it is a directory")


@contextlib.contextmanager
def _output_file(path: str) -> Iterator[None]:
    """The command's output file, written (atomically, by a temporary file and a rename) inside the
    block, which ends the command: when the block ends by Ctrl-C or SIGTERM, an output this run put in
    place goes too, so that exit code 130 or 143 always means no output file, even for a signal that
    lands just after the rename (the file is whole, but the user asked to stop). Once the block is
    through, the signals are ignored: the output stays, and the exit code is 0."""
    def identity() -> tuple[int, int] | None:
        try:
            st = os.stat(path)
        except OSError:
            return None
        return st.st_ino, st.st_mtime_ns

    from ._startup import Terminated, caused_by_interrupt, ignore_late_signals

    before = identity()
    try:
        yield
        ignore_late_signals()  # a signal before this line (or in it) is handled below
    except BaseException as e:
        if caused_by_interrupt(e) or isinstance(e, Terminated):
            after = identity()
            if after is not None and after != before:
                try:
                    os.unlink(path)
                except OSError:
                    pass
        raise


def _read_text(path: str) -> str:
    """A text file to tokenize, decoded as UTF-8 (undecodable bytes become U+FFFD); ValueError before
    reading one that holds more than the tokenizer takes at once (tokenizer.MAX_TEXT_CHARS)."""
    from .tokenizer import MAX_TEXT_CHARS

    size = os.path.getsize(_existing(path))
    if size > 4 * MAX_TEXT_CHARS:  # more characters than that for sure (UTF-8 takes at most 4 bytes each)
        raise ValueError(f"{path}: {size} bytes is more text than pyengine tokenizes at once "
                         f"({MAX_TEXT_CHARS} characters): cut the file")
    with open(path, encoding="utf-8", errors="replace") as f:
        text = f.read(MAX_TEXT_CHARS + 1)
    if len(text) > MAX_TEXT_CHARS:
        raise ValueError(f"{path}: more text than pyengine tokenizes at once ({MAX_TEXT_CHARS} characters): "
                         "cut the file")
    return text


def _chunk_bar(desc: str):
    """progress(done, total) drawing a tqdm bar on a terminal (None elsewhere), and a function closing it."""
    if not sys.stderr.isatty():
        return None, lambda: None
    from tqdm import tqdm

    bar = tqdm(unit="chunk", desc=desc)

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)

    return progress, bar.close


def run_quantize(src: str, dst: str, type: str, output_tensor_type: str | None = None,
                 token_embedding_type: str | None = None, pure: bool = False, imatrix: str | None = None,
                 calib: str | None = None, ctx_size: int = 512, chunks: int | None = None, gptq: bool = False,
                 awq: bool = False, outliers: float | None = None, n_threads: int | None = None) -> int:
    from .calibrate import BEST, calibrate
    from .imatrix import Imatrix
    from .requantize import preset_by_name, quantize_model

    _existing(src)
    _not_the_input(src, dst)
    if calib is not None and imatrix is not None:
        raise ValueError("--calib computes its own importance matrix: give --calib or --imatrix, not both")
    if (gptq or awq) and calib is None:
        raise ValueError("--gptq and --awq calibrate on a text: give it with --calib TEXT")
    if outliers is not None and calib is None and imatrix is None:
        raise ValueError("--outliers finds the outlier channels in an importance matrix: give --calib or --imatrix")
    if outliers is not None and not 0 < outliers <= 10:
        raise ValueError(f"--outliers is a percentage of the file, above 0 and at most 10, not {outliers:g}")
    if chunks is not None and chunks < 1:
        raise ValueError(f"--chunks must be at least 1, got {chunks}")
    if ctx_size < 16:
        raise ValueError(f"-c must be at least 16 tokens, got {ctx_size}")
    preset_by_name(type)  # an unknown type is refused before the calibration runs
    _check_writable(dst)
    importance = Imatrix.load(_existing(imatrix)) if imatrix is not None else None
    calibration = None
    if calib is not None:
        from .cli import load_model

        text = _read_text(calib)
        if not (gptq or awq):
            gptq, awq = "gptq" in BEST, "awq" in BEST
        progress, close = _chunk_bar("calibrating")
        try:
            calibration = calibrate(load_model(src, ctx_size, n_threads), text, ctx_size, chunks,
                                    datasets=[os.path.basename(calib)], progress=progress)
        finally:
            close()
    with _output_file(dst):
        report = quantize_model(src, dst, type, pure=pure, output_tensor_type=output_tensor_type,
                                token_embedding_type=token_embedding_type, progress=sys.stderr.isatty(),
                                imatrix=importance, calibration=calibration, gptq=gptq, awq=awq,
                                outliers=(outliers or 0) / 100)
        print(f"{src}: {report.input_bytes / 1e6:.2f} MB -> {dst}: {report.output_bytes / 1e6:.2f} MB "
              f"({report.output_bytes / report.input_bytes:.1%})")
        counts: dict[str, int] = {}
        for t in report.types.values():
            counts[t] = counts.get(t, 0) + 1
        print("tensor types: " + ", ".join(f"{n} {t}" for t, n in sorted(counts.items(), key=lambda kv: -kv[1])))
        if report.kept_higher:
            print("kept at higher precision: " + ", ".join(report.kept_higher))
        source = importance if importance is not None else calibration.imatrix if calibration is not None else None
        if source is not None:
            print(f"importance-weighted: {len(report.weighted)} tensors (imatrix of {source.chunk_count} chunks "
                  f"of {source.chunk_size} tokens)")
        if report.awq:
            before, after = report.awq_error
            print(f"AWQ: scales folded into {len(report.awq)} norms (output error of their matrices "
                  f"{after / before if before else 1:.3f}x unscaled)")
        if report.gptq:
            print(f"GPTQ: {len(report.gptq)} tensors")
        if outliers is not None:
            print(f"outliers: {len(report.promoted)} matrices a type up"
                  + (": " + ", ".join(report.promoted) if report.promoted else ""))
        for note in report.notes:
            print(f"note: {note}")
    return 0


def run_perplexity(model: str, file: str, ctx_size: int = 512, chunks: int | None = None,
                   kl_base: str | None = None, as_json: bool = False, n_threads: int | None = None,
                   cache_types=(None, None)) -> int:
    from .model import Model
    from .perplexity import perplexity

    _existing(model)
    if kl_base is not None:
        _existing(kl_base)
    kv_type = cache_type(*cache_types)
    text = _read_text(file)
    m = Model(model, n_ctx=ctx_size, n_threads=n_threads, kv_type=kv_type)
    base = Model(kl_base, n_ctx=ctx_size, n_threads=n_threads) if kl_base else None  # the reference: F16 cache
    res = perplexity(m, text, n_ctx=ctx_size, n_chunks=chunks, kl_base=base, progress=sys.stderr.isatty())
    if as_json:
        print(json.dumps({"model": model, **res.to_dict()}))
        return 0
    print(f"{res.n_chunks} chunks of {res.n_ctx} tokens, {res.n_scored} scored")
    print(f"Final estimate: PPL = {res.ppl:.4f}")
    if base is not None:
        print(f"base PPL = {res.base_ppl:.4f}, delta PPL = {res.delta_ppl:+.4f}")
        print(f"KL-divergence: mean {res.kld_mean:.6f}, median {res.kld_median:.6f}, p99 {res.kld_p99:.6f}, "
              f"max {res.kld_max:.6f}")
        print(f"same top-1: {100 * res.top1_agreement:.2f}%")
    return 0


def run_bench(models: list[str], prompts: list[int], gens: list[int], threads: list[int] | None,
              depths: list[int], repetitions: int = 5, as_json: bool = False, plot_path: str | None = None,
              ppl_file: str | None = None, kl_base: str | None = None, ppl_chunks: int = 4,
              cache_types=(None, None)) -> int:
    from .bench import format_table, plot, sweep

    kv_type = cache_type(*cache_types)
    for path in models:
        _existing(path)
    if repetitions < 1:
        raise ValueError(f"-r must be at least 1, got {repetitions}")
    for name, values in (("-p", prompts), ("-n", gens), ("-d", depths)):
        if any(v < 0 for v in values):
            raise ValueError(f"{name} values must be at least 0")
    if threads is not None and any(t < 1 for t in threads):
        raise ValueError("-t values must be at least 1")
    if plot_path is not None:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise ValueError("--plot needs matplotlib: pip install 'pyengine[plot]'") from None
    if kl_base and not ppl_file:
        raise ValueError("--kld needs a text: --ppl FILE")
    text = _read_text(ppl_file) if ppl_file else None  # read (and refused) before the sweep
    if kl_base:
        _existing(kl_base)
    if plot_path is not None:
        _check_writable(plot_path)
    results = sweep(models, threads=tuple(threads or [None]), prompts=tuple(prompts), gens=tuple(gens),
                    depths=tuple(depths), repetitions=repetitions, kv_type=kv_type)
    if text is not None:
        from .model import Model
        from .perplexity import chunk_tokens, perplexity, scored_logprobs

        base_logprobs = None
        if kl_base:
            base = Model(_existing(kl_base), n_ctx=512)
            base_logprobs = scored_logprobs(base, chunk_tokens(base, text, 512, ppl_chunks))
        quality = {path: perplexity(Model(path, n_ctx=512, kv_type=kv_type), text, 512, ppl_chunks,
                                    kl_base=base_logprobs)
                   for path in models}
        for r in results:
            r.ppl = quality[r.model].ppl
            r.kld = quality[r.model].kld_mean
    with _output_file(plot_path) if plot_path is not None else contextlib.nullcontext():
        if plot_path is not None:
            plot(results, plot_path)
        if as_json:
            out = [r.to_dict() for r in results]
            print(json.dumps(out[0] if len(out) == 1 else out))
        else:
            print(format_table(results))
    return 0


def run_imatrix(model: str, file: str, output: str = "imatrix.gguf", ctx_size: int = 512, chunks: int | None = None,
                n_threads: int | None = None) -> int:
    """Writes the importance matrix of `model` on the text in `file` to `output`."""
    from .cli import load_model
    from .imatrix import collect

    text = _read_text(file)
    if ctx_size < 16:
        raise ValueError(f"-c must be at least 16 tokens (llama-imatrix counts only batches of 16 or more), got {ctx_size}")
    if chunks is not None and chunks < 1:
        raise ValueError(f"--chunks must be at least 1, got {chunks}")
    if model is not None:
        _not_the_input(model, output)
    _check_writable(output)
    m = load_model(model, max(ctx_size, 16), n_threads)
    progress, close = _chunk_bar("imatrix")
    try:
        result = collect(m, text, ctx_size, chunks, datasets=[os.path.basename(file)], progress=progress)
    finally:
        close()
    with _output_file(output):
        result.save(output)
        print(f"{output}: {len(result.entries)} matrices, {result.chunk_count} chunks of {result.chunk_size} tokens")
    return 0


def run_info(model: str, as_json: bool = False) -> int:
    """Prints what the file holds; a file pyengine would refuse to run ends with that error (exit 1)."""
    from .gguf import GGUFError
    from .info import format_info, info

    d = info(_existing(model))
    print(json.dumps(d) if as_json else format_info(d), flush=True)
    if d["error"]:
        raise GGUFError(d["error"])
    return 0


def add_commands(commands) -> None:
    """Adds the quantize, imatrix, perplexity, bench and info parsers to __main__'s subparsers."""
    q = commands.add_parser("quantize", help="re-quantize a GGUF model to another type",
                            description="Re-quantize a model choosing each tensor's type as llama.cpp's "
                                        "llama-quantize does (1-D tensors kept; the output tensor, attn_v, "
                                        "ffn_down, attn_output at more bits where the preset says). Written "
                                        "to a temporary file and renamed when complete.")
    q.add_argument("src", metavar="IN.gguf")
    q.add_argument("dst", metavar="OUT.gguf")
    q.add_argument("type", metavar="TYPE",
                   help="a preset, case-insensitive: q4_k_m q4_k_s q5_k_m q5_k_s q6_k q3_k_s q3_k_m q3_k_l q2_k "
                        "iq4_nl iq4_xs q5_0 q5_1 q8_0 q4_0 q4_1 f16 bf16 f32 nf4 nf4_dq (q3_k, q4_k, q5_k: "
                        "the _m presets, as in llama-quantize)")
    q.add_argument("--output-tensor-type", default=None, metavar="TYPE", help="the output tensor's type")
    q.add_argument("--token-embedding-type", default=None, metavar="TYPE", help="token_embd's type")
    q.add_argument("--pure", action="store_true", help="every quantized 2-D tensor in TYPE's default type")
    q.add_argument("--imatrix", default=None, metavar="FILE",
                   help="an importance matrix (llama-imatrix's or pyengine imatrix's GGUF): weighted quantization")
    q.add_argument("--calib", default=None, metavar="TEXT_FILE",
                   help="calibrate on this text (runs IN over it) and quantize with pyengine's best method; "
                        "--gptq, --awq choose the methods instead")
    q.add_argument("--gptq", action="store_true", help="with --calib: GPTQ's error-compensated rounding")
    q.add_argument("--awq", action="store_true",
                   help="with --calib: AWQ's activation-aware column scales, folded into the input norms")
    q.add_argument("--outliers", type=float, nargs="?", const=1.0, default=None, metavar="PERCENT",
                   help="with --calib or --imatrix: the matrices where the outlier channels (by importance) make "
                        "the most error take a type up, within PERCENT of the file (1)")
    q.add_argument("-c", "--ctx-size", type=int, default=512, metavar="N", help="calibration chunk size (512)")
    q.add_argument("--chunks", type=int, default=None, metavar="N", help="at most N calibration chunks (all)")
    q.add_argument("-t", "--threads", type=int, default=None)
    q.set_defaults(run=lambda a: ("run_quantize", {
        "src": a.src, "dst": a.dst, "type": a.type, "output_tensor_type": a.output_tensor_type,
        "token_embedding_type": a.token_embedding_type, "pure": a.pure, "imatrix": a.imatrix, "calib": a.calib,
        "ctx_size": a.ctx_size, "chunks": a.chunks, "gptq": a.gptq, "awq": a.awq, "outliers": a.outliers,
        "n_threads": a.threads}))

    im = commands.add_parser("imatrix", help="an importance matrix from calibration text, as llama-imatrix",
                             description="Runs the model over the text in chunks of -c tokens and writes, for "
                                         "each layer matrix, the sum of its squared inputs per column and the "
                                         "token count, in llama.cpp's imatrix GGUF format (for quantize "
                                         "--imatrix, here or in llama-quantize).")
    im.add_argument("-m", "--model", required=True, metavar="MODEL")
    im.add_argument("-f", "--file", required=True, metavar="TEXT_FILE")
    im.add_argument("-o", "--output", default="imatrix.gguf", metavar="FILE", help="default imatrix.gguf")
    im.add_argument("-c", "--ctx-size", type=int, default=512, metavar="N")
    im.add_argument("--chunks", type=int, default=None, metavar="N", help="at most N chunks (default: all)")
    im.add_argument("-t", "--threads", type=int, default=None)
    im.set_defaults(run=lambda a: ("run_imatrix", {
        "model": a.model, "file": a.file, "output": a.output, "ctx_size": a.ctx_size, "chunks": a.chunks,
        "n_threads": a.threads}))

    p = commands.add_parser("perplexity", help="perplexity (and KL-divergence from a base model) on a text",
                            description="llama.cpp's method: chunks of -c tokens, the second half of each scored.")
    p.add_argument("-m", "--model", required=True, metavar="MODEL")
    p.add_argument("-f", "--file", required=True, metavar="TEXT_FILE")
    p.add_argument("-c", "--ctx-size", type=int, default=512, metavar="N")
    p.add_argument("--chunks", type=int, default=None, metavar="N", help="at most N chunks (default: all)")
    p.add_argument("--kl-base", default=None, metavar="REF.gguf", help="KL-divergence from this model's outputs")
    p.add_argument("-t", "--threads", type=int, default=None)
    p.add_argument("--json", action="store_true", help="one JSON object")
    add_cache_type_args(p)
    p.set_defaults(run=lambda a: ("run_perplexity", {
        "model": a.model, "file": a.file, "ctx_size": a.ctx_size, "chunks": a.chunks, "kl_base": a.kl_base,
        "as_json": a.json, "n_threads": a.threads, "cache_types": (a.cache_type_k, a.cache_type_v)}))

    b = commands.add_parser("bench", help="tokens/s of prompt processing and generation, as llama-bench",
                            description="Every combination of -m, -t, -p, -n and -d (comma lists), repeated.")
    b.add_argument("-m", "--model", action="append", required=True, metavar="MODEL", dest="models")
    b.add_argument("-p", "--n-prompt", type=_int_list, default=[512], metavar="N[,N...]")
    b.add_argument("-n", "--n-gen", type=_int_list, default=[128], metavar="N[,N...]")
    b.add_argument("-t", "--threads", type=_int_list, default=None, metavar="T[,T...]")
    b.add_argument("-d", "--n-depth", type=_int_list, default=[0], metavar="N[,N...]",
                   help="tokens already in the KV cache before tg")
    b.add_argument("-r", "--repetitions", type=int, default=5)
    b.add_argument("--ppl", default=None, metavar="TEXT_FILE", help="also the perplexity on this text")
    b.add_argument("--kld", default=None, metavar="BASE.gguf", help="also the KL-divergence from this model")
    b.add_argument("--ppl-chunks", type=int, default=4, metavar="N")
    b.add_argument("--json", action="store_true")
    b.add_argument("--plot", default=None, metavar="OUT.png", help="tokens/s against bits per weight")
    add_cache_type_args(b)
    b.set_defaults(run=lambda a: ("run_bench", {
        "models": a.models, "prompts": a.n_prompt, "gens": a.n_gen, "threads": a.threads, "depths": a.n_depth,
        "repetitions": a.repetitions, "as_json": a.json, "plot_path": a.plot, "ppl_file": a.ppl,
        "kl_base": a.kld, "ppl_chunks": a.ppl_chunks, "cache_types": (a.cache_type_k, a.cache_type_v)}))

    i = commands.add_parser("info", help="metadata, tensor types, sizes and bits per weight of a GGUF file")
    i.add_argument("model", metavar="MODEL")
    i.add_argument("--json", action="store_true")
    i.set_defaults(run=lambda a: ("run_info", {"model": a.model, "as_json": a.json}))
