"""`forkspec prove`: discharge the proof obligations with Z3, one fresh solver and process each.

`run()` returns one ProofResult per obligation; `unknown` and timeouts are failures, never passes
(DESIGN.md "Proofs"). The resource limit is deterministic (`rlimit`), the wall-clock timeout is
only a backstop. A failed obligation carries its counterexample as a readable state: processes,
VMAs, PTEs and frames, decoded from the Z3 model; and, when the caller passes a `witness` (the
`forkspec prove` CLI passes oracle/_internal/witness.py's program_for: specs/ does not import
oracle/), as a program `forkspec replay` runs, or the reason there is none.
"""
from __future__ import annotations

import argparse
import fnmatch
import gc
import itertools
import json
import multiprocessing
import os
import pickle
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Sequence, TypeVar

import z3

from ..model import design as d
from ..model.logic import to_python
from .abi import PROT_EXEC, PROT_READ, PROT_WRITE
from .obligations import VACUITY_SUFFIX, Ctx, Obligation, all_obligations, pin, small_states, uninterpreted

# The limit that decides: Z3 resource units per query, deterministic across runs and machines.
# About 10 s of CPU (Z3 does 2-3.5 M units per CPU second here: bench/bench_prove_isolation.py).
DEFAULT_RLIMIT = 30_000_000
# Only a backstop. At 10 s it, not the rlimit, decided: under load (other jobs on the machine)
# obligations answered unknown that are proved on an idle machine; 60 s leaves room for a 6x slowdown.
DEFAULT_TIMEOUT_S = 60.0
PROVED, FAILED, UNKNOWN, SKIPPED = "proved", "failed", "unknown", "skipped"


@dataclass(frozen=True)
class ProofResult:
    obligation: str
    verdict: str                    # proved / failed / unknown / skipped
    seconds: float
    counterexample: str = ""        # a readable state for failed; the reason for unknown/skipped
    program: str = ""               # failed: the counterexample as program text, or "# no program: why"

    @property
    def ok(self) -> bool:
        return self.verdict in (PROVED, SKIPPED)


def select_obligations(select: str | None) -> list[Obligation]:
    """Obligations whose name contains `select` (or matches it as a glob pattern)."""
    obs = all_obligations()
    if not select:
        return obs
    return [o for o in obs if select in o.name or fnmatch.fnmatchcase(o.name, select)]


def _solve(o: Obligation, seed: int, rlimit: int, timeout_s: float,
           build: Callable[[], tuple] | None = None, assumptions: Sequence = ()) -> tuple[Any, z3.Solver, Ctx]:
    # Fresh-name counters restart per obligation: its terms do not depend on which obligations
    # were built before it in this process (Z3's own context state still does: see run()).
    d._fresh = itertools.count()
    hyps, goal, ctx = (build or o.build)()
    if o.tactic == "push-ite":
        # Pushing if-then-else through bit-vector operations turns shr(max(a, b)) into
        # max(shr a, shr b): VMA-piece bounds then compare directly, and verdicts stop depending on
        # the seed (measured: bench/bench_prove.py).
        hyps = [z3.simplify(h, push_ite_bv=True) for h in hyps]
        goal = z3.simplify(goal, push_ite_bv=True)
    if o.tactic == "bitblast":
        solver = z3.Then("simplify", "solve-eqs", "bit-blast", "sat").solver()
    else:
        solver = z3.Solver()
    solver.set("rlimit", rlimit)
    solver.set("timeout", max(1, int(timeout_s * 1000)))
    solver.set("random_seed", seed)
    if o.tactic != "bitblast":
        solver.set("smt.random_seed", seed)
    if o.tactic == "ematching":
        solver.set("smt.mbqi", False)      # instantiate by patterns only: unknown comes fast, never a pass
    solver.add(*hyps)
    solver.add(z3.Not(goal) if o.expect == "valid" else goal)
    return solver.check(*assumptions), solver, ctx


# Turns a failed obligation's model into program text: (model, obligation name, Ctx) -> str.
# oracle/ provides it (oracle/_internal/witness.py: program_for); specs/ does not import oracle/.
Witness = Callable[[Any, str, Any], str]


