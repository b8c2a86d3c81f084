"""Every architecture against the plain numpy reference (tests/reference_model.py), in the shapes that
test its recipe; the determinism promise for each; the descriptions' validation of bad files; the
sliding-window ring cache."""

from __future__ import annotations

import numpy as np
import pytest

from pyengine import GGUFError, Model
from pyengine.architectures import ARCHITECTURES
from pyengine.gguf import GGUFReader, GGUFWriter
from reference_model import ReferenceModel
from tiny_models import write_tiny_llama

PROMPT = [1, 5, 77, 200, 3, 9, 9, 250, 17, 42, 0, 299, 128, 64, 12, 7, 180, 33, 2, 90]

# name -> the model: each architecture's distinctive shapes (head_dim != n_embd / n_heads where the
# architecture allows it; a sliding window shorter than the prompt; partial rotary; LongRoPE).
CASES = {
    "llama": dict(arch="llama"),
    "qwen2": dict(arch="qwen2", n_heads=4, n_kv_heads=2),
    "qwen2-tied": dict(arch="qwen2", tied=True, n_kv_heads=1),
    "qwen3": dict(arch="qwen3", n_heads=4, n_kv_heads=2, head_dim=24, rope_theta=1e6),
    "gemma3": dict(arch="gemma3", n_layers=7, n_heads=4, n_kv_heads=1, head_dim=32, sliding_window=5,
                   rope_theta=1e6, tied=True),
    "phi3": dict(arch="phi3", n_heads=4, n_kv_heads=4, n_rot=8),
    "phi3-longrope": dict(arch="phi3", n_heads=4, n_kv_heads=2, rope_factors=True, n_ctx_orig=64,
                          rope_attn_factor=1.19),
}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("arch")


def model_of(model_dir, case, weight_type="f32"):
    path = model_dir / f"{case}-{weight_type}.gguf"
    if not path.exists():
        write_tiny_llama(path, weight_type=weight_type, seed=len(case), **CASES[case])
    return path


def rel_err(ours, ref):
    return float(np.abs(ours - ref).max() / np.abs(ref).max())


def test_every_architecture_has_a_case():
    assert {c["arch"] for c in CASES.values()} == set(ARCHITECTURES)


@pytest.mark.parametrize("case", CASES)
def test_float_models_match_the_reference(model_dir, case):
    path = model_of(model_dir, case)
    m = Model(path, n_threads=2, kv_type="f32")
    assert m.arch == CASES[case]["arch"]
    ours = m.logits(PROMPT)
    ref = ReferenceModel(path, n_ctx=m.n_ctx).logits(PROMPT, kv_f16=False)
    # float32 against float64; gemma3's GELU goes through float16 (llama.cpp's table), where an input
    # on a rounding boundary may round the other way: one step of 2^-11 in one activation
    assert rel_err(ours, ref) < (2e-4 if CASES[case]["arch"] == "gemma3" else 5e-6), case
    # with the F16 cache, F16 rounding of keys and values only
    assert rel_err(Model(path).logits(PROMPT), ReferenceModel(path, n_ctx=m.n_ctx).logits(PROMPT)) < 1e-3


@pytest.mark.parametrize("case", ["qwen3", "gemma3", "phi3-longrope"])
def test_quantized_models_match_the_reference(model_dir, case):
    path = model_of(model_dir, case, "q8_0")
    m = Model(path)
    ours = m.logits(PROMPT)
    ref = ReferenceModel(path, n_ctx=m.n_ctx).logits(PROMPT)
    assert rel_err(ours, ref) < 0.03
    assert np.mean(ours.argmax(-1) == ref.argmax(-1)) >= 0.9


