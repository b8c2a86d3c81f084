"""pyengine against llama.cpp (through llama-cpp-python) on the same GGUF files, with the same thread
count, in one run: prompt and generation speed, and generation as a share of the memory roofline.

    python bench/vs_llamacpp.py [--models smollm2,tinyllama] [--formats q4_0,q8_0,q4_1] [--threads 1,2]
                                [--reps 3] [--pp 512] [--tg 128] [--depth 0] [--cache-type f16]
                                [--out bench/results/vs_llamacpp]
    python bench/vs_llamacpp.py --sweep [--models tinyllama --formats q4_0]   # pyengine alone, threads 1..2n

Writes OUT.md, a markdown table (model, format, threads; pp and tg tokens/s of each engine and their
ratio, pyengine / llama.cpp; tg as % of the roofline for each) under the machine, versions, date and
command line, and OUT.json (every timing), and prints the table. llama-cpp-python is a development tool here, never a dependency
of pyengine: without it the comparison stops with exit status 2.

Models: SmolLM2-135M-Instruct (models/recipes.py re-quantizes the shipped Q4_1 file with llama.cpp's
type rules) and a synthetic 1.1B llama with TinyLlama-1.1B's shapes and random weights
(recipes.synthetic_tinyllama, made on first use, ~20 s and 0.65-1.2 GB per format), whose weights are
far larger than the caches. Both engines read the very same file: each maps it, and llama.cpp copies
the Q4_0 matrices into its interleaved "repacked" layout at load, its normal CPU path (the build
llama-cpp-python 0.3.36 ships repacks none of the Q8_0 and Q4_1 ones).

What is timed, each on a fresh sequence, through the Python API that each engine offers:
- pp (prompt processing), pp512 by default: --pp random token ids evaluated in one call, logits of
  the last token only. pyengine `ctx = model.context(); ctx.eval(ids)`; llama.cpp
  `llm.reset(); llm.eval(ids)` with n_batch = n_ubatch = 512, logits_all off. tokens/s = pp / time.
- tg (generation), tg128 by default: one token evaluated untimed, then --tg random tokens evaluated
  one call each (`ctx.eval([id])`, `llm.eval([id])`): the per-token decode speed at a short depth,
  sampling left out. tokens/s = tg / time. With --depth D (llama-bench's -d), D random tokens are
  evaluated first (untimed) in the same sequence: generation deep in a context, where attention reads
  D rows of keys and values per layer for every token.
Both use an F16 KV cache and no flash attention, or with --cache-type q8_0 both a Q8_0 cache (llama.cpp
then needs its flash attention, which is on), and the same n_ctx (at least 640).

Method. Every cell (model, format, threads) loads both engines once, warms each up (a short prompt
and a few tokens: pages in the weights, starts the threads) and checks that both give finite logits
for the same prompt; then it alternates: ours, theirs, ours, theirs, ... for pp and then for tg, the
first engine swapped on every repetition (ABBA), with a short pause before each run so one engine's
spinning threads have gone to sleep before the other starts. The best of --reps runs is reported
(the least disturbed by other load on a shared machine); every run is in the JSON. Both engines are
freed before the next cell.

Roofline. A generated token reads every weight matrix once: the layers' and the output matrix (or the
tied token embedding that serves as output); the one embedding row is negligible, and so is the KV
cache at this depth (~3 MB for the 1.1B model at tg128). The read bandwidth is measured in the same
run with the same thread count (pyengine's probe: best of 10 passes over 512 MB) right before and
right after every generation run, and the higher of the two is that run's: on a shared machine the
bandwidth moves within a run (this 2-core VM's 2-thread figure has moved between ~43 and ~80 GB/s
from one minute to the next, and within one cell), so a probe from the start or the end of the run
can describe another machine than the one a generation ran on. Roofline tokens/s = bandwidth / bytes
per token, and "% roofline" is each engine's best tg over the roofline around that same run. The
header's figures are the probes before and after all the cells. SmolLM2's 90-145 MB of weights are
within a few times the L3 cache's size, and its small matrices leave more time to the overheads
between them, so its roofline is the rougher guide; the 1.1B model's 0.6-1.2 GB are what the
roofline describes.

--sweep runs pyengine alone on the first model and format, at threads 1..nproc and 2 x nproc (or
--threads), round-robin over the thread counts for each repetition, marking the default thread count
(pyengine.default_n_threads(), what Model uses when n_threads is None) to check it is the fastest or
close. Run on a quiet machine: with 2 cores, any other load shows in the 2-thread figures.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "models"))

import pyengine  # noqa: E402
from pyengine import _core  # noqa: E402
from pyengine.gguf import GGUFReader  # noqa: E402
from pyengine.quants import thread_pool  # noqa: E402
from recipes import VARIANTS, gemma3_270m, smollm2, synthetic_tinyllama  # noqa: E402


def gemma3(type_name: str) -> Path:
    """gemma-3-270m exists here only as published, in Q4_K_M."""
    if type_name != "q4_k_m":
        raise SystemExit(f"gemma3 comes in q4_k_m only, not {type_name}")
    return gemma3_270m()


MODELS = {"smollm2": ("SmolLM2-135M", smollm2), "tinyllama": ("TinyLlama-1.1B (synthetic)", synthetic_tinyllama),
          "gemma3": ("gemma-3-270m", gemma3)}
FORMATS = ["q4_0", "q8_0", "q4_1"]  # the default cells
WARMUP_PROMPT = 32  # tokens of the warm-up prompt (also the finite-logits check)
WARMUP_GEN = 4
PAUSE_S = 0.2  # before each timed run: lets the other engine's threads stop spinning
BANDWIDTH_MB, BANDWIDTH_REPEATS = 512, 10


def import_llama_cpp():
    try:
        import llama_cpp
    except ImportError:
        print("vs_llamacpp: llama-cpp-python is not installed (pip install llama-cpp-python); "
              "it is needed only for this comparison", file=sys.stderr)
        sys.exit(2)
    return llama_cpp


# ---------------------------------------------------------------------------------------------------
# The two engines behind one interface: load, pp, tg, last logits, free
# ---------------------------------------------------------------------------------------------------


class Ours:
    name = "pyengine"

    def __init__(self, path: Path, n_ctx: int, n_threads: int, cache_type: str = "f16") -> None:
        self.model = pyengine.Model(path, n_ctx=n_ctx, n_threads=n_threads, kv_type=cache_type)
        self.logits = None  # of the last eval

    def pp(self, ids: list[int]) -> float:
        ctx = self.model.context()
        t0 = time.perf_counter()
        self.logits = ctx.eval(ids)
        return time.perf_counter() - t0

    def tg(self, first: list[int], ids: list[int]) -> float:
        ctx = self.model.context()
        ctx.eval(first)
        t0 = time.perf_counter()
        for i in ids:
            self.logits = ctx.eval([i])
        return time.perf_counter() - t0

    def close(self) -> None:
        self.model = self.logits = None


class Theirs:
    name = "llama.cpp"

    def __init__(self, llama_cpp, path: Path, n_ctx: int, n_threads: int, cache_type: str = "f16") -> None:
        self.llama_cpp = llama_cpp
        kv = {"f16": llama_cpp.GGML_TYPE_F16, "q8_0": llama_cpp.GGML_TYPE_Q8_0}[cache_type]
        self.llm = llama_cpp.Llama(str(path), n_ctx=n_ctx, n_batch=512, n_ubatch=512, n_threads=n_threads,
                                   n_threads_batch=n_threads, logits_all=False, verbose=False, type_k=kv, type_v=kv,
                                   flash_attn=cache_type != "f16")

    @property
    def logits(self) -> np.ndarray:
        """The last token's logits of the last eval (llama.cpp keeps one row with logits_all off)."""
        ptr = self.llama_cpp.llama_get_logits(self.llm.ctx)
        return np.ctypeslib.as_array(ptr, shape=(self.llm.n_vocab(),)).copy()

    def pp(self, ids: list[int]) -> float:
        self.llm.reset()  # n_tokens = 0: the next eval drops the whole KV cache
        t0 = time.perf_counter()
        self.llm.eval(ids)
        return time.perf_counter() - t0

    def tg(self, first: list[int], ids: list[int]) -> float:
        self.llm.reset()
        self.llm.eval(first)
        t0 = time.perf_counter()
        for i in ids:
            self.llm.eval([i])
        return time.perf_counter() - t0

    def close(self) -> None:
        self.llm.close()
        self.llm = None


