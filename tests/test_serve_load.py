"""The server under load: 32 clients at once, streaming and not, some hanging up mid-answer, for
PYENGINE_LOAD_SECONDS (20 by default; the issue's 10 minutes is PYENGINE_LOAD_SECONDS=600). The server
must keep answering, every answer read to its end must be exactly the one the same request gets
alone (nothing cut, nothing mixed with another's: the determinism promise makes this checkable), and
its memory must stay bounded."""

from __future__ import annotations

import json
import os
import random
import socket
import threading
import time

import pytest

from serve_util import running_server

httpx = pytest.importorskip("httpx")

SECONDS = float(os.environ.get("PYENGINE_LOAD_SECONDS", "20"))
CLIENTS = 32
DEADLINE = 600

REQUESTS = [
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "What is the capital of Italy?"}],
                              "max_tokens": 24, "temperature": 0}),
    ("/v1/chat/completions", {"messages": [{"role": "system", "content": "Answer in one word."},
                                           {"role": "user", "content": "Name a colour."}],
                              "max_tokens": 16, "seed": 4, "temperature": 1.0}),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "Write a haiku about the sea."}],
                              "max_tokens": 40, "seed": 9, "top_k": 20, "repeat_penalty": 1.2}),
    ("/v1/completions", {"prompt": "The three laws of motion are", "max_tokens": 32, "temperature": 0,
                         "stop": ["\n\n"]}),
    ("/v1/completions", {"prompt": "import os\nimport sys\n", "max_tokens": 20, "seed": 1, "n": 2}),
    ("/v1/completions", {"prompt": "Once upon a time, in a land far away,", "max_tokens": 48, "seed": 77,
                         "frequency_penalty": 0.5, "presence_penalty": 0.3}),
]


def answer(path: str, response: dict) -> list:
    key = "message" if path.endswith("chat/completions") else None
    return [((c["message"]["content"] if key else c["text"]), c["finish_reason"]) for c in response["choices"]]


def streamed(path: str, http: httpx.Client, url: str, body: dict, hang_up_after: int | None) -> list | None:
    """The choices' (text, finish_reason) read from a stream; None when it hung up on purpose."""
    texts, finish, chunks = {}, {}, 0
    with http.stream("POST", url + path, json={**body, "stream": True}) as r:
        assert r.status_code == 200, r.read()
        for line in r.iter_lines():
            if not line.startswith("data: "):
                continue
            data = line[6:]
            if data == "[DONE]":
                break
            chunk = json.loads(data)
            assert "error" not in chunk, chunk
            for c in chunk["choices"]:
                piece = c["delta"].get("content") if "delta" in c else c["text"]
                texts[c["index"]] = texts.get(c["index"], "") + (piece or "")
                if c["finish_reason"] is not None:
                    finish[c["index"]] = c["finish_reason"]
            chunks += 1
            if hang_up_after is not None and chunks >= hang_up_after:
                return None
    return [(texts.get(i, ""), finish[i]) for i in sorted(finish)]


def hang_up(url: str, path: str, body: dict) -> None:
    """Sends a request and closes the connection without reading the answer."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    data = json.dumps(body).encode()
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
        time.sleep(random.random() * 0.2)


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads the server's memory from /proc")
def test_the_server_under_load_keeps_answering_exactly():
    with running_server("-c", "512", "--parallel", "8", "-t", "2", "--cache-ram", "32") as url:
        with httpx.Client(timeout=DEADLINE) as http:
            expected = [answer(p, http.post(url + p, json=b).json()) for p, b in REQUESTS]
        baseline = rss_bytes(url.pid)
        stop_at = time.monotonic() + SECONDS
        errors: list[str] = []
        done = [0] * CLIENTS
        hung_up = [0] * CLIENTS
        peak = [baseline]

        def client(i: int) -> None:
            rng = random.Random(i)
            with httpx.Client(timeout=DEADLINE) as http:
                while (time.monotonic() < stop_at or not done[i]) and not errors:
                    k = rng.randrange(len(REQUESTS))
                    path, body = REQUESTS[k]
                    try:
                        roll = rng.random()
                        if roll < 0.15:
                            hang_up(url, path, body)
                            hung_up[i] += 1
                            continue
                        if roll < 0.6:
                            got = streamed(path, http, url, body, rng.randrange(1, 6) if roll < 0.3 else None)
                            if got is None:
                                hung_up[i] += 1
                                continue
                        else:
                            r = http.post(url + path, json=body)
                            assert r.status_code == 200, r.text
                            got = answer(path, r.json())
                        assert got == expected[k], (k, got, expected[k])
                        done[i] += 1
                    except Exception as e:  # noqa: BLE001  (reported below, with the others)
                        errors.append(f"client {i}: {type(e).__name__}: {e}")

        def monitor() -> None:
            with httpx.Client(timeout=DEADLINE) as http:
                while time.monotonic() < stop_at and not errors:
                    if http.get(url + "/health").json()["status"] != "ok":
                        errors.append("/health is not ok")
                    peak[0] = max(peak[0], rss_bytes(url.pid))
                    time.sleep(0.25)

        threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
        threads.append(threading.Thread(target=monitor))
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, "\n".join(errors[:5])
        with httpx.Client(timeout=DEADLINE) as http:
            deadline = time.monotonic() + DEADLINE
            while (health := http.get(url + "/health").json())["processing"] and time.monotonic() < deadline:
                time.sleep(0.05)
            assert health["processing"] == 0 and health["waiting"] == 0
            assert answer(*REQUESTS[0][:1], http.post(url + REQUESTS[0][0], json=REQUESTS[0][1]).json()) == expected[0]
        assert sum(done) >= CLIENTS and sum(hung_up) > 0
        # at most 8 live sequences and 32 MiB of idle ones: KV caches of 512 positions are ~12 MB each
        assert health["sequences"] <= 8 + 2
        assert peak[0] - baseline < 400 << 20, f"the server grew by {(peak[0] - baseline) >> 20} MiB"
        print(f"\n{sum(done)} answers checked, {sum(hung_up)} hang-ups in {SECONDS:.0f} s; "
              f"RSS {baseline >> 20} -> peak {peak[0] >> 20} MiB; {health}")
