"""The bridge from impl's raw kernel state to the model's kernel-design level (DESIGN.md contract 6).

`abstract(raw)` maps impl's plain-data state (`impl.kernel.RawKernelState`: per process its VMA
list and the PTEs read from emulated memory, the frame table with reference counts) to a concrete
`model.design.KState`, one state component at a time; `check_invariants(raw)` evaluates on it the
very predicates `forkspec prove` proves (specs/invariants.py), so a latent kernel bug shows at the
step that introduces it, before a user program notices.

The raw state is read duck-typed (attribute names only); oracle/ may import impl/, but nothing here
depends on impl's classes. Representation choices the abstraction makes:
- impl keeps PROT_NONE pages present but supervisor-only; level 2 writes them as PTE_PROTNONE
  (frame kept, P clear). A supervisor-only page in an accessible VMA therefore shows up as a
  violation of inv_pte_protnone_iff_vma_none.
- Software PTE bits (impl's PTE_COW, the A/D bits) are dropped; non-present entries hold no frame
  (impl's PTE_FILE_HOLE marks a file page beyond EOF) and are not mapped pages at level 2.
- Page-table frames are the kernel's own, not user frames: they are left out of the frame table.
- A vfork parent's address space is lent to its child: while a child borrows it (impl's
  `shares_mm_with`), the parent is BLOCKED and holds nothing, the child holds the mm and names the
  lender as vfork_parent.
- Frame contents are not compared (one word per frame is 0); views are the checker's business.
"""
from __future__ import annotations

from typing import Any

from ..model import design as d
from ..specs.invariants import INVARIANTS

# impl's process states -> level 2 (a process blocked in wait4 still owns its address space).
# Whether a process is a blocked vfork lender is decided by whether a child borrows its mm:
# impl reports the parent "runnable" at the vfork event (before it blocks) and still
# "blocked-vfork" at the child's Exit event (before it is woken), with the mm already its own.
_STATES = {"runnable": d.RUNNING, "running": d.RUNNING, "blocked-wait": d.RUNNING,
           "blocked-vfork": d.RUNNING, "zombie": d.ZOMBIE}
_X86_P, _X86_RW, _X86_US, _X86_NX = 1 << 0, 1 << 1, 1 << 2, 1 << 63
REAPER_PID = 1          # impl's init, which raw_state leaves out


def abstract_vmas(raw_proc: Any) -> tuple:
    """The process's VMA list, sorted by start (level 2 lists are range-based)."""
    return tuple(sorted((d.Vma(True, v.start, v.end, v.prot, bool(v.shared)) for v in raw_proc.vmas),
                        key=lambda v: v.start))


def abstract_pte_flags(flags: int) -> int:
    """x86 leaf flags -> level 2: P/RW/US/NX kept, a supervisor-only page is PTE_PROTNONE."""
    if not flags & _X86_P:
        return 0
    if not flags & _X86_US:
        return d.PTE_PROTNONE
    return flags & (_X86_P | _X86_RW | _X86_US | _X86_NX)


def abstract_ptes(raw_proc: Any) -> tuple[d.SparseMap, d.SparseMap]:
    """(page table vpn -> (frame, flags), reverse map frame -> (True, vpn)). When a frame is mapped
    at several pages of one process the reverse map keeps the lowest page, so the others break
    inv_rmap_inverts_pt."""
    pt: dict[int, tuple] = {}
    rmap: dict[int, tuple] = {}
    for va, frame, flags in sorted(raw_proc.ptes, reverse=True):
        level2 = abstract_pte_flags(flags)
        if level2:
            vpn = va >> d.PAGE_SHIFT
            pt[vpn] = (frame, level2)
            rmap[frame] = (True, vpn)
    return d.SparseMap(d.PTE_DEFAULT, pt), d.SparseMap(d.RMAP_DEFAULT, rmap)


def abstract_frames(raw: Any) -> d.SparseMap:
    """User frames: frame -> (used, refcount, 0); page-table frames and free frames are left out."""
    return d.SparseMap(d.FRAME_DEFAULT, {f.frame: (True, f.refcount, 0) for f in raw.frames if f.kind == "user"})


def abstract_process(raw_proc: Any, lender: bool = False) -> d.Proc:
    """One process; `lender`: a vfork child borrows its address space (see _STATES)."""
    state = _STATES.get(raw_proc.state)
    if state is None:
        raise ValueError(f"impl process {raw_proc.pid} has unknown state {raw_proc.state!r}")
    if lender and state == d.RUNNING:
        state = d.BLOCKED
    lends = state != d.RUNNING            # a zombie or a vfork parent holds nothing
    pt, rmap = (d.empty_pt(), d.empty_rmap()) if lends else abstract_ptes(raw_proc)
    return d.Proc(pid=raw_proc.pid, state=state, parent=raw_proc.ppid,
                  vfork_parent=raw_proc.shares_mm_with or 0,
                  status=raw_proc.exit_status or 0,
                  vmas=() if lends else abstract_vmas(raw_proc),
                  brk_start=raw_proc.start_brk, brk=raw_proc.brk, pt=pt, rmap=rmap)


def abstract(raw: Any, reaper: int = REAPER_PID, cow: bool = True) -> d.KState:
    """impl's raw kernel state as a level-2 state (`cow` only names the fork strategy)."""
    lenders = {p.shares_mm_with for p in raw.processes if p.shares_mm_with}
    procs = tuple(abstract_process(p, p.pid in lenders) for p in sorted(raw.processes, key=lambda p: p.pid))
    return d.KState(procs=procs, frames=abstract_frames(raw), reaper=reaper, cow=cow)


def check_invariants(raw: Any, reaper: int = REAPER_PID) -> list[str]:
    """Names of the level-2 invariants impl's state violates (empty when all hold)."""
    state = abstract(raw, reaper)
    return [name for name, inv in INVARIANTS.items() if not inv(state)]


def explain(raw: Any, reaper: int = REAPER_PID) -> str:
    """A readable account of the violations: per invariant, the offending processes."""
    state = abstract(raw, reaper)
    lines = []
    for name, inv in INVARIANTS.items():
        if inv(state):
            continue
        culprits = [p.pid for p in state.procs if not inv(d.KState((p,), state.frames, state.reaper, state.cow))]
        where = f" (pid {', '.join(map(str, culprits))})" if culprits else ""
        lines.append(f"{name}{where}: {inv.__doc__.strip().splitlines()[0]}")
    return "\n".join(lines)
