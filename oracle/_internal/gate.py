"""`forkspec gate`: the CI regression gate.

Three stages, each a JUnit suite: the proof suite; every reproducer in the corpus (one with a
planted bug must still diverge — forkspec still catches it; one without must pass — the bug it
found stays fixed); a fixed-seed fuzz budget on both fork strategies, which must find nothing.
Exit 0 only if everything passes.
"""
from __future__ import annotations

import os
import sys
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

from ..errors import ForkspecError
from . import corpus as corpus_mod
from .campaign import format_divergence, search
from .pipeline import Config


@dataclass(frozen=True)
class GateCase:
    suite: str
    name: str
    ok: bool
    seconds: float
    message: str = ""
    skipped: bool = False


def _proof_cases() -> list[GateCase]:
    from ...specs import prove
    from .witness import program_for
    # A failed obligation's counterexample comes with the program that reaches it (or why none
    # does), so the JUnit report carries something `forkspec replay` runs.
    results = prove.run(jobs=max(1, os.cpu_count() or 1), witness=program_for)
    cases = []
    for r in results:
        # A skipped obligation is reported as skipped, with its reason, in every report
        # (never as a pass, never hidden); unknown and timeouts are failures.
        skipped = r.verdict == "skipped"
        ok = r.verdict == "proved" or skipped
        message = "" if r.verdict == "proved" else f"{r.verdict}: {r.counterexample or ''}".strip()
        if r.program:
            message += "\n" + r.program
        cases.append(GateCase("proofs", r.obligation, ok, r.seconds, message, skipped=skipped))
    return cases


def _linux_unavailable() -> str | None:
    from .linux import LinuxBackend
    ok, why = LinuxBackend.available()
    return None if ok else why


def _corpus_cases(corpus: Path) -> list[GateCase]:
    from ..cli import replay_file
    cases = []
    linux_missing: list[str | None] = []
    for path in corpus_mod.list_corpus(corpus):
        start = time.perf_counter()
        try:
            repro = corpus_mod.load(path)
            if repro.meta.get("backend") in ("linux", "three-way"):
                if not linux_missing:
                    linux_missing.append(_linux_unavailable())
                if linux_missing[0]:
                    cases.append(GateCase("corpus", path.name, True, 0.0,
                                          f"needs the Linux backend: {linux_missing[0]}", skipped=True))
                    continue
            status, result = replay_file(path)
        except ForkspecError as err:
            cases.append(GateCase("corpus", path.name, False, time.perf_counter() - start, str(err)))
            continue
        planted = repro.meta.get("plant", "-") not in ("", "-")
        want = "divergence" if planted else "pass"
        ok = status == want
        message = ""
        if not ok:
            message = (f"expected {want}, got {status}"
                       + (":\n" + format_divergence(result.verdict.divergence) if result.diverged else
                          f": {result.verdict.reason}"))
        cases.append(GateCase("corpus", path.name, ok, time.perf_counter() - start, message))
    return cases


def _fuzz_cases(examples: int, seed: int) -> list[GateCase]:
    cases = []
    for strategy in ("eager", "cow"):
        start = time.perf_counter()
        found = search(Config(fork_strategy=strategy), seed, deadline=float("inf"), corpus=None, known=set(),
                       max_examples=max(1, examples // 2))
        message = "\n\n".join(format_divergence(r.verdict.divergence) for r in found)
        cases.append(GateCase("fuzz", f"impl-{strategy}-seed{seed}-{examples // 2}-examples", not found,
                              time.perf_counter() - start, message))
    return cases


def write_junit(path: Path, cases: list[GateCase]) -> None:
    root = ET.Element("testsuites", name="forkspec gate")
    for suite in dict.fromkeys(c.suite for c in cases):
        members = [c for c in cases if c.suite == suite]
        node = ET.SubElement(root, "testsuite", name=suite, tests=str(len(members)),
                             failures=str(sum(not c.ok and not c.skipped for c in members)),
                             skipped=str(sum(c.skipped for c in members)),
                             time=f"{sum(c.seconds for c in members):.3f}")
        for case in members:
            item = ET.SubElement(node, "testcase", classname=f"forkspec.{suite}", name=case.name,
                                 time=f"{case.seconds:.3f}")
            if case.skipped:
                ET.SubElement(item, "skipped", message=case.message[:200])
            elif not case.ok:
                failure = ET.SubElement(item, "failure", message=case.message.splitlines()[0][:200] if case.message else "failed")
                failure.text = case.message
    path.parent.mkdir(parents=True, exist_ok=True)
    ET.ElementTree(root).write(path, encoding="utf-8", xml_declaration=True)


def run_gate(corpus: Path, examples: int, seed: int, junit: Path | None, proofs: bool, out=sys.stdout) -> int:
    cases: list[GateCase] = []
    stages = []
    if proofs:
        stages.append(("proofs", _proof_cases))
    stages += [("corpus", lambda: _corpus_cases(corpus)), ("fuzz", lambda: _fuzz_cases(examples, seed))]
    for name, stage in stages:
        start = time.perf_counter()
        got = stage()
        cases += got
        failed = [c for c in got if not c.ok and not c.skipped]
        skipped = [c for c in got if c.skipped]
        out.write(f"{name:<7} {len(got) - len(failed) - len(skipped):4d} passed  {len(failed):3d} failed  "
                  f"{len(skipped):3d} skipped  {time.perf_counter() - start:6.1f} s\n")
        for case in failed[:5]:
            first = case.message.splitlines()[0] if case.message else ""
            out.write(f"   FAIL {case.name}: {first}\n")
        if len(failed) > 5:
            out.write(f"   ... and {len(failed) - 5} more (see the JUnit report)\n")
        out.flush()
    if junit is not None:
        write_junit(junit, cases)
        out.write(f"JUnit report: {junit}\n")
    failed = sum(not c.ok and not c.skipped for c in cases)
    skipped = sum(c.skipped for c in cases)
    out.write(f"gate: {'PASS' if not failed else 'FAIL'} ({len(cases) - failed - skipped} passed, {failed} failed, "
              f"{skipped} skipped)\n")
    return 0 if not failed else 1
