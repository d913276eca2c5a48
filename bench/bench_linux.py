"""Linux backend throughput: programs run per second under ptrace on this machine.

    .venv/bin/python bench/bench_linux.py [--programs N] [--source generated|handbuilt]

`generated` (the default when oracle/strategies.py exists) draws default-size programs from
`forkspec.oracle.strategies.programs()` with a fixed seed; `handbuilt` runs one representative
program (mmap, stores, fork, wait4, loads, two observes, execve into a second image). Programs are
compiled before the clock starts: the figure is the backend's (spawn, trace, observe, reap).
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

from forkspec.oracle._internal.codegen import compile_program
from forkspec.oracle._internal.linux import LinuxBackend
from forkspec.oracle.program import Image, Program, Ref, Step
from forkspec.specs.trace import Budget


from machine import cpu_model  # noqa: E402 (bench/ is on sys.path when run as a script)


def handbuilt() -> Program:
    return Program((
        Image((
            Step("mmap", (0, 0x3000, 3, 0x22), result=1),
            Step("store", (Ref(1), 0x2A)),
            Step("store", (Ref(1, 0x1000), 0x2B)),
            Step("brk", (0,), result=2),
            Step("fork", (), result=3,
                 child=(Step("store", (Ref(1), 7)), Step("observe"), Step("mprotect", (Ref(1), 0x1000, 1), result=4),
                        Step("execve", (1,), result=5)),
                 parent=(Step("wait4", (Ref(3), 0), result=6), Step("load", (Ref(1),)),
                         Step("munmap", (Ref(1, 0x1000), 0x1000), result=7), Step("observe"))),
        )),
        Image((Step("getpid", (), result=1), Step("exit", (3,)))),
    ))


def generated(count: int) -> list[Program]:
    from hypothesis import HealthCheck, given, settings

    from forkspec.oracle.strategies import programs
    drawn: list[Program] = []

    @settings(max_examples=count, database=None, derandomize=True, deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(programs())
    def collect(program: Program) -> None:
        drawn.append(program)

    collect()
    return drawn


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--programs", type=int, default=500)
    parser.add_argument("--source", choices=("generated", "handbuilt"), default=None)
    args = parser.parse_args()
    ok, why = LinuxBackend.available()
    if not ok:
        print(f"linux backend unavailable: {why}")
        return 1
    source = args.source
    if source is None:
        try:
            import forkspec.oracle.strategies  # noqa: F401
            source = "generated"
        except ImportError:
            source = "handbuilt"
    programs = generated(args.programs) if source == "generated" else [handbuilt()] * args.programs
    builds = [compile_program(p) for p in programs]
    backend = LinuxBackend()
    budget = Budget()
    backend.run(builds[0].images, builds[0].entry, budget)           # warm-up (threads, cgroups)
    durations: list[float] = []
    events = 0
    inconclusive = 0
    start = time.perf_counter()
    for build in builds:
        t0 = time.perf_counter()
        trace = backend.run(build.images, build.entry, budget)
        durations.append(time.perf_counter() - t0)
        events += len(trace.events)
        inconclusive += trace.inconclusive is not None
    elapsed = time.perf_counter() - start
    backend.close()
    n = len(builds)
    print(f"source: {source} ({n} programs, {sum(p.step_count() for p in programs) / n:.1f} steps each on average)")
    print(f"programs/s: {n / elapsed:.1f}")
    print(f"ms per program: mean {1000 * statistics.mean(durations):.2f}, "
          f"median {1000 * statistics.median(durations):.2f}, max {1000 * max(durations):.2f}")
    print(f"events per program: {events / n:.1f}; inconclusive: {inconclusive}")
    print(f"machine: {platform.platform()}; cpus: {os.cpu_count()}; cpu: {cpu_model()}")
    print(f"kernel: {platform.release()} {platform.version()}; python {sys.version.split()[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
