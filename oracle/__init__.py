"""forkspec's oracle: programs, images, backends, the checker and the CLI.

The public surface is `__all__`; everything under `oracle._internal` carries no stability promise.
"""
from types import ModuleType as _ModuleType

from .check import Divergence, Verdict, check
from .encoding import dumps, loads
from .errors import BackendError, ForkspecError, InvalidArgument, InvalidProgram
from .minimize import minimize
from .program import ElfSpec, Image, Program, Ref, Step

__version__ = "0.1.0"

__all__ = [
    "BackendError", "Divergence", "ElfSpec", "ForkspecError", "Image", "InvalidArgument", "InvalidProgram",
    "Program", "Ref", "Step", "Verdict", "check", "dumps", "loads", "minimize",
]

# The public surface is checked, not hoped for (Hypothesis's strategies/__init__.py does the same).
assert set(__all__) == {name for name, value in globals().items()
                        if not name.startswith("_") and not isinstance(value, _ModuleType)}, \
    "oracle.__all__ is out of date: list every public name, and only those"
