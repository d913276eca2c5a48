"""Refinement of fork (copy-on-write and eager) and vfork, one obligation per source shape and caller.

From level-2 / level-1 states related by `tree_related` (shape SHAPES[shape], slot layout
layout_of(shape) widened by one slot for the child's pid when the shape does not name it), when both
levels allow the step with the same child pid, the outcomes (the child's pid) are equal and the new
states are related with the child in level 2's appended slot (the layout plus the child's pid; the
pid's older slot, FREE since level 2 allowed the pid, is then an absent slot):
- fork_cow: the child maps the parent's frames (private ones write-protected in both, reference
  counts up by one), so its words are the parent's; level 1's child space is the parent's object.
- fork_eager: private mapped pages of the child map Choice.alloc's fresh frames, which hold the
  copied words; MAP_SHARED pages map the parent's frames.
- vfork: level 1's child shares the parent's mm id; level 2 moves VMAs, page table and break to the
  child and leaves the parent BLOCKED and empty (R's lent-address-space clause, relation.py).
The caller is every running process of every shape (a vfork child may fork and vfork too). The child's
pid is OTHER when the shape has one process, THIRD otherwise.

Loads in every two-process shape (load_obligation): the caller reads its own frame's word, never the
other process's. Then the copy-on-write break (store_obligation): a store in a two-process shape, where the two may map
one frame (copy-on-write, or MAP_SHARED), is related: the other process keeps its word, or sees the
new one at the same address of the same shared object, at both levels.

What the fork step alone cannot show: R is user-visible (VMAs, break, words, which frames are one
shared object's), so a fork that forgets to write-protect a private page is related right after the
fork; only a later store tells. It breaks the invariant inv_cow_private_writable_exclusive
(fork_cow-preserves-... refutes it), which the two-process store obligations assume. A private copy
of a MAP_SHARED page is refuted by the fork obligations themselves (R's sharing clause, relation.py).
tests/proofs/test_refinement_fork.py checks both.
"""
from __future__ import annotations

from .. import design as d
from ..logic import eq
from .relation import OTHER, ROOT, SHAPES, THIRD, _tree_states, layout_of, populated_page, tree_related

KINDS = ("fork_cow", "fork_eager", "vfork")


def child_pid(shape: str) -> int:
    """The pid level 1's choice gives the child (the same pid is level 2's Choice.pid)."""
    return OTHER if len(SHAPES[shape]) == 1 else THIRD


def fork_layouts(shape: str) -> tuple[tuple, tuple]:
    """(before, after): the slot layouts of the source state and of the state after the fork."""
    child = child_pid(shape)
    before = layout_of(shape)
    if child not in before:
        before = before + (child,)
    return before, before + (child,)


def fork_step(kind: str, shape: str, caller: int, fn=None):
    """Both levels' fork by `caller` from the shape: (s2, s1, ctx, allowed2, out2, new2, r1, choice).
    `fn` stands in for design.fork (tests: a broken fork must be refuted)."""
    from ...specs.obligations import sym_alloc
    from .. import process as proc1
    before, _ = fork_layouts(shape)
    s2, s1, ctx = _tree_states(shape, before, cow=kind != "fork_eager")
    child = child_pid(shape)
    choice = d.Choice(pid=child, alloc=sym_alloc("refine.alloc") if kind == "fork_eager" else None)
    allowed2, out2, new2 = (fn or d.fork)(s2, d.ForkArgs(caller, vfork=kind == "vfork"), choice)
    r1 = proc1.fork(s1, proc1.ForkArgs(caller), proc1.ForkChoice(child=child), vfork=kind == "vfork")
    return s2, s1, ctx, allowed2, out2, new2, r1, choice


def fork_obligation(kind: str, shape: str, caller: int, fn=None):
    """`fn` replaces design.fork (tests: a broken fork must be refuted)."""
    from ...specs.obligations import Ctx, Obligation, invariants_hold

    def build() -> tuple:
        before, after = fork_layouts(shape)
        s2, s1, ctx, allowed2, out2, new2, r1, choice = fork_step(kind, shape, caller, fn)
        hyps = invariants_hold(s2) + [tree_related(s2, s1, before), d._as_bool(allowed2), d._as_bool(r1.allowed)] \
            + list(ctx.facts)
        goal = d._as_bool(d.all_of(eq(out2, r1.outcome), tree_related(new2, r1.state, after)))
        return hyps, goal, Ctx({"before": s2, "after": new2},
                               {"child pid": choice.pid, "outcome (level 2)": out2, "outcome (level 1)": r1.outcome})
    label = f"{shape}-by-{'root' if caller == ROOT else 'other'}"
    return Obligation(f"{kind}-refines-level1[{label}]", "refine", build, feature=populated_page(caller))