def prove_one(o: Obligation, seed: int = 0, rlimit: int = DEFAULT_RLIMIT, timeout_s: float = DEFAULT_TIMEOUT_S,
              witness: Witness | None = None) -> ProofResult:
    """Discharge one obligation on a fresh solver. When Z3 cannot decide a validity obligation,
    small states (maps with two entries) are searched for a counterexample: one found there is a
    real counterexample; otherwise the verdict stays unknown, which is a failure. `witness`, when
    given, also turns a counterexample into a program (ProofResult.program)."""
    if o.skip:
        return ProofResult(o.name, SKIPPED, 0.0, o.skip)
    start = time.perf_counter()
    if o.expect == "sat":
        return _check_sat(o, seed, rlimit, timeout_s, start)
    answer, solver, ctx = _solve(o, seed, rlimit, timeout_s)
    if answer == z3.sat:
        # A model over uninterpreted functions prints poorly: prefer a small state if there is one.
        with small_states():
            small, small_solver, small_ctx = _solve(o, seed, rlimit, timeout_s)
        if small == z3.sat:
            solver, ctx = small_solver, small_ctx
    elif answer == z3.unknown:
        reason = solver.reason_unknown()
        with small_states():
            small, small_solver, small_ctx = _solve(o, seed, rlimit, timeout_s)
        if small == z3.sat:
            answer, solver, ctx = small, small_solver, small_ctx
        else:
            return ProofResult(o.name, UNKNOWN, time.perf_counter() - start, f"z3 answered unknown: {reason}")
    seconds = time.perf_counter() - start
    if answer == z3.unknown:
        return ProofResult(o.name, UNKNOWN, seconds, f"z3 answered unknown: {solver.reason_unknown()}")
    if answer == z3.unsat:
        return ProofResult(o.name, PROVED, seconds)
    model = solver.model()
    return ProofResult(o.name, FAILED, seconds, describe(model, ctx),
                       witness(model, o.name, ctx) if witness is not None else "")


# Rounds of witness growth a pinned sat check tries before the unpinned query, and the largest
# witness per function (entries beyond a few made MBQI slow: 2 everywhere took up to 6 s, measured).
PIN_ROUNDS, PIN_MAX_ENTRIES = 8, 3


def _check_sat(o: Obligation, seed: int, rlimit: int, timeout_s: float, start: float) -> ProofResult:
    """A sat check. With `o.pin`, first on pinned witnesses (obligations.pin): every function zero
    but at a few keys, starting from none; while the pinned query is unsat, a probe query (one
    guarded extra entry per function, all guards assumed false) yields an unsat core naming the
    functions whose witness is too small, and those get one more entry. Sat on a pinned witness
    proves the hypotheses satisfiable. Otherwise the unpinned query decides: unsat there means the
    hypotheses contradict each other, unknown is a failure, as everywhere."""
    d._fresh = itertools.count()
    hyps, goal, ctx = o.build()
    terms = [*hyps, goal]
    tried = []
    if o.pin:
        sizes: dict = {}
        found = uninterpreted(terms)
        for _ in range(PIN_ROUNDS):
            # Any model of the probe query (guards true or false) is a pinned witness, so one query
            # per round: sat proves the check, unsat's core says which witnesses to grow.
            probed, guards = pin(terms, sizes, probe=True, found=found)
            blame = {str(z3.Not(g)): name for name, g in guards.items()}
            answer, solver, _ = _solve(o, seed, rlimit, timeout_s, lambda: (probed[:-1], probed[-1], ctx),
                                       assumptions=[z3.Not(g) for g in guards.values()])
            tried.append(f"{sum(sizes.values())} pinned entries: {_answer(answer, solver)}")
            if answer == z3.sat:
                return ProofResult(o.name, PROVED, time.perf_counter() - start)
            grow = [blame[str(c)] for c in solver.unsat_core()] if answer == z3.unsat else []
            grow = [name for name in grow if sizes.get(name, 0) < PIN_MAX_ENTRIES]
            if not grow:
                break
            for name in grow:
                sizes[name] = sizes.get(name, 0) + 1
    answer, solver, _ = _solve(o, seed, rlimit, timeout_s, lambda: (hyps, goal, ctx))
    seconds = time.perf_counter() - start
    note = f" (pinned witnesses first: {'; '.join(tried)})" if tried else ""
    if answer == z3.sat:
        return ProofResult(o.name, PROVED, seconds)
    if answer == z3.unsat:
        return ProofResult(o.name, FAILED, seconds, f"unsatisfiable: the hypotheses are contradictory (vacuous){note}")
    return ProofResult(o.name, UNKNOWN, seconds, f"z3 answered unknown: {solver.reason_unknown()}{note}")


