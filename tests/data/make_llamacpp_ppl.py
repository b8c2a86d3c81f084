"""Dev-only: llama.cpp's perplexity of SmolLM2-135M-Instruct in each preset on WikiText-2, for
tests/test_golden.py (pyengine's must be within 1%).

    pip install llama-cpp-python      # never a runtime need
    python tests/data/make_llamacpp_ppl.py

llama-perplexity's method: the text tokenized once, cut into chunks of N_CTX tokens (the first token
of each chunk BOS when the model adds one), each chunk evaluated from position 0, and only the second
half scored (the logits at j predicting token j+1 for j = N_CTX/2 .. N_CTX-2). The chunks are
pyengine's tokens (its tokenizer is held to llama.cpp's in test_tokenizer and test_golden), evaluated by
llama.cpp (llama-cpp-python) on the file pyengine made, which is the file llama.cpp makes (the golden
sha256 in llamacpp_golden.npz). Written to tests/data/llamacpp_ppl.json.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from llamacpp_tools import perplexity

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "models"))

PRESETS = ("q4_k_m", "q5_k_m", "q6_k", "iq4_xs", "q3_k_m")
N_CTX = 512
N_CHUNKS = int(sys.argv[1]) if len(sys.argv) > 1 else 4
WIKITEXT = ROOT.parent / "shared" / "data" / "wikitext-2-test.txt"


def main():
    import llama_cpp
    from recipes import smollm2

    import pyengine
    from pyengine.perplexity import chunk_tokens

    text = WIKITEXT.read_text(encoding="utf-8")
    out = {"llama_cpp_version": llama_cpp.__version__, "n_ctx": N_CTX, "n_chunks": N_CHUNKS, "ppl": {}}
    for preset in PRESETS:
        path = smollm2(preset)
        chunks = chunk_tokens(pyengine.Model(path, n_ctx=N_CTX), text, N_CTX, N_CHUNKS)
        llm = llama_cpp.Llama(model_path=str(path), n_ctx=N_CTX, n_batch=N_CTX, logits_all=True, n_threads=2,
                              verbose=False)
        out["ppl"][preset], _, count = perplexity(llm, chunks)
        print(f"{preset}: ppl {out['ppl'][preset]:.4f} over {count} tokens")
        del llm
    (Path(__file__).parent / "llamacpp_ppl.json").write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
