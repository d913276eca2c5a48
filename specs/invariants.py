"""The kernel-design (level 2) invariants, each stated once, page-wise or frame-wise.

Each predicate takes a `model.design.KState` and returns a bool on a concrete state or a Z3 term
on a symbolic one: the proofs (specs/obligations.py) and the oracle's check of impl's real state
(oracle/abstraction.py) call the very same functions.
"""
from __future__ import annotations

from typing import Any, Callable

from ..model.design import (
    BLOCKED,
    END_USER_VPN,
    FIRST_USER_VPN,
    SparseMap,
    MIN_USER_ADDR,
    PROT_RWX,
    PTE_PROTNONE,
    RUNNING,
    ZOMBIE,
    KState,
    Proc,
    find_vma,
    forall_keys,
    is_live,
    is_page_aligned,
    pte_executable,
    pte_mapped,
    pte_present,
    pte_user,
    pte_writable,
)
from ..model.logic import add, all_of, any_of, band, eq, implies, ite, ne, not_, ule, ult
from .abi import PROT_EXEC, PROT_WRITE, TASK_SIZE


def _each_live(s: KState, fn: Callable[[Proc], Any]) -> Any:
    return all_of(*[implies(is_live(p), fn(p)) for p in s.procs])


def _each_slot(vmas: tuple, fn: Callable[[Any], Any]) -> Any:
    return all_of(*[implies(v.used, fn(v)) for v in vmas])


# The VMA-list properties, on a range-based list (concrete states, the vma_list proofs). On the
# page-wise map of a symbolic state alignment and disjointness hold by construction (one attribute
# per page); the `vma_list-*` obligations prove the list operations keep them.

def list_page_aligned(vmas: tuple) -> Any:
    return _each_slot(vmas, lambda v: all_of(is_page_aligned(v.start), is_page_aligned(v.end), ult(v.start, v.end),
                                             eq(band(v.prot, PROT_RWX), v.prot)))


def list_in_user_space(vmas: tuple) -> Any:
    return _each_slot(vmas, lambda v: all_of(ule(MIN_USER_ADDR, v.start), ule(v.end, TASK_SIZE)))


def list_disjoint(vmas: tuple) -> Any:
    return all_of(*[implies(all_of(x.used, y.used), any_of(ule(x.end, y.start), ule(y.end, x.start)))
                    for i, x in enumerate(vmas) for y in vmas[i + 1:]])


def _vmas(s: KState, on_list: Callable[[tuple], Any], on_page: Callable[[Any, tuple], Any] | None) -> Any:
    def one(p: Proc) -> Any:
        if isinstance(p.vmas, SparseMap):
            return True if on_page is None else p.vmas.forall(on_page)
        return on_list(p.vmas)
    return _each_live(s, one)


def inv_proc_state_valid(s: KState) -> Any:
    """Every process slot is FREE, RUNNING, BLOCKED or ZOMBIE."""
    return all_of(*[ule(p.state, ZOMBIE) for p in s.procs])


def inv_vmas_page_aligned(s: KState) -> Any:
    """Every VMA starts and ends on a page boundary, is not empty, and has only R/W/X prot bits."""
    return _vmas(s, list_page_aligned, lambda k, v: eq(band(v[1], PROT_RWX), v[1]))


def inv_vmas_in_user_space(s: KState) -> Any:
    """Every VMA lies inside user space: above page 0, at most up to TASK_SIZE."""
    return _vmas(s, list_in_user_space, lambda k, v: all_of(ule(FIRST_USER_VPN, k), ult(k, END_USER_VPN)))


def inv_vmas_disjoint(s: KState) -> Any:
    """No two VMAs of a process overlap."""
    return _vmas(s, list_disjoint, None)


def inv_brk_consistent(s: KState) -> Any:
    """The heap starts page-aligned in user space and the break lies between its start and TASK_SIZE.

    Page-wise coverage of [brk_start, brk) by an RW VMA is deliberately not an invariant: Linux lets
    munmap and mprotect punch the heap and brk does not refill the hole (linux-facts "brk"); what
    brk itself maps is lemma_brk_grow_maps_heap."""
    return _each_live(s, lambda p: implies(ne(p.state, ZOMBIE), all_of(
        is_page_aligned(p.brk_start), ule(MIN_USER_ADDR, p.brk_start), ule(p.brk_start, p.brk),
        ule(p.brk, TASK_SIZE))))


def inv_pte_in_vma(s: KState) -> Any:
    """Every mapped user page lies inside a VMA of its process (LevitateOS's elf-no-vmas bug breaks it)."""
    return _each_live(s, lambda p: p.pt.forall(lambda k, pte: find_vma(p.vmas, k)[0]))