def _answer(answer: Any, solver: z3.Solver) -> str:
    return f"unknown ({solver.reason_unknown()})" if answer == z3.unknown else str(answer)


def run(select: str | None = None, seed: int = 0, rlimit: int = DEFAULT_RLIMIT,
        timeout_s: float = DEFAULT_TIMEOUT_S, jobs: int = 1, witness: Witness | None = None,
        isolate: bool = True) -> list[ProofResult]:
    """Discharge the selected obligations (all when select is None), in order, in `jobs` worker
    processes. `isolate` (the default) gives every obligation a process of its own, forked from a
    server that has imported forkspec and run nothing: Z3's search depends on the state of its
    context (the terms built before, their ids), so an obligation proved after others in one process
    consumed up to 2.4x more or less rlimit than alone (bench/bench_prove_isolation.py); isolated,
    each verdict depends only on the obligation, the seed and the rlimit. `isolate=False` proves
    in this process (tests that patch obligations in). Z3 terms do not travel between processes:
    workers rebuild their obligation by name, and `witness` must be a module-level function."""
    if not isolate:
        return [prove_one(o, seed, rlimit, timeout_s, witness) for o in select_obligations(select)]
    names = [o.name for o in select_obligations(select)]
    return [r for r, _ in _run_isolated(names, seed, rlimit, timeout_s, jobs, witness)]


Source = Callable[[], list[Obligation]]
T = TypeVar("T")


def run_measured(names: Sequence[str], seed: int = 0, rlimit: int = DEFAULT_RLIMIT,
                 timeout_s: float = DEFAULT_TIMEOUT_S, jobs: int = 1,
                 source: Source = all_obligations) -> list[tuple[ProofResult, int]]:
    """The named obligations, isolated as run() proves them: (result, Z3 resource units consumed).
    `source` lists the obligations the names are looked up in (a module-level function: workers
    call it; tests pass obligations the proof suite leaves out)."""
    return _run_isolated(list(names), seed, rlimit, timeout_s, jobs, None, source)


def proved_apart(names: Sequence[str], source: Source = all_obligations, jobs: int = 2,
                 seed: int = 0) -> dict[str, ProofResult]:
    """{name: result}, each obligation proved in a process of its own as run() proves it. Tests use
    this, never prove_one in the pytest process, for any obligation they expect proved: there the
    verdict would depend on the Z3 terms earlier tests built (it flipped an obligation to unknown
    in CI)."""
    return {r.obligation: r for r, _ in run_measured(names, seed=seed, jobs=jobs, source=source)}


def decide_sat_checks(names: Sequence[str], source: Source = all_obligations, seeds: int = 4,
                      jobs: int = 2) -> dict[str, ProofResult]:
    """Sat checks (expect="sat"), each isolated as run() proves: {name: result}. A model settles a sat
    check whatever the seed, so a check left unknown is tried again on the next seed, up to `seeds`;
    each try is bounded by the rlimit, so the answer is deterministic."""
    results: dict[str, ProofResult] = {}
    for seed in range(seeds):
        todo = [n for n in names if n not in results or results[n].verdict == UNKNOWN]
        if not todo:
            break
        results.update(proved_apart(todo, source, jobs, seed))
    return results


def _run_isolated(names: list[str], seed: int, rlimit: int, timeout_s: float, jobs: int,
                  witness: Witness | None, source: Source = all_obligations) -> list[tuple[ProofResult, int]]:
    return _map_apart(_prove_isolated, [(n, seed, rlimit, timeout_s, witness, source) for n in names], jobs)


