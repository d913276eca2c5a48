"""Processes: fork (eager copy by VMA, or copy-on-write), vfork, clone, exit, wait4.

The process table is a dict pid -> Process; init (pid 1) is the reaper, not a program process:
it adopts orphans and reaps them at once. The scheduler itself lives in kernel.py.
"""
from __future__ import annotations

import struct

from ..specs.abi import (PAGE_SIZE, CLONE_SIGHAND, CLONE_THREAD, CLONE_VFORK, CLONE_VM, CLONE_FORKLIKE_FLAGS,
                         WAIT4_VALID_OPTIONS, WNOHANG, Errno, wait_status_exited)
from .frames import OutOfFrames
from .machine import (PTE_COW, PTE_FRAME_MASK, PTE_NX, PTE_P, PTE_RW, R_RAX, R_RSP, R_RCX, R_R11, R_RIP,
                      R_RFLAGS)
from .mm import AddressSpace, is_run

RUNNABLE = "runnable"
BLOCKED_WAIT = "blocked-wait"
BLOCKED_VFORK = "blocked-vfork"
ZOMBIE = "zombie"
REAPED = "reaped"
INIT_PID = 1


class Process:
    def __init__(self, pid: int, parent: "Process | None"):
        self.pid = pid
        self.parent = parent
        self.children: list[Process] = []
        self.state = RUNNABLE
        self.exit_status: int | None = None
        self.mm: AddressSpace | None = None
        self.cr3 = 0                      # the root the context switch loads
        self.owns_mm = True               # False for a vfork child until it execs or exits
        self.regs: list[int] = [0] * 18   # the saved register frame (SyscallFrame)
        self.vfork_parent: Process | None = None
        self.wait_args: tuple | None = None
        self.fork_child_return = False    # first return to user of a fork child

    def set_return(self, value: int) -> None:
        """The syscall's result in the saved frame, with rcx/r11 as sysret leaves them."""
        self.regs[R_RAX] = value & 0xFFFF_FFFF_FFFF_FFFF
        self.regs[R_RCX] = self.regs[R_RIP]
        self.regs[R_R11] = self.regs[R_RFLAGS]

    @property
    def ppid(self) -> int:
        return self.parent.pid if self.parent is not None else 0

    def __repr__(self) -> str:
        return f"Process(pid={self.pid}, state={self.state})"


def copy_address_space(parent: AddressSpace, strategy: str) -> AddressSpace | int:
    """fork's copy of `parent`, walking its VMAs (LevitateOS copies by VMA, which is why pages
    mapped without a VMA are lost). Returns the child's space or -ENOMEM with nothing changed.
    Works a last-level table at a time: read the parent's entries once, write the child's."""
    frames = parent.frames
    pages = sum((v.end - v.start) >> 12 for v in parent.vmas)
    tables = sum(parent.tables_needed(v.start, v.end) for v in parent.vmas) + 1
    wiped = sum((v.end - v.start) >> 12 for v in parent.vmas if v.wipeonfork)
    needed = tables + (pages if strategy == "eager" else wiped)
    if frames.free_count < needed:
        return -Errno.ENOMEM
    try:
        child = AddressSpace(parent.machine, frames, parent.plant, parent.profile)
    except OutOfFrames:
        return -Errno.ENOMEM
    child.vmas = [v.copy() for v in parent.vmas]
    child.start_brk, child.brk = parent.start_brk, parent.brk
    machine = parent.machine
    mem, mem64, refcount = machine.mem, machine.mem64, frames.refcount
    eager = strategy == "eager"
    for vma in parent.vmas:
        for table, va, end in list(parent.leaf_tables(vma.start, vma.end)):
            first = (table >> 3) + ((va >> 12) & 511)
            entries = mem64[first:first + ((end - va) >> 12)].tolist()
            if not any(entries):
                continue
            child_table = child.page_table(va, True)     # before the data frames: see map_fresh
            if vma.shared:
                copied = entries
                for entry in entries:
                    if entry & PTE_P:
                        refcount[(entry & PTE_FRAME_MASK) >> 12] += 1
            elif vma.wipeonfork:
                copied = _zero_pages(frames, entries)
            elif eager:
                copied = _copy_eager(frames, mem, entries)
            else:
                copied = list(entries)
                for i, entry in enumerate(entries):
                    if not entry & PTE_P:
                        continue
                    refcount[(entry & PTE_FRAME_MASK) >> 12] += 1
                    if entry & (PTE_RW | PTE_COW):
                        copied[i] = (entry & ~PTE_RW) | PTE_COW
                if copied != entries:
                    machine.write_entries(first << 3, copied)          # the parent goes read-only too
                    parent.flush_owed.append(va)
            machine.write_entries(child_table + 8 * ((va >> 12) & 511), copied)
    return child


