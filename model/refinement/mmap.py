"""Refinement of mmap: level 2's mmap, given level 1's placement as its choice, refines level 1's.
With one process (`obligation`, the chain below); in two-process shapes, the other process's slot
(other_process_obligation, in the suite), and the caller's chain and the sharing clause
(every_shape_obligation: proved by tests, marked slow, for the suite's time budget).

The correspondence:
- arguments: the same addr, length, prot, flags and offset (level 1's fd is free: with
  MAP_ANONYMOUS it is ignored, without it both levels answer EBADF);
- choices: level 2's Choice.addr is level 1's start (`Result.start`: the hint when level 1 honours
  it, else its pick, which on Z3 terms must equal its pick_gap; MAP_FIXED's address otherwise), and
  Choice.alloc is a free choice of fresh frames (MAP_SHARED populates them, reading 0).

Scope (SCOPE, in every obligation's name): MAP_GROWSDOWN clear, map type not MAP_DROPPABLE (level 2
has no growsdown or wipe-on-fork VMAs; R asks every mapped page to be an ordinary one), and no
resource failure chosen (level 1's MmapChoice.fail = 0; level 2 has none). Every other check level
1 makes, level 2 makes in the same order (design.mmap): the outcomes are equal on all other calls.

Hypothesis beyond R, the invariants and `allowed` (`fresh_object_unused`): level 1's next backing
object next_obj reads zero and its id fits the 32-bit ATTR_OBJ field. fresh_state leaves the shared
store unconstrained, so without it a new MAP_SHARED mapping could read old data. It is proved, not
assumed: it is the instance at next_obj of the level-1 invariant inv1_fresh_objects_unused
(specs/invariants1.py: next_obj < OBJ_LIMIT, every object id >= next_obj reads zero, every mapped
MAP_SHARED page names an object below next_obj), which holds initially and is kept by every level-1
transition the oracle runs on memory (`level1-*-preserves-inv1_fresh_objects_unused`), and implies
the instance at every address (`level1-inv1_fresh_objects_unused-implies-fresh_object_unused`). The
bound is level 1's own: its mmap refuses (only ENOMEM is allowed) a MAP_SHARED mapping that would
leave next_obj at OBJ_LIMIT (model/mm.py), a case the outcome parts exclude by level 1's `allowed`.

The proof is a chain of obligations, each hypothesis of a later one proved by an earlier one:
- outcome-fixed, outcome-placed: the outcomes are equal (MAP_FIXED or not: the two cases apart);
- instances: the ground instances of inv_pte_frame_in_use and of level 2's alloc_ok (Choice.alloc
  maps the new pages onto free frames) that the contents clause needs;
- attrs: R's VMA attributes and break after the step, from R before and equal outcomes;
- contents: R's contents clause after the step at every page-aligned address `at`, from the clause
  before at `at`, equal outcomes, the instances and fresh_object_unused at `at` (proved from the
  level-1 invariant, above).
In each, level 1's start is generalised to a free constant (only `MAP_FIXED => start = addr` is
kept), so the proof holds for any placement, and quantifier instantiation stays small: about 1.5 s
for the five together (`forkspec prove -k mmap-refines`).
"""
from __future__ import annotations

from typing import Any

import z3

from ...specs.abi import MAP_DROPPABLE, MAP_FIXED, MAP_FIXED_NOREPLACE, MAP_GROWSDOWN, MAP_SHARED, MAP_TYPE, TASK_SIZE
from .. import design as d
from .. import mm as mm1
from ..logic import band, eq, ne
from .relation import (PID, ROOT, SHAPES, _states, _tree_states, both_running, contents_at, layout_of, other_slot,
                       page_address, populated_page, related, slot_related, tree_related)

SCOPE = "no-growsdown-droppable-resource-failure"
PARTS = ("outcome-fixed", "outcome-placed", "instances", "attrs", "contents")
OBJ_LIMIT = mm1.OBJ_LIMIT   # ATTR_OBJ holds 32 bits of object id


