"""The importance matrix: what `collect` gathers against a plain numpy forward pass, llama.cpp's file
format (read back by gguf-py, an independent reader), bad files refused, the type rules that change
with an imatrix, and `quantize --imatrix` writing llama.cpp's bytes (tests/data/
make_llamacpp_imatrix_golden.py: llama.cpp's quantizer given the same importance matrix)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import pyengine
import pyengine.perplexity
from pyengine.gguf import GGMLType, GGUFError, GGUFWriter
from pyengine.imatrix import Imatrix, collect
from pyengine.requantize import HParams, choose_tensor_types, quantize_model
from reference_model import ReferenceModel
from tiny_models import write_tiny_llama

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(__file__).parent / "data"
sys.path.insert(0, str(ROOT / "models"))
sys.path.insert(0, str(DATA))
from make_llamacpp_imatrix_golden import tensor_hashes  # noqa: E402
from recipes import smollm2  # noqa: E402

WORDS = ("the quick brown fox jumps over a lazy dog while seven wizards quietly hex the jovial boxer "
         "and a sphinx of black quartz judges my vow ") * 40


class Recorder(ReferenceModel):
    """The numpy reference forward pass, noting every matrix product's input: float64 sums of squares
    per column and token counts, under llama.cpp's names (one entry for a fused tensor)."""

    def __init__(self, path):
        super().__init__(path)
        self.sums, self.counts = {}, {}

    def _matmul(self, name, x, quantize_activations):
        if name.startswith("blk.") and len(x) >= 16:
            x64 = np.asarray(x, np.float64)
            self.sums[name] = self.sums.get(name, 0) + (x64 * x64).sum(axis=0)
            self.counts[name] = self.counts.get(name, 0) + len(x)
        return super()._matmul(name, x, quantize_activations)


@pytest.mark.parametrize("arch", ["llama", "phi3"])
def test_collect_matches_a_numpy_forward_pass(tmp_path, arch):
    path = write_tiny_llama(tmp_path / f"{arch}.gguf", arch=arch, n_ctx_train=64)
    model = pyengine.Model(path, n_ctx=64, n_threads=2)
    imatrix = collect(model, WORDS, n_ctx=32, n_chunks=3)
    chunks = pyengine.perplexity.chunk_tokens(model, WORDS, 32, 3)
    reference = Recorder(path)
    for chunk in chunks:
        reference.hidden(chunk)
    assert imatrix.chunk_count == 3 and imatrix.chunk_size == 32
    assert set(imatrix.entries) == set(reference.sums)
    if arch == "phi3":
        assert "blk.0.attn_qkv.weight" in imatrix.entries and "blk.0.ffn_up.weight" in imatrix.entries
        assert "blk.0.ffn_gate.weight" not in imatrix.entries
    for name, (sums, count) in imatrix.entries.items():
        assert count == reference.counts[name] == 96
        np.testing.assert_allclose(sums, reference.sums[name], rtol=2e-4, atol=1e-6, err_msg=name)
        np.testing.assert_allclose(imatrix.importance(name), reference.sums[name] / 96, rtol=2e-4, atol=1e-6)


def test_a_llama_imatrix_file_is_read_and_agrees(tmp_path):
    """llama.cpp's llama-imatrix on the same tiny model and text (tests/data/make_llamacpp_imatrix_golden.py
    --bin): its file reads, and pyengine's collection gives the same entries, counts and values (up to
    the two engines' float rounding)."""
    theirs = Imatrix.load(DATA / "llamacpp_imatrix_tiny.gguf")
    model = pyengine.Model(write_tiny_llama(tmp_path / "tiny.gguf", n_ctx_train=64), n_ctx=64)
    ours = collect(model, WORDS, n_ctx=32, n_chunks=3)
    assert (theirs.chunk_count, theirs.chunk_size) == (ours.chunk_count, ours.chunk_size) == (3, 32)
    assert theirs.entries.keys() == ours.entries.keys()
    for name, (sums, count) in theirs.entries.items():
        assert count == ours.entries[name][1]
        np.testing.assert_allclose(ours.entries[name][0], sums, rtol=0, atol=2e-3 * sums.max(), err_msg=name)


