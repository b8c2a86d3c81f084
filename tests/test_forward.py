"""The llama forward pass: against the numpy float64 reference on small random models, and the
determinism promise (bit-identical logits across batching, chunking, cached prefixes, threads)."""

import numpy as np
import pytest

import pyengine
from pyengine import GGUFError, Model
from pyengine.model import kv_cache_bytes

from reference_model import ReferenceModel
from tiny_models import threads_warning, write_tiny_llama

SHAPES = [
    dict(n_heads=4, n_kv_heads=4),                          # plain multi-head attention
    dict(n_heads=4, n_kv_heads=2),                          # grouped-query attention
    dict(n_heads=8, n_kv_heads=1, n_embd=128, n_ff=160),    # multi-query
    dict(n_heads=2, n_kv_heads=2, n_rot=16, tied=True),     # partial RoPE, tied output
    dict(n_heads=4, n_kv_heads=2, n_layers=3, rope_theta=500000.0),
]
# K-quants and IQ4_XS: rows of 256-value super-blocks (n_embd and n_ff multiples of 256)
K_SHAPE = dict(n_heads=4, n_kv_heads=2, n_embd=256, n_ff=512)
PROMPT = [1, 5, 77, 200, 3, 9, 9, 250, 17, 42, 0, 299, 128]
# A prompt long enough (32 tokens or more) for the threads to take the products' rows in chunks
LONG_PROMPT = [(37 * i + 11) % 300 for i in range(40)]

# Quantized models by name: the type of every matrix, or a mix. q4_0 keeps a Q8_0 token_embd (a
# file of two types); q4_k_m is what llama.cpp's Q4_K_M preset writes for these shapes
# (tests/data/llamacpp_preset_types.json): Q4_K, with Q6_K output, attn_v and ffn_down.
MIXES = {
    "q4_0": dict(weight_type="q4_0", embd_type="q8_0"),
    "q4_k_m": dict(weight_type="q4_k", tensor_types=dict(output="q6_k", attn_v="q6_k", ffn_down="q6_k")),
}
BLOCK_TYPES = ["q4_0", "q4_1", "q8_0", "q5_0", "q5_1", "iq4_nl"]  # 32-value blocks: on every shape
SUPER_BLOCK_TYPES = ["q2_k", "q3_k", "q4_k", "q5_k", "q6_k", "iq4_xs", "q4_k_m"]  # on K_SHAPE ("k")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("tiny")


def tiny(model_dir, name, **kw):
    path = model_dir / f"{name}.gguf"
    if not path.exists():
        write_tiny_llama(path, **kw)
    return path


def quantized(model_dir, type_name, shape):
    """The model of type_name (a weight type or a MIXES name) on SHAPES[shape], or on K_SHAPE for "k"."""
    kw = K_SHAPE if shape == "k" else SHAPES[shape]
    seed = len(SHAPES) if shape == "k" else shape
    types = MIXES.get(type_name, dict(weight_type=type_name))
    return tiny(model_dir, f"s{shape}-{type_name}", seed=seed, **types, **kw)


def on_its_shape(type_names, shape=1):
    """(shape, type) pairs: the 32-block types on SHAPES[shape], the super-block ones on K_SHAPE."""
    return [("k" if t in SUPER_BLOCK_TYPES else shape, t) for t in type_names]


def mean_kl(p_logits, q_logits):
    """Mean over positions of KL(softmax p || softmax q), in float64."""
    def log_softmax(z):
        z = z.astype(np.float64)
        z = z - z.max(-1, keepdims=True)
        return z - np.log(np.exp(z).sum(-1, keepdims=True))
    lp, lq = log_softmax(p_logits), log_softmax(q_logits)
    return float((np.exp(lp) * (lp - lq)).sum(-1).mean())


def rel_err(ours, ref):
    return float(np.abs(ours - ref).max() / np.abs(ref).max())


