"""Chat templates (rendered as transformers does, in a sandbox), their tokenization, chat(), and the
ChatSession that keeps a conversation in one KV cache."""

import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from gguf_mutants import RawGGUF, _set
from jinja2.exceptions import SecurityError

import pyengine
from pyengine.chat import (CHATML_TEMPLATE, FALLBACK_TEMPLATES, GEMMA_TEMPLATE, PHI3_TEMPLATE, ChatSession,
                           ChatTemplate, ChatTemplateError, chat_ids)
from pyengine.gguf import GGUFReader, GGUFValueType
from tiny_models import write_tiny_llama

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "models"))
from recipes import smollm2  # noqa: E402

SMOL_DEFAULT_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
CONVERSATION = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello!"},
    {"role": "user", "content": "Bye"},
]
USER = [{"role": "user", "content": "Hi"}]


@pytest.fixture(scope="module")
def smol():
    return pyengine.Model(smollm2("q4_0"), n_ctx=512, n_threads=1)


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
    return write_tiny_llama(tmp_path_factory.mktemp("chat") / "tiny.gguf")


def tokenizer_model(path, *, tokens=(), **metadata):
    """What chat_ids needs of a model (tokenizer, metadata), with metadata keys changed and control
    tokens added to the vocabulary."""
    with GGUFReader(path) as reader:
        md = dict(reader.metadata)
    if tokens:
        md["tokenizer.ggml.tokens"] = list(md["tokenizer.ggml.tokens"]) + list(tokens)
        md["tokenizer.ggml.token_type"] = np.append(md["tokenizer.ggml.token_type"], [3] * len(tokens)).astype(np.int32)
    md.update(metadata)
    return SimpleNamespace(tokenizer=pyengine.Tokenizer.from_metadata(md), metadata=md)


# --- rendering ---


def test_smollm2_template_renders_chatml(smol):
    template = ChatTemplate.from_model(smol)
    assert template.render(CONVERSATION) == (
        "<|im_start|>system\nYou are terse.<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\nHello!<|im_end|>\n"
        "<|im_start|>user\nBye<|im_end|>\n"
        "<|im_start|>assistant\n")
    assert template.render(USER, add_generation_prompt=False) == (
        f"<|im_start|>system\n{SMOL_DEFAULT_SYSTEM}<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n")
    assert template.supports_system


def test_smollm2_chat_ids_parse_special_tokens(smol):
    ids = chat_ids(smol, CONVERSATION)
    im_start, im_end = smol.tokenizer.token_id("<|im_start|>"), smol.tokenizer.token_id("<|im_end|>")
    assert ids[0] == im_start and ids.count(im_start) == 5 and ids.count(im_end) == 4
    assert smol.tokenizer.decode(ids) == ChatTemplate.from_model(smol).render(CONVERSATION)
    assert ids[-4:] == smol.tokenizer.encode("<|im_start|>assistant\n")


def test_no_double_bos(tiny_path):
    with_bos = "{{ bos_token }}{% for m in messages %}[{{ m.role }}] {{ m.content }}\n{% endfor %}"
    model = tokenizer_model(tiny_path, **{"tokenizer.ggml.add_bos_token": True, "tokenizer.chat_template": with_bos})
    bos = model.tokenizer.bos_id
    ids = chat_ids(model, USER)
    assert ids[0] == bos and ids[1] != bos and ids.count(bos) == 1
    # a template without the BOS text gets one added, as the file asks
    model = tokenizer_model(tiny_path, **{"tokenizer.ggml.add_bos_token": True,
                                          "tokenizer.chat_template": with_bos.replace("{{ bos_token }}", "")})
    ids = chat_ids(model, USER)
    assert ids[0] == bos and ids.count(bos) == 1
    # and none when the file does not ask
    model = tokenizer_model(tiny_path, **{"tokenizer.chat_template": with_bos.replace("{{ bos_token }}", "")})
    assert bos not in chat_ids(model, USER)


