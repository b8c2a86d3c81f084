"""The format tools on the command line: quantize, perplexity, bench, info; exit codes and one-line
errors on bad input."""

import json
import os
import subprocess
import sys

import pytest

from pyengine.gguf import GGUFReader

from tiny_models import write_tiny_llama

TEXT = "The quick brown fox jumps over the lazy dog. " * 30


def run(args, cwd):
    # from another directory, so that the installed package is imported
    return subprocess.run([sys.executable, "-m", "pyengine", *args], capture_output=True, text=True, cwd=cwd,
                          env=dict(os.environ, PYENGINE_CACHE=str(cwd)), timeout=300)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    model = write_tiny_llama(d / "f32.gguf", weight_type="f32", n_ctx_train=128, seed=5)
    text = d / "text.txt"
    text.write_text(TEXT)
    return d, model, text


def one_line_error(result):
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


def test_quantize_writes_the_file_and_reports(files):
    d, model, _ = files
    out = d / "q4.gguf"
    r = run(["quantize", str(model), str(out), "q4_0"], d)
    assert r.returncode == 0, r.stderr
    assert "MB ->" in r.stdout and "kept at higher precision: token_embd.weight (q8_0)" not in r.stdout
    assert "q4_0" in r.stdout
    with GGUFReader(out) as g:
        assert g.tensors["blk.0.attn_q.weight"].type.name == "Q4_0"
        assert g.metadata["general.file_type"] == 2


@pytest.mark.parametrize("args,match", [
    (["quantize", "{model}", "{d}/x.gguf", "q9_9"], "unknown tensor type"),
    (["quantize", "{d}/missing.gguf", "{d}/x.gguf", "q4_0"], "no such file"),
    (["quantize", "{model}", "/proc/forbidden/x.gguf", "q4_0"], ""),
    (["info", "{d}/missing.gguf"], "no such file"),
    (["info", "{text}"], "GGUF"),
    (["perplexity", "-m", "{model}", "-f", "{d}/missing.txt"], "no such file"),
    (["perplexity", "-m", "{model}", "-f", "{text}", "-c", "4096"], ""),
    (["bench", "-m", "{model}", "-p", "x"], "comma-separated"),
    (["bench", "-m", "{model}", "-t", "0", "-p", "4", "-n", "1"], "-t"),
])
def test_bad_input_is_one_line_and_non_zero(files, args, match):
    d, model, text = files
    args = [a.format(d=d, model=model, text=text) for a in args]
    line = one_line_error(run(args, d))
    assert match in line
    assert not (d / "x.gguf").exists()
    assert not [p for p in os.listdir(d) if p.endswith(".tmp")]


def test_info_and_json(files):
    d, model, _ = files
    r = run(["info", str(model)], d)
    assert r.returncode == 0 and "bits per weight" in r.stdout
    r = run(["info", str(model), "--json"], d)
    assert json.loads(r.stdout)["architecture"] == "llama"


def test_perplexity_json_and_kl_base(files):
    d, model, text = files
    r = run(["perplexity", "-m", str(model), "-f", str(text), "-c", "64", "--chunks", "2", "--json"], d)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["ppl"] > 1 and out["n_chunks"] == 2
    r = run(["perplexity", "-m", str(model), "-f", str(text), "-c", "64", "--chunks", "2", "--kl-base", str(model)], d)
    assert r.returncode == 0 and "Final estimate: PPL" in r.stdout and "same top-1: 100.00%" in r.stdout


def test_bench_json_and_plot(files):
    d, model, text = files
    r = run(["bench", "-m", str(model), "-p", "8", "-n", "2", "-t", "1", "-r", "1", "--json"], d)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert {"model", "threads", "pp_tok_s", "tg_tok_s"} <= set(out) and out["threads"] == 1
    plot = d / "plot.png"
    r = run(["bench", "-m", str(model), "-m", str(model), "-p", "8", "-n", "2", "-t", "1,2", "-r", "1", "--json",
             "--plot", str(plot), "--ppl", str(text), "--kld", str(model), "--ppl-chunks", "1"], d)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert isinstance(out, list) and len(out) == 4 and out[0]["kld"] == pytest.approx(0.0, abs=1e-6)  # base log-probs kept as float32
    assert plot.stat().st_size > 1000


def test_cache_type_flags(files):
    """-ctk/-ctv as llama.cpp's: either sets the one type pyengine keeps keys and values in."""
    d, model, text = files
    bench = ["bench", "-m", str(model), "-p", "0", "-n", "2", "-d", "4", "-t", "1", "-r", "1", "--json"]
    r = run(bench + ["-ctv", "f32"], d)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["kv_type"] == "f32"
    for flags, message in ((["-ctk", "q8_0", "-ctv", "f16"], "-ctk q8_0 and -ctv f16 differ"),
                           (["-ctk", "q8_0"], "multiple of 32; this model's is 16"),  # the tiny model's heads
                           (["-ctk", "q4_0"], "invalid choice")):
        r = run(bench + flags, d)
        assert r.returncode != 0 and message in r.stderr and r.stderr.count("\n") == 1, r.stderr
    r = run(["perplexity", "-m", str(model), "-f", str(text), "-c", "16", "--chunks", "1", "--json", "-ctk", "f32"], d)
    assert r.returncode == 0, r.stderr
