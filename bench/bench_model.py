"""Concrete model speed: syscall steps per second (target >= 50,000).

Runs a fixed mix of transitions through model.system.syscall (the checker's entry point) on
the levitate profile: mmap(NULL), a store, mprotect, munmap, brk grow/shrink, getpid, and a
fork / exit / wait4 triple, over a process with a few dozen mappings. Prints the figure and the
machine. Usage: .venv/bin/python bench/bench_model.py [seconds] [--checker]

--checker also measures oracle.check: 300 generated programs (fixed seed) run once on impl, then
checked repeatedly; prints traces and events checked per CPU second.
"""
from __future__ import annotations

import os
import platform
import sys
import time

from forkspec.model import exec as mexec
from forkspec.model import memory, system
from forkspec.oracle._internal.elf import PF_R, PF_W, PF_X, Segment, write_elf
from forkspec.specs.abi import PAGE_SIZE, U64, Nr
from forkspec.specs.profiles import LEVITATE, LEVITATE_STACK_TOP, levitate_stack_range
from forkspec.specs.trace import Layout

PID = 2


from machine import cpu_model  # noqa: E402 (bench/ is on sys.path when run as a script)


def initial():
    image = write_elf([Segment(0x40_0000, b"\xc3" * 64, 64, PF_R | PF_X),
                       Segment(0x40_1000, b"d" * 64, 0x1000, PF_R | PF_W)], 0x40_0000)
    lo, hi = levitate_stack_range()
    layout = Layout(regions=(("stack", lo, hi), ("tls", LEVITATE_STACK_TOP, LEVITATE_STACK_TOP + PAGE_SIZE)),
                    brk=0x40_2000, entry_sp=hi - 0x100)
    state = mexec.initial_state(LEVITATE, PID, image, layout).state
    # a few dozen mappings with alternating rights, so range operations do real work
    for k in range(40):
        r = system.syscall(state, PID, Nr.mmap, (0x2000_0000_0000 + k * 0x3000, 0x2000, 1 + (k & 1) * 2, 0x32, U64, 0),
                           0x2000_0000_0000 + k * 0x3000)
        state = r.state
    return state


def round_of(state, child_pid):
    """One round: 12 syscall steps (+ one store and one load). Returns the state and step count."""
    steps = 0
    base = 0x1000_0000_0000
    r = system.syscall(state, PID, Nr.mmap, (0, 0x4000, 3, 0x22, U64, 0), base); state = r.state; steps += 1
    state = memory.store(state, PID, base + 8, 0x1234).state
    assert memory.load(state, PID, base + 8).outcome.value == 0x1234
    r = system.syscall(state, PID, Nr.mprotect, (base + 0x1000, 0x1000, 1, 0, 0, 0), 0); state = r.state; steps += 1
    r = system.syscall(state, PID, Nr.mprotect, (base, 0x8000, 3, 0, 0, 0), (-12) & U64); state = r.state; steps += 1
    brk = state.space_of(PID).brk
    r = system.syscall(state, PID, Nr.brk, (brk + 0x3000, 0, 0, 0, 0, 0), brk + 0x3000); state = r.state; steps += 1
    r = system.syscall(state, PID, Nr.brk, (brk, 0, 0, 0, 0, 0), brk); state = r.state; steps += 1
    r = system.syscall(state, PID, Nr.getpid, (0,) * 6, PID); steps += 1
    r = system.syscall(state, PID, Nr.fork, (0,) * 6, child_pid); state = r.state; steps += 1
    r = system.syscall(state, child_pid, Nr.munmap, (base, 0x4000, 0, 0, 0, 0), 0); state = r.state; steps += 1
    r = system.syscall(state, child_pid, Nr.exit, (3, 0, 0, 0, 0, 0), 0); state = r.state; steps += 1
    r = system.syscall(state, PID, Nr.wait4, (child_pid, 0x40_1000, 0, 0, 0, 0), child_pid); state = r.state; steps += 1
    r = system.syscall(state, PID, Nr.munmap, (base, 0x4000, 0, 0, 0, 0), 0); state = r.state; steps += 1
    r = system.syscall(state, PID, Nr.sched_yield, (0,) * 6, 0); steps += 1
    return state, steps


def checker_rate(examples: int = 300, rounds: int = 3) -> str:
    import warnings

    from hypothesis import HealthCheck, Phase, given, settings

    from forkspec.impl.backend import ImplBackend
    from forkspec.oracle._internal.codegen import compile_program
    from forkspec.oracle.check import check
    from forkspec.oracle.strategies import programs
    warnings.filterwarnings("ignore")
    cases = []

    @settings(max_examples=examples, derandomize=True, database=None, deadline=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(programs())
    def collect(program):
        build = compile_program(program)
        cases.append((program, build, ImplBackend().run(build.images, build.entry)))

    collect()
    events = sum(len(t.events) for _, _, t in cases)
    start = time.process_time()
    for _ in range(rounds):
        for program, build, trace in cases:
            check(program, build, trace, LEVITATE)
    cpu = time.process_time() - start
    per_trace_ms = cpu * 1000 / (rounds * len(cases))
    return (f"checker: {rounds * len(cases)} traces ({rounds * events} events) in {cpu:.2f} CPU s = "
            f"{rounds * len(cases) / cpu:,.0f} traces/s, {rounds * events / cpu:,.0f} events/s, "
            f"{per_trace_ms:.3f} ms/trace per CPU second (target <= 0.6: {'met' if per_trace_ms <= 0.6 else 'NOT met'})")


def main(argv: list[str]) -> int:
    flags = [a for a in argv[1:] if a.startswith("--")]
    argv = [argv[0]] + [a for a in argv[1:] if not a.startswith("--")]
    seconds = float(argv[1]) if len(argv) > 1 else 3.0
    state = initial()
    steps = 0
    child = 100
    start = time.perf_counter()
    cpu_start = time.process_time()
    while time.perf_counter() - start < seconds:
        state, n = round_of(state, child)
        steps += n
        child += 1
    elapsed = time.perf_counter() - start
    cpu = time.process_time() - cpu_start
    rate = steps / cpu
    print(f"concrete model: {steps} syscall steps in {cpu:.2f} s of CPU ({elapsed:.2f} s wall) = {rate:,.0f} "
          f"steps/s per CPU second, {steps / elapsed:,.0f} per wall second (target >= 50,000: "
          f"{'met' if rate >= 50_000 else 'NOT met'}); load average {os.getloadavg()[0]:.1f}")
    if "--checker" in flags:
        print(checker_rate())
    print(f"machine: {platform.platform()}, {os.cpu_count()} CPUs, {cpu_model()}, Python {platform.python_version()}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