def test_fallback_chatml_when_the_file_has_none(tiny_path):
    model = tokenizer_model(tiny_path)
    template = ChatTemplate.from_model(model)
    assert template.source == CHATML_TEMPLATE
    assert template.render(USER) == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"


# --- a family's turns for a file without a template ---

GEMMA_TOKENS = ("<start_of_turn>", "<end_of_turn>")
PHI3_TOKENS = ("<|user|>", "<|assistant|>", "<|system|>", "<|end|>")
LLAMA3_TOKENS = ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")
CHATML_TOKENS = ("<|im_start|>", "<|im_end|>")
# llama.cpp's own renderings of CONVERSATION (llama_chat_apply_template with "gemma", "phi3", "llama3"
# and "chatml"), after the BOS text (llama.cpp adds BOS when it tokenizes; the templates write it)
FAMILY_RENDERINGS = {
    "gemma": ("<start_of_turn>user\nYou are terse.\n\nHi<end_of_turn>\n<start_of_turn>model\nHello!<end_of_turn>\n"
              "<start_of_turn>user\nBye<end_of_turn>\n<start_of_turn>model\n"),
    "phi3": ("<|system|>\nYou are terse.<|end|>\n<|user|>\nHi<|end|>\n<|assistant|>\nHello!<|end|>\n"
             "<|user|>\nBye<|end|>\n<|assistant|>\n"),
    "llama3": ("<|start_header_id|>system<|end_header_id|>\n\nYou are terse.<|eot_id|>"
               "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
               "<|start_header_id|>assistant<|end_header_id|>\n\nHello!<|eot_id|>"
               "<|start_header_id|>user<|end_header_id|>\n\nBye<|eot_id|>"
               "<|start_header_id|>assistant<|end_header_id|>\n\n"),
    "chatml": ("<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
               "<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\nBye<|im_end|>\n<|im_start|>assistant\n"),
}


@pytest.mark.parametrize("name, tokens, end_of_turn", [
    ("gemma", GEMMA_TOKENS, "<end_of_turn>"), ("phi3", PHI3_TOKENS, "<|end|>"),
    ("llama3", LLAMA3_TOKENS, "<|eot_id|>"), ("chatml", CHATML_TOKENS, "<|im_end|>")])
def test_a_file_without_a_template_gets_its_familys(tiny_path, name, tokens, end_of_turn):
    model = tokenizer_model(tiny_path, tokens=tokens)
    template = ChatTemplate.from_model(model)
    assert template.name == name
    bos = model.tokenizer.token_text(model.tokenizer.bos_id)
    text = template.render(CONVERSATION)
    assert text in (FAMILY_RENDERINGS[name], bos + FAMILY_RENDERINGS[name])
    # the turn tokens are single ids, and the end of the turn ends generation
    ids = chat_ids(model, CONVERSATION)
    for token in tokens:
        if token in text:
            assert model.tokenizer.token_id(token) in ids, token
    assert model.tokenizer.token_id(end_of_turn) in model.tokenizer.eog_ids
    assert model.tokenizer.decode(ids) == text


def test_the_fallback_follows_the_architecture_then_the_table(tiny_path):
    both = GEMMA_TOKENS + CHATML_TOKENS
    for architecture, name in (("gemma3", "gemma"), ("qwen2", "chatml"), ("qwen3", "chatml"), ("llama", "gemma")):
        model = tokenizer_model(tiny_path, tokens=both, **{"general.architecture": architecture})
        assert ChatTemplate.from_model(model).name == name, architecture
    # an architecture's template without its tokens is not taken: ChatML, as llama.cpp, for the rest
    model = tokenizer_model(tiny_path, **{"general.architecture": "gemma3"})
    assert ChatTemplate.from_model(model).name == "chatml"
    model = tokenizer_model(tiny_path, tokens=GEMMA_TOKENS, **{"tokenizer.chat_template": CHATML_TEMPLATE})
    assert ChatTemplate.from_model(model).name == "file"
    assert [t.name for t in FALLBACK_TEMPLATES][-1] == "chatml"