@pytest.mark.parametrize("shape", range(len(SHAPES)))
@pytest.mark.parametrize("weight_type", ["f32", "f16"])
@pytest.mark.parametrize("n", [1, 7, 13])
def test_float_models_match_reference(model_dir, shape, weight_type, n):
    path = tiny(model_dir, f"s{shape}-{weight_type}", weight_type=weight_type, seed=shape, **SHAPES[shape])
    ours = Model(path, n_threads=2).logits(PROMPT[:n])
    ref = ReferenceModel(path).logits(PROMPT[:n])
    assert ours.shape == (n, 300) and ours.dtype == np.float32
    # float32 against float64, and a K or V value near an fp16 rounding boundary may round the other way
    assert rel_err(ours, ref) < 2e-4


def test_f32_kv_cache_matches_reference_without_f16_rounding(model_dir):
    path = tiny(model_dir, "s1-f32", weight_type="f32", seed=1, **SHAPES[1])
    ours = Model(path, kv_type="f32").logits(PROMPT)
    assert rel_err(ours, ReferenceModel(path).logits(PROMPT, kv_f16=False)) < 2e-6
    # and the F16 cache differs from it by F16 rounding only
    assert rel_err(ours, ReferenceModel(path).logits(PROMPT, kv_f16=True)) < 1e-2


def test_long_context_attention_matches_reference(model_dir):
    """Deep in a context a token's positions are attended to in runs (of at least 256, at most 8),
    shared by the threads and joined: against the float64 reference's one softmax, at every depth
    up to 2100 positions (1 to 8 runs), for each thread count."""
    path = tiny(model_dir, "long-f32", weight_type="f32", seed=3, n_ctx_train=2304, **SHAPES[1])
    ids = np.random.default_rng(2).integers(0, 300, 2100).tolist()
    ref = ReferenceModel(path).logits(ids, kv_f16=False)
    for n_threads in (1, 3):
        with threads_warning(n_threads):
            ours = Model(path, n_threads=n_threads, kv_type="f32").logits(ids)
        assert rel_err(ours, ref) < 2e-5


@pytest.mark.parametrize("shape,weight_type", [(shape, t) for t in BLOCK_TYPES for shape in range(len(SHAPES))]
                         + on_its_shape(SUPER_BLOCK_TYPES))
def test_quantized_models_match_reference(model_dir, shape, weight_type):
    """The reference quantizes the activations as the engine does (Q8_0, Q8_1 or Q8_K by weight type);
    float32 against float64 can still flip one activation's rounding to the next step, which then
    travels on, so the bound is looser than for float models (the exact agreement of single products
    is tested in test_matmul and test_formats). Measured: without a flip the error is float rounding
    (1e-7 to 2e-6, every type); with flips it is 5e-4 to 2.4e-2 (12 seeds per type: the 256-wide
    K_SHAPE, with more activations, flips more often, but no larger, q2_k and q3_k included)."""
    path = quantized(model_dir, weight_type, shape)
    ours = Model(path).logits(PROMPT)
    ref = ReferenceModel(path).logits(PROMPT)
    assert rel_err(ours, ref) < 0.03
    assert np.mean(ours.argmax(-1) == ref.argmax(-1)) >= 0.9
    # without emulating the activation quantization, the difference is the quantization noise
    assert rel_err(ours, ReferenceModel(path).logits(PROMPT, quantize_activations=False)) < 0.1


