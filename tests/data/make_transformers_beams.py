"""Makes transformers_beams.json: HF transformers' beam search, the reference that tests/test_beam.py
holds pyengine.beam_search to, on two models:

- "tiny": a small random llama (tests/tiny_models.py, seed and vocabulary below) whose end-of-sequence
  row of output.weight is scaled up, so that hypotheses end early and often: every early_stopping
  mode, several length penalties and beam counts, greedy (num_beams=1) included.
- "smollm2-f32": SmolLM2-135M-Instruct's F32 variant (models/recipes.py, `smollm2('f32')`), on chat
  and plain prompts.

transformers loads each GGUF file and dequantizes it to torch float32; the searches run on the CPU
with eager attention. Dev-only: pyengine's own environment needs no torch. Run from the repository
root with a separate virtual environment that also holds pyengine (it writes the tiny model and
tokenizes the prompts):

    python -m venv /tmp/tfvenv
    /tmp/tfvenv/bin/pip install torch transformers gguf accelerate numpy .
    /tmp/tfvenv/bin/python tests/data/make_transformers_beams.py

Each case records the generated ids as transformers returns them (an ended hypothesis keeps its
end-of-sequence token; pyengine's Completion leaves it out) and `sequences_scores` (None for greedy
search, which has none).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
from pathlib import Path

import torch
import transformers
from transformers import AutoModelForCausalLM

import pyengine

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "models"))
from recipes import smollm2  # noqa: E402
from tiny_models import scale_output_row, write_tiny_llama  # noqa: E402

TINY = dict(n_vocab=260, seed=5, eos_scale=2.0)  # token 256 is EOS (and BOS)
# prompts where the early_stopping modes part ways (found by trying random prompts)
TINY_PROMPTS = [[104, 164, 140, 21], [108, 159, 116], [209, 84, 115, 201, 31, 77]]
TINY_MAX_NEW_TOKENS = 10
# (num_beams, length_penalty, early_stopping, num_return_sequences)
TINY_SETTINGS = [
    (4, 1.0, False, 4), (4, 1.0, True, 4), (4, 1.0, "never", 4),
    (3, 2.0, False, 3), (3, 2.0, "never", 3), (3, 2.0, True, 3),
    (5, 0.0, False, 5), (5, -1.0, "never", 2), (2, 0.5, True, 1), (8, 1.0, False, 8),
    (1, 1.0, False, 1),
]

SMOLLM2_PROMPTS = [
    "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
    "The quick brown fox",
    "<|im_start|>user\nName a primary color.<|im_end|>\n<|im_start|>assistant\n",
]
SMOLLM2_MAX_NEW_TOKENS = 16
SMOLLM2_DEFAULT = (4, 1.0, False, 4)
SMOLLM2_MORE = [(3, 2.0, "never", 3), (3, 0.0, True, 3), (1, 1.0, False, 1)]  # on the first prompt


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def write_tiny(path: Path) -> Path:
    write_tiny_llama(path, n_vocab=TINY["n_vocab"], seed=TINY["seed"])
    return scale_output_row(path, 256, TINY["eos_scale"])


def load(path: Path):
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32,
                                                 attn_implementation="eager")
    return model.eval()


def run(model, ids, eog_ids, max_new_tokens, settings) -> list[dict]:
    num_beams, length_penalty, early_stopping, num_return_sequences = settings
    input_ids = torch.tensor([ids])
    with torch.no_grad():
        out = model.generate(input_ids, attention_mask=torch.ones_like(input_ids), do_sample=False,
                             num_beams=num_beams, max_new_tokens=max_new_tokens, length_penalty=length_penalty,
                             early_stopping=early_stopping, num_return_sequences=num_return_sequences,
                             eos_token_id=eog_ids, pad_token_id=eog_ids[-1], output_scores=True,
                             return_dict_in_generate=True)
    hypotheses = []
    for i, seq in enumerate(out.sequences):
        generated = seq[len(ids):].tolist()
        if num_beams > 1:
            # beam_indices is -1 past a hypothesis' end (the sequence is padded there)
            n_generated = int((out.beam_indices[i] >= 0).sum())
            score = float(out.sequences_scores[i])
        else:  # greedy: a batch of one ends at its end-of-sequence token
            n_generated, score = len(generated), None
        hypotheses.append({"tokens": generated[:n_generated], "score": score})
    return hypotheses


def case(name, ids, prompt, eog_ids, max_new_tokens, settings, hypotheses) -> dict:
    print(f"{name} {ids if prompt is None else repr(prompt)} {settings}")
    for h in hypotheses:
        print(f"  {h['score']} {h['tokens']}")
    return {"model": name, "prompt": prompt, "prompt_ids": ids, "eos_token_id": eog_ids,
            "max_new_tokens": max_new_tokens, "num_beams": settings[0], "length_penalty": settings[1],
            "early_stopping": settings[2], "num_return_sequences": settings[3], "hypotheses": hypotheses}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-o", "--output", type=Path, default=Path(__file__).with_name("transformers_beams.json"))
    args = parser.parse_args()
    torch.manual_seed(0)
    cases = []
    with tempfile.TemporaryDirectory() as tmp:
        tiny_path = write_tiny(Path(tmp) / "tiny-eos.gguf")
        tiny_sha = sha256(tiny_path)
        eog = sorted(pyengine.Tokenizer.from_gguf(tiny_path).eog_ids)
        model = load(tiny_path)
        for ids in TINY_PROMPTS:
            for settings in TINY_SETTINGS:
                hyps = run(model, ids, eog, TINY_MAX_NEW_TOKENS, settings)
                cases.append(case("tiny", ids, None, eog, TINY_MAX_NEW_TOKENS, settings, hyps))

    smollm2_path = Path(smollm2("f32"))
    tokenizer = pyengine.Tokenizer.from_gguf(smollm2_path)
    eog = sorted(tokenizer.eog_ids)
    model = load(smollm2_path)
    runs = [(p, SMOLLM2_DEFAULT) for p in SMOLLM2_PROMPTS] + [(SMOLLM2_PROMPTS[0], s) for s in SMOLLM2_MORE]
    for prompt, settings in runs:
        ids = tokenizer.encode(prompt, add_bos=tokenizer.add_bos)
        hyps = run(model, ids, eog, SMOLLM2_MAX_NEW_TOKENS, settings)
        cases.append(case("smollm2-f32", ids, prompt, eog, SMOLLM2_MAX_NEW_TOKENS, settings, hyps))

    data = {
        "transformers": transformers.__version__, "torch": torch.__version__,
        "models": {"tiny": {**TINY, "sha256": tiny_sha},
                   "smollm2-f32": {"file": smollm2_path.name, "sha256": sha256(smollm2_path)}},
        "cases": cases,
    }
    args.output.write_text(json.dumps(data, indent=None, separators=(",", ":")).replace('{"model"', '\n{"model"')
                           + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
