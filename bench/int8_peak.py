"""How far prompt processing is from this CPU's integer peak.

    python bench/int8_peak.py [--models tinyllama,smollm2] [--formats q4_0] [--threads 1,2] [--pp 512]
                              [--reps 3] [--out bench/results/int8_peak]

Prompt processing is compute-bound: every weight is multiplied with every token of the prompt. The
packed kernels do it with AVX2's maddubs (32 int8 products summed in pairs per instruction), so the
CPU's peak is that instruction's rate: the probe `_core.int8_peak` runs it on 10 independent chains
with no loads and counts products per second of CPU time (one thread; the peak of n threads is n
times it, on n physical cores). A prompt of --pp random tokens (one call, as pp512 in
bench/vs_llamacpp.py, best of --reps) then does weight-products per token = the elements of every
weight matrix the token passes through (the output matrix once per prompt: only the last token's
logits are computed), so

    share of peak = pp tokens/s x products per token / (threads x probe).

The rest of the gap is what the kernels do besides maddubs (unpacking nibbles, widening the int16
sums, the float scale of every block and token), the activations' quantization, attention, norms and
the threads' synchronisation. Writes OUT.md and OUT.json and prints the table.
"""

from __future__ import annotations

import argparse
import datetime
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "models"))

import pyengine  # noqa: E402
from pyengine import _core  # noqa: E402
from pyengine.gguf import GGUFReader  # noqa: E402
from recipes import smollm2, synthetic_tinyllama  # noqa: E402

MODELS = {"tinyllama": ("TinyLlama-1.1B (synthetic)", synthetic_tinyllama), "smollm2": ("SmolLM2-135M", smollm2)}


def products_per_prompt_token(path: Path, n_prompt: int) -> float:
    """Weight-activation products per prompt token: every layer matrix for each token, the output
    matrix (or the tied embedding) for the last one only."""
    with GGUFReader(path) as reader:
        tensors = reader.tensors
        layers = sum(int(np.prod(t.shape)) for name, t in tensors.items() if name.startswith("blk.") and len(t.shape) == 2)
        out = tensors.get("output.weight", tensors["token_embd.weight"])
        return layers + int(np.prod(out.shape)) / n_prompt


def pp_tok_s(path: Path, n_threads: int, n_prompt: int, reps: int, rng) -> float:
    model = pyengine.Model(path, n_ctx=max(n_prompt, 16), n_threads=n_threads)
    model.context().eval(rng.integers(0, model.n_vocab, 16).tolist())  # warm up
    best = float("inf")
    for _ in range(reps):
        ids = rng.integers(0, model.n_vocab, n_prompt).tolist()
        ctx = model.context()
        t0 = time.perf_counter()
        ctx.eval(ids)
        best = min(best, time.perf_counter() - t0)
    return n_prompt / best


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="tinyllama", help=f"comma-separated, of {', '.join(MODELS)}")
    parser.add_argument("--formats", default="q4_0", help="comma-separated (default q4_0)")
    parser.add_argument("--threads", default="1,2", help="comma-separated thread counts (default 1,2)")
    parser.add_argument("--pp", type=int, default=512)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "int8_peak"))
    args = parser.parse_args(argv)
    models = [m.strip() for m in args.models.split(",")]
    if any(m not in MODELS for m in models):
        parser.error(f"--models: choose from {', '.join(MODELS)}")
    threads = [int(t) for t in args.threads.split(",")]
    peak = max(_core.int8_peak() for _ in range(3))  # products/s, one thread
    if peak is None:
        raise SystemExit(f"the {_core.isa()} kernels have no int8 peak probe")
    rng = np.random.default_rng(0)
    rows = []
    for m in models:
        for fmt in args.formats.split(","):
            path = MODELS[m][1](fmt.strip())
            per_token = products_per_prompt_token(path, args.pp)
            for t in threads:
                tok_s = pp_tok_s(path, t, args.pp, args.reps, rng)
                rows.append({"model": MODELS[m][0], "format": fmt.strip(), "threads": t, "pp_tok_s": tok_s,
                             "products_per_token": per_token, "gops": tok_s * per_token / 1e9,
                             "peak_gops": t * peak / 1e9, "share": tok_s * per_token / (t * peak)})
    command = shlex.join(["python", *(sys.argv if argv is None else [__file__, *argv])])
    lines = ["# Prompt processing against the int8 peak", "", f"`{command}`", "",
             f"{datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')}; isa {_core.isa()}; "
             f"int8 peak (maddubs, one thread): {peak / 1e9:.1f} G products/s.", "",
             f"| model | format | threads | pp{args.pp} tok/s | G products/s | peak | share of peak |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['format']} | {r['threads']} | {r['pp_tok_s']:.1f} | {r['gops']:.1f} | "
                     f"{r['peak_gops']:.1f} | {100 * r['share']:.0f}% |")
    text = "\n".join(lines) + "\n"
    print(text)
    out = Path(args.out)
    out.with_suffix(".md").write_text(text)
    out.with_suffix(".json").write_text(json.dumps({"command": command, "int8_peak": peak, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
