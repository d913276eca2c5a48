"""The proof obligations: TRANSITIONS x INVARIANTS, lemmas, refinement, initial and sat checks.

An obligation builds `(hypotheses, goal)` over a fresh symbolic level-2 state. `expect="valid"`
means hypotheses => goal must hold (the solver must answer unsat for hypotheses /\\ not goal);
`expect="sat"` means hypotheses /\\ goal must be satisfiable (a non-vacuity check: the invariants
and a transition's success path can hold together). Names follow STYLE.md item 5:
`fork_cow-preserves-inv_vmas_disjoint`, `initial-satisfies-inv_pte_in_vma`.
"""
from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass
from typing import Any, Callable

import z3

from ..model import design as d
from ..model.logic import all_of, eq, ne, ult
from .abi import PROT_READ, PROT_WRITE, TASK_SIZE
from .invariants import INVARIANTS

# Bounds of the symbolic state: process slots and VMA slots per process before the transition.
NPROCS = 2
NVMAS = 2
NSEGS = 2


@dataclass(frozen=True)
class Obligation:
    name: str
    kind: str                                   # preserve / lemma / initial / sat / refine
    build: Callable[[], tuple[list, Any, "Ctx"]]
    expect: str = "valid"                       # valid (hyps => goal) or sat (hyps /\\ goal)
    skip: str | None = None                     # reason, when it cannot be discharged yet
    tactic: str = "smt"                         # smt; ematching (no MBQI); push-ite (simplify first); bitblast
    pin: bool = False                           # sat checks: search pinned witnesses first (see pin())
    # Refinement obligations: a feature of the before-state (Ctx -> Z3 bool) that must hold together
    # with the hypotheses (feature_checks), so "satisfiable" is not met by empty memory alone.
    feature: Callable[["Ctx"], Any] | None = None
    feature_entries: int = 1                    # ... searched among states with maps of this many entries


@dataclass
class Ctx:
    """What a counterexample printer needs: the states and arguments, by name."""
    states: dict
    args: dict


# --- symbolic states -----------------------------------------------------------------------------

BV = z3.BitVecSort(64)
BOOL = z3.BoolSort()


def _fn(name: str, rng: z3.SortRef) -> z3.FuncDeclRef:
    return z3.Function(name, BV, rng)


SMALL: list[int] = []     # non-empty: sym_map builds maps with that many symbolic entries (sat checks)


@contextlib.contextmanager
def small_states(entries: int = 2):
    """Within this block symbolic maps differ from their default at `entries` keys at most: a
    model of such a state is a small concrete state (sat checks, counterexample search)."""
    SMALL[:] = [entries]
    try:
        yield
    finally:
        SMALL.clear()


def sym_map(name: str, sorts: tuple, default: tuple) -> d.SparseMap:
    if SMALL:
        # A map that differs from its default at SMALL[0] symbolic keys at most: sat checks search
        # small states (the quantified invariants then have finite models MBQI finds quickly).
        entries = [(z3.BitVec(f"{name}.key{j}", 64),
                    tuple(z3.Const(f"{name}.{j}.{i}", s) for i, s in enumerate(sorts))) for j in range(SMALL[0])]

        def fn(k: Any) -> tuple:
            out = default
            for key, val in entries:
                out = d.sel(k == key, val, out)
            return out
        return d.SparseMap(default, fn=fn)
    fns = [_fn(f"{name}.{i}", s) for i, s in enumerate(sorts)]
    return d.SparseMap(default, fn=lambda k: tuple(f(k) for f in fns))


def sym_vma(name: str) -> d.Vma:
    return d.Vma(z3.Bool(f"{name}.used"), z3.BitVec(f"{name}.start", 64), z3.BitVec(f"{name}.end", 64),
                 z3.BitVec(f"{name}.prot", 64), z3.Bool(f"{name}.shared"))


def sym_proc(name: str, nvmas: int = NVMAS) -> d.Proc:
    w = lambda f: z3.BitVec(f"{name}.{f}", 64)  # noqa: E731
    return d.Proc(pid=w("pid"), state=w("state"), parent=w("parent"), vfork_parent=w("vfork_parent"),
                  status=w("status"), vmas=sym_map(f"{name}.vma", (BOOL, BV, BOOL), d.VMA_DEFAULT),
                  brk_start=w("brk_start"), brk=w("brk"),
                  pt=sym_map(f"{name}.pt", (BV, BV), d.PTE_DEFAULT),
                  rmap=sym_map(f"{name}.rmap", (BOOL, BV), d.RMAP_DEFAULT))