def inv_pte_rights_within_vma(s: KState) -> Any:
    """A present PTE is a user page whose rights are within the x86-64 encoding of its VMA's prot
    (RW only if PROT_WRITE, executable only if PROT_EXEC, present only if some PROT bit is set)."""
    def ok(p: Proc, k: Any, pte: tuple) -> Any:
        _, prot, _ = find_vma(p.vmas, k)
        return implies(pte_present(pte), all_of(
            pte_user(pte), ne(band(prot, PROT_RWX), 0),
            implies(pte_writable(pte), ne(band(prot, PROT_WRITE), 0)),
            implies(pte_executable(pte), ne(band(prot, PROT_EXEC), 0))))
    return _each_live(s, lambda p: p.pt.forall(lambda k, pte: ok(p, k, pte)))


def inv_pte_protnone_iff_vma_none(s: KState) -> Any:
    """A mapped page is non-present (kept with PTE_PROTNONE) exactly when its VMA is PROT_NONE."""
    def ok(p: Proc, k: Any, pte: tuple) -> Any:
        _, prot, _ = find_vma(p.vmas, k)
        none = eq(band(prot, PROT_RWX), 0)
        return all_of(eq(not_(pte_present(pte)), none), implies(none, eq(pte[1], PTE_PROTNONE)))
    return _each_live(s, lambda p: p.pt.forall(lambda k, pte: ok(p, k, pte)))


def inv_pte_frame_in_use(s: KState) -> Any:
    """A mapped page's frame is allocated (never a free frame)."""
    return _each_live(s, lambda p: p.pt.forall(lambda k, pte: s.frames.get(pte[0])[0]))


def inv_rmap_inverts_pt(s: KState) -> Any:
    """A process maps each frame at most once: the reverse map of a mapped page's frame names it."""
    def ok(p: Proc, k: Any, pte: tuple) -> Any:
        r = p.rmap.get(pte[0])
        return all_of(r[0], eq(r[1], k))
    return _each_live(s, lambda p: p.pt.forall(lambda k, pte: ok(p, k, pte)))


def inv_rmap_in_pt(s: KState) -> Any:
    """Every reverse-map entry names a mapped page whose PTE points back to the frame."""
    def ok(p: Proc, f: Any, r: tuple) -> Any:
        pte = p.pt.get(r[1])
        return all_of(pte_mapped(pte), eq(pte[0], f))
    return _each_live(s, lambda p: p.rmap.forall(lambda f, r: ok(p, f, r)))


def mapping_count(s: KState, f: Any) -> Any:
    """How many live processes map frame f (each maps it at most once, inv_rmap_inverts_pt)."""
    total: Any = 0
    for p in s.procs:
        total = add(total, ite(all_of(is_live(p), p.rmap.get(f)[0]), 1, 0))
    return total


def _frame_maps(s: KState) -> tuple:
    return (s.frames, *[p.rmap for p in s.procs])


def inv_refcount_counts_mappings(s: KState) -> Any:
    """A frame's reference count equals the number of page-table entries that map it."""
    return forall_keys(_frame_maps(s), lambda f: eq(s.frames.get(f)[1], mapping_count(s, f)))


def inv_shared_frame_same_page(s: KState) -> Any:
    """Two live processes that map one frame map it at the same page: only fork shares a frame,
    at the page where the parent maps it, and nothing moves a mapping (no mremap)."""
    ps = s.procs

    def ok(f: Any) -> Any:
        return all_of(*[implies(all_of(is_live(x), is_live(y), x.rmap.get(f)[0], y.rmap.get(f)[0]),
                                eq(x.rmap.get(f)[1], y.rmap.get(f)[1]))
                        for i, x in enumerate(ps) for y in ps[i + 1:]])
    return forall_keys(tuple(p.rmap for p in ps), ok)


def inv_frame_free_xor_owned(s: KState) -> Any:
    """A frame is either free or owned (referenced by some mapping), never both, never neither."""
    return forall_keys(_frame_maps(s), lambda f: eq(s.frames.get(f)[0], ne(s.frames.get(f)[1], 0)))


def inv_cow_private_writable_exclusive(s: KState) -> Any:
    """A frame mapped writable in a private mapping is referenced exactly once (copy-on-write)."""
    def ok(p: Proc, k: Any, pte: tuple) -> Any:
        _, _, shared = find_vma(p.vmas, k)
        return implies(all_of(pte_writable(pte), not_(shared)), eq(s.frames.get(pte[0])[1], 1))
    return _each_live(s, lambda p: p.pt.forall(lambda k, pte: ok(p, k, pte)))


