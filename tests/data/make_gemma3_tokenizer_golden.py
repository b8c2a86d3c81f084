"""Dev-only: llama.cpp's tokenization of GEMMA3_TEXTS with the vocabulary of gemma-3-270m (SentencePiece,
no space prefix, 262,144 tokens), written to tests/data/gemma3_tokenizer_golden.json for
tests/test_tokenizer.py.

    pip install llama-cpp-python      # a reference tool only, never a runtime need
    python tests/data/make_gemma3_tokenizer_golden.py [path/to/gemma-3-270m-q4_k_m.gguf]

The file is pyengine.fetch.fetch_gemma3_270m()'s (sha256 in the JSON). For each text: llama.cpp's ids
with special tokens parsed and not, and the bytes of each token (llama_token_to_piece with special
tokens rendered); also the end-of-generation ids and the end-of-turn id llama.cpp finds.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from test_tokenizer import GEMMA3_TEXTS  # noqa: E402

OUT = Path(__file__).resolve().parent / "gemma3_tokenizer_golden.json"


def main() -> None:
    import llama_cpp
    from llama_cpp import Llama

    if len(sys.argv) > 1:
        path = Path(sys.argv[1])
    else:
        from pyengine.fetch import fetch_gemma3_270m

        path = Path(fetch_gemma3_270m())
    llm = Llama(str(path), vocab_only=True, verbose=False)
    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    n_vocab = llama_cpp.llama_vocab_n_tokens(vocab)
    buffer = ctypes.create_string_buffer(1024)

    def piece(token: int) -> str:
        n = llama_cpp.llama_token_to_piece(vocab, token, buffer, len(buffer), 0, True)
        return buffer.raw[:n].hex()

    cases = []
    for text in GEMMA3_TEXTS:
        case = {"text": text}
        for special in (True, False):
            ids = llm.tokenize(text.encode("utf-8"), add_bos=False, special=special)
            case["special" if special else "plain"] = ids
        case["pieces"] = [piece(i) for i in case["special"]]
        cases.append(case)
    golden = {
        "file": path.name,
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "bos": llama_cpp.llama_vocab_bos(vocab),
        "eot": llama_cpp.llama_vocab_eot(vocab),
        "eog": [i for i in range(n_vocab) if llama_cpp.llama_vocab_is_eog(vocab, i)],
        "add_bos": len(llm.tokenize(b"x", add_bos=True, special=False)) == 2,
        "cases": cases,
    }
    lines = ",\n".join(f" {json.dumps(k)}: {json.dumps(v, ensure_ascii=False)}" for k, v in golden.items()
                       if k != "cases")
    cases_text = ",\n  ".join(json.dumps(c, ensure_ascii=False) for c in cases)
    OUT.write_text("{\n" + lines + ',\n "cases": [\n  ' + cases_text + "]\n}\n", encoding="utf-8")
    print(f"wrote {OUT}: {len(cases)} texts", file=sys.stderr)


if __name__ == "__main__":
    main()