def free(*engines) -> None:
    for e in engines:
        e.close()
    gc.collect()


# ---------------------------------------------------------------------------------------------------
# Measurements
# ---------------------------------------------------------------------------------------------------


def weight_bytes_per_token(path: Path) -> int:
    """Bytes of weights a generated token reads: every matrix but the token embedding, of which one
    row is read (negligible); a tied embedding is the output matrix and is read whole."""
    with GGUFReader(path) as reader:
        tensors = reader.tensors
        total = sum(t.nbytes for name, t in tensors.items() if len(t.shape) >= 2 and name != "token_embd.weight")
        if "output.weight" not in tensors:
            total += tensors["token_embd.weight"].nbytes
    return total


def read_bandwidth(n_threads: int) -> float:
    """GB/s read by n_threads (pyengine's probe, the roofline of a matrix-vector product)."""
    return _core.memory_read_bandwidth(thread_pool(n_threads), BANDWIDTH_MB, BANDWIDTH_REPEATS)


def warm_up(engine, ids: list[int]) -> np.ndarray:
    """A short prompt and a few tokens (pages the weights in, starts the threads); the prompt's logits."""
    engine.pp(ids)
    logits = np.array(engine.logits, dtype=np.float32)
    engine.tg(ids[:1], ids[1:1 + WARMUP_GEN])
    if not np.isfinite(logits).all():
        raise RuntimeError(f"{engine.name} gave non-finite logits")
    return logits


