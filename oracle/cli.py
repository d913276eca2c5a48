"""The `forkspec` command: run, fuzz, replay, gate, zoo, prove.

A bad argument gets one line on stderr and exit code 2; a ForkspecError gets one line and exit 2
as well; a divergence (or an unproved obligation) exits 1.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from .errors import ForkspecError, InvalidArgument

DEFAULT_CORPUS = "corpus"


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (`forkspec: error: ...`) and exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return value


def _seed(text: str) -> int:
    try:
        return int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer seed, got {text!r}") from None


def _add_kernel_options(parser: argparse.ArgumentParser, backends: tuple[str, ...] = ("impl", "linux")) -> None:
    parser.add_argument("--backend", choices=backends, default="impl",
                        help="where programs run: impl (the Unicorn kernel, default), linux (this machine's "
                             "kernel under ptrace)" + (", three-way (both, each checked against the model)"
                                                      if "three-way" in backends else ""))
    parser.add_argument("--fork-strategy", choices=("eager", "cow"), default="eager",
                        help="impl's fork: eager copy by VMA or copy-on-write (default: eager)")
    parser.add_argument("--plant", action="append", default=[], metavar="BUG",
                        help="plant a bug of the zoo in impl (repeatable); see `forkspec zoo --list`")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="forkspec", description=(
        "Differential checking of fork, execve and the memory syscalls: generated programs run on "
        "a kernel (impl: a Unicorn-backed kernel; linux: this machine's) and every step is checked "
        "against a Z3-proved reference model."))
    parser.add_argument("--version", action="version", version=f"forkspec {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    run = sub.add_parser("run", help="run a static x86-64 ELF on a kernel and exit with its status")
    run.add_argument("image", help="path of a static x86-64 ELF file")
    _add_kernel_options(run)
    run.add_argument("--trace", action="store_true", help="print every event (syscalls strace-style)")
    run.add_argument("--instructions", type=_positive_int, default=50_000_000,
                     help="instruction budget (impl; default 50M)")

    fuzz = sub.add_parser("fuzz", help="run a differential fuzzing campaign (the main job)")
    _add_kernel_options(fuzz, ("impl", "linux", "three-way"))
    fuzz.add_argument("--time", type=_positive_float, default=None, metavar="SECONDS",
                      help="time budget (default 60 s unless --examples is given)")
    fuzz.add_argument("--examples", type=_positive_int, default=None, help="budget in cases")
    fuzz.add_argument("--seed", type=_seed, default=0)
    fuzz.add_argument("--workers", type=_positive_int, default=None, help="processes (default: one per core)")
    fuzz.add_argument("--corpus", default=DEFAULT_CORPUS, help=f"reproducer directory (default: ./{DEFAULT_CORPUS})")
    fuzz.add_argument("--check-invariants", action="store_true",
                      help="impl: evaluate the proved invariants on the kernel's state after every event")

    replay = sub.add_parser("replay", help="rerun reproducers (or program text files); exit 1 if any diverges")
    replay.add_argument("files", nargs="+", metavar="FILE")
    replay.add_argument("--backend", choices=("impl", "linux", "three-way"), default=None,
                        help="override the backend recorded in each reproducer")

    gate = sub.add_parser("gate", help="CI regression gate: proofs, corpus, fixed-seed fuzz budget")
    gate.add_argument("--corpus", default=DEFAULT_CORPUS)
    gate.add_argument("--examples", type=_positive_int, default=300, help="fixed-seed fuzz budget (default 300)")
    gate.add_argument("--seed", type=_seed, default=0)
    gate.add_argument("--junit", default=None, metavar="FILE", help="write JUnit XML here")
    gate.add_argument("--skip-proofs", action="store_true", help="leave out the proof suite")

    zoo = sub.add_parser("zoo", help="plant each zoo bug in turn and fuzz until it is caught")
    zoo.add_argument("--list", action="store_true", help="list the zoo and exit")
    zoo.add_argument("--bug", action="append", default=[], help="only these bugs (repeatable)")
    zoo.add_argument("--time", type=_positive_float, default=60.0, metavar="SECONDS",
                     help="give up on a bug after this long (default 60)")
    zoo.add_argument("--seed", type=_seed, default=0)
    zoo.add_argument("--workers", type=_positive_int, default=None)
    zoo.add_argument("--fork-strategy", choices=("eager", "cow"), default="eager")
    zoo.add_argument("--corpus", default=None, help="also save each shrunk reproducer here")

    prove = sub.add_parser("prove", help="discharge the model's proof obligations with Z3")
    prove.add_argument("-k", dest="select", default=None, metavar="PATTERN", help="only obligations matching")
    prove.add_argument("--json", action="store_true", help="print results as JSON")
    prove.add_argument("--seed", type=_seed, default=0, help="Z3 random seed")
    prove.add_argument("--emit-programs", default=None, metavar="DIR",
                       help="write each failed obligation's counterexample as a program to DIR/<obligation>.fsp "
                            "(run it with forkspec replay)")
    return parser


def _version() -> str:
    from . import __version__
    return __version__


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = {"run": cmd_run, "fuzz": cmd_fuzz, "replay": cmd_replay, "gate": cmd_gate,
               "zoo": cmd_zoo, "prove": cmd_prove}[args.command]
    try:
        return handler(args)
    except ForkspecError as err:
        print(f"forkspec: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("forkspec: interrupted", file=sys.stderr)
        return 130


# --- run -----------------------------------------------------------------------------------------

def cmd_run(args: argparse.Namespace) -> int:
    from ..specs.trace import Budget, Exit, Inconclusive, Output
    from ._internal.pipeline import Config, make_backend
    from ._internal.tracefmt import format_event

    path = Path(args.image)
    try:
        image = path.read_bytes()
    except OSError as err:
        raise InvalidArgument(f"cannot read {args.image}: {err.strerror}") from None
    config = Config(backend=args.backend, fork_strategy=args.fork_strategy, plant=frozenset(args.plant))
    backend = make_backend(config)
    name = path.name
    trace = backend.run({name: image}, name, Budget(instructions=args.instructions, wall_seconds=60.0))
    root_status = None
    root_pid = None
    for event in trace.events:
        if args.trace:
            print(format_event(event), file=sys.stderr)
        if isinstance(event, Output):
            stream = sys.stdout if event.fd == 1 else sys.stderr
            stream.buffer.write(event.data)
            stream.flush()
        if root_pid is None and hasattr(event, "pid"):
            root_pid = event.pid
        if isinstance(event, Exit) and event.pid == root_pid:
            root_status = event.status
        if isinstance(event, Inconclusive):
            print(f"forkspec: run stopped: {event.reason}", file=sys.stderr)
            return 124
    if root_status is None:
        return 1
    if root_status & 0x7F:                       # killed by a signal: shell convention 128+signo
        return 128 + (root_status & 0x7F)
    return (root_status >> 8) & 0xFF


# --- fuzz ----------------------------------------------------------------------------------------

def cmd_fuzz(args: argparse.Namespace) -> int:
    from ._internal.campaign import default_workers, run_campaign
    from ._internal.pipeline import Config

    config = Config(backend=args.backend, fork_strategy=args.fork_strategy, plant=frozenset(args.plant),
                    check_invariants=args.check_invariants)
    if args.backend in ("linux", "three-way"):
        from ._internal.linux import LinuxBackend
        ok, why = LinuxBackend.available()
        if not ok:
            raise InvalidArgument(f"the linux backend cannot run here: {why}")
    workers = args.workers or default_workers()
    corpus = Path(args.corpus)
    before = {p.name for p in _corpus_files(corpus)}
    print(f"forkspec fuzz: backend {config.backend} ({config.profile.name} profile), fork {config.fork_strategy}, "
          f"plant {','.join(sorted(config.plant)) or 'none'}, seed {args.seed}, workers {workers}, corpus {corpus}/",
          file=sys.stderr)
    stats = run_campaign(config, args.time, args.examples, args.seed, workers, corpus)
    new = [p for p in _corpus_files(corpus) if p.name not in before]
    print(_coverage_summary(stats.coverage))
    if new:
        print(f"{len(new)} new reproducer(s):")
        for path in new:
            print(f"  {path}   (forkspec replay {path})")
        return 1
    print(f"no divergence in {stats.cases} cases ({stats.inconclusive} inconclusive)")
    return 0


def _corpus_files(corpus: Path) -> list[Path]:
    from ._internal.corpus import list_corpus
    return list_corpus(corpus)


def _coverage_summary(coverage: set[str]) -> str:
    if not coverage:
        return "coverage: (none recorded)"
    by_group: dict[str, list[str]] = {}
    for item in sorted(coverage):
        group, _, clause = item.partition(".")       # the checker names clauses "syscall.clause"
        by_group.setdefault(group, []).append(clause or "-")
    lines = [f"coverage: {len(coverage)} model clauses exercised, by syscall or step:"]
    for group, clauses in sorted(by_group.items()):
        shown = ", ".join(clauses[:10]) + (" ..." if len(clauses) > 10 else "")
        lines.append(f"  {group:<12} {shown}")
    return "\n".join(lines)


# --- replay --------------------------------------------------------------------------------------

def replay_file(path: Path, backend: str | None = None) -> tuple[str, Any]:
    """Replay one reproducer; returns (status, CaseResult)."""
    import dataclasses

    from ._internal import corpus
    from ._internal.pipeline import Config, run_case

    from .encoding import loads
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise InvalidArgument(f"cannot read {path}: {err.strerror}") from None
    if text.startswith("# forkspec-program"):      # a bare program text: run it on the defaults
        program, meta = loads(text), {}
    else:
        repro = corpus.loads(text, origin=str(path))
        program, meta = loads(repro.program_text), repro.meta
    plant = frozenset(p for p in meta.get("plant", "-").split(",") if p and p != "-")
    config = Config(backend=meta.get("backend", "impl"), fork_strategy=meta.get("fork-strategy", "eager"),
                    plant=plant)
    if backend is not None:
        config = dataclasses.replace(config, backend=backend, plant=plant if backend != "linux" else frozenset())
    result = run_case(program, config)
    return result.verdict.status, result


def cmd_replay(args: argparse.Namespace) -> int:
    from ..impl import backend  # noqa: F401 — one-time imports (Unicorn, z3) are not part of a replay's time
    from ._internal import codegen, pipeline  # noqa: F401
    from ._internal.campaign import format_divergence
    from .check import check  # noqa: F401

    still = 0
    for name in args.files:
        start = time.perf_counter()
        status, result = replay_file(Path(name), args.backend)
        ms = (time.perf_counter() - start) * 1000
        print(f"{name}: {status} ({ms:.0f} ms)")
        if status == "divergence":
            still += 1
            print("  " + format_divergence(result.verdict.divergence).replace("\n", "\n  "))
        elif status == "inconclusive":
            print(f"  {result.verdict.reason}")
    return 1 if still else 0


# --- gate ----------------------------------------------------------------------------------------

def cmd_gate(args: argparse.Namespace) -> int:
    from ._internal.gate import run_gate
    return run_gate(corpus=Path(args.corpus), examples=args.examples, seed=args.seed,
                    junit=Path(args.junit) if args.junit else None, proofs=not args.skip_proofs)


# --- zoo -----------------------------------------------------------------------------------------

def cmd_zoo(args: argparse.Namespace) -> int:
    from ..impl.zoo import BUGS
    from ._internal.zoo import run_zoo

    if args.list:
        width = max(map(len, BUGS))
        for name, description in sorted(BUGS.items()):
            print(f"{name:<{width}}  {description}")
        return 0
    unknown = [b for b in args.bug if b not in BUGS]
    if unknown:
        raise InvalidArgument(f"unknown bug {unknown[0]!r}; the zoo has: {', '.join(sorted(BUGS))}")
    bugs = args.bug or sorted(BUGS)
    return run_zoo(bugs, seconds=args.time, seed=args.seed, workers=args.workers or os.cpu_count() or 1,
                   fork_strategy=args.fork_strategy, corpus=Path(args.corpus) if args.corpus else None)


# --- prove ---------------------------------------------------------------------------------------

def cmd_prove(args: argparse.Namespace) -> int:
    from ..specs import prove
    argv: list[str] = []
    if args.select:
        argv += ["-k", args.select]
    if args.json:
        argv.append("--json")
    argv += ["--seed", str(args.seed)]
    if args.emit_programs is not None:
        argv += ["--emit-programs", args.emit_programs]
    # Counterexamples become programs (oracle's witness builder; specs/ does not import oracle/).
    from ._internal.witness import program_for
    return prove.main(argv, witness=program_for)


if __name__ == "__main__":
    sys.exit(main())
