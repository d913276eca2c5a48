"""oracle/abstraction.py: impl's raw state -> level 2, checked with the proved invariants."""
from __future__ import annotations

from types import SimpleNamespace as NS

import pytest

from forkspec.model import design as d
from forkspec.oracle.abstraction import abstract, abstract_pte_flags, check_invariants, explain
from forkspec.impl.backend import ImplBackend
from forkspec.oracle._internal.codegen import compile_program
from forkspec.oracle.encoding import loads
from forkspec.specs.trace import Budget


def run_text(text, strategy, plant, on_event):
    build = compile_program(loads("# forkspec-program v1\n" + text.strip("\n") + "\n"))
    return ImplBackend(fork_strategy=strategy, plant=plant).run(build.images, build.entry, Budget(), on_event)

PROGRAM = """
r1 = mmap(0, 0x3000, rw, private|anon)
r2 = mmap(0, 0x2000, rw, shared|anon)
store(r1+0x1000, 0x2a)
store(r2, 5)
mprotect(r1, 0x1000, none)
r3 = brk(0)
r4 = brk(r3+0x3000)
store(r3, 9)
munmap(r1+0x2000, 0x1000)
r5 = fork
  child:  store(r1+0x1000, 7); store(r2, 8); observe; exit(3)
  parent: wait4(r5); load(r1+0x1000); mprotect(r1, 0x1000, rw); load(r1); observe; exit(0)
"""

VFORK = """
r1 = mmap(0, 0x2000, rw, private|anon)
store(r1, 1)
r2 = vfork
  child:  store(r1, 7); exit(3)
  parent: load(r1); wait4(r2); observe; exit(0)
"""


def violations(text, strategy, plant=frozenset()):
    """(event kind, violated invariants) after every event of the run."""
    seen = []
    run_text(text, strategy=strategy, plant=frozenset(plant),
             on_event=lambda event, kernel: seen.append((type(event).__name__, check_invariants(kernel.raw_state()))))
    return seen


@pytest.mark.parametrize("strategy", ["eager", "cow"])
@pytest.mark.parametrize("text", [PROGRAM, VFORK], ids=["fork-mm", "vfork"])
def test_impl_states_satisfy_every_invariant(text, strategy):
    seen = violations(text, strategy)
    assert len(seen) > 5
    assert [(kind, bad) for kind, bad in seen if bad] == []


@pytest.mark.parametrize("strategy", ["eager", "cow"])
def test_elf_no_vmas_breaks_pte_in_vma_right_after_load(strategy):
    seen = violations(PROGRAM, strategy, {"elf-no-vmas"})
    kind, bad = seen[0]
    assert kind == "Exec" and "inv_pte_in_vma" in bad


@pytest.mark.parametrize("bug,invariant", [
    ("heap-not-forked", "inv_pte_in_vma"),
    ("prot-flags-inverted", "inv_pte_rights_within_vma"),
    ("tls-inside-stack", "inv_refcount_counts_mappings"),
])
def test_other_zoo_bugs_break_an_invariant(bug, invariant):
    seen = violations(PROGRAM, "cow", {bug})
    assert any(invariant in bad for _, bad in seen)


# --- unit tests on hand-made raw states ------------------------------------------------------------

def raw_proc(pid=2, ptes=(), vmas=(), state="runnable", ppid=1, shares=None):
    return NS(pid=pid, ppid=ppid, state=state, exit_status=None, vmas=tuple(vmas), ptes=tuple(ptes),
              brk=0x600000, start_brk=0x600000, cr3=0x1000, mm_root=0x1000, shares_mm_with=shares)


def vma(start, end, prot=3, shared=False):
    return NS(start=start, end=end, prot=prot, shared=shared, anon=True, kind="mmap", growsdown=False)


def raw(procs, frames):
    return NS(processes=tuple(procs), frames=tuple(frames), free_frames=0, pending_tlb_flushes=(), generation=0)


def frame(n, refcount=1, kind="user"):
    return NS(frame=n, refcount=refcount, kind=kind, mappings=())


RW_USER = 0x1 | 0x2 | 0x4 | (1 << 63)


def test_supervisor_only_page_is_protnone_and_software_bits_drop():
    assert abstract_pte_flags(0x1 | (1 << 63)) == d.PTE_PROTNONE
    assert abstract_pte_flags(RW_USER | (1 << 9) | 0x60) == RW_USER
    assert abstract_pte_flags(1 << 10) == 0          # file hole: no frame


def test_consistent_raw_state_passes_and_pagetable_frames_are_ignored():
    p = raw_proc(ptes=[(0x400000, 7, RW_USER)], vmas=[vma(0x400000, 0x402000)])
    state = raw([p], [frame(7), frame(99, 1, "pagetable")])
    assert check_invariants(state) == []
    s = abstract(state)
    assert s.frames.get(99) == d.FRAME_DEFAULT and s.frames.get(7) == (True, 1, 0)


def test_pte_outside_vma_is_reported():
    p = raw_proc(ptes=[(0x500000, 7, RW_USER)], vmas=[vma(0x400000, 0x402000)])
    assert "inv_pte_in_vma" in check_invariants(raw([p], [frame(7)]))
    assert "pid 2" in explain(raw([p], [frame(7)]))


def test_frame_mapped_twice_in_one_process_is_reported():
    p = raw_proc(ptes=[(0x400000, 7, RW_USER & ~0x2), (0x401000, 7, RW_USER & ~0x2)],
                 vmas=[vma(0x400000, 0x402000)])
    assert "inv_rmap_inverts_pt" in check_invariants(raw([p], [frame(7, 2)]))


def test_writable_private_frame_shared_by_two_processes_is_reported():
    a = raw_proc(2, ptes=[(0x400000, 7, RW_USER)], vmas=[vma(0x400000, 0x401000)])
    b = raw_proc(3, ppid=2, ptes=[(0x400000, 7, RW_USER)], vmas=[vma(0x400000, 0x401000)])
    bad = check_invariants(raw([a, b], [frame(7, 2)]))
    assert bad == ["inv_cow_private_writable_exclusive"]


def test_overlapping_vmas_are_reported():
    p = raw_proc(vmas=[vma(0x400000, 0x403000), vma(0x402000, 0x404000)])
    assert check_invariants(raw([p], [])) == ["inv_vmas_disjoint"]


def test_vfork_parent_lends_its_address_space():
    parent = raw_proc(2, ptes=[(0x400000, 7, RW_USER)], vmas=[vma(0x400000, 0x401000)])
    child = raw_proc(3, ppid=2, ptes=[(0x400000, 7, RW_USER)], vmas=[vma(0x400000, 0x401000)], shares=2)
    state = raw([parent, child], [frame(7)])
    assert check_invariants(state) == []
    s = abstract(state)
    assert s.procs[0].state == d.BLOCKED and s.procs[0].pt.items() == []