def assert_bit_identical_across_batches_chunks_prefixes_and_threads(path, kv_type="f16"):
    base = Model(path, n_threads=1, kv_type=kv_type).logits(PROMPT)
    for n_threads in (2, 3, 5):
        with threads_warning(n_threads):
            m = Model(path, n_threads=n_threads, kv_type=kv_type)
        np.testing.assert_array_equal(m.logits(PROMPT), base)
    m = Model(path, n_threads=2, kv_type=kv_type)
    ctx = m.context()
    one_by_one = np.stack([ctx.eval([t]) for t in PROMPT])
    np.testing.assert_array_equal(one_by_one, base)
    # prompts: rows in chunks taken by whichever thread is free, against one thread and short batches
    long_base = Model(path, n_threads=1, kv_type=kv_type).logits(LONG_PROMPT)
    np.testing.assert_array_equal(m.logits(LONG_PROMPT), long_base)
    with threads_warning(3):
        np.testing.assert_array_equal(Model(path, n_threads=3, kv_type=kv_type).logits(LONG_PROMPT), long_base)
    ctx = m.context()
    np.testing.assert_array_equal(np.concatenate([ctx.eval_all(LONG_PROMPT[s:s + 8]) for s in range(0, 40, 8)]),
                                  long_base)
    ctx = m.context()
    chunks, start = [], 0
    for size in (3, 1, 5, 4):
        chunks.append(ctx.eval_all(PROMPT[start:start + size]))
        start += size
    np.testing.assert_array_equal(np.concatenate(chunks), base)
    # a cached prefix: evaluate 6 tokens, fork, and continue both ways
    prefix = m.context()
    prefix.eval(PROMPT[:6])
    branch = prefix.fork()
    np.testing.assert_array_equal(branch.eval_all(PROMPT[6:]), base[6:])
    np.testing.assert_array_equal(prefix.eval(PROMPT[6:]), base[-1])
    # sequences at other positions batched beside it
    other = m.context()
    other.eval(PROMPT[:2])
    prefix.truncate(6)
    batched = m.eval_sequences([prefix, other], [PROMPT[6], 5])
    np.testing.assert_array_equal(batched[0], base[6])
    np.testing.assert_array_equal(batched[1], m.logits(PROMPT[:2] + [5])[-1])
    return base


@pytest.mark.parametrize("shape,weight_type", on_its_shape(BLOCK_TYPES + SUPER_BLOCK_TYPES + ["f16"]))
def test_bit_identical_across_batches_chunks_prefixes_and_threads(model_dir, shape, weight_type):
    assert_bit_identical_across_batches_chunks_prefixes_and_threads(quantized(model_dir, weight_type, shape))


# The Q8_0 KV cache (kv_type="q8_0", llama.cpp's -ctk/-ctv q8_0): the determinism promise holds with
# it, it takes 34 bytes for every 64 of an F16 cache, and the logits stay close to an F16 cache's.
@pytest.mark.parametrize("weight_type", ["f16", "q4_0", "q4_k_m"])
def test_q8_0_kv_cache(model_dir, weight_type):
    path = quantized(model_dir, weight_type, "k")  # head dimension 64: two Q8_0 blocks per head
    quantized_cache = assert_bit_identical_across_batches_chunks_prefixes_and_threads(path, kv_type="q8_0")
    f16 = Model(path, n_threads=2)
    f16_cache = f16.logits(PROMPT)
    kl = mean_kl(f16_cache, quantized_cache)
    print(f"{weight_type}: KL(F16 cache || Q8_0 cache) {kl:.2e}, max |logit difference| "
          f"{np.abs(quantized_cache - f16_cache).max():.3f}")
    assert 0 < kl < 1e-3
    q8 = Model(path, n_threads=2, kv_type="q8_0")
    assert q8.context(64)._ctx.kv_bytes == kv_cache_bytes(q8.config, 64, "q8_0")
    assert kv_cache_bytes(q8.config, 64, "q8_0") * 64 == kv_cache_bytes(f16.config, 64, "f16") * 34


def test_q8_0_kv_cache_needs_whole_blocks_per_head(model_dir):
    path = quantized(model_dir, "q4_0", 1)  # head dimension 16
    with pytest.raises(ValueError, match="multiple of 32; this model's is 16"):
        Model(path, kv_type="q8_0")
    with pytest.raises(ValueError, match="kv_type must be one of"):
        Model(path, kv_type="q4_0")


