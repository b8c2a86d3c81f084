"""The sampler's time per token, right after a forward pass and with warm caches.

    python bench/sampler.py [--model PATH] [-n 300] [-t THREADS]

For each sampling setting: a context evaluates one token at a time (the same token, the position
rolled back each time) and the Sampler is timed on each step's logits, right after the forward pass,
which has streamed the weights through the caches (the figure generation pays); then the same call
on the last logits again and again (warm caches). Medians of n calls, in microseconds. The rest of
the Python cost per token (detokenizing, stop checks) is bench/generate_overhead.py's.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import pyengine
from pyengine.sampling import Sampler, SamplingParams

SETTINGS = {
    "default (T 0.8, top-k 40, top-p 0.95, min-p 0.05)": {},
    "greedy (T 0)": {"temperature": 0.0},
    "top-k off (T 0.8, top-p 0.95, min-p 0.05)": {"top_k": 0},
    "default + repetition penalty 1.1": {"repetition_penalty": 1.1},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="a GGUF file (default: the default model)")
    parser.add_argument("-n", type=int, default=300, help="calls timed per setting and state")
    parser.add_argument("-t", "--threads", type=int, default=None)
    args = parser.parse_args()

    model = pyengine.Model(args.model, n_ctx=512, n_threads=args.threads)
    ids = model.tokenize("Once upon a time, in a small village by the sea, there lived")
    ctx = model.context()
    ctx.eval(ids[:-1])
    print(f"{Path(model.path).name}, vocabulary {model.n_vocab}, isa {pyengine.isa()}, medians of {args.n} calls\n")
    print("| sampling | after a forward pass, us | warm, us |")
    print("|---|---:|---:|")
    for name, setting in SETTINGS.items():
        # the end-of-generation tokens banned, as the benchmarks of generation do
        sampler = Sampler(SamplingParams(seed=0, logit_bias={t: -100 for t in model.tokenizer.eog_ids}, **setting),
                          model.n_vocab)
        cold = []
        for _ in range(args.n):
            logits = ctx.eval(ids[-1:])
            ctx.truncate(ctx.n_past - 1)
            start = time.perf_counter()
            sampler(ids, logits)
            cold.append(time.perf_counter() - start)
        warm = []
        for _ in range(args.n):
            start = time.perf_counter()
            sampler(ids, logits)
            warm.append(time.perf_counter() - start)
        print(f"| {name} | {statistics.median(cold) * 1e6:.1f} | {statistics.median(warm) * 1e6:.1f} |")


if __name__ == "__main__":
    main()
