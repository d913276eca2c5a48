"""End-to-end differential throughput: generation, ELF build, impl run, model check, per core.

    .venv/bin/python bench/bench_oracle.py [--cases N] [--seed S] [--fork-strategy eager|cow]

Programs come from the default strategy (oracle/strategies.py) with a fixed seed, drawn the way
a campaign draws them (hypothesis.find). Prints cases/s for one core, the time split by phase,
and the replay latency of a reproducer. Target (issue 4): >= 300 cases/s per core; replay <= 50 ms.
"""
from __future__ import annotations

import argparse
import random
import statistics
import time

from machine import describe  # noqa: E402 (bench/ is on sys.path when run as a script)

from hypothesis import HealthCheck, find, settings  # noqa: E402
from hypothesis.errors import NoSuchExample  # noqa: E402

from forkspec.oracle.check import check  # noqa: E402
from forkspec.oracle._internal.codegen import compile_program  # noqa: E402
from forkspec.oracle._internal.pipeline import Config, make_backend  # noqa: E402
from forkspec.oracle.strategies import programs  # noqa: E402


def draw_programs(count: int, seed: int) -> tuple[list, float]:
    drawn: list = []
    start = time.perf_counter()

    def keep(program) -> bool:
        drawn.append(program)
        return False
    try:
        find(programs(), keep, random=random.Random(seed),
             settings=settings(max_examples=count, database=None, deadline=None,
                               suppress_health_check=list(HealthCheck)))
    except NoSuchExample:
        pass
    return drawn[:count], time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cases", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--fork-strategy", choices=("eager", "cow"), default="eager")
    args = parser.parse_args()

    config = Config(fork_strategy=args.fork_strategy)
    backend = make_backend(config)
    progs, gen_s = draw_programs(args.cases, args.seed)
    steps = [p.step_count() for p in progs]
    forks = sum(any(s.op in ("fork", "vfork", "clone") for img in p.images for s in _walk(img.steps)) for p in progs)

    compile_s = run_s = check_s = 0.0
    outcomes: dict[str, int] = {}
    replay_ms = []
    for program in progs:
        t0 = time.perf_counter()
        build = compile_program(program)
        t1 = time.perf_counter()
        trace = backend.run(build.images, build.entry, config.budget)
        t2 = time.perf_counter()
        verdict = check(program, build, trace, config.profile)
        t3 = time.perf_counter()
        compile_s += t1 - t0
        run_s += t2 - t1
        check_s += t3 - t2
        replay_ms.append((t3 - t0) * 1000)
        outcomes[verdict.status] = outcomes.get(verdict.status, 0) + 1
    total = gen_s + compile_s + run_s + check_s
    n = len(progs)
    print(describe())
    print(f"impl backend, fork strategy {args.fork_strategy}, seed {args.seed}, {n} programs "
          f"(steps: median {statistics.median(steps):.0f}, max {max(steps)}; {forks} with a fork)")
    print(f"outcomes: {outcomes}")
    print(f"end to end: {n / total:.0f} cases/s on one core ({total:.2f} s)")
    for name, secs in (("generate", gen_s), ("compile", compile_s), ("impl run", run_s), ("model check", check_s)):
        print(f"  {name:<12} {secs * 1e3 / n:7.3f} ms/case  {100 * secs / total:5.1f} %")
    print(f"replay (compile+run+check of one program): median {statistics.median(replay_ms):.1f} ms, "
          f"p99 {sorted(replay_ms)[int(0.99 * (n - 1))]:.1f} ms")


def _walk(steps):
    from forkspec.oracle.program import walk_steps
    return walk_steps(steps)


if __name__ == "__main__":
    main()