def test_the_file_is_llama_cpps_format(tmp_path):
    gguf = pytest.importorskip("gguf")
    entries = {"blk.1.ffn_down.weight": (np.arange(8, dtype=np.float32), 48),
               "blk.0.attn_q.weight": (np.full(4, 2.5, np.float32), 16)}
    Imatrix(entries, chunk_count=3, chunk_size=16, datasets=["calib.txt"]).save(tmp_path / "im.gguf")
    r = gguf.GGUFReader(str(tmp_path / "im.gguf"))
    assert r.fields["general.type"].contents() == "imatrix"
    assert r.fields["imatrix.datasets"].contents() == ["calib.txt"]
    assert r.fields["imatrix.chunk_count"].contents() == 3 and r.fields["imatrix.chunk_size"].contents() == 16
    assert [t.name for t in r.tensors] == ["blk.0.attn_q.weight.in_sum2", "blk.0.attn_q.weight.counts",
                                           "blk.1.ffn_down.weight.in_sum2", "blk.1.ffn_down.weight.counts"]
    by_name = {t.name: t for t in r.tensors}
    assert list(by_name["blk.1.ffn_down.weight.in_sum2"].shape) == [8, 1]
    assert list(by_name["blk.1.ffn_down.weight.counts"].shape) == [1, 1]
    assert by_name["blk.1.ffn_down.weight.counts"].data.ravel().tolist() == [48.0]
    back = Imatrix.load(tmp_path / "im.gguf")
    assert back.chunk_count == 3 and back.datasets == ["calib.txt"]
    np.testing.assert_array_equal(back.importance("blk.1.ffn_down.weight"), np.arange(8, dtype=np.float32) / np.float32(48))
    assert back.importance("blk.9.attn_k.weight") is None
    zero = Imatrix({"blk.0.attn_q.weight": (np.ones(4, np.float32), 0)})
    np.testing.assert_array_equal(zero.importance("blk.0.attn_q.weight"), np.ones(4))  # llama-quantize's reading


def write(path, tensors, **metadata):
    with GGUFWriter(path) as w:
        for key, value in metadata.items():
            w.add_string(key, value) if isinstance(value, str) else w.add_uint32(key, value)
        for name, data in tensors.items():
            w.add_tensor(name, np.asarray(data, np.float32), GGMLType.F32)
        w.write()
    return path


@pytest.mark.parametrize("tensors, metadata, message", [
    ({"token_embd.weight": np.zeros((4, 8))}, {"general.type": "model"}, "not an imatrix"),
    ({"a.in_sum2": np.ones((1, 8))}, {"general.type": "imatrix"}, "no counts"),
    ({"a.counts": np.ones((1, 1))}, {"general.type": "imatrix"}, "no sums"),
    ({"a.in_sum2": -np.ones((1, 8)), "a.counts": np.ones((1, 1))}, {"general.type": "imatrix"}, "nonnegative"),
    ({"a.in_sum2": np.ones((2, 8)), "a.counts": np.ones((2, 1))}, {"general.type": "imatrix"}, "experts"),
    ({"a.in_sum2": np.ones((1, 8)), "a.counts": np.ones((1, 1)), "b.weight": np.ones((1, 8))},
     {"general.type": "imatrix"}, "neither"),
])
def test_bad_imatrix_files_are_refused(tmp_path, tensors, metadata, message):
    path = write(tmp_path / "bad.gguf", tensors, **metadata)
    with pytest.raises(GGUFError, match=message):
        Imatrix.load(path)