def call_apart(fn: Callable[..., T], *args: Any) -> T:
    """fn(*args) in a process of its own, as run() proves an obligation, and its result. Tests run
    every Z3 search over the model through this or run() (only tiny hand-made formulas and ground
    agreement checks stay in-process): in the pytest process Z3's search (and so an unknown, or
    which counterexample it finds) depends on the terms earlier tests built. `fn` and `args` are
    pickled: module-level functions and plain data; `fn` applies any patch it needs itself."""
    (result,) = _map_apart(fn, [args], 1)
    return result


def _map_apart(fn: Callable[..., T], calls: list[tuple], jobs: int) -> list[T]:
    """[fn(*args) for args in calls], each in a child forked from a clean worker."""
    if not calls:
        return []
    # Workers come from a forkserver: a fresh single-threaded interpreter that imported forkspec and
    # ran no Z3 (a fork of a process that did can deadlock on locks held at fork, and would carry its
    # context state). A worker never runs Z3 either: it forks one child per call (a few ms; a new
    # pool process per obligation cost about 35 ms, measured).
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["__main__", "forkspec.specs.prove", "forkspec.specs.lemmas", "forkspec.model.refinement"])
    with ctx.Pool(max(1, min(jobs, len(calls)))) as pool:
        return pool.starmap(_call_forked, [(fn, args) for args in calls], chunksize=1)


def _call_forked(fn: Callable[..., T], args: tuple) -> T:
    """fn(*args) in a child forked from this clean worker; its result comes back pickled."""
    read_end, write_end = os.pipe()
    # Frozen objects are not traversed by the child's garbage collector, which would otherwise write
    # to (and so copy) every page of the worker's heap.
    gc.freeze()
    pid = os.fork()
    if pid == 0:        # the child: call, send, exit without running the worker's cleanup
        status = 1
        try:
            os.close(read_end)
            try:
                reply = ("ok", fn(*args))
            except Exception as exc:            # noqa: BLE001 - handed to the parent, which raises it
                reply = ("raise", exc)
            with os.fdopen(write_end, "wb") as out:
                pickle.dump(reply, out)
            status = 0
        finally:
            os._exit(status)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as got:
        data = got.read()
    _, status = os.waitpid(pid, 0)
    if not data:
        raise RuntimeError(f"{getattr(fn, '__name__', fn)}{args!r:.200} killed its process (wait status {status:#x})")
    kind, value = pickle.loads(data)
    if kind == "raise":
        raise value
    return value


def _rlimit_count() -> int:
    """The process's Z3 resource count so far (cumulative over solvers; a trivial check adds 2)."""
    solver = z3.Solver()
    solver.check()
    stats = solver.statistics()
    return int(stats.get_key_value("rlimit count")) if "rlimit count" in stats.keys() else 0


def _prove_isolated(name: str, seed: int, rlimit: int, timeout_s: float,
                    witness: Witness | None = None, source: Source = all_obligations) -> tuple[ProofResult, int]:
    before = _rlimit_count()
    result = _prove_by_name(name, seed, rlimit, timeout_s, witness, source)
    return result, _rlimit_count() - before - 2


def _prove_by_name(name: str, seed: int, rlimit: int, timeout_s: float, witness: Witness | None = None,
                   source: Source = all_obligations) -> ProofResult:
    (o,) = [o for o in source() if o.name == name]
    return prove_one(o, seed, rlimit, timeout_s, witness)


# --- output ------------------------------------------------------------------------------------

