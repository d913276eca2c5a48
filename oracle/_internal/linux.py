"""The Linux backend: run a program's static ELF images as real processes under ptrace.

`LinuxBackend().run(images, entry, budget) -> Trace` writes the images into a private directory,
starts `entry` as a sandboxed, traced process (sandbox.py) and follows every fork, vfork and
execve, yielding the trace of specs/trace.py.

Scheduling (one tracee runs at a time, so shared-memory interleavings are reproducible): the
tracer runs one process until it exits or blocks, then picks the next runnable process by
creation order. Blocking is known, not guessed by timing: a vfork parent is blocked until its
child exits or execs; a wait4 is stopped at its syscall entry, before the kernel sees it, when
/proc shows the caller has a matching live child and no matching zombie, and is resumed once it
has one. Two policies (`LinuxBackend(schedule=...)`):
- **child-first** (default): always the newest runnable process. After fork the child — and
  every process it creates — runs to completion before the parent's next step, so wait4 never
  blocks, WNOHANG finds the zombie, and a running process is never an orphan.
- **parent-first**: always the oldest runnable process. The parent runs on after fork until it
  exits or blocks; WNOHANG sees live children, and children may run as orphans (their parent is
  then the tracer, the subreaper: `Trace.meta["reaper_pid"]`).
Both are legal Linux schedules; the generator forbids programs whose outcome depends on the
schedule.

Observations (contract 4) come from /proc: ranges and rights from /proc/PID/maps (any of r/w/x
makes a page readable; PROT_NONE ranges are listed with rights 0); contents from /proc/PID/mem.
Which pages hold data: private anonymous memory (heap, stack, mmap, bss) — the pages
/proc/PID/pagemap marks present or swapped (an absent page reads as zeros); file-backed private
pages (the ELF's segments) and shared memory — every page, because an absent page there reads
the file or the shared object, not zeros (shared objects are read through
/proc/PID/map_files with SEEK_DATA, so untouched shared memory is not populated). [vdso] and
[vvar] contents are not read (the checker masks kernel-owned regions).
"""
from __future__ import annotations

import math
import os
import platform
import signal
import struct
import threading
from dataclasses import dataclass, field

from ...specs.abi import (PAGE_SIZE, REPORT_NR, TASK_SIZE, WAIT4_VALID_OPTIONS, WALL, WCLONE, WNOHANG, Nr,
                          ReportKind, SiCode)
from ...specs.abi import Signal as Sig
from ...specs.trace import (Budget, Event, Exec, Exit, Inconclusive, Layout, Observation, Output,
                            Report, Signal, Syscall, Trace, View, effective_rights, page_digest)
from ..errors import BackendError, ForkspecError, InvalidArgument
from . import ptrace as pt
from .sandbox import Host, Sandbox, SandboxSession

# Values each report kind carries (rsi, rdx, ... in order); unknown kinds keep all five.
REPORT_ARITY = {int(ReportKind.loaded): 2, int(ReportKind.observe): 1, int(ReportKind.wstatus): 1}

# The largest write(1|2) whose bytes become an Output event; a larger one ends the run Inconclusive.
MAX_OUTPUT = 64 << 20

# Syscalls the model knows: the seccomp filter lets exactly these (plus the report call) through.
MODEL_SYSCALLS = frozenset(int(nr) for nr in Nr)

_FORK_EVENTS = {pt.PTRACE_EVENT_FORK, pt.PTRACE_EVENT_VFORK, pt.PTRACE_EVENT_CLONE}
_EXIT_NRS = {int(Nr.exit), int(Nr.exit_group)}
# -ERESTART* values a syscall-exit stop shows when a signal interrupted the call; the kernel
# restarts it (a new entry stop follows), so they are never results.
_RESTART_RESULTS = {-512, -513, -514, -516}
_SYSCALL_STOP = int(signal.SIGTRAP) | 0x80
_PTRACE_OPTIONS = (pt.PTRACE_O_TRACESYSGOOD | pt.PTRACE_O_TRACEFORK | pt.PTRACE_O_TRACEVFORK
                   | pt.PTRACE_O_TRACECLONE | pt.PTRACE_O_TRACEEXEC | pt.PTRACE_O_EXITKILL)
