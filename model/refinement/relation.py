"""The abstraction function level 2 -> level 1 and the refinement relation R (see __init__)."""
from __future__ import annotations

import dataclasses
from typing import Any

import z3

from ...specs.abi import TASK_SIZE
from ...specs.profiles import LINUX
from .. import design as d
from ..logic import all_of, band, bor, eq, implies, ite
from ..state import ATTR_GROWSDOWN, ATTR_KIND, ATTR_KIND_SHIFT, ATTR_MAPPED, ATTR_PROT, ATTR_SHARED, ATTR_SIGBUS, Kind
from ..symbolic import fresh_state

PID = 2


def vma_attr(found: Any, prot: Any, shared: Any) -> Any:
    """Level 1's attribute bits (mapped, prot, shared) of a page with these level-2 VMA attributes."""
    return ite(found, bor(bor(ATTR_MAPPED, band(prot, ATTR_PROT)), ite(shared, ATTR_SHARED, 0)), 0)


# Kinds R relates to level-2 VMAs: memory every level-1 transition treats as private read/write
# mappings. The stack and TLS kinds only mask observations (contents the kernel wrote), so a fixed
# stack (no GROWSDOWN: levitate's) and a TLS page are ordinary; Linux's growsdown [stack] and the
# special [vdso]/[vvar] (unsplittable, SIGBUS pages) have no level-2 counterpart and are not.
ORDINARY_KINDS = (Kind.anon, Kind.image, Kind.heap, Kind.stack, Kind.tls)


def _ordinary(attr: Any) -> Any:
    kind = band(attr, ATTR_KIND)
    return all_of(eq(band(attr, ATTR_SIGBUS | ATTR_GROWSDOWN), 0),
                  z3.Or(*[kind == (int(k) << ATTR_KIND_SHIFT) for k in ORDINARY_KINDS]))


def related(p2: d.Proc, space1: Any) -> Any:
    """R for one process: page-wise VMA attributes and the break agree."""
    k = z3.BitVec("refine.k", 64)
    attr1 = space1.pages.get(k)
    found, prot, shared = d.vma_find(p2.vmas, k)
    page_ok = z3.And(d._as_bool(eq(band(attr1, ATTR_MAPPED | ATTR_PROT | ATTR_SHARED), vma_attr(found, prot, shared))),
                     d._as_bool(implies(found, _ordinary(attr1))))
    return z3.And(z3.ForAll([k], page_ok), d._as_bool(eq(space1.start_brk, p2.brk_start)),
                  d._as_bool(eq(space1.brk, p2.brk)))


def _states():
    from ...specs.obligations import sym_state
    s2 = sym_state("r2", nprocs=1)
    p = dataclasses.replace(s2.procs[0], pid=PID, state=d.RUNNING, vfork_parent=0)
    s2 = dataclasses.replace(s2, procs=(p,))
    s1, ctx = fresh_state(LINUX, (PID,), prefix="r1")
    return s2, s1, ctx


# --- contents: one word per frame (level 2) against the bytes at the page's first word (level 1) ----
# Level 2 keeps one word per frame; level 1 keeps bytes. R relates, page by page inside a VMA, level
# 2's word (its frame's word, or 0 for a page not populated yet) to level 1's 8-byte little-endian
# value at the page's first byte (private contents or the MAP_SHARED object: load_page decides).
# Accesses are therefore related for 8-byte accesses at page-aligned user addresses only: level 2
# cannot express a byte at another offset, and level 1's straddling / non-canonical / growsdown
# cases are outside what level 2 models (R keeps GROWSDOWN and SIGBUS off every mapped page).

def word2(s2: d.KState, p2: d.Proc, k: Any) -> Any:
    """The word level 2's process p2 reads at page k (0 when no frame is mapped there)."""
    pte = p2.pt.get(k)
    return ite(d.pte_mapped(pte), s2.frames.get(pte[0])[2], 0)


def word1(s1: Any, pid: int, va: Any) -> Any:
    from ..memory import load_page
    return load_page(s1, pid, va, 8)


def contents_at(s2: d.KState, p2: d.Proc, s1: Any, pid: int, a: Any) -> Any:
    """R's contents clause at one page-aligned user address a."""
    k = d.vpn_of(a)
    return z3.Implies(z3.And(d._as_bool(d.is_page_aligned(a)), z3.ULT(a, TASK_SIZE),
                             d._as_bool(d.vma_find(p2.vmas, k)[0])),
                      d._as_bool(eq(word2(s2, p2, k), word1(s1, pid, a))))


def contents_related(s2: d.KState, p2: d.Proc, s1: Any, pid: int = PID) -> Any:
    a = z3.BitVec("refine.a", 64)
    return z3.ForAll([a], contents_at(s2, p2, s1, pid, a))


