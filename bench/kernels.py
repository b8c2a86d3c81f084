"""Kernel throughput: GB/s and GFLOP/s of the matrix-vector and matrix-matrix products per weight
format, ISA and thread count, beside this machine's memory read bandwidth measured in the same run.

    python bench/kernels.py [--threads 1,2] [--formats q4_0,q4_1,nf4,nf4_dq,q8_0,f16,bf16,f32] [--json]
    python bench/kernels.py --threads 1 --isas scalar,avx2 --formats q4_k,q6_k --matvec-mb 16 --matmul-shape 1024,1024

matvec: one token against a weight matrix larger than the caches (memory-bound: compare its GB/s
with the read bandwidth). matmul: a prompt-sized batch of tokens against a smaller matrix
(compute-bound: GFLOP/s). Best of several repeats; run on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

import pyengine
from pyengine import _core
from pyengine.quants import thread_pool, type_info

FORMATS = ["q4_0", "q4_1", "nf4", "nf4_dq", "q8_0", "f16", "bf16", "f32"]


# The K-quant-era formats (not in the default list): benchmark them with --formats.
K_FORMATS = ["q4_k", "q6_k", "q5_k", "q3_k", "q2_k", "iq4_xs", "q5_0", "q5_1", "iq4_nl"]
# Byte offsets of each block's fp16 fields (scale, minimum or scale of the minimums); others: d at 0.
FP16_FIELDS = {"q4_1": (0, 2), "q5_1": (0, 2), "q2_k": (80, 82), "q3_k": (108,), "q4_k": (0, 2),
               "q5_k": (0, 2), "q6_k": (208,)}


def random_weights(rng, type_name, rows, cols):
    """Raw weights of the given type with valid (finite) scales: random bytes are as fast as real ones."""
    name, block_size, type_size = type_info(type_name)
    if block_size == 1:
        return pyengine.quantize(rng.standard_normal((rows, cols), dtype=np.float32) * 0.1, type_name)
    raw = rng.integers(0, 256, (rows * cols // block_size, type_size), dtype=np.uint8)
    scale = np.array([0.01], dtype=np.float16).view(np.uint8)
    for offset in FP16_FIELDS.get(name, (0,)):
        raw[:, offset:offset + 2] = scale
    return raw.reshape(rows, -1)


def best_time(fn, min_repeats=5, min_seconds=0.5):
    fn()  # warm up: page in, spin the pool up
    best, total, n = float("inf"), 0.0, 0
    while n < min_repeats or total < min_seconds:
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        best, total, n = min(best, dt), total + dt, n + 1
    return best


def measure(rng, type_name, isa, n_threads, rows, cols, n_tokens):
    w = random_weights(rng, type_name, rows, cols)
    x = rng.standard_normal((n_tokens, cols), dtype=np.float32)
    seconds = best_time(lambda: pyengine.matmul(w, type_name, (rows, cols), x, n_threads=n_threads, isa=isa))
    return {"gb_s": w.nbytes / seconds / 1e9, "gflop_s": 2.0 * rows * cols * n_tokens / seconds / 1e9,
            "ms": seconds * 1e3, "weight_mb": w.nbytes / 1e6}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    parser.add_argument("--formats", default=",".join(FORMATS))
    parser.add_argument("--isas", default=",".join(pyengine.available_isas()))
    parser.add_argument("--matvec-mb", type=float, default=256,
                        help="weight megabytes of the matrix-vector product (well above the L3 cache)")
    parser.add_argument("--matvec-cols", type=int, default=4096)
    parser.add_argument("--matmul-shape", default="2048,2048", help="rows,cols of the matrix-matrix weight")
    parser.add_argument("--tokens", type=int, default=128, help="tokens in the matrix-matrix batch")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    rng = np.random.default_rng(0)
    threads = [int(t) for t in args.threads.split(",")]
    mv_cols = args.matvec_cols
    mm_rows, mm_cols = (int(v) for v in args.matmul_shape.split(","))
    results = {"bandwidth_gb_s": {}, "rows": []}
    for t in threads:
        results["bandwidth_gb_s"][t] = _core.memory_read_bandwidth(thread_pool(t), 512, 10)
    for type_name in args.formats.split(","):
        for isa in args.isas.split(","):
            _, block_size, type_size = type_info(type_name)
            mv_rows = int(args.matvec_mb * 1e6 / (mv_cols // block_size * type_size))
            for t in threads:
                mv = measure(rng, type_name, isa, t, mv_rows, mv_cols, 1)
                mm = measure(rng, type_name, isa, t, mm_rows, mm_cols, args.tokens)
                results["rows"].append({"format": type_name, "isa": isa, "threads": t,
                                        "matvec_gb_s": mv["gb_s"], "matvec_gflop_s": mv["gflop_s"],
                                        "matvec_weight_mb": mv["weight_mb"],
                                        "matvec_of_bandwidth": mv["gb_s"] / results["bandwidth_gb_s"][t],
                                        "matmul_gflop_s": mm["gflop_s"]})
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(f"memory read bandwidth: " + ", ".join(f"{t} thread{'s' if t > 1 else ''} {bw:.1f} GB/s"
                                                  for t, bw in results["bandwidth_gb_s"].items()))
    print(f"matvec: {args.matvec_mb:.0f} MB weight (rows x {mv_cols}), 1 token; "
          f"matmul: {mm_rows}x{mm_cols} weight, {args.tokens} tokens\n")
    print("| format | isa | threads | matvec GB/s | of bandwidth | matvec GFLOP/s | matmul GFLOP/s |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for r in results["rows"]:
        print(f"| {r['format']} | {r['isa']} | {r['threads']} | {r['matvec_gb_s']:.1f} | "
              f"{100 * r['matvec_of_bandwidth']:.0f}% | {r['matvec_gflop_s']:.1f} | {r['matmul_gflop_s']:.1f} |")


if __name__ == "__main__":
    main()
