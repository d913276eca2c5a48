"""ctypes bindings for the Linux calls the tracer needs: ptrace, personality, prctl, seccomp.

Only what oracle/_internal/linux.py uses, x86-64 only. Every wrapper raises OSError (with the
errno) on failure, like the os module does; waitpid, setrlimit and setresuid come from `os` and
`resource` directly.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import struct

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)

_ptrace = _libc.ptrace
_ptrace.argtypes = (ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p)
_ptrace.restype = ctypes.c_long

_prctl = _libc.prctl
_prctl.argtypes = (ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong)
_prctl.restype = ctypes.c_int

_personality = _libc.personality
_personality.argtypes = (ctypes.c_ulong,)
_personality.restype = ctypes.c_int

_execve = _libc.execve
_execve.argtypes = (ctypes.c_char_p, ctypes.POINTER(ctypes.c_char_p), ctypes.POINTER(ctypes.c_char_p))
_execve.restype = ctypes.c_int

_signal = _libc.signal
_signal.argtypes = (ctypes.c_int, ctypes.c_void_p)
_signal.restype = ctypes.c_void_p

# --- ptrace requests and options (include/uapi/linux/ptrace.h) -------------------------------
PTRACE_TRACEME = 0
PTRACE_PEEKDATA = 2
PTRACE_CONT = 7
PTRACE_KILL = 8
PTRACE_GETREGS = 12
PTRACE_SYSCALL = 24
PTRACE_SETOPTIONS = 0x4200
PTRACE_GETEVENTMSG = 0x4201
PTRACE_GETSIGINFO = 0x4202
PTRACE_GET_SYSCALL_INFO = 0x420E

PTRACE_O_TRACESYSGOOD = 0x01
PTRACE_O_TRACEFORK = 0x02
PTRACE_O_TRACEVFORK = 0x04
PTRACE_O_TRACECLONE = 0x08
PTRACE_O_TRACEEXEC = 0x10
PTRACE_O_TRACEVFORKDONE = 0x20
PTRACE_O_TRACEEXIT = 0x40
PTRACE_O_EXITKILL = 0x10_0000

PTRACE_EVENT_FORK = 1
PTRACE_EVENT_VFORK = 2
PTRACE_EVENT_CLONE = 3
PTRACE_EVENT_EXEC = 4
PTRACE_EVENT_VFORK_DONE = 5
PTRACE_EVENT_EXIT = 6

# PTRACE_GET_SYSCALL_INFO's `op`.
SYSCALL_INFO_NONE = 0
SYSCALL_INFO_ENTRY = 1
SYSCALL_INFO_EXIT = 2
SYSCALL_INFO_SECCOMP = 3

# waitpid: also wait for tracees that are not our children (and clone children).
WALL = 0x4000_0000

# --- prctl / personality / seccomp ------------------------------------------------------------
PR_SET_PDEATHSIG = 1
PR_SET_SECCOMP = 22
PR_SET_CHILD_SUBREAPER = 36
PR_SET_NO_NEW_PRIVS = 38
SECCOMP_MODE_FILTER = 2
ADDR_NO_RANDOMIZE = 0x0040000

AUDIT_ARCH_X86_64 = 0xC000_003E
X32_SYSCALL_BIT = 0x4000_0000
SECCOMP_RET_ALLOW = 0x7FFF_0000
SECCOMP_RET_ERRNO = 0x0005_0000

# Classic BPF opcodes used by the filter.
_BPF_LD_W_ABS = 0x20
_BPF_JEQ_K = 0x15
_BPF_JGE_K = 0x35
_BPF_RET_K = 0x06
_SECCOMP_DATA_NR = 0
_SECCOMP_DATA_ARCH = 4


def _check(result: int) -> int:
    if result == -1:
        err = ctypes.get_errno()
        if err:
            raise OSError(err, os.strerror(err))
    return result


def ptrace(request: int, pid: int = 0, addr: int = 0, data: int = 0) -> int:
    ctypes.set_errno(0)
    return _check(_ptrace(request, pid, addr, data))


def traceme() -> None:
    ptrace(PTRACE_TRACEME)


def setoptions(pid: int, options: int) -> None:
    ptrace(PTRACE_SETOPTIONS, pid, 0, options)


def resume(pid: int, signo: int = 0, request: int = PTRACE_SYSCALL) -> None:
    """Let a stopped tracee run to its next stop (PTRACE_SYSCALL), delivering `signo`."""
    ptrace(request, pid, 0, signo)


def geteventmsg(pid: int) -> int:
    msg = ctypes.c_ulong(0)
    ptrace(PTRACE_GETEVENTMSG, pid, 0, ctypes.addressof(msg))
    return msg.value


class SigInfo(ctypes.Structure):
    _fields_ = [("signo", ctypes.c_int), ("errno", ctypes.c_int), ("code", ctypes.c_int),
                ("_pad", ctypes.c_int), ("addr", ctypes.c_uint64), ("_rest", ctypes.c_byte * 104)]


def getsiginfo(pid: int) -> tuple[int, int, int]:
    """(si_signo, si_code, si_addr) of the signal a tracee is stopped for."""
    info = SigInfo()
    ptrace(PTRACE_GETSIGINFO, pid, 0, ctypes.addressof(info))
    return info.signo, info.code, info.addr


class _SyscallInfoBuf(ctypes.Structure):
    # struct ptrace_syscall_info: op, pad, arch, instruction_pointer, stack_pointer, then a union
    # (entry: nr + six args; exit: rval + is_error; seccomp: nr + args + ret_data).
    _fields_ = [("op", ctypes.c_uint8), ("_pad", ctypes.c_uint8 * 3), ("arch", ctypes.c_uint32),
                ("ip", ctypes.c_uint64), ("sp", ctypes.c_uint64), ("u", ctypes.c_uint64 * 8)]


_SYSCALL_INFO_SIZE = ctypes.sizeof(_SyscallInfoBuf)


def get_syscall_info(pid: int) -> tuple[int, int, tuple[int, ...]]:
    """(op, nr or rval, args): at a syscall-entry stop op=ENTRY with nr and the six raw args;
    at an exit stop op=EXIT with the signed return value (args empty)."""
    info = _SyscallInfoBuf()
    ptrace(PTRACE_GET_SYSCALL_INFO, pid, _SYSCALL_INFO_SIZE, ctypes.addressof(info))
    u = info.u
    if info.op == SYSCALL_INFO_ENTRY:
        return info.op, u[0], (u[1], u[2], u[3], u[4], u[5], u[6])
    if info.op == SYSCALL_INFO_EXIT:
        rval = u[0]
        return info.op, rval - (1 << 64) if rval >= 1 << 63 else rval, ()
    return info.op, 0, ()


class UserRegs(ctypes.Structure):
    _fields_ = [(name, ctypes.c_uint64) for name in (
        "r15", "r14", "r13", "r12", "rbp", "rbx", "r11", "r10", "r9", "r8", "rax", "rcx", "rdx",
        "rsi", "rdi", "orig_rax", "rip", "cs", "eflags", "rsp", "ss", "fs_base", "gs_base",
        "ds", "es", "fs", "gs")]


def getregs(pid: int) -> UserRegs:
    regs = UserRegs()
    ptrace(PTRACE_GETREGS, pid, 0, ctypes.addressof(regs))
    return regs


def prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
    ctypes.set_errno(0)
    return _check(_prctl(option, arg2, arg3, arg4, arg5))


def personality(persona: int) -> int:
    ctypes.set_errno(0)
    return _check(_personality(persona))


def set_signal_default(signo: int) -> None:
    """signal(signo, SIG_DFL): ignored signals survive execve, so a tracee must not inherit them."""
    _signal(signo, None)


def seccomp_filter(allowed: frozenset[int] | set[int], errno: int) -> bytes:
    """A classic-BPF seccomp program: x86-64 syscalls in `allowed` pass, everything else (other
    numbers, x32 numbers, other architectures) returns -errno without running."""
    insns: list[tuple[int, int, int, int]] = []
    deny = SECCOMP_RET_ERRNO | errno
    nrs = sorted(allowed)
    # Layout: [0] ld arch; [1] jeq x86-64 ? next : deny; [2] ld nr; [3] jge x32 bit ? deny : next;
    # [4..4+n) jeq nr_i ? allow : next; [4+n] ret deny; [5+n] ret allow.
    n = len(nrs)
    deny_at, allow_at = 4 + n, 5 + n
    insns.append((_BPF_LD_W_ABS, 0, 0, _SECCOMP_DATA_ARCH))
    insns.append((_BPF_JEQ_K, 0, deny_at - 2, AUDIT_ARCH_X86_64))
    insns.append((_BPF_LD_W_ABS, 0, 0, _SECCOMP_DATA_NR))
    insns.append((_BPF_JGE_K, deny_at - 4, 0, X32_SYSCALL_BIT))
    for i, nr in enumerate(nrs):
        here = 4 + i
        insns.append((_BPF_JEQ_K, allow_at - here - 1, 0, nr))
    insns.append((_BPF_RET_K, 0, 0, deny))
    insns.append((_BPF_RET_K, 0, 0, SECCOMP_RET_ALLOW))
    if max(allow_at, deny_at) > 255:
        raise ValueError("seccomp filter too long for 8-bit jump offsets")
    return b"".join(struct.pack("<HBBI", *insn) for insn in insns)


class PreparedExec:
    """Everything the freshly forked tracee needs for seccomp + execve, built before fork so the
    child does no allocation-heavy Python work between installing the filter and execve."""

    def __init__(self, path: bytes, filter_code: bytes) -> None:
        self.path = ctypes.c_char_p(path)
        self.argv = (ctypes.c_char_p * 2)(path, None)
        self.envp = (ctypes.c_char_p * 1)(None)
        self._code = ctypes.create_string_buffer(filter_code, len(filter_code))
        # struct sock_fprog { unsigned short len; struct sock_filter *filter; }
        self._fprog = ctypes.create_string_buffer(
            struct.pack("<HxxxxxxQ", len(filter_code) // 8, ctypes.addressof(self._code)), 16)
        self.fprog_addr = ctypes.addressof(self._fprog)

    def install_filter_and_exec(self) -> int:
        """In the child: seccomp, then execve. Returns only if one of them failed (the errno)."""
        ctypes.set_errno(0)
        if _prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, self.fprog_addr, 0, 0) != 0:
            return ctypes.get_errno() or 1
        _execve(self.path, self.argv, self.envp)
        return ctypes.get_errno() or 1

    def exec_only(self) -> int:
        """In the child, without a seccomp filter: execve. Returns the errno if it failed."""
        ctypes.set_errno(0)
        _execve(self.path, self.argv, self.envp)
        return ctypes.get_errno() or 1


# --- PAGEMAP_SCAN (Linux 6.7+): present pages of a range in one ioctl -------------------------
_ioctl = _libc.ioctl
_ioctl.argtypes = (ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p)
_ioctl.restype = ctypes.c_int

PAGEMAP_SCAN = 0xC060_6610              # _IOWR('f', 16, struct pm_scan_arg)
PAGE_IS_PRESENT = 1 << 3
PAGE_IS_SWAPPED = 1 << 4


class _PmScanArg(ctypes.Structure):
    _fields_ = [(name, ctypes.c_uint64) for name in (
        "size", "flags", "start", "end", "walk_end", "vec", "vec_len", "max_pages",
        "category_inverted", "category_mask", "category_anyof_mask", "return_mask")]


class _PageRegion(ctypes.Structure):
    _fields_ = [("start", ctypes.c_uint64), ("end", ctypes.c_uint64), ("categories", ctypes.c_uint64)]


_SCAN_VEC_LEN = 512


def pagemap_scan(pagemap_fd: int, start: int, end: int) -> list[tuple[int, int]]:
    """Runs [lo, hi) of pages in [start, end) that are present or swapped, from the pagemap fd of
    a process. Raises OSError (ENOTTY before Linux 6.7) when the kernel has no PAGEMAP_SCAN."""
    runs: list[tuple[int, int]] = []
    vec = (_PageRegion * _SCAN_VEC_LEN)()
    at = start
    while at < end:
        arg = _PmScanArg()
        arg.size = ctypes.sizeof(arg)
        arg.start, arg.end = at, end
        arg.vec, arg.vec_len = ctypes.addressof(vec), _SCAN_VEC_LEN
        arg.category_anyof_mask = PAGE_IS_PRESENT | PAGE_IS_SWAPPED
        arg.return_mask = PAGE_IS_PRESENT | PAGE_IS_SWAPPED
        ctypes.set_errno(0)
        count = _check(_ioctl(pagemap_fd, PAGEMAP_SCAN, ctypes.addressof(arg)))
        for i in range(count):
            lo, hi = vec[i].start, vec[i].end
            if runs and runs[-1][1] == lo:
                runs[-1] = (runs[-1][0], hi)
            else:
                runs.append((lo, hi))
        if arg.walk_end <= at:
            break
        at = arg.walk_end
    return runs
