"""forkspec's exceptions: one root, messages a user can act on (errors are values in kernels)."""
from __future__ import annotations


class ForkspecError(Exception):
    """Root of every error forkspec raises on purpose."""


class InvalidProgram(ForkspecError, ValueError):
    """A program (or its text) is not well formed; the message names the line, step and value."""


class InvalidArgument(ForkspecError, ValueError):
    """A command-line or API argument is out of range; the message says what was expected."""


class BackendError(ForkspecError):
    """A backend could not run at all (not a divergence): missing permissions, no ptrace, ..."""
