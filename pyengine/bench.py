"""Speed of models on this CPU, as llama-bench measures it (`python -m pyengine bench`).

pp: a prompt of n_prompt random tokens evaluated in one batch (tokens/s of prompt processing).
tg: n_gen tokens evaluated one at a time (tokens/s of generation), after `depth` tokens already in
the KV cache. Each figure is repeated (mean and standard deviation); the first run of each model is
a warm-up and not counted. ttft is the time to the first token of a generation: the prompt.
"""

from __future__ import annotations

import itertools
import os
import statistics
import time
from dataclasses import asdict, dataclass

import numpy as np

from .gguf import GGUFReader
from .info import model_stats
from .model import Model


@dataclass
class BenchResult:
    model: str
    size_bytes: int
    params: int
    bpw: float
    threads: int
    n_prompt: int
    n_gen: int
    depth: int
    pp_tok_s: float | None
    pp_tok_s_sd: float | None
    tg_tok_s: float | None
    tg_tok_s_sd: float | None
    ttft_s: float | None
    kv_type: str = "f16"
    ppl: float | None = None
    kld: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def _mean_sd(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def bench_model(path: str | os.PathLike, n_prompt: int = 512, n_gen: int = 128, n_threads: int | None = None,
                repetitions: int = 5, depth: int = 0, seed: int = 0, kv_type: str = "f16") -> BenchResult:
    for name, value in (("-p", n_prompt), ("-n", n_gen), ("-d", depth)):
        if value < 0:
            raise ValueError(f"{name} must be at least 0, got {value}")
    if repetitions < 1:
        raise ValueError(f"repetitions must be at least 1, got {repetitions}")
    with GGUFReader(path) as reader:
        stats = model_stats(reader)
    n_ctx = max(n_prompt, depth + n_gen, 1)
    model = Model(path, n_ctx=n_ctx, n_threads=n_threads, kv_type=kv_type)
    rng = np.random.default_rng(seed)
    # Random ordinary tokens, as llama-bench uses.
    def tokens(n):
        return rng.integers(0, model.n_vocab, n).tolist()

    pp, tg, ttft = [], [], []
    for rep in range(repetitions + 1):  # rep 0 warms up
        if n_prompt:
            ids = tokens(n_prompt)
            ctx = model.context()
            t0 = time.perf_counter()
            ctx.eval(ids)
            dt = time.perf_counter() - t0
            if rep:
                pp.append(n_prompt / dt)
                ttft.append(dt)
        if n_gen:
            ctx = model.context()
            if depth:
                ctx.eval(tokens(depth))
            ids = tokens(n_gen)
            t0 = time.perf_counter()
            for t in ids:
                ctx.eval([t])
            dt = time.perf_counter() - t0
            if rep:
                tg.append(n_gen / dt)
    pp_mean, pp_sd = _mean_sd(pp) if pp else (None, None)
    tg_mean, tg_sd = _mean_sd(tg) if tg else (None, None)
    return BenchResult(model=os.fspath(path), size_bytes=stats["file_bytes"], params=stats["params"],
                       bpw=stats["bpw"], threads=model.n_threads, n_prompt=n_prompt, n_gen=n_gen, depth=depth,
                       pp_tok_s=pp_mean, pp_tok_s_sd=pp_sd, tg_tok_s=tg_mean, tg_tok_s_sd=tg_sd,
                       ttft_s=statistics.fmean(ttft) if ttft else None, kv_type=kv_type)


def sweep(paths, threads=(None,), prompts=(512,), gens=(128,), depths=(0,), repetitions=5,
          kv_type: str = "f16") -> list[BenchResult]:
    """Every combination of model, thread count, prompt length, generation length and depth."""
    return [bench_model(p, n_prompt=n_p, n_gen=n_g, n_threads=t, repetitions=repetitions, depth=d, kv_type=kv_type)
            for p, t, n_p, n_g, d in itertools.product(paths, threads, prompts, gens, depths)]


def format_table(results: list[BenchResult]) -> str:
    head = ("| model | size | bpw | threads | test | tokens/s | ttft |", "|---|---:|---:|---:|---|---:|---:|")
    rows = []
    for r in results:
        name = os.path.basename(r.model)
        extra = f" ppl {r.ppl:.3f}" if r.ppl is not None else ""
        extra += f" kld {r.kld:.4f}" if r.kld is not None else ""
        if r.pp_tok_s is not None:
            rows.append(f"| {name} | {r.size_bytes / 1e6:.1f} MB | {r.bpw:.2f} | {r.threads} | pp{r.n_prompt} | "
                        f"{r.pp_tok_s:.1f} ± {r.pp_tok_s_sd:.1f} | {r.ttft_s * 1e3:.0f} ms |")
        if r.tg_tok_s is not None:
            depth = f" @ d{r.depth}" if r.depth else ""
            depth += f" ({r.kv_type} cache)" if r.kv_type != "f16" else ""
            rows.append(f"| {name} | {r.size_bytes / 1e6:.1f} MB | {r.bpw:.2f} | {r.threads} | tg{r.n_gen}{depth} | "
                        f"{r.tg_tok_s:.1f} ± {r.tg_tok_s_sd:.1f} | |")
        if extra:
            rows[-1] += extra
    return "\n".join(head + tuple(rows))


def plot(results: list[BenchResult], out: str | os.PathLike) -> None:
    """tokens/s against bits per weight, one point per model (and thread count); KLD in the labels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [os.path.basename(r.model).replace(".gguf", "") for r in results]
    prefix = os.path.commonprefix(names) if len(set(names)) > 1 else ""
    prefix = prefix[:prefix.rfind(".") + 1]  # "Model-Name." shared by every file
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    if prefix:
        fig.suptitle(prefix.rstrip("."))
    for ax, key, title in ((axes[0], "pp_tok_s", "prompt processing"), (axes[1], "tg_tok_s", "generation")):
        for r, name in zip(results, names):
            value = getattr(r, key)
            if value is None:
                continue
            ax.scatter(r.bpw, value, color="C0" if r.threads == 1 else "C1")
            label = name[len(prefix):]
            if r.kld is not None:
                label += f" KLD {r.kld:.3f}"
            ax.annotate(f"{label} ({r.threads}t)", (r.bpw, value), fontsize=6, xytext=(4, 2),
                        textcoords="offset points")
        ax.set_xlabel("bits per weight")
        ax.set_ylabel("tokens/s")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    ax.set_xscale("log", base=2)
    axes[0].set_xscale("log", base=2)
    fig.tight_layout()
    # a temporary file renamed into place: an error or Ctrl-C leaves no half-written image
    out = os.fspath(out)
    tmp = os.path.join(os.path.dirname(out) or ".", f".{os.path.basename(out)}.{os.getpid()}.tmp")
    try:
        fig.savefig(tmp, dpi=120, format=os.path.splitext(out)[1][1:] or "png")
        os.replace(tmp, out)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    finally:
        plt.close(fig)