@pytest.mark.parametrize("weight_type", ["q4_0", "q4_k_m"])
def test_a_batch_longer_than_a_micro_batch_is_one_batch_bit_for_bit(model_dir, weight_type):
    # The forward pass cuts a batch into micro-batches of 256 tokens (Model::kMicroBatch): a
    # prompt of 600 tokens takes three, and each logit must be what token-by-token evaluation gives.
    kw = dict(K_SHAPE if weight_type in SUPER_BLOCK_TYPES else SHAPES[1], n_ctx_train=1024)
    types = MIXES.get(weight_type, dict(weight_type=weight_type))
    path = tiny(model_dir, f"long-{weight_type}", seed=7, **types, **kw)
    prompt = np.random.default_rng(1).integers(0, 300, 600).tolist()
    m = Model(path, n_threads=2)
    whole = m.logits(prompt)
    ctx = m.context()
    one_by_one = np.stack([ctx.eval([t]) for t in prompt])
    np.testing.assert_array_equal(whole, one_by_one)
    np.testing.assert_array_equal(m.context().eval(prompt), whole[-1])  # the last token's logits alone
    ctx = m.context()
    ctx.eval(prompt[:100])
    np.testing.assert_array_equal(ctx.eval_all(prompt[100:]), whole[100:])  # a cached prefix, then 500


@pytest.mark.parametrize("shape,weight_type", on_its_shape(BLOCK_TYPES + SUPER_BLOCK_TYPES + ["f16"]))
def test_batched_sequences_match_single_evaluation(model_dir, shape, weight_type):
    path = quantized(model_dir, weight_type, shape)
    m = Model(path, n_threads=2)
    prefix = m.context()
    prefix.eval(PROMPT[:5])
    beams = [prefix.fork() for _ in range(3)]
    beams.append(m.context())  # sequences may be at different positions
    beams[-1].eval(PROMPT[:2])
    batched = m.eval_sequences(beams, [7, 8, 9, 10])
    assert batched.shape == (4, 300)
    for row, (prompt, token) in enumerate([(PROMPT[:5], 7), (PROMPT[:5], 8), (PROMPT[:5], 9), (PROMPT[:2], 10)]):
        np.testing.assert_array_equal(batched[row], m.logits(prompt + [token])[-1])
    assert [b.n_past for b in beams] == [6, 6, 6, 3]
    with pytest.raises(ValueError, match="twice"):
        m.eval_sequences([beams[0], beams[0]], [1, 2])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        m.eval_sequences(beams[:1], [300])
    with pytest.raises(ValueError, match="one token id per context"):
        m.eval_sequences(beams[:2], [1])


@pytest.mark.parametrize("n_threads", [2, 3, 5])
def test_sequences_of_very_different_lengths_in_one_batch(model_dir, n_threads):
    # Attention's tasks (token, KV head, run of positions) are shared out by their cost: a token 600
    # positions deep (three runs a head) beside short ones moves where each thread's share begins and
    # ends, which must change no bit of any sequence's logits.
    path = quantized(model_dir, "q4_0", 1)
    with threads_warning(n_threads):
        m = Model(path, n_ctx=640, n_threads=n_threads)
    prompts = [LONG_PROMPT * 15, PROMPT[:2], LONG_PROMPT[:31], PROMPT]
    contexts = [m.context() for _ in prompts]
    for ctx, prompt in zip(contexts, prompts):
        ctx.eval(prompt)
    batched = m.eval_sequences(contexts, [7, 8, 9, 10])
    alone = Model(path, n_ctx=640, n_threads=1)
    for row, (prompt, token) in enumerate(zip(prompts, [7, 8, 9, 10])):
        np.testing.assert_array_equal(batched[row], alone.context().eval(prompt + [token]))


def test_truncate_and_re_evaluate(model_dir):
    path = quantized(model_dir, "q4_0", 1)
    m = Model(path)
    base = m.logits(PROMPT)
    ctx = m.context()
    ctx.eval(PROMPT)
    assert ctx.n_past == len(PROMPT)
    ctx.truncate(4)
    assert ctx.n_past == 4
    np.testing.assert_array_equal(ctx.eval_all(PROMPT[4:]), base[4:])
    ctx.truncate(0)
    np.testing.assert_array_equal(ctx.eval(PROMPT[:3]), base[2])
    with pytest.raises(ValueError):
        ctx.truncate(10)


