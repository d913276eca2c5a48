"""Program validation: what the constructors accept and what they reject, with the message."""
from __future__ import annotations

import pytest

from forkspec.oracle.errors import ForkspecError, InvalidProgram
from forkspec.oracle.program import ElfSpec, Image, Program, Ref, Step, walk_steps

S = Step


def test_valid_program_and_walk_order():
    prog = Program((Image((
        S("mmap", (0, 0x1000, 3, 0x22), result=1),
        S("fork", (), result=2,
          child=(S("store", (Ref(1), 7)), S("exit", (0,))),
          parent=(S("wait4", (Ref(2), 0)), S("load", (Ref(1, 8),), result=3)))),),))
    assert [s.op for s in walk_steps(prog.steps)] == ["mmap", "fork", "store", "exit", "wait4", "load"]
    assert prog.step_count() == 6


@pytest.mark.parametrize("make, message", [
    (lambda: S("nope"), "unknown step 'nope'"),
    (lambda: S("mmap", (0, 1)), "mmap takes 4 arguments, got 2"),
    (lambda: S("store", (0, "x")), "store argument 1='x' must be an int or a Ref"),
    (lambda: S("store", (0, True)), "must be an int or a Ref"),
    (lambda: S("store", (1 << 64, 0)), "does not fit in 64 bits"),
    (lambda: S("store", (0, 0), result=1), "store returns no value"),
    (lambda: S("getpid", (), result=0), "must be >= 1"),
    (lambda: S("fork"), "child and parent continuations go with fork"),
    (lambda: S("getpid", (), child=(), parent=()), "child and parent continuations go with fork"),
    (lambda: S("execve", (Ref(1),)), "execve image index"),
    (lambda: S("execve", (-1,)), "execve image index"),
    (lambda: Ref(0), "must name a result r1 or later"),
    (lambda: Ref(1, 1 << 64), "does not fit in 64 bits"),
])
def test_step_rejections(make, message):
    with pytest.raises(InvalidProgram, match=message):
        make()


@pytest.mark.parametrize("steps, message", [
    ((S("load", (Ref(1),)),), "refers to r1, which this process has not computed yet"),
    ((S("getpid", (), result=1), S("getpid", (), result=1)), "result r1 is named twice"),
    ((S("fork", (), child=(), parent=()), S("getpid")), "fork must end its step list"),
    ((S("fork", (), child=(S("getpid", (), result=1),), parent=(S("load", (Ref(1),)),)),),
     "refers to r1"),                                             # the child's result is not the parent's
])
def test_program_rejections(steps, message):
    with pytest.raises(InvalidProgram, match=message):
        Program((Image(steps),))


def test_results_are_unique_across_branches():
    with pytest.raises(InvalidProgram, match="named twice"):
        Program((Image((S("fork", (), child=(S("getpid", (), result=1),),
                          parent=(S("getpid", (), result=1),)),)),))


@pytest.mark.parametrize("kwargs, message", [
    ({"etype": "elf"}, "etype='elf'"), ({"layout": "odd"}, "layout='odd'"),
    ({"base": 0x1234}, "base=0x1234 must be page aligned"), ({"base": 0x1000}, "base=0x1000"),
    ({"bss": -1}, "bss"), ({"text": "rq"}, "text='rq'"), ({"stack": ""}, "stack=''"),
    ({"mutation": "bogus"}, "mutation='bogus' is unknown"),
])
def test_elfspec_rejections(kwargs, message):
    with pytest.raises(InvalidProgram, match=message):
        ElfSpec(**kwargs)


def test_errors_are_forkspec_and_value_errors():
    with pytest.raises(ForkspecError):
        Program(())
    with pytest.raises(ValueError):
        S("mmap")


def test_programs_are_plain_hashable_data():
    a = Program((Image((S("getpid", (), result=1),)),))
    b = Program((Image((S("getpid", (), result=1),)),))
    assert a == b and hash(a) == hash(b)
    assert a != Program((Image((S("getpid", (), result=2),)),))