def sym_state(name: str = "s", cow: bool = True, nprocs: int = NPROCS, nvmas: int = NVMAS) -> d.KState:
    return d.KState(procs=tuple(sym_proc(f"{name}.p{i}", nvmas) for i in range(nprocs)),
                    frames=sym_map(f"{name}.frames", (BOOL, BV, BV), d.FRAME_DEFAULT),
                    reaper=z3.BitVec(f"{name}.reaper", 64), cow=cow)


def sym_alloc(name: str) -> d.Alloc:
    return d.Alloc(sym_map(f"{name}.fwd", (BV,), (0,)), sym_map(f"{name}.inv", (BOOL, BV), (False, 0)))


def w(name: str) -> z3.BitVecRef:
    return z3.BitVec(name, 64)


def invariants_hold(s: d.KState) -> list:
    return [d._as_bool(inv(s)) for inv in INVARIANTS.values()]


# --- transitions under proof ---------------------------------------------------------------------
# name -> (cow strategy of the state, function building (args, choice))

def _mmap_args() -> tuple:
    return d.MmapArgs(w("a.pid"), w("a.addr"), w("a.length"), w("a.prot"), w("a.flags")), \
        d.Choice(addr=w("c.addr"), alloc=sym_alloc("c.alloc"))


def _range_args() -> tuple:
    return d.RangeArgs(w("a.pid"), w("a.addr"), w("a.length"), w("a.prot")), d.Choice()


def _fork_args(vfork: bool) -> Callable[[], tuple]:
    return lambda: (d.ForkArgs(w("a.pid"), vfork), d.Choice(pid=w("c.pid"), alloc=sym_alloc("c.alloc")))


def _execve_args() -> tuple:
    segs = tuple(sym_vma(f"a.seg{i}") for i in range(NSEGS))
    # The image's page words: pages with a non-zero word are populated from Choice.alloc.
    words = sym_map("a.words", (BV,), (0,))
    return d.ExecveArgs(w("a.pid"), segs, w("a.brk"), words), d.Choice(alloc=sym_alloc("c.alloc"))


def _access_args() -> tuple:
    return d.AccessArgs(w("a.pid"), w("a.va"), w("a.value")), d.Choice(frame=w("c.frame"))


@dataclass(frozen=True)
class Transition:
    name: str
    fn: Callable
    make_args: Callable[[], tuple]
    cow: bool = True
    ok: Callable[[Any, Any], Any] = lambda args, outcome: True    # the success path (sat checks)


TRANSITIONS: dict[str, Transition] = {t.name: t for t in (
    Transition("mmap", d.mmap, _mmap_args, ok=lambda a, o: ult(o, TASK_SIZE)),
    Transition("munmap", d.munmap, _range_args, ok=lambda a, o: eq(o, 0)),
    Transition("mprotect", d.mprotect, _range_args, ok=lambda a, o: all_of(eq(o, 0), ne(a.length, 0))),
    Transition("brk", d.brk, lambda: (d.BrkArgs(w("a.pid"), w("a.addr")), d.Choice()),
               ok=lambda a, o: eq(o, a.addr)),
    Transition("fork_cow", d.fork, _fork_args(False), cow=True),
    Transition("fork_eager", d.fork, _fork_args(False), cow=False),
    Transition("vfork", d.fork, _fork_args(True)),
    Transition("exit", d.exit, lambda: (d.ExitArgs(w("a.pid"), w("a.status")), d.Choice())),
    Transition("execve", d.execve, _execve_args),
    Transition("wait4", d.wait4, lambda: (d.Wait4Args(w("a.pid"), w("a.target")), d.Choice()),
               ok=lambda a, o: all_of(eq(o, a.target), ne(o, 0))),
    Transition("load", d.load, _access_args),
    Transition("store", d.store, _access_args, ok=lambda a, o: eq(o, d.ACCESS_OK)),
)}


