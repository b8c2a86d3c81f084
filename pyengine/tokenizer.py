"""Tokenizers built from a GGUF file's vocabulary, matching llama.cpp's tokenization.

Two kinds, chosen by `tokenizer.ggml.model`:

    "llama"  SentencePiece BPE: tokens, scores and token types become a SentencePiece model (the
             protobuf written here by hand) that the `sentencepiece` library runs. Characters missing
             from the vocabulary fall back to the `<0xNN>` byte tokens.
    "gpt2"   byte-level BPE: tokens and `tokenizer.ggml.merges` become a `tokenizers` BPE model. The
             text is first cut by the pre-tokenizer regexes named by `tokenizer.ggml.pre`, then each
             byte is written as one printable character (GPT-2's byte-to-unicode table) before merging.
             Every name llama.cpp knows is in PRE_TOKENIZERS (with its aliases; a missing or empty
             name is llama.cpp's "default") or refused with the reason in UNSUPPORTED_PRE_TOKENIZERS.

Both follow llama.cpp's `llama_tokenize` (src/llama-vocab.cpp):
- Special tokens are cut out of the text first, longest first: user-defined tokens (type 4) always,
  control and unknown tokens (types 3, 2) only when `parse_special` is true. The rest is tokenized
  fragment by fragment.
- SentencePiece vocabularies with `add_space_prefix` (the default) put one space before a fragment that
  starts the text or follows a special token: "Hello" is tokenized as " Hello" -> "▁Hello".
  Decoding undoes it: the first piece after the start or a special token loses one leading space, so
  decode(encode(text)) == text.

End of generation, as llama.cpp decides it: `eog_ids` holds EOS, the end of turn (`eot_id`: the file's
tokenizer.ggml.eot_token_id, else the first present of <|eot_id|>, <|im_end|>, <|end|>, <end_of_turn>,
...), the end of message, fill-in-the-middle's pad, repo and file-separator tokens, and every token
whose text is in llama.cpp's list of end-of-generation texts (_EOG_TEXTS); each found by its text
becomes a control token. Phi-3's special tokens (a "phi3" or "phi-3" general.name) take the
whitespace after them when they are cut out of the text, as llama.cpp's rstrip attribute does.

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

__all__ = ["Tokenizer", "StreamDecoder", "TokenType", "PRE_TOKENIZERS", "UNSUPPORTED_PRE_TOKENIZERS", "MAX_TEXT_CHARS"]

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

# Special tokens that llama.cpp finds by their text (llama_vocab::impl::load, src/llama-vocab.cpp); each
# found becomes a control token, even where a converter forgot to say so (so it is parsed from text
# and skipped when asked).
# End of turn, most specific first: the first present becomes `eot_id` when the file names none
# (llama.cpp takes whichever its hash map gives first).
_EOT_TEXTS = (
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|end_of_text|>",
    "<EOT>", "_<EOT>", "[EOT]", "<\uff5cend\u2581of\u2581sentence\uff5c>", "<end_of_utterance>",
)
_EOM_TEXTS = ("<|eom_id|>",)
# Fill-in-the-middle tokens, by key suffix (tokenizer.ggml.<name>_token_id); pad, repo and file
# separator also end generation.
_FIM_TEXTS = {
    "fim_pre": ("<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<\uff5cfim\u2581begin\uff5c>", "<PRE>",
                "\u2581<PRE>", "<|code_prefix|>", "<|prefix|>"),
    "fim_suf": ("<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>", "<\uff5cfim\u2581hole\uff5c>", "<SUF>",
                "\u2581<SUF>", "<|code_suffix|>", "<|suffix|>"),
    "fim_mid": ("<|fim_middle|>", "<fim-middle>", "<fim_middle>", "<\uff5cfim\u2581end\uff5c>", "<MID>",
                "\u2581<MID>", "<|code_middle|>", "<|middle|>"),
    "fim_pad": ("<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"),
    "fim_rep": ("<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>"),
    "fim_sep": ("<|file_sep|>",),
}
_FIM_DEPRECATED_KEYS = {"fim_pre": "prefix", "fim_suf": "suffix", "fim_mid": "middle"}
# Every token with one of these texts ends generation.
_EOG_TEXTS = (
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>", "<end_of_turn>",
    "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]", "<|end_of_text|>",
    "<end_of_utterance>", "<eos>", "<turn|>", "<|tool_response>", "<\uff5cend\u2581of\u2581sentence\uff5c>", "[e~[",
)
# gpt-oss's structure tokens, always written out (llama.cpp makes them user-defined)
_ALWAYS_RENDERED_TEXTS = ("<|channel|>", "<|message|>", "<|start|>", "<|constrain|>")
_C_SPACE = " \t\n\v\f\r"  # C's isspace(), what llama.cpp strips beside lstrip/rstrip special tokens

_BYTE_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>")
_SURROGATE = re.compile("[\ud800-\udfff]")
_SPM_SPACE = "\u2581"  # "▁": SentencePiece's escaped space


# ---------------------------------------------------------------------------------------------------
# Pre-tokenizers of byte-level BPE (llama.cpp's regexes, src/llama-vocab.cpp)
# ---------------------------------------------------------------------------------------------------
# Each family's regexes are written as llama.cpp writes them. llama.cpp runs them with its own code
# (GPT-2's, llama 3's, Qwen2's and Qwen3.5's) or std::regex, on the text with every non-ASCII
# character that is whitespace seen as "\v" and, where a regex names Unicode categories, every
# non-ASCII character seen as its category (letter, number, punctuation, mark, symbol, other).
# _onig_regex() carries those readings over to the Oniguruma regexes of the `tokenizers` library:
# \p{Lu}, \p{Ll}, ... are any letter (llama.cpp collapses the letter categories into one), `$` is the
# end of the piece, and a class that lists non-ASCII characters never matches non-ASCII whitespace.

_CONTRACTIONS = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"
_GPT2_REGEX = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
# llama 3's tokenizer.json has (?i:'s|'t|...); llama.cpp spells the case-insensitivity out.
_LLAMA3_REGEX = (
    _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_REGEX = _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
_QWEN35_REGEX = (
    _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_DEEPSEEK_LLM_REGEXES = (
    "[\r\n]",
    "\\s?[A-Za-z\xb5\xc0-\xd6\xd8-\xf6\xf8-\u01ba\u01bc-\u01bf\u01c4-\u0293\u0295-\u02af\u0370-\u0373\u0376"
    "\u0377\u037b-\u037d\u037f\u0386\u0388-\u038a\u038c\u038e-\u03a1\u03a3-\u03f5\u03f7-\u0481\u048a-\u052f"
    "\u0531-\u0556\u10a0-\u10c5\u13a0-\u13f5\u13f8-\u13fd\u1c90-\u1cba\u1cbd-\u1cbf\u1d00-\u1d2b\u1d6b-\u1d77"
    "\u1d79-\u1d9a\u1e00-\u1f15\u1f18-\u1f1d\u1f20-\u1f45\u1f48-\u1f4d\u1f50-\u1f57\u1f59\u1f5b\u1f5d"
    "\u1f5f-\u1f7d\u1f80-\u1fb4\u1fb6-\u1fbc\u1fbe\u1fc2-\u1fc4\u1fc6-\u1fcc\u1fd0-\u1fd3\u1fd6-\u1fdb"
    "\u1fe0-\u1fec\u1ff2-\u1ff4\u1ff6-\u1ffc\u2102\u2107\u210a-\u2113\u2115\u2119-\u211d\u2124\u2126\u2128"
    "\u212a-\u212d\u212f-\u2134\u2139\u213c-\u213f\u2145-\u2149\u214e\u2183\u2184\u2c00-\u2c7b\u2c7e-\u2ce4"
    "\u2ceb-\u2cee\u2cf2\u2cf3\ua640-\ua66d\ua680-\ua69b\ua722-\ua76f\ua771-\ua787\ua78b-\ua78e\uab70-\uabbf"
    "\ufb00-\ufb06\ufb13-\ufb17\uff21-\uff3a\uff41-\uff5a\U00010400-\U0001044f\U000104b0-\U000104d3"
    "\U000104d8-\U000104fb\U00010c80-\U00010cb2\U00010cc0-\U00010cf2\U000118a0-\U000118df"
    "\U0001e900-\U0001e943]+",
    "\\s?[!-/:-~\uff01-\uff0f\uff1a-\uff5e\u2018-\u201f\u3000-\u3002]+",
    "\\s+$",
    "[\u4e00-\u9fa5\u0800-\u4e00\uac00-\ud7ff]+",
    "\\p{N}+",
)
_DEEPSEEK_CODER_REGEXES = ("[\r\n]", r"\s?\p{L}+", r"\s?\p{P}+", "[\u4e00-\u9fa5\u0800-\u4e00\uac00-\ud7ff]+", r"\p{N}")
_DEEPSEEK3_REGEXES = (
    r"\p{N}{1,3}",
    "[\u4e00-\u9fa5\u3040-\u309f\u30a0-\u30ff]+",
    r"[!\"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+| ?[\p{P}\p{S}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+",
)
_SPARK2_5_REGEXES = (
    r"\p{N}{1,3}",
    "[\u4e00-\u9fa5\u3040-\u309f\u30a0-\u30ff]+",
    r"[!\"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+| ?[\p{P}\p{S}]+|[\r\n]"
    r"|\s+(?!\S)|\s+",
    r"\p{N}",
)
_YOUTU_REGEXES = (
    "[\uac00-\ud7a3\u3131-\u318e]+|[\uff01\u2026\u201c\u201d\u2018\u2019\u2014\uff1a\uff1b\uff0c\u3001-\u303f"
    "\ufe30-\ufe4f]+|[\u3105-\u312f]+|[\u4e00-\u9fa5\u3040-\u309f\u30a0-\u30ff]+",
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+" + _CONTRACTIONS
    + r"?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*" + _CONTRACTIONS
    + r"?|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+",
)
_FALCON_REGEXES = (r"[\p{P}\$\+<=>\^~\|`]+", _GPT2_REGEX, "[0-9][0-9][0-9]")
_DEFAULT_REGEXES = (r"[\p{P}\$\+<=>\^~\|]+", _GPT2_REGEX, r"\p{N}+", "[0-9][0-9][0-9]")
_BLOOM_REGEX = " ?[^(\\s|.,!?\u2026\u3002\uff0c\u3001\u0964\u06d4\u060c)]+"
# Upper-case runs then lower-case runs, spelled with look-aheads: (?=[\p{L}])([^a-z]) is a letter but
# not a-z. Tekken's, then GPT-4o's (which adds contractions and takes digits in threes).
_TEKKEN_REGEX = (
    r"[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))*((?=[\p{L}])([^A-Z]))+|[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))+"
    r"((?=[\p{L}])([^A-Z]))*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_GPT4O_REGEX = (
    r"[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))*((?=[\p{L}])([^A-Z]))+" + _CONTRACTIONS
    + r"?|[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))+((?=[\p{L}])([^A-Z]))*" + _CONTRACTIONS
    + r"?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_GRANITE_EMB_MULTI_REGEX = (
    r"[^\r\n\p{L}\p{N}]?((?=[\p{L}\p{M}])([^a-z]))*((?=[\p{L}\p{M}])([^A-Z]))+" + _CONTRACTIONS
    + r"?|[^\r\n\p{L}\p{N}]?((?=[\p{L}\p{M}])([^a-z]))+((?=[\p{L}\p{M}])([^A-Z]))*" + _CONTRACTIONS
    + r"?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_CHAMELEON_REGEXES = (
    "<sentinel:[0-9]+>", "(IMGIMG)((A|B|C|D|E|F|G|H|I){1,4})Z", "([\\t\\n]|    |  )", r"\p{N}",
    r"[\p{P}!-/:-@\[-`{-~]", _GPT2_REGEX,
)
_BAILINGMOE_REGEX = (
    r"'(?:[sSdDmMtT]|[lL][lL]|[vV][eE]|[rR][eE])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]"
    r"|\s+(?!\S)|\s+"
)
_SEED_CODER_REGEX = (
    _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1}| ?[^\s\p{L}\p{N}\r\n]+|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_UFAKZEKA_REGEX = r"[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
_EXAONE_MOE_REGEX = (
    _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?(?:\p{L}\p{M}*(?: \p{L}\p{M}*)*)+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]?"
    r"|\s*[\r\n]|\s+(?!\S)|\s+"
)
_JAIS2_REGEX = (
    _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s{512}(?!\S)"
    r"|\s{256}(?!\S)|\s{128}(?!\S)|\s{64}(?!\S)|\s{32}(?!\S)|\s{16}(?!\S)|\s{8}(?!\S)|\s{4}(?!\S)|\s{1,2}(?!\S)|\s{1}"
)
_MINICPM5_REGEXES = (
    r"\p{N}{1,3}",
    _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}+| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
)


class PreTokenizer(NamedTuple):
    # Applied in order, each to every fragment the previous one left; a match becomes a fragment of
    # its own, and so does the text between matches.
    regexes: tuple[str, ...]
    ignore_merges: bool = False  # a word that is a whole token is taken as it is, before any merge (llama 3)
    add_bos: bool = False  # llama.cpp's default when the file has no tokenizer.ggml.add_bos_token
    # Where a long text may be cut into pieces (see _pieces); None: never
    cut: re.Pattern | None = None


# Before a space or newline that has a letter or digit on each side: a place where no pre-token of
# these families starts or ends other than as the optional leading space of a word, which the cut
# keeps with its word (see _pieces). Families that join words across spaces cut at newlines only.
_BPE_CUT = re.compile(r"(?<=[^\W_])[ \n](?=[^\W_])")
_BPE_NEWLINE_CUT = re.compile(r"(?<=[^\W_])\n(?=[^\W_])")


def _family(*regexes: str, ignore_merges: bool = False, add_bos: bool = False,
            cut: re.Pattern | None = _BPE_CUT) -> PreTokenizer:
    return PreTokenizer(tuple(regexes), ignore_merges, add_bos, cut)


_GPT2 = _family(_GPT2_REGEX)
_STARCODER = _family(r"\p{N}", _GPT2_REGEX)  # every digit on its own, then GPT-2's regex
_LLAMA3 = _family(_LLAMA3_REGEX, ignore_merges=True, add_bos=True)
_QWEN2 = _family(_QWEN2_REGEX)

# tokenizer.ggml.pre -> pre-tokenizer, with llama.cpp's aliases (llama_vocab::impl::load). A file
# without the key gets llama.cpp's "default", which it warns degrades generation.
PRE_TOKENIZERS: dict[str, PreTokenizer] = {
    "default": _family(*_DEFAULT_REGEXES),
    **dict.fromkeys(["gpt-2", "phi-2", "jina-es", "jina-de", "gigachat", "jina-v2-es", "jina-v2-de", "a.x-4.0",
                     "mellum", "modern-bert", "exaone4", "mpt", "olmo", "jais", "trillion", "granite-docling"],
                    _GPT2),
    **dict.fromkeys(["starcoder", "refact", "command-r", "smollm", "codeshell", "exaone", "minerva-7b", "mellum2"],
                    _STARCODER),
    **dict.fromkeys(["llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0", "lfm2",
                     "jina-v5-nano"], _LLAMA3),
    # the same regex without llama 3's flags (DBRX, Smaug; ChatGLM without a default BOS)
    **dict.fromkeys(["dbrx", "smaug-bpe", "chatglm-bpe"], _family(_LLAMA3_REGEX)),
    **dict.fromkeys(["glm4", "glm5"], _family(_LLAMA3_REGEX, ignore_merges=True)),
    **dict.fromkeys(["qwen2", "deepseek-r1-qwen", "kormo", "f2llmv2", "megrez", "stablelm2", "hunyuan",
                     "solar-open", "grok-2"], _QWEN2),
    "qwen35": _family(_QWEN35_REGEX),
    "deepseek-llm": _family(*_DEEPSEEK_LLM_REGEXES),
    "deepseek-coder": _family(*_DEEPSEEK_CODER_REGEXES),
    **dict.fromkeys(["deepseek-v3", "hunyuan-dense", "joyai-llm", "hy_v4"], _family(*_DEEPSEEK3_REGEXES)),
    "spark2_5": _family(*_SPARK2_5_REGEXES),
    "youtu": _family(*_YOUTU_REGEXES, ignore_merges=True),
    "falcon": _family(*_FALCON_REGEXES),
    **dict.fromkeys(["poro-chat", "bloom", "gpt3-finnish"], _family(_BLOOM_REGEX)),
    "viking": _family(_BLOOM_REGEX, r"\p{N}"),
    "tekken": _family(_TEKKEN_REGEX, ignore_merges=True, add_bos=True),
    "chameleon": _family(*_CHAMELEON_REGEXES, add_bos=True),
    **dict.fromkeys(["gpt-4o", "llama4", "kanana2", "talkie", "minimax-m2"], _family(_GPT4O_REGEX)),
    "granite-embed-multi-97m": _family(_GRANITE_EMB_MULTI_REGEX, ignore_merges=True),
    **dict.fromkeys(["bailingmoe", "bailingmoe2", "llada-moe"], _family(_BAILINGMOE_REGEX)),
    "seed-coder": _family(_SEED_CODER_REGEX),
    "ufakzeka": _family(_UFAKZEKA_REGEX),
    "laguna": _family("[^\n]+|[\n]+", _QWEN2_REGEX),
    "exaone-moe": _family(_EXAONE_MOE_REGEX, cut=_BPE_NEWLINE_CUT),
    "jais-2": _family(_JAIS2_REGEX),
    "minicpm5": _family(*_MINICPM5_REGEXES, ignore_merges=True),
}

# tokenizer.ggml.pre values llama.cpp knows that pyengine refuses, and why.
UNSUPPORTED_PRE_TOKENIZERS: dict[str, str] = {
    **dict.fromkeys(["jina-v1-en", "jina-v2-code", "roberta-bpe"],
                    "a BERT-style tokenizer that appends a separator token"),
    **dict.fromkeys(["gemma4", "granite-embed-multi-311m", "sarvam-moe", "whitespace"],
                    "a SentencePiece-style BPE over raw UTF-8 (no byte-to-unicode mapping)"),
    "kimi-k2": "llama.cpp splits it with hand-written rules for Han characters",
    "afmoe": "llama.cpp groups digits with hand-written rules",
    **dict.fromkeys(["tiny_aya", "cohere2moe"], "llama.cpp groups digits with hand-written rules"),
    "superbpe": "its digit regex matches empty strings, which llama.cpp keeps as empty words",
}


_NON_ASCII_WHITESPACE = "\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
_LETTER_CATEGORIES = re.compile(r"\\p\{L[ultmo]\}")
_CLASS = re.compile(r"\[(?:\\.|[^\]\\])*\]")


def _onig_regex(regex: str) -> str:
    """llama.cpp's regex as an Oniguruma regex that cuts the same places (see above)."""
    regex = _LETTER_CATEGORIES.sub(r"\\p{L}", regex)
    if regex.endswith("$"):
        regex = regex[:-1] + r"\z"
    if r"\p{" not in regex:  # std::wregex reads non-ASCII whitespace as "\v": a listed character can't match
        regex = _CLASS.sub(lambda m: m.group(0) if m.group(0).startswith("[^") or m.group(0).isascii()
                           else f"(?:(?![{_NON_ASCII_WHITESPACE}]){m.group(0)})", regex)
    return regex


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
    lstrip_ids: frozenset[int]  # special tokens that take the whitespace before them
    rstrip_ids: frozenset[int]  # and after them


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
        pre = _get_str(metadata, KEY_PRE, "") or "default"  # llama.cpp's for a missing or empty name
        if pre in UNSUPPORTED_PRE_TOKENIZERS:
            raise GGUFError(f"{KEY_PRE} {_short(pre)} is not supported: {UNSUPPORTED_PRE_TOKENIZERS[pre]}")
        if pre not in PRE_TOKENIZERS:
            raise GGUFError(f"{KEY_PRE} {_short(pre)} is not a pre-tokenizer llama.cpp knows")
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

    # Special tokens found by their text, then the end-of-generation set, as llama.cpp builds them.
    types = types.copy()

    def find(texts: Iterable[str]) -> int | None:
        for text in texts:
            if text in seen:
                types[seen[text]] = TokenType.CONTROL
                return seen[text]
        return None

    if eot_id is None:
        eot_id = find(_EOT_TEXTS)
    if eom_id is None:
        eom_id = find(_EOM_TEXTS)
    fim = {}
    for name, texts in _FIM_TEXTS.items():
        fim[name] = _get_token_id(metadata, f"tokenizer.ggml.{name}_token_id", n_vocab, None)
        if fim[name] is None and name in _FIM_DEPRECATED_KEYS:
            fim[name] = _get_token_id(metadata, f"tokenizer.ggml.{_FIM_DEPRECATED_KEYS[name]}_token_id", n_vocab, None)
        if fim[name] is None:
            fim[name] = find(texts)
    eog = {fim[name] for name in ("fim_pad", "fim_rep", "fim_sep") if fim[name] is not None}
    for text in _EOG_TEXTS:
        if text in seen:
            eog.add(seen[text])
            types[seen[text]] = TokenType.CONTROL
    for text in _ALWAYS_RENDERED_TEXTS:
        if text in seen:
            types[seen[text]] = TokenType.USER_DEFINED
    eog.update(i for i in (eos_id, eot_id, eom_id) if i is not None)
    eog_texts = {tokens[i]: i for i in eog}
    # gpt-oss (o200k_harmony) and Solar Open end turns with <|return|> or <|call|>: their <|end|> is text
    has_call = "<|call|>" in eog_texts or "<|calls|>" in eog_texts
    if "<|end|>" in eog_texts and has_call and ("<|return|>" in eog_texts or "<|flush|>" in eog_texts):
        eog.discard(eog_texts["<|end|>"])
        types[eog_texts["<|end|>"]] = TokenType.USER_DEFINED
    # Gemma 4 and PLaMo 2 have a normal </s>
    if "</s>" in eog_texts and ("<|tool_response>" in eog_texts or "<|plamo:eos|>" in eog_texts):
        eog.discard(eog_texts["</s>"])
        types[eog_texts["</s>"]] = TokenType.NORMAL

    # Special tokens that take the whitespace after (rstrip) or before (lstrip) them, by model name
    # and pre-tokenizer, as llama.cpp sets them (it keeps no such attributes in the file).
    name = _get_str(metadata, "general.name", "") or ""
    name = "".join(c.lower() if c.isascii() else c for c in name)
    lstrip, rstrip = set(), set()
    arch = _get_str(metadata, "general.architecture", "") or ""
    if any(p in pre for p in ("jina-v2-de", "jina-v2-es", "jina-v2-code")) \
            or any(a in arch for a in ("nomic-bert-moe", "jina-bert-v3")):
        lstrip.update(seen[t] for t in ("<mask>",) if t in seen)
    elif "phi-3" in name or "phi3" in name:
        rstrip.update(np.flatnonzero(np.isin(types, _SPECIAL_TYPES)).tolist())
        rstrip.update(seen[t] for t in ("</s>",) if t in seen)
        rstrip.difference_update(seen[t] for t in ("<unk>", "<s>", "<|endoftext|>") if t in seen)
    elif "modern-bert" in name:
        lstrip.update(seen[t] for t in ("[MASK]",) if t in seen)

    return _Vocab(
        model=model, pre=pre, tokens=tokens, types=types, scores=scores, merges=merges,
        bos_id=bos_id, eos_id=eos_id, eot_id=eot_id, eom_id=eom_id, unk_id=unk_id, pad_id=pad_id,
        add_bos=_get_bool(metadata, KEY_ADD_BOS, default_add_bos),
        add_eos=_get_bool(metadata, KEY_ADD_EOS, False),
        add_space_prefix=spm and _get_bool(metadata, KEY_ADD_SPACE_PREFIX, True),
        eog_ids=frozenset(eog), lstrip_ids=frozenset(lstrip), rstrip_ids=frozenset(rstrip),
    )


