"""`forkspec zoo`: plant each bug of the zoo in turn and fuzz with the default strategies until
the first divergence. A catch counts only if the shrunk reproducer passes on the clean kernel:
otherwise the divergence is not the planted bug's doing."""
from __future__ import annotations

import multiprocessing
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from . import corpus as corpus_mod
from .campaign import format_divergence, reproducer_for, search
from .pipeline import CaseResult, Config, run_case


@dataclass(frozen=True)
class ZooResult:
    bug: str
    caught: bool
    seconds: float              # time to the first divergence (before shrinking)
    cases: int                  # cases run before it
    steps: int                  # steps of the shrunk reproducer
    signature: str
    note: str                   # why a catch did not count, or the reproducer's text
    reproducer: str = ""


def hunt(bug: str, seconds: float, seed: int, fork_strategy: str = "eager") -> ZooResult:
    config = Config(plant=frozenset({bug}), fork_strategy=fork_strategy)
    start = time.monotonic()
    first_at: list[float] = []
    cases = [0]

    def on_case(result: CaseResult) -> None:
        if not first_at:
            cases[0] += 1
            if result.diverged:
                first_at.append(time.monotonic() - start)

    found = search(config, seed, start + seconds, corpus=None, known=set(), on_case=on_case, stop_at_first=True)
    if not found:
        return ZooResult(bug, False, time.monotonic() - start, cases[0], 0, "", "no divergence within the budget")
    result = found[0]
    clean = run_case(result.program, Config(fork_strategy=fork_strategy))
    signature = " | ".join(result.verdict.divergence.signature)
    text = corpus_mod.dumps(reproducer_for(result, config, seed))
    if clean.verdict.status != "pass":
        return ZooResult(bug, False, first_at[0] if first_at else 0.0, cases[0], result.program.step_count(),
                         signature, f"the reproducer also fails on the clean kernel ({clean.verdict.status}): "
                         + (format_divergence(clean.verdict.divergence) if clean.diverged else clean.verdict.reason),
                         text)
    return ZooResult(bug, True, first_at[0] if first_at else 0.0, cases[0], result.program.step_count(),
                     signature, format_divergence(result.verdict.divergence), text)


def _hunt_star(args: tuple) -> ZooResult:
    return hunt(*args)


def run_zoo(bugs: list[str], seconds: float, seed: int, workers: int, fork_strategy: str,
            corpus: Path | None, out=sys.stdout) -> int:
    jobs = [(bug, seconds, seed, fork_strategy) for bug in bugs]
    if workers > 1 and len(jobs) > 1:
        with multiprocessing.get_context("fork").Pool(min(workers, len(jobs))) as pool:
            results = pool.map(_hunt_star, jobs, chunksize=1)
    else:
        results = [_hunt_star(job) for job in jobs]
    width = max(len(r.bug) for r in results)
    out.write(f"{'bug':<{width}}  caught  seconds  cases  steps  signature\n")
    for r in results:
        out.write(f"{r.bug:<{width}}  {'yes' if r.caught else 'NO ':<6}  {r.seconds:7.2f}  {r.cases:5d}  "
                  f"{r.steps:5d}  {r.signature or r.note}\n")
    caught = [r for r in results if r.caught]
    if caught:
        times = [r.seconds for r in caught]
        out.write(f"\ncaught {len(caught)}/{len(results)}; time to first divergence: median "
                  f"{statistics.median(times):.2f} s, worst {max(times):.2f} s; steps: median "
                  f"{statistics.median(r.steps for r in caught):.0f}, worst {max(r.steps for r in caught)}\n")
    for r in results:
        if not r.caught and r.reproducer:
            out.write(f"\n{r.bug}: {r.note}\n")
    if corpus is not None:
        for r in results:
            if r.reproducer:
                corpus_mod.write_atomic(corpus / f"zoo-{r.bug}{corpus_mod.SUFFIX}", r.reproducer)
    return 0 if len(caught) == len(results) else 1
