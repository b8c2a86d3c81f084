"""Imported first by the package. `python -m pyengine ...` imports the package (numpy, the native
core, ...) before the command starts: a Ctrl-C in that second ends the process with the commands'
one line and exit code (130), not a traceback through the imports. The command restores Python's
handler as it starts (__main__.main); an ordinary `import pyengine` is left alone."""

import os
import signal
import sys


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


if _starting_the_commands():
    signal.signal(signal.SIGINT, _interrupted_while_starting)
