"""Dev-only: llama.cpp's outputs (through llama-cpp-python) for the architectures beside llama, written to
tests/data/llamacpp_arch_golden.npz, and llama.cpp's tokenization of strings with Gemma 3's vocabulary,
written to tests/data/gemma3_tokenizer.json.

    pip install llama-cpp-python       # builds llama.cpp from source; never a runtime need
    python tests/data/make_llamacpp_arch_golden.py          # everything (about 4 minutes)
    python tests/data/make_llamacpp_arch_golden.py tiny     # only the tiny random models (their keys)
    python tests/data/make_llamacpp_arch_golden.py gemma    # only Gemma 3 270M (its keys, and the json)

As run for the committed files: from the repository root, with PYTHONPATH=. (this checkout's pyengine,
its _core built), shared/ beside the repository (../shared/data: the vocabularies and WikiText-2),
llama-cpp-python 0.3.36 (its vendored llama.cpp, built from source, CPU only), gguf-py 0.19.0, numpy
2.4.6, Python 3.11, on an x86-64 AMD EPYC with AVX2/FMA/F16C (no AVX-512):
    PYTHONPATH=. python tests/data/make_llamacpp_arch_golden.py gemma
    PYTHONPATH=. python tests/data/make_llamacpp_arch_golden.py tiny
(a run with a part named keeps the other part's keys; the two runs equal one run of both).

Tiny random models (tests/arch_models.py, F32): for each variant of VARIANTS, the model is
written by write_tiny_arch (its sha256 stored: the same arguments must give the same bytes) and
evaluated by llama.cpp with n_threads=1, an F32 KV cache, no flash attention, the whole prompt in one
batch (n_batch = n_ubatch = n_ctx), embeddings on with pooling NONE (llama.cpp's per-token t_embd,
the output of the final norm, "result_norm") and the logits of every position. The prompt is the
first N_PROMPT = 40 tokens of PROMPT as llama.cpp tokenizes it (BOS as the vocabulary says: none
for qwen2's, <s> for llama-spm's (phi3), <bos> for gemma3's). Keys, for variant V:
    V_arch, V_shape (json of the keyword arguments of write_tiny_arch), V_seed, V_n_ctx,
    V_model_sha256 (the file's bytes), V_tensor_sha256 (its tensors: make_llamacpp_golden.tensor_sha256)
    V_ids            int32 [40]
    V_hidden         float32 [40, n_embd]  the final norm's output at every position (the reference
                     logits are V_hidden @ output.weight.T, or token_embd.weight when tied)
    V_top2_ids       int32 [40, 2]         llama.cpp's two largest logits at each position, and
    V_top2_logits    float32 [40, 2]       their values (the gap between them is the log-prob gap)
    V_greedy         int32 [24]            greedy continuation, token by token after the prompt
    V_greedy_gap     float32 [24]          top-2 log-probability gap at each greedy step
phi3_short and phi3_long are one model at n_ctx 512 and 1024: llama.cpp rounds n_ctx up to a multiple
of 256 and takes rope_factors_long when that is > rope.scaling.original_context_length (512),
rope_factors_short otherwise. Each variant is also checked here against tests/reference_model.py (numpy,
float64): llama.cpp's hidden states agree to ~1e-6 relative (gemma3 ~1e-3: llama.cpp's GELU goes
through a float16 table).

Gemma 3 270M (Q4_K_M as published, pyengine.fetch.fetch_gemma3_270m), evaluated with n_threads=1,
llama.cpp's default F16 KV cache, n_ctx 512, the whole prompt in one batch. Keys:
    gemma3_270m_sha256, gemma3_270m_prompt (text), gemma3_270m_kv_type ("f16")
    gemma3_270m_ids              int32 [n]      GEMMA_PROMPT with BOS (special tokens parsed)
    gemma3_270m_hidden           float32 [n, 640] the final norm's output
    gemma3_270m_top2_ids / _top2_logits            as above
    gemma3_270m_top_ids          int32 [n, 64]  the 64 largest log-probabilities at each position
    gemma3_270m_top_logprobs     float32 [n, 64]
    gemma3_270m_self_kl          float64 [n]    KL between llama.cpp's batch evaluation of the prompt and its
                                                own token-by-token one: its noise floor on this model
                                                (mean ~6e-3, max ~2e-2: large activations, 8-bit
                                                activation rounding, F16 KV cache)
    gemma3_270m_greedy_prompt (text), gemma3_270m_greedy_prompt_ids, gemma3_270m_greedy [32],
    gemma3_270m_greedy_gap [32]  greedy continuation of GREEDY_PROMPT
    gemma3_270m_ppl              float64        perplexity on WikiText-2 as llama-perplexity computes it:
                                                the whole text tokenized once by llama.cpp (BOS added,
                                                special tokens not parsed), chunks of PPL_N_CTX = 512
                                                tokens whose first token is replaced by BOS, each
                                                evaluated from position 0 in one batch, the second half
                                                scored; the first PPL_N_CHUNKS = 8 chunks
    gemma3_270m_ppl_chunk_nll    float64 [8]    each chunk's summed NLL (255 tokens each)
    gemma3_270m_ppl_n_ctx, gemma3_270m_ppl_n_chunks, gemma3_270m_ppl_first_tokens (int32 [8, 512]: the
                                                chunks as evaluated, BOS in place)
The json holds llama.cpp's ids of TOKENIZER_CASES: with and without BOS (special tokens parsed), and
with BOS, special tokens not parsed (as perplexity tokenizes).
"""