def step(t: Transition, fn: Callable | None = None) -> tuple:
    """(old, args, choice, allowed, outcome, new) for one symbolic application of t."""
    old = sym_state("s", cow=t.cow)
    args, choice = t.make_args()
    allowed, outcome, new = (fn or t.fn)(old, args, choice)
    return old, args, choice, allowed, outcome, new


def preserves(t: Transition, inv_name: str, fn: Callable | None = None) -> Obligation:
    """Invariants before and `allowed` imply the invariant after."""
    def build() -> tuple:
        old, args, choice, allowed, outcome, new = step(t, fn)
        hyps = invariants_hold(old) + [d._as_bool(allowed)]
        return hyps, d._as_bool(INVARIANTS[inv_name](new)), Ctx({"before": old, "after": new},
                                                                 {"args": args, "choice": choice,
                                                                  "outcome": outcome})
    return Obligation(f"{t.name}-preserves-{inv_name}", "preserve", build)


def nonvacuous(t: Transition) -> Obligation:
    """The invariants, `allowed` and the transition's success path can hold at once (searched on
    pinned witnesses first: see pin())."""
    def build() -> tuple:
        old, args, choice, allowed, outcome, new = step(t)
        hyps = invariants_hold(old) + [d._as_bool(allowed)]
        return hyps, d._as_bool(t.ok(args, outcome)), Ctx({"before": old, "after": new},
                                                          {"args": args, "choice": choice, "outcome": outcome})
    return Obligation(f"{t.name}-success-satisfiable", "sat", build, expect="sat", pin=True)


def initial_state() -> tuple[d.KState, Any]:
    """The first process right after its first execve: its segments, the image's pages with a
    non-zero word populated with fresh frames, every other frame free. Returns (state, the
    hypotheses on the layout)."""
    segs = tuple(sym_vma(f"i.seg{i}") for i in range(NSEGS))
    empty = sym_state("i", nprocs=1, nvmas=0)
    # Before it, the process holds no page (symbolic empty maps: the alloc's frames are symbolic).
    p = dataclasses.replace(empty.procs[0], state=d.RUNNING, parent=empty.reaper, vfork_parent=0,
                            pt=d.SparseMap(d.PTE_DEFAULT, fn=lambda k: d.PTE_DEFAULT),
                            rmap=d.SparseMap(d.RMAP_DEFAULT, fn=lambda f: d.RMAP_DEFAULT))
    no_frames = d.SparseMap(d.FRAME_DEFAULT, fn=lambda f: d.FRAME_DEFAULT)
    s = dataclasses.replace(empty, procs=(p,), frames=no_frames)
    words = sym_map("i.words", (BV,), (0,))
    allowed, _, new = d.execve(s, d.ExecveArgs(p.pid, segs, w("i.brk"), words), d.Choice(alloc=sym_alloc("i.alloc")))
    return new, z3.And(d._as_bool(allowed), ne(p.pid, 0), ne(p.pid, s.reaper))


def initial(inv_name: str) -> Obligation:
    """The initial state satisfies the invariant."""
    def build() -> tuple:
        s, hyp = initial_state()
        return [hyp], d._as_bool(INVARIANTS[inv_name](s)), Ctx({"initial": s}, {})
    return Obligation(f"initial-satisfies-{inv_name}", "initial", build)


def all_invariants_satisfiable() -> Obligation:
    """The invariants hold together on a state where two processes share a frame copy-on-write and
    a third maps a writable private page (the hypotheses of every obligation are not vacuous)."""
    def build() -> tuple:
        with small_states():
            s = sym_state("s", nprocs=3)
        p0, p1, p2 = s.procs
        k, m = w("k"), w("m")
        witness = z3.And(*[d._as_bool(x) for x in (
            eq(p0.state, d.RUNNING), eq(p1.state, d.RUNNING), eq(p2.state, d.RUNNING),
            d.pte_present(p0.pt.get(k)), d.pte_present(p1.pt.get(k)),
            eq(p0.pt.get(k)[0], p1.pt.get(k)[0]), d.pte_writable(p2.pt.get(m)),
            find_vma_prot(p2, m, PROT_READ | PROT_WRITE))])
        return invariants_hold(s), witness, Ctx({"state": s}, {})
    return Obligation("invariants-satisfiable-shared-and-private", "sat", build, expect="sat")