# ---------------------------------------------------------------------------------------------------
# Long texts in pieces
# ---------------------------------------------------------------------------------------------------

# Byte-level BPE merges only inside one pre-token, so a text can be cut between two pre-tokens. Before
# a space or newline that has a letter or digit on each side (_BPE_CUT) is such a place for the
# pre-tokenizers that use it: no regex alternative matches a letter or digit followed by whitespace
# (\p{L}+, \p{N}+, \p{N}{1,3} stop there; only punctuation runs take trailing newlines, llama 3's
# ` ?[^\s\p{L}\p{N}]+[\r\n]*`), nor whitespace followed by a letter or digit other than as the optional
# leading space of a word, which the cut keeps with its word; the whitespace-run lookahead `\s+(?!\S)`
# never ends at a letter, and `$` (DeepSeek's `\s+$`) never follows one. So the pre-tokens on each side
# are those of the whole text. EXAONE-MoE's words take inner spaces: it is cut before newlines only.
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


def _varint_sizes(values: np.ndarray) -> np.ndarray:
    """The bytes of each value's varint (0 <= value < 2**35)."""
    return 1 + sum((values >= 1 << 7 * k).astype(np.int64) for k in range(1, 5))


def _pb_pieces(data: list[bytes], scores: np.ndarray, types: np.ndarray) -> bytes:
    """The ModelProto's `pieces` fields: for piece i, a SentencePiece message of its text data[i],
    score scores[i] and type types[i] (0..6). Built with numpy, every field's bytes at their computed
    offsets and the texts in the bytes left: a vocabulary can have a quarter of a million pieces (gemma-3's
    whole proto took 0.27-0.38 s with a loop over them, 0.10-0.14 s so)."""
    n = len(data)
    length = np.fromiter(map(len, data), np.int64, n)
    length_size = _varint_sizes(length)
    # the piece: its text's tag, length and bytes; the score's tag and 4 bytes; the type's tag and byte
    body = 1 + length_size + length + 5 + 2
    body_size = _varint_sizes(body)
    size = 1 + body_size + body
    start = np.cumsum(size) - size
    out = np.empty(int(size.sum()), np.uint8)
    is_text = np.ones(len(out), bool)

    def put(at: np.ndarray, values) -> None:
        out[at] = values
        is_text[at] = False

    def put_varints(at: np.ndarray, values: np.ndarray, sizes: np.ndarray) -> None:
        for k in range(int(sizes.max(initial=1))):
            has = sizes > k
            put(at[has] + k, (values[has] >> 7 * k) & 0x7F | np.where(sizes[has] > k + 1, 0x80, 0))

    put(start, _PB_MODEL_PIECES << 3 | 2)
    put_varints(start + 1, body, body_size)
    text = start + 1 + body_size
    put(text, _PB_PIECE_PIECE << 3 | 2)
    put_varints(text + 1, length, length_size)
    score = text + 1 + length_size + length
    put(score, _PB_PIECE_SCORE << 3 | 5)
    score_bytes = np.asarray(scores, "<f4").view(np.uint8).reshape(n, 4)
    for k in range(4):
        put(score + 1 + k, score_bytes[:, k])
    put(score + 5, _PB_PIECE_TYPE << 3)
    put(score + 6, types)
    out[is_text] = np.frombuffer(b"".join(data), np.uint8)
    return out.tobytes()


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

    data = list(map(str.encode, vocab.tokens))  # UTF-8
    # SentencePiece refuses empty pieces; such a piece can never be produced anyway
    for i in np.flatnonzero(np.fromiter(map(len, data), np.int64, len(data)) == 0).tolist():
        data[i], types[i] = f"<pyengine-empty-piece-{i}>\x00".encode(), TokenType.UNUSED
    pieces = _pb_pieces(data, vocab.scores, types)

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
    return pieces + _pb_bytes(_PB_MODEL_TRAINER_SPEC, trainer_spec) \
        + _pb_bytes(_PB_MODEL_NORMALIZER_SPEC, normalizer_spec)


