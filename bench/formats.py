"""What each quantization format costs and buys on this CPU, on SmolLM2-135M-Instruct:
file size, bits per weight, prompt and generation speed, perplexity on WikiText-2 and the
KL-divergence from the F32 model.

    python bench/formats.py [--threads 1,2] [--chunks 8] [-p 512] [-n 128] [--reps 3]

Writes bench/results/formats.md (a markdown table) and bench/results/formats.png (tokens/s against
bits per weight, KLD in the labels). Every variant is re-quantized from the shipped Q4_1 file through
F32 (models/recipes.py), so F32 here is the Q4_1 model's values, the base the others are compared to.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "models"))

import pyengine  # noqa: E402
from pyengine.bench import bench_model, plot  # noqa: E402
from pyengine.perplexity import chunk_tokens, perplexity, scored_logprobs  # noqa: E402
from pyengine.requantize import quantize_model  # noqa: E402
from recipes import smollm2  # noqa: E402

# llama.cpp's presets (llama-quantize's per-tensor choices), then the plain types and pyengine's own
PRESETS = ["q6_k", "q5_k_m", "q5_k_s", "q5_1", "q5_0", "q4_k_m", "q4_k_s", "iq4_xs", "iq4_nl", "q3_k_l", "q3_k_m",
           "q3_k_s", "q2_k"]
FORMATS = ["f32", "f16", "q8_0", *PRESETS, "q4_1", "q4_0", "nf4", "nf4_dq"]
WIKITEXT = ROOT.parent / "shared" / "data" / "wikitext-2-test.txt"


def variant(fmt: str) -> Path:
    from recipes import VARIANTS

    if fmt not in VARIANTS:
        path = smollm2("f32").with_name(f"SmolLM2-135M-Instruct.{fmt.upper()}.gguf")
        if not path.exists():
            quantize_model(smollm2("f32"), path, fmt)
        return path
    return smollm2(fmt)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--formats", default=",".join(FORMATS))
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--chunks", type=int, default=8, help="WikiText-2 chunks of 512 tokens for ppl/KLD")
    parser.add_argument("-p", type=int, default=512)
    parser.add_argument("-n", type=int, default=128)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "formats"))
    args = parser.parse_args(argv)

    text = WIKITEXT.read_text(encoding="utf-8")
    base = pyengine.Model(variant("f32"), n_ctx=512)
    chunks = chunk_tokens(base, text, 512, args.chunks)
    base_logprobs = scored_logprobs(base, chunks)
    del base
    rows = []
    for fmt in args.formats.split(","):
        path = variant(fmt)
        quality = perplexity(pyengine.Model(path, n_ctx=512), text, 512, args.chunks, kl_base=base_logprobs)
        for t in (int(x) for x in args.threads.split(",")):
            r = bench_model(path, n_prompt=args.p, n_gen=args.n, n_threads=t, repetitions=args.reps)
            r.ppl, r.kld = quality.ppl, quality.kld_mean
            rows.append((fmt, r, quality))
            print(f"{fmt} t={t}: pp {r.pp_tok_s:.1f} tg {r.tg_tok_s:.1f} ppl {quality.ppl:.3f} "
                  f"kld {quality.kld_mean:.4f}", file=sys.stderr)

    lines = [f"# Quantization formats on SmolLM2-135M-Instruct", "",
             f"`python bench/formats.py` on {platform.processor() or platform.machine()}, isa {pyengine.isa()}; "
             f"pp{args.p} / tg{args.n} tokens/s (mean ± sd of {args.reps}); perplexity and KL-divergence from F32 "
             f"on {args.chunks} WikiText-2 chunks of 512 tokens (llama.cpp's method).", "",
             "| format | size MB | bpw | threads | pp tok/s | tg tok/s | ppl | KLD mean | KLD p99 | top-1 vs F32 |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for fmt, r, q in rows:
        lines.append(f"| {fmt} | {r.size_bytes / 1e6:.1f} | {r.bpw:.2f} | {r.threads} | "
                     f"{r.pp_tok_s:.1f} ± {r.pp_tok_s_sd:.1f} | {r.tg_tok_s:.1f} ± {r.tg_tok_s_sd:.1f} | "
                     f"{q.ppl:.3f} | {q.kld_mean:.4f} | {q.kld_p99:.3f} | {100 * q.top1_agreement:.1f}% |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    out.with_suffix(".json").write_text(json.dumps([{"format": f, **r.to_dict(), **q.to_dict()} for f, r, q in rows],
                                                   indent=1))
    plot([r for _, r, _ in rows], out.with_suffix(".png"))
    plot_quality([(f, r.size_bytes / 1e6, r.bpw, q.kld_mean) for f, r, q in rows], out.with_name(out.name + "_quality.png"))
    print("\n".join(lines))


def plot_quality(points, path: Path) -> None:
    """KL-divergence from F32 (log scale) against file size: what each format costs in quality.
    points: (format, size MB, bits per weight, mean KLD), one or more per format."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seen = {}
    for fmt, size, bpw, kld in points:
        seen.setdefault(fmt, (size, bpw, kld))
    fig, ax = plt.subplots(figsize=(10, 6))
    shown = sorted((kld, size, bpw, fmt) for fmt, (size, bpw, kld) in seen.items() if kld > 0)  # not F32 itself
    for i, (kld, size, bpw, fmt) in enumerate(shown):
        own = fmt in ("nf4", "nf4_dq")
        ax.scatter(size, kld, color="tab:orange" if own else "tab:blue")
        # labels alternate right and left of their points, which crowd around 90-110 MB
        ax.annotate(f"{fmt} ({bpw:.2f} bpw)", (size, kld), textcoords="offset points", fontsize=8,
                    xytext=(6, -3) if i % 2 else (-6, -3), ha="left" if i % 2 else "right")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("file size (MB)")
    ax.set_ylabel("mean KL-divergence from F32 (nats / token)")
    ax.set_title("SmolLM2-135M-Instruct: quality against size (blue: llama.cpp's formats, orange: pyengine's)")
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
