"""Dev-only: llama.cpp's bytes for the quantizers of Q4_0, Q4_1, Q5_0, Q5_1, Q2_K..Q6_K, IQ4_NL and IQ4_XS, written
to tests/data/kquant_golden.npz for tests/test_quants_k.py (CI has no llama.cpp).

    pip install llama-cpp-python      # its libggml-base.so is the reference; never a runtime need
    python tests/data/make_kquant_golden.py
    python tests/data/make_kquant_golden.py --check 2000   # also: pyengine against the library, live,
                                                           # on 2000 fresh rows per type and length

The bytes come from ggml_quantize_chunk in llama-cpp-python's own libggml-base.so (through ctypes):
what llama-quantize runs, so the dispatch (the *_ref path without an imatrix, the weighted *_impl path
with one, quantize_iq4_nl's search with ntry = 7 even without) is llama.cpp's, not a re-reading of it.
That library is built for baseline x86-64 (no FMA instructions in it: checked with objdump), so its
float arithmetic is plain IEEE single precision, one rounding per operation.

For each row length (256, 512, 2048) the file holds the input rows (float32), one importance vector
of that length (llama.cpp's imatrix: one value per column, shared by every row), and per type the
bytes without and with it: x_<n>, imatrix_<n>, <type>_<n> and <type>_<n>_w.
"""

from __future__ import annotations

import ctypes
import sys
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parent / "kquant_golden.npz"
REAL_MODEL = Path.home() / ".cache/pyengine/SmolLM2-135M-Instruct.F32.gguf"

# name: (ggml type id, values per block, bytes per block)
TYPES = {
    "q4_0": (2, 32, 18),
    "q4_1": (3, 32, 20),
    "q5_0": (6, 32, 22),
    "q5_1": (7, 32, 24),
    "q2_K": (10, 256, 84),
    "q3_K": (11, 256, 110),
    "q4_K": (12, 256, 144),
    "q5_K": (13, 256, 176),
    "q6_K": (14, 256, 210),
    "iq4_nl": (20, 32, 18),
    "iq4_xs": (23, 256, 136),
}
LENGTHS = (256, 512, 2048)


def load_ggml():
    import llama_cpp

    lib = ctypes.CDLL(str(Path(llama_cpp.__file__).parent / "lib" / "libggml-base.so"))
    f = lib.ggml_quantize_chunk
    f.restype = ctypes.c_size_t
    f.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64,
                  ctypes.c_void_p]
    return f


