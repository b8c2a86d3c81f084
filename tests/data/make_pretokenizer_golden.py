"""Dev-only: llama.cpp's pre-tokenization of PRETOKENIZER_INPUTS for every tokenizer.ggml.pre value it
knows, written to tests/data/pretokenizer_golden.json for tests/test_tokenizer.py.

    pip install llama-cpp-python      # a reference tool only, never a runtime need
    python tests/data/make_pretokenizer_golden.py path/to/llama.cpp/src/llama-vocab.cpp

The vocabulary is substring_vocab(PRETOKENIZER_INPUTS) (tests/test_tokenizer.py): the 256 byte tokens,
every substring of the inputs as a token and a merge for every way of cutting each substring in
two, so byte-level BPE joins each pre-token whole and each id llama.cpp gives is one of its
pre-tokens. For each name (parsed from llama-vocab.cpp: the `tokenizer_pre == "..."` comparisons,
plus "default" and a file without the key) a vocabulary-only GGUF is written and loaded with
vocab_only=True in a child process (llama.cpp aborts on some); names whose pieces are the same are
grouped. Names whose file llama.cpp cannot load or tokenize are listed under "llamacpp_fails".
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from test_tokenizer import PRETOKENIZER_INPUTS, substring_vocab  # noqa: E402

from pyengine.gguf import GGUFValueType, GGUFWriter  # noqa: E402

OUT = Path(__file__).resolve().parent / "pretokenizer_golden.json"
NO_KEY = "(no tokenizer.ggml.pre)"


def write_vocab(path: str, pre: str | None) -> None:
    tokens, merges = substring_vocab(PRETOKENIZER_INPUTS)
    with GGUFWriter(path) as w:
        w.add_string("general.architecture", "llama")
        w.add_string("tokenizer.ggml.model", "gpt2")
        if pre is not None:
            w.add_string("tokenizer.ggml.pre", pre)
        w.add_array("tokenizer.ggml.tokens", tokens, GGUFValueType.STRING)
        w.add("tokenizer.ggml.token_type", np.ones(len(tokens), np.int32))
        w.add_array("tokenizer.ggml.merges", merges, GGUFValueType.STRING)


def child(pre: str | None) -> None:
    """Prints llama.cpp's pieces of each input (and whether it adds BOS by default) as JSON."""
    from llama_cpp import Llama

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "vocab.gguf")
        write_vocab(path, pre)
        llm = Llama(path, vocab_only=True, verbose=False)
        pieces = []
        for text in PRETOKENIZER_INPUTS:
            ids = llm.tokenize(text.encode(), add_bos=False, special=False)
            pieces.append([llm.detokenize([i]).decode("utf-8") for i in ids])
        add_bos = len(llm.tokenize(b"x", add_bos=True)) == 2
    print(json.dumps({"pieces": pieces, "add_bos": add_bos}, ensure_ascii=False))


def compact_json(golden: dict) -> str:
    """The golden file with one line per name list, input and group's pieces of one input."""
    def dump(value) -> str:
        return json.dumps(value, ensure_ascii=False)

    groups = ",\n".join(
        ' {"names": ' + dump(g["names"]) + ', "add_bos": ' + dump(g["add_bos"]) + ', "pieces": [\n  '
        + ",\n  ".join(dump(p) for p in g["pieces"]) + "]}" for g in golden["groups"])
    head = ",\n".join(f" {dump(k)}: {dump(v)}" for k, v in golden.items() if k not in ("groups", "inputs"))
    inputs = ",\n  ".join(dump(text) for text in golden["inputs"])
    return "{\n" + head + ',\n "inputs": [\n  ' + inputs + '],\n "groups": [\n' + groups + "]\n}\n"


def main() -> None:
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    source = Path(sys.argv[1])  # the llama.cpp that llama-cpp-python was built from
    names = sorted(set(re.findall(r'tokenizer_pre == "([^"]+)"', source.read_text())) | {"default"})
    groups: dict[str, dict] = {}
    fails = []
    for name in names + [NO_KEY]:
        run = subprocess.run([sys.executable, __file__, "--child", name], capture_output=True, text=True)
        if run.returncode != 0:
            fails.append(name)
            continue
        result = json.loads(run.stdout)
        key = json.dumps(result, ensure_ascii=False)
        groups.setdefault(key, {"names": [], **result})["names"].append(name)
        print(f"{name}: {len(groups)} groups", file=sys.stderr)
    golden = {"llamacpp_names": names, "no_key": NO_KEY, "inputs": PRETOKENIZER_INPUTS,
              "llamacpp_fails": fails, "groups": list(groups.values())}
    OUT.write_text(compact_json(golden), encoding="utf-8")
    print(f"wrote {OUT}: {len(names)} names, {len(groups)} groups, llama.cpp fails on {fails}", file=sys.stderr)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        child(None if sys.argv[2] == NO_KEY else sys.argv[2])
    else:
        main()
