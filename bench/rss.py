"""Memory of a model in use: resident set size (RSS) after loading, and its peak while evaluating a
prompt and generating, beside what it must hold (the file, memory-mapped, and the KV cache).

    python bench/rss.py                          # SmolLM2-135M-Instruct Q4_0 and Q4_1 (the default)
    python bench/rss.py --types q4_0 --n-ctx 2048 --prompt 256 --gen 64

Each model is measured in a fresh process (python bench/rss.py --child ...), from /proc/self/status:
VmRSS (now), VmHWM (the peak), RssAnon (allocated memory) and RssFile (pages of mapped files, the
weights among them). "start" is the process with pyengine imported, before the model.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MB = 1e6


def status() -> dict[str, int]:
    """Memory fields of /proc/self/status, in bytes."""
    fields = {}
    with open("/proc/self/status") as f:
        for line in f:
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
                fields[name] = int(value.split()[0]) * 1024
    return fields


def child(path: str, n_ctx: int, n_prompt: int, n_gen: int, n_threads: int) -> dict:
    import numpy as np

    import pyengine
    from pyengine.model import kv_cache_bytes

    start = status()
    model = pyengine.Model(path, n_ctx=n_ctx, n_threads=n_threads)
    loaded = status()
    ctx = model.context()  # the whole n_ctx: the KV cache at its full size
    prompt = np.random.default_rng(0).integers(0, model.n_vocab, n_prompt).tolist()
    logits = ctx.eval(prompt)
    for _ in range(n_gen):
        logits = ctx.eval([int(np.argmax(logits))])
    used = status()
    return {"path": path, "file": os.path.getsize(path), "kv": kv_cache_bytes(model.config, n_ctx),
            "start": start, "loaded": loaded, "used": used}


def measure(path: str, n_ctx: int, n_prompt: int, n_gen: int, n_threads: int) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", path, str(n_ctx), str(n_prompt), str(n_gen),
                          str(n_threads)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--types", nargs="+", default=["q4_0", "q4_1"], help="SmolLM2 variants (models/recipes.py)")
    parser.add_argument("--n-ctx", type=int, default=4096)
    parser.add_argument("--prompt", type=int, default=512, help="tokens of prompt, evaluated in one batch")
    parser.add_argument("--gen", type=int, default=128, help="tokens generated one at a time")
    parser.add_argument("-t", "--threads", type=int, default=1)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "models"))
    from recipes import smollm2

    print(f"n_ctx {args.n_ctx}, prompt {args.prompt} tokens, {args.gen} generated, {args.threads} thread(s); MB\n")
    print("| model | file | KV cache | start | after load | peak | peak - start | mapped (file) | allocated |"
          " allocated by loading |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for type_name in args.types:
        r = measure(str(smollm2(type_name)), args.n_ctx, args.prompt, args.gen, args.threads)
        s, ld, u = r["start"], r["loaded"], r["used"]
        cells = [r["file"], r["kv"], s["VmRSS"], ld["VmRSS"], u["VmHWM"], u["VmHWM"] - s["VmRSS"],
                 u["RssFile"] - s["RssFile"], u["RssAnon"] - s["RssAnon"], ld["RssAnon"] - s["RssAnon"]]
        print(f"| {Path(r['path']).name} | " + " | ".join(f"{c / MB:.1f}" for c in cells) + " |")
    print("\nstart: the process with pyengine imported; mapped: pages of mapped files added (the weights, and the"
          "\nlibraries' code); allocated: anonymous memory added (KV cache, activations, the tokenizer's tables)")

if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        path, n_ctx, n_prompt, n_gen, n_threads = sys.argv[2:7]
        print(json.dumps(child(path, int(n_ctx), int(n_prompt), int(n_gen), int(n_threads))))
    else:
        main()
