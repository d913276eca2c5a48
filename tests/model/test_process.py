"""fork / vfork / clone / exit / wait4 / getppid sequences against linux-facts.md."""
from __future__ import annotations

import pytest

from forkspec.model import memory, process, system
from forkspec.model.state import REAPER, Blocks, OutOfScope, Run
from forkspec.specs.abi import (MAP_ANONYMOUS, MAP_SHARED, WALL, WCLONE, WNOHANG, U64, Errno, Nr,
                                wait_status_exited)

from .helpers import ANON, PID, err, levitate_state, linux_state, mmap

MMAP_LO = 0x1000_0000_0000


def fork(state, parent, child, vfork=False):
    result = process.fork(state, process.ForkArgs(parent), process.ForkChoice(child), vfork=vfork)
    assert result.allowed and result.outcome == child
    return result.state


def wait(state, pid, upid, options=0):
    return process.wait4(state, process.Wait4Args(pid, upid & U64, options))


def exit_(state, pid, code):
    return process.exit(state, process.ExitArgs(pid, code)).state


def test_fork_child_sees_pre_fork_data_writes_private_both_ways_facts_fork():
    state = mmap(levitate_state(), 0, 0x1000, 3, ANON, pick=MMAP_LO).state
    state = memory.store(state, PID, MMAP_LO, 5).state
    state = fork(state, PID, 101)
    assert memory.load(state, 101, MMAP_LO).outcome.value == 5
    state = memory.store(state, 101, MMAP_LO, 6).state
    state = memory.store(state, PID, MMAP_LO + 8, 7).state
    assert memory.load(state, PID, MMAP_LO).outcome.value == 5
    assert memory.load(state, 101, MMAP_LO + 8).outcome.value == 0
    assert state.procs[101].path == "root/0" and state.procs[101].ppid == PID


def test_shared_anon_write_seen_across_fork_facts_mmap_shared_across_fork():
    state = mmap(levitate_state(), 0, 0x1000, 3, MAP_SHARED | MAP_ANONYMOUS, pick=MMAP_LO).state
    state = fork(state, PID, 101)
    state = memory.store(state, 101, MMAP_LO, 0xAB).state
    assert memory.load(state, PID, MMAP_LO).outcome.value == 0xAB


def test_vfork_blocks_parent_and_shares_memory_until_exit_facts_vfork():
    state = mmap(levitate_state(), 0, 0x1000, 3, ANON, pick=MMAP_LO).state
    state = fork(state, PID, 101, vfork=True)
    assert state.procs[PID].run == Run.vfork_blocked
    state = memory.store(state, 101, MMAP_LO, 9).state
    assert memory.load(state, PID, MMAP_LO).outcome.value == 9
    state = exit_(state, 101, 0)
    assert state.procs[PID].run == Run.running


def test_pid_reuse_of_a_live_process_is_not_allowed():
    state = fork(levitate_state(), PID, 101)
    assert not process.fork(state, process.ForkArgs(PID), process.ForkChoice(101)).allowed
    assert not process.fork(state, process.ForkArgs(PID), process.ForkChoice(PID)).allowed


def test_fork_eagain_only_at_the_process_limit():
    state = levitate_state()
    assert not process.fork(state, process.ForkArgs(PID), process.ForkChoice(fail=int(Errno.EAGAIN))).allowed
    for child in range(101, 101 + 63):
        state = fork(state, PID, child)
    assert process.fork(state, process.ForkArgs(PID), process.ForkChoice(fail=int(Errno.EAGAIN))).allowed


@pytest.mark.parametrize("code,status", [(0, 0x0000), (255, 0xFF00), (256, 0x0000), (300, 0x2C00), (U64, 0xFF00)],
                         ids=["facts-wait4-exit-0", "facts-wait4-exit-255", "facts-wait4-exit-256",
                              "facts-wait4-exit-300", "facts-wait4-exit-minus-1"])
def test_exit_status_encoding(code, status):
    state = exit_(fork(levitate_state(), PID, 101), 101, code)
    assert state.procs[101].status == status == wait_status_exited(code)


def test_wait4_reaps_in_creation_order_not_exit_order_facts_wait4_several_zombies():
    state = fork(fork(levitate_state(), PID, 101), PID, 102)
    state = exit_(exit_(state, 102, 2), 101, 1)
    first = wait(state, PID, -1)
    assert first.outcome == 101
    assert wait(first.state, PID, -1).outcome == 102


