"""Re-quantizing model files with llama.cpp's per-tensor type rules (pyengine.requantize)."""

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T
from gguf import quants

import pyengine
from pyengine.gguf import GGUFReader
from pyengine.requantize import quantize_model

from tiny_models import write_tiny_llama


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    return write_tiny_llama(tmp_path_factory.mktemp("src") / "src.gguf", weight_type="f32", tied=True)


@pytest.mark.parametrize("target", ["q4_0", "q4_1", "q8_0", "f16", "f32"])
def test_types_follow_llamacpp_rules_and_bytes_match_reference(tmp_path, source, target):
    out = tmp_path / f"{target}.gguf"
    report = quantize_model(source, out, target)
    src, dst = GGUFReader(source), GGUFReader(out)
    assert dst.metadata["general.file_type"] == {"f32": 0, "f16": 1, "q4_0": 2, "q4_1": 3, "q8_0": 7}[target]
    for name, info in dst.tensors.items():
        if len(info.shape) == 1:
            assert info.type.name == "F32", name
        elif name == "token_embd.weight" and target in ("q4_0", "q4_1"):
            # tied output, 64 % 256 != 0: llama.cpp keeps it at Q8_0
            assert info.type.name == "Q8_0"
            assert f"{name} (q8_0)" in report.kept_higher
        else:
            assert info.type.name == target.upper(), name
        if info.type.name in ("Q4_0", "Q4_1", "Q8_0"):
            values = np.asarray(src.tensors[name].data, np.float32)
            expected = quants.quantize(values, getattr(T, info.type.name)).view(np.uint8)
            np.testing.assert_array_equal(np.asarray(info.data).reshape(expected.shape), expected)
    assert report.output_bytes == out.stat().st_size
    assert set(src.metadata) - {"general.file_type"} <= set(dst.metadata)
    # the file runs, and close to its source
    a, b = pyengine.Model(source).logits([1, 2, 3, 4]), pyengine.Model(out).logits([1, 2, 3, 4])
    assert np.abs(a - b).max() / np.abs(a).max() < {"f32": 1e-6, "f16": 1e-2}.get(target, 0.5)


def test_overrides_and_pure(tmp_path, source):
    report = quantize_model(source, tmp_path / "pure.gguf", "q4_0", pure=True)
    assert report.types["token_embd.weight"] == "q4_0"
    report = quantize_model(source, tmp_path / "o.gguf", "q4_0", output_tensor_type="f16")
    assert report.types["token_embd.weight"] == "f16"


def test_bad_type_leaves_nothing(tmp_path, source):
    with pytest.raises(ValueError, match="unknown tensor type"):
        quantize_model(source, tmp_path / "x.gguf", "q9_9")
    assert not (tmp_path / "x.gguf").exists()


def test_quantize_holds_one_tensor_at_a_time(tmp_path):
    """quantize_model hands the writer each tensor as a function (GGUFWriter.add_tensor), so its new
    bytes exist only while they are written: the memory taken in the process at its peak (numpy's
    arrays are traced) stays far below the output's size, as llama-quantize's does, instead of
    holding the whole output before writing it (8 GB for a 7B model's Q8_0)."""
    tracemalloc = pytest.importorskip("tracemalloc")
    source = write_tiny_llama(tmp_path / "src.gguf", n_layers=12, n_embd=256, n_ff=512, n_vocab=256, tied=True)
    tracemalloc.start()
    try:
        quantize_model(source, tmp_path / "out.gguf", "q8_0")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    out_bytes = (tmp_path / "out.gguf").stat().st_size
    with GGUFReader(tmp_path / "out.gguf") as r:
        largest = max(t.nbytes for t in r.tensors.values())
    assert largest < out_bytes / 10
    assert peak < out_bytes / 3, (peak, out_bytes, largest)