def find_vma_prot(p: d.Proc, k: Any, prot: int) -> Any:
    found, vprot, shared = d.find_vma(p.vmas, k)
    return all_of(found, eq(vprot, prot), z3.Not(d._as_bool(shared)))


# --- the VMA-list level: range-based list operations refine the page-wise ones ---------------------
# A symbolic state's VMAs are page-wise maps, where "page-aligned" and "disjoint" hold by
# construction. The oracle runs the range-based list operations; these obligations prove them
# correct for lists of any length, slot by slot. Each operation maps every input slot v to pieces
# (remove: 2, protect: 3; replace adds one new slot). For one well-formed slot v we prove: the pieces
# are well formed, pairwise disjoint (and disjoint from replace's new slot), inside v, and page by
# page they have the effect of the page-wise operation on v alone. For a list of pairwise disjoint
# slots this gives the whole result: pieces of different slots are disjoint because the slots are,
# and a page lies in at most one slot, on which the page-wise operation acts pointwise.


def _list_ops() -> dict:
    def remove(v: tuple) -> tuple:
        a, b = w("l.start"), w("l.end")
        pre = all_of(d.is_page_aligned(a), d.is_page_aligned(b), d.ule(a, b))
        return pre, d.list_remove(v, a, b), (), lambda m: d.vma_remove(m, a, b)

    def protect(v: tuple) -> tuple:
        a, b, prot = w("l.start"), w("l.end"), w("l.prot")
        pre = all_of(d.is_page_aligned(a), d.is_page_aligned(b), d.ule(a, b), eq(d.band(prot, d.PROT_RWX), prot))
        return pre, d.list_protect(v, a, b, prot), (), lambda m: d.vma_protect(m, a, b, prot)

    def replace(v: tuple) -> tuple:
        a, b, prot, shared = w("l.start"), w("l.end"), w("l.prot"), z3.Bool("l.shared")
        pre = all_of(d.is_page_aligned(a), d.is_page_aligned(b), ult(a, b), d.user_range_ok(a, d.sub(b, a)),
                     eq(d.band(prot, d.PROT_RWX), prot))
        added = (d.Vma(True, a, b, prot, shared),)
        return pre, d.list_remove(v, a, b), added, lambda m: d.vma_replace(m, a, b, prot, shared)
    return {"remove": remove, "protect": protect, "replace": replace}


def list_well_formed(vmas: tuple) -> dict:
    from .invariants import list_disjoint, list_in_user_space, list_page_aligned
    return {"inv_vmas_page_aligned": list_page_aligned(vmas), "inv_vmas_in_user_space": list_in_user_space(vmas),
            "inv_vmas_disjoint": list_disjoint(vmas)}


def _slot_step(op: str) -> tuple:
    v = sym_vma("l.vma")
    pre, pieces, added, pagewise = _list_ops()[op]((v,))
    hyps = [d._as_bool(x) for x in list_well_formed((v,)).values()] + [d._as_bool(pre), v.used]
    return v, pieces, added, pagewise, hyps


def list_slot_obligation(op: str, prop: str) -> Obligation:
    """One slot-local fact about a list operation (see the comment above). `refines-pagewise-<i>-*`:
    a page inside output piece i is mapped page-wise (`mapped`) and, given that proved fact, has
    that piece's attributes (`attrs`); `refines-pagewise-covered`:
    a page the page-wise result maps lies in some piece. Together: list_find(new, k) equals the
    page-wise result for every k (one obligation per piece keeps each small and seed-stable)."""
    def build() -> tuple:
        v, pieces, added, pagewise, hyps = _slot_step(op)
        out = pieces + added
        if prop == "well-formed":
            wf = list_well_formed(out)
            goal = z3.And(d._as_bool(wf["inv_vmas_page_aligned"]), d._as_bool(wf["inv_vmas_in_user_space"]))
        elif prop == "disjoint":
            goal = d._as_bool(list_well_formed(out)["inv_vmas_disjoint"])
        elif prop == "inside-slot":
            goal = z3.And(*[z3.Implies(d._as_bool(x.used), d._as_bool(all_of(d.ule(v.start, x.start),
                                                                               d.ule(x.end, v.end))))
                            for x in pieces])
        else:
            k = w("l.page")
            want = pagewise(d.SparseMap(d.VMA_DEFAULT, fn=lambda q: d.list_find((v,), q))).get(k)
            if prop == "refines-pagewise-covered":
                goal = z3.Implies(d._as_bool(want[0]), z3.Or(*[d._as_bool(d.vma_contains(x, k)) for x in out]))
            else:
                _, _, index, part = prop.split("-")
                x = out[int(index)]
                inside = d._as_bool(d.vma_contains(x, k))
                mapped = z3.Implies(inside, d._as_bool(want[0]))
                if part == "mapped":
                    goal = mapped
                else:   # attrs: chained on the proved `mapped` obligation of the same piece
                    hyps = hyps + [mapped]
                    goal = z3.Implies(inside, z3.And(d._as_bool(eq(want[1], x.prot)),
                                                     d._as_bool(d._eq_any(want[2], x.shared))))
        return hyps, goal, Ctx({}, {"slot": v, "pieces": out})
    kind = "refine" if prop.startswith("refines") else "preserve"
    return Obligation(f"vma_list_{op}-{prop}", kind, build, tactic="push-ite")


