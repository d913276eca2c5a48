"""Fuzzing campaigns: Hypothesis searches for divergences, shrinks each new one, and saves it.

A worker repeats `hypothesis.find` over the program strategy with its own seed: the condition
runs a case and is true for a divergence whose signature is new. The first sighting is saved at
once (unshrunk), the shrunk program replaces it when shrinking ends, so a campaign killed at any
moment keeps every reproducer it found. Workers are processes; the parent shows progress.
"""
from __future__ import annotations

import multiprocessing
import os
import queue
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from hypothesis import HealthCheck, find, settings
from hypothesis.errors import Flaky, NoSuchExample, Unsatisfiable

from .. import __version__
from ..program import Program
from . import corpus as corpus_mod
from .pipeline import CaseResult, Config, run_case

BATCH = 200                  # examples per `find` call before a worker reseeds
REPORT_EVERY = 0.5           # seconds between a worker's progress messages


@dataclass
class Stats:
    cases: int = 0
    divergences: int = 0
    inconclusive: int = 0
    coverage: set[str] = field(default_factory=set)

    def merge(self, other: dict[str, Any]) -> None:
        self.cases += other["cases"]
        self.divergences += other["divergences"]
        self.inconclusive += other["inconclusive"]
        self.coverage |= set(other["coverage"])


def reproducer_for(result: CaseResult, config: Config, seed: int) -> corpus_mod.Reproducer:
    from ..encoding import dumps as program_text
    from .disasm import disassemble_build

    divergence = result.verdict.divergence
    meta = {"forkspec": __version__, **config.describe(), "seed": str(seed),
            "signature": " | ".join(divergence.signature),
            "steps": str(result.program.step_count()), "platform": result.trace.platform or "-"}
    return corpus_mod.Reproducer(
        meta=meta,
        divergence=format_divergence(divergence),
        program_text=program_text(result.program),
        disassembly=disassemble_build(result.build, result.program),
        images=tuple(sorted(result.build.images.items())),
    )


def format_divergence(divergence: Any) -> str:
    lines = [f"process {divergence.process}, event {divergence.event_index}: {divergence.step}",
             f"  allowed:  {divergence.expected}",
             f"  observed: {divergence.observed}"]
    if divergence.detail:
        lines += ["", divergence.detail.rstrip("\n")]
    return "\n".join(lines)


def default_strategy() -> Any:
    from ..strategies import programs
    return programs()


def search(config: Config, seed: int, deadline: float, corpus: Path | None,
           known: set[str], on_case: Callable[[CaseResult], None] | None = None,
           stop_at_first: bool = False, strategy: Any = None,
           max_examples: int | None = None, minimize_tries: int = 300) -> list[CaseResult]:
    """Search until `deadline` (time.monotonic) or `max_examples` cases; return the shrunk
    divergences found (one per new signature)."""
    strategy = strategy if strategy is not None else default_strategy()
    rng = random.Random(seed)
    found: list[CaseResult] = []
    ran = 0

    while time.monotonic() < deadline and (max_examples is None or ran < max_examples):
        first: list[CaseResult] = []

        def diverges_newly(program: Program) -> bool:
            nonlocal ran
            # Out of budget: stop generating, but once a divergence is being shrunk keep
            # answering truthfully, or Hypothesis rightly calls the condition flaky.
            if not first and (time.monotonic() >= deadline or (max_examples is not None and ran >= max_examples)):
                return False
            ran += 1
            result = run_case(program, config)
            if on_case is not None:
                on_case(result)
            if not result.diverged:
                return False
            key = corpus_mod.signature_key(result.verdict.divergence.signature)
            if key in known:
                return False
            if not first:
                first.append(result)
                if corpus is not None:      # keep it now: a kill during shrinking loses nothing
                    corpus_mod.save(corpus, reproducer_for(result, config, seed))
            return True

        batch = BATCH if max_examples is None else max(1, min(BATCH, max_examples - ran))
        try:
            program = find(strategy, diverges_newly, random=rng, settings=settings(
                max_examples=batch, database=None, deadline=None,
                suppress_health_check=list(HealthCheck)))
        except (NoSuchExample, Unsatisfiable):
            continue
        except Flaky:
            # The backend answered differently for the same program (a wall-clock budget hit
            # under load, say): keep the first sighting, unshrunk but real.
            if not first:
                continue
            program = first[0].program
        result = run_case(program, config)
        if not result.diverged:       # flaky under replay: keep the first sighting instead
            result = first[0]
        elif minimize_tries:
            result = _minimize_result(result, config, minimize_tries)
        known.update(corpus_mod.signature_key(r.verdict.divergence.signature) for r in (first[0], result))
        if corpus is not None:
            corpus_mod.save(corpus, reproducer_for(result, config, seed))
        found.append(result)
        if stop_at_first:
            break
        seed = rng.randrange(1 << 32)
    return found


