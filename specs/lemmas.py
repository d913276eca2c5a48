"""Facts that span a transition (lemmas), and the refinement obligations level 2 -> level 1.

A lemma is a predicate over one step `(old, args, outcome, new)`; its obligation assumes the
invariants on `old` and the transition's `allowed`, and proves the lemma (STYLE.md item 4:
Hyperkernel's `spec_lemma_*`).
"""
from __future__ import annotations

from typing import Any, Callable

import z3

from ..model import design as d
from ..model.logic import all_of, eq, implies, ite, ne, not_, sub, ule, ult
from .obligations import TRANSITIONS, Ctx, Obligation, invariants_hold, step  # noqa: E402


def _page() -> z3.BitVecRef:
    return z3.BitVec("lemma.page", 64)


def _views_equal(s1: d.KState, p1: d.Proc, s2: d.KState, p2: d.Proc, k: Any) -> Any:
    return all_of(*[d._eq_any(x, y) for x, y in zip(d.proc_view(s1, p1, k), d.proc_view(s2, p2, k))])


def lemma_fork_child_view_equals_parent(old, args, outcome, new) -> Any:
    """Right after fork the child sees exactly what the parent sees, on every page (rights and
    contents), with either fork strategy."""
    k = _page()
    _, parent = d.find_proc(new, args.pid)
    return _views_equal(new, new.procs[-1], new, parent, k)


def lemma_vfork_child_sees_parent_memory(old, args, outcome, new) -> Any:
    """vfork: the child sees the parent's address space as it was (it borrows it)."""
    k = _page()
    _, parent = d.find_proc(old, args.pid)
    return _views_equal(new, new.procs[-1], old, parent, k)


def _store_ok(old, args, outcome) -> Any:
    return eq(outcome, d.ACCESS_OK)


def lemma_private_store_invisible_to_others(old, args, outcome, new) -> Any:
    """A store into a private mapping changes no other process's view of any page (copy-on-write
    and eager copies alike: writes after fork are private)."""
    k = _page()
    _, caller = d.find_proc(old, args.pid)
    shared = d.find_vma(caller.vmas, d.vpn_of(args.va))[2]
    others = [all_of(d.is_live(p), ne(p.pid, args.pid)) for p in old.procs]
    same = [_views_equal(new, q, old, p, k) for p, q in zip(old.procs, new.procs)]
    return implies(all_of(_store_ok(old, args, outcome), not_(shared)),
                   all_of(*[implies(o, s) for o, s in zip(others, same)]))


def lemma_shared_store_visible_to_sharers(old, args, outcome, new) -> Any:
    """A store into a MAP_SHARED mapping is seen by every process that maps the same frame."""
    k = _page()
    _, caller = d.find_proc(old, args.pid)
    vpn = d.vpn_of(args.va)
    shared = d.find_vma(caller.vmas, vpn)[2]
    pte = caller.pt.get(vpn)
    seen = []
    for p, q in zip(old.procs, new.procs):
        theirs = p.pt.get(k)
        sharer = all_of(d.is_live(p), ne(p.pid, args.pid), d.pte_mapped(pte), d.pte_mapped(theirs),
                        eq(theirs[0], pte[0]), d.find_vma(p.vmas, k)[0])
        seen.append(implies(sharer, eq(d.proc_view(new, q, k)[2], args.value)))
    return implies(all_of(_store_ok(old, args, outcome), shared), all_of(*seen))


def lemma_wait4_reaps_only_children(old, args, outcome, new) -> Any:
    """wait4 reaps a process only if it is a zombie child of the caller (and then returns its pid)."""
    return all_of(*[implies(all_of(d.is_live(p), not_(d.is_live(q))),
                            all_of(eq(p.state, d.ZOMBIE), eq(p.parent, args.pid), eq(outcome, p.pid)))
                    for p, q in zip(old.procs, new.procs)])


def lemma_exit_orphans_go_to_reaper(old, args, outcome, new) -> Any:
    """After exit, every live child of the exited process has the reaper as its parent."""
    return all_of(*[implies(all_of(d.is_live(p), eq(p.parent, args.pid), ne(p.pid, args.pid)),
                            eq(q.parent, new.reaper)) for p, q in zip(old.procs, new.procs)])


def lemma_exit_frees_everything(old, args, outcome, new) -> Any:
    """exit of a process that owns its memory drops one reference from every frame it mapped
    (freeing those it alone mapped) and leaves it no VMA and no PTE."""
    f, k = z3.BitVec("lemma.frame", 64), _page()
    _, caller = d.find_proc(old, args.pid)
    _, after = d.find_proc(new, args.pid)
    owned = caller.rmap.get(f)[0]
    before_fr, after_fr = old.frames.get(f), new.frames.get(f)
    return implies(eq(caller.vfork_parent, 0), all_of(
        not_(d.find_vma(after.vmas, k)[0]), not_(d.pte_mapped(after.pt.get(k))),
        implies(owned, all_of(eq(after_fr[1], sub(before_fr[1], 1)),
                              implies(eq(before_fr[1], 1), not_(after_fr[0]))))))