# Output pieces per input slot (replace: the two kept parts and the new VMA).
_PIECES = {"remove": 2, "protect": 3, "replace": 3}


def list_props(op: str) -> tuple[str, ...]:
    return ("well-formed", "disjoint", "inside-slot",
            *[f"refines-pagewise-{i}-{part}" for i in range(_PIECES[op]) for part in ("mapped", "attrs")],
            "refines-pagewise-covered")




def segments_well_formed(inv_name: str) -> Obligation:
    """The VMA list execve builds from a valid layout is well formed."""
    def build() -> tuple:
        segs = tuple(sym_vma(f"a.seg{i}") for i in range(NSEGS))
        s = dataclasses.replace(sym_state("s"), procs=())
        allowed, _, _ = d.execve(dataclasses.replace(s, procs=(sym_proc("s.p0"),)),
                                 d.ExecveArgs(w("s.p0.pid"), segs, w("a.brk")), d.Choice())
        new = d.vma_from_segments((), tuple(d.Vma(True, v.start, v.end, d.band(v.prot, d.PROT_RWX), False)
                                            for v in segs))
        return [d._as_bool(allowed)], d._as_bool(list_well_formed(new)[inv_name]), Ctx({}, {"segments": segs})
    return Obligation(f"vma_list_execve-preserves-{inv_name}", "preserve", build)


# Invariants that hold by construction on the page-wise VMA maps of symbolic states; their
# preservation is proved at the list level above instead of in the syscall matrix.
STRUCTURAL = ("inv_vmas_disjoint",)


# --- vacuity: sat checks on pinned witnesses --------------------------------------------------------
# A sat check over symbolic states asks Z3 for a model of quantified formulas over uninterpreted
# functions (level 2's maps) and arrays (level 1's pages, contents, shared objects); MBQI often
# answers unknown there. Pinning defines each such function on a small witness: zero (0, False, the
# all-zero array: nothing mapped, every frame free, contents zero) except at `entries` symbolic
# keys, where its values are symbolic. A model of the pinned formulas, with each function read off
# its pinned definition, is a model of the original ones: sat with pinning proves the hypotheses
# satisfiable. Unsat with pinning proves nothing (the witness may be too small), so larger
# witnesses are tried next (specs/prove.py: the functions an unsat core blames get one more entry)
# and last the unpinned formulas, whose unsat is a real finding.


def _zero(sort: z3.SortRef) -> Any:
    """The all-zero value of a sort, or None for a sort pinning does not handle (left unpinned)."""
    if sort.kind() == z3.Z3_BOOL_SORT:
        return z3.BoolVal(False)
    if sort.kind() == z3.Z3_BV_SORT:
        return z3.BitVecVal(0, sort.size())
    if sort.kind() == z3.Z3_ARRAY_SORT:
        inner = _zero(sort.range())
        zero = None if inner is None else z3.K(sort.domain(), inner)
        return zero if zero is not None and zero.sort().eq(sort) else None   # not multi-index arrays
    return None