# --- the process tree: exit, wait4, fork, vfork ---------------------------------------------------
# Level 1's process structure is concrete (pid-keyed dicts, children lists, enums) and its
# transitions branch on it in Python; level 2's is symbolic. So R is stated for each level-1 tree
# SHAPE (enumerated below), with everything else symbolic, and a slot LAYOUT: level 2's slot j
# holds pid layout[j] (PIDS by default). A pid may name several slots (fork appends the child's
# slot, so the pid's older slot stays behind, FREE): the last one is the process's, the earlier
# ones are absent. For the slot of a level-1 process:
#   - state running/blocked/zombie alike, parent = ppid (level 1's REAPER sentinel = level 2's
#     reaper pid), vfork_parent alike, the zombie's wait status;
#   - a running process: R on its VMAs, break and contents (above), no wipe-on-fork page
#     (`no_wipeonfork_at`: level 2 has no MAP_DROPPABLE, and level 1's fork ignores ATTR_WIPEONFORK
#     on symbolic spaces, so R keeps the bit off rather than relate a wipe level 2 cannot do), and
#     every MAP_SHARED page populated (`shared_populated_at`: the frame is the object's page);
#   - two running processes with separate spaces: `sharing_related` (their MAP_SHARED frames are
#     level 1's objects: same object at the same address <=> same frame);
#   - a vfork-blocked process (level 1's vfork_blocked, level 2's BLOCKED): nothing about memory.
#     Its address space is lent: level 1's vfork child has the very same mm id, level 2's vfork
#     child slot holds the VMAs, page table and break, and the running child's clause relates
#     them. (The invariants keep a BLOCKED slot empty.)
# A slot whose pid level 1 does not have (reaped, or never created), or an older slot of a pid, is
# FREE, or a ZOMBIE whose parent is the reaper (level 1 lets the reaper reap it at once; level 2
# keeps it until the reaper, which it does not run, would reap it).
ROOT, OTHER, THIRD, ABSENT_PID = 2, 3, 4, 5
PIDS = (ROOT, OTHER)            # the default layout: at most two processes
PIDS3 = (ROOT, OTHER, THIRD)    # three: the sources of a fork from a two-process shape, and its results


def _run_of(run: Any) -> int:
    from ..state import Run
    return {Run.running: d.RUNNING, Run.vfork_blocked: d.BLOCKED, Run.zombie: d.ZOMBIE}[run]


# name -> (processes: tuple of (pid, ppid, run, children)); ppid None = the reaper (level 1's REAPER).
# A process whose parent is vfork_blocked and which is that parent's last child (a blocked parent
# creates no more children) is its vfork child: it shares the parent's mm (`vfork_parent_of`).
# The execve refinement reuses these shapes (vfork-child: execve by OTHER hands ROOT its space back).
SHAPES = {
    "alone": ((ROOT, None, "running", ()),),
    "running-child": ((ROOT, None, "running", (OTHER,)), (OTHER, ROOT, "running", ())),
    "zombie-child": ((ROOT, None, "running", (OTHER,)), (OTHER, ROOT, "zombie", ())),
    "orphan": ((ROOT, None, "running", ()), (OTHER, None, "running", ())),
    "vfork-child": ((ROOT, None, "vfork_blocked", (OTHER,)), (OTHER, ROOT, "running", ())),
}


def layout_of(shape: str) -> tuple:
    """The default slot layout for a shape: PIDS, or PIDS3 when it has a third process."""
    pids = {p[0] for p in SHAPES[shape]}
    return PIDS if pids <= set(PIDS) else PIDS3


def vfork_parent_of(procs1: tuple, pid: int) -> int:
    """The pid a process of a shape borrows its address space from (vfork), or 0."""
    by_pid = {p[0]: p for p in procs1}
    _, ppid, run, _ = by_pid[pid]
    parent = by_pid.get(ppid)
    if run == "zombie" or parent is None or parent[2] != "vfork_blocked" or parent[3][-1:] != (pid,):
        return 0
    return ppid


