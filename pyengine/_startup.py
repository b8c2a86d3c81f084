"""Imported first by the package. `python -m pyengine ...` imports the package (numpy, the native
core, ...) before the command starts: a Ctrl-C in that second ends the process with the commands'
one line and exit code (130), not a traceback through the imports. The command restores Python's
handler as it starts (__main__.main); an ordinary `import pyengine` is left alone.

caused_by_interrupt() is what the commands use to know a Ctrl-C when Python has wrapped it;
Terminated is SIGTERM's exception in them, and ignore_late_signals() what a command calls once its
output is in place."""

import os
import signal
import sys
import threading


class Terminated(SystemExit):
    """A SIGTERM (kill, timeout, a service manager) in a command: it ends with exit code 128 + 15,
    after what it was writing is removed, as after a Ctrl-C (__main__ raises it)."""


def ignore_late_signals() -> None:
    """Ctrl-C and SIGTERM ignored from here on: the command is over (its output whole and in place),
    and one that lands now changes nothing. One that lands while this runs raises as any other. Only
    in `python -m pyengine` itself: a program that calls a command's function keeps its handlers."""
    command = getattr(sys.modules.get("__main__"), "__spec__", None)
    if getattr(command, "name", None) != "pyengine.__main__" or threading.current_thread() is not threading.main_thread():
        return
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, signal.SIG_IGN)


def _interrupted_while_starting(signum, frame):
    sys.stderr.write("pyengine: interrupted\n")
    sys.stderr.flush()
    os._exit(130)


def _starting_the_commands() -> bool:
    """Whether this is `python -m pyengine` importing the package (runpy sets argv[0] to the module's
    path only once the package is imported), not `python -m pyengine.something` or a program."""
    if sys.argv[:1] != ["-m"]:
        return False
    command_line = getattr(sys, "orig_argv", None)  # Python 3.10+
    return command_line is None or any(a == "-m" and b == "pyengine" for a, b in zip(command_line, command_line[1:]))


def caused_by_interrupt(error: BaseException) -> bool:
    """Whether a KeyboardInterrupt is in error's chain of causes: Python wraps the one that lands in
    some places (a class body's __set_name__, while a lazily imported module builds a dataclass,
    raises RuntimeError from it)."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, KeyboardInterrupt):
            return True
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return False


if _starting_the_commands():
    signal.signal(signal.SIGINT, _interrupted_while_starting)