def format_table(results: Sequence[ProofResult]) -> str:
    width = max([len(r.obligation) for r in results] + [10])
    lines = [f"{'obligation':<{width}}  {'result':<8}  seconds"]
    for r in results:
        lines.append(f"{r.obligation:<{width}}  {r.verdict:<8}  {r.seconds:7.2f}")
    bad = [r for r in results if not r.ok]
    for r in bad:
        lines.append("")
        lines.append(f"--- {r.obligation}: {r.verdict}")
        lines.append(r.counterexample)
        if r.program:
            lines.append("as a program (forkspec replay FILE runs it on impl and the model):")
            lines.append(r.program.rstrip("\n"))
    proved = sum(r.verdict == PROVED for r in results)
    skipped = sum(r.verdict == SKIPPED for r in results)
    total = sum(r.seconds for r in results)
    lines.append("")
    vacuity = sum(r.obligation.endswith(VACUITY_SUFFIX) for r in results)
    lines.append(f"{proved} proved, {len(bad)} not proved, {skipped} skipped, {len(results)} obligations "
                 f"({vacuity} of them hypotheses-satisfiable checks), {total:.1f} s")
    return "\n".join(lines)


def to_json(results: Sequence[ProofResult]) -> str:
    return json.dumps([asdict(r) for r in results], indent=2)


# --- counterexamples -----------------------------------------------------------------------------

def _numerals(model: z3.ModelRef) -> set[int]:
    """Every 64-bit value the model mentions: candidate pages and frames to print."""
    seen: set[int] = set()
    for decl in model.decls():
        val = model[decl]
        if isinstance(val, z3.FuncInterp):
            for entry in val.as_list():
                if isinstance(entry, list):
                    for x in entry:
                        if isinstance(x, z3.BitVecNumRef):
                            seen.add(x.as_long())
        elif isinstance(val, z3.BitVecNumRef):
            seen.add(val.as_long())
    return seen


def _ev(model: z3.ModelRef, x: Any) -> Any:
    if isinstance(x, z3.ExprRef):
        return to_python(model.eval(x, model_completion=True))
    return x


def _prot(p: int) -> str:
    return "".join(ch if p & bit else "-" for ch, bit in (("r", PROT_READ), ("w", PROT_WRITE), ("x", PROT_EXEC)))


def _flags(f: int) -> str:
    names = [n for n, b in (("P", d.PTE_P), ("RW", d.PTE_RW), ("US", d.PTE_US), ("PROTNONE", d.PTE_PROTNONE),
                            ("NX", d.PTE_NX)) if f & b]
    return "|".join(names) or "0"


_STATE = {d.FREE: "free", d.RUNNING: "running", d.BLOCKED: "blocked", d.ZOMBIE: "zombie"}


def describe_state(model: z3.ModelRef, s: d.KState, candidates: set[int]) -> list[str]:
    lines = [f"  reaper pid {_ev(model, s.reaper)}"]
    frames: set[int] = set()
    for i, p in enumerate(s.procs):
        state = _ev(model, p.state)
        if state == d.FREE:
            continue
        lines.append(f"  process slot {i}: pid {_ev(model, p.pid)} {_STATE.get(state, state)} parent "
                     f"{_ev(model, p.parent)} vfork_parent {_ev(model, p.vfork_parent)} "
                     f"brk [{_ev(model, p.brk_start):#x}, {_ev(model, p.brk):#x})")
        if isinstance(p.vmas, d.SparseMap):      # page-wise VMAs: the pages the model mentions
            for k in sorted(candidates):
                found, prot, shared = (_ev(model, x) for x in p.vmas.get(k))
                if found:
                    lines.append(f"    vma page {k << 12:#x} {_prot(prot)} {'shared' if shared else 'private'}")
        else:
            for v in p.vmas:
                if _ev(model, v.used):
                    lines.append(f"    vma [{_ev(model, v.start):#x}, {_ev(model, v.end):#x}) "
                                 f"{_prot(_ev(model, v.prot))} {'shared' if _ev(model, v.shared) else 'private'}")
        for k in sorted(candidates):
            frame, flags = (_ev(model, x) for x in p.pt.get(k))
            if flags:
                frames.add(frame)
                lines.append(f"    pte page {k << 12:#x} -> frame {frame:#x} {_flags(flags)}")
        for f in sorted(candidates):
            mapped, vpn = (_ev(model, x) for x in p.rmap.get(f))
            if mapped:
                frames.add(f)
                lines.append(f"    rmap frame {f:#x} -> page {vpn << 12:#x}")
    for f in sorted(frames | {c for c in candidates if _ev(model, s.frames.get(c)[0])}):
        used, rc, data = (_ev(model, x) for x in s.frames.get(f))
        lines.append(f"  frame {f:#x}: {'used' if used else 'free'} refcount {rc} data {data:#x}")
    return lines