def test_the_type_rules_that_change_with_an_imatrix():
    hp = HParams(n_layer=16, n_head=8, n_head_kv=8)
    tensors = [(f"blk.{i}.ffn_down.weight", (256, 256)) for i in range(16)]
    plain = choose_tensor_types(tensors, hp, "iq4_xs")
    weighted = choose_tensor_types(tensors, hp, "iq4_xs", imatrix=True)
    assert plain["blk.0.ffn_down.weight"] == "q5_k" and weighted["blk.0.ffn_down.weight"] == "iq4_xs"
    assert choose_tensor_types(tensors, hp, "q4_0")["blk.1.ffn_down.weight"] == "q4_0"
    assert choose_tensor_types(tensors, hp, "q4_0", imatrix=True)["blk.1.ffn_down.weight"] == "q4_1"
    assert choose_tensor_types(tensors, hp, "q5_0", imatrix=True)["blk.1.ffn_down.weight"] == "q5_1"
    assert choose_tensor_types(tensors, hp, "q4_0", imatrix=True)["blk.2.ffn_down.weight"] == "q4_0"


GOLDEN = json.loads((DATA / "llamacpp_imatrix_golden.json").read_text())


@pytest.mark.parametrize("preset", list(GOLDEN["presets"]))
def test_quantize_with_an_imatrix_writes_llama_cpps_bytes(tmp_path, preset):
    imatrix = Imatrix.load(DATA / GOLDEN["imatrix"])
    report = quantize_model(smollm2("f32"), tmp_path / "out.gguf", preset, imatrix=imatrix)
    ours, theirs = tensor_hashes(tmp_path / "out.gguf"), GOLDEN["presets"][preset]
    assert ours.keys() == theirs.keys()
    differ = [name for name in theirs if ours[name] != theirs[name]]
    assert not differ, f"{len(differ)} of {len(theirs)} tensors differ from llama.cpp's: {differ[:8]}"
    assert len(report.weighted) >= 150  # the layer matrices, but those in Q8_0 (no weighted search there)


def test_imatrix_and_quantize_commands(tmp_path):
    model = write_tiny_llama(tmp_path / "tiny.gguf", n_embd=256, n_ff=512, n_ctx_train=64)
    text = tmp_path / "calib.txt"
    text.write_text(WORDS)
    out = tmp_path / "im.gguf"
    run = [sys.executable, "-m", "pyengine"]
    r = subprocess.run(run + ["imatrix", "-m", str(model), "-f", str(text), "-o", str(out), "-c", "32",
                              "--chunks", "2"], capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert r.returncode == 0, r.stderr
    imatrix = Imatrix.load(out)
    assert imatrix.chunk_count == 2 and imatrix.datasets == ["calib.txt"] and len(imatrix.entries) == 2 * 7
    q = tmp_path / "q.gguf"
    r = subprocess.run(run + ["quantize", str(model), str(q), "q4_k_m", "--imatrix", str(out)], capture_output=True,
                       text=True, cwd=tmp_path, timeout=600)
    assert r.returncode == 0 and "importance-weighted: 14 tensors" in r.stdout, r.stderr
    assert pyengine.Model(q).generate("the", max_tokens=4, temperature=0).tokens
    for bad, message in ((["imatrix", "-m", str(model), "-f", str(text), "-c", "8"], "at least 16"),
                         (["quantize", str(model), str(q), "q4_k_m", "--imatrix", str(model)], "not an imatrix"),
                         (["quantize", str(model), str(q), "q4_k_m", "--imatrix", "/no/such"], "no such file")):
        r = subprocess.run(run + bad, capture_output=True, text=True, cwd=tmp_path, timeout=600)
        assert r.returncode == 1 and message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_an_imatrix_of_another_model_is_refused(tmp_path):
    model = write_tiny_llama(tmp_path / "tiny.gguf", n_embd=256, n_ff=512)
    wrong = Imatrix({"blk.0.attn_q.weight": (np.ones(64, np.float32), 10)})
    with pytest.raises(ValueError, match="another model"):
        quantize_model(model, tmp_path / "q.gguf", "q4_k_m", imatrix=wrong)
    assert not (tmp_path / "q.gguf").exists()
