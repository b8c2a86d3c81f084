"""Hostile model files: a corpus of mutants of small models of each architecture (tests/gguf_mutants.py: truncations in
every section, absurd counts, lengths, dims and offsets, unknown types, missing and duplicate tensors,
contradicting hyper-parameters, token ids outside the vocabulary, ...). Every loader, given each mutant,
refuses it with a one-line GGUFError that names the problem, or loads it where the change leaves a
valid file; a loaded model then evaluates without crashing. Nothing else may happen: another
exception, a crash, a hang, or a large allocation.

The inputs that bench/fuzz/fuzz_gguf.py found interesting (tests/data/fuzz_corpus/) run the same way.

    python tests/test_hostile_models.py      prints the corpus size and the outcomes per loader
"""

from __future__ import annotations

import collections
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

import pytest

import pyengine
from pyengine import GGUFError, Tokenizer
from pyengine.gguf import GGUFReader
from pyengine.info import info
from pyengine.sampling import SamplingError
from pyengine.requantize import HParams

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gguf_mutants import GROUPS, check_words, mutants  # noqa: E402
from tiny_models import write_tiny_llama  # noqa: E402

# Small models: byte-level BPE with quantized weights, SentencePiece with tied F32 weights, and
# the other architectures.
BASES = {
    "bpe-q8_0": dict(n_layers=1, n_embd=32, n_ff=64, n_heads=4, n_kv_heads=2, weight_type="q8_0", embd_type="q4_0",
                     seed=3),
    "spm-f32": dict(n_layers=2, n_embd=32, n_ff=64, n_heads=2, n_kv_heads=1, n_vocab=280, vocab="spm", tied=True,
                    seed=4),
    # the other architectures' tensors and keys: gemma3's norms, head_dim and sliding window; phi3's
    # fused tensors and LongRoPE factors
    "gemma3-q8_0": dict(arch="gemma3", n_layers=2, n_embd=32, n_ff=64, n_heads=2, n_kv_heads=1, head_dim=32,
                        sliding_window=3, weight_type="q8_0", vocab="spm", n_vocab=280, tied=True, seed=5),
    "phi3-f32": dict(arch="phi3", n_layers=1, n_embd=32, n_ff=64, n_heads=2, n_kv_heads=2, n_rot=8, rope_factors=True,
                     n_ctx_orig=8, seed=6),
}

LOADERS = {
    "GGUFReader": lambda path: GGUFReader(path).close(),
    "Tokenizer.from_gguf": Tokenizer.from_gguf,
    "Model": lambda path: pyengine.Model(path, n_ctx=16, n_threads=1),
    "info": lambda path: check_info(info(path)),  # as `python -m pyengine info` does
    "quantize's type choice": lambda path: quantize_hparams(path),  # what quantize reads before any tensor
}


def quantize_hparams(path):
    with GGUFReader(path) as r:
        return HParams.from_metadata(r.metadata, str(r.path))


def check_info(d: dict) -> dict:
    if d["error"]:
        raise GGUFError(d["error"])
    return d


def run_loaders(path: Path, mutant) -> dict[str, str]:
    """loader -> "GGUFError", "loaded" or "other: ..." (an exception of another type) for one mutant
    written at path. Checks each GGUFError's message, and evaluates a loaded model."""
    outcomes = {}
    for name, load in LOADERS.items():
        try:
            loaded = load(path)
        except Exception as e:  # noqa: BLE001  (anything but a GGUFError is reported as "other")
            if not isinstance(e, GGUFError):
                outcomes[name] = f"other: {type(e).__name__}: {e}"
                continue
            message = str(e)
            assert "\n" not in message and str(path) in message, (mutant.name, name, message)
            if name == "Model":  # the loader that reads everything: its message names the problem
                assert check_words(message, mutant.words), (mutant.name, message, mutant.words)
            outcomes[name] = "GGUFError"
            continue
        if name == "Model":
            assert mutant.words is None, f"{mutant.name}: loaded, but {mutant.words} was expected"
            evaluate(loaded)
        outcomes[name] = "loaded"
    return outcomes


def evaluate(model) -> None:
    """A loaded mutant runs: logits of a few tokens, and two greedy tokens (weights that are not finite
    give NaN logits, which the sampler refuses with a ValueError)."""
    ids = [i % model.n_vocab for i in (1, 2, 3)]
    assert model.logits(ids).shape == (3, model.n_vocab)
    try:
        model.generate(ids, max_tokens=2, temperature=0)
    except SamplingError:
        pass


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    d = tmp_path_factory.mktemp("bases")
    return {name: write_tiny_llama(d / f"{name}.gguf", **kwargs) for name, kwargs in BASES.items()}