def _zero_pages(frames, entries: list[int]) -> list[int]:
    """The child's entries for one last-level table of a wipe-on-fork VMA: every present page
    gets a new zeroed frame with the parent's flags (the child reads zeros, as on Linux)."""
    copied = list(entries)
    present = [i for i, entry in enumerate(entries) if entry & PTE_P]
    for i, new in zip(present, frames.alloc_many(len(present), zero=True)):
        copied[i] = (new << 12) | (entries[i] & ~PTE_FRAME_MASK)
        if not entries[i] & PTE_NX:
            frames.machine.code_frames.add(new)
    return copied


def _copy_eager(frames, mem, entries: list[int]) -> list[int]:
    """The child's entries for one last-level table of a private VMA: every present page gets a
    new frame holding a copy of its data (entries not present are copied as they are)."""
    count = len(entries)
    first = entries[0]
    if first & PTE_P and not (first ^ entries[-1]) & ~PTE_FRAME_MASK and is_run(entries):
        # The usual case: consecutive frames with equal flags. Copy and rebuild without
        # touching entries one by one.
        new_frames = frames.alloc_many(count, zero=False)
        source, new = (first & PTE_FRAME_MASK) >> 12, new_frames[0]
        if new_frames[-1] - new == count - 1:       # ascending and contiguous
            mem[new << 12:(new + count) << 12] = mem[source << 12:(source + count) << 12]
            if not first & PTE_NX:
                frames.machine.code_frames.update(new_frames)
            start = (first & ~PTE_FRAME_MASK) | (new << 12)
            return list(range(start, start + (count << 12), PAGE_SIZE))
        flags = first & ~PTE_FRAME_MASK
        for i, frame in enumerate(new_frames):
            mem[frame << 12:(frame + 1) << 12] = mem[(source + i) << 12:(source + i + 1) << 12]
        if not first & PTE_NX:
            frames.machine.code_frames.update(new_frames)
        return [(frame << 12) | flags for frame in new_frames]
    present = [i for i, entry in enumerate(entries) if entry & PTE_P]
    if not present:
        return list(entries)
    new_frames = frames.alloc_many(len(present), zero=False)
    copied = list(entries)
    for i, new in zip(present, new_frames):
        entry = entries[i]
        src = entry & PTE_FRAME_MASK
        mem[new << 12:(new + 1) << 12] = mem[src:src + PAGE_SIZE]
        copied[i] = (new << 12) | (entry & ~PTE_FRAME_MASK)
        if not entry & PTE_NX:
            frames.machine.code_frames.add(new)
    return copied


