"""Several contexts over one model, driven from several Python threads at once, give exactly the
results of sequential runs (weights shared read-only, one KV cache each); loading and freeing a
model repeatedly does not leak."""

import gc
import threading

import numpy as np
import pytest

import pyengine

from tiny_models import write_tiny_llama


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return write_tiny_llama(tmp_path_factory.mktemp("conc") / "m.gguf", weight_type="q4_0", embd_type="q8_0",
                            n_layers=2, seed=11)


def run_sequence(model, prompt, steps):
    ctx = model.context()
    out = [ctx.eval(prompt)]
    for i in range(steps):
        out.append(ctx.eval([int(np.argmax(out[-1])) % model.n_vocab]))
    return np.stack(out)


def test_threads_sharing_one_model_match_sequential_runs(model_path):
    m = pyengine.Model(model_path, n_threads=2)
    prompts = [[i, i + 1, (7 * i) % 300, 3] for i in range(6)]
    expected = [run_sequence(m, p, 12) for p in prompts]
    results = [None] * len(prompts)
    errors = []

    def work(i):
        try:
            for _ in range(3):
                results[i] = run_sequence(m, prompts[i], 12)
        except Exception as e:  # surfaced below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for got, want in zip(results, expected):
        np.testing.assert_array_equal(got, want)


def rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


@pytest.mark.skipif(not hasattr(__import__("os"), "sched_getaffinity"), reason="needs /proc (Linux)")
@pytest.mark.skipif("libasan" in __import__("os").environ.get("LD_PRELOAD", ""),
                    reason="AddressSanitizer holds freed memory in quarantine: the RSS says nothing of leaks")
def test_load_and_free_fifty_times_keeps_rss_flat(model_path):
    def cycle():
        m = pyengine.Model(model_path, n_ctx=64)
        m.logits([1, 2, 3])
        del m
        gc.collect()

    for _ in range(5):  # warm up allocator pools and caches
        cycle()
    before = rss_bytes()
    for _ in range(50):
        cycle()
    growth = rss_bytes() - before
    assert growth < 8 * 2**20, f"RSS grew by {growth / 2**20:.1f} MiB over 50 loads"


@pytest.mark.skipif(not hasattr(__import__("os"), "sched_getaffinity"), reason="needs /proc (Linux)")
def test_contexts_take_kv_memory_as_positions_are_written(model_path):
    """A sequence's KV cache spans its whole context, but its pages are the OS's zero pages until
    written: making a context costs no time (a server makes one per concurrent request), and a few
    tokens in a long context take a few pages, not the cache."""
    from pyengine.model import kv_cache_bytes

    n_ctx = 1 << 18
    m = pyengine.Model(model_path, n_ctx=n_ctx)
    full = kv_cache_bytes(m.config, n_ctx, m.kv_type)
    assert full >= 64 * 2**20
    want = pyengine.Model(model_path, n_ctx=64).context().eval([1, 2, 3])
    before = rss_bytes()
    contexts = [m.context() for _ in range(8)]
    for c in contexts:
        np.testing.assert_array_equal(c.eval([1, 2, 3]), want)
    growth = rss_bytes() - before
    assert growth < full // 4, f"8 contexts of 3 tokens took {growth / 2**20:.1f} MiB (a whole cache: {full / 2**20:.0f} MiB)"


def mapped_bytes_of(path) -> int:
    """Resident bytes of this process's mappings of the file at path (/proc/self/smaps)."""
    name, total, ours = str(path), 0, False
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()
            if head and "-" in head[0] and not head[0].endswith(":"):  # a mapping's first line
                ours = line.rstrip("\n").endswith(name)
            elif ours and head[0] == "Rss:":
                total += int(head[1]) * 1024
    return total


@pytest.mark.skipif(not __import__("os").path.exists("/proc/self/smaps"), reason="needs /proc (Linux)")
def test_packed_weights_leave_their_mapped_pages(tmp_path):
    """After packing, a model holds its weights once: the mapped pages of every packed matrix are
    dropped, a tied output matrix's too (its embedding lookups map in again only the rows they read)."""
    path = write_tiny_llama(tmp_path / "tied.gguf", weight_type="q4_0", embd_type="q8_0", n_layers=2,
                            n_embd=256, n_ff=512, n_vocab=4096, tied=True, seed=3)
    size = path.stat().st_size
    m = pyengine.Model(path, n_ctx=64)
    if m._core.packed_bytes == 0:
        pytest.skip("this kernel path does not pack weights")
    assert m._core.packed_bytes > 0.9 * size
    assert mapped_bytes_of(path) < 0.1 * size, (mapped_bytes_of(path), size)
    m.logits([1, 2, 3])  # reads the embeddings again from the file: the same as without packing
    assert mapped_bytes_of(path) < 0.2 * size


@pytest.mark.isa_independent  # the refusal is the bindings'; on the scalar path the prompts took ~2 minutes
def test_a_context_runs_one_call_at_a_time():
    """A second call on a context that is evaluating (from another thread: the GIL is released
    meanwhile) is refused at every entry point, instead of writing the same cache and buffers: the
    first call's results are untouched."""
    m = pyengine.Model(n_ctx=1024, n_threads=2)
    ids = np.random.default_rng(5).integers(0, m.n_vocab, 400).tolist()
    want = m.context().eval_all(ids)
    ctx = m.context()
    calls = {"eval": lambda: ctx.eval([1]), "truncate": lambda: ctx.truncate(0),
             "eval_batch": lambda: m.eval_batch([ctx], [[1]]), "fork": ctx.fork}
    for name, call in calls.items():
        refused = []
        for _ in range(3):  # a worker that ends before it is seen holding the context: once more
            ctx.truncate(0)
            got = []
            worker = threading.Thread(target=lambda: got.append(ctx.eval_all(ids)))
            worker.start()
            while worker.is_alive():
                try:
                    ctx.fork()  # reads the cache, changes nothing: refused once the worker holds it
                except RuntimeError:
                    try:
                        call()
                    except RuntimeError as e:
                        refused.append(str(e))
                    break
            worker.join()
            np.testing.assert_array_equal(got[0], want)
            if refused:
                break
        assert refused and "in use by another call" in refused[0], name