def lemma_execve_leaves_nothing_old(old, args, outcome, new) -> Any:
    """After execve no page of the old address space is mapped (a mapped page is an image page
    populated with a frame that was free before, holding the image's non-zero word for it), and
    the VMAs are exactly the image's segments (and kernel regions) it was given."""
    k = _page()
    _, after = d.find_proc(new, args.pid)
    segs = tuple(d.Vma(True, v.start, v.end, d.band(v.prot, d.PROT_RWX), False) for v in args.segments)
    want, got = d.list_find(segs, k), d.find_vma(after.vmas, k)
    pte = after.pt.get(k)
    if args.words is None:
        fresh = not_(d.pte_mapped(pte))
    else:
        word = args.words.get(k)[0]
        fresh = implies(d.pte_mapped(pte), all_of(not_(old.frames.get(pte[0])[0]), ne(word, 0),
                                                  eq(new.frames.get(pte[0])[2], word)))
    return all_of(fresh, *[d._eq_any(x, y) for x, y in zip(want, got)])


def lemma_munmap_frees_exactly_the_range(old, args, outcome, new) -> Any:
    """A successful munmap unmaps every page of the range and changes no page outside it."""
    k = _page()
    _, before = d.find_proc(old, args.pid)
    _, after = d.find_proc(new, args.pid)
    lo = d.vpn_of(args.addr)
    hi = d.vpn_of(d.add(args.addr, d.page_align_up(args.length)))
    inside = all_of(ule(lo, k), ult(k, hi))
    unmapped = all_of(not_(d.find_vma(after.vmas, k)[0]), not_(d.pte_mapped(after.pt.get(k))))
    kept = all_of(*[d._eq_any(x, y) for x, y in zip(before.pt.get(k) + d.find_vma(before.vmas, k),
                                                        after.pt.get(k) + d.find_vma(after.vmas, k))])
    return implies(eq(outcome, 0), ite(inside, unmapped, kept))


def lemma_brk_grow_maps_heap(old, args, outcome, new) -> Any:
    """A brk that moves the break up maps the new heap pages read-write and private."""
    k = _page()
    _, before = d.find_proc(old, args.pid)
    _, after = d.find_proc(new, args.pid)
    lo, hi = d.vpn_of(d.page_align_up(before.brk)), d.vpn_of(d.page_align_up(args.addr))
    found, prot, shared = d.find_vma(after.vmas, k)
    return implies(all_of(eq(outcome, args.addr), ule(lo, k), ult(k, hi)),
                   all_of(found, eq(prot, d.PROT_READ | d.PROT_WRITE), not_(shared)))


# (transition, lemma) pairs.
LEMMA_STEPS: tuple[tuple[str, Callable], ...] = (
    ("fork_cow", lemma_fork_child_view_equals_parent),
    ("fork_eager", lemma_fork_child_view_equals_parent),
    ("vfork", lemma_vfork_child_sees_parent_memory),
    ("store", lemma_private_store_invisible_to_others),
    ("store", lemma_shared_store_visible_to_sharers),
    ("wait4", lemma_wait4_reaps_only_children),
    ("exit", lemma_exit_orphans_go_to_reaper),
    ("exit", lemma_exit_frees_everything),
    ("execve", lemma_execve_leaves_nothing_old),
    ("munmap", lemma_munmap_frees_exactly_the_range),
    ("brk", lemma_brk_grow_maps_heap),
)


def lemma_obligation(transition: str, lemma: Callable) -> Obligation:
    t = TRANSITIONS[transition]

    def build() -> tuple:
        old, args, choice, allowed, outcome, new = step(t)
        hyps = invariants_hold(old) + [d._as_bool(allowed)]
        return hyps, d._as_bool(lemma(old, args, outcome, new)), Ctx(
            {"before": old, "after": new}, {"args": args, "choice": choice, "outcome": outcome})
    return Obligation(f"{transition}-{lemma.__name__}", "lemma", build)


LEMMAS: list[Obligation] = [lemma_obligation(t, lemma) for t, lemma in LEMMA_STEPS]


def refinement_obligations() -> list[Obligation]:
    """Level 2 -> level 1 refinement (model/refinement.py); see its module for what is missing."""
    from ..model import refinement
    return refinement.obligations()
