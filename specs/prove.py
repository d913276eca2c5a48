"""`forkspec prove`: discharge the proof obligations with Z3, one fresh solver each.

`run()` returns one ProofResult per obligation; `unknown` and timeouts are failures, never passes
(DESIGN.md "Proofs"). The resource limit is deterministic (`rlimit`), the wall-clock timeout is
only a backstop. A failed obligation carries its counterexample as a readable state: processes,
VMAs, PTEs and frames, decoded from the Z3 model.
"""
from __future__ import annotations

import argparse
import fnmatch
import itertools
import json
import multiprocessing
import os
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import z3

from ..model import design as d
from ..model.logic import to_python
from .abi import PROT_EXEC, PROT_READ, PROT_WRITE
from .obligations import Ctx, Obligation, all_obligations, small_states

DEFAULT_RLIMIT = 60_000_000     # Z3 resource units per obligation (deterministic across runs)
PROVED, FAILED, UNKNOWN, SKIPPED = "proved", "failed", "unknown", "skipped"


@dataclass(frozen=True)
class ProofResult:
    obligation: str
    verdict: str                    # proved / failed / unknown / skipped
    seconds: float
    counterexample: str = ""        # a readable state for failed; the reason for unknown/skipped

    @property
    def ok(self) -> bool:
        return self.verdict in (PROVED, SKIPPED)


def select_obligations(select: str | None) -> list[Obligation]:
    """Obligations whose name contains `select` (or matches it as a glob pattern)."""
    obs = all_obligations()
    if not select:
        return obs
    return [o for o in obs if select in o.name or fnmatch.fnmatchcase(o.name, select)]


def _solve(o: Obligation, seed: int, rlimit: int, timeout_s: float) -> tuple[Any, z3.Solver, Ctx]:
    # Fresh-name counters restart per obligation: its terms, and so Z3's run, do not depend on
    # which obligations were built before it in this process.
    d._fresh = itertools.count()
    hyps, goal, ctx = o.build()
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
    return solver.check(), solver, ctx


def prove_one(o: Obligation, seed: int = 0, rlimit: int = DEFAULT_RLIMIT, timeout_s: float = 10) -> ProofResult:
    """Discharge one obligation on a fresh solver. When Z3 cannot decide a validity obligation,
    small states (maps with two entries) are searched for a counterexample: one found there is a
    real counterexample; otherwise the verdict stays unknown, which is a failure."""
    if o.skip:
        return ProofResult(o.name, SKIPPED, 0.0, o.skip)
    start = time.perf_counter()
    answer, solver, ctx = _solve(o, seed, rlimit, timeout_s)
    if answer == z3.sat and o.expect == "valid":
        # A model over uninterpreted functions prints poorly: prefer a small state if there is one.
        with small_states():
            small, small_solver, small_ctx = _solve(o, seed, rlimit, timeout_s)
        if small == z3.sat:
            solver, ctx = small_solver, small_ctx
    elif answer == z3.unknown and o.expect == "valid":
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
    if o.expect == "valid":
        if answer == z3.unsat:
            return ProofResult(o.name, PROVED, seconds)
        return ProofResult(o.name, FAILED, seconds, describe(solver.model(), ctx))
    if answer == z3.sat:
        return ProofResult(o.name, PROVED, seconds)
    return ProofResult(o.name, FAILED, seconds, "unsatisfiable: the hypotheses are contradictory (vacuous)")


def run(select: str | None = None, seed: int = 0, rlimit: int = DEFAULT_RLIMIT,
        timeout_s: float = 10, jobs: int = 1) -> list[ProofResult]:
    """Discharge the selected obligations (all when select is None), in order. `jobs` > 1 proves
    them in that many worker processes (each rebuilds its obligations: Z3 terms do not travel)."""
    obs = select_obligations(select)
    if jobs <= 1 or len(obs) < 2:
        return [prove_one(o, seed, rlimit, timeout_s) for o in obs]
    names = [o.name for o in obs]
    ctx = multiprocessing.get_context("spawn")   # a forked Z3 can deadlock on locks held at fork
    with ctx.Pool(jobs) as pool:
        return pool.starmap(_prove_by_name, [(n, seed, rlimit, timeout_s) for n in names], chunksize=1)


def _prove_by_name(name: str, seed: int, rlimit: int, timeout_s: float) -> ProofResult:
    (o,) = [o for o in all_obligations() if o.name == name]
    return prove_one(o, seed, rlimit, timeout_s)


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
    proved = sum(r.verdict == PROVED for r in results)
    skipped = sum(r.verdict == SKIPPED for r in results)
    total = sum(r.seconds for r in results)
    lines.append("")
    lines.append(f"{proved} proved, {len(bad)} not proved, {skipped} skipped, {len(results)} obligations, "
                 f"{total:.1f} s")
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


def main(argv: Sequence[str] | None = None) -> int:
    """`forkspec prove [-k PATTERN] [--json] [--seed N]`: exit 0 only if every obligation is proved."""
    parser = _Parser(prog="forkspec prove", description="Discharge forkspec's Z3 proof obligations.")
    parser.add_argument("-k", dest="pattern", default=None,
                        help="run only obligations whose name contains PATTERN (or matches it as a glob)")
    parser.add_argument("--json", action="store_true", help="print results as JSON")
    parser.add_argument("--seed", type=int, default=0, help="Z3 random seed (verdicts must not depend on it)")
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
    results = run(args.pattern, seed=args.seed, jobs=min(2, os.cpu_count() or 1))
    print(to_json(results) if args.json else format_table(results))
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