# Kernel-owned regions named in Layout (contract 5). [vvar_vclock] (Linux >= 6.13) is its own
# special mapping next to [vvar]: kept apart, because munmap of a whole special VMA succeeds while
# cutting one fails (linux-facts.md, munmap "part of [vdso]").
_REGION_NAMES = {"[stack]": "stack", "[vdso]": "vdso", "[vvar]": "vvar", "[vvar_vclock]": "vvar_vclock"}
_UNREAD_REGIONS = {"[vdso]", "[vvar]", "[vvar_vclock]", "[vsyscall]"}
_PAGEMAP_PRESENT = 1 << 63
_PAGEMAP_SWAPPED = 1 << 62
_AT_ENTRY = 9
_SEEK_DATA = getattr(os, "SEEK_DATA", 3)
_SEEK_HOLE = getattr(os, "SEEK_HOLE", 4)


@dataclass
class _Proc:
    """The tracer's bookkeeping for one traced process (mutable: this is the side-effect edge)."""
    pid: int
    started: bool = False               # its first stop (the auto-attach SIGSTOP) was consumed
    pending: tuple[int, tuple[int, ...]] | None = None    # syscall entered, result not seen yet
    deliver: int = 0                    # signal to deliver when it is next resumed
    signalled: bool = False             # a Signal event was emitted for it
    image: str = ""                     # the path (images key) it is running
    blocked: str = ""                   # "wait": stopped at a wait4 entry that would block;
                                        # "vfork": a vfork parent whose child has not exited or exec'd
    vfork_child: int = 0


@dataclass(frozen=True)
class MapsLine:
    start: int
    end: int
    perms: str
    offset: int
    inode: int
    name: str

    @property
    def rights(self) -> int:
        prot = (1 if self.perms[0] == "r" else 0) | (2 if self.perms[1] == "w" else 0) \
            | (4 if self.perms[2] == "x" else 0)
        return effective_rights(prot)

    @property
    def shared(self) -> bool:
        return self.perms[3] == "s"


def parse_maps(text: str) -> list[MapsLine]:
    """/proc/PID/maps lines as records."""
    out = []
    for line in text.splitlines():
        parts = line.split(None, 5)
        lo, hi = parts[0].split("-")
        out.append(MapsLine(int(lo, 16), int(hi, 16), parts[1], int(parts[2], 16), int(parts[4]),
                            parts[5].strip() if len(parts) > 5 else ""))
    return out


def coalesce(ranges: list[tuple[int, int, int]]) -> tuple[tuple[int, int, int], ...]:
    """Merge adjacent ranges with equal rights (ranges sorted and disjoint)."""
    out: list[tuple[int, int, int]] = []
    for lo, hi, rights in ranges:
        if out and out[-1][1] == lo and out[-1][2] == rights:
            out[-1] = (out[-1][0], hi, rights)
        else:
            out.append((lo, hi, rights))
    return tuple(out)


def read_view(pid: int) -> View:
    """The process's address space as a user sees it (module docstring: which pages are read)."""
    with open(f"/proc/{pid}/maps") as f:
        lines = [m for m in parse_maps(f.read()) if m.end <= TASK_SIZE]
    ranges = coalesce([(m.start, m.end, m.rights) for m in lines])
    digests: list[tuple[int, bytes]] = []
    mem = os.open(f"/proc/{pid}/mem", os.O_RDONLY)
    pagemap = os.open(f"/proc/{pid}/pagemap", os.O_RDONLY)
    try:
        for m in lines:
            if not m.rights or m.name in _UNREAD_REGIONS:
                continue
            if m.shared:
                try:
                    _shared_digests(pid, m, digests)
                except PermissionError:         # map_files needs CAP_SYS_ADMIN: read it all
                    _read_run(mem, m.start, m.end, digests)
                continue
            if m.inode:
                runs = [(m.start, m.end)]           # file-backed: absent pages read the file
            else:
                runs = _present_runs(pagemap, m.start, m.end)
            for lo, hi in runs:
                _read_run(mem, lo, hi, digests)
    finally:
        os.close(mem)
        os.close(pagemap)
    return View(ranges=ranges, digests=tuple(digests))


def _read_run(mem: int, lo: int, hi: int, digests: list[tuple[int, bytes]]) -> None:
    """Digest pages [lo, hi) read through /proc/PID/mem. A page the kernel cannot read (a file
    page past the end of its file: the user would get SIGBUS) gets no digest."""
    try:
        _digest_run(os.pread(mem, hi - lo, lo), lo, digests)
        return
    except OSError:
        pass
    for page in range(lo, hi, PAGE_SIZE):
        try:
            _digest_run(os.pread(mem, PAGE_SIZE, page), page, digests)
        except OSError:
            continue


