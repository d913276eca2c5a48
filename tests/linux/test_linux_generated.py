"""The Linux backend on images from the code generator: malformed images and whole programs."""
from __future__ import annotations

import pytest
from linux_images import processes_in_group

from forkspec.oracle.program import ElfSpec, Image, Program, Ref, Step
from forkspec.specs.abi import Errno, Nr, ReportKind, SiCode, wait_status_exited, wait_status_signaled
from forkspec.specs.trace import Exec, Exit, Observation, Report, Signal, Syscall

codegen = pytest.importorskip("forkspec.oracle._internal.codegen")
elf = pytest.importorskip("forkspec.oracle._internal.elf")
MUTATIONS = getattr(elf, "MUTATIONS", {})


def run_program(backend, program: Program):
    build = codegen.compile_program(program)
    return backend.run(build.images, build.entry), build


def exec_into(mutation: str) -> Program:
    return Program((Image((Step("execve", (1,), result=1), Step("exit", (1,)))),
                    Image((Step("exit", (0,)),), ElfSpec(mutation=mutation))))


@pytest.mark.parametrize("mutation", sorted(MUTATIONS))
def test_malformed_image_gives_the_measured_answer(backend, mutation):
    expected = MUTATIONS[mutation].expected
    trace, _ = run_program(backend, exec_into(mutation))
    root = trace.events[0].pid
    events = trace.events[1:]
    if expected == "ENOEXEC":
        assert events[0].nr == Nr.execve and events[0].result == -Errno.ENOEXEC
        assert events[-1] == Exit(root, wait_status_exited(1))       # the caller carries on
    elif expected == "killed":
        assert events == (Signal(root, 11, SiCode.SI_KERNEL, 0), Exit(root, wait_status_signaled(11)))
    elif expected == "runs":
        assert events[0].result == 0 and isinstance(events[1], Exec)
        assert events[-1] == Exit(root, 0)
    elif expected == "SIGSEGV at entry":
        assert events[0].result == 0 and isinstance(events[1], Exec)
        assert events[2].signo == 11 and events[2].si_code in (SiCode.SEGV_MAPERR, SiCode.SEGV_ACCERR)
        assert events[3] == Exit(root, wait_status_signaled(11))
    elif expected == "SIGBUS on touch":
        assert events[0].result == 0 and isinstance(events[1], Exec)
        assert events[2].signo == 7 and events[2].si_code == SiCode.BUS_ADRERR
        assert events[3] == Exit(root, wait_status_signaled(7))
    else:
        pytest.fail(f"unknown expectation {expected!r}")


def test_fork_tree_with_wait_and_observations(backend):
    program = Program((Image((
        Step("mmap", (0, 0x2000, 3, 0x22), result=1),
        Step("store", (Ref(1), 0x2A)),
        Step("fork", (), result=2,
             child=(Step("store", (Ref(1), 7)), Step("observe"), Step("exit", (3,))),
             parent=(Step("wait4", (Ref(2), 0), result=3), Step("load", (Ref(1),)), Step("observe"))),
    )),))
    trace, build = run_program(backend, program)
    root = trace.events[0].pid
    fork = next(e for e in trace.events if isinstance(e, Syscall) and e.nr == Nr.fork)
    child = fork.result
    exits = {e.pid: e.status for e in trace.events if isinstance(e, Exit)}
    assert exits == {child: wait_status_exited(3), root: 0}
    # The parent's private copy still holds 0x2a after the child stored 7 into its own.
    loaded = [e for e in trace.events if isinstance(e, Report) and e.kind == ReportKind.loaded]
    assert [e.values[1] for e in loaded] == [0x2A]
    wstatus = [e for e in trace.events if isinstance(e, Report) and e.kind == ReportKind.wstatus]
    assert [e.values[0] for e in wstatus] == [wait_status_exited(3)]
    observations = [e for e in trace.events if isinstance(e, Observation)]
    assert [o.pid for o in observations] == [child, root]
    mmap = trace.events[1]
    child_page = dict(observations[0].view.digests)[mmap.result]
    root_page = dict(observations[1].view.digests)[mmap.result]
    assert child_page != root_page
    assert processes_in_group(root) == []


def test_generated_execve_then_layout_per_image(backend):
    program = Program((Image((Step("execve", (1,), result=1),)),
                       Image((Step("brk", (0,), result=1),), ElfSpec(etype="dyn"))))
    trace, _ = run_program(backend, program)
    execs = [e for e in trace.events if isinstance(e, Exec)]
    assert len(execs) == 2
    assert execs[0].layout.load_bias == 0 and execs[1].layout.load_bias != 0
    brk = next(e for e in trace.events if isinstance(e, Syscall) and e.nr == Nr.brk)
    assert brk.result == execs[1].layout.brk                # brk(0) answers the initial break
