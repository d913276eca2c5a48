"""fork (both strategies), vfork, clone, exit, wait4, orphans, limits: on the kernel end to end."""
from __future__ import annotations

import pytest

from forkspec.impl.backend import ImplBackend
from forkspec.specs.abi import Errno, Nr, ReportKind, wait_status_exited

from .asm import DATA, Asm, image
from .helpers import check_raw_invariants, of, run_images, run_text, syscalls

STRATEGIES = ("eager", "cow")


def loaded(trace, pid=None):
    return [r.values[1] for r in of(trace, "Report", pid) if r.kind == ReportKind.loaded]


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_fork_isolates_private_memory_and_shares_map_shared(strategy):
    trace, _ = run_text("""
r1 = mmap(0, 0x2000, rw, private|anon)
r2 = mmap(0, 0x1000, rw, shared|anon)
store(r1, 7)
r3 = fork
  child:  load(r1); store(r1, 9); store(r2, 5); exit(3)
  parent:
    r4 = wait4(r3)
    load(r1)
    load(r2)
    exit(0)
""", strategy)
    child = syscalls(trace, Nr.fork)[0].result
    assert loaded(trace, child) == [7]
    root = trace.events[0].pid
    assert loaded(trace, root) == [7, 5]
    assert [r.values for r in of(trace, "Report", root) if r.kind == ReportKind.wstatus] == [(wait_status_exited(3),)]
    assert of(trace, "Exit")[-1].status == 0


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_droppable_mapping_is_wiped_in_the_fork_child(strategy):
    """linux-facts.md fork row: MAP_DROPPABLE implies wipe-on-fork; the child reads zeros, the
    parent keeps its data, and a split piece of the mapping keeps the attribute."""
    trace, _ = run_text("""
r1 = mmap(0, 0x3000, rw, droppable|anon)
store(r1, 7)
store(r1+0x2000, 8)
mprotect(r1+0x1000, 0x1000, r)
r2 = fork
  child:  load(r1); load(r1+0x2000); exit(0)
  parent:
    r3 = wait4(r2)
    load(r1)
    load(r1+0x2000)
""", strategy)
    child = syscalls(trace, Nr.fork)[0].result
    assert loaded(trace, child) == [0, 0]
    assert loaded(trace, trace.events[0].pid) == [7, 8]


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_raw_state_invariants_hold_after_every_event(strategy):
    seen = []

    def on_event(event, kernel):
        state = kernel.raw_state()
        check_raw_invariants(state)
        seen.append(state)
    run_text("""
r1 = mmap(0, 0x3000, rw, private|anon)
r2 = mmap(0, 0x1000, rw, shared|anon)
store(r1, 1)
r3 = fork
  child:
    store(r1+0x1000, 2)
    r5 = brk(0)
    r6 = brk(r5+0x2000)
    store(r5, 3)
    exit(0)
  parent:
    r4 = wait4(r3)
    mprotect(r1, 0x1000, r)
    munmap(r1+0x1000, 0x1000)
    observe
    exit(0)
""", strategy, on_event=on_event)
    assert len(seen) > 8


def test_cow_fork_shares_frames_until_written():
    counts = []

    def on_event(event, kernel):
        if type(event).__name__ == "Syscall" and event.nr == Nr.fork:
            state = kernel.raw_state()
            parent, child = state.processes[0], state.processes[1]
            va = [v.start for v in parent.vmas if v.kind == "mmap"][0]
            frames = {p.pid: dict((pva, f) for pva, f, _ in p.ptes)[va] for p in (parent, child)}
            counts.append((frames[parent.pid] == frames[child.pid],
                           {f.frame: f.refcount for f in state.frames}[frames[parent.pid]]))
    text = """
r1 = mmap(0, 0x1000, rw, private|anon)
store(r1, 1)
r2 = fork
  child:  store(r1, 2); exit(0)
  parent: r3 = wait4(r2); load(r1); exit(0)
"""
    run_text(text, "cow", on_event=on_event)
    run_text(text, "eager", on_event=on_event)
    assert counts == [(True, 2), (False, 1)]


def test_vfork_child_shares_memory_and_parent_waits():
    trace, _ = run_text("""
r1 = mmap(0, 0x1000, rw, private|anon)
r2 = vfork
  child:  store(r1, 11); exit(4)
  parent: load(r1); exit(0)
""")
    vfork_event = syscalls(trace, Nr.vfork)[0]
    vfork_at = trace.events.index(vfork_event)
    child = vfork_event.result
    assert trace.events[vfork_at + 1] == of(trace, "Exit", child)[0]      # child runs to exit first
    assert loaded(trace, trace.events[0].pid) == [11]