def inv_idle_holds_nothing(s: KState) -> Any:
    """A process that is not running (zombie, or vfork parent that lent its memory) holds no VMA,
    PTE or frame: exit frees everything, vfork moves it to the child."""
    def empty(p: Proc) -> Any:
        no_vma = p.vmas.forall(lambda k, v: False) if isinstance(p.vmas, SparseMap) else \
            all_of(*[not_(v.used) for v in p.vmas])
        return all_of(no_vma, p.pt.forall(lambda k, pte: False), p.rmap.forall(lambda f, r: False))
    return _each_live(s, lambda p: implies(ne(p.state, RUNNING), empty(p)))


def inv_pids_unique(s: KState) -> Any:
    """Live processes have distinct pids, none 0 and none the reaper's."""
    ps = s.procs
    return all_of(_each_live(s, lambda p: all_of(ne(p.pid, 0), ne(p.pid, s.reaper))),
                  *[implies(all_of(is_live(x), is_live(y)), ne(x.pid, y.pid))
                    for i, x in enumerate(ps) for y in ps[i + 1:]])


def inv_parent_alive_or_reaper(s: KState) -> Any:
    """Every live process's parent is the reaper or another live process that has not exited
    (orphans go to the reaper)."""
    def ok(q: Proc) -> Any:
        return all_of(ne(q.parent, q.pid), any_of(
            eq(q.parent, s.reaper), *[all_of(is_live(p), ne(p.state, ZOMBIE), eq(p.pid, q.parent)) for p in s.procs]))
    return _each_live(s, ok)


def inv_parent_chain_acyclic(s: KState) -> Any:
    """No live process is its own ancestor: following parents from any process reaches the reaper
    (a cycle of any length the slots allow is excluded; length 1 by inv_parent_alive_or_reaper)."""
    from itertools import permutations
    ps = s.procs
    cycles = [all_of(*[all_of(is_live(ps[j]), eq(ps[j].parent, ps[ring[(i + 1) % n]].pid)) for i, j in enumerate(ring)])
              for n in range(2, len(ps) + 1) for ring in permutations(range(len(ps)), n)
              if ring[0] == min(ring)]                                  # each cycle once, from its lowest slot
    return not_(any_of(*cycles)) if cycles else True


def inv_vfork_lender_blocked(s: KState) -> Any:
    """A vfork child is not a zombie, its parent is blocked lending it the address space, and a
    lender lends to one child only."""
    def ok(q: Proc) -> Any:
        return implies(ne(q.vfork_parent, 0), all_of(
            ne(q.state, ZOMBIE), eq(q.parent, q.vfork_parent),
            any_of(*[all_of(is_live(p), eq(p.state, BLOCKED), eq(p.pid, q.vfork_parent)) for p in s.procs])))
    ps = s.procs
    one = all_of(*[implies(all_of(is_live(x), is_live(y), ne(x.vfork_parent, 0)), ne(x.vfork_parent, y.vfork_parent))
                   for i, x in enumerate(ps) for y in ps[i + 1:]])
    return all_of(_each_live(s, ok), one)


def inv_blocked_has_borrower(s: KState) -> Any:
    """A blocked process has a live vfork child borrowing its address space."""
    return _each_live(s, lambda p: implies(eq(p.state, BLOCKED), any_of(
        *[all_of(is_live(q), eq(q.vfork_parent, p.pid)) for q in s.procs])))


# The invariant list, in the order reports print them.
INVARIANTS: dict[str, Callable[[KState], Any]] = {f.__name__: f for f in (
    inv_proc_state_valid,
    inv_vmas_page_aligned,
    inv_vmas_in_user_space,
    inv_vmas_disjoint,
    inv_brk_consistent,
    inv_pte_in_vma,
    inv_pte_rights_within_vma,
    inv_pte_protnone_iff_vma_none,
    inv_pte_frame_in_use,
    inv_rmap_inverts_pt,
    inv_rmap_in_pt,
    inv_refcount_counts_mappings,
    inv_shared_frame_same_page,
    inv_frame_free_xor_owned,
    inv_cow_private_writable_exclusive,
    inv_idle_holds_nothing,
    inv_pids_unique,
    inv_parent_alive_or_reaper,
    inv_parent_chain_acyclic,
    inv_vfork_lender_blocked,
    inv_blocked_has_borrower,
)}


def violated(s: KState) -> list[str]:
    """Names of the invariants a concrete state breaks."""
    return [name for name, inv in INVARIANTS.items() if not inv(s)]