def test_each_recipe_step_matters(model_dir):
    """The reference is not fooled by a model that would pass without the step: dropping the step from
    the reference moves the logits far beyond the tolerance (so each test above can fail)."""
    ids = PROMPT
    for case, undo in [("qwen2", lambda r: r.w.pop("blk.0.attn_q.bias")),
                       ("qwen3", lambda r: setattr(r, "neox", False)),
                       ("gemma3", lambda r: setattr(r, "window", [0] * r.n_layers)),
                       ("gemma3", lambda r: setattr(r, "theta_local", r.theta)),
                       ("gemma3", lambda r: setattr(r, "embd_scale", 1.0)),
                       ("phi3-longrope", lambda r: setattr(r, "rope_factors", np.ones(r.n_rot // 2))),
                       ("phi3-longrope", lambda r: setattr(r, "attn_factor", 1.0))]:
        path = model_of(model_dir, case)
        ours = Model(path, kv_type="f32").logits(ids)
        ref = ReferenceModel(path)
        undo(ref)
        assert rel_err(ours, ref.logits(ids, kv_f16=False)) > 1e-3, case


def test_phi3_takes_the_long_factors_beyond_the_original_context(model_dir):
    path = model_of(model_dir, "phi3-longrope")  # original context 64, trained 256
    short, long = Model(path, n_ctx=64), Model(path, n_ctx=128)
    assert short.config.rope_factors != long.config.rope_factors
    for m in (short, long):
        ref = ReferenceModel(path, n_ctx=m.n_ctx).logits(PROMPT)
        assert rel_err(m.logits(PROMPT), ref) < 2e-4


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("weight_type", ["f32", "q4_0"])
def test_bit_identical_across_batches_chunks_prefixes_and_threads(model_dir, case, weight_type):
    path = model_of(model_dir, case, weight_type)
    base = Model(path, n_threads=1).logits(PROMPT)
    m = Model(path, n_threads=2)
    np.testing.assert_array_equal(m.logits(PROMPT), base)
    ctx = m.context()
    np.testing.assert_array_equal(np.stack([ctx.eval([t]) for t in PROMPT]), base)
    ctx = m.context()
    chunks, start = [], 0
    for size in (3, 1, 9, 7):
        chunks.append(ctx.eval_all(PROMPT[start:start + size]))
        start += size
    np.testing.assert_array_equal(np.concatenate(chunks), base)
    prefix = m.context()
    prefix.eval(PROMPT[:8])
    np.testing.assert_array_equal(prefix.fork().eval_all(PROMPT[8:]), base[8:])
    batched = m.eval_sequences([prefix.fork() for _ in range(3)], PROMPT[8:11])  # three sequences in one call
    for i, token in enumerate(PROMPT[8:11]):
        np.testing.assert_array_equal(batched[i], prefix.fork().eval([token]))


def test_the_sliding_window_ring_gives_the_bits_of_a_full_cache(model_dir):
    """gemma3 with window 5: a context longer than window + one batch (256) keeps a ring for the
    local layers; its logits are those of a context that keeps every position, and its cache is
    smaller."""
    path = model_of(model_dir, "gemma3")
    ids = np.random.default_rng(3).integers(0, 300, 600).tolist()
    small = Model(path, n_ctx=256)  # 256 < 5 + 256: one row per position, no ring
    ring = Model(path, n_ctx=1024)
    assert ring.context()._ctx.kv_bytes < small.context()._ctx.kv_bytes * 4 * 0.6
    ctx_ring = ring.context()
    ring_logits = ctx_ring.eval_all(ids)  # three micro-batches through the ring, wrapping
    # the reference sees every position
    ref = ReferenceModel(path).logits(ids[:300])
    assert rel_err(ring_logits[:300], ref) < 1e-3
    # token by token from a cached prefix gives the same bits as the one batch
    ctx = ring.context()
    ctx.eval(ids[:400])
    np.testing.assert_array_equal(np.stack([ctx.eval([t]) for t in ids[400:]]), ring_logits[400:])


def test_truncating_a_ring_further_back_than_it_holds_is_refused(model_dir):
    path = model_of(model_dir, "gemma3")
    m = Model(path, n_ctx=1024)
    ids = np.random.default_rng(4).integers(0, 300, 700).tolist()
    ctx = m.context()
    ctx.eval(ids)
    ctx.truncate(690)  # within the ring: going on works and matches a fresh evaluation
    fresh = m.context()
    fresh.eval(ids[:690])
    np.testing.assert_array_equal(ctx.eval([5]), fresh.eval([5]))
    with pytest.raises(ValueError, match="sliding-window"):
        ctx.truncate(100)
    # Two steps back reach no further than one: the ring's slots before 690 were taken by positions up
    # to 700, which truncate(690) forgot but did not unwrite (nor does a fork, which copies the ring)
    ring = 5 + 256
    deep = 700 - ring + 5 - 1  # its window starts one position before what the ring still holds
    for c in (ctx, ctx.fork()):
        with pytest.raises(ValueError, match="sliding-window"):
            c.truncate(deep)
    ctx.truncate(deep + 1)  # the deepest it holds: going on matches a fresh evaluation
    fresh = m.context()
    fresh.eval(ids[:deep + 1])
    np.testing.assert_array_equal(ctx.eval_all(ids[deep + 1:deep + 40]), fresh.eval_all(ids[deep + 1:deep + 40]))
    ctx.truncate(0)  # always possible: nothing before it is needed
    ctx.eval(ids[:300])
    ctx.truncate(100)  # a cache emptied starts over: only positions written since count


def rewrite(src_path, dst_path, drop=(), metadata=None, tensors=None):
    """A copy of a GGUF file without the tensors `drop`, with metadata and tensors replaced or added."""
    with GGUFReader(src_path) as r, GGUFWriter(dst_path) as w:
        for key, value in r.metadata.items():
            if key in (metadata or {}):
                continue
            t = r.metadata_types[key]
            w.add(key, value, t[0] if isinstance(t, tuple) else t, t[1] if isinstance(t, tuple) else None)
        for key, value in (metadata or {}).items():
            w.add(key, value)
        for name, info in r.tensors.items():
            if name not in drop and name not in (tensors or {}):
                w.add_tensor(name, np.array(info.data), info.type, shape=info.shape)
        for name, data in (tensors or {}).items():
            w.add_tensor(name, data)
    return dst_path


@pytest.mark.parametrize("case,change,match", [
    ("qwen3", dict(drop={"blk.1.attn_k_norm.weight"}), "attn_k_norm.weight is missing"),
    ("gemma3", dict(drop={"blk.0.post_ffw_norm.weight"}), "post_ffw_norm.weight is missing"),
    ("qwen2", dict(tensors={"blk.0.attn_q_norm.weight": np.ones(16, np.float32)}), "does not have: 'blk.0.attn_q_norm"),
    ("qwen2", dict(tensors={"blk.0.attn_k.bias": np.ones(5, np.float32)}), r"attn_k.bias has shape \(5,\)"),
    ("phi3", dict(tensors={"blk.1.attn_qkv.weight": np.ones((64, 64), np.float32)}), "attn_qkv.weight has shape"),
    ("phi3", dict(metadata={"phi3.rope.dimension_count": 40}), "rope.dimension_count 40 does not fit"),
    ("phi3-longrope", dict(drop={"rope_factors_short.weight"}), "come together"),
    ("phi3-longrope", dict(tensors={"rope_factors_long.weight": np.zeros(8, np.float32)}), "not positive"),
    ("gemma3", dict(metadata={"gemma3.attention.sliding_window_pattern": [True, False]}), "one bool per layer"),
    ("qwen3", dict(metadata={"qwen3.attention.value_length": 8}), "value_length"),
    ("gemma3", dict(metadata={"gemma3.final_logit_softcapping": 30.0}), "soft-capping"),
    ("gemma3", dict(metadata={"gemma3.final_logit_softcapping": "30"}), "soft-capping"),
    ("llama", dict(metadata={"llama.rope.scaling.type": "yarn"}), "RoPE scaling 'yarn' is not supported"),
    ("llama", dict(metadata={"general.architecture": "mamba"}), "architecture 'mamba' is not supported .*gemma3"),
])
def test_bad_files_are_refused_by_the_description(model_dir, tmp_path, case, change, match):
    bad = rewrite(model_of(model_dir, case), tmp_path / "bad.gguf", **change)
    with pytest.raises(GGUFError, match=match):
        Model(bad)


def test_info_shows_the_architecture_and_how_it_runs(model_dir):
    from pyengine.info import format_info, info

    d = info(model_of(model_dir, "gemma3"))
    assert d["error"] is None and d["architecture"] == "gemma3"
    text = format_info(d)
    assert "gemma3: embeddings x sqrt(n_embd)" in text
    assert "sliding window: 5 tokens on 6 of 7 layers, local RoPE base 10000" in text
    assert "4 heads, 1 KV heads of 32" in text
