"""minimize(): a table of programs, predicates and the expected minimum (prog/minimization_test.go)."""
from __future__ import annotations

import pytest

from forkspec.oracle.minimize import minimize
from forkspec.oracle.program import Image, Program, Ref, Step, walk_steps


def prog(*steps: Step) -> Program:
    return Program((Image(tuple(steps)),))


def ops(program: Program) -> list[str]:
    return [s.op for s in walk_steps(program.steps)]


def has(op: str, pred=lambda s: True):
    return lambda p: any(s.op == op and pred(s) for s in walk_steps(p.steps))


MMAP = Step("mmap", (0, 0x3000, 3, 0x22), result=1)
BIG = prog(
    MMAP,
    Step("store", (Ref(1, 0x1000), 7)),
    Step("getpid", (), result=2),
    Step("fork", (), result=3,
         child=(Step("store", (Ref(1), 9)), Step("munmap", (Ref(1), 0x1000)), Step("exit", (3,))),
         parent=(Step("wait4", (Ref(3), 0), result=4), Step("load", (Ref(1),), result=5), Step("observe"))),
)

CASES = [
    # (name, program, predicate, expected ops after minimisation)
    ("keeps-only-the-failing-step", BIG, has("munmap"), ["munmap"]),
    ("fork-replaced-by-child", BIG, lambda p: has("munmap")(p) and has("store", lambda s: s.args[1] == 9)(p),
     ["store", "munmap"]),
    ("producer-kept-while-its-reference-matters", BIG,
     has("load", lambda s: isinstance(s.args[0], Ref)), ["mmap", "load"]),
    ("fork-kept-when-needed", BIG, lambda p: has("fork")(p) and has("observe")(p), ["fork", "observe"]),
    ("nothing-to-drop", prog(Step("getpid", (), result=1)), has("getpid"), ["getpid"]),
]


@pytest.mark.parametrize("name,program,predicate,expected", CASES, ids=[c[0] for c in CASES])
def test_minimize_table(name, program, predicate, expected) -> None:
    assert predicate(program)
    result = minimize(program, predicate)
    assert predicate(result), "the result must still fail"
    assert ops(result) == expected


def test_arguments_shrink_toward_zero_but_keep_what_matters() -> None:
    program = prog(Step("mmap", (0x7000_1234, 0x5000, 7, 0x22), result=1))
    result = minimize(program, has("mmap", lambda s: s.args[1] >= 0x2000))
    step = result.steps[0]
    assert step.args[0] == 0 and step.args[2] == 0 and step.args[3] == 0
    assert step.args[1] == 0x2000             # the smallest length the predicate still accepts


def test_dropped_producer_resets_its_users_to_zero() -> None:
    program = prog(Step("mmap", (0, 0x1000, 3, 0x22), result=1), Step("store", (Ref(1, 8), 5)))
    result = minimize(program, has("store", lambda s: s.args[1] == 5))
    assert [s.op for s in result.steps] == ["store"]
    assert result.steps[0].args == (0, 5)


def test_budget_of_tries_is_respected() -> None:
    calls = []

    def predicate(p):
        calls.append(p)
        return False              # nothing smaller fails: the minimiser would try everything
    assert minimize(BIG, predicate, max_tries=7) == BIG
    assert len(calls) == 7
