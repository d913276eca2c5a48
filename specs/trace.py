"""The trace: what a backend yields and the checker walks (DESIGN.md contracts 3 and 4).

Every backend (impl/, the Linux tracer) produces one global sequence of these events; the order
between processes is the order in which the backend ran them (one process at a time). Events name
processes by the backend's pid; the checker maps pids to places in the fork tree from fork results.

Ordering rules every backend keeps:
- A fork/vfork/clone yields one `Syscall` event in the parent (result = the child's pid), emitted
  when the child is created, before any event of the child. The child's 0 return is not an event.
  For vfork the parent's next event comes only after the child exited or exec'd.
- exit and exit_group yield no `Syscall` event, only the process's `Exit`.
- A successful execve yields `Syscall(..., result=0)` then `Exec(pid, layout)`. The first image of
  a run also gets an `Exec` event before any other event. An execve that fails after the point of
  no return yields `Signal(SIGSEGV, SI_KERNEL, 0)` and `Exit`, and no `Syscall` event.
- A user-visible fault yields `Signal` then `Exit`. Faults the kernel resolves itself
  (demand-zero, copy-on-write) are not events.
- write(1|2) yields `Output` (the bytes the kernel took, `result` of them) immediately before its
  `Syscall` event; no `Output` when the result is <= 0.
- `Report` events are the report channel (specs.abi.REPORT_NR); `observe` reports are followed by
  the `Observation` the backend took at that moment.
- A run that exhausts a budget ends with `Inconclusive`; nothing after it is checked.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from .abi import PAGE_SIZE

# Effective rights of a page as user code sees it on x86-64: any of R, W, X makes it readable.
RIGHT_R = 1
RIGHT_W = 2
RIGHT_X = 4

_ZERO_PAGE = bytes(PAGE_SIZE)


def effective_rights(prot: int) -> int:
    """PROT_* bits -> the rights x86-64 page tables can express (W or X imply R)."""
    rights = prot & (RIGHT_R | RIGHT_W | RIGHT_X)
    return rights | RIGHT_R if rights else 0


def rights_str(rights: int) -> str:
    """'rwx'-style text for a rights mask, as /proc/PID/maps spells it."""
    return "".join(ch if rights & bit else "-" for ch, bit in (("r", RIGHT_R), ("w", RIGHT_W), ("x", RIGHT_X)))


def page_digest(data: bytes) -> bytes | None:
    """Digest of one page's contents, or None for an all-zero page (zero pages carry no digest,
    so a present zero-filled frame and a not-yet-present page compare equal)."""
    if data == _ZERO_PAGE:
        return None
    return hashlib.blake2b(data, digest_size=16).digest()


@dataclass(frozen=True)
class View:
    """A process's address space as a user sees it (contract 4).

    `ranges`: sorted, non-overlapping, coalesced `(start, end, rights)` for mapped user memory
    below TASK_SIZE (adjacent ranges with equal rights are merged, so kernels that split VMAs
    differently give equal views). `digests`: `(page_address, digest)` for every readable page
    whose contents are not all zero, sorted by address.
    """
    ranges: tuple[tuple[int, int, int], ...]
    digests: tuple[tuple[int, bytes], ...]


@dataclass(frozen=True)
class Layout:
    """What the kernel chose for a new image (contract 5): read off the trace by the model.

    `regions`: kernel-owned regions as `(name, start, end)` — "stack", "vdso", "vvar", "tls" —
    whose contents are masked in observations (their rights are still compared). One entry per
    kernel mapping: Linux >= 6.13 maps "vvar_vclock" as a second special mapping after "vvar".
    """
    regions: tuple[tuple[str, int, int], ...]
    brk: int                        # the initial program break
    load_bias: int = 0              # ET_DYN: where the image was placed; ET_EXEC: 0
    entry_sp: int = 0               # the initial stack pointer


@dataclass(frozen=True)
class Syscall:
    pid: int
    nr: int
    args: tuple[int, ...]           # six raw 64-bit argument registers
    result: int                     # signed: -4095..-1 is -errno


@dataclass(frozen=True)
class Report:
    pid: int
    kind: int                       # specs.abi.ReportKind
    values: tuple[int, ...]


@dataclass(frozen=True)
class Observation:
    pid: int
    view: View


@dataclass(frozen=True)
class Output:
    pid: int
    fd: int
    data: bytes


@dataclass(frozen=True)
class Signal:
    pid: int
    signo: int
    si_code: int
    si_addr: int


@dataclass(frozen=True)
class Exit:
    pid: int
    status: int                     # the wait status, as Linux encodes it


@dataclass(frozen=True)
class Exec:
    pid: int
    layout: Layout


@dataclass(frozen=True)
class Inconclusive:
    reason: str


Event = Syscall | Report | Observation | Output | Signal | Exit | Exec | Inconclusive


@dataclass(frozen=True)
class Trace:
    """One run: the events, which backend produced them, and on what (kernel version, settings)."""
    events: tuple[Event, ...]
    backend: str
    platform: str = ""
    meta: tuple[tuple[str, str], ...] = field(default=())

    @property
    def inconclusive(self) -> Inconclusive | None:
        last = self.events[-1] if self.events else None
        return last if isinstance(last, Inconclusive) else None


def image_path(index: int) -> str:
    """The path under which image `index` of a program is executable (relative to the run's
    private directory on Linux; a key of impl's in-memory path table)."""
    return f"i{index}"


@dataclass(frozen=True)
class Budget:
    """Limits of one run; exhausting one ends the trace with `Inconclusive`, never a divergence."""
    instructions: int = 5_000_000   # impl: user instructions over all processes
    wall_seconds: float = 10.0
    max_events: int = 100_000


class Backend:
    """What every backend offers. `images` is the run's path table (path -> ELF bytes); the root
    process starts by executing `images[entry]` (with an `Exec` event as its first event)."""
    name: str = "?"
    profile_name: str = "?"

    def run(self, images: dict[str, bytes], entry: str, budget: Budget = Budget()) -> Trace:
        raise NotImplementedError
