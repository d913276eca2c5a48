"""The text encoding: examples, errors that name the line, and the round-trip property."""
from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings

from forkspec.oracle.encoding import HEADER, dumps, format_step, loads
from forkspec.oracle.errors import InvalidProgram
from forkspec.oracle.program import ElfSpec, Image, Program, Ref, Step
from forkspec.oracle.strategies import malformed_programs, programs

S = Step

STYLE_EXAMPLE = """\
# forkspec-program v1
r1 = mmap(0, 0x2000, rw, private|anon)
store(r1+0x1000, 0x2a)
r2 = fork
  child:  store(r1, 7); observe; exit(3)
  parent: wait4(r2); load(r1); observe; exit(0)
"""


def test_style_guide_example_reads_as_meant():
    prog = loads(STYLE_EXAMPLE)
    assert prog == Program((Image((
        S("mmap", (0, 0x2000, 3, 0x22), result=1),
        S("store", (Ref(1, 0x1000), 42)),
        S("fork", (), result=2,
          child=(S("store", (Ref(1), 7)), S("observe"), S("exit", (3,))),
          parent=(S("wait4", (Ref(2), 0)), S("load", (Ref(1),)), S("observe"), S("exit", (0,))))),),))
    assert loads(dumps(prog)) == prog


def test_dumps_is_readable():
    prog = Program((
        Image((S("mmap", (0x10000, 0x1000, 0, 0x32), result=1),
               S("mprotect", (Ref(1, -0x1000), 0x1000, 0x7 | 0x8)),
               S("wait4", (-1, 1)),
               S("clone", (0x4111,), result=2, child=(S("exit", (1,)),), parent=()))),
        Image((S("exit", (0,)),), ElfSpec(etype="dyn", layout="shared", bss=0x10, mutation="bad-magic"))))
    text = dumps(prog)
    assert text.splitlines() == [
        HEADER,
        "r1 = mmap(0x10000, 0x1000, none, private|fixed|anon)",
        "mprotect(r1-0x1000, 0x1000, rwx|0x8)",
        "wait4(-1, wnohang)",
        "r2 = clone(vm|vfork|sigchld)",
        "  child:  exit(1)",
        "  parent:",
        "image 1 (dyn, shared, bss=0x10, mutation=bad-magic):",
        "exit(0)",
    ]
    assert loads(text) == prog


def test_format_step_leaves_defaults_out():
    assert format_step(S("wait4", (Ref(3), 0), result=4)) == "r4 = wait4(r3)"
    assert format_step(S("wait4", (Ref(3), 0x40000000))) == "wait4(r3, wall)"
    assert format_step(S("getpid", (), result=1)) == "r1 = getpid"
    assert format_step(S("store", (Ref(1, (1 << 64) - 1), -5))) == "store(r1+0xffffffffffffffff, -5)"


def test_block_and_inline_continuations_and_comments():
    text = f"""{HEADER}
# a comment line
r1 = fork   # trailing comment
  child:
    r2 = vfork
      child:  exit(1)
      parent:
        getpid
  parent: sched_yield
    observe
"""
    prog = loads(text)
    fork = prog.steps[0]
    assert fork.child[0].op == "vfork" and fork.child[0].parent == (S("getpid"),)
    assert fork.parent == (S("sched_yield"), S("observe"))


def test_images_and_elf_keys():
    text = f"""{HEADER}
image 0 (dyn, single, base=0x1000000, bss=0x3008, text=rwx, stack=none, mutation=None):
execve(1)
image 1 (exec, split, bss=0x0, mutation=entry-outside-segments):
"""
    prog = loads(text)
    assert prog.images[0].elf == ElfSpec(etype="dyn", layout="single", base=0x100_0000, bss=0x3008,
                                         text="rwx", stack=None)
    assert prog.images[1].elf.mutation == "entry-outside-segments" and prog.images[1].steps == ()
    assert loads(dumps(prog)) == prog


@pytest.mark.parametrize("body, message", [
    ("r1 = mmap(0, 0x1000, rw)", "line 2: mmap takes 4 arguments, got 3"),
    ("frob(1)", "line 2: unknown step 'frob'"),
    ("store(r1, 1)", "line 2: store refers to r1, which this process has not computed yet"),
    ("r1 = getpid\nr1 = getpid", "line 3: result r1 is named twice"),
    ("mmap(0, 0x1000, rw, private|anonymous)", "line 2: mmap flags: unknown flag 'anonymous'"),
    ("store(0x1g, 1)", "line 2: store addr='0x1g' is not a number"),
    ("  getpid", "line 2: unexpected"),
    ("r1 = fork\n  parent: exit(0)", "line 2: the fork-like step needs a 'child:' line"),
    ("r1 = fork\n  child:\n  sibling:", "needs a 'parent:' line"),
    ("fork; getpid", "line 2: fork must end its step list"),
    ("store(1, 2) extra", "line 2: cannot read step"),
    ("image 2 (exec, split):", "line 2: image 2 must be image 0"),
    ("image 0 (exec, split, color=red):", "line 2: image: unknown key 'color'"),
    ("image 0 (exec, split, bss=-1):", "line 2: image bss=-0x1"),
    ("image 0 (exec, split, mutation=bad-magic):", "image 0 must be well formed"),
    ("store(1 << 3, 2)", "line 2: store addr='1 << 3' is not a number"),
    ("store(r0, 1)", "line 2: reference r0 must name a result r1 or later"),
    ("\tgetpid", "line 2: indent with spaces"),
])
def test_errors_name_the_line(body, message):
    with pytest.raises(InvalidProgram) as err:
        loads(f"{HEADER}\n{body}\n")
    assert message in str(err.value)


def test_strict_needs_the_header_lenient_does_not():
    with pytest.raises(InvalidProgram, match="must start with"):
        loads("getpid\n")
    with pytest.raises(InvalidProgram, match="is not"):
        loads("# forkspec-program v9\ngetpid\n")
    assert loads("getpid\n", strict=False) == Program((Image((S("getpid"),)),))
    assert loads("# forkspec-program v9\ngetpid\n", strict=False).steps == (S("getpid"),)
    lenient = loads(f"{HEADER}\nimage 0 (exec, split, color=red):\n", strict=False)
    assert lenient.images[0].elf == ElfSpec()


def test_empty_program_round_trips():
    prog = Program((Image(()),))
    assert dumps(prog) == HEADER + "\n"
    assert loads(dumps(prog)) == prog


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(programs())
def test_round_trip_generated_programs(prog):
    text = dumps(prog)
    assert loads(text) == prog
    assert dumps(loads(text)) == text


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(malformed_programs())
def test_round_trip_malformed_programs(prog):
    assert loads(dumps(prog)) == prog


def test_every_argument_has_a_name_for_messages():
    from forkspec.oracle.encoding import ARG_NAMES
    from forkspec.oracle.program import OPS
    assert {op: len(ARG_NAMES.get(op, ())) for op in OPS} == OPS
