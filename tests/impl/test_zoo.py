"""Each planted bug changes behaviour the way shared/bug-zoo.md describes, and the clean kernel
does not: every test runs the same program on both."""
from __future__ import annotations

import pytest

from forkspec.impl.backend import ImplBackend
from forkspec.impl.zoo import BUGS
from forkspec.oracle._internal.elf import PF_R, PF_W, PF_X, Segment, write_elf
from forkspec.oracle.errors import InvalidArgument
from forkspec.specs.abi import Nr, ReportKind, SiCode, Signal as Sig
from forkspec.specs.profiles import levitate_stack_range

from .asm import TEXT, Asm
from .helpers import backend, check_raw_invariants, of, run_images, run_text, syscalls

ZOO_DOC_NAMES = {"elf-no-vmas", "frame-corrupt-on-return", "stale-root-after-exec", "shared-page-overwrite",
                 "no-cr3-switch", "heap-not-forked", "prot-flags-inverted", "tls-inside-stack"}


def loaded(trace, pid=None):
    return [r.values[1] for r in of(trace, "Report", pid) if r.kind == ReportKind.loaded]


def both(text, bug, strategy="eager"):
    return run_text(text, strategy)[0], run_text(text, strategy, plant={bug})[0]


def test_catalogue_covers_bug_zoo_md_and_rejects_unknown_names():
    assert ZOO_DOC_NAMES <= set(BUGS)
    with pytest.raises(InvalidArgument, match="known:"):
        ImplBackend(plant=frozenset({"elf-no-vma"}))


FORK_CHILD_EXITS = """
r1 = fork
  child: exit(3)
  parent: r2 = wait4(r1); exit(0)
"""


@pytest.mark.parametrize("strategy", ["eager", "cow"])
def test_elf_no_vmas_child_faults_fetching_its_first_instruction(strategy):
    clean, buggy = both(FORK_CHILD_EXITS, "elf-no-vmas", strategy)
    assert of(clean, "Signal") == []
    [signal] = of(buggy, "Signal")
    child = syscalls(buggy, Nr.fork)[0].result
    assert (signal.pid, signal.signo, signal.si_code) == (child, Sig.SIGSEGV, SiCode.SEGV_MAPERR)
    assert TEXT <= signal.si_addr < TEXT + 0x1000                 # the fetch of the code after fork


def test_elf_no_vmas_shows_in_raw_state_at_load_time():
    states = []
    run_text("exit(0)", plant={"elf-no-vmas"}, on_event=lambda e, k: states.append(k.raw_state()))
    with pytest.raises(AssertionError, match="outside every VMA"):
        check_raw_invariants(states[0])


def test_frame_corrupt_on_return_child_resumes_with_garbage():
    clean, buggy = both(FORK_CHILD_EXITS, "frame-corrupt-on-return")
    child = syscalls(buggy, Nr.fork)[0].result
    assert of(clean, "Exit", syscalls(clean, Nr.fork)[0].result)[0].status == 3 << 8
    assert of(buggy, "Exit", child)[0].status != 3 << 8


STORE_AFTER_EXEC = """
r1 = execve(1)
exit(1)
image 1 (exec, split):
r1 = mmap(0, 0x1000, rw, private|anon)
store(r1, 5)
load(r1)
exit(0)
"""


def test_stale_root_after_exec_mmap_lands_in_the_old_table():
    clean, buggy = both(STORE_AFTER_EXEC, "stale-root-after-exec")
    assert loaded(clean) == [5] and of(clean, "Signal") == []
    address = syscalls(buggy, Nr.mmap)[0].result
    [signal] = of(buggy, "Signal")
    assert (signal.signo, signal.si_addr) == (Sig.SIGSEGV, address)


def test_shared_page_overwrite_loses_the_first_segments_bytes():
    text = Asm().mov("rbx", TEXT + 0x1000).load("rax", "rbx").report_rax_loaded(TEXT + 0x1000).exit(0).assemble()
    text += b"\xcc" * (0x1010 - len(text))
    elf = write_elf([Segment(TEXT, text, len(text), PF_R | PF_X),
                     Segment(TEXT + 0x1010, b"D" * 16, 16, PF_R | PF_W)], TEXT)
    clean = run_images({"i0": elf})
    buggy = run_images({"i0": elf}, plant={"shared-page-overwrite"})
    assert loaded(clean) == [0xCCCC_CCCC_CCCC_CCCC]
    assert loaded(buggy) == [0]


PRIVATE_AFTER_FORK = """
r1 = mmap(0, 0x1000, rw, private|anon)
store(r1, 1)
r2 = fork
  child: store(r1, 2); exit(0)
  parent: r3 = wait4(r2); load(r1); exit(0)
"""


def test_no_cr3_switch_child_runs_in_the_parents_memory():
    clean, buggy = both(PRIVATE_AFTER_FORK, "no-cr3-switch")
    assert loaded(clean) == [1]
    assert loaded(buggy) != [1]


@pytest.mark.parametrize("strategy", ["eager", "cow"])
def test_heap_not_forked_child_faults_on_the_heap(strategy):
    text = """
r1 = brk(0)
r2 = brk(r1+0x2000)
store(r1, 7)
r3 = fork
  child: load(r1); exit(0)
  parent: r4 = wait4(r3); exit(0)
"""
    clean, buggy = both(text, "heap-not-forked", strategy)
    assert loaded(clean) == [7]
    heap = syscalls(buggy, Nr.brk)[0].result
    [signal] = of(buggy, "Signal")
    assert (signal.signo, signal.si_code, signal.si_addr) == (Sig.SIGSEGV, SiCode.SEGV_MAPERR, heap)


def test_prot_flags_inverted():
    read_only = """
r1 = mmap(0, 0x1000, r, private|anon)
store(r1, 1)
exit(0)
"""
    clean, buggy = both(read_only, "prot-flags-inverted")
    assert [(s.signo, s.si_code) for s in of(clean, "Signal")] == [(Sig.SIGSEGV, SiCode.SEGV_ACCERR)]
    assert of(buggy, "Signal") == [] and of(buggy, "Exit")[-1].status == 0
    rwx = read_only.replace("r, private", "rwx, private")
    clean, buggy = both(rwx, "prot-flags-inverted")
    assert of(clean, "Signal") == []
    assert [(s.signo, s.si_code) for s in of(buggy, "Signal")] == [(Sig.SIGSEGV, SiCode.SEGV_ACCERR)]


def test_tls_inside_stack_overlaps_the_stack_and_leaks_a_frame():
    clean, buggy = both("exit(0)", "tls-inside-stack")
    lo, hi = levitate_stack_range()
    tls = dict((n, (a, b)) for n, a, b in buggy.events[0].layout.regions)["tls"]
    assert lo <= tls[0] < hi
    clean_tls = dict((n, (a, b)) for n, a, b in clean.events[0].layout.regions)["tls"]
    assert clean_tls[0] >= hi
    kernel = backend("eager", {"tls-inside-stack"}).last_kernel
    assert kernel.frames.free_count == kernel.frames.usable - 1        # the overwritten stack frame


def test_missing_tlb_flush_lets_a_stale_writable_translation_through():
    text = """
r1 = mmap(0, 0x1000, rw, private|anon)
store(r1, 1)
r2 = mprotect(r1, 0x1000, r)
store(r1, 2)
load(r1)
exit(0)
"""
    clean, buggy = both(text, "missing-tlb-flush")
    assert [(s.signo, s.si_code) for s in of(clean, "Signal")] == [(Sig.SIGSEGV, SiCode.SEGV_ACCERR)]
    assert of(buggy, "Signal") == [] and loaded(buggy) == [2]