def _minimize_result(result: CaseResult, config: Config, tries: int) -> CaseResult:
    """Hypothesis shrinks by its own measure; finish with the program-level minimiser, keeping
    the divergence's signature so the reproducer still shows the same bug."""
    from ..minimize import minimize

    signature = result.verdict.divergence.signature
    best = [result]

    def same_divergence(program: Program) -> bool:
        candidate = run_case(program, config)
        if candidate.diverged and candidate.verdict.divergence.signature == signature:
            best[0] = candidate
            return True
        return False

    smallest = minimize(result.program, same_divergence, max_tries=tries)
    return best[0] if best[0].program == smallest else result


# --- processes ---------------------------------------------------------------------------------

def _worker(index: int, config: Config, seed: int, deadline_in: float, max_examples: int | None,
            corpus: str | None, messages: Any) -> None:
    deadline = time.monotonic() + deadline_in
    known = {p.stem for p in corpus_mod.list_corpus(Path(corpus))} if corpus else set()
    stats = {"cases": 0, "divergences": 0, "inconclusive": 0, "coverage": set()}
    last = [time.monotonic()]

    def flush() -> None:
        messages.put(("stats", index, {**stats, "coverage": sorted(stats["coverage"])}))
        stats.update(cases=0, divergences=0, inconclusive=0, coverage=set())
        last[0] = time.monotonic()

    def on_case(result: CaseResult) -> None:
        stats["cases"] += 1
        status = result.verdict.status
        if status == "divergence":
            stats["divergences"] += 1
        elif status == "inconclusive":
            stats["inconclusive"] += 1
        stats["coverage"] |= set(result.verdict.coverage)
        if time.monotonic() - last[0] > REPORT_EVERY:
            flush()

    try:
        # Reproducers go straight to the corpus; the parent lists the new files at the end.
        search(config, seed, deadline, Path(corpus) if corpus else None, known,
               on_case=on_case, max_examples=max_examples)
        flush()
    except KeyboardInterrupt:
        flush()
    messages.put(("done", index, None))


def run_campaign(config: Config, seconds: float | None, examples: int | None, seed: int,
                 workers: int, corpus: Path, out: Any = sys.stderr) -> Stats:
    """Run `workers` processes until the time or example budget is spent; return merged stats."""
    corpus.mkdir(parents=True, exist_ok=True)
    seconds = seconds if seconds is not None else (1e9 if examples else 60.0)
    per_worker = None if examples is None else max(1, -(-examples // workers))
    context = multiprocessing.get_context("fork")
    messages = context.Queue()
    procs = [context.Process(target=_worker, daemon=True,
                             args=(i, config, seed + i * 7919, seconds, per_worker, str(corpus), messages))
             for i in range(workers)]
    stats = Stats()
    start = time.monotonic()
    for proc in procs:
        proc.start()
    done = 0
    tty = hasattr(out, "isatty") and out.isatty()
    last_line = 0.0
    try:
        while done < workers:
            try:
                kind, _, payload = messages.get(timeout=0.5)
            except queue.Empty:
                if not any(p.is_alive() for p in procs):
                    break
                kind, payload = "tick", None
            if kind == "stats":
                stats.merge(payload)
            elif kind == "done":
                done += 1
            now = time.monotonic()
            if tty or now - last_line > 10:
                _progress(out, stats, now - start, seconds, tty)
                last_line = now
    except KeyboardInterrupt:
        out.write("\ninterrupted: stopping workers; every reproducer found so far is in the corpus\n")
    finally:
        for proc in procs:
            proc.join(timeout=2)
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=2)
        # Drain what the workers said before they stopped.
        while True:
            try:
                kind, _, payload = messages.get_nowait()
            except (queue.Empty, OSError, ValueError):
                break
            if kind == "stats":
                stats.merge(payload)
    _progress(out, stats, time.monotonic() - start, seconds, tty)
    if tty:
        out.write("\n")
    return stats


def _progress(out: Any, stats: Stats, elapsed: float, budget: float, tty: bool) -> None:
    rate = stats.cases / elapsed if elapsed > 0 else 0.0
    budget_text = f"/{budget:.0f}s" if budget < 1e8 else "s"
    line = (f"{elapsed:6.1f}{budget_text}  cases {stats.cases}  ({rate:.0f}/s)  "
            f"divergences {stats.divergences}  inconclusive {stats.inconclusive}")
    out.write(("\r" + line) if tty else (line + "\n"))
    out.flush()


def default_workers() -> int:
    return max(1, os.cpu_count() or 1)
