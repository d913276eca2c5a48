"""Helpers that work on concrete values and on Z3 terms alike.

The model's transitions are written once against these helpers; the oracle runs them on Python
ints and bools, the proofs on Z3 bit-vectors and booleans (DESIGN.md "Proofs"). Concrete values
stay plain Python (no Z3 objects are built on the concrete path, which keeps the oracle fast).

Conventions: machine words are 64-bit unsigned. Concrete words are Python ints in [0, 2**64);
symbolic words are `z3.BitVecRef` of width 64. Comparisons of words are unsigned.
"""
from __future__ import annotations

from typing import Any

import z3

WORD = 64
MASK = (1 << WORD) - 1


def is_sym(*values: Any) -> bool:
    """True if any value is a Z3 term (then the result of an operation is symbolic)."""
    return any(isinstance(v, z3.ExprRef) for v in values)


def word(value: Any) -> Any:
    """A 64-bit word: concrete ints are masked, Z3 terms pass through (Python ints become
    bit-vector constants only when combined with a symbolic operand)."""
    return value if isinstance(value, z3.ExprRef) else value & MASK


def _bv(value: Any) -> Any:
    return value if isinstance(value, z3.ExprRef) else z3.BitVecVal(value & MASK, WORD)


# --- booleans --------------------------------------------------------------------------------

def all_of(*conds: Any) -> Any:
    if is_sym(*conds):
        return z3.And(*[c if isinstance(c, z3.ExprRef) else z3.BoolVal(bool(c)) for c in conds])
    return all(conds)


def any_of(*conds: Any) -> Any:
    if is_sym(*conds):
        return z3.Or(*[c if isinstance(c, z3.ExprRef) else z3.BoolVal(bool(c)) for c in conds])
    return any(conds)


def not_(cond: Any) -> Any:
    return z3.Not(cond) if is_sym(cond) else not cond


def implies(a: Any, b: Any) -> Any:
    return any_of(not_(a), b)


def ite(cond: Any, then: Any, other: Any) -> Any:
    """if-then-else on values; on concrete conditions only the chosen branch is returned.

    Values may be words, booleans, or objects providing `__ite__(cond, other)` (the model's
    symbolic state containers), so whole states can be merged under a symbolic condition."""
    if not is_sym(cond):
        return then if cond else other
    if hasattr(then, "__ite__"):
        return then.__ite__(cond, other)
    if isinstance(then, bool) or isinstance(other, bool):
        then = z3.BoolVal(then) if isinstance(then, bool) else then
        other = z3.BoolVal(other) if isinstance(other, bool) else other
        return z3.If(cond, then, other)
    return z3.If(cond, _bv(then), _bv(other))


# --- words -----------------------------------------------------------------------------------

def eq(a: Any, b: Any) -> Any:
    if is_sym(a, b):
        return _bv(a) == _bv(b)
    return (a & MASK) == (b & MASK)


def ne(a: Any, b: Any) -> Any:
    return not_(eq(a, b))


def ult(a: Any, b: Any) -> Any:
    return z3.ULT(_bv(a), _bv(b)) if is_sym(a, b) else (a & MASK) < (b & MASK)


def ule(a: Any, b: Any) -> Any:
    return z3.ULE(_bv(a), _bv(b)) if is_sym(a, b) else (a & MASK) <= (b & MASK)


def ugt(a: Any, b: Any) -> Any:
    return ult(b, a)


def uge(a: Any, b: Any) -> Any:
    return ule(b, a)


def add(a: Any, b: Any) -> Any:
    """Wrapping 64-bit addition."""
    return _bv(a) + _bv(b) if is_sym(a, b) else (a + b) & MASK


def sub(a: Any, b: Any) -> Any:
    """Wrapping 64-bit subtraction."""
    return _bv(a) - _bv(b) if is_sym(a, b) else (a - b) & MASK


def band(a: Any, b: Any) -> Any:
    return _bv(a) & _bv(b) if is_sym(a, b) else a & b & MASK


def bor(a: Any, b: Any) -> Any:
    return _bv(a) | _bv(b) if is_sym(a, b) else (a | b) & MASK


def bnot(a: Any) -> Any:
    return ~_bv(a) if is_sym(a) else ~a & MASK


def shr(a: Any, n: int) -> Any:
    return z3.LShR(_bv(a), n) if is_sym(a) else (a & MASK) >> n


def shl(a: Any, n: int) -> Any:
    return _bv(a) << n if is_sym(a) else (a << n) & MASK


def add_overflows(a: Any, b: Any) -> Any:
    """True when a + b wraps past 2**64 (unsigned carry)."""
    return ult(add(a, b), a)


def neg(value: int) -> int:
    """-value as a 64-bit word (an -errno syscall return)."""
    return (-value) & MASK


def to_python(value: Any) -> Any:
    """A concrete Z3 value (from a model) as a Python int/bool; Python values pass through."""
    if isinstance(value, z3.BoolRef):
        return z3.is_true(value)
    if isinstance(value, z3.BitVecNumRef):
        return value.as_long()
    if isinstance(value, z3.IntNumRef):
        return value.as_long()
    return value


# --- added by the model helper ----------------------------------------------------------------

def first_true(cases: "list[tuple[Any, Any]]", default: Any) -> Any:
    """The value of the first (condition, value) case whose condition holds, else `default` —
    the order of a syscall's checks. Concrete conditions stop at the first true one."""
    if not any(is_sym(c) for c, _ in cases):
        for cond, value in cases:
            if cond:
                return value
        return default
    out = default
    for cond, value in reversed(cases):
        out = ite(cond, value, out)
    return out


def is_true(cond: Any) -> bool:
    """A concrete condition that holds (False for every symbolic term): guards fast paths that
    skip work the result cannot depend on."""
    return not is_sym(cond) and bool(cond)


def is_false(cond: Any) -> bool:
    """A concrete condition that does not hold (False for every symbolic term)."""
    return not is_sym(cond) and not cond
