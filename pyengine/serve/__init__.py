"""`python -m pyengine serve`: an OpenAI-compatible HTTP server with continuous batching, and a chat
page. Needs the optional extra: pip install "pyengine[serve]" (Starlette and uvicorn).

    engine.py   the batch: concurrent generations sharing the model, prefix reuse
    api.py      the HTTP routes (OpenAI's API), request checking, streaming
    static/     the chat page served at /
"""

from __future__ import annotations

from ..speculative import DRAFT_MAX

__all__ = ["serve", "make_app"]


def _require() -> None:
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as e:
        raise ImportError(f"the server needs the 'serve' extra: pip install \"pyengine[serve]\" ({e.name} is missing)") from None


def make_app(model, parallel: int = 4, api_key: str | None = None, alias: str | None = None,
             cache_bytes: int = 1 << 30, prefill_chunk: int = 128, draft=None, draft_max: int = DRAFT_MAX):
    """The ASGI app for a loaded pyengine.Model, with its Engine (closed when the app shuts down).
    draft: None, "lookup" or a draft Model (speculative decoding of every sequence, up to draft_max
    tokens a step)."""
    _require()
    from .api import create_app
    from .engine import Engine

    engine = Engine(model, parallel=parallel, cache_bytes=cache_bytes, prefill_chunk=prefill_chunk, draft=draft,
                    draft_max=draft_max)
    app = create_app(model, engine, api_key=api_key, alias=alias)
    app.state.engine = engine
    return app


def serve(model, host: str = "127.0.0.1", port: int = 8080, ready=None, **options) -> None:
    """Serves a loaded pyengine.Model until Ctrl-C (or SIGTERM). ready(url) is called once the
    socket listens. options: make_app's."""
    _require()
    import signal
    import threading

    import uvicorn

    app = make_app(model, **options)
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False,
                            timeout_graceful_shutdown=2)
    server = uvicorn.Server(config)
    handle_exit = server.handle_exit

    def exit_gracefully(sig, frame) -> None:
        # Ctrl-C or SIGTERM: the engine ends every request now, running or waiting, with an error
        # their clients read (a 503, or an error event ending the stream); uvicorn's graceful
        # shutdown then finds them done instead of cutting them when its timeout runs out.
        app.state.engine.stop()
        handle_exit(sig, frame)

    server.handle_exit = exit_gracefully
    if threading.current_thread() is threading.main_thread():
        # uvicorn takes SIGTERM while it serves and sends it again once it has shut down: then the
        # default action ends the process as a service manager expects (python -m pyengine turns
        # SIGTERM into an exception for the other commands, which would surface inside uvicorn's loop)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if ready is not None:
        startup = server.startup

        async def announce(sockets=None):
            await startup(sockets)
            if server.started:
                bound = server.servers[0].sockets[0].getsockname() if server.servers else (host, port)
                ready(f"http://{bound[0] if ':' not in bound[0] else '[' + bound[0] + ']'}:{bound[1]}")

        server.startup = announce
    server.run()
