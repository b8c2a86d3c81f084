"""The Python cost of generation: generate() against a bare Context.eval loop over the same tokens.

    python bench/generate_overhead.py [-n 128] [--repeats 9] [-t THREADS] [--model PATH]

For each sampling setting, generate() makes n tokens (end-of-generation tokens banned through
logit_bias, so every run makes all n); then the same prompt and tokens go through Context.eval
alone, on a context of the same size. Three measures of what sampling, detokenizing and the stop
checks add per token (the goal: < 5% of the engine's token time):

- in the loop: the generation loop (TokenStream) on a real context whose eval() is timed; the
  loop's time less the time inside eval() is Python's. This is the honest figure: right after a
  forward pass, which streamed ~90 MB of weights, the caches hold no Python, numpy or logits, so the
  same sampling code runs 2-3 times slower than in a warm benchmark.
- end to end: median over pairs of runs of (generate() - the bare eval loop). Both include the
  context and the prompt, which cancel. On a shared machine the token time wanders by more than
  this difference, so it is noisy there.
- warm replay: the same loop with eval() replaced by a replay of recorded logits (CPU time of the
  thread, time.thread_time): the Python cost with warm caches, which other processes hardly change.

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
    "default + penalties + a stop string": {"repetition_penalty": 1.1, "frequency_penalty": 0.1,
                                            "presence_penalty": 0.1, "stop": ["<never appears>"]},
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


class TimedContext:
    """A Context whose eval() adds up its own time."""

    def __init__(self, ctx):
        self.ctx, self.model, self.n_ctx, self.seconds = ctx, ctx.model, ctx.n_ctx, 0.0

    @property
    def n_past(self):
        return self.ctx.n_past

    def eval(self, ids):
        t0 = time.perf_counter()
        out = self.ctx.eval(ids)
        self.seconds += time.perf_counter() - t0
        return out


class ReplayContext:
    """Stands in for a Context: eval() hands back recorded logits at once."""

    def __init__(self, model, logits, n_ctx):
        self.model, self._logits, self.n_ctx, self.n_past, self._step = model, logits, n_ctx, 0, 0

    def eval(self, ids):
        self.n_past += len(ids)
        self._step += 1
        return self._logits[self._step - 1]


def run_stream(model, ctx, n, kwargs, tokens):
    params = SamplingParams(**{k: v for k, v in kwargs.items() if k != "stop"})
    stream = TokenStream(ctx, model.tokenize(PROMPT), Sampler(params, model.n_vocab), n, kwargs.get("stop", ()))
    for _ in stream:
        pass
    assert stream.tokens == tokens, "every run must take the same path"


def time_in_loop(model, n, kwargs, tokens):
    """Seconds of Python in a real generation loop: its time less the time inside eval()."""
    ctx = TimedContext(model.context(len(model.tokenize(PROMPT)) + n))
    t0 = time.perf_counter()
    run_stream(model, ctx, n, kwargs, tokens)
    return time.perf_counter() - t0 - ctx.seconds


def time_replay(model, n, kwargs, logits, tokens):
    ctx = ReplayContext(model, logits, len(model.tokenize(PROMPT)) + n)
    t0 = time.thread_time()
    run_stream(model, ctx, n, kwargs, tokens)
    return time.thread_time() - t0


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=128, help="tokens generated per run")
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("-t", "--threads", type=int, default=None)
    parser.add_argument("--model", default=None, help="GGUF file (default: SmolLM2-135M-Instruct Q4_0)")
    args = parser.parse_args(argv)

    model = pyengine.Model(args.model or smollm2_q4_0(), n_threads=args.threads)
    ban_eog = {i: -np.inf for i in model.tokenizer.eog_ids}
    print(f"{Path(model.path).name}, {model.n_threads} thread(s), isa {pyengine.isa()}, {args.n} tokens, "
          f"medians of {args.repeats} runs\n")
    print("| sampling | engine ms/token | Python in the loop ms/token | of engine | end to end ms/token | "
          "of engine | warm replay ms/token |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, setting in SETTINGS.items():
        kwargs = {"seed": 1234, "logit_bias": ban_eog, **setting}
        _, tokens = time_generate(model, args.n, kwargs)  # also the warm-up
        assert len(tokens) == args.n, "every run must make all n tokens"
        gens, evals, in_loop, replay = [], [], [], []
        for repeat in range(args.repeats):  # back to back, in alternating order: the noise cancels better
            if repeat % 2:
                t_eval, logits = time_eval_loop(model, args.n, tokens)
                t_gen, _ = time_generate(model, args.n, kwargs)
            else:
                t_gen, _ = time_generate(model, args.n, kwargs)
                t_eval, logits = time_eval_loop(model, args.n, tokens)
            gens.append(t_gen)
            evals.append(t_eval)
            in_loop.append(time_in_loop(model, args.n, kwargs, tokens))
            replay.append(time_replay(model, args.n, kwargs, logits, tokens))

        def per_token(seconds):
            return float(np.median(seconds)) / args.n * 1e3

        engine = per_token(evals)
        python = per_token(in_loop)
        end_to_end = per_token(np.subtract(gens, evals))
        print(f"| {name} | {engine:.2f} | {python:.3f} | {python / engine:.1%} | {end_to_end:.3f} | "
              f"{end_to_end / engine:.1%} | {per_token(replay):.3f} |")


if __name__ == "__main__":
    main()