def test_clone_flag_sets():
    trace, _ = run_text("""
r1 = clone(sigchld)
  child: exit(5)
  parent:
    r2 = wait4(r1)
    r3 = clone(thread|vm)
      child: exit(1)
      parent:
        r4 = clone(sighand)
          child: exit(1)
          parent:
            r5 = clone(vm|sighand|thread|sigchld)
              child: exit(1)
              parent: exit(0)
""")
    results = [e.result for e in syscalls(trace, Nr.clone)]
    assert results[0] > 0
    assert results[1:] == [-Errno.EINVAL, -Errno.EINVAL, -Errno.ENOSYS]


def test_wait4_errors_and_wnohang():
    trace, _ = run_text("""
r1 = wait4(-1)
r2 = fork
  child: sched_yield; exit(7)
  parent:
    r3 = wait4(-1, wnohang)
    r4 = wait4(1)
    r5 = wait4(-1, 0x100)
    r6 = wait4(-0x80000000)
    r7 = wait4(0)
    r8 = wait4(-1)
    exit(0)
""")
    results = [e.result for e in syscalls(trace, Nr.wait4)]
    child = syscalls(trace, Nr.fork)[0].result
    assert results == [-Errno.ECHILD, 0, -Errno.ECHILD, -Errno.EINVAL, -Errno.ESRCH, child, -Errno.ECHILD]


def test_wait4_reaps_in_creation_order():
    trace, _ = run_text("""
r1 = fork
  child: sched_yield; sched_yield; exit(1)
  parent:
    r2 = fork
      child: exit(2)
      parent:
        sched_yield
        sched_yield
        sched_yield
        r3 = wait4(-1)
        r4 = wait4(-1)
        exit(0)
""")
    forks = [e.result for e in syscalls(trace, Nr.fork)]
    exits = [e.pid for e in of(trace, "Exit")][:2]
    assert exits == forks[::-1]                                   # the second child died first
    assert [e.result for e in syscalls(trace, Nr.wait4)] == forks


def test_wait4_bad_status_pointer_is_efault_and_consumes_the_zombie():
    a = Asm().sys(Nr.fork).test_rax().jnz("parent").exit(3)
    a.label("parent").sys(Nr.sched_yield)
    a.sys(Nr.wait4, 2**64 - 1, 0x10, 0, 0)
    a.sys(Nr.wait4, 2**64 - 1, DATA, 0, 0).exit(0)
    trace = run_images({"i0": image(a.assemble(), bss=16)})
    assert [e.result for e in syscalls(trace, Nr.wait4)] == [-Errno.EFAULT, -Errno.ECHILD]


def test_orphan_is_adopted_by_init():
    trace, _ = run_text("""
r1 = fork
  child:
    r2 = fork
      child: sched_yield; sched_yield; r3 = getppid; exit(0)
      parent: exit(0)
  parent: r4 = wait4(r1); exit(0)
""")
    assert syscalls(trace, Nr.getppid)[0].result == 1


def test_process_table_full_is_eagain():
    a = Asm().mov("r12", 70)
    a.label("loop").sys(Nr.fork).test_rax().jnz("parent").exit(0)
    a.label("parent").raw(b"\x49\xff\xcc").jnz("loop").exit(0)
    trace = run_images({"i0": image(a.assemble())})
    results = [e.result for e in syscalls(trace, Nr.fork)]
    assert all(r > 0 for r in results[:63]) and set(results[63:]) == {-Errno.EAGAIN}


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_out_of_frames_fork_is_enomem_and_the_kernel_survives(strategy):
    small = ImplBackend(fork_strategy=strategy, memory_mib=4)
    a = Asm().mov("r12", 40)
    a.label("loop").sys(Nr.fork).test_rax().jnz("parent")
    a.sys(Nr.mmap, 0, 0x40_000, 3, 0x22, 2**64 - 1, 0)          # children take 64 pages each
    a.sys(Nr.sched_yield).exit(0)
    a.label("parent").raw(b"\x49\xff\xcc").jnz("loop").exit(0)
    trace = small.run({"i0": image(a.assemble())}, "i0")
    results = [e.result for e in syscalls(trace, Nr.fork)]
    mmaps = [e.result for e in syscalls(trace, Nr.mmap)]
    assert -Errno.ENOMEM in results + mmaps
    assert of(trace, "Exit")[-1].pid in (trace.events[0].pid,) or of(trace, "Exit")
    kernel = small.last_kernel
    assert kernel.frames.free_count == kernel.frames.usable       # everything came back


def test_exit_status_encoding_and_signal_status():
    trace, _ = run_text("""
r1 = fork
  child: exit(300)
  parent:
    r2 = wait4(r1)
    r3 = fork
      child: store(0x10, 1)
      parent: r4 = wait4(r3); exit(-1)
""")
    statuses = [r.values[0] for r in of(trace, "Report") if r.kind == ReportKind.wstatus]
    assert statuses == [0x2C00, 0x000B]
    assert of(trace, "Exit")[-1].status == 0xFF00
