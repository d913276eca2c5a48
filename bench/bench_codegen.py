"""Programs generated and compiled per second with the default strategy (and each part alone).

Run: .venv/bin/python bench/bench_codegen.py [--seconds N]
Prints the figures and the machine. Generation runs a @given body that records each program
(no `.example()`), so the numbers include Hypothesis's own overhead as a campaign sees it.
Generation is also timed in CPU seconds of this process (time.process_time): on a shared
machine the wall-clock figure mostly measures the other processes.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

from hypothesis import HealthCheck, Phase, given, settings

from forkspec.oracle._internal.codegen import compile_program
from forkspec.oracle.encoding import dumps, loads
from forkspec.oracle.strategies import programs


from machine import cpu_model  # noqa: E402 (bench/ is on sys.path when run as a script)


def generate(seconds: float) -> list:
    out: list = []
    deadline = time.perf_counter() + seconds

    # Generate phase only: stopping by exception must not start a shrink.
    @settings(max_examples=10**9, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(programs())
    def body(prog):
        out.append(prog)
        if time.perf_counter() > deadline:
            raise _Done

    try:
        body()
    except _Done:
        pass
    return out[:-1] if out else out              # the last one raised


class _Done(Exception):
    pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    print(f"machine: {platform.platform()}, {os.cpu_count()} CPUs, {cpu_model()}, Python {sys.version.split()[0]}")

    print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    t0, c0 = time.perf_counter(), time.process_time()
    progs = generate(args.seconds)
    gen_time, gen_cpu = time.perf_counter() - t0, time.process_time() - c0
    t1 = time.perf_counter()
    builds = [compile_program(p) for p in progs]
    compile_time = time.perf_counter() - t1
    t2 = time.perf_counter()
    for p in progs:
        loads(dumps(p))
    text_time = time.perf_counter() - t2

    n = len(progs)
    steps = statistics.mean(p.step_count() for p in progs)
    size = statistics.mean(sum(len(b) for b in build.images.values()) for build in builds)
    print(f"programs: {n}, mean steps {steps:.1f}, mean ELF bytes per program {size:.0f}")
    print(f"generate (Hypothesis, default programs()): {n / gen_time:8.0f} programs/s "
          f"({gen_time * 1e3 / n:.2f} ms wall, {gen_cpu * 1e3 / n:.2f} ms CPU per program)")
    print(f"compile_program:                            {n / compile_time:8.0f} programs/s")
    print(f"generate + compile:                         {n / (gen_time + compile_time):8.0f} programs/s")
    print(f"dumps + loads round trip:                   {n / text_time:8.0f} programs/s")


if __name__ == "__main__":
    main()
