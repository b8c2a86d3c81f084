"""The tiny qwen2 / qwen3 / gemma3 / phi3 models (tests/arch_models.py) and llama.cpp's golden outputs on
them (tests/data/llamacpp_arch_golden.npz): regenerating a model gives the weights llama.cpp ran, and the
numpy reference (tests/reference_model.py) reproduces llama.cpp's hidden states. No engine here: these
hold the reference side that engine tests compare with."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from arch_models import tiny_arch_shape, vocab_gguf, write_tiny_arch
from reference_model import ReferenceModel

DATA = Path(__file__).parent / "data"
GOLDEN = np.load(DATA / "llamacpp_arch_golden.npz")
VARIANTS = [str(v) for v in GOLDEN["variants"]]
# llama.cpp against the float64 reference: max |difference| / RMS of the hidden states. gemma3's GELU
# goes through a float16 table in llama.cpp, whose rounding steps the reference's float64 inputs fall on
# either side of now and then.
TOLERANCE = {"gemma3": 5e-3}


def tensor_sha256(path):
    sys.path.insert(0, str(DATA))
    from make_llamacpp_golden import tensor_sha256 as sha

    return sha(path)


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    cache = {}

    def get(variant):
        arch, shape = str(GOLDEN[f"{variant}_arch"]), json.loads(str(GOLDEN[f"{variant}_shape"]))
        key = (arch, tuple(sorted(shape.items())))
        if key not in cache:
            path = tmp_path_factory.mktemp("arch") / f"{variant}.gguf"
            cache[key] = write_tiny_arch(path, arch, vocab_gguf=vocab_gguf(arch), seed=int(GOLDEN[f"{variant}_seed"]),
                                         **shape)
        return cache[key]

    return get


@pytest.mark.parametrize("variant", VARIANTS)
def test_regenerated_model_matches_llamacpp_golden(written, variant):
    path = written(variant)
    assert tensor_sha256(path) == str(GOLDEN[f"{variant}_tensor_sha256"]), "the weights differ from those llama.cpp ran"
    ids = GOLDEN[f"{variant}_ids"].tolist()
    n_ctx = int(GOLDEN[f"{variant}_n_ctx"])
    theirs = GOLDEN[f"{variant}_hidden"].astype(np.float64)
    ref = ReferenceModel(path, n_ctx=-(-n_ctx // 256) * 256)
    hidden = ref.hidden(ids, kv_f16=False)
    rel = np.abs(hidden - theirs).max() / np.sqrt(np.mean(theirs**2))
    assert rel < TOLERANCE.get(ref.arch, 1e-4)
    # llama.cpp's logits are its hidden states times the output matrix: its top two come back
    logits = theirs @ ref.w["output.weight"].T
    top2 = np.argsort(-logits, axis=-1)[:, :2]
    gap = GOLDEN[f"{variant}_top2_logits"][:, 0] - GOLDEN[f"{variant}_top2_logits"][:, 1]
    assert (top2[:, 0] == GOLDEN[f"{variant}_top2_ids"][:, 0])[gap > 1e-3].all()


def test_phi3_long_and_short_factors_differ():
    """The two phi3 runs are one model at two context sizes: only the rope factors differ, and visibly."""
    assert str(GOLDEN["phi3_short_model_sha256"]) == str(GOLDEN["phi3_long_model_sha256"])
    assert (GOLDEN["phi3_short_ids"] == GOLDEN["phi3_long_ids"]).all()
    short, long = GOLDEN["phi3_short_hidden"], GOLDEN["phi3_long_hidden"]
    assert np.abs(short[0] - long[0]).max() < 1e-5  # position 0: no rotation at all
    assert np.abs(short - long).max() > 0.1


def test_shapes_are_checked():
    with pytest.raises(TypeError, match="unknown shape keys"):
        tiny_arch_shape("qwen2", n_rot=8)
    with pytest.raises(ValueError, match="no tiny model"):
        tiny_arch_shape("llama")
    assert tiny_arch_shape("qwen3", n_layers=5)["n_layers"] == 5
