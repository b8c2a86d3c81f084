"""`python -m pyengine serve` in a subprocess on a free port, for the server's tests and benchmarks."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import tempfile
import threading
from typing import Iterator

STARTUP_DEADLINE = 300  # seconds: loading the model and binding; only a broken server reaches it


class ServerURL(str):
    """The server's URL; .pid: its process id; .proc: the process; .log: the lines of its stderr so far."""

    pid: int
    proc: subprocess.Popen
    log: list[str]


@contextlib.contextmanager
def running_server(*args: str, env: dict | None = None) -> Iterator[ServerURL]:
    """Starts the server with args (port 0: a free one), waits for the line that says where it
    listens, yields its URL ("http://127.0.0.1:PORT"), and stops it (SIGINT, then SIGKILL). Its
    stderr is kept; an early exit raises RuntimeError with it."""
    # Run from outside the repository, as test_cli.py does: from its root, `python -m pyengine` would
    # import the source tree instead of the installed package.
    proc = subprocess.Popen([sys.executable, "-m", "pyengine", "serve", "--port", "0", *args],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})}, cwd=tempfile.gettempdir())
    lines: list[str] = []
    found = threading.Event()
    url: list[str] = []

    def read() -> None:
        for line in proc.stderr:
            lines.append(line)
            m = re.search(r" on (http://\S+) ", line)
            if m and not url:
                url.append(m.group(1))
                found.set()
        found.set()  # the process ended

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        found.wait(STARTUP_DEADLINE)
        if not url:
            state = f"exited with status {proc.poll()}" if proc.poll() is not None else "is not listening"
            raise RuntimeError(f"the server {state}; stderr:\n" + "".join(lines[-30:]))
        served = ServerURL(url[0])
        served.pid = proc.pid
        served.proc = proc
        served.log = lines
        yield served
    finally:
        if proc.poll() is None:
            proc.send_signal(2)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        reader.join(30)
        proc.stderr.close()
