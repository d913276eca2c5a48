"""The level-1 (user-visible) state: processes, address spaces as a user sees them, the break.

Declared once here (STYLE.md item 1). A state is never mutated: every transition builds a new
one, sharing everything it did not change (a fork child's address space is the parent's object).

Pages are page numbers (address >> PAGE_SHIFT). Each page carries one attribute word (below):
the mapping's PROT_* bits, whether it is mapped, MAP_SHARED or private, which kind of mapping it
is (kernel-owned kinds have masked contents) and, for MAP_SHARED, the backing object. One word
per page keeps the symbolic interpretation to one array page -> word (model/space.py).
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field, replace
from typing import Any

from ..specs.abi import PAGE_SHIFT, PAGE_SIZE, TASK_SIZE
from ..specs.profiles import Profile

# --- the page attribute word -----------------------------------------------------------------
ATTR_PROT = 0x7                 # PROT_READ | PROT_WRITE | PROT_EXEC as mmap/mprotect gave them
ATTR_MAPPED = 0x8               # the page lies inside a mapping (a VMA, in kernel terms)
ATTR_SHARED = 0x10              # MAP_SHARED: contents live in the backing object, not the space
ATTR_KIND_SHIFT = 5             # 3 bits: what made the mapping (Kind)
ATTR_KIND = 0x7 << ATTR_KIND_SHIFT
ATTR_SIGBUS = 0x100             # file page beyond EOF: any access raises SIGBUS BUS_ADRERR
ATTR_GROWSDOWN = 0x200          # Linux's stack VMA (VM_GROWSDOWN): brk keeps stack_guard_gap
ATTR_WIPEONFORK = 0x400         # VM_WIPEONFORK (MAP_DROPPABLE): a fork child reads zeros there
ATTR_REGION_SHIFT = 11          # 5 bits: which kernel-named region (Layout.regions index + 1) a
ATTR_REGION = 0x1F << ATTR_REGION_SHIFT  # special page belongs to: adjacent special VMAs ([vvar],
                                         # [vvar_vclock], [vdso]) stay apart, so unmapping one whole is no split
ATTR_OBJ_SHIFT = 16             # MAP_SHARED backing object id (bits 16..47)
ATTR_OBJ = 0xFFFF_FFFF << ATTR_OBJ_SHIFT
UNMAPPED = 0                    # the attribute of a page outside every mapping


class Kind(enum.IntEnum):
    anon = 0        # mmap
    image = 1       # an ELF PT_LOAD segment
    heap = 2        # brk
    stack = 3       # the initial stack (kernel-owned contents)
    tls = 4         # levitate's TLS page (kernel-owned contents)
    vdso = 5        # [vdso] (kernel-owned; refuses splitting)
    vvar = 6        # [vvar] (kernel-owned; refuses splitting)
    kernel = 7      # any other kernel-owned region a layout names


# Kinds whose contents the kernel wrote (auxv, AT_RANDOM, vDSO code): masked in observations and
# in loads (DESIGN.md contract 4).
MASKED_KINDS = frozenset({Kind.stack, Kind.tls, Kind.vdso, Kind.vvar, Kind.kernel})
# Special mappings that refuse being split (munmap of part of [vdso] -> EINVAL).
SPECIAL_KINDS = frozenset({Kind.vdso, Kind.vvar})

FIRST_OBJ = 1                   # object ids start at 1 so that 0 means "no object"
TASK_PAGES = TASK_SIZE >> PAGE_SHIFT
PAGE_OFFSET_MASK = PAGE_SIZE - 1
STACK_GUARD_GAP_PAGES = 256     # mm/mmap.c stack_guard_gap (1 MiB)
RLIMIT_STACK = 8 << 20          # a growsdown mapping grows on faults up to this size (facts: RLIMIT_STACK)
THP_SIZE = 0x20_0000            # PMD_SIZE: anonymous mmap(NULL) of a multiple is 2 MiB aligned
# A resource-dependent answer (ENOMEM from overcommit) is allowed on a profile without a frame
# budget only for requests at least this big: Linux's heuristic overcommit refuses a single
# request larger than RAM + swap, and sandboxes cap the address space well above small programs.
LARGE_REQUEST = 0x1000_0000     # 256 MiB
FRAME_RESERVE_FRACTION = 8      # part of a frame budget a kernel keeps for page tables and stacks


def make_attr(prot: int, kind: int = Kind.anon, shared: bool = False, obj: int = 0,
              sigbus: bool = False, growsdown: bool = False) -> int:
    """The attribute word of a mapped page (concrete values only)."""
    return (ATTR_MAPPED | (prot & ATTR_PROT) | (ATTR_SHARED if shared else 0) | (int(kind) << ATTR_KIND_SHIFT)
            | (ATTR_SIGBUS if sigbus else 0) | (ATTR_GROWSDOWN if growsdown else 0) | (obj << ATTR_OBJ_SHIFT))


class Run(enum.IntEnum):
    """A process's state in the fork tree."""
    running = 0
    vfork_blocked = 1       # a vfork parent, until its child exits or execs
    zombie = 2              # exited, not yet reaped
    reaped = 3


