"""The x86-64 Linux ABI forkspec speaks: syscall numbers, flags, errno values, signals.

One place for each number. model/, impl/ and oracle/ all read it; none of them restates a value.
Values are Linux's (arch/x86/entry/syscalls/syscall_64.tbl, include/uapi/...).
"""
from __future__ import annotations

import enum

# --- Memory geometry -------------------------------------------------------------------------
PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT                 # 4 KiB pages; no huge pages in the model
PAGE_MASK = ~(PAGE_SIZE - 1) & 0xFFFF_FFFF_FFFF_FFFF
TASK_SIZE = 0x7FFF_FFFF_F000                # top of user space with 4-level paging (one guard page)
MMAP_MIN_ADDR = 0x1_0000                    # max(vm.mmap_min_addr, CONFIG_LSM_MMAP_MIN_ADDR) for uid != 0
DAC_MMAP_MIN_ADDR = 0x1000                  # vm.mmap_min_addr: MAP_FIXED below it needs CAP_SYS_RAWIO (EPERM)
U64 = 0xFFFF_FFFF_FFFF_FFFF


class Nr(enum.IntEnum):
    """Syscall numbers (x86-64)."""
    write = 1
    mmap = 9
    mprotect = 10
    munmap = 11
    brk = 12
    sched_yield = 24
    getpid = 39
    clone = 56
    fork = 57
    vfork = 58
    execve = 59
    exit = 60
    wait4 = 61
    getppid = 110
    exit_group = 231


# The report channel (DESIGN.md contract 2): generated code tells the backend what it saw through
# this number, which Linux does not use (it answers -ENOSYS; the tracer reads the registers at
# syscall entry). Not part of the model's syscall stream.
REPORT_NR = 0x7F00


class ReportKind(enum.IntEnum):
    loaded = 1      # report(loaded, address, value): a load probe's 8-byte value
    observe = 2     # report(observe, tag): take an Observation of the caller's address space now
    wstatus = 3     # report(wstatus, status): the status wait4 stored through its pointer


class Errno(enum.IntEnum):
    EPERM = 1
    ENOENT = 2
    ESRCH = 3
    EINTR = 4
    EIO = 5
    E2BIG = 7
    ENOEXEC = 8
    EBADF = 9
    ECHILD = 10
    EAGAIN = 11
    ENOMEM = 12
    EACCES = 13
    EFAULT = 14
    EEXIST = 17
    ENOTDIR = 20
    EINVAL = 22
    ETXTBSY = 26
    ENOSYS = 38
    EOPNOTSUPP = 95


# --- mmap / mprotect -------------------------------------------------------------------------
PROT_NONE = 0x0
PROT_READ = 0x1
PROT_WRITE = 0x2
PROT_EXEC = 0x4
PROT_SEM = 0x8                  # accepted by mprotect's arch_validate_prot, no effect on x86
PROT_GROWSDOWN = 0x0100_0000
PROT_GROWSUP = 0x0200_0000

MAP_SHARED = 0x01
MAP_PRIVATE = 0x02
MAP_SHARED_VALIDATE = 0x03
MAP_DROPPABLE = 0x08
MAP_TYPE = 0x0F
MAP_FIXED = 0x10
MAP_ANONYMOUS = 0x20
MAP_GROWSDOWN = 0x0100
MAP_DENYWRITE = 0x0800
MAP_EXECUTABLE = 0x1000
MAP_LOCKED = 0x2000
MAP_NORESERVE = 0x4000
MAP_POPULATE = 0x8000
MAP_NONBLOCK = 0x1_0000
MAP_STACK = 0x2_0000
MAP_HUGETLB = 0x4_0000
MAP_SYNC = 0x8_0000
MAP_FIXED_NOREPLACE = 0x10_0000

# --- wait4 -----------------------------------------------------------------------------------
WNOHANG = 0x1
WUNTRACED = 0x2
WCONTINUED = 0x8
WNOTHREAD = 0x2000_0000
WALL = 0x4000_0000
WCLONE = 0x8000_0000
WAIT4_VALID_OPTIONS = WNOHANG | WUNTRACED | WCONTINUED | WNOTHREAD | WALL | WCLONE

# --- clone -----------------------------------------------------------------------------------
CSIGNAL = 0xFF
CLONE_VM = 0x100
CLONE_FS = 0x200
CLONE_FILES = 0x400
CLONE_SIGHAND = 0x800
CLONE_VFORK = 0x4000
CLONE_PARENT = 0x8000
CLONE_THREAD = 0x1_0000
CLONE_SETTLS = 0x8_0000
CLONE_PARENT_SETTID = 0x10_0000
CLONE_CHILD_CLEARTID = 0x20_0000
CLONE_CHILD_SETTID = 0x100_0000


class Signal(enum.IntEnum):
    SIGILL = 4
    SIGTRAP = 5
    SIGBUS = 7
    SIGKILL = 9
    SIGSEGV = 11
    SIGCHLD = 17


# Fork-like clone flag sets: clone is in scope only for these (DESIGN.md "Semantics").
CLONE_FORKLIKE_FLAGS = frozenset({int(Signal.SIGCHLD), CLONE_VM | CLONE_VFORK | int(Signal.SIGCHLD)})


class SiCode(enum.IntEnum):
    SI_KERNEL = 0x80
    SEGV_MAPERR = 1         # no VMA at the address
    SEGV_ACCERR = 2         # VMA exists, access not allowed
    BUS_ADRERR = 2


def signal_name(signo: int) -> str:
    """'SIGSEGV' for 11; the number itself for a signal this module does not name."""
    try:
        return Signal(signo).name
    except ValueError:
        return str(signo)


def si_code_name(signo: int, code: int) -> str:
    """A siginfo si_code's name; its meaning depends on the signal (2 is SEGV_ACCERR for
    SIGSEGV but BUS_ADRERR for SIGBUS)."""
    if code == SiCode.SI_KERNEL:
        return "SI_KERNEL"
    if signo == Signal.SIGBUS:
        return "BUS_ADRERR" if code == SiCode.BUS_ADRERR else str(code)
    return {int(SiCode.SEGV_MAPERR): "SEGV_MAPERR", int(SiCode.SEGV_ACCERR): "SEGV_ACCERR"}.get(code, str(code))


def wait_status_exited(code: int) -> int:
    """The wait status of a process that called exit(code): (code & 0xff) << 8."""
    return (code & 0xFF) << 8


def wait_status_signaled(signo: int, core: bool = False) -> int:
    """The wait status of a process killed by signo (+0x80 if a core was written)."""
    return (signo & 0x7F) | (0x80 if core else 0)


def neg_errno(e: Errno) -> int:
    """A syscall's raw return value for -e, as the 64-bit register holds it."""
    return (-int(e)) & U64


def as_signed(value: int) -> int:
    """Read a 64-bit register value as a signed number (-4095..-1 are errno returns)."""
    value &= U64
    return value - (1 << 64) if value >= 1 << 63 else value


def is_errno(value: int) -> bool:
    """True when a raw 64-bit syscall return is an -errno (Linux's IS_ERR_VALUE)."""
    return (value & U64) >= (-4095) & U64
