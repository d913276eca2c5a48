"""Process syscalls: fork, vfork, clone, exit, exit_group, wait4, getpid, getppid, sched_yield.

The fork tree: every process has a parent (the backend's reaper for the root and for orphans,
whose pid is learned as a choice), children in creation order, and a place in the tree
("root/0/1": the second child of the root's first child) by which the checker matches processes
across backends (DESIGN.md contract 7). Pids are choices read off the trace; `allowed` demands
they be positive and unused.

A fork child's address space is its parent's object (containers are persistent, so this is a
copy as far as anyone can tell); MAP_SHARED pages point to the same backing object and stay
shared. A vfork child uses the very same mm id as its parent, which is blocked until the child
exits or execs (facts: "vfork").
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..specs.abi import (CLONE_VFORK, CLONE_VM, WAIT4_VALID_OPTIONS, WALL, WCLONE, WNOHANG, Errno, Signal,
                         wait_status_exited)
from .logic import neg
from .mm import resource_failure_allowed
from .space import PageMap
from .state import ATTR_WIPEONFORK, REAPER, Blocks, OutOfScope, Process, Result, Run, State, _copy_with


def _with(obj: Any, **changes: Any) -> Any:
    return _copy_with(obj, changes)

INT_MIN = -(1 << 31)
PID_MAX_LIMIT = 1 << 22         # the largest pid Linux ever hands out (PID_MAX_LIMIT on 64-bit)
CLONE_FORK_FLAGS = int(Signal.SIGCHLD)
CLONE_VFORK_FLAGS = CLONE_VM | CLONE_VFORK | int(Signal.SIGCHLD)


@dataclass(frozen=True)
class ForkArgs:
    pid: int


@dataclass(frozen=True)
class ForkChoice:
    """The child's pid the kernel picked, or `fail` (EAGAIN / ENOMEM) it reported."""
    child: int = 0
    fail: int = 0


@dataclass(frozen=True)
class CloneArgs:
    pid: int
    flags: int


@dataclass(frozen=True)
class ExitArgs:
    pid: int
    code: int


@dataclass(frozen=True)
class Wait4Args:
    pid: int
    upid: int               # raw register; the kernel reads a pid_t (low 32 bits, signed)
    options: int            # raw register; the kernel reads an int
    stat_addr: int = 0      # where the status is stored (0: not stored)


@dataclass(frozen=True)
class PidArgs:
    pid: int


def _signed32(value: int) -> int:
    value &= 0xFFFF_FFFF
    return value - (1 << 32) if value >> 31 else value


def _pid_in_use(state: State, pid: int) -> bool:
    return pid in state.procs or pid == state.reaper


def fork(state: State, args: ForkArgs, choice: ForkChoice, vfork: bool = False) -> Result:
    """fork(2): "creates a new process by duplicating the calling process ... The child process
    and the parent process run in separate memory spaces. At the time of fork() both memory
    spaces have the same content." vfork(2): "the calling thread is suspended until the child
    terminates ... or it makes a call to execve(2)"; the child shares the parent's memory.
    EAGAIN / ENOMEM are resource answers, allowed only beyond the profile's declared limits."""
    parent = state.procs[args.pid]
    name = "vfork" if vfork else "fork"
    if choice.fail:
        if choice.fail == Errno.EAGAIN:
            limit = state.profile.max_processes
            allowed = (limit is not None and len(state.live_pids()) >= limit) or \
                Errno.EAGAIN in state.profile.exhaustion_errnos
        else:
            pages = 0 if vfork else state.space_of(args.pid).pages.count_mapped()
            allowed = resource_failure_allowed(state, choice.fail, pages)
        return Result(allowed, neg(choice.fail), state, f"{name}.resource",
                      "" if allowed else "a child (below the profile's limits)")
    child_pid = choice.child
    allowed = 0 < child_pid <= PID_MAX_LIMIT and not _pid_in_use(state, child_pid)
    if vfork:
        mm = parent.mm
        spaces = state.spaces
        next_mm = state.next_mm
    else:
        mm = state.next_mm
        spaces = dict(state.spaces)
        spaces[mm] = _fork_space(state.spaces[parent.mm])
        next_mm = mm + 1
    child = Process(pid=child_pid, ppid=args.pid, path=f"{parent.path}/{parent.forks}", mm=mm,
                    vfork_parent=args.pid if vfork else 0, image=parent.image, entry_sp=parent.entry_sp,
                    load_bias=parent.load_bias)
    new_parent = _with(parent, children=parent.children + (child_pid,), forks=parent.forks + 1,
                         run=Run.vfork_blocked if vfork else parent.run)
    procs = dict(state.procs)
    procs[args.pid] = new_parent
    procs[child_pid] = child
    new = state.with_(procs=procs, spaces=spaces, next_mm=next_mm)
    return Result(allowed, child_pid, new, name + ".ok", "" if allowed else "a positive pid not in use")