def fresh_object_unused(s1: Any, at: Any = None) -> Any:
    """Level 1's next backing object is unused: its id fits ATTR_OBJ and it reads zero everywhere
    (given `at`: at the 8 bytes from `at`, the instance the contents clause uses). Implied by the
    level-1 invariant specs/invariants1.inv1_fresh_objects_unused (a proved lemma)."""
    from ..space import BYTE_SORT, WORD_SORT
    obj = z3.Select(s1.shared.array, s1.next_obj)
    if at is None:
        reads_zero = obj == z3.K(WORD_SORT, z3.BitVecVal(0, BYTE_SORT.size()))
    else:
        reads_zero = z3.And(*[z3.Select(obj, at + i) == 0 for i in range(8)])
    return z3.And(z3.ULT(s1.next_obj, OBJ_LIMIT), reads_zero)


def in_scope(flags: Any) -> Any:
    """The scope restriction on the arguments (no resource failure is chosen in _step)."""
    return z3.And(d._as_bool(eq(band(flags, MAP_GROWSDOWN), 0)), d._as_bool(ne(band(flags, MAP_TYPE), MAP_DROPPABLE)))


def succeeded(out: Any) -> Any:
    """mmap succeeded: it returned an address below TASK_SIZE (every failure, a -errno or MAP_FIXED's
    errno-range address, is above it)."""
    return z3.ULT(out, TASK_SIZE)


def _step(fn: Any = None, shape: str | None = None, caller: int = PID):
    """Both levels' mmap by `caller`, from one-process states (shape None) or a shape's."""
    from ...specs.obligations import sym_alloc
    s2, s1, ctx = _states() if shape is None else _tree_states(shape, layout_of(shape), pin=True)
    addr, length, prot, flags, fd, offset, placed = (
        z3.BitVec(f"refine.{n}", 64) for n in ("addr", "length", "prot", "flags", "fd", "offset", "placed"))
    # No resource failure chosen (MmapChoice.fail = 0): part of the scope.
    r1 = mm1.mmap(s1, mm1.MmapArgs(caller, addr, length, prot, flags, fd, offset), mm1.MmapChoice(addr=placed))
    choice = d.Choice(addr=r1.start, alloc=sym_alloc("refine.alloc"))
    allowed2, out2, new2 = (fn or d.mmap)(s2, d.MmapArgs(caller, addr, length, prot, flags, offset), choice)
    args = {"addr": addr, "length": length, "prot": prot, "flags": flags, "offset": offset,
            "placed (level 1's pick)": placed}
    return s2, s1, ctx, allowed2, out2, new2, r1, choice, args


def alloc_instances(s2: d.KState, alloc: d.Alloc, start: Any, length: Any, flags: Any, out2: Any, at: Any,
                    p2: d.Proc | None = None) -> Any:
    """The instances the contents clause at `at` uses of inv_pte_frame_in_use (at at's page) and, when
    a MAP_SHARED call succeeded, of level 2's alloc_ok (Choice.alloc is a bijection from the new
    pages onto free frames): at at's page, at the frame at's page mapped before, and at that frame's
    target page."""
    fwd, inv = alloc.fwd, alloc.inv
    lo, hi = d.vpn_of(start), d.vpn_of(d.add(start, d.page_align_up(length)))

    def needs(k: Any) -> Any:
        return z3.And(z3.ULE(lo, k), z3.ULT(k, hi))

    def fwd_ok(k: Any) -> Any:
        f = fwd.get(k)[0]
        return z3.Implies(needs(k), z3.And(z3.Not(s2.frames.get(f)[0]), inv.get(f)[0], inv.get(f)[1] == k))

    def inv_ok(f: Any) -> Any:
        return z3.Implies(inv.get(f)[0], z3.And(needs(inv.get(f)[1]), fwd.get(inv.get(f)[1])[0] == f))
    pte = (s2.procs[0] if p2 is None else p2).pt.get(d.vpn_of(at))
    shared_ok = z3.And(succeeded(out2), d._as_bool(eq(band(flags, MAP_TYPE), MAP_SHARED)))
    return z3.And(z3.Implies(d._as_bool(d.pte_mapped(pte)), s2.frames.get(pte[0])[0]),
                  z3.Implies(shared_ok, z3.And(fwd_ok(d.vpn_of(at)), inv_ok(pte[0]), fwd_ok(inv.get(pte[0])[1]))))


