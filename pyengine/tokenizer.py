"""Tokenizers built from a GGUF file's vocabulary, matching llama.cpp's tokenization.

Two kinds, chosen by `tokenizer.ggml.model`:

    "llama"  SentencePiece BPE: tokens, scores and token types become a SentencePiece model (the
             protobuf written here by hand) that the `sentencepiece` library runs. Characters missing
             from the vocabulary fall back to the `<0xNN>` byte tokens.
    "gpt2"   byte-level BPE: tokens and `tokenizer.ggml.merges` become a `tokenizers` BPE model. The
             text is first cut by the pre-tokenizer regexes named by `tokenizer.ggml.pre`, then each
             byte is written as one printable character (GPT-2's byte-to-unicode table) before merging.

Both follow llama.cpp's `llama_tokenize` (src/llama-vocab.cpp):
- Special tokens are cut out of the text first, longest first: user-defined tokens (type 4) always,
  control and unknown tokens (types 3, 2) only when `parse_special` is true. The rest is tokenized
  fragment by fragment.
- SentencePiece vocabularies with `add_space_prefix` (the default) put one space before a fragment that
  starts the text or follows a special token: "Hello" is tokenized as " Hello" -> "▁Hello".
  Decoding undoes it: the first piece after the start or a special token loses one leading space, so
  decode(encode(text)) == text.

Decoding works on bytes (`token_bytes`), so a multi-byte character split across byte tokens is joined
before it becomes text; `StreamDecoder` does the same one token at a time.

Long texts: `encode` refuses a text of more than MAX_TEXT_CHARS characters (16 Mi: some 20 seconds of
byte-level BPE and 5 million ids) with a ValueError, before any work; below that, the text goes to the tokenizer
library in pieces of about ENCODE_PIECE_CHARS characters, cut only where no token can cross (see
_cut_points), so the ids are those of the whole text while the library's working memory (some 200
bytes per character for byte-level BPE) stays small. Lone surrogates (undecodable bytes that Python
kept as U+DC80..U+DCFF) become U+FFFD, as invalid UTF-8 does when it is decoded with "replace".

Everything read from the file is untrusted: each array's type and length, token types, byte tokens,
merges and special token ids are checked, and a bad one is refused with a one-line GGUFError naming
the key.
"""

from __future__ import annotations

import codecs
import operator
import re
import struct
from enum import IntEnum
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, NamedTuple, Union

import numpy as np

from .gguf import GGUFError, GGUFReader

__all__ = ["Tokenizer", "StreamDecoder", "TokenType", "PRE_TOKENIZERS", "MAX_TEXT_CHARS"]

MAX_TEXT_CHARS = 2**24  # the longest text encode() takes
ENCODE_PIECE_CHARS = 2**16  # the size of the pieces a long text is tokenized in

KEY_MODEL = "tokenizer.ggml.model"
KEY_PRE = "tokenizer.ggml.pre"
KEY_TOKENS = "tokenizer.ggml.tokens"
KEY_SCORES = "tokenizer.ggml.scores"
KEY_TOKEN_TYPE = "tokenizer.ggml.token_type"
KEY_MERGES = "tokenizer.ggml.merges"
KEY_ADD_BOS = "tokenizer.ggml.add_bos_token"
KEY_ADD_EOS = "tokenizer.ggml.add_eos_token"
KEY_ADD_SPACE_PREFIX = "tokenizer.ggml.add_space_prefix"
KEY_BOS = "tokenizer.ggml.bos_token_id"
KEY_EOS = "tokenizer.ggml.eos_token_id"
KEY_EOT = "tokenizer.ggml.eot_token_id"
KEY_EOM = "tokenizer.ggml.eom_token_id"
KEY_UNK = "tokenizer.ggml.unknown_token_id"
KEY_PAD = "tokenizer.ggml.padding_token_id"


class TokenType(IntEnum):
    """`tokenizer.ggml.token_type` values (the same numbers as SentencePiece's piece types)."""

    UNDEFINED = 0  # treated as NORMAL
    NORMAL = 1
    UNKNOWN = 2
    CONTROL = 3
    USER_DEFINED = 4
    UNUSED = 5
    BYTE = 6


# Tokens that are written as single tokens in the text (chat templates) and never merged from pieces.
_SPECIAL_TYPES = (TokenType.UNKNOWN, TokenType.CONTROL, TokenType.USER_DEFINED)

