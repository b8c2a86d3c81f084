"""Coverage-guided fuzzing of everything that reads a GGUF file: GGUFReader, Tokenizer.from_gguf, Model
(the native model built over the tensors, then two tokens evaluated) and `info`'s check, with atheris
(libFuzzer for Python; a development tool, not a dependency of pyengine: pip install atheris).

    python bench/fuzz/fuzz_gguf.py --seconds 600              # fuzz for 10 minutes, then keep the corpus
    python bench/fuzz/fuzz_gguf.py --seconds 60 --no-keep     # fuzz only
    python bench/fuzz/fuzz_gguf.py --seconds 0 --work DIR     # only merge DIR/corpus into the kept corpus

Every input must end in a GGUFError or load; anything else (another exception, a crash, a timeout of
--timeout seconds, more than --rss-mb of memory) stops the run and leaves the input in --work as
crash-* / timeout-* / oom-*. The seeds are two small models (byte-level BPE and SentencePiece,
quantized weights, about 16 KB each) and their mutants from tests/gguf_mutants.py. At the end the
inputs found are merged (libFuzzer's -merge=1 keeps the smallest inputs that reach all the coverage
found) into --keep, by default tests/data/fuzz_corpus/, which tests/test_hostile_models.py runs
as regression tests; only files up to --keep-max-bytes are kept.

The Python code is instrumented (atheris.instrument_all); the native core is not, so coverage
guides the parsing and checks in Python, and the native code is exercised through them.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))

SEEDS = {  # small models: every section present, a few KB of tensors
    "bpe": dict(n_layers=1, n_embd=32, n_ff=32, n_heads=2, n_kv_heads=1, n_vocab=257, weight_type="q8_0",
                embd_type="q4_0", tied=True, seed=1),
    "spm": dict(n_layers=1, n_embd=32, n_ff=32, n_heads=2, n_kv_heads=1, n_vocab=259, weight_type="q4_1",
                embd_type="q4_0", tied=True, vocab="spm", seed=2),
}


def write_seeds(directory: Path) -> list[str]:
    """The seed models and their mutants in `directory`; returns the metadata keys, for the dictionary."""
    from gguf_mutants import mutants
    from tiny_models import write_tiny_llama

    from pyengine.gguf import GGUFReader

    keys: set[str] = set()
    for name, kwargs in SEEDS.items():
        path = write_tiny_llama(directory / f"seed-{name}.gguf", **kwargs)
        with GGUFReader(path) as r:
            keys |= set(r.metadata) | set(r.tensors)
        for mutant in mutants(path):
            data = mutant.data
            (directory / hashlib.sha1(data).hexdigest()).write_bytes(data)
    return sorted(keys)


def write_dictionary(path: Path, keys: list[str]) -> None:
    """libFuzzer's dictionary: the keys and tensor names, and the magic, which mutations may insert."""
    entries = ["GGUF"] + keys
    path.write_text("".join(f'"{e}"\n' for e in entries if '"' not in e and "\\" not in e))


# --- the target, run inside the libFuzzer process ---


def fuzz_target(argv0: str) -> None:
    import atheris

    import pyengine
    from pyengine import GGUFError, Tokenizer
    from pyengine.gguf import GGUFReader
    from pyengine.info import load_error
    from pyengine.sampling import SamplingError

    # Every Python function loaded so far, pyengine's among them, gets coverage callbacks (an import hook
    # would miss modules that an editable install's loader brings in).
    atheris.instrument_all()

    # a file in memory-backed storage where there is one: the reader maps files, it does not take bytes
    scratch = Path(tempfile.mkdtemp(dir="/dev/shm" if os.path.isdir("/dev/shm") else None))
    path = scratch / "input.gguf"

    def one_input(data: bytes) -> None:
        path.write_bytes(data)
        try:
            with GGUFReader(path) as reader:
                load_error(path, reader)
        except GGUFError:
            pass
        try:
            Tokenizer.from_gguf(path)
        except GGUFError:
            pass
        try:
            model = pyengine.Model(path, n_ctx=8, n_threads=1)
        except GGUFError:
            return
        ids = [i % model.n_vocab for i in (1, 2)]
        model.logits(ids)
        try:
            model.generate(ids, max_tokens=2, temperature=0)
        except SamplingError:  # weights that are not finite give NaN logits
            pass

    # libFuzzer starts copies of itself from argv[0] (to merge): the executable wrapper, not this file
    atheris.Setup([argv0] + sys.argv[1:], one_input)
    try:
        atheris.Fuzz()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


