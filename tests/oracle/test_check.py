"""The checker: it accepts hand-made and real passing traces and rejects mutated ones."""
from __future__ import annotations

import dataclasses

import pytest
from hypothesis import HealthCheck, Phase, given, settings

from forkspec.oracle._internal.codegen import compile_program
from forkspec.oracle.check import check
from forkspec.oracle.program import Image, Program, Ref, Step
from forkspec.specs.abi import Nr, ReportKind, U64
from forkspec.specs.profiles import LEVITATE, LEVITATE_STACK_TOP, levitate_stack_range
from forkspec.specs.trace import (Exec, Exit, Inconclusive, Layout, Observation, Output, Report, Signal, Syscall,
                                  Trace, View, page_digest)

MMAP_LO = 0x1000_0000_0000
ROOT, CHILD = 2, 3
LO, HI = levitate_stack_range()

PROGRAM = Program((Image((
    Step("mmap", (0, 0x2000, 3, 0x22), result=1),
    Step("store", (Ref(1, 8), 0x1234)),
    Step("load", (Ref(1, 8),), result=2),
    Step("fork", (), result=3,
         child=(Step("store", (Ref(1), 7)), Step("exit", (3,))),
         parent=(Step("wait4", (Ref(3), 0), result=4), Step("load", (Ref(1),)))),
)),))


def _layout(build) -> Layout:
    end = max(v + m for v, m, _f, _fl in build.info[0].segments)
    return Layout(regions=(("stack", LO, HI), ("tls", LEVITATE_STACK_TOP, LEVITATE_STACK_TOP + 0x1000)),
                  brk=(end + 0xFFF) & ~0xFFF, entry_sp=HI - 0x100)


def _hand_trace(build) -> Trace:
    """What a correct levitate kernel yields for PROGRAM, written out by hand."""
    table = build.info[0].table_addr
    events = (
        Exec(ROOT, _layout(build)),
        Syscall(ROOT, Nr.mmap, (0, 0x2000, 3, 0x22, U64, 0), MMAP_LO),
        Report(ROOT, ReportKind.loaded, (MMAP_LO + 8, 0x1234)),
        Syscall(ROOT, Nr.fork, (0,) * 6, CHILD),
        Exit(CHILD, 0x300),
        Syscall(ROOT, Nr.wait4, (CHILD, table, 0, 0, 0, 0), CHILD),
        Report(ROOT, ReportKind.wstatus, (0x300,)),
        Report(ROOT, ReportKind.loaded, (MMAP_LO, 0)),
        Exit(ROOT, 0),
    )
    return Trace(events, backend="hand")


def test_hand_made_trace_passes_and_records_coverage():
    build = compile_program(PROGRAM)
    verdict = check(PROGRAM, build, _hand_trace(build), LEVITATE)
    assert verdict.status == "pass", verdict.reason
    assert {"mmap.placed", "fork.ok", "wait4.reaped", "exit.ok", "load.ok"} <= verdict.coverage


def test_child_write_is_private_so_a_parent_load_of_7_diverges():
    build = compile_program(PROGRAM)
    events = list(_hand_trace(build).events)
    events[7] = Report(ROOT, ReportKind.loaded, (MMAP_LO, 7))
    verdict = check(PROGRAM, build, Trace(tuple(events), "hand"), LEVITATE)
    assert verdict.status == "divergence"
    assert verdict.divergence.process == "root" and verdict.divergence.event_index == 7
    assert verdict.divergence.signature == ("load", "value", "wrong-value")


def test_wrong_placement_reports_the_expected_address():
    build = compile_program(PROGRAM)
    events = list(_hand_trace(build).events)
    events[1] = Syscall(ROOT, Nr.mmap, (0, 0x2000, 3, 0x22, U64, 0), MMAP_LO + 0x10000)
    verdict = check(PROGRAM, build, Trace(tuple(events), "hand"), LEVITATE)
    assert verdict.status == "divergence" and f"{MMAP_LO:#x}" in verdict.divergence.expected


def test_budget_exhaustion_is_inconclusive_never_a_divergence():
    build = compile_program(PROGRAM)
    events = _hand_trace(build).events[:3] + (Inconclusive("instructions"),)
    verdict = check(PROGRAM, build, Trace(events, "hand"), LEVITATE)
    assert verdict.status == "inconclusive"