from __future__ import annotations

import hashlib
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
from llamacpp_tools import (greedy_with_gaps, log_softmax, perplexity, perplexity_chunks, token_by_token_kl,
                            top_k)
from make_llamacpp_golden import tensor_sha256

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))

OUT = Path(__file__).with_name("llamacpp_arch_golden.npz")
TOKENIZER_JSON = Path(__file__).with_name("gemma3_tokenizer.json")
WIKITEXT = ROOT.parent / "shared" / "data" / "wikitext-2-test.txt"

PROMPT = ("The quick brown fox jumps over the lazy dog. In 1969, astronauts walked on the Moon; "
          "today, over 8 billion people live on Earth, and many of them speak more than one language.")
N_PROMPT = 40
N_GREEDY = 24
# variant -> (arch, write_tiny_arch keywords, n_ctx, seed). The seeds: the first of 0..8 whose greedy
# continuation has no top-2 gap under 0.05 (for phi3 at both context sizes), so that float noise in
# an engine does not flip a greedy token (seed 0 had gaps of 0.005 for qwen3 and gemma3).
VARIANTS = {
    "qwen2": ("qwen2", {}, 512, 0),
    "qwen2_tied": ("qwen2", {"tied": True}, 512, 0),
    "qwen3": ("qwen3", {}, 512, 4),
    "gemma3": ("gemma3", {}, 512, 3),
    "phi3_short": ("phi3", {}, 512, 3),
    "phi3_long": ("phi3", {}, 1024, 3),
}
# llama.cpp against tests/reference_model.py: max |difference| of the hidden states / their RMS
REFERENCE_TOLERANCE = {"gemma3": 5e-3}

GEMMA_PROMPT = ("The history of the printing press begins in the fifteenth century, when Johannes Gutenberg "
                "combined movable metal type, oil-based ink and a wooden screw press adapted from those used "
                "to make wine. Within fifty years, printing shops had spread to more than two hundred cities "
                "across Europe, books became far cheaper, and literacy rose.")
GREEDY_PROMPT = "The three most common states of matter are"
GEMMA_TOP_K = 64
GEMMA_GREEDY = 32
PPL_N_CTX = 512
PPL_N_CHUNKS = 8
TOKENIZER_CASES = [
    "Hello world",
    " Hello world",
    "  two leading spaces",
    "Hello\nworld",
    "\n\nDouble newline, then a trailing one\n",
    "tabs\tand\tspaces   three",
    "trailing spaces   ",
    "   ",
    "",
    "a",
    "1234567890 12 345 3.14159 -42",
    "The year 2024 had 366 days; π ≈ 3.14159.",
    "café naïve résumé Ελληνικά русский",
    "日本語のテキストと中文",
    "emoji 🙂🚀 and symbols ©®™",
    "UPPER lower MiXeD",
    "https://example.com/path?q=1&x=y",
    "def f(x):\n    return x ** 2  # square\n",
    "<start_of_turn>user\nWhat is the capital of France?<end_of_turn>\n<start_of_turn>model\n",
    "<bos>text after a literal <bos>",
    "<start_of_image> and <unused0> and <eos>",
    "\u00a0non-breaking space and a\r\nCRLF",
]


