"""The abstraction function level 2 (kernel design) -> level 1 (what a user sees), and the
refinement obligations built on it.

`vma_attr(found, prot, shared)` is the abstraction of one page's VMA attributes into level 1's
page attribute word (model/state.py): a page inside a VMA is ATTR_MAPPED with the VMA's PROT_*
bits, plus ATTR_SHARED for MAP_SHARED. The refinement relation R(s2, s1) for one process says
that, page by page, level 1's word has exactly those bits (its kind, backing object and the
SIGBUS/GROWSDOWN bits are level-1 detail that level 2 does not model: R asks them to be an
ordinary anonymous/image/heap mapping, or a fixed stack or TLS page, which every level-1
transition treats alike (relation.ORDINARY_KINDS)), and that the break agrees.

R has three parts. VMA attributes and the break (above). Contents (`contents_related`): inside a
VMA, level 2's word of a page (its frame's word, 0 when no frame is mapped) equals level 1's 8-byte
value at the page's first byte, so loads and stores are related for 8-byte accesses at page-aligned
user addresses (level 2 has one word per frame). The process tree (`tree_related`), stated per
level-1 tree shape of at most two processes (SHAPES) because level 1's process structure is
concrete: slot j holds pid PIDS[j], states/parents/zombie statuses agree, a running process's
memory is related, and a process level 1 has reaped is FREE or a zombie of the reaper at level 2.

Modules: relation.py (R and the states it relates), mm.py (munmap, mprotect, brk, load, store
in one process), tree.py (exit, wait4), fork.py (fork COW and eager, vfork, load and store
after a fork), exec.py (execve), mmap.py (mmap). From related states, when both levels allow the step, the
outcomes are equal and the new states are related. Proved, each with a hypotheses-satisfiable
twin (specs/obligations.with_vacuity_checks); the scope, and what is not covered:
- munmap, mprotect, brk, load, store: one process; loads and stores are 8-byte, page-aligned;
  the contents clause after munmap, mprotect and brk is proved by obligations of its own
  (mm.contents_obligation), per case of the step.
- munmap, mprotect, brk in two-process shapes (mm.shape_obligations): the caller's clauses, the
  other process's slot and the sharing clause; the suite proves the running-child shape by the
  parent and the vfork-child shape by the child (mm.SHAPE_SOURCES), tests every running caller of
  every two-process shape (marked slow, run by CI).
- exit, wait4 (WNOHANG), fork, vfork: per level-1 tree shape with at most two processes before
  the step (SHAPES, a vfork in progress included) and each running caller; states of three
  processes (after a fork from a two-process shape) are not a source shape.
- load in every two-process shape by each running caller (fork.load_obligations).
- store after a fork (the copy-on-write break, the other process unchanged): the running-child
  shape, store by the parent; the other callers and the orphan shape are proved by tests (marked slow, run by CI).
  The sharing clauses R gained for fork are proved kept by fork, vfork, exit, wait4, that store
  and munmap/mprotect/brk (above), and by execve per shape. mmap next to another process: the
  suite proves its slot untouched (mmap.other_process_obligation, every two-process shape and
  running caller); the caller's chain and the sharing clause in those shapes are proved by tests
  (mmap.every_shape_obligation, marked slow, run by CI), for the suite's time budget.
- execve: per representative image (every layout the ELF writer makes) under the Linux and
  levitate layouts and per shape (a vfork child's execve unblocks its parent); the segments are
  taken from level 1's result; Linux's growsdown [stack] and [vdso]/[vvar] are not related.
- mmap (one process; see above for two): outside MAP_GROWSDOWN, MAP_DROPPABLE and resource failures (mmap.SCOPE), with level 1's
  placement as level 2's choice; its hypothesis that level 1's next backing object reads zero
  (mmap.fresh_object_unused) is proved from the level-1 invariant inv1_fresh_objects_unused
  (specs/invariants1.py: initial, preserved by every level-1 memory transition, implies it).

SKIPPED and SKIP_REASON list obligations not proved yet (none today).
"""
from __future__ import annotations

from . import fork, mm, tree
from . import exec as execve
from . import mmap
from .relation import PID, SHAPES, contents_related, related, tree_related, vma_attr, word1, word2

# Each module holds the obligations of one group of transitions and exports obligations().
MODULES = (mm, tree, fork, execve, mmap)

SKIPPED: tuple = ()
SKIP_REASON: dict = {}


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