def test_fork_is_independent(model_dir):
    path = tiny(model_dir, "s1-q8_0", weight_type="q8_0", seed=1, **SHAPES[1])
    m = Model(path)
    a = m.context()
    a.eval(PROMPT[:5])
    b = a.fork()
    la = a.eval([11])
    lb = b.eval([12])
    assert not np.array_equal(la, lb)
    assert a.n_past == b.n_past == 6
    np.testing.assert_array_equal(la, m.logits(PROMPT[:5] + [11])[-1])
    np.testing.assert_array_equal(lb, m.logits(PROMPT[:5] + [12])[-1])


def test_context_limits(model_dir):
    path = tiny(model_dir, "s1-q8_0", weight_type="q8_0", seed=1, **SHAPES[1])
    m = Model(path, n_ctx=8)
    assert m.n_ctx == 8
    with pytest.raises(ValueError, match=r"13 tokens .* context of 8"):
        m.logits(PROMPT)
    ctx = m.context()
    ctx.eval(PROMPT[:6])
    with pytest.raises(ValueError, match="context of 8"):
        ctx.eval(PROMPT[:3])
    assert ctx.n_past == 6  # the refused call changed nothing
    with pytest.raises(ValueError, match="outside the vocabulary"):
        ctx.eval([300])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        ctx.eval([-1])
    with pytest.raises(ValueError):
        ctx.eval([])
    assert Model(path).n_ctx == 256  # min(the file's context_length, 4096)


@pytest.mark.parametrize("bad,match", [
    (dict(n_heads=3), "multiple of head_count"),           # 64 / 3
    (dict(n_heads=4, n_kv_heads=3), "head_count_kv"),
])
def test_contradictory_hyper_parameters_are_refused(tmp_path, bad, match):
    from pyengine.gguf import GGUFReader, GGUFWriter

    good = write_tiny_llama(tmp_path / "good.gguf", weight_type="f32")
    # rewrite the file with one key changed
    src = GGUFReader(good)
    path = tmp_path / "bad.gguf"
    with GGUFWriter(path) as w:
        for key, value in src.metadata.items():
            if key == "llama.attention.head_count" and "n_heads" in bad:
                value = bad["n_heads"]
            if key == "llama.attention.head_count_kv" and "n_kv_heads" in bad:
                value = bad["n_kv_heads"]
            w.add(key, value, src.metadata_types[key][0] if isinstance(src.metadata_types[key], tuple)
                  else src.metadata_types[key],
                  src.metadata_types[key][1] if isinstance(src.metadata_types[key], tuple) else None)
        for name, info in src.tensors.items():
            w.add_tensor(name, np.asarray(info.data))
    with pytest.raises(GGUFError, match=match):
        Model(path)


def test_missing_and_misshapen_tensors_are_refused(tmp_path):
    from pyengine.gguf import GGUFReader, GGUFWriter

    good = write_tiny_llama(tmp_path / "good.gguf", weight_type="f32")
    src = GGUFReader(good)

    def rewrite(path, drop=(), replace=None):
        with GGUFWriter(path) as w:
            for key, value in src.metadata.items():
                t = src.metadata_types[key]
                w.add(key, value, t[0] if isinstance(t, tuple) else t, t[1] if isinstance(t, tuple) else None)
            for name, info in src.tensors.items():
                if name in drop:
                    continue
                data = np.asarray(info.data)
                if replace and name in replace:
                    data = replace[name]
                w.add_tensor(name, data)
        return path

    with pytest.raises(GGUFError, match="blk.1.ffn_up.weight is missing"):
        Model(rewrite(tmp_path / "a.gguf", drop={"blk.1.ffn_up.weight"}))
    with pytest.raises(GGUFError, match="blk.0.attn_k.weight"):
        Model(rewrite(tmp_path / "b.gguf", replace={"blk.0.attn_k.weight": np.zeros((16, 64), np.float32)}))
    with pytest.raises(GGUFError, match="block_count"):
        Model(rewrite(tmp_path / "c.gguf", drop={n for n in src.tensors if n.startswith("blk.1.")}))