def kl_divergence(p_logits: np.ndarray, q_logits: np.ndarray) -> float:
    """KL(p || q) of the two next-token distributions: how far apart the engines' outputs are
    (tests/test_golden.py: ~1e-3 to 1e-2 for quantized SmolLM2; float summation order and 8-bit
    activations make them differ slightly)."""
    def log_softmax(x):
        x = x.astype(np.float64) - x.max()
        return x - np.log(np.exp(x).sum())

    p, q = log_softmax(p_logits), log_softmax(q_logits)
    return float((np.exp(p) * (p - q)).sum())


def timed(fn, *args) -> float:
    time.sleep(PAUSE_S)
    return fn(*args)


def compare_cell(llama_cpp, path: Path, n_threads: int, args, rng) -> dict:
    """pp and tg of both engines on one file and thread count, alternating, best of args.reps."""
    n_ctx = max(640, args.pp, args.depth + args.tg + 1)
    ours = Ours(path, n_ctx, n_threads, args.cache_type)
    theirs = Theirs(llama_cpp, path, n_ctx, n_threads, args.cache_type)
    try:
        n_vocab = ours.model.n_vocab
        check_ids = rng.integers(0, n_vocab, WARMUP_PROMPT).tolist()
        ours_logits, theirs_logits = warm_up(ours, check_ids), warm_up(theirs, check_ids)
        check = {"finite": True, "kl": kl_divergence(theirs_logits, ours_logits),
                 "same_argmax": bool(ours_logits.argmax() == theirs_logits.argmax())}
        runs = {e.name: {"pp_s": [], "tg_s": [], "tg_gb_s": []} for e in (ours, theirs)}
        for rep in range(args.reps):
            order = (ours, theirs) if rep % 2 == 0 else (theirs, ours)
            pp_ids = rng.integers(0, n_vocab, args.pp).tolist() if args.pp else None
            tg_ids = rng.integers(0, n_vocab, args.depth + args.tg + 1).tolist() if args.tg else None
            for e in order:
                if pp_ids:
                    runs[e.name]["pp_s"].append(timed(e.pp, pp_ids))
            for e in order:
                if tg_ids:
                    # The bandwidth around each generation run (the higher of right before and right
                    # after): the machine's moves within a run, so each run has its own roofline.
                    before = read_bandwidth(n_threads)
                    runs[e.name]["tg_s"].append(timed(e.tg, tg_ids[:args.depth + 1], tg_ids[args.depth + 1:]))
                    runs[e.name]["tg_gb_s"].append(max(before, read_bandwidth(n_threads)))
    finally:
        free(ours, theirs)

    def best(name: str, key: str, n: int):
        return n / min(runs[name][key]) if runs[name][key] else None

    def best_run_gb_s(name: str):  # the bandwidth around the fastest generation run
        r = runs[name]
        return r["tg_gb_s"][r["tg_s"].index(min(r["tg_s"]))] if r["tg_s"] else None

    return {"pp_ours": best("pyengine", "pp_s", args.pp), "pp_theirs": best("llama.cpp", "pp_s", args.pp),
            "tg_ours": best("pyengine", "tg_s", args.tg), "tg_theirs": best("llama.cpp", "tg_s", args.tg),
            "tg_gb_s_ours": best_run_gb_s("pyengine"), "tg_gb_s_theirs": best_run_gb_s("llama.cpp"),
            "runs": runs, "check": check}


