"""The top-level step API: one syscall, named by its Linux number, with raw register arguments
and the result a backend observed (from which the kernel's choices are read).

`syscall(state, pid, nr, args, observed)` -> Result. `choice_for(nr, observed)` is the rule that
turns an observed result into the choice each transition takes: an mmap address or resource
errno, a child's pid or EAGAIN/ENOMEM, a reaper's pid. The checker (oracle/check.py) uses it;
so do tests and the proofs' replay.
"""
from __future__ import annotations

from typing import Any, Callable

from ..specs.abi import Errno, Nr, as_signed, is_errno
from ..specs.trace import Layout
from . import exec as exec_
from . import memory, mm, process
from .state import Result, State

RESOURCE_ERRNOS = (int(Errno.ENOMEM), int(Errno.EAGAIN))


def _fail_of(observed: int) -> int:
    """The resource errno an observed result reports (0: none)."""
    if is_errno(observed):
        errno = -as_signed(observed)
        if errno in RESOURCE_ERRNOS:
            return errno
    return 0


def choice_for(nr: int, observed: int) -> Any:
    """The choice a transition takes, read off an observed result (a 64-bit word)."""
    if nr == Nr.mmap:
        fail = _fail_of(observed)
        return mm.MmapChoice(addr=None if is_errno(observed) else observed, fail=fail)
    if nr in (Nr.mprotect, Nr.brk):
        return mm.ResourceChoice(_fail_of(observed) if nr == Nr.mprotect else 0)
    if nr in (Nr.fork, Nr.vfork, Nr.clone):
        fail = _fail_of(observed)
        return process.ForkChoice(child=0 if is_errno(observed) else observed, fail=fail)
    if nr == Nr.getppid:
        return observed
    return None


def syscall(state: State, pid: int, nr: int, args: tuple[int, ...], observed: int,
            image_of: Callable[[int], bytes | None] = lambda k: None, layout: Layout | None = None,
            image_index: int = 0) -> Result:
    """Step the model over one syscall. brk's choice: an observed result equal to the old break
    while the model would grow counts as a resource refusal (brk never returns -errno)."""
    a = tuple(args) + (0,) * (6 - len(args))
    choice = choice_for(nr, observed)
    if nr == Nr.mmap:
        return mm.mmap(state, mm.MmapArgs(pid, a[0], a[1], a[2], a[3], a[4], a[5]), choice)
    if nr == Nr.munmap:
        return mm.munmap(state, mm.MunmapArgs(pid, a[0], a[1]))
    if nr == Nr.mprotect:
        return mm.mprotect(state, mm.MprotectArgs(pid, a[0], a[1], a[2]), choice)
    if nr == Nr.brk:
        result = mm.brk(state, mm.BrkArgs(pid, a[0]))
        old = state.space_of(pid).brk
        if result.outcome != observed and observed == old and result.clause == "brk.grow":
            return mm.brk(state, mm.BrkArgs(pid, a[0]), mm.ResourceChoice(int(Errno.ENOMEM)))
        return result
    if nr == Nr.fork:
        return process.fork(state, process.ForkArgs(pid), choice)
    if nr == Nr.vfork:
        return process.vfork(state, process.ForkArgs(pid), choice)
    if nr == Nr.clone:
        return process.clone(state, process.CloneArgs(pid, a[0]), choice)
    if nr in (Nr.exit, Nr.exit_group):
        fn = process.exit if nr == Nr.exit else process.exit_group
        return fn(state, process.ExitArgs(pid, a[0]))
    if nr == Nr.wait4:
        return wait4(state, pid, a[0], a[2], a[1])
    if nr == Nr.getpid:
        return process.getpid(state, process.PidArgs(pid))
    if nr == Nr.getppid:
        return process.getppid(state, process.PidArgs(pid), choice)
    if nr == Nr.sched_yield:
        return process.sched_yield(state, process.PidArgs(pid))
    if nr == Nr.write:
        return memory.write(state, memory.WriteArgs(pid, a[0], a[1], a[2]), observed)
    if nr == Nr.execve:
        return exec_.execve(state, exec_.ExecveArgs(pid, image_index, image_of(image_index)), layout)
    return Result(True, (-int(Errno.ENOSYS)) & 0xFFFF_FFFF_FFFF_FFFF, state, "enosys")


def wait4(state: State, pid: int, upid: int, options: int, stat_addr: int) -> Result:
    """wait4 including the status store through `stat_addr` (4 bytes, put_user): a reaped
    zombie's status is written; a bad pointer gives EFAULT and the zombie is consumed anyway
    (facts: wait4/"bad status or rusage pointer")."""
    status = None
    before = state
    result = process.wait4(state, process.Wait4Args(pid, upid, options, stat_addr))
    if result.clause != "wait4.reaped" or not stat_addr:
        return result
    status = process.reaped_status(before, result.outcome)
    stored = memory.kernel_put(result.state, pid, stat_addr, 4, status)
    if stored is None:
        return Result(True, (-int(Errno.EFAULT)) & 0xFFFF_FFFF_FFFF_FFFF, result.state, "wait4.efault")
    return Result(True, result.outcome, stored, result.clause)


__all__ = ["syscall", "choice_for", "wait4"]