def test_the_native_model_checks_every_size(model_dir):
    """_core checks what it is given itself, whatever the Python loader let through."""
    from pyengine import _core
    from pyengine.architectures import tensor_table
    from pyengine.gguf import GGUFReader

    path = tiny(model_dir, "s1-q8_0", weight_type="q8_0", seed=1, **SHAPES[1])
    m = Model(path)
    cfg = m.config.native()

    def config(**change):
        c = m.config.native()
        for k, v in change.items():
            setattr(c, k, v)
        return c

    with GGUFReader(path) as reader:
        table = tensor_table(reader)
    _core.Model(cfg, table)  # the table as the loader makes it
    empty = np.zeros(0, np.uint8)
    for name, entry, match in [
        ("token_embd.weight", (empty, 0, 2**56, 256), "do not fit in memory"),  # 2**66 bytes: wraps to 0
        ("token_embd.weight", (empty, 0, 1, 2**31), "bad shape"),
        ("token_embd.weight", (empty, 8, 0, 64), "bad shape"),
        ("output_norm.weight", (table["output_norm.weight"][0], 99, 1, 64), "unsupported"),
        ("blk.0.attn_q.weight", (table["blk.0.attn_q.weight"][0][:-1], 8, 64, 64), "bytes"),
    ]:
        with pytest.raises(ValueError, match=match):
            _core.Model(cfg, {**table, name: entry})
    for change, match in [({"n_heads": 2**16, "head_dim": 2**16}, "overflows"), ({"n_layers": 0}, "block_count"),
                          ({"n_kv_heads": 3}, "head_count_kv"), ({"n_rot": 3}, "rope"),
                          ({"rope_factors": [1.0] * 3}, "factors"), ({"rope_factors": [0.0] * 8}, "positive"),
                          ({"windows": [4]}, "one sliding window per layer"), ({"windows": [-1, 0]}, "negative"),
                          ({"rms_eps": 0.0}, "positive"), ({"attn_scale": -1.0}, "scale")]:
        with pytest.raises(ValueError, match=match):
            _core.Model(config(**change), table)
    for n_ctx in (0, -5, 2**61):
        with pytest.raises(ValueError, match="n_ctx"):
            _core.Context(m._core, n_ctx, 1)


def test_tensors_at_odd_addresses_are_refused(tmp_path):
    """general.alignment 1 is valid GGUF, but a float tensor at an odd offset cannot be read in place."""
    from pyengine.gguf import GGUFReader, GGUFWriter

    src = GGUFReader(write_tiny_llama(tmp_path / "good.gguf", weight_type="q8_0"))
    path = tmp_path / "packed.gguf"
    for pad in range(4):  # a key of 0..3 bytes shifts the data: one of them puts a float tensor off 4 bytes
        with GGUFWriter(path, alignment=1) as w:
            w.add("pad", "x" * pad)
            for key, value in src.metadata.items():
                t = src.metadata_types[key]
                w.add(key, value, t[0] if isinstance(t, tuple) else t, t[1] if isinstance(t, tuple) else None)
            for name, info in src.tensors.items():
                w.add_tensor(name, np.asarray(info.data), info.type, shape=info.shape)
        with GGUFReader(path) as packed:
            if any(t.offset % 4 for t in packed.tensors.values() if t.type.name == "F32"):
                break
    else:
        raise AssertionError("no padding misaligned a float tensor")
    with pytest.raises(GGUFError, match=r"packed\.gguf: tensor .* is not aligned to \d bytes in the file"):
        Model(path)


def test_a_kv_cache_that_cannot_fit_is_refused_up_front(model_dir):
    from pyengine.model import kv_cache_bytes

    path = tiny(model_dir, "s1-q8_0", weight_type="q8_0", seed=1, **SHAPES[1])
    m = Model(path, n_ctx=32)
    assert m.context()._ctx.kv_bytes == kv_cache_bytes(m.config, 32)
    with pytest.raises(ValueError, match=r"n_ctx 2000000000 needs a KV cache of .* GiB per sequence"):
        Model(path, n_ctx=2_000_000_000)
    with pytest.raises(ValueError, match="GiB of memory is available"):
        m.context(n_ctx=2_000_000_000)