def describe(model: z3.ModelRef, ctx: Ctx) -> str:
    """A counterexample as readable states and arguments."""
    candidates = {c for c in _numerals(model) if c < 1 << 52}
    lines = []
    for name, value in ctx.args.items():
        if value is None:
            continue
        if hasattr(value, "__dataclass_fields__"):
            fields = {f: getattr(value, f) for f in value.__dataclass_fields__}
            shown = ", ".join(f"{f}={_show(model, x)}" for f, x in fields.items() if not isinstance(x, (d.Alloc,)))
            lines.append(f"{name}: {type(value).__name__}({shown})")
        else:
            lines.append(f"{name}: {_show(model, value)}")
    for name, s in ctx.states.items():
        lines.append(f"{name}:")
        lines.extend(describe_state(model, s, candidates))
    return "\n".join(lines)


def _show(model: z3.ModelRef, x: Any) -> str:
    if isinstance(x, tuple):
        return "(" + ", ".join(_show(model, y) for y in x) + ")"
    if isinstance(x, d.Vma):
        return f"[{_ev(model, x.start):#x}, {_ev(model, x.end):#x}) {_prot(_ev(model, x.prot))}"
    v = _ev(model, x)
    return f"{v:#x}" if isinstance(v, int) and not isinstance(v, bool) else str(v)


# --- CLI -----------------------------------------------------------------------------------------

class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2 (argparse prints usage otherwise)
        sys.stderr.write(f"forkspec prove: {message}\n")
        raise SystemExit(2)


def emit_programs(results: Sequence[ProofResult], directory: str) -> list[str]:
    """Write each failed obligation's program to DIRECTORY/<obligation>.fsp; returns the paths."""
    os.makedirs(directory, exist_ok=True)
    paths = []
    for r in results:
        if r.verdict == FAILED and r.program.startswith("# forkspec-program"):
            safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in r.obligation)
            path = os.path.join(directory, f"{safe}.fsp")
            with open(path, "w", encoding="utf-8") as f:
                f.write(r.program)
            paths.append(path)
    return paths


def main(argv: Sequence[str] | None = None, witness: Witness | None = None) -> int:
    """`forkspec prove [-k PATTERN] [--json] [--seed N] [--emit-programs DIR]`: exit 0 only if every
    obligation is proved. `witness` (oracle's program builder) turns counterexamples into programs."""
    parser = _Parser(prog="forkspec prove", description="Discharge forkspec's Z3 proof obligations.")
    parser.add_argument("-k", dest="pattern", default=None,
                        help="run only obligations whose name contains PATTERN (or matches it as a glob)")
    parser.add_argument("--json", action="store_true", help="print results as JSON")
    parser.add_argument("--seed", type=int, default=0, help="Z3 random seed (verdicts must not depend on it)")
    parser.add_argument("--emit-programs", metavar="DIR", default=None,
                        help="write each failed obligation's counterexample program to DIR/<obligation>.fsp")
    try:
        args = parser.parse_args(list(argv) if argv is not None else None)
    except SystemExit as exc:
        return int(exc.code or 0)
    if args.seed < 0:
        sys.stderr.write(f"forkspec prove: --seed={args.seed} must be >= 0\n")
        return 2
    selected = select_obligations(args.pattern)
    if not selected:
        sys.stderr.write(f"forkspec prove: -k {args.pattern!r} matches no obligation\n")
        return 2
    if args.emit_programs is not None and witness is None:
        sys.stderr.write("forkspec prove: --emit-programs needs oracle's program builder: run `forkspec prove`\n")
        return 2
    results = run(args.pattern, seed=args.seed, jobs=min(2, os.cpu_count() or 1), witness=witness)
    print(to_json(results) if args.json else format_table(results))
    if args.emit_programs is not None:
        for path in emit_programs(results, args.emit_programs):
            sys.stderr.write(f"forkspec prove: wrote {path}   (forkspec replay {path})\n")
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
