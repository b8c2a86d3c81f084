"""pyengine.tokenizer: llama.cpp's tokenizer test vectors, round trips, special tokens, streaming
detokenization and hostile vocabularies."""

from __future__ import annotations

from pathlib import Path

import json
import re
import struct

import numpy as np
import pytest

import pyengine.tokenizer as tokenizer_module
from pyengine.gguf import GGUFError, GGUFReader, GGUFValueType, GGUFWriter
from pyengine.tokenizer import (MAX_TEXT_CHARS, PRE_TOKENIZERS, UNSUPPORTED_PRE_TOKENIZERS, StreamDecoder, Tokenizer,
                                TokenType)

VT = GGUFValueType
# The repository's parent holds shared/ (in CI too: a clone of the repository with shared/ beside it).
VOCAB_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "vocab"
VOCABS = ["ggml-vocab-llama-spm.gguf", "ggml-vocab-gpt-2.gguf", "ggml-vocab-qwen2.gguf"]
VECTOR_SEPARATOR = "\n__ggml_vocab_test__\n"

ROUND_TRIP_TEXTS = [
    "Hello world",
    " Hello world",
    "  leading spaces and trailing   ",
    "Hello, y'all! How are you?",
    "caf\u00e9 na\u00efve r\u00e9sum\u00e9 \u00c4pfel \u00fcber",
    "\u4f60\u597d\uff0c\u4e16\u754c\uff01\u65e5\u672c\u8a9e\u306e\u6587\u7ae0\u3002",
    "\U0001f680 rockets \U0001f642\U0001f44d\U0001f3fd \U0001f468\u200d\U0001f469\u200d\U0001f467 emoji",
    "tabs\tand\nnew\n\nlines\r\n  \t \n",
    "digits 0 12 345 6789 3.14159 1,000,000",
    "\u0928\u092e\u0938\u094d\u0924\u0947 \u0645\u0631\u062d\u0628\u0627 "
    "\u0417\u0434\u0440\u0430\u0432\u0441\u0442\u0432\u0443\u0439\u0442\u0435",
    "code: def f(x):\n    return x ** 2  # square",
    "a",
    " ",
    "\n",
]


def vocab_path(name: str) -> Path:
    path = VOCAB_DIR / name
    if not path.exists():
        pytest.skip(f"{path} is absent: the shared test data (shared/data beside the repository) is not here")
    return path


@pytest.fixture(scope="module")
def spm():
    return Tokenizer.from_gguf(vocab_path("ggml-vocab-llama-spm.gguf"))


@pytest.fixture(scope="module")
def gpt2():
    return Tokenizer.from_gguf(vocab_path("ggml-vocab-gpt-2.gguf"))


@pytest.fixture(scope="module")
def qwen2():
    return Tokenizer.from_gguf(vocab_path("ggml-vocab-qwen2.gguf"))


@pytest.fixture(scope="module")
def tokenizers(spm, gpt2, qwen2):
    return {"ggml-vocab-llama-spm.gguf": spm, "ggml-vocab-gpt-2.gguf": gpt2, "ggml-vocab-qwen2.gguf": qwen2}


def read_vectors(path: Path) -> list[tuple[str, list[int]]]:
    inputs = path.with_name(path.name + ".inp").read_text(encoding="utf-8").split(VECTOR_SEPARATOR)
    if inputs and inputs[-1] == "":  # the file ends with a separator
        inputs.pop()
    lines = path.with_name(path.name + ".out").read_text(encoding="utf-8").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    assert len(inputs) == len(lines), f"{path.name}: {len(inputs)} inputs but {len(lines)} outputs"
    return [(text, [int(t) for t in line.split()]) for text, line in zip(inputs, lines)]


# ---------------------------------------------------------------------------------------------------
# Small vocabularies written with GGUFWriter
# ---------------------------------------------------------------------------------------------------