def test_gemma_template_folds_the_system_message_and_wants_alternating_turns():
    template = ChatTemplate(GEMMA_TEMPLATE, {"bos_token": "<bos>"})
    assert template.supports_system  # Gemma's template folds it itself: no merging by pyengine
    assert template.render(CONVERSATION) == "<bos>" + FAMILY_RENDERINGS["gemma"]
    assert template.render([{"role": "user", "content": "  Hi \n"}], add_generation_prompt=False) == \
        "<bos><start_of_turn>user\nHi<end_of_turn>\n"
    with pytest.raises(ChatTemplateError, match="Conversation roles must alternate"):
        template.render([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}])
    assert ChatTemplate(PHI3_TEMPLATE, {"eos_token": "<|endoftext|>"}).render(USER, add_generation_prompt=False) == \
        "<|user|>\nHi<|end|>\n<|endoftext|>"


QWEN25_TEMPLATE = Path(__file__).resolve().parent / "data" / "chat_template_qwen2.5-instruct.jinja"


def test_qwen2_file_template_and_end_of_turn():
    vocab = Path(__file__).resolve().parents[2] / "shared" / "data" / "vocab" / "ggml-vocab-qwen2.gguf"
    if not vocab.exists():
        pytest.skip(f"{vocab} is absent")
    model = tokenizer_model(vocab, **{"tokenizer.chat_template": QWEN25_TEMPLATE.read_text(encoding="utf-8")})
    template = ChatTemplate.from_model(model)
    assert template.name == "file"
    assert template.render(CONVERSATION) == FAMILY_RENDERINGS["chatml"]
    assert template.render(USER).startswith("<|im_start|>system\nYou are Qwen, created by Alibaba Cloud.")
    tok = model.tokenizer
    ids = chat_ids(model, CONVERSATION)
    im_start, im_end = tok.token_id("<|im_start|>"), tok.token_id("<|im_end|>")
    assert ids[0] == im_start and ids.count(im_start) == 5 and ids.count(im_end) == 4
    assert ids[-3:] == [im_start, tok.token_id("assistant"), tok.token_id("\u010a")]
    assert tok.eot_id == im_end and {im_end, tok.token_id("<|endoftext|>")} <= tok.eog_ids


def renamed_tokens(path, out, names: dict[str, str]):
    """A copy of a tiny model file with filler tokens renamed ({old: new}) as control tokens."""
    raw = RawGGUF.from_file(path)
    with GGUFReader(path) as reader:
        tokens = list(reader.metadata["tokenizer.ggml.tokens"])
        types = np.array(reader.metadata["tokenizer.ggml.token_type"], np.int32)
    for old, new in names.items():
        i = tokens.index(old)
        tokens[i], types[i] = new, 3
    raw = _set(raw, "tokenizer.ggml.tokens", GGUFValueType.ARRAY, tokens, GGUFValueType.STRING)
    raw = _set(raw, "tokenizer.ggml.token_type", GGUFValueType.ARRAY, types.tolist(), GGUFValueType.INT32)
    out.write_bytes(raw.to_bytes())
    return out


def test_chat_with_the_gemma_fallback(tiny_path, tmp_path):
    """A base model's file in Gemma's vocabulary: the chat writes Gemma's turns (the REPL on a pipe)."""
    path = renamed_tokens(tiny_path, tmp_path / "gemma-like.gguf",
                          {"<filler0>": "<start_of_turn>", "<filler1>": "<end_of_turn>"})
    model = pyengine.Model(str(path), n_ctx=128, n_threads=1)
    session = ChatSession(model, system="Be brief.", max_tokens=6, seed=1)
    assert session.template.name == "gemma"
    "".join(session.ask("Hi"))
    start = model.tokenizer.token_id("<start_of_turn>")
    assert session.ctx_ids[:2] == [model.tokenizer.token_id("<|endoftext|>"), start]  # the template's BOS text
    assert model.tokenizer.decode(session.ctx_ids[:session.last_prompt_eval]).endswith(
        "<start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\n")
    "".join(session.ask("Bye"))
    assert session.ctx_ids.count(start) == 4 and session.last_reused > 0
    proc = subprocess.run([sys.executable, "-m", "pyengine", "chat", "-m", str(path), "-t", "1", "-n", "4",
                           "--seed", "1"], input="Hi\n/exit\n", capture_output=True, text=True, timeout=120,
                          cwd=tmp_path)  # not the repository root: there `-m pyengine` would import the source tree
    assert proc.returncode == 0, proc.stderr


