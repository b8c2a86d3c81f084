"""Dev-only (skipped without llama-cpp-python): llama.cpp loads the files pyengine writes, and its
own quantizer makes the same bytes as ours.

    pip install llama-cpp-python   # builds llama.cpp from source; never a runtime dependency
"""

import ctypes
import sys
from pathlib import Path

import numpy as np
import pytest

llama_cpp = pytest.importorskip("llama_cpp")

import pyengine  # noqa: E402
from pyengine.gguf import GGUFReader  # noqa: E402
from pyengine.requantize import quantize_model  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "models"))
from recipes import smollm2  # noqa: E402

FTYPES = {"q4_0": 2, "q4_1": 3, "q8_0": 7}


@pytest.mark.parametrize("fmt", ["q4_0", "q4_1", "q8_0"])
def test_llamacpp_loads_our_file_and_quantizes_to_the_same_bytes(tmp_path, fmt):
    src = smollm2("f32")
    ours = tmp_path / f"ours-{fmt}.gguf"
    quantize_model(src, ours, fmt)
    theirs = tmp_path / f"theirs-{fmt}.gguf"
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = FTYPES[fmt]
    params.nthread = 2
    assert llama_cpp.llama_model_quantize(str(src).encode(), str(theirs).encode(), ctypes.byref(params)) == 0
    with GGUFReader(ours) as a, GGUFReader(theirs) as b:
        assert set(a.tensors) == set(b.tensors)  # llama.cpp writes them in its own order
        for name in a.tensors:
            ta, tb = a.tensors[name], b.tensors[name]
            assert ta.type == tb.type, name
            np.testing.assert_array_equal(np.asarray(ta.data).view(np.uint8), np.asarray(tb.data).view(np.uint8),
                                          err_msg=name)
    llm = llama_cpp.Llama(model_path=str(ours), n_ctx=64, logits_all=True, verbose=False)
    ids = pyengine.Tokenizer.from_gguf(ours).encode("The capital of France is")
    llm.eval(ids)
    ours_logits = pyengine.Model(ours, n_ctx=64).logits(ids)[-1]
    assert int(np.argmax(llm.scores[len(ids) - 1])) == int(np.argmax(ours_logits))