def _tree_states(shape: str, layout: tuple | None = None, cow: bool = True, pin: bool = False):
    """(s2, s1, ctx): a level-1 state of this shape with symbolic spaces (a vfork child shares its
    parent's), and a symbolic level-2 state with one slot per entry of `layout` (layout_of(shape)
    by default; `cow` is its fork strategy). `pin`: the slots of level-1 processes get R's pid and
    state as constants (an equivalent, smaller encoding of the states R relates)."""
    from ...specs.obligations import sym_state
    from ..state import REAPER, Process, Run
    procs1 = SHAPES[shape]
    layout = layout_of(shape) if layout is None else layout
    pids = tuple(p[0] for p in procs1)
    s1, ctx = fresh_state(LINUX, pids, prefix="r1")

    def mm_of(pid: int) -> int:
        lender = vfork_parent_of(procs1, pid)
        return mm_of(lender) if lender else s1.procs[pid].mm
    procs = {}
    for pid, ppid, run, children in procs1:
        old = s1.procs[pid]
        status = z3.BitVec(f"refine.status{pid}", 64) if run == "zombie" else 0
        procs[pid] = Process(pid=pid, ppid=REAPER if ppid is None else ppid, path=old.path, mm=mm_of(pid),
                             run=Run[run], status=status, children=children,
                             vfork_parent=vfork_parent_of(procs1, pid), forks=len(children))
    used = {p.mm for p in procs.values()}
    s1 = s1.with_(procs=procs, spaces={m: sp for m, sp in s1.spaces.items() if m in used})
    s2 = sym_state("t2", cow=cow, nprocs=len(layout))
    if pin:
        # The pid and state R fixes for the slot of each level-1 process, as Python numbers: the same set of
        # related states, but slot lookups (find_proc) then resolve while the terms are built.
        slots = list(s2.procs)
        for pid, p1 in procs.items():
            j = len(layout) - 1 - layout[::-1].index(pid)
            slots[j] = dataclasses.replace(slots[j], pid=pid, state=_run_of(p1.run))
        s2 = dataclasses.replace(s2, procs=tuple(slots))
    return s2, s1, ctx


def no_wipeonfork_at(space1: Any, k: Any) -> Any:
    """Page k of the level-1 space is not VM_WIPEONFORK (MAP_DROPPABLE, which level 2 does not model)."""
    from ..state import ATTR_WIPEONFORK
    return d._as_bool(eq(band(space1.pages.get(k), ATTR_WIPEONFORK), 0))


def shared_populated_at(p2: d.Proc, k: Any) -> Any:
    """Page k, if in a MAP_SHARED VMA, holds its frame (level 2 populates MAP_SHARED at mmap, and no
    transition unmaps a page without removing its VMA): the frame is the shared object's page."""
    found, _, shared = d.vma_find(p2.vmas, k)
    return z3.Implies(d._as_bool(d.all_of(found, shared)), d._as_bool(d.pte_mapped(p2.pt.get(k))))


def page_extras(p2: d.Proc, space1: Any) -> Any:
    """R's page-wise clauses beyond `related` for a running process (one quantifier: fewer of them
    keep counterexample search fast): no_wipeonfork_at and shared_populated_at at every page."""
    k = z3.BitVec("refine.w", 64)
    return z3.ForAll([k], z3.And(no_wipeonfork_at(space1, k), shared_populated_at(p2, k)))


def _same_object(attr_a: Any, attr_b: Any) -> Any:
    from ..predicates import is_mapped, is_shared, obj_of
    return d._as_bool(all_of(is_mapped(attr_a), is_shared(attr_a), is_mapped(attr_b), is_shared(attr_b),
                             eq(obj_of(attr_a), obj_of(attr_b))))


def _maps_shared_frame_only_there(p2a: d.Proc, p2b: d.Proc, k: Any, same: Any) -> Any:
    """If a's page k (in a MAP_SHARED VMA) holds frame f and b maps f too, b maps it at k, and level 1
    has both pages in the same object."""
    pte = p2a.pt.get(k)
    r = p2b.rmap.get(pte[0])
    return z3.Implies(d._as_bool(all_of(d.pte_mapped(pte), d.vma_find(p2a.vmas, k)[2], r[0])),
                      z3.And(d._as_bool(eq(r[1], k)), same))


def sharing_related(s1: Any, a: int, p2a: d.Proc, b: int, p2b: d.Proc) -> Any:
    """R between two running processes with separate address spaces (a fork's parent and child): level
    1's MAP_SHARED contents live in objects keyed by (object, address), level 2's in frames. Pages of
    both at address k in the same object map the same frame; a frame one maps in a MAP_SHARED VMA the
    other maps only at the same address, in the same object. A store into one is then seen by both
    at both levels (the two-process store obligations use it)."""
    k = z3.BitVec("refine.x", 64)
    return z3.ForAll([k], sharing_at(s1, a, p2a, b, p2b, k))


def sharing_at(s1: Any, a: int, p2a: d.Proc, b: int, p2b: d.Proc, k: Any) -> Any:
    """sharing_related's clause at page k."""
    same = _same_object(s1.space_of(a).pages.get(k), s1.space_of(b).pages.get(k))
    pa, pb = p2a.pt.get(k), p2b.pt.get(k)
    both = z3.Implies(same, d._as_bool(all_of(d.pte_mapped(pa), d.pte_mapped(pb), eq(pa[0], pb[0]))))
    return z3.And(both, _maps_shared_frame_only_there(p2a, p2b, k, same),
                  _maps_shared_frame_only_there(p2b, p2a, k, same))


