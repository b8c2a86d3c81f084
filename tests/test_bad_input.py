"""Bad input besides model files (those: test_gguf.py, test_hostile_models.py): token ids, prompts,
sampling values, quantization types, output paths, text that is not UTF-8, texts too long to
tokenize, more threads than CPUs. Each ends in a ValueError (one line on the command line, exit 1)
before any work, or is handled; none crashes."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import warnings

import numpy as np
import pytest

import pyengine
from pyengine.model import usable_cpus
from pyengine.requantize import quantize_model
from pyengine.tokenizer import MAX_TEXT_CHARS

from tiny_models import write_tiny_llama

ELSEWHERE = tempfile.gettempdir()


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
    return write_tiny_llama(tmp_path_factory.mktemp("bad") / "tiny.gguf", n_ctx_train=64)


@pytest.fixture(scope="module")
def tiny(tiny_path):
    return pyengine.Model(tiny_path, n_threads=1)


def run(*args, stdin: bytes | None = None):
    """`python -m pyengine ARGS` from outside the repository; args may be bytes (not UTF-8)."""
    return subprocess.run([sys.executable, "-m", "pyengine", *args], input=stdin, capture_output=True, timeout=120,
                          cwd=ELSEWHERE)


def one_line_error(proc) -> str:
    err = proc.stderr.decode("utf-8", "replace")
    assert proc.returncode == 1 and "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("pyengine: error: "), err
    return lines[0]


# --- token ids and prompts ---


@pytest.mark.parametrize("ids, match", [
    ([1, 300], "token id 300 is outside the vocabulary"), ([-1], "token id -1"), ([2**40], "outside"),
    ([2**70], "integers"), ([1.5], "integers"), ([[1, 2]], "sequence"), ([], "non-empty"), ("abc", "sequence"),
    ((1, 300), "token id 300 is outside"), ([True], "integers"), ([np.int64(300)], "outside"),
])
def test_token_ids_outside_the_vocabulary(tiny, ids, match):
    with pytest.raises(ValueError, match=match):
        tiny.logits(ids)
    if ids and not isinstance(ids, str):  # generate takes "" and [] as empty prompts, "abc" as text
        with pytest.raises(ValueError):
            tiny.generate(ids, max_tokens=2)
    ctx = tiny.context()
    ctx.eval([1, 2])
    with pytest.raises(ValueError):
        ctx.eval(ids)
    assert ctx.n_past == 2


def test_empty_prompts_start_from_bos(tiny):
    assert tiny.generate("", max_tokens=2, temperature=0).finish_reason in ("stop", "length")
    assert tiny.tokenize("") == []
    proc = run("generate", "-m", str(tiny.path), "-p", "", "-n", "2", "-t", "1")
    assert proc.returncode == 0, proc.stderr


def test_prompts_over_the_context(tiny_path):
    m = pyengine.Model(tiny_path, n_ctx=16, n_threads=1)
    with pytest.raises(ValueError, match="context of 16"):
        m.generate(list(range(17)), max_tokens=1)
    with pytest.raises(ValueError, match="context of 16"):
        m.logits(list(range(17)))
    line = one_line_error(run("generate", "-m", str(tiny_path), "-p", "x" * 100, "-c", "16", "-t", "1"))
    assert "context of 16" in line


@pytest.mark.parametrize("bad", [
    {"temperature": float("nan")}, {"temperature": float("inf")}, {"temperature": "1"}, {"top_k": 1.5},
    {"top_p": float("nan")}, {"min_p": -0.1}, {"repetition_penalty": -1}, {"seed": 2.5}, {"seed": True},
    {"logit_bias": {-3: 1.0}}, {"logit_bias": {1: float("nan")}}, {"stop": 5}, {"stream": 1},
])
def test_invalid_sampling_values(tiny, bad):
    with pytest.raises(ValueError):
        tiny.generate("Hi", max_tokens=2, **bad)


# --- types and output paths ---


@pytest.mark.parametrize("type_name", ["q9_9", "iq1_s", "", "Q4_0 ", "iq2_xxs"])
def test_unknown_quantization_types(tmp_path, tiny_path, type_name):
    if type_name.strip().lower() == "q4_0":  # names are taken case- and space-insensitively
        quantize_model(tiny_path, tmp_path / "ok.gguf", type_name)
        return
    with pytest.raises(ValueError, match="type"):
        pyengine.quantize(np.zeros((1, 32), np.float32), type_name)
    with pytest.raises(ValueError, match="type"):
        quantize_model(tiny_path, tmp_path / "x.gguf", type_name)
    assert "type" in one_line_error(run("quantize", str(tiny_path), str(tmp_path / "x.gguf"), type_name))
    assert list(tmp_path.iterdir()) == []


def test_unwritable_outputs_are_refused_before_the_work(tmp_path, tiny_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        cases = [
            (["quantize", str(tiny_path), str(tmp_path / "no" / "dir" / "x.gguf"), "q8_0"], "there is no directory"),
            (["quantize", str(tiny_path), str(tmp_path), "q8_0"], "is a directory"),
            (["bench", "-m", str(tiny_path), "-p", "8", "-n", "1", "-r", "1", "--plot", str(tmp_path / "no" / "p.png")],
             "there is no directory"),
        ]
        if os.geteuid() != 0:  # root writes anywhere
            cases.append((["quantize", str(tiny_path), str(locked / "x.gguf"), "q8_0"], "no permission"))
        for args, words in cases:
            assert words in one_line_error(run(*args)), args
        assert list(locked.iterdir()) == []
    finally:
        locked.chmod(0o700)


# --- text that is not UTF-8, and texts too long to tokenize ---


def test_text_that_is_not_utf8(tmp_path, tiny):
    # Python keeps undecodable bytes of argv (and of files read with surrogateescape) as lone surrogates
    assert tiny.tokenize("a\udcff b") == tiny.tokenize("a\ufffd b")
    assert tiny.generate("caf\udce9", max_tokens=2, temperature=0).finish_reason in ("stop", "length")
    proc = run(b"generate", b"-m", str(tiny.path).encode(), b"-p", b"caf\xe9 \xff\xfe", b"-n", b"3", b"-t", b"1")
    assert proc.returncode == 0, proc.stderr
    chat = run(b"chat", b"-m", str(tiny.path).encode(), b"-n", b"3", b"-t", b"1", stdin=b"caf\xe9 \xff\n/exit\n")
    assert chat.returncode == 0 and b"Traceback" not in chat.stderr, chat.stderr
    text = tmp_path / "latin1.txt"
    text.write_bytes("Bonjour, ça va? ".encode("latin-1") * 200 + b"\xff\xfe\x00")
    proc = run("perplexity", "-m", str(tiny.path), "-f", str(text), "-c", "32", "--chunks", "1", "-t", "1")
    assert proc.returncode == 0, proc.stderr


def test_texts_over_the_tokenizer_limit_are_refused_at_once(tmp_path, tiny):
    with pytest.raises(ValueError, match=f"more than the tokenizer takes at once \\({MAX_TEXT_CHARS}\\)"):
        tiny.tokenize("a" * (MAX_TEXT_CHARS + 1))
    # A 2 GiB file (sparse: no disk used) is refused by its size, without being read
    huge = tmp_path / "huge.txt"
    with open(huge, "wb") as f:
        f.truncate(2**31)
    line = one_line_error(run("perplexity", "-m", str(tiny.path), "-f", str(huge), "-c", "32", "-t", "1"))
    assert "2147483648 bytes is more text than pyengine tokenizes at once" in line
    # just over the limit in characters, within 4 bytes each: read, then refused
    over = tmp_path / "over.txt"
    over.write_bytes(b"a" * (MAX_TEXT_CHARS + 1))
    assert "more text than pyengine tokenizes" in one_line_error(
        run("perplexity", "-m", str(tiny.path), "-f", str(over), "-c", "32", "-t", "1"))


# --- threads ---


def test_more_threads_than_cpus_work_and_warn_once(tiny_path, tiny):
    n = usable_cpus() + 1
    with pytest.warns(pyengine.OversubscriptionWarning, match=f"{n} threads on {n - 1} CPUs") as caught:
        m = pyengine.Model(tiny_path, n_threads=n)
    assert len(caught) == 1
    np.testing.assert_array_equal(m.logits([1, 2, 3]), tiny.logits([1, 2, 3]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pyengine.Model(tiny_path, n_threads=usable_cpus())  # as many as the CPUs: no warning
    proc = run("generate", "-m", str(tiny_path), "-p", "Hi", "-n", "2", "-t", str(n))
    assert proc.returncode == 0
    warning_lines = [line for line in proc.stderr.decode().splitlines() if "warning" in line]
    assert warning_lines == [f"pyengine: warning: {n} threads on {n - 1} CPUs: they will take turns, and run "
                             f"slower than {n - 1}"]


# --- hostile values where the tools read them (quantize's hyper-parameters, an imatrix, info) ---


def _mutant(tiny_path, tmp_path, name, key, vtype, value, element_type=None):
    from gguf_mutants import RawGGUF, _set

    path = tmp_path / name
    path.write_bytes(_set(RawGGUF.from_file(tiny_path), key, vtype, value, element_type).to_bytes())
    return path


@pytest.mark.parametrize("key, vtype, value, element_type", [
    ("llama.attention.head_count", "FLOAT32", float("inf"), None),
    ("llama.block_count", "FLOAT64", float("inf"), None),
    ("llama.expert_count", "STRING", "many", None),
    ("llama.attention.head_count", "INT32", -4, None),
    ("general.architecture", "ARRAY", [1, 2], "UINT32"),
])
def test_quantize_refuses_bad_hyper_parameters_in_one_line(tmp_path, tiny_path, key, vtype, value, element_type):
    from gguf_mutants import VT

    bad = _mutant(tiny_path, tmp_path, "bad.gguf", key, VT[vtype], value, element_type and VT[element_type])
    out = tmp_path / "out.gguf"
    line = one_line_error(run("quantize", str(bad), str(out), "q8_0"))
    assert str(bad) in line and (key in line or "architecture" in line), line
    assert not out.exists()


@pytest.mark.parametrize("vtype, value, element_type", [
    ("FLOAT32", float("inf"), None), ("ARRAY", [3], "UINT32"), ("STRING", "x", None), ("INT64", 2**40, None),
])
def test_an_imatrix_with_a_bad_chunk_count_is_refused(tmp_path, tiny_path, vtype, value, element_type):
    from gguf_mutants import VT, RawGGUF, _set
    from pyengine.imatrix import Imatrix

    good = tmp_path / "good.imatrix.gguf"
    Imatrix({"blk.0.ffn_down.weight": (np.ones(32, np.float32), 3)}, 3, 64, ["t.txt"]).save(good)
    bad = tmp_path / "bad.imatrix.gguf"
    bad.write_bytes(_set(RawGGUF.from_file(good), "imatrix.chunk_count", VT[vtype], value,
                         element_type and VT[element_type]).to_bytes())
    with pytest.raises(pyengine.GGUFError, match="imatrix.chunk_count"):
        Imatrix.load(bad)
    line = one_line_error(run("quantize", str(tiny_path), str(tmp_path / "out.gguf"), "q4_k_m", "--imatrix", str(bad)))
    assert "imatrix.chunk_count" in line


def test_info_on_general_keys_of_the_wrong_type(tmp_path, tiny_path):
    """Shown, or refused in one line: never a traceback (the values went into a dict lookup and JSON)."""
    from gguf_mutants import VT

    for key, value, element_type in [("general.file_type", [7], VT.UINT32), ("general.name", [1, 2], VT.INT32),
                                     ("general.architecture", ["llama"], VT.STRING)]:
        path = _mutant(tiny_path, tmp_path, "odd.gguf", key, VT.ARRAY, value, element_type)
        for args in ([], ["--json"]):
            proc = run("info", str(path), *args)
            if proc.returncode != 0:
                assert key in one_line_error(proc)


def test_absurd_context_sizes_get_one_line(tiny_path, tiny):
    for n_ctx in (2**63, 2**64, 2**31):
        with pytest.raises(ValueError, match="n_ctx must be an integer from 1 to"):
            pyengine.Model(tiny_path, n_ctx=n_ctx, n_threads=1)
        with pytest.raises(ValueError, match="n_ctx must be an integer from 1 to"):
            tiny.context(n_ctx)
    assert "n_ctx" in one_line_error(run("generate", "-m", str(tiny_path), "-p", "hi", "-n", "1", "-t", "1",
                                         "-c", str(2**64)))


def test_tool_outputs_that_would_replace_the_input_or_not_load(tmp_path, tiny_path):
    text = tmp_path / "t.txt"
    text.write_text("The quick brown fox jumps over the lazy dog. " * 20)
    before = tiny_path.read_bytes()
    assert "another file than the input" in one_line_error(
        run("imatrix", "-m", str(tiny_path), "-f", str(text), "-o", str(tiny_path), "-c", "16", "-t", "1"))
    link = tmp_path / "link.gguf"
    link.symlink_to(tiny_path)
    assert "another file than the input" in one_line_error(run("quantize", str(tiny_path), str(link), "q8_0"))
    assert tiny_path.read_bytes() == before
    for flag, name in (("--token-embedding-type", "q8_k"), ("--output-tensor-type", "q8_1")):
        line = one_line_error(run("quantize", str(tiny_path), str(tmp_path / "o.gguf"), "q4_0", flag, name))
        assert "activation type" in line
    assert not (tmp_path / "o.gguf").exists()
    assert "a directory" in one_line_error(run("perplexity", "-m", str(tiny_path), "-f", str(tmp_path)))


@pytest.mark.skipif("libasan" in os.environ.get("LD_PRELOAD", ""),
                    reason="AddressSanitizer reserves terabytes of address space: an RLIMIT_AS stops it starting")
def test_an_allocation_the_limits_refuse_is_one_line(tiny_path):
    """A KV cache under the up-front check (MemAvailable) but over the process's address-space limit:
    the native allocation fails, and the command says so in one line."""
    import resource

    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))

    proc = subprocess.run([sys.executable, "-m", "pyengine", "generate", "-m", str(tiny_path), "-p", "hi", "-n", "1",
                           "-t", "1", "-c", str(2**27)], capture_output=True, timeout=120, cwd=ELSEWHERE,
                          preexec_fn=limit)
    line = one_line_error(proc)
    assert "memory" in line or "KV cache" in line


@pytest.mark.parametrize("call, match", [
    (lambda m, c: m.eval_batch([c], [[1.9]]), "integer"), (lambda m, c: m.eval_batch([c], [[True]]), "integer"),
    (lambda m, c: m.eval_batch([c], ["12"]), "not a string"), (lambda m, c: m.eval_batch([c], "1"), "not a string"),
    (lambda m, c: m.eval_sequences([c], [7.99]), "integer"), (lambda m, c: c.truncate(1.9), "integer"),
    (lambda m, c: c.truncate(2**64), "cannot truncate"), (lambda m, c: c.truncate(-1), "cannot truncate"),
])
def test_batch_ids_and_truncate_take_integers_only(tiny, call, match):
    """As Context.eval does: a float, a bool or a string is refused, not evaluated as the token it would
    round or parse to."""
    ctx = tiny.context()
    ctx.eval([1, 2])
    with pytest.raises(ValueError, match=match):
        call(tiny, ctx)
    assert ctx.n_past == 2


@pytest.mark.parametrize("x, type_, match", [
    (np.zeros((3, 0), np.float32), "f32", "at least one block"), (np.zeros((1, 32), np.float32), -1, "no quantizer"),
    (np.zeros((1, 32), np.float32), 2**40, "no quantizer"), (np.zeros((1, 32), np.float32), 1.5, "type name"),
])
def test_quantize_refuses_odd_types_and_empty_rows(x, type_, match):
    with pytest.raises(ValueError, match=match):
        pyengine.quantize(x, type_)