def gemma3_path():
    fetch = pytest.importorskip("pyengine.fetch")
    if not hasattr(fetch, "fetch_gemma3_270m"):
        pytest.skip("pyengine.fetch has no fetch_gemma3_270m")
    return fetch.fetch_gemma3_270m()


def test_gemma3_270m_gets_gemmas_turns():
    path = gemma3_path()
    model = tokenizer_model(path)
    assert "tokenizer.chat_template" not in model.metadata  # the base model has none
    template = ChatTemplate.from_model(model)
    assert template.name == "gemma"
    tok = model.tokenizer
    ids = chat_ids(model, CONVERSATION)
    assert ids == tok.encode("<bos>" + FAMILY_RENDERINGS["gemma"])
    assert ids[:2] == [tok.bos_id, tok.token_id("<start_of_turn>")] and ids.count(tok.bos_id) == 1
    assert tok.eot_id == tok.token_id("<end_of_turn>") in tok.eog_ids
    try:
        gemma = pyengine.Model(str(path), n_ctx=256, n_threads=1)
    except pyengine.GGUFError as e:  # the engine does not run gemma3 yet
        pytest.skip(f"gemma-3-270m does not load: {e}")
    reply = gemma.chat([{"role": "user", "content": "What is the capital of France?"}], temperature=0,
                       max_tokens=24)
    assert reply.text.strip() and "<end_of_turn>" not in reply.text and "<start_of_turn>" not in reply.text
    assert not set(reply.tokens) & tok.eog_ids


@pytest.mark.parametrize("source", [
    "{{ ''.__class__ }}",
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ cycler.__init__.__globals__.os.popen('id').read() }}",
    "{{ messages.__class__ }}",
    "{% set _ = messages.append({'role': 'user', 'content': 'x'}) %}",
    "{{ messages[0].update({'role': 'x'}) }}",
])
def test_sandbox_refuses_unsafe_templates(source):
    with pytest.raises(ChatTemplateError) as info:
        ChatTemplate(source).render(USER)
    assert isinstance(info.value.__cause__, SecurityError)
    assert "unsafe" in str(info.value)


@pytest.mark.parametrize("source, words", [
    ("{{ 'x' * 10**12 }}", "builds a value of 1000000000000 items"),
    ("{{ [1] * 10**10 }}", "builds a value"),
    ("{{ (['x' * 10000000] * 1000) | join('') }}", "builds a value"),
    ("{{ 7 ** 100000 }}", "to the power"),
    ("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}", "steps"),
    ("{% set ns = namespace(s='x') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s }}",
     "builds a value"),
    ("{% set ns = namespace(s='x') %}{% for i in range(64) %}{% set ns.s = ns.s + ns.s %}{% endfor %}{{ ns.s }}",
     "builds a value"),
    ("{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}", "RecursionError"),
    ("{% macro d(n) %}{% if n %}{{ d(n - 1) }}{{ d(n - 1) }}{% endif %}{% endmacro %}{{ d(40) }}", "steps"),
    ("{% for i in range(100000) %}{{ 'x' * 1000 }}{% endfor %}", "writes more than"),
    ("{{ 'x' | center(10**12) }}", "passes 1000000000000"),
    ("{{ 'x'.ljust(10**12) }}", "passes 1000000000000"),
])
def test_templates_that_would_exhaust_time_or_memory_are_refused(source, words):
    start = time.perf_counter()
    with pytest.raises(ChatTemplateError, match=words):
        ChatTemplate(source).render(CONVERSATION)
    assert time.perf_counter() - start < 10


