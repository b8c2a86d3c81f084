"""The command line: `python -m pyengine chat` driven through a pseudo-terminal (pexpect) and a pipe,
the REPL loop in-process (its KV cache reuse), `generate`, and one-line errors on bad input.

Subprocesses run with -t 1: a busy machine slows a multi-threaded pool far more than one thread.
Their output may start with lines of the editable install's rebuild check, so the tests look at the
end of stdout and at the last line of stderr."""

import io
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

import pyengine

try:
    import pexpect
except ImportError:  # the terminal tests skip (spawn_chat); the others run
    pexpect = None
from pyengine.__main__ import build_parser
from pyengine.chat import ChatSession, chat_ids
from pyengine.cli import chat_repl
from tiny_models import write_tiny_llama

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "models"))
from recipes import smollm2  # noqa: E402


# Commands run from outside the repository: from its root, `python -m pyengine` would import the
# source tree instead of the installed package.
ELSEWHERE = tempfile.gettempdir()


def run(*args, stdin=None, timeout=120):
    return subprocess.run([sys.executable, "-m", "pyengine", *args], input=stdin, capture_output=True, text=True,
                          timeout=timeout, cwd=ELSEWHERE)


def last_line(text):
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
    return str(write_tiny_llama(tmp_path_factory.mktemp("cli") / "tiny.gguf"))


def spawn_chat(*args):
    pexpect = pytest.importorskip("pexpect")
    child = pexpect.spawn(sys.executable, ["-m", "pyengine", "chat", "-t", "1", *args], encoding="utf-8",
                          timeout=90, dimensions=(24, 200), cwd=ELSEWHERE)
    child.expect("> ")
    return child


# --- chat in a terminal ---


def test_chat_two_turns_help_reset_and_ctrl_d():
    child = spawn_chat("--seed", "1", "-n", "16")
    child.sendline("Hi")
    child.expect("Hi\r\n")  # the terminal's echo
    child.expect("\r\n> ")
    first = child.before.strip()
    assert first
    child.sendline("What is the capital of France?")
    child.expect("France\\?\r\n")
    child.expect("\r\n> ")
    assert child.before.strip()
    child.sendline("/reset")
    child.expect(r"\[conversation reset\]")
    child.expect("> ")
    child.sendeof()  # Ctrl-D quits
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def test_chat_ctrl_c_stops_the_answer_not_the_session():
    child = spawn_chat("--seed", "1", "-n", "400")
    child.sendline("Write a long story about a dragon who learns to cook.")
    child.expect("cook\\.\r\n")
    child.expect(r"\w+\W+\w+\W+\w+")  # the answer has started
    child.sendintr()
    child.expect(r"\[interrupted\]")
    child.expect("> ")  # back at the prompt: the session goes on
    child.sendline("/help")
    child.expect("/reset")
    child.expect("> ")
    child.sendline("/exit")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def test_chat_from_a_pipe():
    proc = run("chat", "-t", "1", "--seed", "3", "-n", "8", "--system", "Be brief.", stdin="Hi\n\n/nope\n/exit\n")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("> ") >= 3
    assert "unknown command /nope" in proc.stderr


# --- the REPL in-process: the cache is reused across turns ---


def test_repl_evaluates_only_the_new_turn():
    model = pyengine.Model(smollm2("q4_0"), n_ctx=512, n_threads=1)
    session = ChatSession(model, max_tokens=16, temperature=0)
    lines = iter(["What is 2+2?", "And 3+3?", "/exit"])
    seen = []

    def read(prompt):
        seen.append((session.last_reused, session.last_prompt_eval, session.last_eval_count, len(session.ctx_ids)))
        return next(lines)

    out, err = io.StringIO(), io.StringIO()
    chat_repl(session, read=read, out=out, err=err)
    (_, _, _, _), (reused1, prompt1, count1, held1), _ = seen
    assert reused1 == 0 and prompt1 == len(chat_ids(model, session.messages[:1]))
    reused2, prompt2, count2 = session.last_reused, session.last_prompt_eval, session.last_eval_count
    assert reused2 == held1  # everything the context held after turn 1
    assert prompt2 == len(chat_ids(model, session.messages[:-1])) - held1 < 20
    assert prompt2 < count2 <= prompt2 + 16  # the new turn, then the reply's tokens one by one
    assert out.getvalue().count("\n") == 2 and err.getvalue() == ""


# --- generate ---


