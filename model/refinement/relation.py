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


def _ordinary(attr: Any) -> Any:
    kind = band(attr, ATTR_KIND)
    return all_of(eq(band(attr, ATTR_SIGBUS | ATTR_GROWSDOWN), 0),
                  z3.Or(*[kind == (int(k) << ATTR_KIND_SHIFT) for k in (Kind.anon, Kind.image, Kind.heap)]))


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


# --- the process tree: exit and wait4 ------------------------------------------------------------
# Level 1's process structure is concrete (pid-keyed dicts, children lists, enums) and its exit/wait4
# branch on it in Python; level 2's is symbolic. So R is stated for each level-1 tree SHAPE of at
# most two processes (root pid ROOT, second pid OTHER), enumerated below, with everything else
# symbolic: level 2's slot j holds the level-1 process with pid PIDS[j] when that one exists:
#   - live in level 1 <=> slot not FREE, with state running/zombie alike, parent = ppid (level 1's
#     REAPER sentinel = level 2's reaper pid), the zombie's wait status, and for a running process
#     R on its VMAs, break and contents (above);
#   - absent in level 1 (reaped) <=> slot FREE, or a ZOMBIE whose parent is the reaper (level 1
#     lets the reaper reap it at once; level 2 keeps it until the reaper, which it does not run,
#     would reap it).
# Shapes with a vfork in progress are not enumerated (see SKIP_REASON["vfork"]).
ROOT, OTHER, ABSENT_PID = 2, 3, 5
PIDS = (ROOT, OTHER)
def _run_of(run: Any) -> int:
    from ..state import Run
    return {Run.running: d.RUNNING, Run.vfork_blocked: d.BLOCKED, Run.zombie: d.ZOMBIE}[run]


# name -> (processes: tuple of (pid, ppid, run, children)); ppid None = the reaper (level 1's REAPER)
SHAPES = {
    "alone": ((ROOT, None, "running", ()),),
    "running-child": ((ROOT, None, "running", (OTHER,)), (OTHER, ROOT, "running", ())),
    "zombie-child": ((ROOT, None, "running", (OTHER,)), (OTHER, ROOT, "zombie", ())),
    "orphan": ((ROOT, None, "running", ()), (OTHER, None, "running", ())),
}


def _tree_states(shape: str):
    """(s2, s1, ctx): a level-1 state of this shape with symbolic spaces, and a symbolic level-2 state
    with one slot per pid."""
    from ...specs.obligations import sym_state
    from ..state import REAPER, Process, Run
    procs1 = SHAPES[shape]
    pids = tuple(p[0] for p in procs1)
    s1, ctx = fresh_state(LINUX, pids, prefix="r1")
    procs = {}
    for i, (pid, ppid, run, children) in enumerate(procs1):
        old = s1.procs[pid]
        status = z3.BitVec(f"refine.status{pid}", 64) if run == "zombie" else 0
        procs[pid] = Process(pid=pid, ppid=REAPER if ppid is None else ppid, path=old.path, mm=old.mm,
                             run=Run[run], status=status, children=children)
    s1 = s1.with_(procs=procs)
    s2 = sym_state("t2", nprocs=len(PIDS))
    return s2, s1, ctx


def tree_related(s2: d.KState, s1: Any) -> Any:
    from ..state import REAPER, Run
    conds = [z3.And(*[d._as_bool(d.ne(s2.reaper, pid)) for pid in PIDS]), d._as_bool(d.ne(s2.reaper, 0))]
    for j, pid in enumerate(PIDS):
        p2 = s2.procs[j]
        conds.append(d._as_bool(eq(p2.pid, pid)))
        p1 = s1.procs.get(pid)
        if p1 is None:
            conds.append(d._as_bool(d.any_of(eq(p2.state, d.FREE),
                                             all_of(eq(p2.state, d.ZOMBIE), eq(p2.parent, s2.reaper)))))
            continue
        parent = s2.reaper if p1.ppid == REAPER else p1.ppid
        conds += [d._as_bool(eq(p2.state, _run_of(p1.run))), d._as_bool(eq(p2.parent, parent)),
                  d._as_bool(eq(p2.vfork_parent, 0))]
        if p1.run == Run.zombie:
            conds.append(d._as_bool(eq(p2.status, p1.status)))
        elif p1.run == Run.running:
            conds += [related(p2, s1.space_of(pid)), contents_related(s2, p2, s1, pid)]
    return z3.And(*conds)
