"""The abstraction function level 2 (kernel design) -> level 1 (what a user sees), and the
refinement obligations built on it.

`vma_attr(found, prot, shared)` is the abstraction of one page's VMA attributes into level 1's
page attribute word (model/state.py): a page inside a VMA is ATTR_MAPPED with the VMA's PROT_*
bits, plus ATTR_SHARED for MAP_SHARED. The refinement relation R(s2, s1) for one process says
that, page by page, level 1's word has exactly those bits (its kind, backing object and the
SIGBUS/GROWSDOWN bits are level-1 detail that level 2 does not model: R asks them to be an
ordinary anonymous/image/heap mapping), and that the break agrees.

R has three parts. VMA attributes and the break (above). Contents (`contents_related`): inside a
VMA, level 2's word of a page (its frame's word, 0 when no frame is mapped) equals level 1's 8-byte
value at the page's first byte, so loads and stores are related for 8-byte accesses at page-aligned
user addresses (level 2 has one word per frame). The process tree (`tree_related`), stated per
level-1 tree shape of at most two processes (SHAPES) because level 1's process structure is
concrete: slot j holds pid PIDS[j], states/parents/zombie statuses agree, a running process's
memory is related, and a process level 1 has reaped is FREE or a zombie of the reaper at level 2.

Layout: relation.py (R and the states it relates), mm.py (munmap, mprotect, brk, load, store),
tree.py (exit, wait4).

Proved (specs/prove.py runs them): munmap, mprotect, brk, load, store (two obligations: the stored
page and every other page), exit and wait4 (WNOHANG, one obligation per shape, caller and target)
at level 2 refine level 1: from related states, when both levels allow the step, the outcomes are
equal and the new states are related.

Not yet proved (skipped obligations, each with its precise reason in SKIP_REASON): mmap,
fork_cow, fork_eager, vfork and execve.
"""
from __future__ import annotations

from . import mm, tree
from .relation import PID, SHAPES, contents_related, related, tree_related, vma_attr, word1, word2

# Each module holds the obligations of one group of transitions and exports obligations().
MODULES = (mm, tree)

SKIPPED = ("mmap", "fork_cow", "fork_eager", "vfork", "execve")
SKIP_REASON = {
    "mmap": "level-1 refinement not proved yet: level 1 places mmap(NULL)/hinted mappings itself (hint, THP "
            "alignment, x86 guard gap, learned mmap_base) and gives a MAP_SHARED mapping a new backing object "
            "(next_obj) in its shared store, while level 2 takes the address (Choice.addr) and fresh frames "
            "(Choice.alloc) as choices and leaves argument checks to level 1 (it accepts an unaligned offset, "
            "a non-anonymous fd, MAP_HUGETLB). Missing: the choice correspondence (Choice.addr = level 1's "
            "start, the new object's ATTR_OBJ and zero contents against Choice.alloc's zero frames) and the "
            "restriction to calls level 1 accepts",
    "fork_cow": "level-1 refinement not proved yet: level 1's fork is concrete-only in its process structure "
                "(child path, mm id, children list, _fork_space with wipe-on-fork pages); it needs the "
                "shape-enumerated R of exit/wait4 with a third level-2 slot for the child, and R between the "
                "child's copied level-1 space and level 2's write-protected shared page table (refcounts 2)",
    "fork_eager": "level-1 refinement not proved yet: as fork_cow, plus R for the child's pages through "
                  "Choice.alloc's fresh frames (the copied words) against level 1's copied bytes",
    "vfork": "level-1 refinement not proved yet: level 1 shares one mm id between the blocked parent and the "
             "child, level 2 moves the VMAs and page table to the child and empties the parent; R has no "
             "clause for a lent address space (a BLOCKED slot's space is its vfork child's), so neither vfork "
             "nor exit/execve shapes with a vfork in progress are covered",
    "execve": "level-1 refinement not proved yet: level 1's execve builds the layout from an ELF image "
              "(segments with file contents, stack, [vdso], brk) while level 2 takes segments and brk as "
              "arguments and maps them demand-zero (file contents are not modelled at level 2), so R's "
              "contents clause fails on image pages after execve; needs the layout -> ExecveArgs "
              "correspondence and level-2 file contents (or R without contents for image pages)",
}


def obligations() -> list:
    """Every refinement obligation: each module's proved ones, then the skipped ones with their reasons."""
    from ...specs.obligations import Obligation
    obs = []
    for module in MODULES:
        obs += module.obligations()
    obs += [Obligation(f"{name}-refines-level1", "refine", lambda: ([], True, None), skip=SKIP_REASON[name])
            for name in SKIPPED]
    return obs


__all__ = ["vma_attr", "related", "contents_related", "tree_related", "word2", "word1", "obligations", "SHAPES",
           "SKIPPED", "SKIP_REASON", "PID"]