def test_generate_streams_the_completion(tiny_path):
    proc = run("generate", "-m", tiny_path, "-p", "Hello", "-n", "12", "--temp", "0", "-t", "1")
    assert proc.returncode == 0, proc.stderr
    expected = pyengine.Model(tiny_path, n_threads=1).generate("Hello", max_tokens=12, temperature=0).text
    assert proc.stdout.endswith(expected + "\n")


def test_generate_on_the_default_model_with_a_seed():
    args = ("generate", "-p", "The capital of France is", "-n", "12", "--seed", "5", "-t", "1")
    a, b = run(*args), run(*args)
    assert a.returncode == 0 and a.stdout == b.stdout and a.stdout.strip()


def test_generate_with_a_draft(tiny_path):
    expected = pyengine.Model(tiny_path, n_threads=1).generate("Hello", max_tokens=12, temperature=0).text
    for draft in ("lookup", tiny_path):
        proc = run("generate", "-m", tiny_path, "-p", "Hello", "-n", "12", "--temp", "0", "-t", "1", "--draft", draft,
                   "--draft-max", "4")
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.endswith(expected + "\n")


def test_generate_beams(tiny_path):
    if not hasattr(pyengine.Model, "beam_search"):
        pytest.skip("Model.beam_search is not there yet")
    proc = run("generate", "-m", tiny_path, "-p", "Hello", "-n", "6", "--beams", "2", "-t", "1")
    assert proc.returncode == 0, proc.stderr
    best = pyengine.Model(tiny_path, n_threads=1).beam_search("Hello", num_beams=2, max_tokens=6)[0]
    assert proc.stdout.endswith(best.text + "\n")


# --- bad input: one line on stderr, a non-zero exit, no traceback ---


@pytest.mark.parametrize("args, message", [
    (["generate", "-m", "/no/such/model.gguf", "-p", "x"], "no such file"),
    (["chat", "-m", "/no/such/model.gguf"], "no such file"),
    (["generate", "-m", "{bad}", "-p", "x"], "bad.gguf"),
    (["generate", "-m", "{tiny}", "-p", "x", "--temp", "-1"], "temperature"),
    (["generate", "-m", "{tiny}", "-p", "x", "--top-p", "0"], "top_p"),
    (["generate", "-m", "{tiny}", "-p", "x", "--top-k", "abc"], "--top-k"),
    (["generate", "-m", "{tiny}", "-p", "x", "-n", "-5"], "-n"),
    (["generate", "-m", "{tiny}", "-p", "x", "--repeat-penalty", "nan"], "repetition_penalty"),
    (["generate", "-m", "{tiny}", "-p", "x", "-c", "0"], "-c"),
    (["generate", "-m", "{tiny}"], "--prompt"),
    (["chat", "-m", "{tiny}", "--temp", "-0.5"], "temperature"),
    (["chat", "-m", "{tiny}", "--min-p", "2"], "min_p"),
    (["generate", "-m", "{tiny}", "-p", "x", "--draft-max", "0"], "--draft-max"),
    (["generate", "-m", "{tiny}", "-p", "x", "--draft", "/no/such/draft.gguf"], "--draft"),
    (["generate", "-m", "{tiny}", "-p", "x", "--draft", "lookup", "--beams", "2"], "--draft"),
    (["generate", "-m", "{tiny}", "-p", "x", "--beams", "2", "--stop", "."], "--stop: not applied by beam search"),
    (["generate", "-m", "{tiny}", "-p", "x", "--beams", "2", "--repeat-penalty", "1.3"], "--repeat-penalty"),
    (["generate", "-m", "{tiny}", "-p", "x", "--draft", "{bad}"], "bad.gguf"),
    (["chat", "-m", "{tiny}", "--draft-max", "65"], "--draft-max"),
    (["serve", "-m", "{tiny}", "--draft", "/no/such/draft.gguf"], "--draft"),
    (["nonsense"], "invalid choice"),
])
def test_bad_input_is_one_line(tmp_path, tiny_path, args, message):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF\x03\x00\x00\x00" + b"\xff" * 40)
    args = [a.replace("{bad}", str(bad)).replace("{tiny}", tiny_path) for a in args]
    proc = run(*args, stdin="")
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    line = last_line(proc.stderr)
    assert line.startswith("pyengine") and "error" in line and message in line, proc.stderr


def test_parser_keeps_room_for_more_commands():
    parser = build_parser()
    assert parser.parse_args(["chat"]).command == "chat"
    assert parser.parse_args(["generate", "-p", "x", "--beams", "3"]).beams == 3
