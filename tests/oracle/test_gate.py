"""forkspec gate: corpus expectations, JUnit output, exit codes."""
from __future__ import annotations

import io
import xml.etree.ElementTree as ET
from pathlib import Path

from forkspec.oracle._internal import corpus
from forkspec.oracle._internal.gate import run_gate
from forkspec.oracle.encoding import dumps
from forkspec.oracle.program import Image, Program, Ref, Step

# Fork with nothing else: with elf-no-vmas planted the child faults on its first instruction.
FORK_STEP = Step("fork", (), result=1, child=(Step("exit", (3,)),), parent=(Step("wait4", (Ref(1), 0), result=2),))
FORK = Program((Image((FORK_STEP,)),))
QUIET = Program((Image((Step("getpid", (), result=1),)),))


def repro(program: Program, plant: str) -> corpus.Reproducer:
    return corpus.Reproducer(meta={"backend": "impl", "fork-strategy": "eager", "plant": plant,
                                   "signature": f"test {plant} {len(program.steps)}"},
                             divergence="", program_text=dumps(program))


def gate(tmp_path: Path, *repros: corpus.Reproducer) -> tuple[int, str, ET.Element]:
    for r in repros:
        corpus.save(tmp_path / "corpus", r)
    out = io.StringIO()
    code = run_gate(tmp_path / "corpus", examples=20, seed=0, junit=tmp_path / "gate.xml", proofs=False, out=out)
    return code, out.getvalue(), ET.parse(tmp_path / "gate.xml").getroot()


def test_planted_bug_still_caught_and_fixed_bug_still_passing_pass_the_gate(tmp_path: Path) -> None:
    code, text, junit = gate(tmp_path, repro(FORK, "elf-no-vmas"), repro(FORK, "-"))
    assert code == 0, text
    assert "gate: PASS" in text
    corpus_suite = junit.find("testsuite[@name='corpus']")
    assert corpus_suite.get("tests") == "2" and corpus_suite.get("failures") == "0"


def test_a_reproducer_that_no_longer_catches_its_bug_fails_the_gate(tmp_path: Path) -> None:
    code, text, junit = gate(tmp_path, repro(QUIET, "elf-no-vmas"))
    assert code == 1
    assert "expected divergence, got pass" in text
    failure = junit.find(".//testcase/failure")
    assert failure is not None and "expected divergence" in failure.get("message")


def test_linux_reproducers_are_skipped_with_the_reason_where_linux_cannot_run(tmp_path: Path, monkeypatch) -> None:
    from forkspec.oracle._internal import gate as gate_mod
    monkeypatch.setattr(gate_mod, "_linux_unavailable", lambda: "ptrace is not permitted")
    linux = corpus.Reproducer(meta={"backend": "linux", "plant": "-", "signature": "linux one"},
                              divergence="", program_text=dumps(QUIET))
    code, text, junit = gate(tmp_path, linux)
    assert code == 0 and "1 skipped" in text
    skipped = junit.find(".//testcase/skipped")
    assert skipped is not None and "ptrace is not permitted" in skipped.get("message")


def _gate_with_munmap_unmapping_nothing(tmp: str) -> int:
    """In a process of its own (prove.call_apart): the gate's proofs, one obligation, with level 2's
    munmap broken (proved in that process, where the patch is)."""
    from forkspec.model import design as d
    from forkspec.oracle._internal import gate as gate_mod
    from forkspec.specs import prove
    orig_munmap, orig_run = d.munmap, prove.run

    def munmap_nothing(s, a, c):
        allowed, out, _ = orig_munmap(s, a, c)
        return allowed, out, s
    d.munmap = munmap_nothing
    prove.run = lambda **kw: orig_run(select="munmap-refines-level1", isolate=False, **kw)
    corpus_dir = Path(tmp) / "corpus"
    corpus_dir.mkdir()
    return gate_mod.run_gate(corpus_dir, examples=0, seed=0, junit=Path(tmp) / "gate.xml", proofs=True,
                             out=io.StringIO())


def test_a_failed_proof_reaches_the_junit_report_with_its_program(tmp_path: Path) -> None:
    """A level-2 munmap that unmaps nothing fails its refinement obligation; the gate fails and the
    JUnit failure carries the counterexample and the program that reaches it."""
    from forkspec.oracle.encoding import loads
    from forkspec.specs import prove

    code = prove.call_apart(_gate_with_munmap_unmapping_nothing, str(tmp_path))
    assert code == 1
    failure = ET.parse(tmp_path / "gate.xml").getroot().find(".//testsuite[@name='proofs']/testcase/failure")
    assert failure is not None
    text = (failure.get("message") or "") + (failure.text or "")
    assert "before:" in text
    program_text = text[text.index("# forkspec-program v1"):]
    assert any(step.op == "munmap" for step in loads(program_text).steps)
