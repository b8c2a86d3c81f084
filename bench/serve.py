"""The server's figures: aggregate generation throughput with 1, 2, 4, 8 concurrent clients, and the
time to first token of a conversation's 5th turn (its prefix reused) against a cold start.

    python bench/serve.py [-m MODEL] [--clients 1,2,4,8] [--tokens 128] [--rounds 3] [--out bench/results/serve]

Each client streams /v1/completions requests (its own prompt, 128 tokens, the end-of-generation tokens
banned so every answer has the same length), back to back; throughput = tokens received by all
clients / wall time from the first request to the last answer. The clients are coroutines on one
asyncio loop in this process, each with its own connection, made before the clock starts, and
read their streams with as little work as the figures allow (they share the two cores with the
server). The sweep over client counts is run --rounds times, one count after the other in each round,
and each count's median is reported (this machine's speed moves by 10-20% from minute to minute),
with each round's ratio to the one-client run of that same round. TTFT: a 5-turn chat (64-token
answers); the 5th turn's request timed to its first streamed token, against the same request with a
system message no earlier request shares (nothing to reuse: a cold start).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from serve_util import running_server  # noqa: E402

PROMPTS = ["The history of the Roman Empire", "A guide to growing tomatoes", "How a compiler works",
           "The life of honeybees", "Why the sky is blue", "A short story about a robot", "The rules of chess",
           "How to bake sourdough bread"]


def _parse(line: str, state: dict, start: float) -> None:
    """One line of a streamed answer: notes when the first text came and the usage count."""
    if not line.startswith("data: ") or line == "data: [DONE]":
        return
    chunk = json.loads(line[6:])
    if chunk.get("usage"):
        state["n"] = chunk["usage"]["completion_tokens"]
    if state["first"] is None and chunk["choices"] and (chunk["choices"][0].get("text")
                                                        or chunk["choices"][0].get("delta", {}).get("content")):
        state["first"] = time.perf_counter() - start


def _body(body: dict) -> dict:
    return {**body, "stream": True, "stream_options": {"include_usage": True}}


def stream(http: httpx.Client, url: str, path: str, body: dict) -> tuple[float, float, int]:
    """(seconds to the first token, seconds to the end, tokens) of one streamed request."""
    start = time.perf_counter()
    state = {"first": None, "n": 0}
    with http.stream("POST", url + path, json=_body(body)) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            _parse(line, state, start)
    return state["first"] or 0.0, time.perf_counter() - start, state["n"]


class _Connection:
    """A client's own HTTP/1.1 keep-alive connection, read with asyncio's streams: a load generator
    that costs this machine's two cores, which it shares with the server, as little as it can. It
    parses what the figures need: the first chunk of text (its time) and the usage chunk (the tokens
    received); the other events are split off and skipped."""

    def __init__(self, url: str) -> None:
        self.host, _, port = url.split("://", 1)[1].rstrip("/").partition(":")
        self.port = int(port or 80)
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()

    async def stream(self, path: str, body: dict) -> tuple[float, float, int]:
        """(seconds to the first text, seconds to the end, tokens) of one streamed request."""
        payload = json.dumps(_body(body)).encode()
        start = time.perf_counter()
        self.writer.write(f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: application/json\r\n"
                          f"Content-Length: {len(payload)}\r\n\r\n".encode() + payload)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = head.split(b" ", 2)[1]
        if status != b"200" or b"chunked" not in head.lower():
            raise RuntimeError(f"{path}: {head.decode(errors='replace').splitlines()[0]}")
        state = {"first": None, "n": 0}
        pending = b""
        while True:
            size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
            data = await self.reader.readexactly(size + 2)  # the chunk and its CRLF
            if size == 0:
                break
            pending += data[:-2]
            *events, pending = pending.split(b"\n\n")
            for event in events:
                if state["first"] is None or b'"usage": {' in event or b'"usage":{' in event:
                    _parse(event.decode(), state, start)
        return state["first"] or 0.0, time.perf_counter() - start, state["n"]


def throughput(url: str, clients: int, tokens: int, requests_each: int, eog: list[int]) -> dict:
    """The clients are coroutines on one asyncio event loop, each with its own connection (made before
    the clock starts; _Connection): they share this machine's two cores with the server. With 8
    clients they took ~45 us of CPU a token, 0.05 of a core (httpx's AsyncClient, which this used
    before: ~140-165 us, 0.13-0.15 of a core); alternating the two clients against one server, both 1
    and 8 clients got ~20% more tokens/s with this one, their ratio alike (3.71x against 3.67x)."""
    bias = {str(t): -100 for t in eog}

    async def client(conn: _Connection, i: int) -> list[tuple[float, float, int]]:
        out = []
        for k in range(requests_each):
            body = {"prompt": PROMPTS[i % len(PROMPTS)] + f" (part {k + 1})", "max_tokens": tokens, "seed": i,
                    "logit_bias": bias}
            out.append(await conn.stream("/v1/completions", body))
        return out

    async def run() -> tuple[list, float]:
        conns = [_Connection(url) for _ in range(clients)]
        for conn in conns:
            await conn.open()
        try:
            start = time.perf_counter()
            per_client = await asyncio.gather(*(client(conn, i) for i, conn in enumerate(conns)))
            return [r for rs in per_client for r in rs], time.perf_counter() - start
        finally:
            for conn in conns:
                await conn.close()

    results, wall = asyncio.run(run())
    total = sum(n for _, _, n in results)
    return {"clients": clients, "requests": len(results), "tokens": total, "seconds": wall,
            "tok_s": total / wall, "ttft_median_s": statistics.median(f for f, _, _ in results)}


STEPS = 16  # a run of the forward-pass figures: this many steps, the best of 5 runs


def _tokens_per_second(widths: list[int], step, undo) -> dict:
    """For each n of widths, n / the time of one step(n, k) (k = 0 .. STEPS - 1: one token for each of n
    sequences), best of 5 runs; undo(n) takes a run's tokens back out of the caches."""
    out = {}
    for n in widths:
        best = float("inf")
        for _ in range(5):
            start = time.perf_counter()
            for k in range(STEPS):
                step(n, k)
            best = min(best, (time.perf_counter() - start) / STEPS)
            undo(n)
        out[n] = n / best
    return out


