"""Dev-only: golden outputs of llama.cpp (through llama-cpp-python) for SmolLM2-135M-Instruct in each
format, written to tests/data/llamacpp_golden.npz for tests/test_golden.py.

    pip install llama-cpp-python      # builds llama.cpp from source (~6 minutes); never a runtime need
    python tests/data/make_llamacpp_golden.py

For each format: the prompt's ids (from pyengine's tokenizer, checked against llama.cpp's), llama.cpp's
log-probabilities at every prompt position over the whole vocabulary, and its 24-token greedy
continuation. To stay small, the log-probabilities are stored as float16, except the top K = 512
per position (ids and float32 values), which hold most of the mass: float16 rounding of the tail
(at most 2^-8 in log-probability, unbiased) moves a KL-divergence by ~1e-6.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from llamacpp_tools import greedy_with_gaps, log_softmax, token_by_token_kl, top_k

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "models"))

PROMPT = ("The capital of France is Paris. The capital of Germany is Berlin. "
          "Photosynthesis turns sunlight, water and carbon dioxide into")
FORMATS = ("q4_1", "f32", "q8_0", "q4_0", "q4_k_m", "q5_k_m", "q6_k", "iq4_xs", "q3_k_m")
# For llama.cpp's presets the golden file also holds: the sha256 of the tensor data of the file
# llama.cpp's own quantizer makes from the F32 model (pyengine's file must be the same bytes), the
# KL-divergence between llama.cpp's batch and token-by-token evaluations of the prompt (its own noise
# floor here) and, at each greedy step, the gap between llama.cpp's top two log-probabilities.
PRESETS = ("q4_k_m", "q5_k_m", "q6_k", "iq4_xs", "q3_k_m")
TOP_K = 512
N_GREEDY = 24


def tensor_sha256(path) -> str:
    """sha256 of a GGUF file's tensors (name, type, shape, bytes) in name order: the same for two files
    whose tensors are identical whatever their metadata and layout."""
    import hashlib

    from pyengine.gguf import GGUFReader

    h = hashlib.sha256()
    with GGUFReader(path) as r:
        for name in sorted(r.tensors):
            info = r.tensors[name]
            h.update(f"{name}:{int(info.type)}:{tuple(info.shape)}".encode())
            h.update(np.ascontiguousarray(info.data).view(np.uint8).tobytes())
    return h.hexdigest()


def llamacpp_quantize(src, dst, preset):
    import ctypes

    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{preset.upper()}")
    params.nthread = 2
    if llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params)) != 0:
        raise SystemExit(f"llama.cpp could not quantize to {preset}")


def preset_extras(fmt, path, ids, logp, llama_cpp):
    import tempfile

    from recipes import smollm2

    with tempfile.TemporaryDirectory() as tmp:
        theirs = Path(tmp) / f"{fmt}.gguf"
        llamacpp_quantize(smollm2("f32"), theirs, fmt)
        sha = tensor_sha256(theirs)
    assert sha == tensor_sha256(path), f"{fmt}: pyengine's file differs from llama.cpp's"
    self_kl = token_by_token_kl(llama_cpp, path, ids, logp)
    return {f"{fmt}_tensor_sha256": np.array(sha), f"{fmt}_self_kl": self_kl}


def main():
    import llama_cpp
    from recipes import smollm2

    import pyengine

    # formats named on the command line are (re)made, the others kept as they are
    wanted = sys.argv[1:] or FORMATS
    golden = Path(__file__).with_name("llamacpp_golden.npz")
    out = dict(np.load(golden)) if golden.exists() and sys.argv[1:] else {}
    out.update({"prompt": np.array(PROMPT), "llama_cpp_version": np.array(llama_cpp.__version__)})
    for fmt in wanted:
        path = smollm2(fmt)
        tok = pyengine.Tokenizer.from_gguf(path)
        ids = tok.encode(PROMPT, add_bos=tok.add_bos)
        llm = llama_cpp.Llama(model_path=str(path), n_ctx=512, n_batch=512, logits_all=True, n_threads=2,
                              verbose=False)
        theirs = llm.tokenize(PROMPT.encode(), add_bos=tok.add_bos, special=True)
        assert theirs == ids, f"tokenizers differ: {theirs} vs {ids}"
        llm.reset()
        llm.eval(ids)
        logp = log_softmax(np.array(llm.scores[: len(ids)]))
        top, top_lp = top_k(logp, TOP_K)
        tail = 1.0 - np.exp(top_lp).sum(-1)
        greedy, gaps = greedy_with_gaps(llm, N_GREEDY)
        out[f"{fmt}_ids"] = np.array(ids, np.int32)
        out[f"{fmt}_top_ids"] = top
        out[f"{fmt}_top_logprobs"] = top_lp.astype(np.float32)
        out[f"{fmt}_tail_mass"] = tail.astype(np.float64)
        out[f"{fmt}_logprobs_f16"] = logp.astype(np.float16)
        out[f"{fmt}_greedy"] = greedy
        out[f"{fmt}_greedy_gap"] = gaps
        if fmt in PRESETS:
            out.update(preset_extras(fmt, path, ids, logp, llama_cpp))
        print(f"{fmt}: {len(ids)} prompt tokens, max tail mass {tail.max():.2e}, "
              f"greedy: {tok.decode(greedy.tolist())!r}")
        del llm
    np.savez_compressed(golden, **out)


if __name__ == "__main__":
    main()