def _fork_space(space: Any) -> Any:
    """The child's copy of an address space: the same persistent containers (a copy for all
    purposes), except that VM_WIPEONFORK (MAP_DROPPABLE) pages read as zeros in the child."""
    pages = space.pages
    if not isinstance(pages, PageMap):
        return space
    wiped = [(s, e) for s, e, a in pages.runs if a & ATTR_WIPEONFORK]
    if not wiped:
        return space
    data = space.data
    for s, e in wiped:
        data = data.zero(s, e)
    return space.with_(data=data)


def vfork(state: State, args: ForkArgs, choice: ForkChoice) -> Result:
    return fork(state, args, choice, vfork=True)


def clone(state: State, args: CloneArgs, choice: ForkChoice) -> Result:
    """clone(2) with a fork-like flag set (SIGCHLD: fork; CLONE_VM|CLONE_VFORK|SIGCHLD: vfork);
    any other flag set is out of scope (DESIGN.md "Semantics")."""
    flags = args.flags & 0xFFFF_FFFF_FFFF_FFFF
    if flags == CLONE_FORK_FLAGS:
        return fork(state, ForkArgs(args.pid), choice)
    if flags == CLONE_VFORK_FLAGS:
        return fork(state, ForkArgs(args.pid), choice, vfork=True)
    return Result(True, OutOfScope(f"clone flags {flags:#x} are not fork-like"), state, "clone.out-of-scope")


def die(state: State, pid: int, status: int) -> State:
    """The process ends with wait status `status`: a zombie for its parent (reaped at once by
    the reaper), its vfork parent released, its children re-parented to the reaper (zombies
    among them reaped by it), its address space dropped when no one else uses it."""
    proc = state.procs[pid]
    procs = dict(state.procs)
    if proc.vfork_parent and proc.vfork_parent in procs:
        vp = procs[proc.vfork_parent]
        procs[vp.pid] = _with(vp, run=Run.running)
    for cpid in proc.children:
        child = procs.get(cpid)
        if child is None or child.ppid != pid:
            continue
        if child.run == Run.zombie:
            del procs[cpid]                             # the reaper reaps it
        else:
            procs[cpid] = _with(child, ppid=REAPER)   # orphan
    if proc.ppid == REAPER or proc.ppid not in procs:
        del procs[pid]                                   # the reaper reaps it at once
    else:
        procs[pid] = _with(proc, run=Run.zombie, status=status, vfork_parent=0, children=())
    spaces = state.spaces
    if not any(p.mm == proc.mm and p.run in (Run.running, Run.vfork_blocked) for p in procs.values()):
        spaces = dict(spaces)
        spaces.pop(proc.mm, None)
    return state.with_(procs=procs, spaces=spaces)


def exit(state: State, args: ExitArgs, choice: Any = None) -> Result:   # noqa: A001 - the syscall's name
    """_exit(2): "terminates the calling process 'immediately' ... any children of the process
    are inherited by init(1) (or by the nearest subreaper) ... The process's parent is sent a
    SIGCHLD." The status a parent sees is (status & 0xff) << 8 (facts: wait4/"exit(n)")."""
    status = wait_status_exited(args.code)
    return Result(True, status, die(state, args.pid, status), "exit.ok")