def _bound_prompt(i: int) -> str:
    return PROMPTS[i % len(PROMPTS)] + " " + "and so on " * 12


def forward_bound(model_path: str, threads: int | None, widths: list[int]) -> tuple[dict, int]:
    """Tokens/s of the batched forward pass alone (Model.eval_sequences, no server, no sampling) for
    each number of sequences: the ceiling the server's aggregate throughput works under; and the
    threads it ran on."""
    import pyengine

    model = pyengine.Model(model_path, n_ctx=512, n_threads=threads)
    contexts = [model.context() for _ in range(max(widths))]
    for i, ctx in enumerate(contexts):
        ctx.eval(model.tokenize(_bound_prompt(i)))

    def step(n: int, k: int) -> None:
        model.eval_sequences(contexts[:n], [100] * n)

    def undo(n: int) -> None:
        for ctx in contexts[:n]:
            ctx.truncate(ctx.n_past - STEPS)

    return _tokens_per_second(widths, step, undo), model.n_threads


_quiet_log = None  # llamacpp_bound's log callback: ctypes calls it after the function returns


def _llamacpp_version() -> str | None:
    try:
        import llama_cpp
    except ImportError:
        return None
    return llama_cpp.__version__


def llamacpp_bound(model_path: str, threads: int, widths: list[int]) -> dict | None:
    """forward_bound's figures for llama.cpp (llama-cpp-python's llama_decode, as llama-server batches
    its slots): each step one batch of n tokens, one per sequence, every sequence its own KV stream
    (F16) and its own logits, after the same prompts; best of 5 runs of STEPS steps. None without
    llama-cpp-python (a dev-only tool)."""
    try:
        import llama_cpp as L
    except ImportError:
        return None
    import pyengine

    tokenizer = pyengine.Tokenizer.from_gguf(model_path)
    n_seq = max(widths)
    L.llama_backend_init()
    global _quiet_log
    _quiet_log = L.llama_log_callback(lambda level, text, data: None)
    L.llama_log_set(_quiet_log, None)  # its load log: quiet
    model = L.llama_model_load_from_file(model_path.encode(), L.llama_model_default_params())
    params = L.llama_context_default_params()
    params.n_ctx, params.n_batch, params.n_ubatch, params.n_seq_max = 512 * n_seq, 512, 512, n_seq
    params.n_threads = params.n_threads_batch = threads
    params.type_k = params.type_v = L.GGML_TYPE_F16
    params.kv_unified = False
    ctx = L.llama_init_from_model(model, params)
    memory = L.llama_get_memory(ctx)
    batch = L.llama_batch_init(512, 0, n_seq)

    def decode(items: list[tuple[int, int, int]]) -> None:  # (token, position, sequence)
        batch.n_tokens = len(items)
        for i, (token, pos, seq) in enumerate(items):
            batch.token[i], batch.pos[i], batch.n_seq_id[i], batch.logits[i] = token, pos, 1, 1
            batch.seq_id[i][0] = seq
        if L.llama_decode(ctx, batch) != 0:
            raise RuntimeError("llama_decode failed")

    try:
        lengths = []
        for s in range(n_seq):
            ids = tokenizer.encode(_bound_prompt(s), add_bos=tokenizer.add_bos)
            decode([(t, p, s) for p, t in enumerate(ids)])
            lengths.append(len(ids))

        def step(n: int, k: int) -> None:
            decode([(100, lengths[s] + k, s) for s in range(n)])

        def undo(n: int) -> None:
            for s in range(n):
                L.llama_memory_seq_rm(memory, s, lengths[s], -1)

        return _tokens_per_second(widths, step, undo)
    finally:
        L.llama_batch_free(batch)
        L.llama_free(ctx)
        L.llama_model_free(model)