def test_out_of_scope_clone_is_inconclusive():
    program = Program((Image((Step("clone", (0x10000,), child=(), parent=()),)),))
    build = compile_program(program)
    events = (Exec(ROOT, _layout(build)), Syscall(ROOT, Nr.clone, (0x10000, 0, 0, 0, 0, 0), -22))
    verdict = check(program, build, Trace(events, "hand"), LEVITATE)
    assert verdict.status == "inconclusive" and "fork-like" in verdict.reason


def test_observation_mismatch_shows_side_by_side():
    program = Program((Image((Step("mmap", (0, 0x1000, 3, 0x22), result=1), Step("observe"))),))
    build = compile_program(program)
    layout = _layout(build)
    from forkspec.model import exec as mexec
    from forkspec.oracle.check import model_view
    state = mexec.initial_state(LEVITATE, ROOT, build.images[build.entry], layout).state
    ranges, digests, _, _ = model_view(state, ROOT)
    view = View(ranges=tuple(ranges), digests=tuple(sorted(digests.items())))   # the mmap is missing
    events = (Exec(ROOT, layout), Syscall(ROOT, Nr.mmap, (0, 0x1000, 3, 0x22, U64, 0), MMAP_LO),
              Report(ROOT, ReportKind.observe, (0,)), Observation(ROOT, view), Exit(ROOT, 0))
    verdict = check(program, build, Trace(events, "hand"), LEVITATE)
    assert verdict.status == "divergence" and verdict.divergence.signature[0] == "observe"
    assert "<-- differs" in verdict.divergence.detail and f"{MMAP_LO:#014x}" in verdict.divergence.detail


# --- strictness: mutate real passing traces (impl backend) ---------------------------------------

def mutations(trace: Trace):
    """Every single-point mutation of a trace the issue names: a result changed to another errno
    or address, a content byte flipped, a page dropped or added, an exit status changed, an
    event dropped."""
    events = trace.events
    for i, ev in enumerate(events):
        if isinstance(ev, Inconclusive):
            continue
        yield f"drop {i}", events[:i] + events[i + 1:]

        def put(new):
            return events[:i] + (new,) + events[i + 1:]
        if isinstance(ev, Syscall):
            other = -12 if ev.result != -12 else -22
            yield f"errno {i}", put(dataclasses.replace(ev, result=other))
            if ev.result >= 0:
                yield f"addr {i}", put(dataclasses.replace(ev, result=ev.result + 0x1000))
        elif isinstance(ev, Exit):
            yield f"status {i}", put(dataclasses.replace(ev, status=ev.status ^ 0x100))
        elif isinstance(ev, Report) and ev.values:
            yield f"value {i}", put(dataclasses.replace(ev, values=ev.values[:-1] + (ev.values[-1] ^ 1,)))
        elif isinstance(ev, Output) and ev.data:
            yield f"byte {i}", put(dataclasses.replace(ev, data=bytes([ev.data[0] ^ 1]) + ev.data[1:]))
        elif isinstance(ev, Observation):
            view = ev.view
            if view.digests:
                addr, digest = view.digests[0]
                flipped = bytes([digest[0] ^ 1]) + digest[1:]
                yield f"content {i}", put(Observation(ev.pid, View(view.ranges, ((addr, flipped),) + view.digests[1:])))
            if view.ranges:
                s, e, r = view.ranges[0]
                dropped = ((s + 0x1000, e, r),) if e - s > 0x1000 else ()
                yield f"page-drop {i}", put(Observation(ev.pid, View(dropped + view.ranges[1:], view.digests)))
                s, e, r = view.ranges[-1]
                yield f"page-add {i}", put(Observation(ev.pid, View(view.ranges[:-1] + ((s, e + 0x1000, r),),
                                                                   view.digests)))