def _pinned_value(sort: z3.SortRef, name: str, entries: int) -> Any:
    """A symbolic value of `sort`; an array value is itself pinned (zero but at `entries` keys)."""
    if sort.kind() == z3.Z3_ARRAY_SORT:
        x = z3.Const(f"{name}.x", sort.domain())
        return z3.Lambda([x], _pinned_body((sort.domain(),), sort.range(), name, entries, (x,)))
    return z3.Const(name, sort)


def _pinned_body(domain: tuple, rng: z3.SortRef, name: str, entries: int, args: tuple) -> Any:
    out = _zero(rng)
    for j in reversed(range(entries)):
        keys = [z3.Const(f"{name}!pin.key{j}.{i}", s) for i, s in enumerate(domain)]
        out = z3.If(z3.And(*[a == k for a, k in zip(args, keys)]), _pinned_value(rng, f"{name}!pin.val{j}", entries),
                    out)
    return out


def uninterpreted_symbols(terms: list) -> tuple[list, list]:
    """(uninterpreted functions of arity >= 1, uninterpreted constants) the terms mention, each in a
    fixed order (by name and sort), so terms built from them are the same in every process. Walks
    the term DAG through Z3's C API: z3py's wrappers made this walk cost more than the solving."""
    from z3 import z3core as c
    exprs = [t for t in terms if isinstance(t, z3.ExprRef)]
    if not exprs:
        return [], []
    ctx = exprs[0].ctx
    ref = ctx.ref()
    funcs: dict = {}
    consts: dict = {}
    seen: set = set()
    stack = [t.as_ast() for t in exprs]
    while stack:
        a = stack.pop()
        ident = c.Z3_get_ast_id(ref, a)
        if ident in seen:
            continue
        seen.add(ident)
        kind = c.Z3_get_ast_kind(ref, a)
        if kind == z3.Z3_QUANTIFIER_AST:
            stack.append(c.Z3_get_quantifier_body(ref, a))
            continue
        if kind != z3.Z3_APP_AST:
            continue
        decl = c.Z3_get_app_decl(ref, a)
        nargs = c.Z3_get_app_num_args(ref, a)
        if c.Z3_get_decl_kind(ref, decl) == z3.Z3_OP_UNINTERPRETED:
            if nargs >= 1:
                f = z3.FuncDeclRef(decl, ctx)
                funcs[(f.name(), f.sexpr())] = f
            else:
                t = z3.z3._to_expr_ref(a, ctx)
                consts[(str(t), t.sort().sexpr())] = t
        stack.extend(c.Z3_get_app_arg(ref, a, j) for j in range(nargs))
    return [funcs[k] for k in sorted(funcs)], [consts[k] for k in sorted(consts)]


def uninterpreted(terms: list) -> tuple[list, list]:
    """The uninterpreted functions (arity >= 1) and array constants the terms mention, in a fixed
    order (by name and sort): what pin() pins."""
    funcs, consts = uninterpreted_symbols(terms)
    return funcs, [t for t in consts if z3.is_array(t)]


def pin(terms: list, entries: dict | int = 0, probe: bool = False, found: tuple | None = None) -> tuple[list, dict]:
    """The terms with every uninterpreted function and array constant pinned to a witness that is
    zero except at `entries[name]` symbolic keys (see above; an int: the same for all). Pin all
    formulas of one query together. With `probe`, each gets one more entry, enabled by a guard
    boolean: returns (terms, {name: guard}); assuming every guard false is the unprobed query, and
    an unsat core over those assumptions names the functions whose witness is too small. `found`:
    uninterpreted(terms), when the caller pins the same terms repeatedly."""
    funcs, arrays = found or uninterpreted(terms)
    size = (lambda name: entries.get(name, 0)) if isinstance(entries, dict) else (lambda name: entries)
    guards: dict = {}

    def body(name: str, domain: tuple, rng: z3.SortRef, args: tuple) -> Any:
        out = _pinned_body(domain, rng, name, size(name), args)
        if probe:
            guards[name] = z3.Bool(f"{name}!pin.probe")
            keys = [z3.Const(f"{name}!pin.probekey.{i}", s) for i, s in enumerate(domain)]
            out = z3.If(z3.And(guards[name], *[a == k for a, k in zip(args, keys)]),
                        _pinned_value(rng, f"{name}!pin.probeval", 1), out)
        return out
    fsubs = []
    for f in funcs:
        domain = tuple(f.domain(i) for i in range(f.arity()))
        if _zero(f.range()) is not None:
            args = tuple(z3.Var(i, s) for i, s in enumerate(domain))   # Var(i) is the i-th argument
            fsubs.append((f, body(f.name(), domain, f.range(), args)))
    csubs = []
    for a in arrays:
        if _zero(a.sort()) is not None:
            x = z3.Const(f"{a}!pin.x", a.sort().domain())
            csubs.append((a, z3.Lambda([x], body(str(a), (a.sort().domain(),), a.sort().range(), (x,)))))
    out = []
    for t in terms:
        t = t if isinstance(t, z3.ExprRef) else z3.BoolVal(bool(t))
        if fsubs:
            t = z3.substitute_funs(t, *fsubs)
        if csubs:
            t = z3.substitute(t, *csubs)
        out.append(t)
    return out, guards


