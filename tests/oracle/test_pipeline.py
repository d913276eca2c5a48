"""run_case: Linux divergences are rerun before they count; three-way labels the backend."""
from __future__ import annotations

import dataclasses

import pytest

from forkspec.oracle._internal import pipeline
from forkspec.oracle._internal.pipeline import LINUX_RERUNS, CaseResult, Config, run_case
from forkspec.oracle.check import Divergence, Verdict
from forkspec.oracle.errors import InvalidArgument
from forkspec.oracle.program import Image, Program, Step
from forkspec.specs.trace import Trace

PROGRAM = Program((Image((Step("getpid", (), result=1),)),))


def verdict(status: str, signature=("getpid", "value", "value")) -> Verdict:
    div = None
    if status == "divergence":
        div = Divergence(0, "root", "getpid", "2", "3", "", signature)
    return Verdict(status=status, divergence=div, reason=status, coverage=frozenset())


def scripted(monkeypatch, statuses):
    """Make each backend run answer the next scripted verdict; returns the calls made."""
    calls = []

    def fake(program, build, config):
        calls.append(config.backend)
        status, signature = statuses[len(calls) - 1]
        return CaseResult(program, verdict(status, signature), Trace((), config.backend), build)
    monkeypatch.setattr(pipeline, "_run_once", fake)
    return calls


SIG = ("getpid", "value", "value")


def test_linux_divergence_counts_only_if_every_rerun_shows_it(monkeypatch) -> None:
    calls = scripted(monkeypatch, [("divergence", SIG)] * (1 + LINUX_RERUNS))
    result = run_case(PROGRAM, Config(backend="linux"))
    assert result.diverged and len(calls) == 1 + LINUX_RERUNS


@pytest.mark.parametrize("rerun", [("pass", SIG), ("divergence", ("getpid", "value", "ESRCH"))])
def test_linux_divergence_that_does_not_repeat_is_inconclusive(monkeypatch, rerun) -> None:
    scripted(monkeypatch, [("divergence", SIG), ("divergence", SIG), rerun, ("divergence", SIG)])
    result = run_case(PROGRAM, Config(backend="linux"))
    assert result.verdict.status == "inconclusive" and "flaky on Linux" in result.verdict.reason


def test_impl_divergence_is_not_rerun(monkeypatch) -> None:
    calls = scripted(monkeypatch, [("divergence", SIG)])
    assert run_case(PROGRAM, Config()).diverged and calls == ["impl"]


def test_three_way_names_the_diverging_backend(monkeypatch) -> None:
    calls = scripted(monkeypatch, [("pass", SIG)] + [("divergence", SIG)] * (1 + LINUX_RERUNS))
    result = run_case(PROGRAM, Config(backend="three-way"))
    assert calls[0] == "impl" and set(calls[1:]) == {"linux"}
    assert result.verdict.divergence.signature[0] == "linux: getpid"


def test_three_way_checks_both_backends_for_real() -> None:
    result = run_case(PROGRAM, Config(backend="three-way"))
    assert result.verdict.status == "pass", result.verdict


def test_plant_needs_impl() -> None:
    with pytest.raises(InvalidArgument, match="only in impl"):
        Config(backend="linux", plant=frozenset({"elf-no-vmas"}))
    with pytest.raises(InvalidArgument, match="unknown bug"):
        Config(plant=frozenset({"no-such-bug"}))


def test_backend_crash_is_a_divergence_with_its_own_signature(monkeypatch) -> None:
    class Exploding:
        def run(self, *args, **kwargs):
            raise OverflowError("int too big to convert")
    monkeypatch.setattr(pipeline, "make_backend", lambda config: Exploding())
    result = run_case(PROGRAM, Config())
    assert result.diverged
    sig = result.verdict.divergence.signature
    assert sig[0] == "crash" and sig[1] == "OverflowError" and "test_pipeline.py" in sig[2]


def test_invariants_on_impl_state_catch_a_latent_bug_before_any_fork() -> None:
    """DESIGN.md contract 6: elf-no-vmas shows at load time (present PTEs outside every VMA),
    long before a fork child faults; the user-visible check alone sees nothing here."""
    planted = Config(plant=frozenset({"elf-no-vmas"}))
    assert run_case(PROGRAM, planted).verdict.status == "pass"          # no fork: nothing visible
    result = run_case(PROGRAM, dataclasses.replace(planted, check_invariants=True))
    assert result.diverged
    div = result.verdict.divergence
    assert div.signature[0] == "invariant" and "pte" in div.signature[1] and "vma" in div.signature[1]
    assert "exec" in div.step                                             # the first event: the load
    assert run_case(PROGRAM, Config(check_invariants=True)).verdict.status == "pass"