def obligation(part: str, fn: Any = None, shape: str | None = None, caller: int = PID):
    """One part of mmap's refinement (see the module docstring for the chain); with a shape, the
    caller's clauses in a state of that shape."""
    from ...specs.invariants import inv_pte_frame_in_use
    from ...specs.obligations import Ctx, Obligation

    def build() -> tuple:
        s2, s1, ctx, allowed2, out2, new2, r1, choice, args = _step(fn, shape, caller)
        (_, p2), space1 = d.find_proc(s2, caller), s1.space_of(caller)
        _, after2 = d.find_proc(new2, caller)
        addr, length, flags = args["addr"], args["length"], args["flags"]
        # Every page-aligned address: the contents clause holds trivially at the others.
        at = page_address()
        same_outcome = d._as_bool(eq(out2, r1.outcome))         # proved by the two "outcome-*" parts
        instances = alloc_instances(s2, choice.alloc, r1.start, length, flags, out2, at, p2)  # the "instances" part
        fixed = d._as_bool(ne(band(flags, MAP_FIXED | MAP_FIXED_NOREPLACE), 0))
        if part.startswith("outcome"):
            hyps = [related(p2, space1), d._as_bool(allowed2), d._as_bool(r1.allowed)] + list(ctx.facts)
            if part != "outcome":       # the two cases apart: MAP_FIXED or not
                hyps.append(fixed if part == "outcome-fixed" else z3.Not(fixed))
            goal = same_outcome
        elif part == "instances":
            hyps, goal = [d._as_bool(inv_pte_frame_in_use(s2)), d._as_bool(allowed2)], instances
        elif part == "attrs":
            hyps, goal = [related(p2, space1), same_outcome], related(after2, r1.state.space_of(caller))
        else:
            hyps = [contents_at(s2, p2, s1, caller, at), same_outcome, instances, fresh_object_unused(s1, at)]
            goal = contents_at(new2, after2, r1.state, caller, at)
        hyps.append(in_scope(flags))
        # Generalise level 1's start (hint or pick) to a free constant S, keeping only what its
        # definition says under MAP_FIXED: valid for every S, hence for level 1's start.
        hyps.append(z3.Implies(fixed, r1.start == addr))
        start = z3.BitVec("refine.start", 64)
        # Selecting from an if-then-else of arrays (level 1's merged states) is expanded, so that
        # the solver beta-reduces the lambdas instead of reasoning about array terms.
        hyps = [z3.simplify(z3.substitute(h, (r1.start, start)), expand_select_ite=True) for h in hyps]
        goal = z3.simplify(z3.substitute(goal, (r1.start, start)), expand_select_ite=True)
        args.update({"start (level 1's, generalised)": start,
                     "outcome (level 2)": z3.substitute(out2, (r1.start, start)),
                     "outcome (level 1)": z3.substitute(r1.outcome, (r1.start, start))})
        return hyps, goal, Ctx({"before": s2, "after": new2}, args)
    where = f"{shape}-by-{'root' if caller == ROOT else 'other'}-" if shape else ""
    return Obligation(f"mmap-refines-level1[{where}{part}:{SCOPE}]", "refine", build, tactic="ematching")


def other_process_obligation(shape: str, caller: int, fn: Any = None):
    """mmap by `caller` in a two-process shape leaves the other process's slot related (its VMAs,
    page table, break and words, at both levels): in particular MAP_SHARED's fresh frames are none
    the other maps. R before, the invariants and `allowed` (with level 2's alloc_ok) enter as their
    instances at a free page `kx`, `at`'s page and the frames mapped or allocated there, as
    mm.other_obligation. The caller's own clauses and the sharing clause after mmap are proved with
    one process only (see the module docstring)."""
    from ...specs.obligations import Ctx, Obligation, invariants_hold
    from .fork import _instances

    def build() -> tuple:
        layout = layout_of(shape)
        s2, s1, ctx, allowed2, out2, new2, r1, choice, args = _step(fn, shape, caller)
        kx = z3.BitVec("refine.kx", 64)
        at = page_address()
        pages = (kx, d.vpn_of(at))
        frames = tuple(p.pt.get(k)[0] for p in s2.procs for k in pages)
        keys = pages + frames + tuple(choice.alloc.fwd.get(k)[0] for k in pages) \
            + tuple(choice.alloc.inv.get(f)[1] for f in frames)
        hyps = [_instances(inv, keys, ()) for inv in invariants_hold(s2)] + [
            _instances(tree_related(s2, s1, layout), pages, (at,)), _instances(d._as_bool(allowed2), keys, ()),
            d._as_bool(r1.allowed), in_scope(args["flags"])] + list(ctx.facts)
        goal = _instances(slot_related(new2, r1.state, layout, other_slot(s1, layout, caller), at), (kx,), (at,))
        args.update({"page": kx, "at": at, "outcome (level 2)": out2, "outcome (level 1)": r1.outcome})
        return hyps, goal, Ctx({"before": s2, "after": new2}, args)
    who = "root" if caller == ROOT else "other"
    (other,) = [pid for pid, _, _, _ in SHAPES[shape] if pid != caller]
    # The other process maps a frame holding a non-zero word (only a running one maps anything).
    feature = populated_page(other, private=False) if both_running(shape) else None
    return Obligation(f"mmap-refines-level1[{shape}-by-{who}-other-process:{SCOPE}]", "refine", build,
                      tactic="push-ite", feature=feature)