@pytest.mark.parametrize("group", list(GROUPS))
@pytest.mark.parametrize("base", list(BASES))
def test_every_mutant_is_refused_or_loads(tmp_path, bases, base, group):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    path = tmp_path / "mutant.gguf"
    counts = collections.Counter()
    for mutant in mutants(bases[base], groups=[group]):
        path.write_bytes(mutant.data)
        start = time.perf_counter()
        outcomes = run_loaders(path, mutant)
        assert set(outcomes.values()) <= {"GGUFError", "loaded"}, (mutant.name, outcomes)
        assert time.perf_counter() - start < 10, f"{mutant.name}: loading took {time.perf_counter() - start:.1f} s"
        counts[outcomes["Model"]] += 1
    assert counts["GGUFError"] > 0
    # no mutant made a loader allocate much: the peak RSS (kB) grew by less than 200 MB
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200_000


def test_unchanged_bases_load(bases):
    for path in bases.values():
        m = pyengine.Model(path, n_threads=1)
        assert m.logits([1, 2]).shape == (2, m.n_vocab)


@pytest.mark.parametrize("case", ["cut at 300 ", "token_embd.weight: dim 2**63", "bos_token_id = 2147483648",
                                  "head_count 3,", "block_count 2147483647", "n_dims 5"])
def test_commands_refuse_mutants_in_one_line(tmp_path, bases, case):
    mutant = next(m for m in mutants(bases["bpe-q8_0"]) if case in m.name and m.words is not None)
    path = tmp_path / "mutant.gguf"
    path.write_bytes(mutant.data)
    for args in (["info", str(path)], ["generate", "-m", str(path), "-p", "x", "-n", "1", "-t", "1"]):
        proc = subprocess.run([sys.executable, "-m", "pyengine", *args], capture_output=True, text=True, timeout=120,
                              cwd=tempfile.gettempdir())
        assert proc.returncode == 1, (mutant.name, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("pyengine: error: ") and str(path) in lines[0], proc.stderr


FUZZ_CORPUS = Path(__file__).resolve().parent / "data" / "fuzz_corpus"  # kept by bench/fuzz/fuzz_gguf.py


@pytest.mark.parametrize("name", sorted(p.name for p in FUZZ_CORPUS.glob("*.gguf")))
def test_fuzz_corpus(tmp_path, name):
    """The inputs the fuzzer found interesting: each is refused with a GGUFError or loads, quickly."""
    path = tmp_path / name
    path.write_bytes((FUZZ_CORPUS / name).read_bytes())
    start = time.perf_counter()
    outcomes = run_loaders(path, MayLoad(name))
    assert set(outcomes.values()) <= {"GGUFError", "loaded"}, outcomes
    assert time.perf_counter() - start < 10


class MayLoad(NamedTuple):
    """A fuzz input: no expected words; it may load."""

    name: str
    words: None = None


def test_the_fuzz_corpus_is_there():
    assert len(list(FUZZ_CORPUS.glob("*.gguf"))) >= 10


def outcome_table() -> str:
    """Corpus size and outcomes per loader, for both bases."""
    with tempfile.TemporaryDirectory() as d:
        counts: dict[str, collections.Counter] = {name: collections.Counter() for name in LOADERS}
        n = 0
        for base, kwargs in BASES.items():
            src = write_tiny_llama(Path(d) / f"{base}.gguf", **kwargs)
            path = Path(d) / "mutant.gguf"
            for mutant in mutants(src):
                n += 1
                path.write_bytes(mutant.data)
                for name, outcome in run_loaders(path, mutant).items():
                    counts[name][outcome] += 1
    lines = [f"{n} mutants"] + [f"  {name:20s} GGUFError {c['GGUFError']:5d}   loaded {c['loaded']:5d}   "
                                f"other {n - c['GGUFError'] - c['loaded']}" for name, c in counts.items()]
    lines += [f"  other: {o}" for c in counts.values() for o in c if o.startswith("other")]
    fuzz = collections.Counter()
    with tempfile.TemporaryDirectory() as d:
        for p in sorted(FUZZ_CORPUS.glob("*.gguf")):
            path = Path(d) / p.name
            path.write_bytes(p.read_bytes())
            outcomes = run_loaders(path, MayLoad(p.name))
            fuzz.update(f"{loader} {outcome.split(':')[0]}" for loader, outcome in outcomes.items())
    lines += [f"fuzz corpus ({len(list(FUZZ_CORPUS.glob('*.gguf')))} files): "
              + ", ".join(f"{k} {v}" for k, v in sorted(fuzz.items()))]
    return "\n".join(lines)


if __name__ == "__main__":
    print(outcome_table())
