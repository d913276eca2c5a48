"""Fast concrete paths over model/logic.py: each helper does the plain-int operation when every
operand is a Python int (the oracle, millions of times), and defers to logic.py otherwise (Z3
terms: the proofs). Same meaning, one source for transitions."""
from __future__ import annotations

from typing import Any

from . import logic
from .logic import MASK, first_true, neg, shl, to_python  # noqa: F401

_int = int
_plain = (int, bool, type(None), str)


def is_sym(*values: Any) -> bool:
    for v in values:
        if type(v) not in _plain:
            return logic.is_sym(*values)
    return False


def is_true(cond: Any) -> bool:
    t = type(cond)
    if t is bool or t is _int:
        return bool(cond)
    return logic.is_true(cond)


def is_false(cond: Any) -> bool:
    t = type(cond)
    if t is bool or t is _int:
        return not cond
    return logic.is_false(cond)


def ite(cond: Any, then: Any, other: Any) -> Any:
    t = type(cond)
    if t is bool or t is _int:
        return then if cond else other
    return logic.ite(cond, then, other)


def all_of(*conds: Any) -> Any:
    for c in conds:
        t = type(c)
        if t is not bool and t is not _int:
            return logic.all_of(*conds)
    return all(conds)


def any_of(*conds: Any) -> Any:
    for c in conds:
        t = type(c)
        if t is not bool and t is not _int:
            return logic.any_of(*conds)
    return any(conds)


def not_(c: Any) -> Any:
    return (not c) if type(c) is bool or type(c) is _int else logic.not_(c)


def eq(a: Any, b: Any) -> Any:
    return (a & MASK) == (b & MASK) if type(a) is _int and type(b) is _int else logic.eq(a, b)


def ne(a: Any, b: Any) -> Any:
    return (a & MASK) != (b & MASK) if type(a) is _int and type(b) is _int else logic.ne(a, b)


def ult(a: Any, b: Any) -> Any:
    return (a & MASK) < (b & MASK) if type(a) is _int and type(b) is _int else logic.ult(a, b)


def ule(a: Any, b: Any) -> Any:
    return (a & MASK) <= (b & MASK) if type(a) is _int and type(b) is _int else logic.ule(a, b)


def ugt(a: Any, b: Any) -> Any:
    return (a & MASK) > (b & MASK) if type(a) is _int and type(b) is _int else logic.ugt(a, b)


def uge(a: Any, b: Any) -> Any:
    return (a & MASK) >= (b & MASK) if type(a) is _int and type(b) is _int else logic.uge(a, b)


def add(a: Any, b: Any) -> Any:
    return (a + b) & MASK if type(a) is _int and type(b) is _int else logic.add(a, b)


def sub(a: Any, b: Any) -> Any:
    return (a - b) & MASK if type(a) is _int and type(b) is _int else logic.sub(a, b)


def band(a: Any, b: Any) -> Any:
    return a & b & MASK if type(a) is _int and type(b) is _int else logic.band(a, b)


def bor(a: Any, b: Any) -> Any:
    return (a | b) & MASK if type(a) is _int and type(b) is _int else logic.bor(a, b)


def bnot(a: Any) -> Any:
    return ~a & MASK if type(a) is _int else logic.bnot(a)


def shr(a: Any, n: int) -> Any:
    return (a & MASK) >> n if type(a) is _int else logic.shr(a, n)