def sweep(path: Path, threads: list[int], args, rng) -> list[dict]:
    """pyengine's pp and tg at each thread count; repetitions round-robin over the counts."""
    n_ctx = max(args.pp, args.depth + args.tg + 1, 1)
    engines = {t: Ours(path, n_ctx, t, args.cache_type) for t in threads}
    try:
        for e in engines.values():
            warm_up(e, rng.integers(0, e.model.n_vocab, WARMUP_PROMPT).tolist())
        runs = {t: {"pp_s": [], "tg_s": []} for t in threads}
        n_vocab = engines[threads[0]].model.n_vocab
        for _ in range(args.reps):
            pp_ids = rng.integers(0, n_vocab, args.pp).tolist() if args.pp else None
            tg_ids = rng.integers(0, n_vocab, args.depth + args.tg + 1).tolist() if args.tg else None
            for t, e in engines.items():
                if pp_ids:
                    runs[t]["pp_s"].append(timed(e.pp, pp_ids))
                if tg_ids:
                    runs[t]["tg_s"].append(timed(e.tg, tg_ids[:args.depth + 1], tg_ids[args.depth + 1:]))
    finally:
        free(*engines.values())
    return [{"threads": t, "pp": args.pp / min(r["pp_s"]) if r["pp_s"] else None,
             "tg": args.tg / min(r["tg_s"]) if r["tg_s"] else None, "runs": r} for t, r in runs.items()]


# ---------------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------------


