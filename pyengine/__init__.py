"""pyengine: a CPU inference engine for small LLMs stored in GGUF files."""

from __future__ import annotations

from . import _startup  # noqa: F401  (first: Ctrl-C while `python -m pyengine` starts)
from . import _core
from .generate import Completion
from .gguf import GGUFError
from .model import Context, Model, OversubscriptionWarning
from .quants import dequantize, matmul, quantize
from .sampling import SamplingParams
from .tokenizer import Tokenizer

__all__ = ["Model", "Context", "Completion", "SamplingParams", "Tokenizer", "GGUFError", "OversubscriptionWarning", "quantize",
           "dequantize", "matmul", "isa", "available_isas", "default_n_threads"]
__version__ = "0.1.0"


_core.isa()  # an unusable PYENGINE_ISA is refused at import, not at the first matmul


def isa() -> str:
    """The instruction set whose kernels run: 'avx512', 'avx2', 'neon' or 'scalar'.

    Chosen at import from CPUID; the environment variable PYENGINE_ISA forces another
    (an ISA this CPU lacks is refused with an error)."""
    return _core.isa()


def available_isas() -> list[str]:
    """The kernel paths this CPU can run, worst first."""
    return list(_core.available_isas())


def default_n_threads() -> int:
    """Physical performance cores available to this process: the default thread count."""
    return _core.default_n_threads()
