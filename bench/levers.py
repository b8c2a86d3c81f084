"""What each speed lever of issue 6 gained: builds of successive commits, measured in one run.

    python bench/levers.py                 # builds the commits below (once) under /tmp/pyengine-levers
    python bench/levers.py --rounds 3
    python bench/levers.py --commits 7ae25b1,72360bf --cells matvec --rounds 6   # any builds, tg cells

Each commit is checked out as a git worktree and its native core built there (cmake + ninja); then
every cell (model, threads) runs every build in a fresh process, in alternating order round by round,
and the best pp / tg of the rounds is kept. Each process imports its own build (PYTHONPATH), which
needs a Python without an editable install of pyengine whose import hook would win (--python).
Prints a markdown table; bench/results/levers.md holds the last one.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "models"))

LEVERS = [("13855a0", "start: AVX2 tiles (4 rows x 2 tokens)"), ("9188a67", "+ packed Q4_0 / Q4_1"),
          ("3e4f6c5", "+ packed Q8_0"), ("01fbfca", "+ fused pool runs, RoPE table"),
          ("c935c49", "+ AVX2 attention kernel"), ("581e952", "+ two-stream matvec, no prefetch")]

RUN_ONE = r'''
import json, sys, time
import numpy as np
import pyengine
path, threads, pp, tg, reps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
m = pyengine.Model(path, n_ctx=max(pp, tg) + 8, n_threads=threads)
ids = np.random.default_rng(0).integers(0, m.n_vocab, max(pp, tg) + 1).tolist()
m.context().eval(ids[:8])
best_pp = best_tg = 0.0
for _ in range(reps):
    if pp:
        ctx = m.context(); t0 = time.perf_counter(); ctx.eval(ids[:pp]); best_pp = max(best_pp, pp / (time.perf_counter() - t0))
    ctx = m.context(); ctx.eval(ids[:1]); t0 = time.perf_counter()
    for i in range(tg): ctx.eval([ids[i + 1]])
    best_tg = max(best_tg, tg / (time.perf_counter() - t0))
print(json.dumps({"file": pyengine.__file__, "pp": best_pp, "tg": best_tg}))
'''


def build(commit: str, work: Path) -> Path:
    tree = work / commit
    if not list((tree / "pyengine").glob("_core*.so")):
        if not tree.exists():
            subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "-f", str(tree), commit], check=True,
                           capture_output=True)
        import pybind11
        subprocess.run(["cmake", "-S", str(tree), "-B", str(tree / "build"), "-G", "Ninja",
                        f"-Dpybind11_DIR={pybind11.get_cmake_dir()}"], check=True, capture_output=True)
        subprocess.run(["cmake", "--build", str(tree / "build")], check=True, capture_output=True)
        for so in (tree / "build").glob("_core*.so"):
            (tree / "pyengine" / so.name).write_bytes(so.read_bytes())
    return tree


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--work", default="/tmp/pyengine-levers")
    ap.add_argument("--python", default=sys.executable, help="a Python without an editable pyengine")
    ap.add_argument("--commits", default=None, help="comma-separated commits to compare instead of LEVERS "
                                                     "(labelled by their subjects)")
    ap.add_argument("--cells", choices=["levers", "matvec"], default="levers",
                    help="levers: SmolLM2 Q4_0 pp512/tg128 and the 1.1B Q4_0 pp128/tg32; matvec: generation "
                         "alone (tg64), the 1.1B Q4_K_M and Q4_0 and SmolLM2 Q4_0, 1 and 2 threads")
    args = ap.parse_args()
    from recipes import smollm2, synthetic_tinyllama

    levers = LEVERS
    if args.commits:
        levers = [(c, subprocess.run(["git", "-C", str(ROOT), "log", "-1", "--format=%s", c], check=True,
                                     capture_output=True, text=True).stdout.strip()[:60])
                  for c in args.commits.split(",")]

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    trees = {c: build(c, work) for c, _ in levers}
    script = work / "run_one.py"
    script.write_text(RUN_ONE)
    cells = [(smollm2("q4_0"), "SmolLM2 Q4_0", 1, 512, 128, 2), (smollm2("q4_0"), "SmolLM2 Q4_0", 2, 512, 128, 2),
             (synthetic_tinyllama("q4_0"), "1.1B Q4_0", 2, 128, 32, 1)]
    if args.cells == "matvec":
        cells = [(path, name, t, 0, 64, 2) for path, name in
                 ((synthetic_tinyllama("q4_k_m"), "1.1B Q4_K_M"), (synthetic_tinyllama("q4_0"), "1.1B Q4_0"),
                  (smollm2("q4_0"), "SmolLM2 Q4_0")) for t in (1, 2)]
    best: dict = {}
    for r in range(args.rounds):
        for path, name, t, pp, tg, reps in cells:
            for c, _ in (levers if r % 2 == 0 else levers[::-1]):
                env = dict(os.environ, PYTHONPATH=str(trees[c]))
                out = subprocess.run([args.python, str(script), str(path), str(t), str(pp), str(tg), str(reps)],
                                     env=env, cwd="/tmp", capture_output=True, text=True, check=True)
                d = json.loads(out.stdout)
                if not d["file"].startswith(str(trees[c])):
                    sys.exit(f"{args.python} imported {d['file']}, not the build of {c}: use --python")
                key = (name, t, c)
                old = best.get(key, (0.0, 0.0))
                best[key] = (max(old[0], d["pp"]), max(old[1], d["tg"]))
                print(f"{name} t={t} {c}: pp{pp} {d['pp']:.1f} tg{tg} {d['tg']:.1f}", file=sys.stderr, flush=True)
    options = (f" --commits {args.commits}" if args.commits else "") + (f" --cells {args.cells}" if args.cells != "levers" else "")
    print(f"`python bench/levers.py{options} --rounds {args.rounds}`: best of {args.rounds} rounds, tokens/s\n")
    print("| model | threads | build | pp | tg |")
    print("| --- | ---: | --- | ---: | ---: |")
    for path, name, t, pp, tg, reps in cells:
        for c, label in levers:
            v = best[(name, t, c)]
            pp_cell = f"{v[0]:.1f} (pp{pp})" if pp else "-"
            print(f"| {name} | {t} | {label} ({c}) | {pp_cell} | {v[1]:.1f} (tg{tg}) |")


if __name__ == "__main__":
    main()