def conversation_ttft(url: str, turns: int = 5, answer_tokens: int = 64) -> dict:
    questions = ["Tell me about the Moon.", "How far away is it?", "Who walked on it first?",
                 "What did they bring back?", "Will people go back there?"][:turns]
    system = "You are a knowledgeable assistant. Answer in a few sentences."
    messages = [{"role": "system", "content": system}]
    with httpx.Client(timeout=3600) as http:
        warm = None
        for q in questions:
            messages.append({"role": "user", "content": q})
            body = {"messages": messages, "max_tokens": answer_tokens, "temperature": 0}
            warm = stream(http, url, "/v1/chat/completions", body)
            r = http.post(url + "/v1/chat/completions", json=body).json()  # the reply, to continue from
            messages.append({"role": "assistant", "content": r["choices"][0]["message"]["content"]})
            usage = r["usage"]
        messages.pop()
        cold_messages = [{"role": "system", "content": f"[{time.time_ns()}] " + system}] + messages[1:]
        cold = stream(http, url, "/v1/chat/completions",
                      {"messages": cold_messages, "max_tokens": answer_tokens, "temperature": 0})
    return {"turn": turns, "prompt_tokens": usage["prompt_tokens"],
            "cached_tokens": usage["prompt_tokens_details"]["cached_tokens"],
            "ttft_reused_s": warm[0], "ttft_cold_s": cold[0], "ratio": warm[0] / cold[0]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-m", "--model", default=None)
    ap.add_argument("--clients", default="1,2,4,8")
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--requests", type=int, default=2, help="requests per client")
    ap.add_argument("--rounds", type=int, default=3, help="sweeps over the client counts (the median is reported)")
    ap.add_argument("-t", "--threads", type=int, default=None)
    ap.add_argument("--out", default=None, help="write OUT.md and OUT.json")
    args = ap.parse_args()
    clients = [int(c) for c in args.clients.split(",")]
    extra = (["-m", args.model] if args.model else []) + (["-t", str(args.threads)] if args.threads else [])
    import pyengine
    from pyengine.fetch import default_model_path

    model_path = args.model or str(default_model_path())
    eog = sorted(pyengine.Tokenizer.from_gguf(model_path).eog_ids)
    bound, threads = forward_bound(model_path, args.threads, clients)
    print("forward pass alone: " + ", ".join(f"{n} sequences {v:.0f} tok/s ({v / bound[clients[0]]:.2f}x)"
                                             for n, v in bound.items()), flush=True)
    theirs = llamacpp_bound(model_path, threads, clients)
    if theirs:
        print("llama.cpp's: " + ", ".join(f"{n} sequences {v:.0f} tok/s ({v / theirs[clients[0]]:.2f}x)"
                                          for n, v in theirs.items()), flush=True)
    with running_server(*extra, "--parallel", str(max(clients)), "-c", "2048") as url:
        httpx.post(url + "/v1/completions", json={"prompt": "warm up", "max_tokens": 8}, timeout=3600)
        runs: dict[int, list[dict]] = {c: [] for c in clients}
        for _ in range(args.rounds):
            for c in clients:
                r = throughput(url, c, args.tokens, args.requests, eog)
                runs[c].append(r)
                print(f"{c} clients: {r['tok_s']:.1f} tok/s aggregate ({r['tokens']} tokens in {r['seconds']:.1f} s), "
                      f"median TTFT {r['ttft_median_s'] * 1000:.0f} ms", flush=True)
        rows = []
        for c in clients:  # the median run of each count (by throughput), with every run's figure
            ordered = sorted(runs[c], key=lambda r: r["tok_s"])
            rows.append({**ordered[(len(ordered) - 1) // 2], "tok_s_runs": [r["tok_s"] for r in runs[c]]})
        print("medians: " + ", ".join(f"{r['clients']} clients {r['tok_s']:.1f} tok/s ({r['tok_s'] / rows[0]['tok_s']:.2f}x)"
                                      for r in rows), flush=True)
        for r in rows:  # each round against the first count's run of the same round
            r["vs_first_same_round"] = [a["tok_s"] / b["tok_s"] for a, b in zip(runs[r["clients"]], runs[clients[0]])]
        ttft = conversation_ttft(url)
        print(f"turn {ttft['turn']}: TTFT {ttft['ttft_reused_s'] * 1000:.0f} ms with {ttft['cached_tokens']} of "
              f"{ttft['prompt_tokens']} prompt tokens reused, {ttft['ttft_cold_s'] * 1000:.0f} ms cold: "
              f"{ttft['ratio']:.2f}x", flush=True)
    if args.out:
        theirs_version = _llamacpp_version()
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                             text=True).stdout.strip()
        meta = {"date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "cpu": platform.processor() or platform.machine(),
                "cpus": os.cpu_count(), "isa": pyengine.isa(), "model": os.path.basename(model_path), "repo": rev,
                "command": "python " + " ".join(sys.argv)}
        Path(args.out + ".json").write_text(json.dumps({"meta": meta, "throughput": rows, "ttft": ttft,
                                                        "forward_tok_s": bound, "threads": threads,
                                                        "llamacpp_forward_tok_s": theirs}, indent=1))
        one = rows[0]["tok_s"]
        lines = ["# pyengine serve: continuous batching and prefix reuse", "", f"`{meta['command']}`", "",
                 f"{meta['date']}; {meta['cpus']} CPUs, isa {meta['isa']}; {meta['model']}; repo {rev}.", "",
                 "| clients | tokens | seconds | aggregate tok/s | vs 1 client | every round, tok/s "
                 "| every round vs its 1 client | median TTFT ms | forward pass alone, tok/s | vs 1 sequence |"
                 + (" llama.cpp's, tok/s | vs 1 sequence |" if theirs else ""),
                 "|---:|---:|---:|---:|---:|---|---|---:|---:|---:|" + ("---:|---:|" if theirs else "")]
        for r in rows:
            f = bound[r["clients"]]
            every = ", ".join(f"{v:.0f}" for v in r["tok_s_runs"])
            paired = ", ".join(f"{v:.2f}x" for v in r["vs_first_same_round"])
            lines.append(f"| {r['clients']} | {r['tokens']} | {r['seconds']:.1f} | {r['tok_s']:.1f} | "
                         f"{r['tok_s'] / one:.2f}x | {every} | {paired} | {r['ttft_median_s'] * 1000:.0f} | {f:.0f} | "
                         f"{f / bound[clients[0]]:.2f}x |"
                         + (f" {theirs[r['clients']]:.0f} | {theirs[r['clients']] / theirs[clients[0]]:.2f}x |"
                            if theirs else ""))
        lines += ["", f"Each row: the median of {args.rounds} rounds (the rounds sweep the client counts in turn); "
                      "every round's figure is also given against the one-client run of the same round, seconds "
                      "before it. "
                      f"The forward pass alone: Model.eval_sequences with that many sequences, {STEPS} steps, best of 5, "
                      "in the benchmark's process before the server starts (the ceiling of the server's figure)."
                      + (f" llama.cpp's: the same steps with llama_decode (llama-cpp-python {theirs_version}, "
                         f"{threads} threads, F16 cache, a KV stream per sequence), as llama-server batches its slots."
                         if theirs else "")]
        lines += ["", f"Turn {ttft['turn']} of a conversation: time to first token {ttft['ttft_reused_s'] * 1000:.0f} ms "
                      f"({ttft['cached_tokens']} of {ttft['prompt_tokens']} prompt tokens reused) vs "
                      f"{ttft['ttft_cold_s'] * 1000:.0f} ms cold: {ttft['ratio']:.2f}x.", ""]
        Path(args.out + ".md").write_text("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