def _copy_on_write_page(ctx):
    """Vacuity feature of a store in a two-process shape: the caller's stored page maps, read-only, a
    private frame the other process maps too and that holds a non-zero word (the copy-on-write case)."""
    import z3
    s2 = ctx.states["before"]
    k = d.vpn_of(ctx.args["va"])
    caller, other = s2.procs[0], s2.procs[1]
    pte = caller.pt.get(k)
    return z3.And(d._as_bool(d.pte_present(pte)), z3.Not(d._as_bool(d.pte_writable(pte))),
                  z3.Not(d._as_bool(d.find_vma(caller.vmas, k)[2])), d._as_bool(other.rmap.get(pte[0])[0]),
                  s2.frames.get(pte[0])[2] != 0)


def sources() -> list[tuple[str, int]]:
    """(shape, caller) for every running process of every shape."""
    return [(shape, pid) for shape, procs in SHAPES.items() for pid, _, run, _ in procs if run == "running"]


# --- the copy-on-write break: a store in a two-process shape ------------------------------------------
# After a fork both processes may map one frame: read-only for a private page (reference count > 1),
# or in a MAP_SHARED VMA. A store by either one must copy the first (the other keeps its word) and
# write through the second (the other sees the word at the same address, as level 1's shared object
# does). R's sharing clause (relation.sharing_related) relates level 2's shared frames to level 1's
# objects; the invariants (reference counts, inverse maps, writable-private-is-exclusive) do the rest.
#
# Encoding: R after the store is proved with each of its quantifiers at a free constant (page `kx`,
# address `at`: proving it for every value is the ForAll), and R and the invariants before the store
# enter as their instances at those constants, the stored page/address and the frames mapped there
# (`_instances`), so the query has no quantifier: a quantified R over two processes sends E-matching
# round the page table / reverse map / sharing clauses (one such query ran for minutes; with the
# invariants quantified each took 10-20 s). Split into the stored address and every other one, as
# mm.access_obligation.
# running-child by ROOT only, for the proof suite's time budget (each caller costs 4-7 s of CPU): orphan
# differs in parent pointers, which a store neither reads nor writes, and the store by OTHER is the
# same with the slots swapped; tests/proofs/test_refinement_fork.py proves those (marked slow).
STORE_SHAPES = ("running-child",)
STORE_CALLERS = (ROOT,)


def _quantifiers(f):
    """The outermost quantified subterms of f; each must be universal over one 64-bit variable and
    occur only in positive positions (under And/Or, the conclusion of an Implies), so that f holds
    when each of them is replaced by its instances at free constants, and f implies that replacement."""
    import z3
    seen, out, todo = set(), [], [(f, True)]
    while todo:
        t, positive = todo.pop()
        if (t.get_id(), positive) in seen:
            continue
        seen.add((t.get_id(), positive))
        if z3.is_quantifier(t):
            if not (positive and t.is_forall() and t.num_vars() == 1 and t.var_sort(0) == z3.BitVecSort(64)):
                raise ValueError(f"not a positive one-variable ForAll: {t}")
            out.append(t)
        elif z3.is_and(t) or z3.is_or(t):
            todo += [(c, positive) for c in t.children()]
        elif z3.is_implies(t):
            todo += [(t.arg(0), not positive), (t.arg(1), positive)]
        elif z3.is_not(t):
            todo.append((t.arg(0), not positive))
        else:
            # Any other operator (ite, =, ...) takes its arguments in both polarities.
            todo += [(c, False) for c in t.children()] + [(c, True) for c in t.children()]
    return list({q.get_id(): q for q in out}.values())


def _instances(f, pages: tuple, addrs: tuple):
    """f with each quantifier replaced by its instances: R's contents clause (variable refine.a) at
    the addresses, every other clause at the pages. As a hypothesis, implied by f; as a goal at free
    constants, it implies f (every quantifier is positive: _quantifiers checks)."""
    import z3
    subs = []
    for q in _quantifiers(f):
        keys = addrs if q.var_name(0) == "refine.a" else pages
        subs.append((q, z3.And(*[z3.substitute_vars(q.body(), k) for k in keys])))
    return z3.substitute(f, *subs) if subs else f