def absent(s2: d.KState, p2: d.Proc) -> Any:
    """A level-2 slot with no level-1 counterpart: FREE, or a zombie the reaper would reap."""
    return d._as_bool(d.any_of(eq(p2.state, d.FREE), all_of(eq(p2.state, d.ZOMBIE), eq(p2.parent, s2.reaper))))


def slot_related(s2: d.KState, s1: Any, layout: tuple, j: int, at: Any = None) -> Any:
    """R's clause for level-2 slot j (layout[j] is its pid). With `at`, the contents clause is stated at
    that one address (a free constant in a goal: proving it for every value is the ForAll)."""
    from ..state import REAPER, Run
    pid, p2 = layout[j], s2.procs[j]
    p1 = s1.procs.get(pid)
    conds = [d._as_bool(eq(p2.pid, pid))]
    if p1 is None or pid in layout[j + 1:]:
        return z3.And(*conds, absent(s2, p2))
    parent = s2.reaper if p1.ppid == REAPER else p1.ppid
    conds += [d._as_bool(eq(p2.state, _run_of(p1.run))), d._as_bool(eq(p2.parent, parent)),
              d._as_bool(eq(p2.vfork_parent, p1.vfork_parent))]
    if p1.run == Run.zombie:
        conds.append(d._as_bool(eq(p2.status, p1.status)))
    elif p1.run == Run.running:
        space = s1.space_of(pid)
        contents = contents_related(s2, p2, s1, pid) if at is None else contents_at(s2, p2, s1, pid, at)
        conds += [related(p2, space), contents, page_extras(p2, space)]
    return z3.And(*conds)


def running_slots(s1: Any, layout: tuple) -> list[tuple[int, int]]:
    """(pid, slot) of every running level-1 process (its last slot in the layout)."""
    from ..state import Run
    return [(pid, j) for j, pid in enumerate(layout)
            if pid not in layout[j + 1:] and pid in s1.procs and s1.procs[pid].run == Run.running]


def both_running(shape: str) -> bool:
    """The shape has two running processes (R's sharing clause relates them)."""
    return sum(run == "running" for _, _, run, _ in SHAPES[shape]) == 2


def other_slot(s1: Any, layout: tuple, caller: int) -> int:
    """The slot of the one level-1 process of a two-process shape that is not the caller."""
    (j,) = [j for j, pid in enumerate(layout) if pid != caller and pid in s1.procs]
    return j


def page_address(name: str = "refine.at_page") -> Any:
    """A free page-aligned address, written as a 52-bit page number and a zero offset: a level-1
    8-byte read there stays on one page without adder reasoning (proving a clause for every page
    number is its ForAll over page-aligned addresses)."""
    return z3.Concat(z3.BitVec(name, 52), z3.BitVecVal(0, 12))


def reaper_related(s2: d.KState, layout: tuple) -> Any:
    """Level 2's reaper is none of the shape's pids (level 1's is the REAPER sentinel)."""
    return z3.And(*[d._as_bool(d.ne(s2.reaper, pid)) for pid in sorted(set(layout))], d._as_bool(d.ne(s2.reaper, 0)))


def tree_related(s2: d.KState, s1: Any, layout: tuple | None = None, at: Any = None) -> Any:
    """R on the whole state: level-2 slot j holds pid layout[j] (PIDS by default); see above. `at`:
    see slot_related."""
    layout = PIDS if layout is None else tuple(layout)
    if len(layout) != len(s2.procs):
        raise ValueError(f"layout {layout} names {len(layout)} slots, the level-2 state has {len(s2.procs)}")
    if not set(s1.procs) <= set(layout):
        raise ValueError(f"level-1 pids {sorted(s1.procs)} are not all in the layout {layout}")
    running = running_slots(s1, layout)
    pairs = [sharing_related(s1, a, s2.procs[i], b, s2.procs[j])
             for n, (a, i) in enumerate(running) for b, j in running[n + 1:]]
    return z3.And(reaper_related(s2, layout), *[slot_related(s2, s1, layout, j, at) for j in range(len(layout))],
                  *pairs)


def populated_page(caller: int, private: bool = True):
    """A vacuity feature (Obligation.feature): in the before-state the caller maps a page (a private
    one, with `private`) whose frame holds a non-zero word, so a refinement's contents clauses are
    checked against real contents, not only against empty memory."""
    def feature(ctx: Any) -> Any:
        s2 = ctx.states["before"]
        _, p = d.find_proc(s2, caller)
        k = z3.BitVec("vacuity.k", 64)
        pte = p.pt.get(k)
        private_there = z3.Not(d._as_bool(d.find_vma(p.vmas, k)[2])) if private else z3.BoolVal(True)
        return z3.And(d._as_bool(d.pte_present(pte)), private_there, s2.frames.get(pte[0])[2] != 0)
    return feature