class ProcessSyscalls:
    """fork, vfork, clone, exit, exit_group, wait4, getpid, getppid (mixed into Kernel)."""

    def sys_fork(self, proc: Process, args) -> int:
        return self._fork(proc, vfork=False, newsp=0)

    def sys_vfork(self, proc: Process, args):
        return self._fork(proc, vfork=True, newsp=0)

    def sys_clone(self, proc: Process, args):
        flags = args[0]
        if flags in CLONE_FORKLIKE_FLAGS:
            return self._fork(proc, vfork=bool(flags & CLONE_VFORK), newsp=args[1])
        if flags & CLONE_THREAD and not flags & CLONE_SIGHAND:
            return -Errno.EINVAL
        if flags & CLONE_SIGHAND and not flags & CLONE_VM:
            return -Errno.EINVAL
        return -Errno.ENOSYS                                  # threads etc.: out of scope

    def _fork(self, proc: Process, vfork: bool, newsp: int):
        live = sum(1 for p in self.procs.values() if p.pid != INIT_PID and p.state != REAPED)
        if live >= self.max_processes:
            return -Errno.EAGAIN
        if vfork:
            space = proc.mm
        else:
            space = copy_address_space(proc.mm, self.fork_strategy)
            if isinstance(space, int):
                return space
        child = Process(self.next_pid, proc)
        self.next_pid += 1
        child.mm = space
        child.cr3 = space.root
        child.owns_mm = not vfork
        regs = list(proc.regs)
        regs[R_RAX] = 0
        regs[R_RCX] = regs[R_RIP]
        regs[R_R11] = regs[R_RFLAGS]
        if newsp:
            regs[R_RSP] = newsp
        child.regs = regs
        child.fork_child_return = True
        proc.children.append(child)
        self.procs[child.pid] = child
        self.run_queue.append(child)
        if not vfork:
            return child.pid
        # vfork: the parent's event now, then it sleeps until the child exits or execs.
        child.vfork_parent = proc
        self.emit_syscall(proc, child.pid)
        proc.set_return(child.pid)
        proc.state = BLOCKED_VFORK
        self.run_queue.remove(proc)
        self.run_queue.remove(child)
        self.run_queue.insert(0, child)
        return self.SWITCH

    def sys_exit(self, proc: Process, args):
        self.do_exit(proc, wait_status_exited(args[0]))
        return self.SWITCH

    sys_exit_group = sys_exit

    def sys_getpid(self, proc: Process, args) -> int:
        return proc.pid

    def sys_getppid(self, proc: Process, args) -> int:
        return proc.ppid

    def sys_sched_yield(self, proc: Process, args):
        self.emit_syscall(proc, 0)
        proc.set_return(0)
        self.run_queue.remove(proc)
        self.run_queue.append(proc)
        return self.SWITCH

    def release_vfork_parent(self, proc: Process) -> None:
        parent = proc.vfork_parent
        if parent is not None:
            proc.vfork_parent = None
            if parent.state == BLOCKED_VFORK:
                parent.state = RUNNABLE
                self.run_queue.append(parent)

    def do_exit(self, proc: Process, status: int) -> None:
        if proc.owns_mm and proc.mm is not None:
            self.release_mm(proc)
        proc.mm = None
        proc.state = ZOMBIE
        proc.exit_status = status
        if proc in self.run_queue:
            self.run_queue.remove(proc)
        self.emit_exit(proc, status)             # the raw state at this event shows the zombie
        self.release_vfork_parent(proc)
        init = self.procs[INIT_PID]
        for child in proc.children:
            child.parent = init
            init.children.append(child)
            if child.state == ZOMBIE:
                self.reap(child)
        proc.children = []
        parent = proc.parent
        if parent is init:
            self.reap(proc)
        elif parent.state == BLOCKED_WAIT:
            self._retry_wait(parent)

    def reap(self, child: Process) -> None:
        child.state = REAPED
        if child in child.parent.children:
            child.parent.children.remove(child)
        self.procs.pop(child.pid, None)

    def sys_wait4(self, proc: Process, args):
        upid = args[0] & 0xFFFF_FFFF
        upid = upid - (1 << 32) if upid >= 1 << 31 else upid
        options = args[2] & 0xFFFF_FFFF
        if options & ~WAIT4_VALID_OPTIONS:
            return -Errno.EINVAL
        if upid == -(1 << 31):
            return -Errno.ESRCH
        wait_args = (upid, args[1], options, args[3])
        result = self._try_wait(proc, wait_args)
        if result is not None:
            return result
        proc.state = BLOCKED_WAIT
        proc.wait_args = (wait_args, args)
        self.run_queue.remove(proc)
        return self.SWITCH

    def _try_wait(self, proc: Process, wait_args) -> int | None:
        upid, status_ptr, options, rusage_ptr = wait_args
        candidates = [c for c in proc.children
                      if upid == -1 or upid == 0 or c.pid == upid or (upid < -1 and -upid == self.pgid)]
        if not candidates:
            return -Errno.ECHILD
        for child in candidates:                          # creation order
            if child.state == ZOMBIE:
                status = child.exit_status
                self.reap(child)
                if status_ptr and not proc.mm.write_user(status_ptr, struct.pack("<i", status - (1 << 32) if status >= 1 << 31 else status)):
                    return -Errno.EFAULT                  # the zombie is consumed all the same
                if rusage_ptr and not proc.mm.write_user(rusage_ptr, bytes(144)):
                    return -Errno.EFAULT
                return child.pid
        if options & WNOHANG:
            return 0
        return None

    def _retry_wait(self, parent: Process) -> None:
        wait_args, raw_args = parent.wait_args
        result = self._try_wait(parent, wait_args)
        if result is None:
            return
        parent.wait_args = None
        parent.state = RUNNABLE
        parent.set_return(result)
        self.emit_syscall(parent, result, nr=61, args=raw_args)
        self.run_queue.append(parent)