def quantize(chunk, name, x, imatrix=None):
    type_id, block, type_size = TYPES[name]
    rows, cols = x.shape
    x = np.ascontiguousarray(x, np.float32)
    out = np.zeros((rows, cols // block * type_size), np.uint8)
    w = None if imatrix is None else np.ascontiguousarray(imatrix, np.float32)
    got = chunk(type_id, x.ctypes.data, out.ctypes.data, 0, rows, cols, None if w is None else w.ctypes.data)
    assert got == out.size, (name, got, out.size)
    return out


def real_rows(cols, count):
    """Contiguous runs of a real model's weights (SmolLM2-135M, F32), or none if it is not cached."""
    if not REAL_MODEL.exists():
        return []
    from gguf import GGUFReader

    reader = GGUFReader(str(REAL_MODEL))
    picks = ("blk.0.ffn_down.weight", "blk.7.attn_q.weight", "blk.29.ffn_gate.weight", "token_embd.weight")
    rows = []
    for t in reader.tensors:
        if t.name in picks:
            flat = np.asarray(t.data, np.float32).reshape(-1)
            rows += [flat[k * cols:(k + 1) * cols] for k in range(count)]
    return rows


def adversarial_rows(rng, cols):
    """Rows that reach the corners of the scale searches and of the rounding rules."""
    i = np.arange(cols)
    normal = rng.standard_normal
    rows = [
        normal(cols), normal(cols) * 0.02, normal(cols) * 100.0, normal(cols) * 3e-3,
        np.zeros(cols),                                           # every all-zero guard
        np.full(cols, 0.3), np.full(cols, -7.0),                  # all equal: max == min, one sign
        np.where(i % 256 == 37, 1000.0, normal(cols) * 0.01),     # one outlier per super-block
        np.where(i % 256 == 200, -1000.0, 0.001),                 # a negative outlier, the rest equal
        normal(cols) * 1e-6, normal(cols) * 1e-7,                 # fp16 subnormal scales
        normal(cols) * 1e-30,                                     # scales that underflow fp16 to zero
        normal(cols) * 1e-39,                                     # float32 subnormals: 1/d overflows
        normal(cols) * 20000.0,                                   # near fp16's largest finite value
        rng.uniform(-65504, 65504, cols),
        np.tile([1.0, -1.0], cols // 2), np.tile([-1.0, 1.0], cols // 2),
        (i % 32 - 16) * 0.5, (i % 16 - 8) * 1.0, (i % 8) * 0.25,  # exact ties after scaling
        np.linspace(-1, 1, cols),
        normal(cols) * np.exp(rng.uniform(-10, 10, cols)),       # heavy-tailed
        normal(cols) * np.exp(rng.uniform(-10, 10, cols)),
        rng.uniform(0.5, 1.0, cols), rng.uniform(-2.0, -1.0, cols),  # one sign: the minimum's clamp
        np.where(i % 64 < 16, normal(cols), 0.0),                 # all-zero sub-blocks beside others
        np.where((i // 16) % 3 == 0, 0.75, normal(cols)),         # constant sub-blocks beside others
        np.round(normal(cols) * 4) / 4,                           # few distinct values
    ]
    return rows


def imatrix_for(rng, cols):
    """Importance per column: log-normal with a wide spread, some zeros, one zero sub-block."""
    w = np.exp(rng.standard_normal(cols) * 1.5)
    w[rng.random(cols) < 0.05] = 0.0
    w[64:96] = 0.0
    return w.astype(np.float32)


def check_live(chunk, n_rows):
    """Hold pyengine (a built checkout) against the library on fresh rows of every kind above."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    import pyengine

    rng = np.random.default_rng()
    bad = 0
    for cols in LENGTHS:
        kinds = adversarial_rows(rng, cols)
        rows = [kinds[k] * np.exp(rng.uniform(-3, 3)) for k in rng.integers(0, len(kinds), n_rows)]
        with np.errstate(all="ignore"):
            x = np.array(rows, dtype=np.float32)
        imatrix = imatrix_for(rng, cols)
        for name, (_, _, type_size) in TYPES.items():
            for im in (None, imatrix):
                ref = quantize(chunk, name, x, im).reshape(-1, type_size)
                ours = pyengine.quantize(x, name, imatrix=im).reshape(-1, type_size)
                n_bad = int((ref != ours).any(axis=1).sum())
                bad += n_bad
                print(f"{name:7s} {cols:5d} {'imatrix' if im is not None else 'plain':8s} "
                      f"{n_bad} of {len(ref)} blocks differ")
    return bad


def main():
    chunk = load_ggml()
    if len(sys.argv) == 3 and sys.argv[1] == "--check":
        sys.exit(1 if check_live(chunk, int(sys.argv[2])) else 0)
    rng = np.random.default_rng(20240611)
    data = {}
    for cols in LENGTHS:
        rows = adversarial_rows(rng, cols)
        if cols == 2048:  # the long rows: the random and the real ones only, to stay small
            rows = rows[:4] + rows[21:23]
        rows += real_rows(cols, 2 if cols < 2048 else 1)
        with np.errstate(all="ignore"):
            x = np.array(rows, dtype=np.float32)
        imatrix = imatrix_for(rng, cols)
        data[f"x_{cols}"] = x
        data[f"imatrix_{cols}"] = imatrix
        for name in TYPES:
            data[f"{name}_{cols}"] = quantize(chunk, name, x)
            data[f"{name}_{cols}_w"] = quantize(chunk, name, x, imatrix)

    # gguf-py's numpy ports agree with the library where they exist (a check of this script's wiring).
    from gguf import GGMLQuantizationType, quants

    for name in ("q5_0", "q5_1"):
        for cols in LENGTHS:
            with np.errstate(all="ignore"):
                ref = quants.quantize(data[f"x_{cols}"], GGMLQuantizationType[name.upper()]).view(np.uint8)
            same = (ref.reshape(data[f"{name}_{cols}"].shape) == data[f"{name}_{cols}"]).all(axis=1)
            if not same.all():
                print(f"note: gguf-py differs from libggml-base for {name} rows {np.flatnonzero(~same)} of {cols}",
                      file=sys.stderr)

    np.savez_compressed(OUT, **data)
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes, {sum(len(v) for k, v in data.items() if k.startswith('x_'))} rows)")


if __name__ == "__main__":
    main()