VACUITY_SUFFIX = "-hypotheses-satisfiable"


def hypotheses_satisfiable(o: Obligation) -> Obligation:
    """`<name>-hypotheses-satisfiable`: the hypotheses of o hold together, so o is not proved
    vacuously (issue 2). Generated for every refinement obligation (with_vacuity_checks); the
    stronger check with o.feature is hypotheses_satisfiable_with_feature."""
    def build() -> tuple:
        hyps, _, ctx = o.build()
        return hyps, z3.BoolVal(True), ctx
    return Obligation(f"{o.name}{VACUITY_SUFFIX}", "sat", build, expect="sat", skip=o.skip, pin=True)


FEATURE_SUFFIX = "-hypotheses-satisfiable-with-feature"


def hypotheses_satisfiable_with_feature(o: Obligation) -> Obligation:
    """`<name>-hypotheses-satisfiable-with-feature`: o's hypotheses hold together with o.feature (a
    state that makes o's contents clauses meaningful: a populated page, a shared frame), decided
    among small states (a model of those is a model of the hypotheses; the fewer entries, the
    faster, as long as the feature fits: o.feature_entries). Too slow for the proof
    suite's budget (3-9 s each for fork in two-process shapes, measured); tests prove them, each in
    a process of its own (prove.run_measured(source=feature_checks))."""
    def build() -> tuple:
        with small_states(o.feature_entries):
            hyps, _, ctx = o.build()
        return hyps, o.feature(ctx), ctx
    return Obligation(f"{o.name}{FEATURE_SUFFIX}", "sat", build, expect="sat", skip=o.skip)


def feature_checks() -> list[Obligation]:
    """The with-feature satisfiability check of every refinement obligation that declares a feature."""
    return [hypotheses_satisfiable_with_feature(o) for o in all_obligations() if o.feature is not None]


def with_vacuity_checks(obs: list[Obligation]) -> list[Obligation]:
    """obs with each refinement obligation followed by its hypotheses-satisfiable check (a skipped
    one gets its check when its skip is lifted)."""
    out = []
    for o in obs:
        out.append(o)
        if o.kind == "refine" and not o.skip:
            out.append(hypotheses_satisfiable(o))
    return out


def all_obligations() -> list[Obligation]:
    from .lemmas import LEMMAS, refinement_obligations
    obs = [preserves(t, inv) for t in TRANSITIONS.values() for inv in INVARIANTS if inv not in STRUCTURAL]
    obs += [list_slot_obligation(op, prop) for op in _list_ops() for prop in list_props(op)]
    obs += [segments_well_formed(inv) for inv in list_well_formed(()).keys()]
    obs += [initial(inv) for inv in INVARIANTS]
    obs += [nonvacuous(t) for t in TRANSITIONS.values()]
    obs.append(all_invariants_satisfiable())
    obs += [lemma for lemma in LEMMAS]
    obs += refinement_obligations()
    # Level-1 invariants (specs/invariants1.py): each already followed by its sat twin.
    from .invariants1 import obligations as level1_obligations
    return with_vacuity_checks(obs) + level1_obligations()


__all__ = ["Obligation", "Ctx", "TRANSITIONS", "Transition", "all_obligations", "preserves", "sym_state",
           "initial_state", "invariants_hold", "small_states"]
