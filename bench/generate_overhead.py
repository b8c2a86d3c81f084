"""The Python cost of generation: generate() against a bare Context.eval loop over the same tokens.

    python bench/generate_overhead.py [-n 128] [--repeats 5] [-t THREADS] [--model PATH]

For each sampling setting, generate() makes n tokens (end-of-generation tokens banned through
logit_bias, so every run makes all n); then the same prompt and the same tokens are fed through
Context.eval alone, on a context of the same size. Both timings include the context and the prompt,
which cancel in the difference; the best of several alternating repeats is kept. The difference per
token is what sampling, detokenizing and the stop checks cost; the goal is < 5% of the token time.
Two columns hardly depend on a quiet machine: "loop alone" runs the same generation loop
(TokenStream: sampling, detokenizing, stop checks) with Context.eval replaced by a replay of the
recorded logits, so all of its time is Python's; "sampler alone" times just the sampling chain. Both
count the CPU time of the calling thread (time.thread_time), which other processes do not inflate.

The model is SmolLM2-135M-Instruct in Q4_0 (models/recipes.py makes it from the default model).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

import pyengine
from pyengine.generate import TokenStream
from pyengine.sampling import Sampler, SamplingParams

PROMPT = "Once upon a time, in a small village by the sea, there lived"

SETTINGS = {
    "default (T 0.8, top-k 40, top-p 0.95, min-p 0.05)": {},
    "greedy (T 0)": {"temperature": 0.0},
    "top-k off (T 0.8, top-p 0.95, min-p 0.05)": {"top_k": 0},
    "penalties + stop string": {"repetition_penalty": 1.1, "frequency_penalty": 0.1, "presence_penalty": 0.1,
                                "stop": ["<never appears>"]},
}


def smollm2_q4_0() -> Path:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "models"))
    from recipes import smollm2

    return smollm2("q4_0")


def time_generate(model, n, kwargs):
    t0 = time.perf_counter()
    c = model.generate(PROMPT, max_tokens=n, **kwargs)
    return time.perf_counter() - t0, c.tokens


def time_eval_loop(model, n, tokens):
    """The same work without Python on top: the context, the prompt, then n - 1 single-token evals
    (generate() does not evaluate its last token). Returns the seconds and each step's logits."""
    t0 = time.perf_counter()
    prompt = model.tokenize(PROMPT)
    ctx = model.context(min(model.n_ctx, len(prompt) + n))
    logits = [ctx.eval(prompt)]
    for token in tokens[:-1]:
        logits.append(ctx.eval([token]))
    return time.perf_counter() - t0, logits


class ReplayContext:
    """Stands in for a Context: eval() hands back recorded logits at once."""

    def __init__(self, model, logits, n_ctx):
        self.model, self._logits, self.n_ctx, self.n_past, self._step = model, logits, n_ctx, 0, 0

    def eval(self, ids):
        self.n_past += len(ids)
        self._step += 1
        return self._logits[self._step - 1]


def time_replay(model, n, kwargs, logits, tokens):
    best = float("inf")
    prompt = model.tokenize(PROMPT)
    params = SamplingParams(**{k: v for k, v in kwargs.items() if k != "stop"})
    for _ in range(5):
        ctx = ReplayContext(model, logits, len(prompt) + n)
        stream = TokenStream(ctx, prompt, Sampler(params, model.n_vocab), n, kwargs.get("stop", ()))
        t0 = time.thread_time()
        for _ in stream:
            pass
        best = min(best, time.thread_time() - t0)
        assert stream.tokens == tokens, "the replay must take the recorded path"
    return best


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=128, help="tokens generated per run")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("-t", "--threads", type=int, default=None)
    parser.add_argument("--model", default=None, help="GGUF file (default: SmolLM2-135M-Instruct Q4_0)")
    args = parser.parse_args(argv)

    model = pyengine.Model(args.model or smollm2_q4_0(), n_threads=args.threads)
    ban_eog = {i: -np.inf for i in model.tokenizer.eog_ids}
    print(f"{Path(model.path).name}, {model.n_threads} threads, isa {pyengine.isa()}, {args.n} tokens, "
          f"best of {args.repeats}\n")
    print("| sampling | engine ms/token | generate ms/token | difference | of engine | loop alone ms/token | "
          "of engine | sampler alone ms |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, setting in SETTINGS.items():
        kwargs = {"seed": 1234, "logit_bias": ban_eog, **setting}
        time_generate(model, args.n, kwargs)  # warm up
        best_gen, best_eval = float("inf"), float("inf")
        for _ in range(args.repeats):
            t_gen, tokens = time_generate(model, args.n, kwargs)
            t_eval, logits = time_eval_loop(model, args.n, tokens)
            best_gen, best_eval = min(best_gen, t_gen), min(best_eval, t_eval)
        assert len(tokens) == args.n, "every run must make all n tokens"
        # the sampler alone on the recorded logits, with the ids it saw
        params = SamplingParams(**{k: v for k, v in kwargs.items() if k != "stop"})
        sampler = Sampler(params, model.n_vocab)
        ids = model.tokenize(PROMPT)
        t0 = time.thread_time()
        for step, step_logits in enumerate(logits):
            sampler(ids + tokens[:step], step_logits)
        t_sampler = (time.thread_time() - t0) / len(logits)

        loop = time_replay(model, args.n, kwargs, logits, tokens) / args.n * 1e3
        engine = best_eval / args.n * 1e3
        total = best_gen / args.n * 1e3
        overhead = total - engine
        print(f"| {name} | {engine:.3f} | {total:.3f} | {overhead:.3f} | {overhead / engine:.1%} | "
              f"{loop:.3f} | {loop / engine:.1%} | {t_sampler * 1e3:.3f} |")


if __name__ == "__main__":
    main()
