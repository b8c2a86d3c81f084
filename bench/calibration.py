"""Calibrated quantization measured: SmolLM2-135M-Instruct (the F32 model of models/recipes.py) in
llama.cpp's presets, plainly, with llama.cpp's own importance matrix and quantizer, and with each of
pyengine's calibrated methods, each file against the F32 model on text it was not calibrated on.

    OPENBLAS_NUM_THREADS=1 python bench/calibration.py --calib-chunks 64 [--presets q4_k_m,...] [--methods ...]

Calibration: the second half (by characters) of WikiText-2's test text in chunks of 512 tokens (all,
or the first --calib-chunks): llama.cpp's llama-imatrix (-c 512) for its column, pyengine.calibrate
for pyengine's (the same chunks). (OPENBLAS_NUM_THREADS=1: numpy's threaded BLAS, on small matrices
and a busy machine, spends more time waiting than working.) Evaluation: the first 8 chunks of 512 tokens of the whole text (pyengine's perplexity:
llama.cpp's method, the second half of each chunk scored), mean KL-divergence from the F32 model's
next-token distributions, top-1 agreement with it, perplexity. Columns:

  plain          round-to-nearest, no calibration (llama-quantize's bytes)
  llama.cpp      llama-imatrix + llama-quantize --imatrix (llama.cpp's own binaries, --llama-bin)
  imatrix        pyengine quantize --imatrix with pyengine's imatrix (the same bytes llama-quantize
                 writes given that imatrix)
  gptq, awq, awq+gptq   pyengine quantize --calib with --gptq, --awq, both
  +outliers      and --outliers: the matrices where the importance's outlier channels make the most
                 error a type up, within 1% of the file (not in the default --methods)

Everything made is kept in --workdir (the calibration statistics, llama.cpp's imatrix, each
quantized file) and reused by a later run; --fresh starts over. Writes bench/results/calibration.md
and .json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "models"))

import pyengine  # noqa: E402
from pyengine.calibrate import Calibration, calibrate  # noqa: E402
from pyengine.perplexity import chunk_tokens, perplexity, scored_logprobs  # noqa: E402
from pyengine.requantize import quantize_model  # noqa: E402
from recipes import smollm2  # noqa: E402

WIKITEXT = ROOT.parent / "shared" / "data" / "wikitext-2-test.txt"
PRESETS = ["q4_k_m", "q3_k_m", "q2_k", "iq4_xs"]
METHODS = {  # column -> quantize_model options (None: llama.cpp's binaries)
    "plain": {},
    "llama.cpp": None,
    "imatrix": {"calibration": True},
    "gptq": {"calibration": True, "gptq": True},
    "awq": {"calibration": True, "awq": True},
    "awq+gptq": {"calibration": True, "awq": True, "gptq": True},
    # the outlier channels' tensors a type up, within 1% of the file (quantize --outliers)
    "imatrix+outliers": {"calibration": True, "outliers": 0.01},
    "awq+gptq+outliers": {"calibration": True, "awq": True, "gptq": True, "outliers": 0.01},
}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", default=",".join(PRESETS))
    parser.add_argument("--methods", default=",".join(m for m in METHODS if "outliers" not in m))
    parser.add_argument("--chunks", type=int, default=8, help="evaluation chunks of 512 tokens")
    parser.add_argument("--calib-chunks", type=int, default=None, help="calibration chunks (default: all)")
    parser.add_argument("--llama-bin", default="/work/llbuild/bin", help="llama-imatrix and llama-quantize")
    parser.add_argument("--workdir", default="/tmp/pyengine-calibration")
    parser.add_argument("--fresh", action="store_true", help="remake everything in --workdir")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "calibration"))
    args = parser.parse_args(argv)

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    text = WIKITEXT.read_text(encoding="utf-8")
    calib_text = work / "calibration.txt"  # disjoint from the evaluation chunks at the start of the text
    calib_text.write_text(text[len(text) // 2:], encoding="utf-8")
    f32 = smollm2("f32")
    base = pyengine.Model(f32, n_ctx=512)
    eval_chunks = chunk_tokens(base, text, 512, args.chunks)
    assert sum(len(c) for c in eval_chunks) * 4 < len(text) // 2  # tokens take more than 4 characters here
    base_logprobs = scored_logprobs(base, eval_chunks)

    stats = work / "calibration.npz"
    if args.fresh or not stats.exists():
        t = time.time()
        calibrate(base, calib_text.read_text(encoding="utf-8"), 512, args.calib_chunks,
                  datasets=[calib_text.name]).save(stats)
        print(f"pyengine calibration: {time.time() - t:.0f} s", file=sys.stderr)
    calibration = Calibration.load(stats)
    llama_imatrix = work / "llama-imatrix.gguf"
    if "llama.cpp" in args.methods and (args.fresh or not llama_imatrix.exists()):
        chunks = [] if args.calib_chunks is None else ["--chunks", str(args.calib_chunks)]
        subprocess.run([f"{args.llama_bin}/llama-imatrix", "-m", str(f32), "-f", str(calib_text), "-c", "512",
                        "-o", str(llama_imatrix), "-t", str(os.cpu_count()), *chunks],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    results_path = work / "results.json"
    results = {} if args.fresh or not results_path.exists() else json.loads(results_path.read_text())
    for preset in args.presets.split(","):
        for method in args.methods.split(","):
            key = f"{preset}/{method}"
            path = work / f"smollm2.{preset}.{method}.gguf"
            if key in results and path.exists():
                continue
            t = time.time()
            options = METHODS[method]
            if options is None:
                subprocess.run([f"{args.llama_bin}/llama-quantize", "--imatrix", str(llama_imatrix), str(f32),
                                str(path), preset], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            else:
                options = dict(options, calibration=calibration if options.get("calibration") else None)
                quantize_model(f32, path, preset, **options)
            seconds = time.time() - t
            res = perplexity(pyengine.Model(path, n_ctx=512), text, 512, args.chunks, kl_base=base_logprobs)
            results[key] = {"preset": preset, "method": method, "bytes": path.stat().st_size, "seconds": seconds,
                            "kld": res.kld_mean, "top1": res.top1_agreement, "ppl": res.ppl, "base_ppl": res.base_ppl}
            results_path.write_text(json.dumps(results, indent=1))
            print(f"{key}: {path.stat().st_size / 1e6:.2f} MB, KLD {res.kld_mean:.5f}, top-1 "
                  f"{100 * res.top1_agreement:.2f}%, PPL {res.ppl:.3f} ({seconds:.0f} s)", file=sys.stderr)

    order = {key: i for i, key in enumerate([*PRESETS, *METHODS])}
    rows = sorted((r for r in results.values() if r["preset"] in args.presets.split(",")),
                  key=lambda r: (order.get(r["preset"], 99), order.get(r["method"], 99)))
    Path(args.out + ".json").write_text(json.dumps(rows, indent=1))
    Path(args.out + ".md").write_text(table(rows, calibration.imatrix.chunk_count, args.chunks))
    print(table(rows, calibration.imatrix.chunk_count, args.chunks))


def table(rows: list[dict], calib_chunks: int, eval_chunks: int) -> str:
    base_ppl = rows[0]["base_ppl"] if rows else float("nan")
    lines = [f"SmolLM2-135M-Instruct against its F32 model (PPL {base_ppl:.3f}): calibrated on the second half of "
             f"WikiText-2 test ({calib_chunks} chunks of 512), evaluated on its first {eval_chunks} chunks of 512.",
             "KLD ratio: mean KLD / llama.cpp-with-imatrix's at the same preset; size ratio: file size / its.", "",
             "| preset | method | size MB | size ratio | mean KLD | KLD ratio | top-1 % | PPL |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    by_key = {(r["preset"], r["method"]): r for r in rows}
    for r in rows:
        ref = by_key.get((r["preset"], "llama.cpp"))
        ratio = f"{r['kld'] / ref['kld']:.3f}" if ref else "-"
        size_ratio = f"{r['bytes'] / ref['bytes']:.4f}" if ref else "-"
        lines.append(f"| {r['preset']} | {r['method']} | {r['bytes'] / 1e6:.2f} | {size_ratio} | {r['kld']:.5f} | {ratio} | "
                     f"{100 * r['top1']:.2f} | {r['ppl']:.3f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