# Texts of end-of-turn tokens, most specific first: the first present becomes `eot_id` when the file
# names none (llama.cpp's list, src/llama-vocab.cpp). All present are in `eog_ids`, as control tokens.
_EOT_TEXTS = (
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|end_of_text|>",
    "<EOT>", "_<EOT>", "<｜end▁of▁sentence｜>", "<end_of_utterance>",
)
_EOM_TEXTS = ("<|eom_id|>",)
_EOG_ONLY_TEXTS = ("<|return|>", "<|call|>")

_BYTE_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>")
_SURROGATE = re.compile("[\ud800-\udfff]")
_SPM_SPACE = "\u2581"  # "▁": SentencePiece's escaped space


# ---------------------------------------------------------------------------------------------------
# Pre-tokenizers of byte-level BPE (llama.cpp's regexes, src/llama-vocab.cpp)
# ---------------------------------------------------------------------------------------------------

_GPT2_REGEX = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
# llama 3's tokenizer.json has (?i:'s|'t|...); llama.cpp spells the case-insensitivity out.
_LLAMA3_REGEX = (
    r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_REGEX = (
    r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


class PreTokenizer(NamedTuple):
    # Applied in order, each to every fragment the previous one left; a match becomes a fragment of
    # its own, and so does the text between matches.
    regexes: tuple[str, ...]
    ignore_merges: bool  # a word that is a whole token is taken as it is, before any merge (llama 3)
    add_bos: bool  # llama.cpp's default when the file has no tokenizer.ggml.add_bos_token


_GPT2 = PreTokenizer((_GPT2_REGEX,), ignore_merges=False, add_bos=False)
# SmolLM: every digit on its own, then GPT-2's regex
_SMOLLM = PreTokenizer((r"\p{N}", _GPT2_REGEX), ignore_merges=False, add_bos=False)
_LLAMA3 = PreTokenizer((_LLAMA3_REGEX,), ignore_merges=True, add_bos=True)
_QWEN2 = PreTokenizer((_QWEN2_REGEX,), ignore_merges=False, add_bos=False)

# tokenizer.ggml.pre -> pre-tokenizer, with llama.cpp's aliases. "default" (and a missing key) is
# taken as GPT-2: llama.cpp's own "default" is a guess that it warns degrades generation.
PRE_TOKENIZERS: dict[str, PreTokenizer] = {
    **dict.fromkeys(["gpt-2", "default", "phi-2", "jina-es", "jina-de", "jina-v2-es", "jina-v2-de",
                     "gigachat", "mellum", "exaone4"], _GPT2),
    **dict.fromkeys(["smollm", "codeshell", "exaone", "minerva-7b"], _SMOLLM),
    **dict.fromkeys(["llama-bpe", "llama3", "llama-v3", "falcon3", "pixtral"], _LLAMA3),
    **dict.fromkeys(["qwen2", "deepseek-r1-qwen", "megrez", "stablelm2"], _QWEN2),
}


def _gpt2_byte_chars() -> list[str]:
    """GPT-2's byte-to-unicode table: byte b is written as chars[b]. Printable Latin-1 bytes stand for
    themselves; the others (controls, space, 0x7f-0xa0, 0xad) take code points 256, 257, ... in
    byte order, so every byte is one visible character."""
    printable = set(range(0x21, 0x7F)) | set(range(0xA1, 0xAD)) | set(range(0xAE, 0x100))
    chars, next_code = [], 256
    for b in range(256):
        if b in printable:
            chars.append(chr(b))
        else:
            chars.append(chr(next_code))
            next_code += 1
    return chars


_BYTE_TO_CHAR = _gpt2_byte_chars()
_CHAR_TO_BYTE = {c: b for b, c in enumerate(_BYTE_TO_CHAR)}


# ---------------------------------------------------------------------------------------------------
# Checked reads of untrusted metadata
# ---------------------------------------------------------------------------------------------------


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _get_str(metadata: Mapping[str, Any], key: str, default: str | None) -> str | None:
    value = metadata.get(key, default)
    if value is not None and not isinstance(value, str):
        raise GGUFError(f"{key} must be a string, not {type(value).__name__}")
    return value


def _get_bool(metadata: Mapping[str, Any], key: str, default: bool) -> bool:
    value = metadata.get(key, default)
    if not isinstance(value, (bool, np.bool_)):
        raise GGUFError(f"{key} must be a bool, not {type(value).__name__} {_short(value)}")
    return bool(value)


def _get_token_id(metadata: Mapping[str, Any], key: str, n_vocab: int, default: int | None) -> int | None:
    if key not in metadata:
        return default
    value = metadata[key]
    if not _is_int(value):
        raise GGUFError(f"{key} must be an integer token id, not {type(value).__name__} {_short(value)}")
    if not 0 <= int(value) < n_vocab:
        raise GGUFError(f"{key} = {int(value)} is outside the vocabulary of {n_vocab} tokens")
    return int(value)


def _get_strings(metadata: Mapping[str, Any], key: str) -> list[str] | None:
    if key not in metadata:
        return None
    value = metadata[key]
    if not isinstance(value, (list, tuple)):
        raise GGUFError(f"{key} must be an array of strings, not {type(value).__name__}")
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise GGUFError(f"{key}[{i}] must be a string, not {type(item).__name__}")
    return list(value)


def _get_numbers(metadata: Mapping[str, Any], key: str, n_vocab: int, kind: str) -> np.ndarray | None:
    """A numeric array of exactly n_vocab values: kind "f" (float32) or "i" (int64)."""
    if key not in metadata:
        return None
    value = metadata[key]
    if not isinstance(value, np.ndarray):
        if not isinstance(value, (list, tuple)):
            raise GGUFError(f"{key} must be a numeric array, not {type(value).__name__}")
        try:
            value = np.asarray(value)
        except (TypeError, ValueError):
            raise GGUFError(f"{key} must be a numeric array") from None
    wanted = "an integer" if kind == "i" else "a numeric"
    if value.ndim != 1 or value.dtype.kind not in ("iu" if kind == "i" else "iuf") or value.dtype == np.bool_:
        raise GGUFError(f"{key} must be {wanted} array, not {value.dtype} of shape {value.shape}")
    if len(value) != n_vocab:
        raise GGUFError(f"{key} has {len(value)} entries but {KEY_TOKENS} has {n_vocab}")
    if kind == "f":
        value = value.astype(np.float32)
        if np.isnan(value).any():
            raise GGUFError(f"{key}[{int(np.argmax(np.isnan(value)))}] is NaN")
        return value
    return value.astype(np.int64)


# ---------------------------------------------------------------------------------------------------
# The vocabulary: checked metadata common to both kinds
# ---------------------------------------------------------------------------------------------------


class _Vocab(NamedTuple):
    model: str
    pre: str
    tokens: list[str]
    types: np.ndarray  # int64 TokenType per token (UNDEFINED mapped to NORMAL; EOG texts made CONTROL)
    scores: np.ndarray | None  # float32, SentencePiece only
    merges: list[tuple[str, str]]  # byte-level BPE only
    bos_id: int | None
    eos_id: int | None
    eot_id: int | None
    eom_id: int | None
    unk_id: int | None
    pad_id: int | None
    add_bos: bool
    add_eos: bool
    add_space_prefix: bool
    eog_ids: frozenset[int]


def _read_vocab(metadata: Mapping[str, Any]) -> _Vocab:
    model = _get_str(metadata, KEY_MODEL, None)
    if model is None:
        raise GGUFError(f"{KEY_MODEL} is missing: the file has no tokenizer")
    if model not in ("llama", "gpt2"):
        raise GGUFError(f"{KEY_MODEL} {_short(model)} is not supported "
                        "(supported: 'llama' (SentencePiece), 'gpt2' (byte-level BPE))")

    tokens = _get_strings(metadata, KEY_TOKENS)
    if not tokens:
        raise GGUFError(f"{KEY_TOKENS} is missing or empty")
    n_vocab = len(tokens)
    seen: dict[str, int] = {}
    for i, token in enumerate(tokens):
        if token in seen:  # llama.cpp refuses these too: the text -> id map must be one-to-one
            raise GGUFError(f"{KEY_TOKENS}[{i}] {_short(token)} duplicates token {seen[token]}")
        seen[token] = i

    types = _get_numbers(metadata, KEY_TOKEN_TYPE, n_vocab, "i")
    if types is None:
        types = np.full(n_vocab, TokenType.NORMAL, np.int64)
    bad = np.flatnonzero((types < 0) | (types > TokenType.BYTE))
    if len(bad):
        raise GGUFError(f"{KEY_TOKEN_TYPE}[{bad[0]}] = {types[bad[0]]} is not a token type (0 to 6)")
    types = np.where(types == TokenType.UNDEFINED, TokenType.NORMAL, types)
    for i in np.flatnonzero(types == TokenType.BYTE):
        if not _BYTE_TOKEN.fullmatch(tokens[i]):
            raise GGUFError(f"{KEY_TOKENS}[{i}] {_short(tokens[i])} has type BYTE but is not of the form <0xNN>")

    scores = None
    merges: list[tuple[str, str]] = []
    if model == "llama":
        scores = _get_numbers(metadata, KEY_SCORES, n_vocab, "f")
        if scores is None:
            scores = np.zeros(n_vocab, np.float32)
        pre = _get_str(metadata, KEY_PRE, "default")
        default_add_bos = True
    else:
        if KEY_SCORES in metadata:  # unused, but still checked
            _get_numbers(metadata, KEY_SCORES, n_vocab, "f")
        merge_strings = _get_strings(metadata, KEY_MERGES)
        if merge_strings is None:
            raise GGUFError(f"{KEY_MERGES} is missing: byte-level BPE needs it")
        for i, merge in enumerate(merge_strings):
            parts = merge.split(" ")
            if len(parts) != 2 or not parts[0] or not parts[1]:
                raise GGUFError(f"{KEY_MERGES}[{i}] {_short(merge)} is not a pair of tokens 'a b'")
            merges.append((parts[0], parts[1]))
        pre = _get_str(metadata, KEY_PRE, "gpt-2")
        if pre not in PRE_TOKENIZERS:
            raise GGUFError(f"{KEY_PRE} {_short(pre)} is not supported (known: {', '.join(sorted(PRE_TOKENIZERS))})")
        default_add_bos = PRE_TOKENIZERS[pre].add_bos

    # llama.cpp's defaults when a key is absent: SentencePiece has <unk> <s> </s> at 0, 1, 2.
    spm = model == "llama"
    bos_id = _get_token_id(metadata, KEY_BOS, n_vocab, 1 if spm and n_vocab > 1 else None)
    eos_id = _get_token_id(metadata, KEY_EOS, n_vocab, 2 if spm and n_vocab > 2 else None)
    unknown_typed = np.flatnonzero(types == TokenType.UNKNOWN)
    default_unk = int(unknown_typed[0]) if len(unknown_typed) else 0 if spm else None
    unk_id = _get_token_id(metadata, KEY_UNK, n_vocab, default_unk)
    pad_id = _get_token_id(metadata, KEY_PAD, n_vocab, None)
    eot_id = _get_token_id(metadata, KEY_EOT, n_vocab, None)
    eom_id = _get_token_id(metadata, KEY_EOM, n_vocab, None)

    # End-of-generation tokens found by their text, as llama.cpp does; they are control tokens even
    # where a converter forgot to say so (so they are parsed from text and skipped when asked).
    types = types.copy()
    eog = {i for i in (eos_id, eot_id, eom_id) if i is not None}
    for text in _EOT_TEXTS + _EOM_TEXTS + _EOG_ONLY_TEXTS:
        i = seen.get(text)
        if i is None:
            continue
        if eot_id is None and text in _EOT_TEXTS:
            eot_id = i
        if eom_id is None and text in _EOM_TEXTS:
            eom_id = i
        eog.add(i)
        types[i] = TokenType.CONTROL

    return _Vocab(
        model=model, pre=pre, tokens=tokens, types=types, scores=scores, merges=merges,
        bos_id=bos_id, eos_id=eos_id, eot_id=eot_id, eom_id=eom_id, unk_id=unk_id, pad_id=pad_id,
        add_bos=_get_bool(metadata, KEY_ADD_BOS, default_add_bos),
        add_eos=_get_bool(metadata, KEY_ADD_EOS, False),
        add_space_prefix=spm and _get_bool(metadata, KEY_ADD_SPACE_PREFIX, True),
        eog_ids=frozenset(eog),
    )


# ---------------------------------------------------------------------------------------------------
# Long texts in pieces
# ---------------------------------------------------------------------------------------------------

# Byte-level BPE merges only inside one pre-token, so a text can be cut between two pre-tokens. Before
# a space or newline that has a letter or digit on each side is such a place for every pre-tokenizer
# of PRE_TOKENIZERS: no regex alternative matches a letter or digit followed by whitespace (\p{L}+,
# \p{N}+, \p{N}{1,3} stop there; only punctuation runs take trailing newlines, llama 3's
# ` ?[^\s\p{L}\p{N}]+[\r\n]*`), nor whitespace followed by a letter or digit other than as the optional
# leading space of a word, which the cut keeps with its word; and the whitespace-run lookahead
# `\s+(?!\S)` never ends at a letter. So the pre-tokens on each side are those of the whole text.
_BPE_CUT = re.compile(r"(?<=[^\W_])[ \n](?=[^\W_])")
# SentencePiece merges any two neighbours whose concatenation is a piece, across spaces too; a character
# that no piece of two or more characters contains is never merged, so the text can be cut before it.
_SPM_CUT = re.compile("\n")


def _pieces(text: str, cut: re.Pattern | None, size: int) -> Iterator[str]:
    """text in consecutive pieces of at least `size` characters (the last may be shorter), each cut
    before a match of `cut`; a text without such places stays whole."""
    start = 0
    while cut is not None and len(text) - start > size:
        match = cut.search(text, start + size)
        if match is None:
            break
        yield text[start:match.start()]
        start = match.start()
    yield text[start:]


# ---------------------------------------------------------------------------------------------------
# SentencePiece: a ModelProto written by hand (fields of sentencepiece_model.proto)
# ---------------------------------------------------------------------------------------------------


def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # negative int32s are written as 64-bit two's complement
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _pb_varint(field: int, value: int) -> bytes:  # wire type 0: int32, bool, enum
    return _varint(field << 3) + _varint(value)


def _pb_bytes(field: int, data: bytes) -> bytes:  # wire type 2: string, bytes, message
    return _varint(field << 3 | 2) + _varint(len(data)) + data


def _pb_float(field: int, value: float) -> bytes:  # wire type 5
    return _varint(field << 3 | 5) + struct.pack("<f", value)


_PB_MODEL_PIECES, _PB_MODEL_TRAINER_SPEC, _PB_MODEL_NORMALIZER_SPEC = 1, 2, 3
_PB_PIECE_PIECE, _PB_PIECE_SCORE, _PB_PIECE_TYPE = 1, 2, 3
_PB_TRAINER_MODEL_TYPE, _PB_TRAINER_VOCAB_SIZE, _PB_TRAINER_BYTE_FALLBACK = 3, 4, 35
_PB_TRAINER_UNK_ID, _PB_TRAINER_BOS_ID, _PB_TRAINER_EOS_ID, _PB_TRAINER_PAD_ID = 40, 41, 42, 43
_PB_NORMALIZER_NAME, _PB_NORMALIZER_ADD_DUMMY_PREFIX = 1, 3
_PB_NORMALIZER_REMOVE_EXTRA_WHITESPACES, _PB_NORMALIZER_ESCAPE_WHITESPACES = 4, 5
_PB_MODEL_TYPE_BPE = 2


def _sentencepiece_proto(vocab: _Vocab) -> bytes:
    """A serialized SentencePiece ModelProto of type BPE holding the vocabulary.

    The normalizer is the identity that only writes spaces as "▁": no dummy prefix (the tokenizer
    adds the space itself, fragment by fragment, as llama.cpp does) and no whitespace clean-up."""
    types = vocab.types.copy()
    # SentencePiece wants exactly one UNKNOWN piece: unk_id (the file's unknown token, else its first
    # UNKNOWN-typed token, else token 0 as in llama.cpp). Other UNKNOWN tokens become CONTROL.
    unk_id = vocab.unk_id
    types[types == TokenType.UNKNOWN] = TokenType.CONTROL
    types[unk_id] = TokenType.UNKNOWN
    # Byte fallback needs all 256 byte pieces; a partial set cannot fall back, so it is left unused.
    byte_ids = np.flatnonzero(types == TokenType.BYTE)
    byte_values = {int(_BYTE_TOKEN.fullmatch(vocab.tokens[i]).group(1), 16) for i in byte_ids}
    byte_fallback = len(byte_values) == 256 and len(byte_ids) == 256
    if not byte_fallback:
        types[byte_ids] = TokenType.UNUSED

    pieces = []
    for i, (text, score, piece_type) in enumerate(zip(vocab.tokens, vocab.scores.tolist(), types.tolist())):
        if not text:  # SentencePiece refuses empty pieces; this one can never be produced anyway
            text, piece_type = f"<pyengine-empty-piece-{i}>\x00", TokenType.UNUSED
        piece = _pb_bytes(_PB_PIECE_PIECE, text.encode("utf-8")) + _pb_float(_PB_PIECE_SCORE, score) \
            + _pb_varint(_PB_PIECE_TYPE, piece_type)
        pieces.append(_pb_bytes(_PB_MODEL_PIECES, piece))

    def special_id(token_id: int | None) -> int:
        return -1 if token_id is None or token_id == unk_id else token_id

    trainer_spec = b"".join([
        _pb_varint(_PB_TRAINER_MODEL_TYPE, _PB_MODEL_TYPE_BPE),
        _pb_varint(_PB_TRAINER_VOCAB_SIZE, len(vocab.tokens)),
        _pb_varint(_PB_TRAINER_BYTE_FALLBACK, byte_fallback),
        _pb_varint(_PB_TRAINER_UNK_ID, unk_id),
        _pb_varint(_PB_TRAINER_BOS_ID, special_id(vocab.bos_id)),
        _pb_varint(_PB_TRAINER_EOS_ID, special_id(vocab.eos_id)),
        _pb_varint(_PB_TRAINER_PAD_ID, special_id(vocab.pad_id)),
    ])
    normalizer_spec = b"".join([
        _pb_bytes(_PB_NORMALIZER_NAME, b"identity"),
        _pb_varint(_PB_NORMALIZER_ADD_DUMMY_PREFIX, False),
        _pb_varint(_PB_NORMALIZER_REMOVE_EXTRA_WHITESPACES, False),
        _pb_varint(_PB_NORMALIZER_ESCAPE_WHITESPACES, True),
    ])
    return b"".join(pieces) + _pb_bytes(_PB_MODEL_TRAINER_SPEC, trainer_spec) \
        + _pb_bytes(_PB_MODEL_NORMALIZER_SPEC, normalizer_spec)


class _SentencePieceEncoder:
    def __init__(self, vocab: _Vocab) -> None:
        import sentencepiece

        self._sp = sentencepiece.SentencePieceProcessor()
        self._sp.LoadFromSerializedProto(_sentencepiece_proto(vocab))
        self._cut = None if any("\n" in t and len(t) > 1 for t in vocab.tokens) else _SPM_CUT

    def encode(self, text: str, piece_chars: int = ENCODE_PIECE_CHARS) -> list[int]:
        ids: list[int] = []
        for piece in _pieces(text, self._cut, piece_chars):
            ids.extend(self._sp.EncodeAsIds(piece))
        return ids


# ---------------------------------------------------------------------------------------------------
# Byte-level BPE with the `tokenizers` library
# ---------------------------------------------------------------------------------------------------


class _ByteLevelBPEEncoder:
    def __init__(self, vocab: _Vocab) -> None:
        from tokenizers import Regex
        from tokenizers import Tokenizer as HFTokenizer
        from tokenizers import models, pre_tokenizers

        pre = PRE_TOKENIZERS[vocab.pre]
        ids = {text: i for i, text in enumerate(vocab.tokens) if text}
        # A merge whose parts or result are not tokens can never yield a token: `tokenizers` refuses
        # such merges, so they are dropped.
        merges = [(a, b) for a, b in vocab.merges if a in ids and b in ids and a + b in ids]
        bpe = models.BPE(vocab=ids, merges=merges, ignore_merges=pre.ignore_merges)
        self._hf = HFTokenizer(bpe)
        self._hf.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Split(Regex(r), behavior="isolated") for r in pre.regexes]
            + [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
        )

    def encode(self, text: str, piece_chars: int = ENCODE_PIECE_CHARS) -> list[int]:
        ids: list[int] = []
        for piece in _pieces(text, _BPE_CUT, piece_chars):
            ids.extend(self._hf.encode(piece, add_special_tokens=False).ids)
        return ids


# ---------------------------------------------------------------------------------------------------
# Tokenizer
# ---------------------------------------------------------------------------------------------------

Fragment = Union[str, int]  # raw text, or the id of a special token cut out of it


class Tokenizer:
    """Text <-> token ids for a GGUF vocabulary. Build with from_gguf(path) or from_metadata(dict).

        tok = Tokenizer.from_gguf("model.gguf")
        ids = tok.encode("<|im_start|>user\\nHi", add_bos=tok.add_bos)
        text = tok.decode(ids)
    """

    def __init__(self, vocab: _Vocab) -> None:
        """Use from_gguf() or from_metadata()."""
        self._vocab = vocab
        self._tokens = vocab.tokens
        self._types = vocab.types.tolist()
        self._ids = {text: i for i, text in enumerate(vocab.tokens)}
        try:
            self._encoder = _SentencePieceEncoder(vocab) if vocab.model == "llama" \
                else _ByteLevelBPEEncoder(vocab)
        except Exception as e:  # the libraries' refusals (a GGUF file holds no surrogates, but a dict may)
            first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise GGUFError(f"{KEY_TOKENS}: the {vocab.model} tokenizer cannot be built: {first_line}") \
                from None
        # Special tokens in the order they are cut out of text: longest first, then lowest id.
        self._specials = sorted(
            (i for i, t in enumerate(self._types) if t in _SPECIAL_TYPES and vocab.tokens[i]),
            key=lambda i: (-len(vocab.tokens[i]), i),
        )
        self._bytes_cache: dict[int, bytes] = {}

    @classmethod
    def from_gguf(cls, path: Union[str, Path]) -> Tokenizer:
        """The tokenizer of a GGUF file (a full model or a vocabulary-only file)."""
        with GGUFReader(path) as reader:
            metadata = dict(reader.metadata)
        try:
            return cls.from_metadata(metadata)
        except GGUFError as e:
            raise GGUFError(f"{path}: {e}") from None

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any]) -> Tokenizer:
        """The tokenizer described by GGUF metadata (GGUFReader.metadata); GGUFError if it is bad."""
        return cls(_read_vocab(metadata))

    # --- properties ---

    @property
    def model(self) -> str:
        """"llama" (SentencePiece) or "gpt2" (byte-level BPE): tokenizer.ggml.model."""
        return self._vocab.model

    @property
    def pre(self) -> str:
        """The pre-tokenizer's name, tokenizer.ggml.pre ("default" for SentencePiece)."""
        return self._vocab.pre

    @property
    def n_vocab(self) -> int:
        return len(self._tokens)

    def __len__(self) -> int:
        return len(self._tokens)

    @property
    def bos_id(self) -> int | None:
        return self._vocab.bos_id

    @property
    def eos_id(self) -> int | None:
        return self._vocab.eos_id

    @property
    def eot_id(self) -> int | None:
        """End of turn (<|im_end|>, <|eot_id|>, ...): the file's, else found by its text; may be None."""
        return self._vocab.eot_id

    @property
    def unk_id(self) -> int | None:
        return self._vocab.unk_id

    @property
    def eog_ids(self) -> frozenset[int]:
        """Ids that end generation: eos, eot, eom and the end-of-turn control tokens present."""
        return self._vocab.eog_ids

    @property
    def add_bos(self) -> bool:
        """Whether the file's prompts start with BOS (tokenizer.ggml.add_bos_token, else llama.cpp's default)."""
        return self._vocab.add_bos

    @property
    def add_eos(self) -> bool:
        return self._vocab.add_eos

    @property
    def add_space_prefix(self) -> bool:
        """SentencePiece: a space is put before the text and after each special token."""
        return self._vocab.add_space_prefix

    def __repr__(self) -> str:
        return f"Tokenizer(model={self.model!r}, pre={self.pre!r}, n_vocab={self.n_vocab})"

    # --- single tokens ---

    def _check_id(self, token_id: Any) -> int:
        i = operator.index(token_id)
        if not 0 <= i < len(self._tokens):
            raise ValueError(f"token id {i} is outside the vocabulary of {len(self._tokens)} tokens")
        return i

    def token_text(self, token_id: int) -> str:
        """The token as the vocabulary spells it ("▁Hello", "ĠHello", "<0x0A>", "<|im_end|>")."""
        return self._tokens[self._check_id(token_id)]

    def token_type(self, token_id: int) -> TokenType:
        return TokenType(self._types[self._check_id(token_id)])

    def token_id(self, text: str) -> int | None:
        """The id of the token spelled `text` in the vocabulary, or None."""
        return self._ids.get(text)

    def is_special(self, token_id: int) -> bool:
        """Control, unknown and user-defined tokens: written whole in text, never merged from pieces."""
        return self._types[self._check_id(token_id)] in _SPECIAL_TYPES

    def is_eog(self, token_id: int) -> bool:
        return self._check_id(token_id) in self._vocab.eog_ids

    def token_bytes(self, token_id: int, special: bool = False) -> bytes:
        """The bytes a token stands for. Control and unknown tokens give b"" unless `special`, then
        their text; user-defined tokens always give their text; unused tokens give b""."""
        i = self._check_id(token_id)
        token_type = self._types[i]
        if token_type in (TokenType.CONTROL, TokenType.UNKNOWN):
            return self._tokens[i].encode("utf-8") if special else b""
        cached = self._bytes_cache.get(i)
        if cached is None:
            cached = self._bytes_cache[i] = self._piece_bytes(i)
        return cached

    def _piece_bytes(self, i: int) -> bytes:
        text, token_type = self._tokens[i], self._types[i]
        if token_type == TokenType.USER_DEFINED:
            return text.encode("utf-8")
        if token_type == TokenType.UNUSED:
            return b""
        if token_type == TokenType.BYTE:
            match = _BYTE_TOKEN.fullmatch(text)
            if match:
                return bytes([int(match.group(1), 16)])
        if self.model == "llama":
            return text.replace(_SPM_SPACE, " ").encode("utf-8")
        # byte-level: each char stands for one byte; a char outside the table (a malformed vocab)
        # stands for itself
        return b"".join(
            bytes([_CHAR_TO_BYTE[c]]) if c in _CHAR_TO_BYTE else c.encode("utf-8") for c in text
        )

    # --- encoding ---

    def split_special(self, text: str, parse_special: bool = True) -> list[Fragment]:
        """The text cut into raw fragments (str) and special tokens (int), as llama.cpp does: each
        special token in turn, longest first, is cut out of the fragments still raw. User-defined
        tokens are always cut out; control and unknown tokens only when `parse_special`."""
        fragments: list[Fragment] = [text] if text else []
        for token_id in self._specials:
            if not parse_special and self._types[token_id] != TokenType.USER_DEFINED:
                continue
            special = self._tokens[token_id]
            if special not in text:
                continue
            cut: list[Fragment] = []
            for fragment in fragments:
                if isinstance(fragment, int) or special not in fragment:
                    cut.append(fragment)
                    continue
                for k, part in enumerate(fragment.split(special)):
                    if k:
                        cut.append(token_id)
                    if part:
                        cut.append(part)
            fragments = cut
        return fragments

    def encode(self, text: str, add_bos: bool = False, add_eos: bool = False,
               parse_special: bool = True) -> list[int]:
        """Token ids of `text`. Special tokens written in the text (<|im_start|>, <s>, ...) become
        their single ids when `parse_special`; user-defined tokens always do. ValueError for a text of
        more than MAX_TEXT_CHARS characters; lone surrogates are read as U+FFFD."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, not {type(text).__name__}")
        if len(text) > MAX_TEXT_CHARS:
            raise ValueError(f"the text has {len(text)} characters, more than the tokenizer takes at once "
                             f"({MAX_TEXT_CHARS}): tokenize it in parts")
        if _SURROGATE.search(text):
            text = _SURROGATE.sub("\ufffd", text)
        ids: list[int] = []
        if add_bos:
            if self.bos_id is None:
                raise ValueError("this vocabulary has no BOS token (tokenizer.ggml.bos_token_id)")
            ids.append(self.bos_id)
        after_special = True  # the start counts as following a special token
        for fragment in self.split_special(text, parse_special):
            if isinstance(fragment, int):
                ids.append(fragment)
                after_special = True
                continue
            if self._vocab.add_space_prefix and after_special:
                fragment = " " + fragment
            ids.extend(self._encoder.encode(fragment))
            after_special = False
        if add_eos:
            if self.eos_id is None:
                raise ValueError("this vocabulary has no EOS token (tokenizer.ggml.eos_token_id)")
            ids.append(self.eos_id)
        return ids

    # --- decoding ---

    def _decoded_pieces(self, ids: Iterable[int], skip_special: bool,
                        after_special: bool) -> Iterator[tuple[bytes, bool]]:
        """(bytes, after_special) for each id: the token's bytes, with SentencePiece's dummy-prefix
        space removed from a piece that starts the text or follows a special token."""
        strip = self._vocab.add_space_prefix
        types = self._types
        for token_id in ids:
            data = self.token_bytes(token_id, special=not skip_special)
            special = types[operator.index(token_id)] in _SPECIAL_TYPES
            if strip and after_special and not special and data[:1] == b" ":
                data = data[1:]
            after_special = special
            yield data, after_special

    def decode(self, ids: Iterable[int], skip_special: bool = False, *, continuation: bool = False) -> str:
        """The text of `ids`; invalid UTF-8 becomes U+FFFD. Control tokens are written as their text
        unless `skip_special`. `continuation=True` says the ids continue earlier text (generated
        after a prompt), so a SentencePiece first piece keeps its leading space."""
        data = b"".join(d for d, _ in self._decoded_pieces(ids, skip_special, not continuation))
        return data.decode("utf-8", errors="replace")

    def stream_decoder(self, skip_special: bool = False, *, continuation: bool = False) -> StreamDecoder:
        """A StreamDecoder for this tokenizer: text token by token, never half a character."""
        return StreamDecoder(self, skip_special=skip_special, continuation=continuation)


class StreamDecoder:
    """Decodes ids one at a time. feed(id) returns the text that is complete so far: bytes of a
    multi-byte character whose other bytes are still to come are held back. flush() returns what is
    left, with an incomplete character as U+FFFD. The pieces joined equal tokenizer.decode(ids)
    with the same arguments."""

    def __init__(self, tokenizer: Tokenizer, skip_special: bool = False, *, continuation: bool = False) -> None:
        self._tokenizer = tokenizer
        self._skip_special = skip_special
        self._after_special = not continuation
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, token_id: int) -> str:
        ((data, self._after_special),) = self._tokenizer._decoded_pieces(
            (token_id,), self._skip_special, self._after_special)
        return self._utf8.decode(data)

    def flush(self) -> str:
        """The held-back bytes (an unfinished character becomes U+FFFD); the decoder can go on after."""
        return self._utf8.decode(b"", final=True)