_scan_supported = True


def _present_runs(pagemap: int, start: int, end: int) -> list[tuple[int, int]]:
    """Maximal runs of pages in [start, end) that pagemap says are present (or swapped):
    PAGEMAP_SCAN where the kernel has it (one ioctl, however large the range), else pagemap
    entries read 8 bytes a page."""
    global _scan_supported
    if _scan_supported:
        try:
            return pt.pagemap_scan(pagemap, start, end)
        except OSError:
            _scan_supported = False
    return _present_runs_by_entries(pagemap, start, end)


def _present_runs_by_entries(pagemap: int, start: int, end: int) -> list[tuple[int, int]]:
    runs: list[tuple[int, int]] = []
    chunk_pages = 1 << 16
    page = start
    while page < end:
        count = min(chunk_pages, (end - page) // PAGE_SIZE)
        raw = os.pread(pagemap, count * 8, (page // PAGE_SIZE) * 8)
        entries = struct.unpack(f"<{len(raw) // 8}Q", raw)
        for i, entry in enumerate(entries):
            if entry & (_PAGEMAP_PRESENT | _PAGEMAP_SWAPPED):
                at = page + i * PAGE_SIZE
                if runs and runs[-1][1] == at:
                    runs[-1] = (runs[-1][0], at + PAGE_SIZE)
                else:
                    runs.append((at, at + PAGE_SIZE))
        page += count * PAGE_SIZE
    return runs


def _shared_digests(pid: int, m: MapsLine, digests: list[tuple[int, bytes]]) -> None:
    """Digests of a MAP_SHARED range read through its backing object, data extents only."""
    fd = os.open(f"/proc/{pid}/map_files/{m.start:x}-{m.end:x}", os.O_RDONLY)
    try:
        base = m.offset
        end = base + (m.end - m.start)
        at = base
        while at < end:
            try:
                lo = os.lseek(fd, at, _SEEK_DATA)
            except OSError:                 # ENXIO: no data at or after `at`
                break
            if lo >= end:
                break
            hi = min(os.lseek(fd, lo, _SEEK_HOLE), end)
            lo -= lo % PAGE_SIZE
            _digest_run(os.pread(fd, hi - lo, lo), m.start + (lo - base), digests)
            at = hi
    finally:
        os.close(fd)


def _digest_run(data: bytes, addr: int, digests: list[tuple[int, bytes]]) -> None:
    for off in range(0, len(data), PAGE_SIZE):
        page = data[off:off + PAGE_SIZE]
        if len(page) < PAGE_SIZE:
            page = page + bytes(PAGE_SIZE - len(page))
        digest = page_digest(page)
        if digest is not None:
            digests.append((addr + off, digest))


def read_layout(pid: int, image: bytes, sp: int) -> Layout:
    """What the kernel chose for the image a process has just exec'd (at PTRACE_EVENT_EXEC)."""
    with open(f"/proc/{pid}/maps") as f:
        lines = parse_maps(f.read())
    regions: list[tuple[str, int, int]] = []
    for m in lines:
        name = _REGION_NAMES.get(m.name)
        if name is not None:
            regions.append((name, m.start, m.end))
    with open(f"/proc/{pid}/stat", "rb") as f:
        stat = f.read()
    fields = stat[stat.rindex(b")") + 2:].split()
    start_brk = int(fields[47 - 3])             # proc(5) field 47: start_brk
    load_bias = 0
    if len(image) >= 32 and struct.unpack_from("<H", image, 16)[0] == 3:     # ET_DYN
        with open(f"/proc/{pid}/auxv", "rb") as f:
            auxv = f.read()
        pairs = struct.unpack(f"<{len(auxv) // 8}Q", auxv[: len(auxv) // 16 * 16])
        at_entry = dict(zip(pairs[0::2], pairs[1::2])).get(_AT_ENTRY, 0)
        load_bias = at_entry - struct.unpack_from("<Q", image, 24)[0]
    return Layout(regions=tuple(sorted(regions, key=lambda r: r[1])), brk=start_brk,
                  load_bias=load_bias, entry_sp=sp)


def read_memory(pid: int, addr: int, length: int) -> bytes:
    """`length` bytes of a process's memory. Pages /proc/PID/mem cannot read although the process
    could ([vvar] is a PFN mapping) read as zeros: their contents are kernel-owned and masked."""
    fd = os.open(f"/proc/{pid}/mem", os.O_RDONLY)
    try:
        out = bytearray()
        while len(out) < length:
            at = addr + len(out)
            want = min(length - len(out), 1 << 20)
            try:
                chunk = os.pread(fd, want, at)
            except OSError:
                chunk = b""
            if not chunk:
                # Unreadable here: zeros up to the next page boundary, then try again.
                gap = min(length - len(out), PAGE_SIZE - at % PAGE_SIZE)
                chunk = bytes(gap)
            out += chunk
        return bytes(out)
    finally:
        os.close(fd)


def _proc_stat(pid: int) -> tuple[str, int, int] | None:
    """(state, ppid, pgrp) of a process from /proc/PID/stat, None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat[stat.rindex(b")") + 2:].split()
    return fields[0].decode(), int(fields[1]), int(fields[2])


def _proc_stat_pgrp(pid: int) -> int:
    info = _proc_stat(pid)
    return info[2] if info else 0


def _pending_signals(pid: int) -> int:
    """The thread's private pending-signal mask (SigPnd in /proc/PID/status)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("SigPnd:"):
                return int(line.split()[1], 16)
    return 0


class _Stop(Exception):
    """Ends a run early with an Inconclusive event (budget or out-of-scope behaviour)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class _Run:
    """One traced run: the process table, the schedule and the events (mutable, short-lived)."""
    images: dict[str, bytes]
    session: SandboxSession
    budget: Budget
    schedule: str = "child-first"
    events: list[Event] = field(default_factory=list)
    procs: dict[int, _Proc] = field(default_factory=dict)
    live: list[_Proc] = field(default_factory=list)       # not yet dead, in creation order
    timed_out: threading.Event = field(default_factory=threading.Event)

    # -- the schedule -----------------------------------------------------------------------------
    def _pick(self) -> _Proc | None:
        """The process to run next: among the runnable ones, the newest (child-first) or the
        oldest (parent-first). When every live process is blocked in wait4 by our prediction,
        run one anyway: a wrong prediction only delays a process, which is a legal schedule."""
        runnable = [p for p in self.live if not p.blocked]
        if not runnable:
            runnable = [p for p in self.live if p.blocked == "wait"]
            if not runnable:
                return None
        proc = runnable[-1] if self.schedule == "child-first" else runnable[0]
        proc.blocked = ""
        return proc

    def _add(self, proc: _Proc) -> None:
        self.procs[proc.pid] = proc
        self.live.append(proc)

    def _wait_would_block(self, proc: _Proc, args: tuple[int, ...]) -> bool:
        """Would wait4(pid, status, options) block now? Read off /proc (kernel truth): the
        caller's children are the processes whose parent it is; zombies have state Z."""
        options = args[2] & 0xFFFF_FFFF
        if options & ~WAIT4_VALID_OPTIONS or options & WNOHANG:
            return False
        if options & WCLONE and not options & WALL:
            return False                    # only clone children (never fork-like ones): ECHILD
        want = args[0] & 0xFFFF_FFFF
        want = want - (1 << 32) if want >= 1 << 31 else want
        if want == -(1 << 31):
            return False                    # ESRCH
        eligible_zombie = eligible_live = False
        for other in self.procs.values():       # dead ones too: zombies are dead to the tracer
            info = _proc_stat(other.pid)
            if info is None or info[1] != proc.pid:
                continue
            state, _, pgrp = info
            if want > 0 and other.pid != want:
                continue
            if want == 0 and pgrp != _proc_stat_pgrp(proc.pid):
                continue
            if want < -1 and pgrp != -want:
                continue
            if state == "Z":
                eligible_zombie = True
            else:
                eligible_live = True
        return eligible_live and not eligible_zombie

    def _wake_waiters(self) -> None:
        for other in self.live:
            if other.blocked == "wait" and other.pending and not self._wait_would_block(other, other.pending[1]):
                other.blocked = ""

    # -- the loop -------------------------------------------------------------------------------
    def execute(self, root_pid: int) -> None:
        root = _Proc(root_pid, started=True)
        self._add(root)
        self._start_root(root)
        while True:
            if len(self.events) >= self.budget.max_events:
                raise _Stop(f"event budget of {self.budget.max_events} events exhausted")
            proc = self._pick()
            if proc is None:
                if self.live:
                    raise _Stop("every live process is blocked (a vfork parent without its child)")
                return
            if proc.started:
                signo, proc.deliver = proc.deliver, 0
                try:
                    pt.resume(proc.pid, signo)
                except ProcessLookupError:
                    pass                        # killed meanwhile (watchdog); waitpid reports it
            _, status = os.waitpid(proc.pid, pt.WALL)
            if self.timed_out.is_set():
                raise _Stop(f"wall-time budget of {self.budget.wall_seconds}s exhausted")
            self._handle(proc, status)

    def _start_root(self, root: _Proc) -> None:
        """The root stops at its own SIGSTOP (before execve); set options, then let it exec."""
        _, status = os.waitpid(root.pid, pt.WALL)
        if not os.WIFSTOPPED(status):
            raise BackendError(f"the sandboxed child died during setup (wait status {status:#x}): "
                               f"{self.session.describe_setup_failure(status)}")
        pt.setoptions(root.pid, _PTRACE_OPTIONS)
        self.session.enter_cgroups(root.pid)
        pt.resume(root.pid, 0, pt.PTRACE_CONT)
        _, status = os.waitpid(root.pid, pt.WALL)
        if not (os.WIFSTOPPED(status) and status >> 16 == pt.PTRACE_EVENT_EXEC):
            raise BackendError(f"the initial execve of {self.session.entry!r} did not complete "
                               f"(wait status {status:#x}): {self.session.describe_setup_failure(status)}")
        root.image = self.session.entry
        self._emit_exec(root)

    def _handle(self, proc: _Proc, status: int) -> None:
        if os.WIFEXITED(status) or os.WIFSIGNALED(status):
            self._died(proc, status)
            return
        sig = os.WSTOPSIG(status)
        if not proc.started:
            proc.started = True
            if sig == signal.SIGSTOP:
                return                          # the auto-attach SIGSTOP of a new child
        event = status >> 16
        if sig == _SYSCALL_STOP:
            self._syscall_stop(proc)
        elif sig == signal.SIGTRAP and event:
            self._event_stop(proc, event)
        else:
            self._signal_stop(proc, sig)

    # -- stops ------------------------------------------------------------------------------------
    def _syscall_stop(self, proc: _Proc) -> None:
        op, value, args = pt.get_syscall_info(proc.pid)
        if op == pt.SYSCALL_INFO_ENTRY:
            nr = value
            if nr == REPORT_NR:
                self._report(proc, args)
                proc.pending = None
            elif nr in _EXIT_NRS:
                proc.pending = None             # exit has no Syscall event, only the Exit
            else:
                proc.pending = (nr, args)
                if nr == Nr.wait4 and self._wait_would_block(proc, args):
                    proc.blocked = "wait"       # resumed once a child it waits for is a zombie
                elif nr == Nr.write and args[0] in (1, 2):
                    self.session.host.empty_output_pipe()   # deterministic partial writes (sandbox.py)
            return
        if op != pt.SYSCALL_INFO_EXIT or proc.pending is None:
            return                              # the report's ENOSYS, or an already-emitted call
        nr, args = proc.pending
        result = value
        if result in _RESTART_RESULTS:
            proc.pending = None
            return
        if nr == Nr.execve and result < 0 and _pending_signals(proc.pid) & (1 << (Sig.SIGSEGV - 1)):
            return                              # failed after the point of no return: dies next
        proc.pending = None
        if nr == Nr.write and args[0] in (1, 2) and result > 0:
            if result > MAX_OUTPUT:
                raise _Stop(f"write of {result} bytes exceeds the tracer's output budget of {MAX_OUTPUT}")
            self.events.append(Output(proc.pid, args[0], read_memory(proc.pid, args[1], result)))
        self.events.append(Syscall(proc.pid, nr, args, result))

    def _event_stop(self, proc: _Proc, event: int) -> None:
        if event in _FORK_EVENTS:
            child_pid = pt.geteventmsg(proc.pid)
            nr, args = proc.pending if proc.pending else (int(Nr.fork), (0,) * 6)
            proc.pending = None
            self.events.append(Syscall(proc.pid, nr, args, child_pid))
            child = _Proc(child_pid, image=proc.image)
            self._add(child)
            if event == pt.PTRACE_EVENT_CLONE:
                raise _Stop(f"clone flags {args[0]:#x} create a thread or a non-fork child: out of scope")
            if event == pt.PTRACE_EVENT_VFORK:
                proc.blocked, proc.vfork_child = "vfork", child_pid
        elif event == pt.PTRACE_EVENT_EXEC:
            nr, args = proc.pending if proc.pending else (int(Nr.execve), (0,) * 6)
            proc.pending = None
            self.events.append(Syscall(proc.pid, nr, args, 0))
            exe = os.readlink(f"/proc/{proc.pid}/exe")
            proc.image = os.path.basename(exe)
            self._emit_exec(proc)
            self._release_vfork_parent(proc.pid)

    def _release_vfork_parent(self, child_pid: int) -> None:
        for other in self.live:
            if other.blocked == "vfork" and other.vfork_child == child_pid:
                other.blocked, other.vfork_child = "", 0

    def _signal_stop(self, proc: _Proc, sig: int) -> None:
        if sig == signal.SIGCHLD:
            return                              # default action: ignore; not user-visible
        signo, code, addr = pt.getsiginfo(proc.pid)
        if sig in (signal.SIGXCPU, signal.SIGXFSZ):
            raise _Stop(f"CPU-time limit reached ({signal.Signals(sig).name})")
        self.events.append(Signal(proc.pid, signo, code, addr))
        proc.signalled = True
        proc.deliver = sig

    def _died(self, proc: _Proc, status: int) -> None:
        if os.WIFSIGNALED(status):
            termsig = os.WTERMSIG(status)
            if termsig == signal.SIGKILL:
                raise _Stop("a process was killed by SIGKILL (memory or process limit, or an outside kill)")
            if termsig == signal.SIGXCPU:
                raise _Stop("CPU-time limit reached (SIGXCPU)")
            if (termsig == Sig.SIGSEGV and not proc.signalled and proc.pending is not None
                    and proc.pending[0] == Nr.execve):
                # execve failed after the point of no return: the kernel forces SIGSEGV without
                # a signal-delivery stop (SA_IMMUTABLE); the trace shows it as Linux's kill.
                self.events.append(Signal(proc.pid, int(Sig.SIGSEGV), int(SiCode.SI_KERNEL), 0))
        self.events.append(Exit(proc.pid, status))
        self.live.remove(proc)
        self._release_vfork_parent(proc.pid)
        self._wake_waiters()

    # -- helpers ----------------------------------------------------------------------------------
    def _report(self, proc: _Proc, args: tuple[int, ...]) -> None:
        kind = args[0]
        values = args[1:1 + REPORT_ARITY.get(kind, 5)]
        self.events.append(Report(proc.pid, kind, values))
        if kind == ReportKind.observe:
            self.events.append(Observation(proc.pid, read_view(proc.pid)))

    def _emit_exec(self, proc: _Proc) -> None:
        regs = pt.getregs(proc.pid)
        layout = read_layout(proc.pid, self.images.get(proc.image, b""), regs.rsp)
        self.events.append(Exec(proc.pid, layout))


class LinuxBackend:
    """Runs programs natively on this machine's kernel under ptrace (module docstring).

    One run at a time per backend object, from one thread (ptrace binds a tracee to the thread
    that started it). Reusable across runs; after a fork, the child gets its own directory,
    launchers and threads on first use."""
    name = "linux"
    profile_name = "linux"

    SCHEDULES = ("child-first", "parent-first")

    def __init__(self, sandbox: Sandbox = Sandbox(), schedule: str = "child-first") -> None:
        if schedule not in self.SCHEDULES:
            raise InvalidArgument(f"schedule={schedule!r} must be one of {', '.join(self.SCHEDULES)}")
        self.sandbox = sandbox
        self.schedule = schedule
        self._host_obj = sandbox.host()
        self._host_pid = os.getpid()

    @property
    def _host(self) -> Host:
        """This process's Host. A backend inherited through fork (campaign workers) must not share
        the parent's directory, launchers or threads (threads do not survive fork): make new ones."""
        if self._host_pid != os.getpid():
            self._host_obj = self.sandbox.host()
            self._host_pid = os.getpid()
        return self._host_obj

    @staticmethod
    def available() -> tuple[bool, str]:
        """(usable here?, reason if not)."""
        if platform.system() != "Linux" or platform.machine() != "x86_64":
            return False, f"needs Linux on x86-64, this is {platform.system()} on {platform.machine()}"
        try:
            with open("/proc/sys/kernel/yama/ptrace_scope") as f:
                if f.read().strip() == "3":
                    return False, "ptrace is disabled (kernel.yama.ptrace_scope = 3)"
        except FileNotFoundError:
            pass
        for path in ("/proc/self/pagemap", "/proc/self/maps"):
            if not os.path.exists(path):
                return False, f"{path} is missing (is /proc mounted?)"
        if LinuxBackend._probe is None:
            LinuxBackend._probe = LinuxBackend._probe_once()
        return LinuxBackend._probe

    _probe: tuple[bool, str] | None = None

    @staticmethod
    def _probe_once() -> tuple[bool, str]:
        """Trace one tiny program (exit(0)) for real: catches ptrace or seccomp being refused
        (containers, LSMs) that the files above cannot show."""
        from .elf import PF_R, PF_X, Segment, write_elf
        code = bytes([0xB8, 60, 0, 0, 0, 0x31, 0xFF, 0x0F, 0x05])     # mov eax, 60; xor edi, edi; syscall
        image = write_elf([Segment(0x40_0000, code, len(code), PF_R | PF_X)], 0x40_0000)
        backend = None
        try:
            backend = LinuxBackend()
            trace = backend.run({"i0": image}, "i0", Budget(wall_seconds=5.0))
        except (OSError, ForkspecError) as exc:
            return False, f"a traced test run failed: {exc}"
        finally:
            if backend is not None:
                backend.close()
        if not trace.events or not isinstance(trace.events[-1], Exit) or trace.events[-1].status != 0:
            return False, f"a traced test run gave an unexpected trace: {trace.events!r}"
        return True, ""

    def run(self, images: dict[str, bytes], entry: str, budget: Budget = Budget()) -> Trace:
        if entry not in images:
            raise InvalidArgument(f"entry={entry!r} is not one of the images {sorted(images)}")
        for path in images:
            if not path or "/" in path or path in (".", ".."):
                raise InvalidArgument(f"image path {path!r} must be a plain file name (like 'i0')")
        workdir = self._host.workdir
        self._install_images(workdir, images)
        events = self._trace(images, entry, workdir, budget)
        meta = tuple((k, self.schedule if k == "schedule" else v) for k, v in self._host.meta)
        return Trace(events=tuple(events), backend=self.name, platform=self._host.platform, meta=meta)

    @staticmethod
    def _install_images(workdir: str, images: dict[str, bytes]) -> None:
        """Make the run's path table the directory's only content (mode 0755, readable and
        executable by the sandbox uid). Files are unlinked and created afresh: truncating a
        file that still has delayed-allocation blocks makes ext4 flush it (auto_da_alloc),
        which costs more than a whole run."""
        for name in os.listdir(workdir):
            os.unlink(os.path.join(workdir, name))
        for path, data in images.items():
            fd = os.open(os.path.join(workdir, path), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o755)
            try:
                os.fchmod(fd, 0o755)
                os.write(fd, data)
            finally:
                os.close(fd)

    def _trace(self, images: dict[str, bytes], entry: str, workdir: str, budget: Budget) -> list[Event]:
        cpu_seconds = max(1, math.ceil(budget.wall_seconds))
        session = self._host.session(entry, workdir, cpu_seconds, MODEL_SYSCALLS | {REPORT_NR})
        run = _Run(images=images, session=session, budget=budget, schedule=self.schedule)
        root_pid = session.spawn()

        def on_timeout() -> None:
            run.timed_out.set()
            session.kill()

        self._host.watchdog.arm(budget.wall_seconds, on_timeout)
        try:
            run.execute(root_pid)
        except _Stop as stop:
            run.events.append(Inconclusive(stop.reason))
        except ChildProcessError as exc:
            if not run.timed_out.is_set():
                raise BackendError(f"lost track of a traced process: {exc}") from exc
            run.events.append(Inconclusive(f"wall-time budget of {budget.wall_seconds}s exhausted"))
        except OSError as exc:
            if not run.timed_out.is_set():
                raise BackendError(f"tracing failed after {len(run.events)} events: {exc}") from exc
            run.events.append(Inconclusive(f"wall-time budget of {budget.wall_seconds}s exhausted"))
        finally:
            self._host.watchdog.disarm()
            session.kill_and_reap(anything_alive=bool(run.live) or not run.events)
        return run.events

    def close(self) -> None:
        """Release the output pipe, the directory and the cgroups (also done when the backend is
        collected)."""
        self._host_obj.close()