@pytest.mark.slow
def test_mutated_real_traces_are_rejected_99_percent():
    pytest.importorskip("forkspec.impl.backend")
    from forkspec.impl.backend import ImplBackend
    from forkspec.oracle.strategies import programs
    tally = {"total": 0, "rejected": 0, "passing": 0}
    survivors: list[str] = []

    @settings(max_examples=25, derandomize=True, database=None, deadline=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(programs())
    def collect(program):
        build = compile_program(program)
        trace = ImplBackend().run(build.images, build.entry)
        if check(program, build, trace, LEVITATE).status != "pass":
            return
        tally["passing"] += 1
        for name, events in mutations(trace):
            tally["total"] += 1
            verdict = check(program, build, Trace(events, trace.backend), LEVITATE)
            if verdict.status == "divergence":
                tally["rejected"] += 1
            else:
                survivors.append(f"{name}: {verdict.status} {verdict.reason}")

    collect()
    assert tally["passing"] >= 10, tally
    ratio = tally["rejected"] / tally["total"]
    print(f"mutations rejected: {tally['rejected']}/{tally['total']} = {ratio:.4f}")
    print("\n".join(survivors[:20]))
    assert ratio >= 0.99, (ratio, survivors[:20])


def test_model_agrees_with_this_linux_on_generated_programs():
    """The reference against the most trusted implementation: generated programs run natively
    (ptrace) pass the checker under the linux profile."""
    from forkspec.oracle._internal.linux import LinuxBackend
    from forkspec.oracle.encoding import dumps
    from forkspec.oracle.strategies import programs
    from forkspec.specs.profiles import LINUX
    ok, why = LinuxBackend.available()
    if not ok:
        pytest.skip(f"Linux backend unavailable: {why}")
    backend = LinuxBackend()
    failures: list[str] = []

    @settings(max_examples=30, derandomize=True, database=None, deadline=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(programs())
    def run(program):
        build = compile_program(program)
        verdict = check(program, build, backend.run(build.images, build.entry), LINUX)
        if verdict.status == "divergence":
            failures.append(f"{verdict.reason}\n{dumps(program)}")

    run()
    assert not failures, failures[0]


REGRESSIONS = {
    # vfork: the child's 0 lands in the shared result slot first, the parent's pid after it resumes
    "vfork-slot-order": "# forkspec-program v1\nr1 = getppid\nr2 = vfork\n  child:\n  parent:\n    observe\n",
    # MAP_DROPPABLE is wipe-on-fork: the child reads zeros
    "droppable-wipe-on-fork": ("# forkspec-program v1\nr1 = mmap(0, 0x1000, rw, droppable|anon)\nstore(r1, 0x2a)\n"
                               "r2 = fork\n  child:  load(r1); exit(1)\n  parent: wait4(r2, 0); load(r1)\n"),
    # a growsdown mapping grows on a store below it; the next mmap keeps the guard gap below it
    "growsdown-grows": ("# forkspec-program v1\nr1 = mmap(0, 0x1000, rw, private|anon|growsdown)\n"
                        "store(r1-0x3000, 7)\nobserve\nr2 = mmap(0, 0x1000, rw, private|anon)\nobserve\n"),
}


@pytest.mark.parametrize("name", sorted(REGRESSIONS))
def test_regressions_pass_on_linux(name):
    from forkspec.oracle._internal.linux import LinuxBackend
    from forkspec.oracle.encoding import loads
    from forkspec.specs.profiles import LINUX
    ok, why = LinuxBackend.available()
    if not ok:
        pytest.skip(f"Linux backend unavailable: {why}")
    program = loads(REGRESSIONS[name])
    build = compile_program(program)
    verdict = check(program, build, LinuxBackend().run(build.images, build.entry), LINUX)
    assert verdict.status == "pass", verdict.reason


def test_an_image_that_execs_itself_forever_is_inconclusive_not_a_crash() -> None:
    """The minimiser can turn execve(1) into execve(0); the budget ends the run and the
    checker must follow thousands of execs without recursing."""
    from forkspec.oracle._internal.pipeline import Config, run_case
    from forkspec.oracle.program import Image, Program, Step
    from forkspec.specs.trace import Budget
    program = Program((Image((Step("getpid", (), result=1), Step("execve", (0,)))),))
    result = run_case(program, Config(budget=Budget(instructions=3_000_000, wall_seconds=20.0)))
    assert result.verdict.status == "inconclusive", result.verdict
    assert sum(1 for e in result.trace.events if type(e).__name__ == "Exec") > 1000