def machine_info(llama_cpp) -> dict:
    cpu = platform.processor() or platform.machine()
    try:  # the first processor's model name, family / model / stepping (a VM may name only the brand)
        with open("/proc/cpuinfo") as f:
            fields = dict(line.split(":", 1) for line in f.read().split("\n\n")[0].splitlines() if ":" in line)
        fields = {k.strip(): v.strip() for k, v in fields.items()}
        cpu = f"{fields['model name']} (family {fields['cpu family']}, model {fields['model']}, " \
              f"stepping {fields.get('stepping', '?')})"
    except (OSError, KeyError):
        pass
    try:
        commit = subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty"], capture_output=True,
                                text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    info = {"cpu": cpu, "cpus_usable": len(os.sched_getaffinity(0)), "isa": pyengine.isa(),
            "default_n_threads": pyengine.default_n_threads(), "pyengine": pyengine.__version__,
            "pyengine_file": pyengine.__file__, "repo_commit": commit, "python": platform.python_version(),
            "numpy": np.__version__, "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}
    if llama_cpp is not None:
        info["llama_cpp_python"] = llama_cpp.__version__
        info["llama_cpp_system"] = llama_cpp.llama_print_system_info().decode(errors="replace").strip()
    return info


def header(title: str, command: str, info: dict, bandwidth: dict) -> list[str]:
    lines = [f"# {title}", "", f"`{command}`", "",
             f"{info['date']}; {info['cpu']}, {info['cpus_usable']} usable CPUs; pyengine {info['pyengine']} "
             f"(isa {info['isa']}, default threads {info['default_n_threads']}, repo {info['repo_commit']})"]
    if "llama_cpp_python" in info:
        lines[-1] += f"; llama-cpp-python {info['llama_cpp_python']} ({info['llama_cpp_system']})"
    lines[-1] += f"; Python {info['python']}, numpy {info['numpy']}."
    lines += ["", "Memory read bandwidth (this run, before and after all the cells): "
              + ", ".join(f"{t} thread{'s' if t > 1 else ''} {bw['gb_s_before']:.1f} and {bw['gb_s_after']:.1f} GB/s"
                          for t, bw in bandwidth.items()) + "."]
    return lines


def fmt(value, spec=".1f") -> str:
    return "-" if value is None else format(value, spec)


def ratio(a, b) -> str:
    return "-" if a is None or b is None else f"{a / b:.2f}"


def compare_table(rows: list[dict], args) -> list[str]:
    tg = f"tg{args.tg}" + (f" @ d{args.depth}" if args.depth else "")
    lines = ["", f"Best of {args.reps}, tokens/s; {args.cache_type.upper()} KV cache; ratio = pyengine / llama.cpp; "
             "% roofline = tg tokens/s over bandwidth / weight bytes per token (pyengine / llama.cpp"
             + ("; at depth the KV cache read is not in the roofline" if args.depth else "") + ").", "",
             f"| model | format | threads | pp{args.pp} ours | pp{args.pp} llama.cpp | ratio | {tg} ours "
             f"| {tg} llama.cpp | ratio | tg % roofline ours / llama.cpp |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    def share(tok_s, gb_s, per_token):  # tokens/s over the roofline that bandwidth allows
        return f"{100 * tok_s * per_token / (gb_s * 1e9):.0f}%"

    for r in rows:
        per_token = r["weight_bytes_per_token"]
        roof = "-" if r["tg_ours"] is None else (f"{share(r['tg_ours'], r['tg_gb_s_ours'], per_token)} / "
                                                  f"{share(r['tg_theirs'], r['tg_gb_s_theirs'], per_token)}")
        lines.append(f"| {r['model_name']} | {r['format']} | {r['threads']} | {fmt(r['pp_ours'])} | "
                     f"{fmt(r['pp_theirs'])} | {ratio(r['pp_ours'], r['pp_theirs'])} | {fmt(r['tg_ours'])} | "
                     f"{fmt(r['tg_theirs'])} | {ratio(r['tg_ours'], r['tg_theirs'])} | {roof} |")
    lines += ["", "Rooflines: weight bytes read per generated token, and the tokens/s that the bandwidth allows "
              "(bandwidth / bytes per token) around each engine's fastest generation run (the higher of the probes "
              "right before and right after it; in brackets), pyengine / llama.cpp:", ""]
    by_file: dict[tuple, list[dict]] = {}
    for r in rows:
        by_file.setdefault((r["model_name"], r["format"]), []).append(r)
    for (model_name, fmt_name), file_rows in by_file.items():
        lines.append(f"- {model_name} {fmt_name}: {file_rows[0]['weight_bytes_per_token'] / 1e6:.1f} MB/token; "
                     + ", ".join(f"{r['threads']} thread{'s' if r['threads'] > 1 else ''} "
                                 + " / ".join(f"{gb * 1e9 / r['weight_bytes_per_token']:.1f} tok/s ({gb:.1f} GB/s)"
                                              for gb in (r["tg_gb_s_ours"], r["tg_gb_s_theirs"]))
                                 for r in file_rows if r["tg_ours"] is not None))
    return lines


def sweep_table(rows: list[dict], model_name: str, fmt_name: str, per_token: int, bandwidth: dict, args,
                default: int) -> list[str]:
    lines = ["", f"pyengine alone on {model_name} {fmt_name} ({per_token / 1e6:.1f} MB of weights per token), "
             f"best of {args.reps}, tokens/s; the default thread count is marked.", "",
             f"| threads | pp{args.pp} | tg{args.tg} | tg % roofline |", "|---:|---:|---:|---:|"]
    for r in rows:
        mark = " (default)" if r["threads"] == default else ""
        roof = "-" if r["tg"] is None else f"{100 * r['tg'] * per_token / (bandwidth[r['threads']]['gb_s'] * 1e9):.0f}%"
        lines.append(f"| {r['threads']}{mark} | {fmt(r['pp'])} | {fmt(r['tg'])} | {roof} |")
    return lines


def comma_list(text: str, known=None) -> list[str]:
    items = [s.strip() for s in text.split(",") if s.strip()]
    bad = [s for s in items if known is not None and s not in known]
    if bad or not items:
        raise argparse.ArgumentTypeError(f"{text!r}: choose from {', '.join(known)}" if known else f"{text!r} is empty")
    return items


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=lambda s: comma_list(s, MODELS), default=list(MODELS),
                        help=f"comma-separated, of {', '.join(MODELS)}")
    parser.add_argument("--formats", type=lambda s: comma_list(s, VARIANTS), default=FORMATS,
                        help=f"comma-separated, of {', '.join(VARIANTS)} (default {','.join(FORMATS)}; "
                             "tinyllama has q4_0, q8_0, q4_1, q4_k_m; gemma3 q4_k_m)")
    parser.add_argument("--threads", type=lambda s: [int(t) for t in comma_list(s)], default=None,
                        help="comma-separated thread counts (default 1,2; --sweep: 1..nproc and 2 x nproc)")
    parser.add_argument("--reps", type=int, default=3, help="timed runs per engine and test; the best counts")
    parser.add_argument("--pp", type=int, default=512, help="prompt tokens (0: no pp test)")
    parser.add_argument("--tg", type=int, default=128, help="generated tokens (0: no tg test)")
    parser.add_argument("--depth", type=int, default=0, help="tokens in the KV cache before tg (llama-bench's -d)")
    parser.add_argument("--cache-type", choices=["f16", "q8_0"], default="f16",
                        help="KV cache type of both engines (q8_0: llama.cpp with flash attention)")
    parser.add_argument("--sweep", action="store_true",
                        help="pyengine alone at many thread counts on the first model and format")
    parser.add_argument("--seed", type=int, default=0, help="of the random token ids")
    parser.add_argument("--out", default=None,
                        help="OUT.md and OUT.json (default bench/results/vs_llamacpp, with --sweep "
                             "bench/results/vs_llamacpp_sweep)")
    args = parser.parse_args(argv)
    if args.reps < 1 or args.pp < 0 or args.tg < 0 or args.depth < 0 or not (args.pp or args.tg):
        parser.error("--reps must be at least 1, --pp, --tg and --depth at least 0, --pp and --tg not both 0")
    if args.threads is not None and min(args.threads) < 1:
        parser.error("thread counts must be at least 1")

    command = shlex.join(["python", *(sys.argv if argv is None else [__file__, *argv])])
    llama_cpp = None if args.sweep else import_llama_cpp()
    info = machine_info(llama_cpp)
    rng = np.random.default_rng(args.seed)
    if args.sweep:
        nproc = info["cpus_usable"]
        threads = args.threads or sorted(set(range(1, nproc + 1)) | {2 * nproc})
    else:
        threads = args.threads or [1, 2]
    out = Path(args.out or ROOT / "bench" / "results" / ("vs_llamacpp_sweep" if args.sweep else "vs_llamacpp"))

    # Files first (making a synthetic model takes a while), so that no measurement waits on it.
    cells = [(m, f, MODELS[m][1](f)) for m in (args.models[:1] if args.sweep else args.models)
             for f in (args.formats[:1] if args.sweep else args.formats)]
    bandwidth = {t: {"gb_s_before": read_bandwidth(t)} for t in threads}

    results: dict = {"command": command, "machine": info, "pp": args.pp, "tg": args.tg, "depth": args.depth,
                     "cache_type": args.cache_type, "reps": args.reps,
                     "bandwidth": bandwidth}
    if args.sweep:
        model, fmt_name, path = cells[0]
        print(f"sweep {MODELS[model][0]} {fmt_name}: threads {threads}", file=sys.stderr)
        rows = sweep(path, threads, args, rng)
        results["sweep"] = {"model": model, "format": fmt_name, "path": str(path), "rows": rows,
                            "weight_bytes_per_token": weight_bytes_per_token(path)}
    else:
        rows = []
        for model, fmt_name, path in cells:
            per_token = weight_bytes_per_token(path)
            for t in threads:
                r = compare_cell(llama_cpp, path, t, args, rng)
                r.update(model=model, model_name=MODELS[model][0], format=fmt_name, threads=t, path=str(path),
                         weight_bytes_per_token=per_token)
                rows.append(r)
                print(f"{model} {fmt_name} t={t}: pp {fmt(r['pp_ours'])} vs {fmt(r['pp_theirs'])}, "
                      f"tg {fmt(r['tg_ours'])} vs {fmt(r['tg_theirs'])} tok/s; logits finite, "
                      f"KL(llama.cpp || ours) {r['check']['kl']:.2g}, same top-1 {r['check']['same_argmax']}",
                      file=sys.stderr)
        results["rows"] = rows
    for t, bw in bandwidth.items():
        bw["gb_s_after"] = read_bandwidth(t)
        bw["gb_s"] = max(bw["gb_s_before"], bw["gb_s_after"])

    if args.sweep:
        model, fmt_name, path = cells[0]
        lines = header(f"pyengine thread sweep on {MODELS[model][0]} {fmt_name}", command, info, bandwidth)
        lines += sweep_table(rows, MODELS[model][0], fmt_name, results["sweep"]["weight_bytes_per_token"],
                             bandwidth, args, info["default_n_threads"])
    else:
        lines = header("pyengine vs llama.cpp", command, info, bandwidth) + compare_table(rows, args)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    out.with_suffix(".json").write_text(json.dumps(results, indent=1) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
