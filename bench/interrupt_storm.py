"""Ctrl-C at random moments: runs a pyengine command many times, sends SIGINT to each run at a random
delay after the process has loaded pyengine's native core, and counts how the runs end. Every run must
end with exit 0 and nothing on stderr (the command finished first) or exit 130 and exactly the line
`pyengine: interrupted`; anything else is printed with its stderr.

    python bench/interrupt_storm.py                         # quantize a tiny model to nf4_dq, 1000 runs
    python bench/interrupt_storm.py --runs 3000 --window 0.05 0.25
    python bench/interrupt_storm.py --command info

tests/test_interrupt.py sends a handful of signals per command; the rare outcomes (a signal landing in
a lazily imported module's dataclass, in importlib's weakref callbacks) show up about once in a
thousand runs, which is what this is for. Pick the window so that both outcomes occur: a run that is
never interrupted, or always, tests less. Linux only (it watches /proc/PID/maps).
"""

from __future__ import annotations

import argparse
import collections
import os
import random
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_interrupt import interrupted, pyengine_process  # noqa: E402  (the tests' own way to send it)
from tiny_models import write_tiny_llama  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--command", choices=["quantize", "info"], default="quantize")
    ap.add_argument("--runs", type=int, default=1000)
    ap.add_argument("--window", type=float, nargs=2, default=(0.0, 0.25), metavar=("FROM", "TO"),
                    help="the signal comes this many seconds (uniform) after the core is loaded")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory() as d:
        model = write_tiny_llama(Path(d) / "tiny.gguf", n_layers=2, n_embd=128, n_ff=256, n_vocab=400,
                                 n_ctx_train=4096)
        out = Path(d) / "out.gguf"
        command = (["quantize", str(model), str(out), "nf4_dq"] if args.command == "quantize"
                   else ["info", str(model)])
        outcomes: collections.Counter = collections.Counter()
        odd = 0
        for _ in range(args.runs):
            out.unlink(missing_ok=True)
            after = rng.uniform(*args.window)
            code, _, err, _ = interrupted(pyengine_process(*command), after=after)
            outcomes[code] += 1
            left = [p for p in os.listdir(d) if p.endswith(".tmp")]
            clean = ((code == 0 and not err) or
                     (code == 130 and err == "pyengine: interrupted\n" and not out.exists()))
            if not clean or left:
                odd += 1
                print(f"exit {code} {after * 1000:.0f} ms after the core loaded; left {left}; "
                      f"stderr: {err[-2000:]!r}")
    print(f"{args.runs} runs of `pyengine {args.command}`: " +
          ", ".join(f"exit {code}: {n}" for code, n in sorted(outcomes.items())) + f"; not clean: {odd}")
    return 1 if odd else 0


if __name__ == "__main__":
    sys.exit(main())
