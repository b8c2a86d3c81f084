"""Dev-only: llama.cpp's importance-weighted quantization of SmolLM2-135M-Instruct (F32), for
tests/test_imatrix.py.

    pip install llama-cpp-python      # never a runtime need
    python tests/data/make_llamacpp_imatrix_golden.py

1. pyengine's imatrix of the F32 model on the second half of WikiText-2 (2 chunks of 512 tokens) is
   written to tests/data/smollm2_imatrix.gguf (kept: the test quantizes with this very file, so that
   the bytes compared do not depend on the machine that computed the activations).
2. llama.cpp's own quantizer (llama_model_quantize, through llama-cpp-python) makes each preset from the
   F32 model with that importance matrix, read as llama-quantize reads the GGUF format (in_sum2 / counts
   per entry); the sha256 of each tensor it writes goes to tests/data/llamacpp_imatrix_golden.json.
pyengine's `quantize --imatrix` must write the same tensors, byte for byte.
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


if __name__ == "__main__":
    main()