def exit_group(state: State, args: ExitArgs, choice: Any = None) -> Result:
    """exit_group(2): every thread of the process exits — single-threaded here, so exit(2)."""
    status = wait_status_exited(args.code)
    return Result(True, status, die(state, args.pid, status), "exit_group.ok")


def wait4(state: State, args: Wait4Args, choice: Any = None) -> Result:
    """wait4(2) (as waitpid(2)): "< -1 any child whose process group ID is equal to the absolute
    value of pid; -1 any child process; 0 any child whose process group ID is equal to that of the
    calling process; > 0 the child whose process ID is equal to the value of pid." ECHILD: "The
    process specified by pid does not exist or is not a child of the calling process." EINVAL:
    "The options argument was invalid." Zombies are reaped in creation order (facts: wait4).
    Deliberate difference: every process stays in the root's process group, whose id is the
    root's pid. Returns the reaped pid with `state'` where it is gone, 0 (WNOHANG), -errno, or
    Blocks. Storing the status is the caller's (system.wait4 does it through kernel_put)."""
    me = state.procs[args.pid]
    options = args.options & 0xFFFF_FFFF
    upid = _signed32(args.upid)
    if options & ~WAIT4_VALID_OPTIONS & 0xFFFF_FFFF:
        return Result(True, neg(Errno.EINVAL), state, "wait4.bad-options")      # EINVAL: unknown option bits
    if upid == INT_MIN:
        return Result(True, neg(Errno.ESRCH), state, "wait4.int-min")           # ESRCH: -INT_MIN is undefined
    mine = [state.procs[c] for c in me.children if c in state.procs and state.procs[c].ppid == args.pid]
    if upid > 0:
        eligible = [c for c in mine if c.pid == upid]
    elif upid in (0, -1):
        eligible = mine
    else:
        eligible = mine if -upid == state.root else []
    if options & WCLONE and not options & WALL:
        eligible = []                                   # __WCLONE: only non-SIGCHLD children, none here
    if not eligible:
        return Result(True, neg(Errno.ECHILD), state, "wait4.no-child")         # ECHILD
    zombies = [c for c in eligible if c.run == Run.zombie]
    if zombies:
        reaped = zombies[0]
        procs = dict(state.procs)
        del procs[reaped.pid]
        procs[args.pid] = _with(me, children=tuple(c for c in me.children if c != reaped.pid))
        return Result(True, reaped.pid, state.with_(procs=procs), "wait4.reaped")
    if options & WNOHANG:
        return Result(True, 0, state, "wait4.wnohang-running")                  # 0: children still running
    return Result(True, Blocks("children still running"), state, "wait4.blocks")


def reaped_status(state: State, child: int) -> int:
    """The wait status a zombie carries (read before wait4 reaps it)."""
    return state.procs[child].status


def getpid(state: State, args: PidArgs, choice: Any = None) -> Result:
    """getpid(2): "returns the process ID (PID) of the calling process." """
    return Result(True, args.pid, state, "getpid.ok")


def getppid(state: State, args: PidArgs, choice: int = 0) -> Result:
    """getppid(2): "returns the process ID of the parent of the calling process ... If the
    caller's parent is in a different PID namespace ... returns 0"; an orphan's parent is the
    reaper. The reaper's pid is learned from the first answer that names it (`choice`)."""
    me = state.procs[args.pid]
    if me.ppid != REAPER:
        return Result(True, me.ppid, state, "getppid.parent")
    if state.reaper:
        return Result(True, state.reaper, state, "getppid.reaper")
    allowed = 0 <= choice <= PID_MAX_LIMIT and choice not in state.procs
    return Result(allowed, choice, state.with_(reaper=choice), "getppid.reaper-learned",
                  "" if allowed else "a pid that is not a program process")


def sched_yield(state: State, args: PidArgs, choice: Any = None) -> Result:
    """sched_yield(2): "On success, sched_yield() returns 0." """
    return Result(True, 0, state, "sched_yield.ok")


__all__ = ["ForkArgs", "ForkChoice", "CloneArgs", "ExitArgs", "Wait4Args", "PidArgs", "fork", "vfork", "clone",
           "exit", "exit_group", "wait4", "getpid", "getppid", "sched_yield", "die", "reaped_status"]