def sharing_obligation(shape: str, caller: int):
    """mmap by `caller` in a shape where both processes run keeps R's sharing clause at a free page
    `kx`: a page the caller maps anew is level 1's new object (next_obj, which no page of the other
    names: the instance at kx of the level-1 invariant inv1_fresh_objects_unused, proved by the
    level1-* obligations) and level 2's fresh frame (free before: the other maps none). Chained on
    the shape's outcome and attrs parts (equal outcomes, the caller's attributes after at kx); level
    1's start is generalised as in `obligation`."""
    from ...specs.invariants1 import page_names_old_object
    from ...specs.obligations import Ctx, Obligation, invariants_hold
    from .fork import _instances
    from .relation import running_slots, sharing_at

    def build() -> tuple:
        layout = layout_of(shape)
        s2, s1, ctx, allowed2, out2, new2, r1, choice, args = _step(None, shape, caller)
        _, after2 = d.find_proc(new2, caller)
        kx = z3.BitVec("refine.kx", 64)
        frames = tuple(p.pt.get(kx)[0] for p in s2.procs)
        keys = (kx,) + frames + (choice.alloc.fwd.get(kx)[0],) + tuple(choice.alloc.inv.get(f)[1] for f in frames)
        (a, i), (b, j) = running_slots(s1, layout)
        other = b if a == caller else a
        fixed = d._as_bool(ne(band(args["flags"], MAP_FIXED | MAP_FIXED_NOREPLACE), 0))
        hyps = [_instances(inv, keys, ()) for inv in invariants_hold(s2)] + [
            _instances(tree_related(s2, s1, layout), (kx,), ()), _instances(d._as_bool(allowed2), keys, ()),
            d._as_bool(r1.allowed), in_scope(args["flags"]), d._as_bool(eq(out2, r1.outcome)),
            _instances(related(after2, r1.state.space_of(caller)), (kx,), ()),
            d._as_bool(page_names_old_object(s1.space_of(other).pages.get(kx), s1.next_obj)),
            z3.Implies(fixed, r1.start == args["addr"])] + list(ctx.facts)
        goal = sharing_at(r1.state, a, new2.procs[i], b, new2.procs[j], kx)
        start = z3.BitVec("refine.start", 64)
        hyps = [z3.simplify(z3.substitute(h, (r1.start, start)), expand_select_ite=True) for h in hyps]
        goal = z3.simplify(z3.substitute(goal, (r1.start, start)), expand_select_ite=True)
        args.update({"start (level 1's, generalised)": start, "page": kx,
                     "outcome (level 2)": z3.substitute(out2, (r1.start, start))})
        return hyps, goal, Ctx({"before": s2, "after": new2}, args)
    who = "root" if caller == ROOT else "other"
    return Obligation(f"mmap-refines-level1[{shape}-by-{who}-sharing:{SCOPE}]", "refine", build, tactic="push-ite")


def every_shape_obligation() -> list:
    """mmap's chain for the caller (PARTS) and the sharing clause, for every running caller of every
    two-process shape: proved by tests (marked slow), each in a process of its own. Not in the suite
    for its time budget: the attrs part took up to 19 s with two jobs (11.8 M units; one process:
    about 1.5 s), everything else at most 4 s, all proved on seeds 0-9."""
    from .fork import sources
    obs = []
    for shape, caller in sources():
        if len(SHAPES[shape]) > 1:
            obs += [obligation(part, None, shape, caller) for part in PARTS]
            if both_running(shape):
                obs.append(sharing_obligation(shape, caller))
    return obs


def obligations() -> list:
    from .fork import sources
    return [obligation(part) for part in PARTS] + [other_process_obligation(shape, caller) for shape, caller in sources()
                                                   if len(SHAPES[shape]) > 1]