def open_llama(llama_cpp, path, n_ctx, kv_f32):
    """A llama.cpp context: one thread, the whole prompt in one batch, logits of every position and
    embeddings with pooling NONE (the final norm's output per token)."""
    kv = dict(type_k=llama_cpp.GGML_TYPE_F32, type_v=llama_cpp.GGML_TYPE_F32) if kv_f32 else {}
    return llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx, n_threads=1,
                           n_threads_batch=1, logits_all=True, embedding=True,
                           pooling_type=llama_cpp.LLAMA_POOLING_TYPE_NONE, flash_attn=False, verbose=False, **kv)


def eval_prompt(llama_cpp, llm, ids):
    """(hidden float32 [n, n_embd], logits float32 [n, n_vocab]) of a fresh evaluation of ids."""
    llm.reset()
    llm.eval(ids)
    hidden = np.ctypeslib.as_array(llama_cpp.llama_get_embeddings(llm.ctx), shape=(len(ids), llm.n_embd()))
    return hidden.astype(np.float32).copy(), np.array(llm.scores[:len(ids)], np.float32)


def file_sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def output_matrix(path):
    """float32 [n_vocab, n_embd]: output.weight, or token_embd.weight when tied."""
    from pyengine.gguf import GGUFReader

    with GGUFReader(path) as r:
        t = r.tensors.get("output.weight") or r.tensors["token_embd.weight"]
        return np.array(t.data, np.float32)


