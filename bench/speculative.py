"""Speculative decoding: token generation speed with and without drafts, side by side in one run.

    python bench/speculative.py [-n 128] [--repeats 5] [-t THREADS] [--no-draft-model] [--out bench/results/speculative]

Tasks on the default model (SmolLM2-135M-Instruct Q4_1) through its chat template:
- repetitive: correcting the spelling of a given paragraph (the answer copies most of the prompt),
  and repeating a given text; temperature 0, so the drafted output must be the plain output exactly
  (checked on every run);
- drafts fail: free writing (a story; an explanation), greedy and sampled (seeded).
Each task runs without a draft and with --draft lookup in turn (and, unless --no-draft-model, with
SmolLM2 Q4_0 drafting for the F32 file of the same model on the first repetitive and the first free
task), `repeats` times; the best of each is reported (on a shared machine other processes only ever
slow a run down, so the best run is the closest to the machine's own speed; the JSON has the
medians too). tg: tokens after the first one divided by the time from the first token to the last
(the prompt's evaluation is left out, as llama-bench's tg). Writes OUT.md and OUT.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import pyengine
from pyengine.chat import chat_ids
from pyengine.generate import TokenStream
from pyengine.sampling import Sampler, SamplingParams
from pyengine.speculative import DRAFT_MAX, speculator

PARAGRAPH = ("The comittee met on tuesday to discus the new budjet for the libary. After a long debate, the "
             "members agreed that the reading room needed new chairs, better lighting and a quieter heating "
             "system, and that the children's corner should recieve more picture books. The treasurer warned "
             "that the money would not streach to everything, so the repairs to the roof were put off until "
             "the spring, when the weather would be kinder and the prices lower.")
POEM = ("I wandered lonely as a cloud that floats on high o'er vales and hills, when all at once I saw a "
        "crowd, a host, of golden daffodils; beside the lake, beneath the trees, fluttering and dancing in "
        "the breeze. Continuous as the stars that shine and twinkle on the milky way, they stretched in "
        "never-ending line along the margin of a bay.")

TASKS = [
    ("correct the spelling of a paragraph", "repetitive",
     "Correct the spelling mistakes in the following text. Write out the whole corrected text.\n\n" + PARAGRAPH, 0.0),
    ("repeat a given text", "repetitive", "Repeat the following text exactly:\n\n" + POEM, 0.0),
    ("write a story", "drafts fail", "Write a short story about a lighthouse keeper who finds a message in a bottle.",
     0.0),
    ("explain a topic", "drafts fail", "Explain how vaccines train the immune system, in a few paragraphs.", 0.0),
    ("write a story, sampled (T 0.8, seed 1)", "drafts fail",
     "Write a short story about a lighthouse keeper who finds a message in a bottle.", 0.8),
]


def smollm2(type_name: str) -> Path:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "models"))
    from recipes import smollm2 as recipe

    return recipe(type_name)


def run(model, ids, n, temperature, draft):
    """(tokens, tg tokens/s, drafted, taken, forward calls after the prompt) of one generation of n
    tokens (EOS banned)."""
    params = SamplingParams(temperature=temperature, seed=1, logit_bias={t: float("-inf") for t in model.tokenizer.eog_ids})
    ctx = model.context(len(ids) + n)
    spec = speculator(model, draft, DRAFT_MAX, params, ctx.n_ctx)
    stream = TokenStream(ctx, ids, Sampler(params, model.n_vocab), n, speculator=spec)
    first = None
    for _ in stream:
        if first is None:
            first = time.perf_counter()
    tg = (len(stream.tokens) - 1) / (time.perf_counter() - first)
    calls = len(stream.tokens) - 1 - (spec.n_taken if spec else 0)  # each call gives one token more than it takes
    return stream.tokens, tg, spec.n_drafted if spec else 0, spec.n_taken if spec else 0, calls


def measure(model, prompt, temperature, n, repeats, draft, label):
    ids = chat_ids(model, [{"role": "user", "content": prompt}])
    plain, drafted = [], []
    results = {}
    for i in range(repeats):  # in turn (either one first), so that a change of the machine's load touches both
        for d in ((None, draft) if i % 2 == 0 else (draft, None)):
            results.setdefault(d is None, []).append(run(model, ids, n, temperature, d))
    plain = [r[1] for r in results[True]]
    drafted = [r[1] for r in results[False]]
    tokens = results[True][0][0]
    _, _, n_drafted, n_taken, calls = results[False][-1]
    if temperature == 0:
        assert all(r[0] == tokens for r in results[False]), f"{label}: the drafted output differs from plain greedy"
    row = {"prompt_tokens": len(ids), "tokens": n, "tg_plain": max(plain), "tg_draft": max(drafted),
           "tg_plain_median": statistics.median(plain), "tg_draft_median": statistics.median(drafted),
           "drafted": n_drafted, "taken": n_taken, "calls_plain": n - 1, "calls_draft": calls}
    row["speedup"] = row["tg_draft"] / row["tg_plain"]
    print(f"{label:58s} {row['tg_plain']:6.1f} {row['tg_draft']:6.1f} tok/s  x{row['speedup']:.2f}  "
          f"(drafted {n_drafted}, taken {n_taken}, forward calls {n - 1} -> {calls})", flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=128, help="tokens generated per run (default 128)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("-t", "--threads", type=int, default=None)
    ap.add_argument("--no-draft-model", action="store_true", help="skip the F32 target with a Q4_0 draft model")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "speculative"))
    args = ap.parse_args()

    model = pyengine.Model(n_threads=args.threads)
    print(f"{'task (default model, Q4_1)':58s}  plain  draft", flush=True)
    rows = []
    for label, kind, prompt, temperature in TASKS:
        rows.append({"task": label, "kind": kind, "draft": "lookup", "model": "Q4_1", "temperature": temperature,
                     **measure(model, prompt, temperature, args.n, args.repeats, "lookup", f"{label} [lookup]")})
    if not args.no_draft_model:
        target = pyengine.Model(smollm2("f32"), n_threads=args.threads)
        draft = pyengine.Model(smollm2("q4_0"), n_threads=args.threads)
        for label, kind, prompt, temperature in (TASKS[0], TASKS[2]):
            rows.append({"task": label, "kind": kind, "draft": "Q4_0 model", "model": "F32", "temperature": temperature,
                         **measure(target, prompt, temperature, args.n, args.repeats, draft,
                                   f"{label} [F32, Q4_0 draft]")})

    out = Path(args.out)
    meta = {"cpu": platform.processor() or platform.machine(), "threads": model.n_threads, "isa": pyengine.isa(),
            "n": args.n, "repeats": args.repeats, "draft_max": DRAFT_MAX}
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    lines = [
        "# Speculative decoding: tg with and without drafts",
        "",
        f"`python bench/speculative.py -n {args.n} --repeats {args.repeats}` on {meta['threads']} threads "
        f"({meta['isa']}): SmolLM2-135M-Instruct through its chat template, {args.n} tokens per run "
        "(end of generation banned), draft_max "
        f"{DRAFT_MAX}; tg = tokens after the first / time from the first to the last (the prompt left out), "
        f"best of {args.repeats} runs taken in turn with the plain ones (medians in the JSON). Greedy runs are "
        "checked to give exactly the plain tokens. drafted / taken: the draft tokens of the last run, and how "
        "many the model took; calls: the forward calls after the first token, plain and with drafts.",
        "",
        "| task | kind | model | draft | tg plain (tok/s) | tg with draft (tok/s) | speedup | drafted | taken | calls |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['task']} | {r['kind']} | {r['model']} | {r['draft']} | {r['tg_plain']:.1f} | "
                     f"{r['tg_draft']:.1f} | {r['speedup']:.2f}x | {r['drafted']} | {r['taken']} | "
                     f"{r['calls_plain']} -> {r['calls_draft']} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out.with_suffix('.md')} and .json")


if __name__ == "__main__":
    main()
