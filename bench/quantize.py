"""How long `python -m pyengine quantize` takes against llama.cpp's llama-quantize (through
llama-cpp-python's llama_model_quantize), on the same F32 file, preset by preset, in one run.

    python bench/quantize.py [--models smollm2,tinyllama4] [--presets q4_k_m,q6_k,iq4_xs,q8_0] [--reps 3]
                             [--threads 2] [--out bench/results/quantize]

Models (both F32): SmolLM2-135M-Instruct (models/recipes.py: the shipped file's weights; its width 576
sends most matrices to the Q5_0 / Q8_0 fallbacks of the K-quant presets) and "tinyllama4", TinyLlama-
1.1B's shapes with 4 of its 22 layers and random weights (307 M weights, 1.2 GB, made on first use in
the cache folder): every row a multiple of 256, so the K-quant presets run their K-quant searches.

Each repetition times pyengine.requantize.quantize_model (what the command runs) and then
llama_model_quantize with nthread = --threads (pyengine quantizes with default_n_threads(), 2 here),
first engine swapped on every repetition; the best of --reps is reported, every run is in the JSON.
The two outputs' tensors are compared: the same names, types and bytes (the files' metadata differs
in order and in a few keys). Writes OUT.md and OUT.json.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "models"))
sys.path.insert(0, str(ROOT / "bench"))

import recipes  # noqa: E402
from vs_llamacpp import comma_list, import_llama_cpp, machine_info  # noqa: E402

from pyengine.gguf import GGUFReader  # noqa: E402
from pyengine.requantize import PRESETS, quantize_model  # noqa: E402


MODELS = {"smollm2": ("SmolLM2-135M F32", lambda: recipes.smollm2("f32")),
          "tinyllama4": ("TinyLlama-1.1B shapes, 4 layers, F32", lambda: recipes.synthetic_tinyllama("f32", n_layers=4))}


def llama_quantize(llama_cpp, src: Path, dst: Path, preset: str, n_threads: int) -> None:
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = PRESETS[preset].ftype
    params.nthread = n_threads
    if llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params)) != 0:
        raise RuntimeError(f"llama_model_quantize failed on {src} -> {preset}")


def measure(llama_cpp, src: Path, preset: str, args, out_dir: Path) -> dict:
    ours_path, theirs_path = out_dir / "ours.gguf", out_dir / "theirs.gguf"
    runs = {"pyengine": [], "llama.cpp": []}
    engines = {"pyengine": lambda: quantize_model(src, ours_path, preset),
               "llama.cpp": lambda: llama_quantize(llama_cpp, src, theirs_path, preset, args.threads)}
    for rep in range(args.reps):
        order = ["pyengine", "llama.cpp"] if rep % 2 == 0 else ["llama.cpp", "pyengine"]
        for name in order:
            t0 = time.perf_counter()
            engines[name]()
            runs[name].append(time.perf_counter() - t0)
    with GGUFReader(ours_path) as a, GGUFReader(theirs_path) as b:
        same = a.tensors.keys() == b.tensors.keys() and all(
            a.tensors[k].type == b.tensors[k].type and np.array_equal(a.tensors[k].data, b.tensors[k].data)
            for k in a.tensors)
    return {"preset": preset, "runs": runs, "ours_s": min(runs["pyengine"]), "theirs_s": min(runs["llama.cpp"]),
            "same_tensors": same, "output_bytes": ours_path.stat().st_size}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="smollm2,tinyllama4")
    parser.add_argument("--presets", default="q4_k_m,q6_k,iq4_xs,q8_0")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="llama.cpp's nthread")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "quantize"))
    args = parser.parse_args(argv)
    models = comma_list(args.models, MODELS)
    presets = comma_list(args.presets, PRESETS)
    llama_cpp = import_llama_cpp()
    quiet = llama_cpp.llama_log_callback(lambda level, text, user_data: None)  # its per-tensor lines
    llama_cpp.llama_log_set(quiet, ctypes.c_void_p())
    command = "python bench/quantize.py " + " ".join(argv if argv is not None else sys.argv[1:])
    info = machine_info(llama_cpp)
    rows = []
    for model in models:
        name, make = MODELS[model]
        src = make()
        with tempfile.TemporaryDirectory() as tmp:
            for preset in presets:
                row = {"model": name, "path": str(src), **measure(llama_cpp, src, preset, args, Path(tmp))}
                rows.append(row)
                print(f"{name} {preset}: pyengine {row['ours_s']:.2f} s, llama.cpp {row['theirs_s']:.2f} s"
                      f"{', the same tensors' if row['same_tensors'] else ''}", flush=True)
    lines = [f"# Quantizing: pyengine against llama.cpp", "", f"`{command.strip()}`", "",
             f"{info['date']}; {info['cpu']}, {info['cpus_usable']} usable CPUs; pyengine {info['pyengine']} "
             f"(repo {info['repo_commit']}); llama-cpp-python {info['llama_cpp_python']}.", "",
             f"Best of {args.reps}, seconds for the whole file (read, quantize, write); pyengine with its default "
             f"threads, llama.cpp with nthread {args.threads}.", "",
             "| model | preset | pyengine s | llama.cpp s | llama.cpp / pyengine | same tensors |",
             "|---|---|---:|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['preset']} | {r['ours_s']:.2f} | {r['theirs_s']:.2f} | "
                     f"{r['theirs_s'] / r['ours_s']:.2f} | {'yes' if r['same_tensors'] else 'no'} |")
    out = Path(args.out)
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    out.with_suffix(".json").write_text(json.dumps({"command": command, "machine": info, "rows": rows}, indent=1))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
