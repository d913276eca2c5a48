"""Conformance campaign on this machine's kernel: generated programs run under the Linux backend
and checked by the model; a divergence counts only if three reruns diverge with the same
signature (otherwise it is reported as flaky).

    .venv/bin/python bench/campaign_linux.py [--programs 10000] [--schedule child-first|parent-first]
                                             [--seed 0] [--json out.json] [--corpus DIR]

Programs are drawn from `programs()` and `malformed_programs()` (3:1). Prints the counts, every
divergence signature with its count and the shortest program that showed it, the kernel and the
machine.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path

from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from forkspec.oracle._internal.codegen import compile_program
from forkspec.oracle._internal.linux import LinuxBackend
from forkspec.oracle.check import check
from forkspec.oracle.encoding import dumps
from forkspec.oracle.strategies import malformed_programs, programs
from forkspec.specs.profiles import LINUX


from machine import cpu_model  # noqa: E402 (bench/ is on sys.path when run as a script)


def save_reproducer(corpus_dir: Path, program, build, trace, divergence, args) -> Path:
    """A reproducer in the oracle's format (as oracle/_internal/campaign.py's reproducer_for
    builds it), for the Linux backend with nothing planted."""
    from forkspec.oracle import __version__
    from forkspec.oracle._internal import corpus
    from forkspec.oracle._internal.campaign import format_divergence
    from forkspec.oracle._internal.disasm import disassemble_build

    meta = {"forkspec": __version__, "backend": "linux", "fork-strategy": "eager", "plant": "-",
            "seed": str(args.seed), "signature": " | ".join(divergence.signature),
            "steps": str(program.step_count()), "platform": trace.platform or platform.release(),
            "schedule": args.schedule}
    repro = corpus.Reproducer(meta=meta, divergence=format_divergence(divergence), program_text=dumps(program),
                              disassembly=disassemble_build(build), images=tuple(sorted(build.images.items())))
    return corpus.save(corpus_dir, repro)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--programs", type=int, default=10_000)
    parser.add_argument("--schedule", choices=LinuxBackend.SCHEDULES, default="child-first")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument("--corpus", default=None,
                        help="save one reproducer per divergence signature here (the shortest program; "
                             "`forkspec replay` reruns it on Linux)")
    args = parser.parse_args()
    ok, why = LinuxBackend.available()
    if not ok:
        print(f"linux backend unavailable: {why}")
        return 1
    backend = LinuxBackend(schedule=args.schedule)
    counts: collections.Counter = collections.Counter()
    signatures: collections.Counter = collections.Counter()
    shortest: dict[str, tuple[str, str]] = {}
    start = time.time()

    def record(key: tuple, program_text: str, detail: str) -> None:
        signatures[key] += 1
        name = " | ".join(map(str, key))
        if name not in shortest or len(program_text) < len(shortest[name][0]):
            shortest[name] = (program_text, detail)

    @seed(args.seed)
    @settings(max_examples=args.programs, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(st.one_of(programs(), programs(), programs(), malformed_programs()))
    def case(program) -> None:
        build = compile_program(program)
        trace = backend.run(build.images, build.entry)
        try:
            verdict = check(program, build, trace, LINUX)
        except Exception as exc:                    # noqa: BLE001 — a checker crash is data here
            counts["checker crash"] += 1
            record(("checker crash", type(exc).__name__, str(exc)[:80]), dumps(program),
                   traceback.format_exc()[-800:])
            return
        counts[verdict.status] += 1
        if verdict.status == "inconclusive":
            signatures[("inconclusive", verdict.reason[:90])] += 1
        elif verdict.status == "divergence":
            d = verdict.divergence
            same = 0
            for _ in range(3):
                again = check(program, build, backend.run(build.images, build.entry), LINUX)
                same += again.status == "divergence" and again.divergence.signature == d.signature
            key = tuple(d.signature) if same == 3 else ("flaky",) + tuple(d.signature)
            counts["flaky"] += same != 3
            name = " | ".join(map(str, key))
            text = dumps(program)
            if args.corpus and same == 3 and (name not in shortest or len(text) < len(shortest[name][0])):
                save_reproducer(Path(args.corpus), program, build, trace, d, args)
            record(key, text, f"{d.process}: {d.step}\n  expected {d.expected}\n  observed {d.observed}")

    case()
    elapsed = time.time() - start
    backend.close()
    total = sum(counts[k] for k in ("pass", "divergence", "inconclusive", "checker crash"))
    print(f"programs: {total} in {elapsed:.0f} s ({total / elapsed:.1f}/s, generation and checking included); "
          f"schedule {args.schedule}; seed {args.seed}")
    print("verdicts: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    for key, n in signatures.most_common():
        print(f"  {n:5d}  {' | '.join(map(str, key))}")
    for name, (text, detail) in shortest.items():
        print(f"\n=== {name}\n{text.rstrip()}\n--\n{detail}")
    print(f"\nkernel: {platform.release()} {platform.version()}")
    print(f"machine: {platform.platform()}; cpus: {os.cpu_count()}; cpu: {cpu_model()}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"counts": dict(counts), "seconds": elapsed, "schedule": args.schedule,
                       "signatures": [[list(k), n] for k, n in signatures.most_common()],
                       "examples": shortest, "kernel": platform.release()}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