WAIT4_ROWS = [
    ("no-children", None, -1, 0, err(Errno.ECHILD)),
    ("no-children-wnohang", None, -1, WNOHANG, err(Errno.ECHILD)),
    ("not-our-child-self", 101, PID, 0, err(Errno.ECHILD)),
    ("not-our-child-nonexistent", 101, 4242, 0, err(Errno.ECHILD)),
    ("pid-int-min", 101, -(1 << 31), 0, err(Errno.ESRCH)),
    ("wnohang-child-running", 101, -1, WNOHANG, 0),
    ("options-wexited", 101, -1, 4, err(Errno.EINVAL)),
    ("options-wnowait", 101, -1, 0x0100_0000, err(Errno.EINVAL)),
    ("options-0x100", 101, -1, 0x100, err(Errno.EINVAL)),
    ("wclone-only-sigchld-children", 101, -1, WCLONE | WNOHANG, err(Errno.ECHILD)),
    ("wall-sees-them", 101, -1, WALL | WNOHANG, 0),
]


@pytest.mark.parametrize("row,child,upid,options,expected", WAIT4_ROWS, ids=[f"facts-wait4-{r[0]}" for r in WAIT4_ROWS])
def test_wait4_rows(row, child, upid, options, expected):
    state = levitate_state()
    if child is not None:
        state = fork(state, PID, child)
    assert wait(state, PID, upid, options).outcome == expected


def test_wait4_grandchild_is_not_ours_facts_wait4_grandchild():
    state = fork(fork(levitate_state(), PID, 101), 101, 102)
    assert wait(state, PID, 102).outcome == err(Errno.ECHILD)


def test_wait4_blocks_while_children_run():
    assert isinstance(wait(fork(levitate_state(), PID, 101), PID, -1).outcome, Blocks)


def test_wait4_stores_status_and_efault_consumes_zombie_facts_wait4_bad_status_pointer():
    state = exit_(fork(levitate_state(), PID, 101), 101, 3)
    ok = system.wait4(state, PID, U64, 0, 0x40_1000)
    assert ok.outcome == 101 and memory.load(ok.state, PID, 0x40_1000, 4).outcome.value == 0x300
    bad = system.wait4(state, PID, U64, 0, 0x7000_0000_0000)
    assert bad.outcome == err(Errno.EFAULT)
    assert wait(bad.state, PID, -1).outcome == err(Errno.ECHILD)


def test_orphan_goes_to_levitates_init():
    state = exit_(fork(fork(levitate_state(), PID, 101), 101, 102), 101, 0)
    assert process.getppid(state, process.PidArgs(102), 0).outcome == 1


def test_orphan_goes_to_reaper_whose_pid_is_learned_facts_fork_orphan():
    state = fork(fork(linux_state(), PID, 101), 101, 102)
    state = exit_(state, 101, 0)
    assert state.procs[102].ppid == REAPER
    learned = process.getppid(state, process.PidArgs(102), 1)
    assert learned.allowed and learned.outcome == 1
    assert process.getppid(learned.state, process.PidArgs(PID), 0).outcome == 1     # the root's parent too
    assert not process.getppid(state, process.PidArgs(102), PID).allowed            # a program process


def test_exit_of_parent_reaps_zombie_children():
    state = fork(fork(levitate_state(), PID, 101), 101, 102)
    state = exit_(exit_(state, 102, 0), 101, 0)
    assert 102 not in state.procs


def test_clone_forklike_sets_and_out_of_scope():
    state = levitate_state()
    assert process.clone(state, process.CloneArgs(PID, 17), process.ForkChoice(101)).outcome == 101
    vf = process.clone(state, process.CloneArgs(PID, 0x4111), process.ForkChoice(101))
    assert vf.state.procs[PID].run == Run.vfork_blocked
    assert isinstance(process.clone(state, process.CloneArgs(PID, 0x10000), process.ForkChoice(101)).outcome,
                      OutOfScope)


def test_system_step_reads_choices_off_results():
    state = levitate_state()
    res = system.syscall(state, PID, Nr.fork, (0,) * 6, 101)
    assert res.outcome == 101 and 101 in res.state.procs
    res = system.syscall(state, PID, Nr.mmap, (0, 0x1000, 3, ANON, U64, 0), MMAP_LO)
    assert res.allowed and res.outcome == MMAP_LO
    res = system.syscall(state, PID, Nr.getpid, (0,) * 6, PID)
    assert res.outcome == PID


def test_droppable_pages_read_zero_in_a_fork_child_measured():
    """MAP_DROPPABLE sets VM_WIPEONFORK (found by the Linux campaign: a child read 0, not 0x2a)."""
    from forkspec.specs.abi import MAP_DROPPABLE
    state = mmap(levitate_state(), 0, 0x1000, 3, MAP_DROPPABLE | MAP_ANONYMOUS, pick=MMAP_LO).state
    state = memory.store(state, PID, MMAP_LO, 0x2A).state
    state = fork(state, PID, 101)
    assert memory.load(state, 101, MMAP_LO).outcome.value == 0
    assert memory.load(state, PID, MMAP_LO).outcome.value == 0x2A
