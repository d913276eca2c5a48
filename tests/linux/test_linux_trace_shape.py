"""Random programs on the Linux backend: every trace keeps specs/trace.py's ordering rules and
no process outlives its run. (The oracle's strategies test semantics; this tests the tracer.)"""
from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from linux_images import processes_in_group

from forkspec.oracle.program import Image, Program, Ref, Step
from forkspec.specs.abi import REPORT_NR, Nr, ReportKind
from forkspec.specs.trace import Exec, Exit, Inconclusive, Observation, Output, Report, Signal, Syscall

codegen = pytest.importorskip("forkspec.oracle._internal.codegen")

LENGTHS = (0, 1, 0x1000, 0x3000, 0x20_0000, 1 << 40)
PROTS = (0, 1, 2, 3, 4, 5, 7, 0x10)
FLAGS = (0x22, 0x21, 0x32, 0x10_0022, 0x02, 0x23)
OFFSETS = (0, 8, 0x1000, 0x1ff8, 0x2000, 0x3000, -0x1000)


@st.composite
def step_lists(draw, counter: list[int], depth: int) -> tuple[Step, ...]:
    steps: list[Step] = []
    for _ in range(draw(st.integers(0, 5))):
        kind = draw(st.sampled_from(("mmap", "munmap", "mprotect", "brk", "store", "load", "observe",
                                     "getpid", "getppid", "write", "wait4", "sched_yield", "fetch")))
        r1 = Ref(1, draw(st.sampled_from(OFFSETS)))
        if kind == "mmap":
            hint = draw(st.sampled_from((0, r1, 0x40_0000)))
            args = (hint, draw(st.sampled_from(LENGTHS)), draw(st.sampled_from(PROTS)), draw(st.sampled_from(FLAGS)))
        elif kind in ("munmap",):
            args = (r1, draw(st.sampled_from(LENGTHS)))
        elif kind == "mprotect":
            args = (r1, draw(st.sampled_from(LENGTHS)), draw(st.sampled_from(PROTS)))
        elif kind == "brk":
            args = (draw(st.sampled_from((0, 1, 0x60_0000))),)
        elif kind == "store":
            args = (r1, draw(st.integers(0, 2**64 - 1)))
        elif kind in ("load", "fetch"):
            args = (r1,)
        elif kind == "write":
            args = (draw(st.sampled_from((1, 2, 3))), r1, draw(st.sampled_from(LENGTHS[:4])))
        elif kind == "wait4":
            args = (draw(st.sampled_from((-1, 0, 1))), draw(st.sampled_from((0, 1, 0x100))))
        else:
            args = ()
        counter[0] += 1
        named = kind not in ("store", "observe", "fetch")
        steps.append(Step(kind, args, result=counter[0] if named else None))
    ending = draw(st.sampled_from(("none", "exit", "fork", "vfork", "execve") if depth < 3 else ("none", "exit")))
    if ending == "exit":
        steps.append(Step("exit", (draw(st.integers(0, 300)),)))
    elif ending == "execve":
        counter[0] += 1
        steps.append(Step("execve", (draw(st.sampled_from((1, 2))),), result=counter[0]))
    elif ending in ("fork", "vfork"):
        counter[0] += 1
        r = counter[0]
        child = draw(step_lists(counter, depth + 1))
        parent = draw(step_lists(counter, depth + 1))
        steps.append(Step(ending, (), result=r, child=child, parent=parent))
    return tuple(steps)


@st.composite
def programs(draw) -> Program:
    counter = [1]
    first = Step("mmap", (0, 0x3000, 3, draw(st.sampled_from((0x22, 0x21)))), result=1)
    root = (first,) + draw(step_lists(counter, 0))
    second = Image((Step("getppid", (), result=1), Step("exit", (5,))))
    return Program((Image(root), second))


def check_shape(trace) -> None:
    events = trace.events
    assert isinstance(events[0], Exec)
    root = events[0].pid
    known = {root}
    exited: set[int] = set()
    vfork_parent_blocked: dict[int, int] = {}       # child pid -> blocked parent pid
    for i, event in enumerate(events):
        if isinstance(event, Inconclusive):
            assert i == len(events) - 1
            return
        pid = event.pid
        assert pid in known, f"event {i} of unknown pid {pid}"
        assert pid not in exited, f"event {i} after pid {pid} exited"
        assert pid not in vfork_parent_blocked.values(), f"event {i}: vfork parent ran before its child"
        if isinstance(event, Syscall):
            assert event.nr not in (Nr.exit, Nr.exit_group, REPORT_NR)
            assert len(event.args) == 6 and -4095 <= event.result or event.result >= 0
            if event.nr in (Nr.fork, Nr.vfork, Nr.clone) and event.result > 0:
                known.add(event.result)
                if event.nr == Nr.vfork:
                    vfork_parent_blocked[event.result] = pid
        if isinstance(event, Exec) or isinstance(event, Exit):
            vfork_parent_blocked.pop(pid, None)
        if isinstance(event, Observation):
            assert events[i - 1] == Report(pid, ReportKind.observe, events[i - 1].values)
        if isinstance(event, Signal):
            assert isinstance(events[i + 1], Exit) and events[i + 1].pid == pid
        if isinstance(event, Exit):
            exited.add(pid)
    assert exited == known                           # every process's Exit is recorded