@pytest.mark.parametrize("depth", [100, 100_000])
def test_deeply_nested_templates_are_refused(depth):
    for source in ("{{ " + "(" * depth + "1" + ")" * depth + " }}", "{% if 1 %}" * depth + "{% endif %}" * depth):
        with pytest.raises(pyengine.GGUFError, match="tokenizer.chat_template does not compile"):
            ChatTemplate(source)


def test_transformers_helpers_and_options():
    with pytest.raises(ChatTemplateError, match="Conversation roles must alternate"):
        ChatTemplate("{{ raise_exception('Conversation roles must alternate') }}").render(USER)
    assert ChatTemplate("{{ strftime_now('%Y') }}").render(USER) == str(datetime.now().year)
    assert ChatTemplate("{{ messages[0]['content'] | tojson }}").render(
        [{"role": "user", "content": "né \"q\""}]) == '"né \\"q\\""'
    loop = "{% for m in messages %}{% if loop.index > 1 %}{% break %}{% endif %}{{ m.content }}{% endfor %}"
    assert ChatTemplate(loop).render(CONVERSATION) == "You are terse."
    # trim_blocks and lstrip_blocks, as transformers sets them
    blocks = "{% for m in messages %}\n  {{ m.content }}\n    {% if m.role == 'user' %}!{% endif %}\n{% endfor %}"
    assert ChatTemplate(blocks).render(USER + [{"role": "assistant", "content": "a"}]) == "  Hi\n!  a\n"
    assert ChatTemplate("{{ bos_token }}|{{ eos_token }}", {"bos_token": "<s>", "eos_token": "</s>"}) \
        .render(USER) == "<s>|</s>"


def test_a_bad_template_is_a_gguf_error():
    with pytest.raises(pyengine.GGUFError, match="tokenizer.chat_template"):
        ChatTemplate("{% for m in messages %}")


NO_SYSTEM_RAISES = (
    "{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
    "{% for m in messages %}<start_of_turn>{{ m['role'] }}\n{{ m['content'] }}<end_of_turn>\n{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}")
NO_SYSTEM_IGNORES = (
    "{% for m in messages %}{% if m['role'] == 'user' %}[INST] {{ m['content'] }} [/INST]"
    "{% elif m['role'] == 'assistant' %}{{ m['content'] }}</s>{% endif %}{% endfor %}")


@pytest.mark.parametrize("source", [NO_SYSTEM_RAISES, NO_SYSTEM_IGNORES])
def test_system_merged_into_the_first_user_message(source):
    template = ChatTemplate(source)
    assert not template.supports_system
    text = template.render(CONVERSATION)
    assert "You are terse.\n\nHi" in text and text.count("You are terse.") == 1
    assert "Bye" in text and "\n\nBye" not in text
    assert "You are terse." in template.render([{"role": "system", "content": "You are terse."}])


@pytest.mark.parametrize("bad", ["Hi", [], [{"role": "user"}], [{"role": 1, "content": "x"}],
                                 [{"role": "user", "content": None}], ["Hi"]])
def test_bad_messages(smol, bad):
    with pytest.raises(ValueError):
        smol.chat(bad)


# --- chat() ---


def test_chat_stops_at_the_end_of_turn(smol):
    reply = smol.chat([{"role": "user", "content": "What is the capital of France?"}], temperature=0, max_tokens=64)
    assert isinstance(reply, pyengine.Completion)
    assert "Paris" in reply.text and reply.finish_reason == "stop"
    assert not set(reply.tokens) & smol.tokenizer.eog_ids and "<|im_end|>" not in reply.text
    pieces = list(smol.chat([{"role": "user", "content": "What is the capital of France?"}], temperature=0,
                            max_tokens=64, stream=True))
    assert "".join(pieces) == reply.text
    seeded = smol.chat(USER, seed=3, max_tokens=16)
    assert seeded == smol.chat(USER, seed=3, max_tokens=16)