def make_tiny(llama_cpp, out):
    from arch_models import write_tiny_arch
    from arch_models import vocab_gguf as vocab_of
    from reference_model import ReferenceModel

    with tempfile.TemporaryDirectory() as tmp:
        for name, (arch, shape, n_ctx, seed) in VARIANTS.items():
            path = Path(tmp) / f"{arch}-{json.dumps(shape, sort_keys=True)}-{seed}.gguf"
            if not path.exists():
                write_tiny_arch(path, arch, vocab_gguf=vocab_of(arch), seed=seed, **shape)
            llm = open_llama(llama_cpp, path, n_ctx, kv_f32=True)
            ids = llm.tokenize(PROMPT.encode(), add_bos=True, special=True)[:N_PROMPT]
            assert len(ids) == N_PROMPT
            hidden, logits = eval_prompt(llama_cpp, llm, ids)
            # the stored hidden states give llama.cpp's logits through the F32 output matrix
            mine = hidden.astype(np.float64) @ output_matrix(path).T.astype(np.float64)
            assert np.abs(mine - logits).max() < 1e-4 * np.abs(logits).max(), name
            ref = ReferenceModel(path, n_ctx=-(-n_ctx // 256) * 256).hidden(ids, kv_f16=False)
            rel = np.abs(ref - hidden).max() / np.sqrt(np.mean(hidden.astype(np.float64) ** 2))
            assert rel < REFERENCE_TOLERANCE.get(arch, 1e-4), f"{name}: llama.cpp vs numpy reference {rel:.2e}"
            top2, top2_logits = top_k(logits, 2)
            greedy, gaps = greedy_with_gaps(llm, N_GREEDY)
            p = f"{name}_"
            out.update({
                p + "arch": np.array(arch), p + "shape": np.array(json.dumps(shape, sort_keys=True)),
                p + "seed": np.array(seed), p + "n_ctx": np.array(n_ctx),
                p + "model_sha256": np.array(file_sha256(path)), p + "tensor_sha256": np.array(tensor_sha256(path)),
                p + "ids": np.array(ids, np.int32), p + "hidden": hidden,
                p + "top2_ids": top2, p + "top2_logits": top2_logits.astype(np.float32),
                p + "greedy": greedy, p + "greedy_gap": gaps,
            })
            gap = top2_logits[:, 0] - top2_logits[:, 1]
            print(f"{name}: vs numpy reference {rel:.1e}; prompt top-2 gaps min {gap.min():.3f}, "
                  f"{(gap < 0.05).sum()} < 0.05; greedy gaps min {gaps.min():.3f}; "
                  f"greedy {llm.detokenize(greedy.tolist()).decode(errors='replace')!r}")
            del llm


def make_gemma(llama_cpp, out):
    from pyengine.fetch import fetch_gemma3_270m

    path = fetch_gemma3_270m()
    llm = open_llama(llama_cpp, path, PPL_N_CTX, kv_f32=False)
    ids = llm.tokenize(GEMMA_PROMPT.encode(), add_bos=True, special=True)
    hidden, logits = eval_prompt(llama_cpp, llm, ids)
    logp = log_softmax(logits)
    top2, top2_logits = top_k(logits, 2)
    top, top_lp = top_k(logp, GEMMA_TOP_K)
    self_kl = token_by_token_kl(llama_cpp, path, ids, logp, n_threads=1)
    greedy_ids = llm.tokenize(GREEDY_PROMPT.encode(), add_bos=True, special=True)
    llm.reset()
    llm.eval(greedy_ids)
    greedy, gaps = greedy_with_gaps(llm, GEMMA_GREEDY)
    print(f"gemma3_270m: {len(ids)} prompt tokens; llama.cpp's batch vs token-by-token KL mean {self_kl.mean():.2e}, "
          f"max {self_kl.max():.2e}")
    print(f"gemma3_270m: greedy {llm.detokenize(greedy.tolist()).decode(errors='replace')!r}")

    text = WIKITEXT.read_text(encoding="utf-8")
    tokens = llm.tokenize(text.encode(), add_bos=True, special=False)
    bos = llm.token_bos()
    assert tokens[0] == bos
    chunks = perplexity_chunks(tokens, PPL_N_CTX, PPL_N_CHUNKS, bos_id=bos)
    ppl, chunk_nll, count = perplexity(llm, chunks)
    print(f"gemma3_270m: WikiText-2 ppl {ppl:.4f} over {count} tokens ({len(chunks)} chunks of {PPL_N_CTX})")
    p = "gemma3_270m_"
    out.update({
        p + "sha256": np.array(file_sha256(path)), p + "prompt": np.array(GEMMA_PROMPT), p + "kv_type": np.array("f16"),
        p + "ids": np.array(ids, np.int32), p + "hidden": hidden,
        p + "top2_ids": top2, p + "top2_logits": top2_logits.astype(np.float32),
        p + "top_ids": top, p + "top_logprobs": top_lp.astype(np.float32), p + "self_kl": self_kl,
        p + "greedy_prompt": np.array(GREEDY_PROMPT), p + "greedy_prompt_ids": np.array(greedy_ids, np.int32),
        p + "greedy": greedy, p + "greedy_gap": gaps,
        p + "ppl": np.array(ppl, np.float64), p + "ppl_chunk_nll": chunk_nll,
        p + "ppl_n_ctx": np.array(PPL_N_CTX), p + "ppl_n_chunks": np.array(PPL_N_CHUNKS),
        p + "ppl_first_tokens": np.array(chunks, np.int32),
    })

    cases = []
    for s in TOKENIZER_CASES:
        b = s.encode()
        cases.append({"text": s,
                      "bos": llm.tokenize(b, add_bos=True, special=True),
                      "no_bos": llm.tokenize(b, add_bos=False, special=True),
                      "bos_no_special": llm.tokenize(b, add_bos=True, special=False)})
    head = json.dumps({
        "what": "llama.cpp's tokenization with Gemma 3 270M's vocabulary (tests/data/make_llamacpp_arch_golden.py): "
                "bos = add BOS, special tokens parsed; no_bos = no BOS, special tokens parsed; "
                "bos_no_special = add BOS, special tokens as text",
        "model": path.name, "model_sha256": out[p + "sha256"].item(), "llama_cpp_version": llama_cpp.__version__,
        "bos_id": bos}, indent=1, ensure_ascii=False)
    lines = ",\n  ".join(json.dumps(case, ensure_ascii=False) for case in cases)  # one case a line
    TOKENIZER_JSON.write_text(head[:-2] + ',\n "cases": [\n  ' + lines + "\n ]\n}\n", encoding="utf-8")
    del llm


def main():
    import llama_cpp

    parts = sys.argv[1:] or ["tiny", "gemma"]
    unknown = set(parts) - {"tiny", "gemma"}
    if unknown:
        raise SystemExit(f"unknown parts {sorted(unknown)}: tiny, gemma")
    out = dict(np.load(OUT)) if OUT.exists() and sys.argv[1:] else {}
    out.update({"prompt": np.array(PROMPT), "llama_cpp_version": np.array(llama_cpp.__version__),
                "variants": np.array(list(VARIANTS))})
    if "tiny" in parts:
        make_tiny(llama_cpp, out)
    if "gemma" in parts:
        make_gemma(llama_cpp, out)
    np.savez_compressed(OUT, **out)
    print(f"{OUT}: {OUT.stat().st_size / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
