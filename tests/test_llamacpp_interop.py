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
from pyengine.requantize import PRESETS, quantize_model  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "models"))
from recipes import smollm2  # noqa: E402



def has_quantizer(type_name):
    try:
        pyengine.quantize(np.zeros((1, 256), np.float32), type_name)
    except ValueError:
        return False
    return True


# the llama.cpp presets wait for their quantizers (skipped in a build without them)
@pytest.mark.parametrize("fmt", ["q4_0", "q4_1", "q8_0", "q4_k_m", "q3_k_m", "q2_k", "q5_k_s", "q6_k", "iq4_xs",
                                 "iq4_nl", "q5_1"])
def test_llamacpp_loads_our_file_and_quantizes_to_the_same_bytes(tmp_path, fmt):
    if not has_quantizer(PRESETS[fmt].default.name.lower()):
        pytest.skip(f"this build has no {PRESETS[fmt].default.name} quantizer")
    src = smollm2("f32")
    ours = tmp_path / f"ours-{fmt}.gguf"
    quantize_model(src, ours, fmt)
    theirs = tmp_path / f"theirs-{fmt}.gguf"
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = PRESETS[fmt].ftype
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


def test_llamacpp_runs_a_calibrated_file_as_pyengine_does(tmp_path):
    """AWQ's scales live in the norms, GPTQ's codes in the standard layouts and --outliers' promotions
    in llama.cpp's own types: llama.cpp computes the
    same function from the file as pyengine (to the two engines' usual difference on a quantized
    model), with scales far from one (AWQ's search keeps them near one on this random model);
    test_calibrate holds the folded model to the original in float."""
    from pyengine.calibrate import calibrate

    sys.path.insert(0, str(Path(__file__).parent))
    from test_calibrate import WORDS, strong_scales
    from tiny_models import write_tiny_llama

    src = write_tiny_llama(tmp_path / "tiny.gguf", n_embd=256, n_ff=512, n_ctx_train=64)
    model = pyengine.Model(src, n_ctx=64)
    out = tmp_path / "calibrated.gguf"
    report = quantize_model(src, out, "q4_k_m", calibration=calibrate(model, WORDS, n_ctx=32, n_chunks=3),
                            gptq=True, awq=strong_scales(2, 256), outliers=0.05)
    assert len(report.gptq) == 14 and report.promoted
    ids = model.tokenize(WORDS)[:24]
    llm = llama_cpp.Llama(model_path=str(out), n_ctx=64, logits_all=True, verbose=False)
    llm.eval(ids)
    ours = pyengine.Model(out, n_ctx=64).logits(ids)
    theirs = np.array(llm.scores[:len(ids)])
    assert np.abs(theirs - ours).max() < 0.05 * np.abs(ours).max()