# --- the driver ---


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=300, help="how long to fuzz (default 300; 0: only merge)")
    parser.add_argument("--work", type=Path, default=None, help="working corpus directory (default: a temporary one)")
    parser.add_argument("--keep", type=Path, default=ROOT / "tests" / "data" / "fuzz_corpus",
                        help="where the minimised corpus goes (default tests/data/fuzz_corpus)")
    parser.add_argument("--keep-max-bytes", type=int, default=4096, help="largest file kept (default 4096)")
    parser.add_argument("--max-len", type=int, default=24576, help="largest input tried (default 24576)")
    parser.add_argument("--timeout", type=int, default=10, help="seconds one input may take (default 10)")
    parser.add_argument("--rss-mb", type=int, default=2048, help="memory one process may use (default 2048)")
    parser.add_argument("--no-keep", action="store_true", help="fuzz only; leave --keep as it is")
    args = parser.parse_args()

    work = args.work or Path(tempfile.mkdtemp(prefix="pyengine-fuzz-"))
    corpus, seeds = work / "corpus", work / "seeds"
    for d in (corpus, seeds):
        d.mkdir(parents=True, exist_ok=True)
    keys = write_seeds(seeds)
    dictionary = work / "gguf.dict"
    write_dictionary(dictionary, keys)
    libfuzzer = [f"-max_len={args.max_len}", f"-timeout={args.timeout}", f"-rss_limit_mb={args.rss_mb}",
                 f"-malloc_limit_mb={args.rss_mb}", f"-dict={dictionary}", f"-artifact_prefix={work}/"]
    worker = work / "fuzz-target"  # libFuzzer runs copies of itself through its argv[0]: an executable
    worker.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{Path(__file__).resolve()}" --worker "$0" "$@"\n')
    worker.chmod(0o755)

    if args.seconds > 0:
        print(f"fuzzing for {args.seconds} s in {work} ({len(list(seeds.iterdir()))} seeds)", flush=True)
        fuzz = subprocess.run([str(worker)] + libfuzzer + [f"-max_total_time={args.seconds}", "-print_final_stats=1",
                                                           str(corpus), str(seeds)], cwd=work)
        failures = sorted(p.name for p in work.iterdir() if p.name.startswith(("crash-", "timeout-", "oom-", "leak-")))
        if fuzz.returncode != 0 or failures:
            print(f"fuzzing stopped (exit {fuzz.returncode}): {', '.join(failures) or 'see the log above'} in {work}")
            return 1
    if args.no_keep:
        return 0

    # Merge what the run found with what was kept before: the smallest inputs that keep all the coverage.
    merged = work / "merged"
    shutil.rmtree(merged, ignore_errors=True)
    merged.mkdir()
    previous = [str(args.keep)] if args.keep.is_dir() else []
    merge = subprocess.run([str(worker)] + libfuzzer + ["-merge=1", str(merged), *previous, str(corpus), str(seeds)],
                           cwd=work, capture_output=True, text=True)
    if merge.returncode != 0 or not any(merged.iterdir()):
        print(f"merging failed (exit {merge.returncode}):\n{merge.stderr[-2000:]}")
        return 1
    kept = [p for p in merged.iterdir() if p.stat().st_size <= args.keep_max_bytes]
    args.keep.mkdir(parents=True, exist_ok=True)
    for old in args.keep.iterdir():
        old.unlink()
    for p in kept:
        data = p.read_bytes()
        (args.keep / f"{hashlib.sha1(data).hexdigest()[:16]}.gguf").write_bytes(data)
    total = sum(p.stat().st_size for p in kept)
    print(f"kept {len(kept)} of {len(list(merged.iterdir()))} inputs ({total / 1024:.0f} KiB) in {args.keep}")
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["--worker"]:
        argv0 = sys.argv[2]
        del sys.argv[1:3]
        fuzz_target(argv0)
    else:
        sys.exit(main())
