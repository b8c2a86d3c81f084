"""Dev-only: real blocks that llama.cpp's quantizer wrote, for tests/test_formats.py.

    pip install llama-cpp-python      # llama.cpp's quantizer; never a runtime need
    python tests/data/make_llamacpp_blocks.py

SmolLM2-135M-Instruct in F32 (models/recipes.py) is quantized by llama.cpp (llama_model_quantize) to
each preset; from each file, the first tensor of every type it holds gives ROWS rows: llama.cpp's
bytes, the F32 rows they were made from, and the row length. Saved to tests/data/llamacpp_blocks.npz
(a few hundred KB), so that CI, which has no llama.cpp, checks pyengine's dequantizers and
quantizers against bytes that llama.cpp itself wrote.
"""

from __future__ import annotations

import ctypes
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "models"))

# (preset, pure): llama.cpp's Q2_K preset gives SmolLM2's only 256-multiple rows (ffn_down) Q3_K, so
# Q2_K (and Q3_K) blocks come from the pure presets (every matrix the preset's type).
PRESETS = (("q4_k_m", False), ("q5_k_m", False), ("q6_k", False), ("q3_k_m", False), ("q3_k_s", True), ("q2_k", True),
           ("iq4_xs", False), ("iq4_nl", False), ("q5_0", False), ("q5_1", False))
ROWS = 4


def main():
    import llama_cpp
    from recipes import smollm2

    from pyengine.gguf import TYPE_TRAITS, GGUFReader

    src = smollm2("f32")
    out = {"llama_cpp_version": np.array(llama_cpp.__version__)}
    with GGUFReader(src) as f32, tempfile.TemporaryDirectory() as tmp:
        for preset, pure in PRESETS:
            dst = Path(tmp) / f"{preset}.gguf"
            params = llama_cpp.llama_model_quantize_default_params()
            params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{preset.upper()}")
            params.nthread = 2
            params.pure = pure
            if llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params)) != 0:
                raise SystemExit(f"llama.cpp could not quantize to {preset}")
            with GGUFReader(dst) as q:
                for name, info in q.tensors.items():
                    type_name = TYPE_TRAITS[info.type].name
                    if len(info.shape) != 2 or f"{type_name}_raw" in out or type_name in ("f32", "f16"):
                        continue
                    out[f"{type_name}_raw"] = np.array(info.data[:ROWS])
                    out[f"{type_name}_f32"] = np.array(f32.tensors[name].data[:ROWS])
                    out[f"{type_name}_source"] = np.array(f"{preset}{' pure' if pure else ''}:{name}")
                    print(f"{type_name}: {preset} {name} {info.shape}")
    np.savez_compressed(Path(__file__).parent / "llamacpp_blocks.npz", **out)


if __name__ == "__main__":
    main()
