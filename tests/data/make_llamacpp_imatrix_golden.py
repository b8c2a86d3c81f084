"""Dev-only: llama.cpp's importance-weighted quantization of SmolLM2-135M-Instruct (F32), for
tests/test_imatrix.py.

    pip install llama-cpp-python      # never a runtime need
    python tests/data/make_llamacpp_imatrix_golden.py [--bin DIR]

1. pyengine's imatrix of the F32 model on the second half of WikiText-2 (2 chunks of 512 tokens) is
   written to tests/data/smollm2_imatrix.gguf (kept: the test quantizes with this very file, so that
   the bytes compared do not depend on the machine that computed the activations).
2. llama.cpp's own quantizer (llama_model_quantize, through llama-cpp-python) makes each preset from the
   F32 model with that importance matrix, read as llama-quantize reads the GGUF format (in_sum2 / counts
   per entry); the sha256 of each tensor it writes goes to tests/data/llamacpp_imatrix_golden.json.
pyengine's `quantize --imatrix` must write the same tensors, byte for byte.

With llama.cpp's own tools (built from the sources llama-cpp-python's sdist vendors: cmake --build ...
--target llama-imatrix llama-quantize), `--bin DIR` also checks the file format both ways:
3. llama-quantize --imatrix tests/data/smollm2_imatrix.gguf (pyengine's file) writes the same tensors;
4. llama-imatrix on the tiny model of tests/test_imatrix.py (tiny_models.write_tiny_llama, n_ctx_train
   64) over its text, 3 chunks of 32 tokens, is written to tests/data/llamacpp_imatrix_tiny.gguf: the
   test reads it and holds pyengine's own collection on the same model and text to it.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "models"))
sys.path.insert(0, str(ROOT))

HERE = Path(__file__).resolve().parent
IMATRIX = HERE / "smollm2_imatrix.gguf"
OUT = HERE / "llamacpp_imatrix_golden.json"
WIKITEXT = ROOT.parent / "shared" / "data" / "wikitext-2-test.txt"
PRESETS = ("q4_k_m", "q3_k_m", "q2_k", "iq4_xs", "q4_0")
N_CHUNKS = 2


def tensor_hashes(path) -> dict[str, str]:
    from pyengine.gguf import GGUFReader

    out = {}
    with GGUFReader(path) as r:
        for name in sorted(r.tensors):
            info = r.tensors[name]
            h = hashlib.sha256(f"{name}:{int(info.type)}:{tuple(info.shape)}".encode())
            h.update(np.ascontiguousarray(info.data).view(np.uint8).tobytes())
            out[name] = h.hexdigest()
    return out


def calibration_text() -> str:
    text = WIKITEXT.read_text(encoding="utf-8")
    return text[len(text) // 2:]  # the second half: the evaluation chunks come from the first


def llamacpp_quantize(src, dst, preset, imatrix):
    import llama_cpp

    names, arrays = [], []
    for name in sorted(imatrix.entries):
        names.append(name.encode())
        arrays.append(np.ascontiguousarray(imatrix.importance(name), np.float32))
    entries = (llama_cpp.llama_model_imatrix_data * (len(names) + 1))()
    for i, (name, values) in enumerate(zip(names, arrays)):
        entries[i].name = name
        entries[i].data = values.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
        entries[i].size = values.size
    entries[len(names)].name = None
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{preset.upper()}")
    params.nthread = 2
    params.imatrix = ctypes.cast(entries, type(params.imatrix))
    if llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params)) != 0:
        raise SystemExit(f"llama.cpp could not quantize to {preset}")


def check_with_binaries(bin_dir: Path, f32, golden) -> None:
    import subprocess

    sys.path.insert(0, str(ROOT / "tests"))
    from test_imatrix import WORDS
    from tiny_models import write_tiny_llama

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "q.gguf"
        subprocess.run([str(bin_dir / "llama-quantize"), "--imatrix", str(IMATRIX), str(f32), str(out), "q4_k_m", "1"],
                       check=True, capture_output=True)
        assert tensor_hashes(out) == golden["presets"]["q4_k_m"], "llama-quantize read pyengine's imatrix differently"
        model, text = Path(tmp) / "tiny.gguf", Path(tmp) / "words.txt"
        write_tiny_llama(model, n_ctx_train=64)
        text.write_text(WORDS)
        subprocess.run([str(bin_dir / "llama-imatrix"), "-m", str(model), "-f", str(text), "-c", "32", "--chunks", "3",
                        "-o", str(HERE / "llamacpp_imatrix_tiny.gguf"), "-t", "1"], check=True, capture_output=True)
    print("llama-quantize reads pyengine's imatrix file; wrote llamacpp_imatrix_tiny.gguf")


def main():
    import llama_cpp
    from recipes import smollm2

    import pyengine
    from pyengine.imatrix import Imatrix, collect

    f32 = smollm2("f32")
    model = pyengine.Model(f32, n_ctx=512)
    collect(model, calibration_text(), 512, N_CHUNKS, datasets=["wikitext-2-test.txt (second half)"]).save(IMATRIX)
    imatrix = Imatrix.load(IMATRIX)
    golden = {"llama_cpp_version": llama_cpp.__version__, "imatrix": IMATRIX.name, "presets": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for preset in PRESETS:
            dst = Path(tmp) / f"{preset}.gguf"
            llamacpp_quantize(f32, dst, preset, imatrix)
            golden["presets"][preset] = tensor_hashes(dst)
            print(f"{preset}: {len(golden['presets'][preset])} tensors")
    OUT.write_text(json.dumps(golden, indent=1) + "\n")
    print(f"wrote {OUT} and {IMATRIX} ({IMATRIX.stat().st_size} bytes)")
    if "--bin" in sys.argv:
        check_with_binaries(Path(sys.argv[sys.argv.index("--bin") + 1]), f32, golden)


if __name__ == "__main__":
    main()