@pytest.fixture(scope="module")
def parent_first():
    from forkspec.oracle._internal.linux import LinuxBackend
    be = LinuxBackend(schedule="parent-first")
    yield be
    be.close()


@pytest.mark.parametrize("schedule", ["child-first", "parent-first"])
def test_random_programs_keep_the_trace_rules(backend, parent_first, schedule):
    chosen = backend if schedule == "child-first" else parent_first

    @settings(max_examples=50, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
    @given(programs())
    def each(program):
        build = codegen.compile_program(program)
        trace = chosen.run(build.images, build.entry)
        check_shape(trace)
        assert trace.inconclusive is None
        assert processes_in_group(trace.events[0].pid) == []

    each()


def _oracle_programs():
    strategies = pytest.importorskip("forkspec.oracle.strategies")
    return st.one_of(strategies.programs(), strategies.malformed_programs())


@pytest.mark.parametrize("source", ["oracle"])
def test_oracle_strategy_programs_keep_the_trace_rules(backend, source):
    drawn = _oracle_programs()

    @settings(max_examples=40, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
    @given(drawn)
    def each(program):
        build = codegen.compile_program(program)
        trace = backend.run(build.images, build.entry)
        check_shape(trace)
        assert trace.inconclusive is None
        assert processes_in_group(trace.events[0].pid) == []

    each()


def normalised(trace) -> list:
    """A trace with pids replaced by their order of appearance (pids are the only values a
    rerun may change under ADDR_NO_RANDOMIZE) and observations cut to their ranges (page
    contents hold pids the program stored, and the stack holds AT_RANDOM)."""
    names: dict[int, str] = {int(dict(trace.meta)["reaper_pid"]): "reaper"}
    for event in trace.events:
        pid = getattr(event, "pid", None)
        if pid is not None and pid not in names:
            names[pid] = f"p{len(names)}"
        if isinstance(event, Syscall) and event.nr in (Nr.fork, Nr.vfork, Nr.clone) and event.result > 0:
            names.setdefault(event.result, f"p{len(names)}")

    def value(v: int) -> object:
        return names.get(v, v)

    out = []
    layouts: dict[int, object] = {}
    for event in trace.events:
        if isinstance(event, Syscall) and event.nr in (Nr.fork, Nr.vfork, Nr.clone) and event.pid in layouts:
            layouts[event.result] = layouts[event.pid]
        if isinstance(event, Report) and event.kind == ReportKind.loaded and event.pid in layouts:
            # [vvar] holds the kernel's clock: loads from it differ run to run (contents masked).
            if any(name.startswith("vvar") and lo <= event.values[0] < hi for name, lo, hi in layouts[event.pid].regions):
                out.append(("Report", value(event.pid), event.kind, (event.values[0], "masked")))
                continue
        if isinstance(event, Syscall):
            out.append(("Syscall", value(event.pid), event.nr, tuple(map(value, event.args)), value(event.result)))
        elif isinstance(event, Report):
            out.append(("Report", value(event.pid), event.kind, tuple(map(value, event.values))))
        elif isinstance(event, Observation):
            out.append(("Observation", value(event.pid), event.view.ranges))
        elif isinstance(event, Exec):
            layouts[event.pid] = event.layout
            out.append(("Exec", value(event.pid), event.layout))
        elif isinstance(event, (Exit, Signal)):
            # si_addr may be a pid: a parent whose text its vfork child replaced runs into the new
            # page and faults at [rax], which holds the child's pid.
            out.append((type(event).__name__, value(event.pid)) + tuple(
                value(getattr(event, f)) if f == "si_addr" else getattr(event, f)
                for f in ("status", "signo", "si_code", "si_addr") if hasattr(event, f)))
        elif isinstance(event, Output):
            out.append(("Output", value(event.pid), event.fd, event.data))
        else:
            out.append(event)
    return out


@pytest.mark.parametrize("schedule", ["child-first", "parent-first"])
def test_reruns_give_the_same_trace_up_to_pids(backend, parent_first, schedule):
    chosen = backend if schedule == "child-first" else parent_first

    @settings(max_examples=25, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
    @given(programs())
    def each(program):
        build = codegen.compile_program(program)
        first = chosen.run(build.images, build.entry)
        second = chosen.run(build.images, build.entry)
        assert normalised(first) == normalised(second)

    each()