# --- ChatSession ---


def test_session_reuses_the_cache_and_matches_a_fresh_chat(smol):
    session = ChatSession(smol, system="You are terse.", max_tokens=24, temperature=0)
    first = "".join(session.ask("What is the capital of France?"))
    assert session.last_reused == 0 and session.last_eval_count > session.last_prompt_eval > 10
    held = list(session.ctx_ids)
    assert session.ctx.n_past == len(held)
    second = "".join(session.ask("And of Italy?"))
    # only the new turn was evaluated: the previous prompt and reply came from the cache
    new_turn = chat_ids(smol, session.messages[:-1])
    assert session.last_reused == len(held)
    assert session.last_prompt_eval == len(new_turn) - len(held) < 20
    # and the reply is what a fresh context gives for the whole conversation
    assert second == smol.chat(session.messages[:-1], temperature=0, max_tokens=24).text
    assert session.messages[-2:] == [{"role": "user", "content": "And of Italy?"},
                                     {"role": "assistant", "content": second}]
    assert session.messages[2]["content"] == first
    session.reset()
    assert session.messages == [{"role": "system", "content": "You are terse."}] and session.ctx.n_past == 0


def test_session_interrupted_answer_stays_consistent(smol):
    session = ChatSession(smol, max_tokens=200, seed=1)
    reply = session.ask("Tell me a long story about a dragon.")
    pieces = [next(reply) for _ in range(5)]
    reply.close()  # the REPL's Ctrl-C
    assert session.last_finish == "interrupted"
    assert session.messages[-1] == {"role": "assistant", "content": "".join(pieces)}
    assert session.ctx.n_past == len(session.ctx_ids)

    calls = 0
    sampler = session.sampler

    def interrupting(ids, logits):
        nonlocal calls
        calls += 1
        if calls == 4:
            raise KeyboardInterrupt
        return sampler(ids, logits)

    session.sampler = interrupting
    with pytest.raises(KeyboardInterrupt):
        list(session.ask("Go on."))
    assert session.ctx.n_past == len(session.ctx_ids) and session.last_finish == "interrupted"
    session.sampler = sampler
    assert "".join(session.ask("Thanks.")) is not None
    assert session.last_reused > 0 and session.ctx.n_past == len(session.ctx_ids)


def test_session_reply_left_unfinished_joins_before_the_next_turn(smol):
    """A reply the caller stops reading without close(): the next ask() ends it, and when the
    abandoned iterator is collected later it changes nothing."""
    import gc

    session = ChatSession(smol, max_tokens=30, temperature=0)
    first = session.ask("Write a poem about the sea.")
    piece = next(first)
    answer = "".join(session.ask("What is 2+2?"))
    assert [m["role"] for m in session.messages] == ["user", "assistant", "user", "assistant"]
    assert session.messages[1]["content"] == piece and session.messages[3]["content"] == answer
    del first
    gc.collect()
    assert len(session.messages) == 4 and session.ctx.n_past == len(session.ctx_ids)
    never_read = session.ask("And 3+3?")  # never started: it joins as an empty reply
    session.reset()
    del never_read
    gc.collect()
    assert session.messages == [] and session.ctx.n_past == 0


def test_session_drops_the_oldest_turns_when_full(smol):
    session = ChatSession(smol, system="Be brief.", max_tokens=12, n_ctx=96, temperature=0)
    dropped = 0
    for i in range(5):
        "".join(session.ask(f"Question {i}: name a color."))
        dropped += session.last_dropped
        assert session.messages[0] == {"role": "system", "content": "Be brief."}
        assert session.ctx.n_past == len(session.ctx_ids) <= 96
    assert dropped > 0
    assert session.messages[1]["content"] != "Question 0: name a color."
    before = list(session.messages)
    with pytest.raises(ValueError, match="does not fit"):
        session.ask("word " * 200)
    assert session.messages == before