class _SentencePieceEncoder:
    def __init__(self, vocab: _Vocab) -> None:
        import sentencepiece

        self._sp = sentencepiece.SentencePieceProcessor()
        self._sp.LoadFromSerializedProto(_sentencepiece_proto(vocab))
        # user-defined tokens are cut out of the text before: only the pieces merging can give count
        normal = np.flatnonzero(vocab.types == TokenType.NORMAL).tolist()
        self._cut = None if any("\n" in vocab.tokens[i] and len(vocab.tokens[i]) > 1 for i in normal) else _SPM_CUT

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
            [pre_tokenizers.Split(Regex(_onig_regex(r)), behavior="isolated") for r in pre.regexes]
            + [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
        )
        self._cut = pre.cut

    def encode(self, text: str, piece_chars: int = ENCODE_PIECE_CHARS) -> list[int]:
        ids: list[int] = []
        for piece in _pieces(text, self._cut, piece_chars):
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

    def same_vocabulary(self, other: Tokenizer) -> bool:
        """Whether other has the same tokens with the same ids, types and special tokens (another file
        of the same model family: one can draft for the other)."""
        a, b = self._vocab, other._vocab
        return (a.model, a.tokens, a.bos_id, a.eos_id, a.eog_ids) == (b.model, b.tokens, b.bos_id, b.eos_id, b.eog_ids) \
            and np.array_equal(a.types, b.types)

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
        """Ids that end generation, as llama.cpp decides: EOS, EOT, EOM, FIM's pad, repo and file
        separator, and the tokens whose text is one of llama.cpp's end-of-generation texts."""
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
        tokens are always cut out; control and unknown tokens only when `parse_special`. A token
        that llama.cpp marks rstrip (Phi-3's) takes the whitespace after it; lstrip, before it."""
        fragments: list[Fragment] = [text] if text else []
        lstrip_ids, rstrip_ids = self._vocab.lstrip_ids, self._vocab.rstrip_ids
        for token_id in self._specials:
            if not parse_special and self._types[token_id] != TokenType.USER_DEFINED:
                continue
            special = self._tokens[token_id]
            if special not in text:
                continue
            lstrip, rstrip = token_id in lstrip_ids, token_id in rstrip_ids
            cut: list[Fragment] = []
            for fragment in fragments:
                if isinstance(fragment, int) or special not in fragment:
                    cut.append(fragment)
                    continue
                parts = fragment.split(special)
                for k, part in enumerate(parts):
                    if k:
                        cut.append(token_id)
                        if rstrip:
                            part = part.lstrip(_C_SPACE)
                    if lstrip and k < len(parts) - 1:
                        part = part.rstrip(_C_SPACE)
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
