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


if sys.argv[:1] == ["-m"]:  # runpy sets argv[0] to the module's path only once the package is imported
    signal.signal(signal.SIGINT, _interrupted_while_starting)