def store_obligation(shape: str, caller: int, page: str, part: str = ""):
    """`page`: the contents clause after the store at the stored address or at any other one.
    other-page comes in three obligations over the same hypotheses (one query took 3-4 s of CPU, each
    part about a third): `part` "caller" / "other-process" proves that process's word at `at`; the
    main one takes those proved facts as hypotheses and proves the rest of R."""
    from ...specs.abi import TASK_SIZE
    from ...specs.obligations import Ctx, Obligation, invariants_hold
    from ..logic import bor, ite
    from ..memory import WRITE, store_page
    from .mm import _access_outcome
    from .relation import contents_at, running_slots

    def build() -> tuple:
        import z3
        layout = layout_of(shape)
        s2, s1, ctx = _tree_states(shape, layout, pin=True)
        va, value, frame, at, kx = (z3.BitVec(f"refine.{n}", 64) for n in ("va", "value", "frame", "at", "kx"))
        allowed2, out2, new2 = d.store(s2, d.AccessArgs(caller, va, value), d.Choice(frame=frame))
        fault1 = _access_outcome(s1, caller, va, WRITE)
        ok1 = eq(fault1, 0)
        out1 = ite(ok1, d.ACCESS_OK, bor(1 << 32, fault1))
        new1 = ite(ok1, store_page(s1, caller, va, 8, value), s1)
        pages = (kx, d.vpn_of(va), d.vpn_of(at))
        before = _instances(tree_related(s2, s1, layout), pages, (at, va))
        # The invariants at those pages and at the frames mapped there (and the frame a fault takes):
        # page-keyed and frame-keyed quantifiers alike take every key (the extra instances are true).
        keys = pages + (frame,) + tuple(p.pt.get(k)[0] for p in s2.procs for k in pages)
        hyps = [_instances(inv, keys, ()) for inv in invariants_hold(s2)] + [before, d._as_bool(allowed2),
                                      z3.And(d._as_bool(d.is_page_aligned(va)), z3.ULT(va, TASK_SIZE))] \
            + list(ctx.facts)
        hyps.append(at == va if page == "same-page" else at != va)
        words = {("caller" if pid == caller else "other-process"): contents_at(new2, new2.procs[j], new1, pid, at)
                 for pid, j in running_slots(s1, layout)}
        if part:
            goal = words[part]
        else:
            if page == "other-page":
                hyps += list(words.values())    # proved by the "-caller" / "-other-process" obligations
            goal = z3.And(d._as_bool(eq(out1, out2)), _instances(tree_related(new2, new1, layout), (kx,), (at,)))
        return hyps, goal, Ctx({"before": s2, "after": new2},
                               {"va": va, "value": value, "frame": frame, "at": at, "page": kx,
                                "outcome (level 2)": out2, "outcome (level 1)": out1})
    label = f"{shape}-by-{'root' if caller == ROOT else 'other'}-{page}" + (f"-{part}" if part else "")
    return Obligation(f"store-refines-level1[{label}]", "refine", build, tactic="push-ite",
                      feature=_copy_on_write_page if caller == ROOT and page == "other-page" and not part else None)


STORE_PARTS = (("same-page", ""), ("other-page", "caller"), ("other-page", "other-process"), ("other-page", ""))


def store_obligations(shapes: tuple = STORE_SHAPES, callers: tuple = STORE_CALLERS) -> list:
    return [store_obligation(shape, pid, page, part) for shape in shapes for pid, _, run, _ in SHAPES[shape]
            if run == "running" and pid in callers for page, part in STORE_PARTS]


def every_store_obligation() -> list:
    """The store obligations of every two-process shape and running caller (the proof suite proves
    STORE_SHAPES x STORE_CALLERS; tests prove these, each in a process of its own)."""
    return store_obligations(("running-child", "orphan"), (ROOT, OTHER))


def load_obligation(shape: str, caller: int):
    """A load by `caller` in a shape with two processes (after a fork: frames shared copy-on-write or
    MAP_SHARED): the outcomes are equal. A load changes neither level's state (both transitions
    return the very state they were given), so R after the step is R before; only the value or the
    fault can differ. R is instantiated at the loaded page and address, as in store_obligation."""
    from ...specs.abi import TASK_SIZE
    from ...specs.obligations import Ctx, Obligation, invariants_hold
    from ..logic import bor, ite
    from ..memory import READ
    from .mm import _access_outcome
    from .relation import word1

    def build() -> tuple:
        import z3
        layout = layout_of(shape)
        s2, s1, ctx = _tree_states(shape, layout, pin=True)
        va = z3.BitVec("refine.va", 64)
        allowed2, out2, new2 = d.load(s2, d.AccessArgs(caller, va), d.Choice())
        assert new2 is s2, "level 2's load changes no state"
        fault1 = _access_outcome(s1, caller, va, READ)
        out1 = ite(eq(fault1, 0), word1(s1, caller, va), bor(1 << 32, fault1))
        page = d.vpn_of(va)
        before = _instances(tree_related(s2, s1, layout), (page,), (va,))
        keys = (page,) + tuple(p.pt.get(page)[0] for p in s2.procs)
        hyps = [_instances(inv, keys, ()) for inv in invariants_hold(s2)] + [
            before, d._as_bool(allowed2), z3.And(d._as_bool(d.is_page_aligned(va)), z3.ULT(va, TASK_SIZE))] \
            + list(ctx.facts)
        return hyps, d._as_bool(eq(out1, out2)), Ctx({"before": s2}, {"va": va, "outcome (level 2)": out2,
                                                                     "outcome (level 1)": out1})
    label = f"{shape}-by-{'root' if caller == ROOT else 'other'}"
    return Obligation(f"load-refines-level1[{label}]", "refine", build, tactic="push-ite")


def load_obligations() -> list:
    """Every running caller of every shape with two processes (one process: mm.access_obligation)."""
    return [load_obligation(shape, pid) for shape, procs in SHAPES.items() if len(procs) > 1
            for pid, _, run, _ in procs if run == "running"]


def obligations() -> list:
    return [fork_obligation(kind, shape, caller) for kind in KINDS for shape, caller in sources()] \
        + store_obligations() + load_obligations()
