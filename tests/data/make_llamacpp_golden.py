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

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "models"))

PROMPT = ("The capital of France is Paris. The capital of Germany is Berlin. "
          "Photosynthesis turns sunlight, water and carbon dioxide into")
FORMATS = ("q4_1", "f32", "q8_0", "q4_0")
TOP_K = 512
N_GREEDY = 24


def log_softmax(x):
    x = x.astype(np.float64)
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def main():
    import llama_cpp
    from recipes import smollm2

    import pyengine

    out = {"prompt": np.array(PROMPT), "llama_cpp_version": np.array(llama_cpp.__version__)}
    for fmt in FORMATS:
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
        top = np.argsort(-logp, axis=-1)[:, :TOP_K]
        top_lp = np.take_along_axis(logp, top, -1)
        tail = 1.0 - np.exp(top_lp).sum(-1)
        greedy = []
        nxt = int(np.argmax(llm.scores[len(ids) - 1]))
        for _ in range(N_GREEDY):
            greedy.append(nxt)
            llm.eval([nxt])
            nxt = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        out[f"{fmt}_ids"] = np.array(ids, np.int32)
        out[f"{fmt}_top_ids"] = top.astype(np.int32)
        out[f"{fmt}_top_logprobs"] = top_lp.astype(np.float32)
        out[f"{fmt}_tail_mass"] = tail.astype(np.float64)
        out[f"{fmt}_logprobs_f16"] = logp.astype(np.float16)
        out[f"{fmt}_greedy"] = np.array(greedy, np.int32)
        print(f"{fmt}: {len(ids)} prompt tokens, max tail mass {tail.max():.2e}, "
              f"greedy: {tok.decode(greedy)!r}")
        del llm
    np.savez_compressed(Path(__file__).with_name("llamacpp_golden.npz"), **out)


if __name__ == "__main__":
    main()