@dataclass(frozen=True)
class Process:
    pid: int
    ppid: int                       # the parent's pid (the reaper's once orphaned)
    path: str                       # place in the fork tree: "root", "root/0", "root/0/1"
    mm: int                         # address-space id (a vfork child shares its parent's)
    run: Run = Run.running
    status: int = 0                 # wait status once a zombie
    children: tuple[int, ...] = ()  # in creation order (Linux's children list is append-only)
    vfork_parent: int = 0           # pid blocked on this vfork child, 0 if none
    image: int = 0                  # index of the program image it runs
    entry_sp: int = 0               # stack pointer at exec (fetch probes push a return address)
    load_bias: int = 0              # ET_DYN: where the image was placed
    forks: int = 0                  # children ever created (names the next child's place)


def _copy_with(obj: Any, changes: dict) -> Any:
    """A copy of a frozen dataclass with some fields changed, without dataclasses.replace's
    per-call field walk (the oracle makes millions of these)."""
    new = object.__new__(type(obj))
    new.__dict__.update(obj.__dict__)
    new.__dict__.update(changes)
    return new


@dataclass(frozen=True)
class AddressSpace:
    """What a user sees of one mm: page attributes, private page contents, the break.

    `pages` and `data` are containers (model/space.py): a concrete range map and a sparse page
    store for the oracle, Z3 arrays for the proofs. `mmap_base` is Linux's top of the mmap area,
    learned from the first pick (None until then)."""
    pages: Any
    data: Any
    start_brk: Any
    brk: Any
    mmap_base: Any = None

    def with_(self, **changes: Any) -> "AddressSpace":
        return _copy_with(self, changes)


@dataclass(frozen=True)
class State:
    """The whole user-visible system.

    `procs`: pid -> Process (zombies included; reaped ones removed). `spaces`: mm id ->
    AddressSpace. `shared`: container object id -> page contents of MAP_SHARED mappings.
    `reaper`: the pid orphans are re-parented to (also the root's parent), learned as a choice
    (0 until learned)."""
    profile: Profile
    procs: dict
    spaces: dict
    shared: Any
    next_mm: int = 1
    next_obj: int = FIRST_OBJ
    reaper: int = 0
    root: int = 0

    def with_(self, **changes: Any) -> "State":
        return _copy_with(self, changes)

    def proc(self, pid: int) -> Process:
        return self.procs[pid]

    def space_of(self, pid: int) -> AddressSpace:
        return self.spaces[self.procs[pid].mm]

    def with_proc(self, proc: Process) -> "State":
        procs = dict(self.procs)
        procs[proc.pid] = proc
        return _copy_with(self, {"procs": procs})

    def with_space(self, pid: int, space: AddressSpace) -> "State":
        spaces = dict(self.spaces)
        spaces[self.procs[pid].mm] = space
        return _copy_with(self, {"spaces": spaces})

    def live_pids(self) -> list[int]:
        return [p.pid for p in self.procs.values() if p.run in (Run.running, Run.vfork_blocked)]


@dataclass(frozen=True)
class Result:
    """A transition's answer: `allowed` (was the backend's pick legal), `outcome` (the syscall's
    return value, or a Fault / Killed), `state` (the next state), `clause` (the model clause that
    decided it, for coverage and messages)."""
    allowed: Any
    outcome: Any
    state: State
    clause: str = ""
    expected: str = ""          # when not allowed: what the model would have accepted
    start: Any = None           # mmap on Z3 terms: the address it maps at (the refinement's Choice.addr)


@dataclass(frozen=True)
class Fault:
    """A user-visible fault: the process is killed by `signo` (si_code, si_addr)."""
    signo: int
    si_code: int
    si_addr: int


@dataclass(frozen=True)
class Blocks:
    """The call cannot return now (wait4 with children still running, no WNOHANG)."""
    reason: str


@dataclass(frozen=True)
class Killed:
    """execve failed after the point of no return: the process dies with SIGSEGV (SI_KERNEL)."""
    reason: str


def page_of(addr: int) -> int:
    return addr >> PAGE_SHIFT



# --- merging under a symbolic condition (model/logic.py's ite) ----------------------------------

def _merge(cond: Any, a: Any, b: Any) -> Any:
    from .logic import ite
    if a is b:
        return a
    if isinstance(a, dict):
        if a.keys() != b.keys():
            raise ValueError("cannot merge states with different process/space sets under a symbolic condition")
        return {k: _merge(cond, a[k], b[k]) for k in a}
    if a is None or b is None or isinstance(a, (str, Profile)):
        if a != b:
            raise ValueError(f"cannot merge {a!r} and {b!r} under a symbolic condition")
        return a
    return ite(cond, a, b)


def _ite_dataclass(self: Any, cond: Any, other: Any) -> Any:
    from dataclasses import fields
    return replace(self, **{f.name: _merge(cond, getattr(self, f.name), getattr(other, f.name))
                            for f in fields(self)})


AddressSpace.__ite__ = _ite_dataclass       # type: ignore[attr-defined]
State.__ite__ = _ite_dataclass              # type: ignore[attr-defined]
Process.__ite__ = _ite_dataclass            # type: ignore[attr-defined]


@dataclass(frozen=True)
class OutOfScope:
    """The call is outside what the model covers (a clone flag set that is not fork-like)."""
    reason: str


REAPER = -1     # Process.ppid of an orphan (and of the root): the backend's reaper, pid learned
