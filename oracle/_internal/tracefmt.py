"""Trace events as text, strace-style: `[2] mmap(0, 0x2000, PROT_READ|PROT_WRITE, ...) = 0x1000...`."""
from __future__ import annotations

from ...specs import abi
from ...specs.trace import (Event, Exec, Exit, Inconclusive, Observation, Output, Report, Signal, Syscall,
                            rights_str)

_PROT = [(abi.PROT_READ, "PROT_READ"), (abi.PROT_WRITE, "PROT_WRITE"), (abi.PROT_EXEC, "PROT_EXEC"),
         (abi.PROT_SEM, "PROT_SEM"), (abi.PROT_GROWSDOWN, "PROT_GROWSDOWN"), (abi.PROT_GROWSUP, "PROT_GROWSUP")]
_MAP_TYPE = {abi.MAP_SHARED: "MAP_SHARED", abi.MAP_PRIVATE: "MAP_PRIVATE",
             abi.MAP_SHARED_VALIDATE: "MAP_SHARED_VALIDATE", abi.MAP_DROPPABLE: "MAP_DROPPABLE"}
_MAP = [(abi.MAP_FIXED, "MAP_FIXED"), (abi.MAP_ANONYMOUS, "MAP_ANONYMOUS"), (abi.MAP_GROWSDOWN, "MAP_GROWSDOWN"),
        (abi.MAP_NORESERVE, "MAP_NORESERVE"), (abi.MAP_POPULATE, "MAP_POPULATE"), (abi.MAP_STACK, "MAP_STACK"),
        (abi.MAP_HUGETLB, "MAP_HUGETLB"), (abi.MAP_FIXED_NOREPLACE, "MAP_FIXED_NOREPLACE")]
_WAIT = [(abi.WNOHANG, "WNOHANG"), (abi.WUNTRACED, "WUNTRACED"), (abi.WCONTINUED, "WCONTINUED"),
         (abi.WNOTHREAD, "__WNOTHREAD"), (abi.WALL, "__WALL"), (abi.WCLONE, "__WCLONE")]


def _flags(value: int, table: list[tuple[int, str]], base: list[str] | None = None) -> str:
    names = list(base or [])
    rest = value
    for bit, name in table:
        if value & bit:
            names.append(name)
            rest &= ~bit
    if rest:
        names.append(hex(rest))
    return "|".join(names) or "0"


def format_result(nr: int, result: int) -> str:
    if -4095 <= result < 0:
        try:
            return f"-1 {abi.Errno(-result).name}"
        except ValueError:
            return f"-1 errno {-result}"
    if nr in (abi.Nr.mmap, abi.Nr.brk):
        return hex(result)
    return str(result)


def format_args(nr: int, args: tuple[int, ...]) -> str:
    a = list(args) + [0] * (6 - len(args))
    if nr == abi.Nr.mmap:
        flags = a[3]
        kind = _MAP_TYPE.get(flags & abi.MAP_TYPE, hex(flags & abi.MAP_TYPE))
        parts = [hex(a[0]), hex(a[1]), _flags(a[2], _PROT) if a[2] else "PROT_NONE",
                 _flags(flags & ~abi.MAP_TYPE, _MAP, [kind]), str(abi.as_signed(a[4]) if a[4] >> 31 else a[4]), hex(a[5])]
    elif nr == abi.Nr.mprotect:
        parts = [hex(a[0]), hex(a[1]), _flags(a[2], _PROT) if a[2] else "PROT_NONE"]
    elif nr == abi.Nr.munmap:
        parts = [hex(a[0]), hex(a[1])]
    elif nr == abi.Nr.brk:
        parts = [hex(a[0])]
    elif nr == abi.Nr.wait4:
        parts = [str(abi.as_signed(a[0]) if a[0] >> 63 else a[0] if a[0] < 1 << 32 else abi.as_signed(a[0])),
                 hex(a[1]), _flags(a[2], _WAIT), hex(a[3])]
    elif nr == abi.Nr.write:
        parts = [str(a[0]), hex(a[1]), str(a[2])]
    elif nr in (abi.Nr.exit, abi.Nr.exit_group):
        parts = [str(abi.as_signed(a[0]))]
    elif nr == abi.Nr.clone:
        parts = [hex(a[0]), hex(a[1])]
    elif nr == abi.Nr.execve:
        parts = [hex(a[0]), hex(a[1]), hex(a[2])]
    elif nr in (abi.Nr.fork, abi.Nr.vfork, abi.Nr.getpid, abi.Nr.getppid, abi.Nr.sched_yield):
        parts = []
    else:
        parts = [hex(x) for x in a]
    return ", ".join(parts)


def syscall_name(nr: int) -> str:
    try:
        return abi.Nr(nr).name
    except ValueError:
        return f"syscall_{nr}"


def format_event(event: Event) -> str:
    if isinstance(event, Syscall):
        return (f"[{event.pid}] {syscall_name(event.nr)}({format_args(event.nr, event.args)})"
                f" = {format_result(event.nr, event.result)}")
    if isinstance(event, Report):
        try:
            kind = abi.ReportKind(event.kind).name
        except ValueError:
            kind = str(event.kind)
        return f"[{event.pid}] report({kind}, {', '.join(hex(v) for v in event.values)})"
    if isinstance(event, Observation):
        ranges = " ".join(f"{s:#x}-{e:#x}:{rights_str(r)}" for s, e, r in event.view.ranges)
        return f"[{event.pid}] observe: {ranges} ({len(event.view.digests)} non-zero pages)"
    if isinstance(event, Output):
        return f"[{event.pid}] output fd {event.fd}: {event.data!r}"
    if isinstance(event, Signal):
        return (f"[{event.pid}] --- {abi.signal_name(event.signo)} {{si_code="
                f"{abi.si_code_name(event.signo, event.si_code)}, si_addr={event.si_addr:#x}}} ---")
    if isinstance(event, Exit):
        status = event.status
        how = f"killed by signal {status & 0x7F}" if status & 0x7F else f"exited with {(status >> 8) & 0xFF}"
        return f"[{event.pid}] +++ {how} (status {status:#06x}) +++"
    if isinstance(event, Exec):
        regions = " ".join(f"{n}={s:#x}-{e:#x}" for n, s, e in event.layout.regions)
        return f"[{event.pid}] exec: brk={event.layout.brk:#x} bias={event.layout.load_bias:#x} {regions}"
    if isinstance(event, Inconclusive):
        return f"--- inconclusive: {event.reason} ---"
    return repr(event)
