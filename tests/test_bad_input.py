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