def gpt2_byte_chars() -> list[str]:
    """GPT-2's byte-to-unicode table, written out independently of pyengine's."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("\u00a1"), ord("\u00ac") + 1)) \
        + list(range(ord("\u00ae"), ord("\u00ff") + 1))
    chars, extra = {}, 0
    for b in range(256):
        if b in keep:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return [chars[b] for b in range(256)]


CHAT_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

# Short texts that tell llama.cpp's pre-tokenizers apart: contractions, digit runs, whitespace runs,
# punctuation and symbols, case changes, letters of many scripts, marks, non-ASCII whitespace.
PRETOKENIZER_INPUTS = [
    "Hello world", " Hello", "  two  spaces ", "trailing   ", "a\n\nb\r\nc", " \n x\t\ty", "it's I'M we'll",
    "they'RE x'd 've", "O'Neil's", "I'sup 'llama", "1 12 123 1234", "12345678", "3.14, 1,000", "a1b22c333", " 42x",
    "$+<=>^~|`", "(a)[b]{c}", "a.b!c?d", "--x__y", "...\n\n", "foo();\n", "x = y+1;", "#include <x>",
    "caf\u00e9 na\u00efve", "\u00dcn\u00efc\u00f6d\u00e9", "\u00e9", "\u00b5m \u00ba", "CamelCaseWord",
    "HTTPServer ok", "iPhone XR", "\u01c5x \u02b0y", "\u0391\u0392\u0393 \u03b1\u03b2\u03b3",
    "\u041f\u0440\u0438\u0432\u0435\u0442 \u043c\u0438\u0440", "\u4f60\u597d\u4e16\u754c",
    "\u65e5\u672c\u8a9e\u3067\u3059", "\u30ab\u30bf\u30ab\u30ca", "\ud55c\uad6d\uc5b4",
    "\u0645\u0631\u062d\u0628\u0627 \u0628\u0643", "\u0928\u092e\u0938\u094d\u0924\u0947", "\u0e44\u0e17\u0e22",
    "\u00bd \u2153 \u00b2", "\u216b \u2160", "\u00bdx", "\u0663\u0664", "\U0001f680 ok \U0001f642",
    "\U0001f44d\U0001f3fd", "a\u200db", "\u00a0nbsp\u00a0", "x\u3000y", "a\u2003b \u1680c", "a\u2028b\x85c",
    "\u3001\u3002x", "\uff01\uff1f\uff58", "\u201cq\u201d \u2018s\u2019", "\u2014dash\u2013", "a\u2026b",
    "\u03b1'\u03b2", "\u0301x", "e\u0301", "\tTab", "\r\r\n", "<sentinel:12>", "IMGIMGABZ", "    4sp", "x  ", " \n",
    "A\nB", "12\n34", "\x01\x7f", "a/\nb", "x\n\n\n y",
]


# Texts for gemma-3's vocabulary (tests/data/make_gemma3_tokenizer_golden.py): no space prefix, runs of
# spaces, tabs and newlines as user-defined tokens, HTML tags, the chat tokens, byte fallback.
GEMMA3_TEXTS = [
    "Hello world", " Hello world", "  two leading spaces", "Hello\nworld", "a\n\n\nb", "\n\nx", "x\n",
    "a  b   c    d", "trailing   ", "tabs\t\tand\ttab", "12345 678 3.14159 1,000,000", "x=1+2*3",
    "caf\u00e9 na\u00efve r\u00e9sum\u00e9", "\u4f60\u597d\uff0c\u4e16\u754c\uff01",
    "\u65e5\u672c\u8a9e\u306e\u6587\u7ae0", "\u041f\u0440\u0438\u0432\u0435\u0442, \u043c\u0438\u0440",
    "\u0645\u0631\u062d\u0628\u0627", "\u0928\u092e\u0938\u094d\u0924\u0947",
    "\U0001f680 rockets \U0001f642\U0001f44d\U0001f3fd \U0001f468\u200d\U0001f469\u200d\U0001f467",
    "\U0001fae0\U0001f9cc", "\x01\x02 control \x7f", "\ue000 private \U0010fffd", "\U00020000\U0002a6d6 rare",
    "\u2581 lower one eighth", "<start_of_turn>user\nHi there<end_of_turn>\n<start_of_turn>model\n",
    "<bos><start_of_turn>user\nWhat is 2+2?<end_of_turn>\n<start_of_turn>model\n4<end_of_turn>\n", "<end_of_turn>",
    "text<end_of_turn>more", "</s> and <s>", "<eos><pad><unk><mask>", "<unused5> x", "[multimodal]",
    "<start_of_image><end_of_image>", "<table><tr><td>1</td></tr></table>", "<b>bold</b> <i>it</i>",
    "<start_of_turn", "end_of_turn>", "code:\n    def f(x):\n        return x", " ", "\n", "\t", "a",
]


def substring_vocab(texts: list[str]) -> tuple[list[str], list[str]]:
    """A byte-level BPE vocabulary in which byte-level BPE joins any piece of `texts` whole: the 256
    byte tokens, every substring (of the texts' UTF-8 bytes) as a token, and a merge for every way
    of cutting each substring in two, shorter results first. Its ids are a pre-tokenizer's pieces."""
    table = gpt2_byte_chars()
    tokens = list(table)
    known = set(tokens)
    merges: dict[tuple[str, str], None] = {}
    substrings = []
    for text in texts:
        chars = "".join(table[b] for b in text.encode("utf-8"))
        substrings += [chars[i:i + n] for n in range(2, len(chars) + 1) for i in range(len(chars) - n + 1)]
    for sub in sorted(substrings, key=len):  # stable: the texts' order within a length
        if sub not in known:
            known.add(sub)
            tokens.append(sub)
        for k in range(1, len(sub)):
            merges.setdefault((sub[:k], sub[k:]))
    return tokens, [f"{a} {b}" for a, b in merges]


def small_gpt2_metadata(pre: str = "gpt-2") -> dict:
    """Bytes, a few merges (enough for "Hello world"), and ChatML control tokens."""
    merged = ["He", "ll", "llo", "Hello", "\u0120w", "or", "\u0120wor", "ld", "\u0120world"]
    merges = ["H e", "l l", "ll o", "He llo", "\u0120 w", "o r", "\u0120w or", "l d", "\u0120wor ld"]
    tokens = gpt2_byte_chars() + merged + CHAT_TOKENS
    types = [1] * (256 + len(merged)) + [3] * len(CHAT_TOKENS)
    return {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": pre,
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": np.array(types, np.int32),
        "tokenizer.ggml.merges": merges,
        "tokenizer.ggml.bos_token_id": tokens.index("<|im_start|>"),
        "tokenizer.ggml.eos_token_id": tokens.index("<|endoftext|>"),
    }


def small_spm_metadata() -> dict:
    """<unk> <s> </s>, the 256 byte tokens, then a few pieces scored so that merges are preferred."""
    pieces = ["\u2581", "H", "e", "l", "o", "w", "r", "d", "\u2581H", "ll", "\u2581He", "\u2581Hell",
              "\u2581Hello", "\u2581w", "or", "ld", "\u2581wor", "\u2581world", "<|user|>"]
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + pieces
    types = [2, 3, 3] + [6] * 256 + [1] * (len(pieces) - 1) + [4]
    scores = [0.0] * 259 + [-float(i) for i in range(len(pieces))]
    return {
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.scores": np.array(scores, np.float32),
        "tokenizer.ggml.token_type": np.array(types, np.int32),
        "tokenizer.ggml.bos_token_id": 1,
        "tokenizer.ggml.eos_token_id": 2,
        "tokenizer.ggml.unknown_token_id": 0,
    }


_WRITER_TYPES = {  # how write_metadata stores each key (the rest are inferred)
    "tokenizer.ggml.bos_token_id": VT.UINT32,
    "tokenizer.ggml.eos_token_id": VT.UINT32,
    "tokenizer.ggml.unknown_token_id": VT.UINT32,
}


def write_metadata(path: Path, metadata: dict) -> Path:
    with GGUFWriter(path) as w:
        w.add_string("general.architecture", "llama")
        for key, value in metadata.items():
            if isinstance(value, list) and all(isinstance(v, str) for v in value):
                w.add_array(key, value, VT.STRING)
            else:
                w.add(key, value, _WRITER_TYPES.get(key))
    return path


# ---------------------------------------------------------------------------------------------------
# llama.cpp's test vectors (tests/test-tokenizer-0: add_special false, parse_special false, no BOS)
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", VOCABS)
def test_llamacpp_vectors(tokenizers, name):
    tok = tokenizers[name]
    vectors = read_vectors(vocab_path(name))
    assert len(vectors) > 40
    failures = []
    for text, expected in vectors:
        got = tok.encode(text, add_bos=False, parse_special=False)
        if got != expected:
            failures.append(f"{text!r}: got {got}, expected {expected}")
    assert not failures, f"{len(failures)} of {len(vectors)} vectors differ:\n" + "\n".join(failures)


@pytest.mark.parametrize("name", VOCABS)
def test_llamacpp_vectors_decode(tokenizers, name):
    tok = tokenizers[name]
    for text, expected in read_vectors(vocab_path(name)):
        assert tok.decode(expected) == text
        # parsing special tokens changes nothing here: the inputs hold none
        assert tok.encode(text) == expected


# ---------------------------------------------------------------------------------------------------
# Round trips
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", VOCABS)
@pytest.mark.parametrize("text", ROUND_TRIP_TEXTS)
def test_round_trip(tokenizers, name, text):
    tok = tokenizers[name]
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    if tok.bos_id is not None:
        with_bos = tok.encode(text, add_bos=True)
        assert with_bos == [tok.bos_id] + ids
        assert tok.decode(with_bos, skip_special=True) == text


def test_spm_space_prefix(spm):
    ids = spm.encode("Hello world")
    assert ids == [15043, 3186]  # "▁Hello", "▁world": the dummy prefix
    assert [spm.token_text(i) for i in ids] == ["\u2581Hello", "\u2581world"]
    assert spm.decode(ids) == "Hello world"
    assert spm.decode(ids, continuation=True) == " Hello world"  # text after a prompt keeps its space
    assert spm.encode("Hello", add_bos=True) == [1, 15043]
    assert spm.decode([1, 15043]) == "<s>Hello"
    assert spm.decode([1, 15043], skip_special=True) == "Hello"


def test_properties(spm, gpt2):
    assert (spm.model, spm.n_vocab, spm.bos_id, spm.eos_id, spm.eot_id) == ("llama", 32000, 1, 2, None)
    assert spm.add_bos is True and spm.add_eos is False and spm.add_space_prefix is True
    assert spm.eog_ids == {2}
    assert (gpt2.model, gpt2.pre, gpt2.n_vocab) == ("gpt2", "gpt-2", 50257)
    assert gpt2.bos_id == gpt2.eos_id == 50256
    assert gpt2.eot_id == 50256 and gpt2.eog_ids == {50256}
    # the file has no add_bos_token key: llama.cpp's default for GPT-2 BPE
    assert gpt2.add_bos is False and gpt2.add_space_prefix is False
    assert len(gpt2) == 50257 and gpt2.token_type(50256) == TokenType.CONTROL


def test_qwen2_properties(qwen2):
    endoftext, im_start, im_end = (qwen2.token_id(t) for t in ("<|endoftext|>", "<|im_start|>", "<|im_end|>"))
    assert (qwen2.model, qwen2.pre, qwen2.n_vocab, qwen2.add_bos) == ("gpt2", "qwen2", 151936, False)
    assert qwen2.bos_id == qwen2.eos_id == endoftext and qwen2.eot_id == im_end
    # llama.cpp's end-of-generation set: EOS, <|im_end|>, and the vocabulary's plain "</s>" (by its text)
    assert qwen2.eog_ids == {endoftext, im_end, qwen2.token_id("</s>")}
    assert qwen2.encode("<|im_start|>user\nHi<|im_end|>") == [im_start, qwen2.token_id("user"),
                                                             qwen2.token_id("\u010a"), qwen2.token_id("Hi"), im_end]


def test_add_bos_defaults_follow_llamacpp():
    spm_meta = small_spm_metadata()
    assert Tokenizer.from_metadata(spm_meta).add_bos is True
    assert Tokenizer.from_metadata({**spm_meta, "tokenizer.ggml.add_bos_token": False}).add_bos is False
    assert Tokenizer.from_metadata(small_gpt2_metadata()).add_bos is False
    assert Tokenizer.from_metadata(small_gpt2_metadata("llama-bpe")).add_bos is True
    with_eos = Tokenizer.from_metadata({**small_gpt2_metadata(), "tokenizer.ggml.add_eos_token": True})
    assert with_eos.add_eos is True
    assert with_eos.encode("Hello", add_eos=True)[-1] == with_eos.eos_id


def test_token_bytes(spm, gpt2):
    assert spm.token_bytes(15043) == b" Hello"
    assert spm.token_bytes(spm.token_id("<0x0A>")) == b"\n"
    assert spm.token_bytes(spm.token_id("<0xF0>")) == b"\xf0"
    assert spm.token_bytes(1) == b"" and spm.token_bytes(1, special=True) == b"<s>"
    assert spm.token_bytes(0) == b"" and spm.token_bytes(0, special=True) == b"<unk>"
    assert gpt2.token_bytes(gpt2.token_id("\u0120Hello")) == b" Hello"
    assert gpt2.token_bytes(gpt2.token_id("\u010a")) == b"\n"
    assert gpt2.token_bytes(50256) == b"" and gpt2.token_bytes(50256, special=True) == b"<|endoftext|>"
    table = gpt2_byte_chars()
    for b in (0, 32, 65, 127, 160, 173, 255):
        assert gpt2.token_bytes(gpt2.token_id(table[b])) == bytes([b])


@pytest.mark.parametrize("name", VOCABS)
def test_ids_are_checked(tokenizers, name):
    tok = tokenizers[name]
    for bad in (tok.n_vocab, -1, 10**12):
        with pytest.raises(ValueError, match=rf"token id {bad} .*{tok.n_vocab} tokens"):
            tok.decode([5, bad])
        with pytest.raises(ValueError, match=rf"token id {bad} .*{tok.n_vocab} tokens"):
            tok.token_bytes(bad)
        with pytest.raises(ValueError, match=rf"token id {bad}"):
            tok.stream_decoder().feed(bad)
    assert tok.decode(np.array([tok.n_vocab - 1], np.int64)) == tok.decode([tok.n_vocab - 1])


def test_invalid_utf8_becomes_replacement_character(spm, gpt2):
    f0 = spm.token_id("<0xF0>")
    assert spm.decode([f0, spm.token_id("\u2581a")], continuation=True) == "\ufffd a"
    assert gpt2.decode([gpt2.token_id(gpt2_byte_chars()[0xFF])]) == "\ufffd"


# ---------------------------------------------------------------------------------------------------
# Special tokens
# ---------------------------------------------------------------------------------------------------


def test_gpt2_endoftext_is_one_token(gpt2):
    assert gpt2.encode("<|endoftext|>") == [50256]
    ids = gpt2.encode("Hello<|endoftext|> world")
    assert ids == gpt2.encode("Hello") + [50256] + gpt2.encode(" world")
    assert gpt2.decode(ids) == "Hello<|endoftext|> world"
    assert gpt2.decode(ids, skip_special=True) == "Hello world"
    plain = gpt2.encode("<|endoftext|>", parse_special=False)
    assert 50256 not in plain and len(plain) > 1 and gpt2.decode(plain) == "<|endoftext|>"


def test_chat_tokens_from_a_written_file(tmp_path):
    tok = Tokenizer.from_gguf(write_metadata(tmp_path / "chat.gguf", small_gpt2_metadata()))
    start, end, eot = (tok.token_id(t) for t in ("<|im_start|>", "<|im_end|>", "<|endoftext|>"))
    hello, world, newline = tok.token_id("Hello"), tok.token_id("\u0120world"), tok.token_id("\u010a")
    text = "<|im_start|>user\nHello world<|im_end|>\n<|im_start|>assistant\n"
    ids = tok.encode(text)
    assert ids[:1] == [start] and ids.count(start) == 2 and ids.count(end) == 1
    assert [hello, world, end] == ids[ids.index(hello): ids.index(end) + 1]
    assert ids[ids.index(end) + 1] == newline
    assert tok.decode(ids) == text
    assert tok.decode(ids, skip_special=True) == "user\nHello world\nassistant\n"
    assert tok.encode("Hello world") == [hello, world]
    assert tok.eot_id == end and tok.eog_ids == {end, eot}  # <|im_end|> before <|endoftext|>
    assert tok.is_eog(end) and tok.is_eog(eot) and not tok.is_eog(start)
    assert tok.is_special(start) and not tok.is_special(hello)
    plain = tok.encode("<|im_end|>", parse_special=False)
    assert end not in plain and tok.decode(plain) == "<|im_end|>"


def test_longest_special_token_wins():
    meta = small_gpt2_metadata()
    meta["tokenizer.ggml.tokens"] = meta["tokenizer.ggml.tokens"] + ["<|im_end|>x", "<|"]
    meta["tokenizer.ggml.token_type"] = np.append(meta["tokenizer.ggml.token_type"], [3, 4]).astype(np.int32)
    tok = Tokenizer.from_metadata(meta)
    longer, short, end = tok.token_id("<|im_end|>x"), tok.token_id("<|"), tok.token_id("<|im_end|>")
    assert tok.encode("a<|im_end|>xb<|im_end|>") == [tok.token_id("a"), longer, tok.token_id("b"), end]
    # user-defined tokens are cut out even without parse_special; control tokens are not
    ids = tok.encode("<|im_end|>", parse_special=False)
    assert ids[0] == short and end not in ids


def test_spm_special_tokens(spm):
    assert spm.encode("<s>Hello</s>") == [1, 15043, 2]
    # llama.cpp puts the dummy-prefix space before text that follows a special token; decoding removes it
    assert spm.encode("</s>Hello world") == [2, 15043, 3186]
    assert spm.decode([2, 15043, 3186]) == "</s>Hello world"
    assert spm.encode("<s>", parse_special=False) != [1]
    assert spm.decode(spm.encode("<s>", parse_special=False)) == "<s>"


def test_spm_user_defined_token_in_small_vocab():
    tok = Tokenizer.from_metadata(small_spm_metadata())
    user = tok.token_id("<|user|>")
    assert tok.encode("Hello world") == [tok.token_id("\u2581Hello"), tok.token_id("\u2581world")]
    assert tok.encode("<|user|>Hello", parse_special=False) == [user, tok.token_id("\u2581Hello")]
    assert tok.decode([user, tok.token_id("\u2581Hello")]) == "<|user|>Hello"
    # a character outside the vocabulary falls back to byte tokens
    byte_ids = [tok.token_id(f"<0x{b:02X}>") for b in "\u00e9".encode()]
    assert tok.encode("\u00e9") == [tok.token_id("\u2581")] + byte_ids


def with_tokens(meta: dict, tokens: dict[str, int], **keys) -> dict:
    """`meta` with more tokens ({text: token type}) and tokenizer.ggml.<key> values."""
    meta = dict(meta)
    meta["tokenizer.ggml.tokens"] = meta["tokenizer.ggml.tokens"] + list(tokens)
    types = np.append(meta["tokenizer.ggml.token_type"], list(tokens.values())).astype(np.int32)
    meta["tokenizer.ggml.token_type"] = types
    if "tokenizer.ggml.scores" in meta:
        scores = np.append(meta["tokenizer.ggml.scores"], [-100.0] * len(tokens))
        meta["tokenizer.ggml.scores"] = scores.astype(np.float32)
    meta.update({k if "." in k else f"tokenizer.ggml.{k}": v for k, v in keys.items()})
    return meta


def test_end_of_generation_tokens_are_found_by_text_as_llamacpp_does():
    tok = Tokenizer.from_metadata(with_tokens(small_gpt2_metadata(), {
        "</s>": 4, "[EOS]": 1, "<|fim_prefix|>": 1, "<|fim_pad|>": 1, "<|file_sep|>": 1, "<|channel|>": 3,
        "<end_of_turn>": 1}))
    ids = {t: tok.token_id(t) for t in ("</s>", "[EOS]", "<|fim_prefix|>", "<|fim_pad|>", "<|file_sep|>",
                                        "<|channel|>", "<end_of_turn>", "<|im_end|>", "<|endoftext|>")}
    # every end-of-generation text, and FIM's pad and file separator, end generation; <|im_end|> is the
    # end of turn (the first in llama.cpp's list that is present)
    assert tok.eog_ids == {ids[t] for t in ("</s>", "[EOS]", "<|fim_pad|>", "<|file_sep|>", "<end_of_turn>",
                                            "<|im_end|>", "<|endoftext|>")}
    assert tok.eot_id == ids["<|im_end|>"]
    # found tokens become control tokens: parsed only as special tokens, hidden unless asked for
    for text in ("</s>", "[EOS]", "<|fim_prefix|>", "<|fim_pad|>", "<end_of_turn>"):
        assert tok.token_type(ids[text]) == TokenType.CONTROL, text
        assert tok.encode(f"a{text}") == [tok.token_id("a"), ids[text]]
        assert ids[text] not in tok.encode(text, parse_special=False)
    assert tok.token_type(ids["<|channel|>"]) == TokenType.USER_DEFINED  # gpt-oss's: always written out
    assert tok.decode([ids["<|channel|>"], ids["</s>"]], skip_special=True) == "<|channel|>"
    # the file's own end-of-turn id wins over the texts
    named = Tokenizer.from_metadata(with_tokens(small_gpt2_metadata(), {"<end_of_turn>": 1},
                                                eot_token_id=np.uint32(268)))
    assert named.eot_id == 268 and named.token_id("<end_of_turn>") in named.eog_ids


def test_end_is_text_where_return_and_call_end_turns():
    end_only = Tokenizer.from_metadata(with_tokens(small_gpt2_metadata(), {"<|end|>": 3}))
    end = end_only.token_id("<|end|>")
    assert end in end_only.eog_ids and end_only.eot_id != end  # <|im_end|> comes first in llama.cpp's list
    for extra in ({"<|return|>": 3, "<|call|>": 3}, {"<|calls|>": 3, "<|flush|>": 3}):
        tok = Tokenizer.from_metadata(with_tokens(small_gpt2_metadata(), {"<|end|>": 3, **extra}))
        assert end not in tok.eog_ids and tok.token_type(end) == TokenType.USER_DEFINED
        assert {tok.token_id(t) for t in extra} <= tok.eog_ids


def test_slash_s_is_a_normal_token_beside_tool_response():
    tok = Tokenizer.from_metadata(with_tokens(small_gpt2_metadata(), {"</s>": 3, "<|tool_response>": 3}))
    assert tok.token_id("</s>") not in tok.eog_ids and tok.token_type(tok.token_id("</s>")) == TokenType.NORMAL
    assert tok.token_id("<|tool_response>") in tok.eog_ids


def test_phi3_special_tokens_take_the_whitespace_after_them():
    meta = with_tokens(small_spm_metadata(), {"<|end|>": 3, "<|assistant|>": 4, "<|endoftext|>": 3})
    plain = Tokenizer.from_metadata(meta)
    phi3 = Tokenizer.from_metadata({**meta, "general.name": "Phi-3-mini-4k-instruct"})
    user, end, assistant, endoftext = (phi3.token_id(t) for t in ("<|user|>", "<|end|>", "<|assistant|>",
                                                                   "<|endoftext|>"))
    hello = phi3.token_id("\u2581Hello")
    assert phi3.eot_id == end and end in phi3.eog_ids  # <|end|> ends the turn
    text = "<|user|>\n Hello<|end|>\n<|assistant|>\n"
    assert phi3.encode(text) == [user, hello, end, assistant]  # as llama.cpp: rstrip for a "phi3" name
    assert plain.encode(text)[:2] != [user, hello]
    assert phi3.encode("<|user|> \tHello", parse_special=False) == [user, hello]  # user-defined: always
    # <s>, <unk> and <|endoftext|> keep the whitespace after them
    assert phi3.encode("<|endoftext|> Hello") == plain.encode("<|endoftext|> Hello") != [endoftext, hello]
    assert phi3.encode("<s>\nHello") == plain.encode("<s>\nHello") != [1, hello]


def test_jina_mask_takes_the_whitespace_before_it():
    meta = with_tokens(small_gpt2_metadata("jina-v2-de"), {"<mask>": 3})
    tok = Tokenizer.from_metadata(meta)
    mask, hello = tok.token_id("<mask>"), tok.token_id("Hello")
    assert tok.encode("Hello  <mask> x") == [hello, mask] + tok.encode(" x")
    assert Tokenizer.from_metadata({**meta, "tokenizer.ggml.pre": "gpt-2"}).encode("Hello <mask>")[1] != mask


# ---------------------------------------------------------------------------------------------------
# Streaming detokenization
# ---------------------------------------------------------------------------------------------------

STREAM_TEXTS = [
    "\U0001f680 rocket, \U0001f642\U0001f44d\U0001f3fd and \u4f60\u597d\u4e16\u754c \U0001fae0",
    "\u1780\u17b6\u1793\u17cb\u178f\u17c2 \u00c4pfel \u0928\u092e\u0938\u094d\u0924\u0947",
    "Hello world\n\tdone",
]


@pytest.mark.parametrize("name", VOCABS)
@pytest.mark.parametrize("text", STREAM_TEXTS)
def test_stream_decoder_never_emits_half_a_character(tokenizers, name, text):
    tok = tokenizers[name]
    ids = tok.encode(text)
    decoder = tok.stream_decoder()
    pieces = []
    for token_id in ids:
        piece = decoder.feed(token_id)
        assert "\ufffd" not in piece
        pieces.append(piece)
    pieces.append(decoder.flush())
    assert pieces[-1] == ""
    assert "".join(pieces) == tok.decode(ids) == text
    if not text.isascii():  # the test means something: some character is split across tokens
        assert any(not is_utf8(tok.token_bytes(i)) for i in ids)


def is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def test_stream_decoder_byte_tokens_one_at_a_time(spm):
    byte_ids = [spm.token_id(f"<0x{b:02X}>") for b in "\U0001f680".encode()]  # 4 byte tokens
    decoder = StreamDecoder(spm)
    assert [decoder.feed(i) for i in byte_ids] == ["", "", "", "\U0001f680"]
    assert decoder.flush() == ""
    # an unfinished character is given back by flush as U+FFFD
    decoder = spm.stream_decoder(continuation=True)
    assert decoder.feed(spm.token_id("\u2581a")) == " a"
    assert decoder.feed(byte_ids[0]) == "" and decoder.feed(byte_ids[1]) == ""
    assert decoder.flush() == "\ufffd"


@pytest.mark.parametrize("skip_special", [False, True])
@pytest.mark.parametrize("continuation", [False, True])
def test_stream_decoder_matches_decode(spm, gpt2, skip_special, continuation):
    f0 = spm.token_id("<0xF0>")
    for tok, ids in [
        (spm, [1] + spm.encode("Hello \U0001f642!") + [2, 15043, f0, f0, 29871]),
        (gpt2, gpt2.encode("<|endoftext|>caf\u00e9 \U0001f642<|endoftext|>") + gpt2.encode("\U0001f680")[:2]),
    ]:
        decoder = tok.stream_decoder(skip_special, continuation=continuation)
        streamed = "".join(decoder.feed(i) for i in ids) + decoder.flush()
        assert streamed == tok.decode(ids, skip_special, continuation=continuation)


# ---------------------------------------------------------------------------------------------------
# Pre-tokenizers
# ---------------------------------------------------------------------------------------------------


def test_pre_tokenizer_cuts():
    """Merges that could join across every cut, so the ids show where each pre-tokenizer cuts."""
    extra = {"\u01201": "\u0120 1", "\u0120x": "\u0120 x", "12": "1 2", "123": "12 3", "1234": "123 4",
             "'S": "' S", "'s": "' s"}

    def pieces(pre, text):
        meta = small_gpt2_metadata(pre)
        meta["tokenizer.ggml.tokens"] = meta["tokenizer.ggml.tokens"] + list(extra)
        types = np.append(meta["tokenizer.ggml.token_type"], [1] * len(extra))
        meta["tokenizer.ggml.token_type"] = types.astype(np.int32)
        meta["tokenizer.ggml.merges"] = meta["tokenizer.ggml.merges"] + list(extra.values())
        tok = Tokenizer.from_metadata(meta)
        ids = tok.encode(text)
        assert tok.decode(ids) == text
        return [tok.decode([i]) for i in ids]

    assert pieces("gpt-2", "a 1234 x's") == ["a", " 1", "2", "3", "4", " x", "'s"]  # " 1234" is one piece
    assert pieces("gpt-2", "1234'S") == ["1234", "'", "S"]  # GPT-2's contractions are lower case only
    assert pieces("smollm", "a 1234 x's") == ["a", " ", "1", "2", "3", "4", " x", "'s"]
    assert pieces("llama-bpe", "a 1234 x's") == ["a", " ", "123", "4", " x", "'s"]  # digits in threes
    assert pieces("llama-bpe", "1234'S") == ["123", "4", "'S"]
    assert pieces("qwen2", "a 1234 x's") == ["a", " ", "1", "2", "3", "4", " x", "'s"]
    assert PRE_TOKENIZERS["llama-bpe"].ignore_merges and PRE_TOKENIZERS["llama-bpe"].add_bos


def test_smollm_splits_every_digit(gpt2):
    # the gpt-2 vocabulary has merged digit tokens ("333"); smollm's pre-tokenizer never lets them form
    meta = {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.tokens": [gpt2.token_text(i) for i in range(gpt2.n_vocab)],
        "tokenizer.ggml.token_type": np.array([gpt2.token_type(i) for i in range(gpt2.n_vocab)], np.int32),
        "tokenizer.ggml.merges": ["3 3", "33 3", "\u0120 3"],
    }
    three = gpt2.token_id("3")
    assert Tokenizer.from_metadata({**meta, "tokenizer.ggml.pre": "gpt-2"}).encode(" 333") == \
        [gpt2.token_id("\u0120"), gpt2.token_id("333")]
    smollm = Tokenizer.from_metadata({**meta, "tokenizer.ggml.pre": "smollm"})
    assert smollm.encode(" 333") == [gpt2.token_id("\u0120"), three, three, three]
    assert smollm.decode(smollm.encode("a 1234 b")) == "a 1234 b"


PRETOKENIZER_GOLDEN = Path(__file__).resolve().parent / "data" / "pretokenizer_golden.json"


@pytest.fixture(scope="module")
def pretokenizer_golden():
    golden = json.loads(PRETOKENIZER_GOLDEN.read_text(encoding="utf-8"))
    assert golden["inputs"] == PRETOKENIZER_INPUTS, "tests/data/make_pretokenizer_golden.py is to be run again"
    return golden


def test_every_llamacpp_pre_tokenizer_is_recognised_or_refused(pretokenizer_golden):
    names = set(pretokenizer_golden["llamacpp_names"])
    assert not set(PRE_TOKENIZERS) & set(UNSUPPORTED_PRE_TOKENIZERS)
    assert set(PRE_TOKENIZERS) | set(UNSUPPORTED_PRE_TOKENIZERS) == names
    assert set(pretokenizer_golden["llamacpp_fails"]) <= set(UNSUPPORTED_PRE_TOKENIZERS)


def test_pre_tokenizers_cut_where_llamacpp_does(pretokenizer_golden):
    """Each recognised name's pieces of every input are llama.cpp's (see make_pretokenizer_golden.py)."""
    tokens, merges = substring_vocab(PRETOKENIZER_INPUTS)
    base = {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.tokens": tokens,
            "tokenizer.ggml.token_type": np.ones(len(tokens), np.int32), "tokenizer.ggml.merges": merges}
    pieces_of: dict = {}  # PreTokenizer -> the pieces of every input (names share families)
    checked, failures = 0, []
    for group in pretokenizer_golden["groups"]:
        for name in group["names"]:
            if name in UNSUPPORTED_PRE_TOKENIZERS:
                continue
            name = "default" if name == pretokenizer_golden["no_key"] else name  # as the test above shows
            family = PRE_TOKENIZERS[name]
            if family not in pieces_of:
                tok = Tokenizer.from_metadata({**base, "tokenizer.ggml.pre": name})
                assert tok.add_bos == family.add_bos
                pieces_of[family] = [[tok.decode([i]) for i in tok.encode(text, parse_special=False)]
                                     for text in PRETOKENIZER_INPUTS]
            for text, got, expected in zip(PRETOKENIZER_INPUTS, pieces_of[family], group["pieces"]):
                if got != expected:
                    failures.append(f"{name} {text!r}: {got} != llama.cpp's {expected}")
            if family.add_bos != group["add_bos"]:
                failures.append(f"{name}: add_bos {family.add_bos} != llama.cpp's {group['add_bos']}")
            checked += 1
    assert checked == len(PRE_TOKENIZERS) + 1  # and a file without the key, as "default"
    assert not failures, "\n".join(failures[:20])


@pytest.mark.parametrize("name", sorted(UNSUPPORTED_PRE_TOKENIZERS))
def test_unsupported_pre_tokenizers_are_refused_by_name(name):
    with pytest.raises(GGUFError, match=rf"tokenizer\.ggml\.pre '{re.escape(name)}' is not supported: ") as info:
        Tokenizer.from_metadata(small_gpt2_metadata(name))
    assert "\n" not in str(info.value)


def test_unknown_pre_tokenizer_is_refused():
    with pytest.raises(GGUFError, match=r"tokenizer\.ggml\.pre 'no-such-pre' is not a pre-tokenizer llama\.cpp knows"):
        Tokenizer.from_metadata(small_gpt2_metadata("no-such-pre"))


def test_a_missing_or_empty_pre_tokenizer_is_llamacpps_default():
    meta = small_gpt2_metadata()
    del meta["tokenizer.ggml.pre"]
    assert Tokenizer.from_metadata(meta).pre == "default"
    assert Tokenizer.from_metadata(small_gpt2_metadata("")).pre == "default"
    # the default's first regex takes punctuation and symbol runs apart from GPT-2's
    assert PRE_TOKENIZERS["default"].regexes[0] != PRE_TOKENIZERS["gpt-2"].regexes[0]


# ---------------------------------------------------------------------------------------------------
# Hostile metadata
# ---------------------------------------------------------------------------------------------------


DELETE = object()


def edited(kind: str, **changes) -> dict:
    """The small `kind` ("spm" or "gpt2") vocabulary with tokenizer.ggml.<name> keys changed: each
    change is a new value, a function of the old one, or DELETE."""
    meta = small_spm_metadata() if kind == "spm" else small_gpt2_metadata()
    for name, change in changes.items():
        key = "tokenizer.ggml." + name
        if change is DELETE:
            del meta[key]
        else:
            meta[key] = change(meta[key]) if callable(change) else change
    return meta


def replace_item(i: int, value):
    def change(values):
        values = list(values) if isinstance(values, list) else values.copy()
        values[i] = value
        return values
    return change


HOSTILE_FILES = {  # case -> (metadata, the message expected)
    "short scores": (edited("spm", scores=lambda v: v[:-1]), r"tokenizer\.ggml\.scores has \d+ entries"),
    "short token types": (edited("gpt2", token_type=lambda v: v[:5]), r"tokenizer\.ggml\.token_type has 5 entries"),
    "merge without space": (edited("gpt2", merges=lambda v: v + ["Hello"]),
                            r"tokenizer\.ggml\.merges\[9\] 'Hello' is not a pair"),
    "merge of three": (edited("gpt2", merges=["a b c"]), r"tokenizer\.ggml\.merges\[0\] 'a b c'"),
    "merge with empty part": (edited("gpt2", merges=[" a"]), r"tokenizer\.ggml\.merges\[0\]"),
    "bos outside": (edited("spm", bos_token_id=1_000_000),
                    r"tokenizer\.ggml\.bos_token_id = 1000000 is outside the vocabulary"),
    "eos outside": (edited("gpt2", eos_token_id=268), r"tokenizer\.ggml\.eos_token_id = 268 is outside"),
    "byte token <0x-1>": (edited("spm", tokens=replace_item(3, "<0x-1>")), r"tokenizer\.ggml\.tokens\[3\] '<0x-1>'"),
    "byte token <0xZZ>": (edited("spm", tokens=replace_item(4, "<0xZZ>")), r"tokenizer\.ggml\.tokens\[4\] '<0xZZ>'"),
    "byte token <0x100>": (edited("spm", tokens=replace_item(5, "<0x100>")), r"tokenizer\.ggml\.tokens\[5\]"),
    "token type 9": (edited("spm", token_type=replace_item(7, 9)), r"tokenizer\.ggml\.token_type\[7\] = 9"),
    "duplicate token": (edited("spm", tokens=replace_item(260, "<s>")),
                        r"tokenizer\.ggml\.tokens\[260\] '<s>' duplicates token 1"),
    "no merges": (edited("gpt2", merges=DELETE), r"tokenizer\.ggml\.merges is missing"),
    "no tokens": (edited("spm", tokens=DELETE), r"tokenizer\.ggml\.tokens is missing"),
    "no model": (edited("spm", model=DELETE), r"tokenizer\.ggml\.model is missing"),
    "unknown model": (edited("spm", model="bert"), r"tokenizer\.ggml\.model 'bert'"),
    "scores as strings": (edited("spm", scores=lambda v: ["x"] * len(v)), r"tokenizer\.ggml\.scores must be"),
    "add_bos not a bool": (edited("gpt2", add_bos_token="yes"), r"tokenizer\.ggml\.add_bos_token"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_FILES))
def test_hostile_metadata_in_a_file(tmp_path, case):
    metadata, message = HOSTILE_FILES[case]
    path = write_metadata(tmp_path / "hostile.gguf", metadata)
    with pytest.raises(GGUFError, match=message) as info:
        Tokenizer.from_gguf(path)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("metadata, message", [
    (edited("gpt2", tokens=replace_item(-1, 7)), r"tokenizer\.ggml\.tokens\[267\] must be a string"),
    (edited("gpt2", tokens="abc"), r"tokenizer\.ggml\.tokens must be an array"),
    (edited("gpt2", merges=[1, 2]), r"tokenizer\.ggml\.merges\[0\] must be a string"),
    (edited("gpt2", bos_token_id=-1), r"tokenizer\.ggml\.bos_token_id = -1"),
    (edited("gpt2", bos_token_id=1.5), r"tokenizer\.ggml\.bos_token_id must be an integer"),
    (edited("gpt2", bos_token_id=True), r"tokenizer\.ggml\.bos_token_id must be an integer"),
    (edited("gpt2", eot_token_id=10**9), r"tokenizer\.ggml\.eot_token_id"),
    (edited("gpt2", token_type=lambda v: v.astype(np.float32)), r"tokenizer\.ggml\.token_type must be an integer"),
    (edited("gpt2", token_type=replace_item(0, -2)), r"tokenizer\.ggml\.token_type\[0\] = -2"),
    (edited("gpt2", pre=3), r"tokenizer\.ggml\.pre must be a string"),
    (edited("spm", scores=replace_item(9, np.nan)), r"tokenizer\.ggml\.scores\[9\] is NaN"),
    (edited("spm", tokens=replace_item(270, "\ud800")), r"tokenizer\.ggml\.tokens: the llama tokenizer cannot"),
])
def test_hostile_metadata_dict(metadata, message):
    with pytest.raises(GGUFError, match=message):
        Tokenizer.from_metadata(metadata)


def _varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    return bytes(out + bytes([value]))


@pytest.mark.parametrize("seed", range(3))
def test_sentencepiece_pieces_are_the_protobuf_messages_one_by_one(seed):
    # _pb_pieces writes every piece's fields at computed offsets; here each message is written plainly
    # (field 1 of ModelProto: a SentencePiece of piece = 1, score = 2, type = 3), texts of 0 to 20,000
    # bytes, so that lengths take varints of one to three bytes.
    rng = np.random.default_rng(seed)
    data = [bytes(rng.integers(0, 256, rng.choice([0, 1, 5, 127, 128, 300, 16383, 16384, 20000])).astype(np.uint8))
            for _ in range(200)]
    scores = rng.standard_normal(len(data)).astype(np.float32)
    types = rng.integers(0, 7, len(data))
    expected = b""
    for text, score, piece_type in zip(data, scores, types):
        piece = b"\x0a" + _varint(len(text)) + text + b"\x15" + struct.pack("<f", score) + b"\x18" + _varint(piece_type)
        expected += b"\x0a" + _varint(len(piece)) + piece
    assert tokenizer_module._pb_pieces(data, scores, types) == expected


def test_partial_byte_tokens_do_not_break_sentencepiece():
    meta = small_spm_metadata()
    meta["tokenizer.ggml.token_type"] = meta["tokenizer.ggml.token_type"].copy()
    meta["tokenizer.ggml.token_type"][3 + 0xC3] = 1  # <0xC3> is no longer a byte token
    tok = Tokenizer.from_metadata(meta)
    ids = tok.encode("Hello \u00e9")  # no byte fallback: the unknown character becomes <unk>
    assert tok.token_id("\u2581Hello") in ids and 0 in ids


def test_merges_outside_the_vocabulary_are_ignored():
    meta = small_gpt2_metadata()
    meta["tokenizer.ggml.merges"] = meta["tokenizer.ggml.merges"] + ["x y", "\u0120w orld"]
    tok = Tokenizer.from_metadata(meta)
    assert tok.decode(tok.encode("Hello xy world")) == "Hello xy world"


# ---------------------------------------------------------------------------------------------------
# Long texts: tokenized in pieces, with the ids of the whole
# ---------------------------------------------------------------------------------------------------

PIECE_ALPHABET = list("ab xy\n\n  \t!?.,'s'll12345_-") + ["\u00e9", "\u65e5\u672c", "\u00bd", "\u216b", "\r\n",
                                                         "\u00a0", "'S", "\U0001f600", "\u2581"]


@pytest.fixture(scope="module")
def every_kind_of_tokenizer(spm):
    """SentencePiece's vocabulary, and GPT-2's first 8000 merges (with their tokens: words, digit
    runs, space and newline runs) with each family of pre-tokenizer regexes."""
    with GGUFReader(vocab_path("ggml-vocab-gpt-2.gguf")) as r:
        meta = dict(r.metadata)
    merges = meta["tokenizer.ggml.merges"][:8000]
    tokens = gpt2_byte_chars() + [m.replace(" ", "") for m in merges]
    tokens = list(dict.fromkeys(tokens))
    small = {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.tokens": tokens, "tokenizer.ggml.merges": merges}
    by_family = {}
    for name, pre in PRE_TOKENIZERS.items():
        by_family.setdefault(pre, name)
    return {"spm": spm, **{name: Tokenizer.from_metadata({**small, "tokenizer.ggml.pre": name})
                           for name in by_family.values()}}


def test_pieces_give_the_ids_of_the_whole_text(every_kind_of_tokenizer):
    import random

    rng = random.Random(1)
    tokenizers = every_kind_of_tokenizer
    for _ in range(200):
        text = "".join(rng.choice(PIECE_ALPHABET) for _ in range(rng.randint(1, 80)))
        for name, tok in tokenizers.items():
            whole = tok._encoder.encode(text, piece_chars=10**9)
            for size in (1, 2, 5):  # a cut at every place the rules allow
                assert tok._encoder.encode(text, piece_chars=size) == whole, (name, size, text)


def test_a_long_text_is_encoded_in_pieces(every_kind_of_tokenizer):
    text = ("Hello world, how are you? Good\nFine: 12345 \u00e9t\u00e9.  " * 3000)[:150_000]
    by_cut = {}  # one tokenizer for each way of cutting (the cuts themselves are tested above)
    for name, tok in every_kind_of_tokenizer.items():
        by_cut.setdefault(tok._encoder._cut, name)
    assert len(by_cut) == 3  # SentencePiece's, byte-level BPE's and EXAONE-MoE's
    for name in by_cut.values():
        tok = every_kind_of_tokenizer[name]
        cut = tok._encoder._cut
        pieces = list(tokenizer_module._pieces(text, cut, tokenizer_module.ENCODE_PIECE_CHARS))
        assert len(pieces) == 3 and "".join(pieces) == text, (name, [len(p) for p in pieces])
        prefix = " " if tok.add_space_prefix else ""  # SentencePiece's, put before the text by encode()
        assert tok.encode(text) == tok._encoder.encode(prefix + text, piece_chars=10**9), name


def test_a_sentencepiece_vocabulary_with_newlines_in_pieces_is_not_cut():
    meta = small_spm_metadata()
    meta["tokenizer.ggml.tokens"] = meta["tokenizer.ggml.tokens"][:-1] + ["o\nw"]
    meta["tokenizer.ggml.token_type"] = meta["tokenizer.ggml.token_type"].copy()
    # a piece that merging gives (user-defined tokens are cut out of the text before)
    meta["tokenizer.ggml.token_type"][-1] = TokenType.NORMAL
    tok = Tokenizer.from_metadata(meta)
    assert tok._encoder._cut is None
    assert tok._encoder.encode("Hello\nworld", piece_chars=1) == tok._encoder.encode("Hello\nworld", piece_chars=10**9)


def test_text_limits_and_lone_surrogates(spm, gpt2):
    for tok in (spm, gpt2):
        with pytest.raises(ValueError, match="tokenize it in parts"):
            tok.encode("x" * (MAX_TEXT_CHARS + 1))
        assert tok.encode("caf\udce9 \ud800!") == tok.encode("caf\ufffd \ufffd!")


# ---------------------------------------------------------------------------------------------------
# gemma-3's vocabulary: SentencePiece without a space prefix (tests/data/gemma3_tokenizer_golden.json)
# ---------------------------------------------------------------------------------------------------

GEMMA3_GOLDEN = Path(__file__).resolve().parent / "data" / "gemma3_tokenizer_golden.json"


@pytest.fixture(scope="module")
def gemma3_golden():
    golden = json.loads(GEMMA3_GOLDEN.read_text(encoding="utf-8"))
    assert [c["text"] for c in golden["cases"]] == GEMMA3_TEXTS, \
        "tests/data/make_gemma3_tokenizer_golden.py is to be run again"
    return golden


@pytest.fixture(scope="module")
def gemma3():
    fetch = pytest.importorskip("pyengine.fetch")
    if not hasattr(fetch, "fetch_gemma3_270m"):
        pytest.skip("pyengine.fetch has no fetch_gemma3_270m")
    return Tokenizer.from_gguf(fetch.fetch_gemma3_270m())


def test_gemma3_tokenizes_as_llamacpp(gemma3, gemma3_golden):
    failures = []
    for case in gemma3_golden["cases"]:
        text = case["text"]
        for key, parse_special in (("special", True), ("plain", False)):
            got = gemma3.encode(text, parse_special=parse_special)
            if got != case[key]:
                failures.append(f"{text!r} parse_special={parse_special}: {got} != llama.cpp's {case[key]}")
        pieces = [gemma3.token_bytes(i, special=True).hex() for i in case["special"]]
        if pieces != case["pieces"]:
            failures.append(f"{text!r}: the tokens' bytes {pieces} != llama.cpp's {case['pieces']}")
    assert not failures, "\n".join(failures)


def test_gemma3_properties(gemma3, gemma3_golden):
    assert (gemma3.model, gemma3.n_vocab, gemma3.add_space_prefix) == ("llama", 262144, False)
    assert gemma3.add_bos is gemma3_golden["add_bos"] is True and gemma3.bos_id == gemma3_golden["bos"]
    assert gemma3.eot_id == gemma3_golden["eot"] == gemma3.token_id("<end_of_turn>")
    assert gemma3.eog_ids == set(gemma3_golden["eog"]) \
        == {gemma3.token_id(t) for t in ("<eos>", "<end_of_turn>", "</s>")}
    assert gemma3.encode("Hi", add_bos=True) == [gemma3.bos_id] + gemma3.encode("Hi")
    # <start_of_turn> and <end_of_turn> are single ids in chat text, and only when special tokens are parsed
    turn = "<start_of_turn>user\nHi<end_of_turn>\n"
    ids = gemma3.encode(turn)
    assert ids[0] == gemma3.token_id("<start_of_turn>") and gemma3.eot_id in ids
    assert gemma3.eot_id not in gemma3.encode(turn, parse_special=False)


@pytest.mark.parametrize("skip_special", [False, True])
def test_gemma3_decodes_and_streams_back(gemma3, skip_special):
    for text in GEMMA3_TEXTS:
        ids = gemma3.encode(text)
        expected = text if not skip_special else "".join(
            f if isinstance(f, str) else gemma3.token_bytes(f).decode() for f in gemma3.split_special(text))
        expected = expected.replace("\u2581", " ")  # SentencePiece's space reads as a space (llama.cpp's too)
        assert gemma3.decode(ids, skip_special=skip_special) == expected, text
        decoder = gemma3.stream_decoder(skip_special=skip_special)
        pieces = [decoder.feed(i) for i in ids] + [decoder.flush()]
        assert all("\ufffd" not in p for p in pieces) and "".join(pieces) == expected, text
    # byte fallback: a character outside the vocabulary is its UTF-8 bytes, one token each
    rare = gemma3.encode("\U0002a6d6")
    assert [gemma3.token_text(i) for i in rare] == ["<0xF0>", "<0xAA>", "<0x9B>", "<0x96>"]
