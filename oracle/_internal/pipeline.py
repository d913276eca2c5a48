"""One differential case end to end: compile a program, run it on a backend, check the trace.

Everything that runs cases (fuzz, replay, gate, zoo) goes through `run_case`, so a reproducer
replays exactly the way it was found.
"""
from __future__ import annotations

import dataclasses
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...specs.profiles import PROFILES, Profile
from ...specs.trace import Budget, Trace
from ..errors import ForkspecError, InvalidArgument
from ..program import Program

BACKENDS = ("impl", "linux", "three-way")
LINUX_RERUNS = 3             # a divergence on Linux is recorded only if every rerun shows it too
FORK_STRATEGIES = ("eager", "cow")


@dataclass(frozen=True)
class Config:
    """How a case is run: which backend, with what planted, under which budget."""
    backend: str = "impl"
    fork_strategy: str = "eager"
    plant: frozenset[str] = frozenset()
    budget: Budget = field(default_factory=lambda: Budget(instructions=2_000_000, wall_seconds=5.0))
    check_invariants: bool = False       # impl only: evaluate specs' invariants after every event

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise InvalidArgument(f"backend={self.backend!r}: expected one of {', '.join(BACKENDS)}")
        if self.fork_strategy not in FORK_STRATEGIES:
            raise InvalidArgument(
                f"fork strategy={self.fork_strategy!r}: expected one of {', '.join(FORK_STRATEGIES)}")
        if self.plant and self.backend == "linux":
            raise InvalidArgument("bugs can be planted only in impl (--backend impl or three-way)")
        if self.plant:
            from ...impl.zoo import BUGS
            unknown = sorted(set(self.plant) - set(BUGS))
            if unknown:
                raise InvalidArgument(f"unknown bug {unknown[0]!r}; the zoo has: {', '.join(sorted(BUGS))}")

    @property
    def profile(self) -> Profile:
        return PROFILES["linux" if self.backend == "linux" else "levitate"]

    def describe(self) -> dict[str, str]:
        return {
            "backend": self.backend,
            "fork-strategy": self.fork_strategy,
            "plant": ",".join(sorted(self.plant)) or "-",
        }


@dataclass
class CaseResult:
    program: Program
    verdict: Any                # oracle.check.Verdict
    trace: Trace
    build: Any                  # oracle._internal.codegen.Build

    @property
    def diverged(self) -> bool:
        return self.verdict.status == "divergence"


_BACKEND_CACHE: dict[tuple, Any] = {}


def make_backend(config: Config) -> Any:
    """The backend for a config; backends are reusable across runs (impl keeps a booted machine)."""
    key = (config.backend, config.fork_strategy, config.plant)
    backend = _BACKEND_CACHE.get(key)
    if backend is None:
        if config.backend == "impl":
            from ...impl.backend import ImplBackend
            backend = ImplBackend(fork_strategy=config.fork_strategy, plant=frozenset(config.plant))
        else:
            from .linux import LinuxBackend
            backend = LinuxBackend()
        _BACKEND_CACHE[key] = backend
    return backend


def run_case(program: Program, config: Config) -> CaseResult:
    """Compile, run and check one program.

    three-way: the program runs on impl and on Linux, each trace checked against the model; the
    first divergence (impl's, then Linux's) is the verdict, its signature naming the backend.
    Linux: a divergence counts only if it shows on every one of LINUX_RERUNS reruns with the same
    signature; otherwise the case is inconclusive (flaky), never a divergence."""
    from .codegen import compile_program

    build = compile_program(program)
    if config.backend == "three-way":
        impl_result = _run_built(program, build, dataclasses.replace(config, backend="impl"))
        if impl_result.diverged:
            return _labelled(impl_result, "impl")
        linux_result = _run_built(program, build, dataclasses.replace(config, backend="linux", plant=frozenset()))
        if linux_result.diverged:
            return _labelled(linux_result, "linux")
        return impl_result if impl_result.verdict.status != "pass" else linux_result
    return _run_built(program, build, config)


def _labelled(result: CaseResult, backend: str) -> CaseResult:
    div = result.verdict.divergence
    div = dataclasses.replace(div, signature=(f"{backend}: {div.signature[0]}",) + tuple(div.signature[1:]))
    return dataclasses.replace(result, verdict=dataclasses.replace(result.verdict, divergence=div))


def _run_built(program: Program, build: Any, config: Config) -> CaseResult:
    result = _run_once(program, build, config)
    if config.backend != "linux" or not result.diverged:
        return result
    signature = result.verdict.divergence.signature
    for attempt in range(LINUX_RERUNS):
        again = _run_once(program, build, config)
        if not again.diverged or again.verdict.divergence.signature != signature:
            from ..check import Verdict
            return dataclasses.replace(result, verdict=Verdict(
                status="inconclusive", divergence=None, coverage=result.verdict.coverage,
                reason=f"flaky on Linux: diverged once ({' | '.join(signature)}), rerun {attempt + 1} gave "
                       f"{again.verdict.status}"))
    return result


def _run_once(program: Program, build: Any, config: Config) -> CaseResult:
    from ..check import check
    backend = make_backend(config)
    kwargs: dict[str, Any] = {}
    first_violation: list[tuple[int, Any, list[str]]] = []
    if config.check_invariants and config.backend == "impl":
        from ..abstraction import check_invariants
        seen = [0]

        def on_event(event: Any, kernel: Any) -> None:
            seen[0] += 1
            if not first_violation:          # the first broken state is the finding; later ones follow from it
                broken = check_invariants(kernel.raw_state())
                if broken:
                    first_violation.append((seen[0] - 1, event, broken))

        kwargs["on_event"] = on_event
    try:
        trace = backend.run(build.images, build.entry, config.budget, **kwargs)
    except ForkspecError:
        raise
    except Exception as err:        # noqa: BLE001 — a crash of the kernel under test is a finding
        return CaseResult(program=program, verdict=_crash_verdict(err), trace=Trace((), config.backend), build=build)
    verdict = check(program, build, trace, config.profile)
    if first_violation and verdict.status != "divergence":
        from ..check import Divergence, Verdict
        from .tracefmt import format_event
        index, event, broken = first_violation[0]
        verdict = Verdict(
            status="divergence", reason="kernel invariant violated", coverage=verdict.coverage,
            divergence=Divergence(
                event_index=index, process="kernel", step=f"after {format_event(event)}",
                expected="every proved invariant holds on impl's kernel state",
                observed="violated: " + ", ".join(broken), detail="",
                signature=("invariant", broken[0], "violated")))
    return CaseResult(program=program, verdict=verdict, trace=trace, build=build)


def _crash_verdict(err: Exception) -> Any:
    """A Python exception escaping a backend is the kernel panicking (impl) or the tracer
    failing: report it as a divergence whose signature names the exception and where it was
    raised, so distinct crashes are kept apart and the program that causes one is shrunk."""
    from ..check import Divergence, Verdict

    frames = traceback.extract_tb(err.__traceback__)
    where = f"{Path(frames[-1].filename).name}:{frames[-1].lineno} in {frames[-1].name}" if frames else "?"
    text = "".join(traceback.format_exception(type(err), err, err.__traceback__)[-6:])
    return Verdict(status="divergence", reason="backend crashed", coverage=frozenset(),
                   divergence=Divergence(event_index=-1, process="kernel", step="(backend run)",
                                         expected="the kernel keeps running", observed=f"{type(err).__name__}: {err}",
                                         detail=text, signature=("crash", type(err).__name__, where)))
