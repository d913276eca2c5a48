"""User memory: loads, stores, instruction fetches and the kernel's copies (write(2), wait4's
status) — values, or the fault the access raises.

x86-64 rules (facts: "Memory faults"): a page is readable when any of R, W, X is set; writable
with PROT_WRITE; executable with PROT_EXEC (NX is on). No mapping -> SIGSEGV SEGV_MAPERR; a
mapping that forbids the access -> SEGV_ACCERR; a non-canonical address -> SIGSEGV SI_KERNEL
with si_addr 0 (#GP, not #PF); a file page beyond EOF -> SIGBUS BUS_ADRERR. si_addr is the
address itself, or the start of the second page when only the second page of a straddling
access faults (the CPU reports the first faulting byte). A faulting store writes nothing.

`load_page` / `store_page` (one page, generic: they run on Z3 terms) are the core; `load`,
`store`, `fetch` (concrete) split straddling accesses and report faults.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..specs.abi import PAGE_SHIFT, PAGE_SIZE, PROT_WRITE, TASK_SIZE, Errno, SiCode, Signal
from .ops import first_true, ite, neg, not_
from .predicates import (can_exec, can_read, can_write, is_canonical, is_masked, is_mapped, is_shared,
                         is_sigbus, obj_of, page_number)
from ..specs.abi import MMAP_MIN_ADDR
from .state import (ATTR_GROWSDOWN, ATTR_MAPPED, ATTR_PROT, ATTR_SHARED, ATTR_SIGBUS, RLIMIT_STACK,
                    STACK_GUARD_GAP_PAGES, TASK_PAGES, Fault, Result, State)

READ, WRITE, EXEC = "r", "w", "x"
RET_OPCODE = 0xC3
MAX_RW_COUNT = 0x7FFF_F000           # INT_MAX & PAGE_MASK: write(2) transfers at most this much
_LOWER_HALF = 0x0000_8000_0000_0000  # canonical lower half (is_canonical), as a plain bound
PAGE_OFFSET = PAGE_SIZE - 1


def _fault_for(attr: int, want: str, addr: int) -> Fault | None:
    if not is_mapped(attr):
        return Fault(Signal.SIGSEGV, SiCode.SEGV_MAPERR, addr)
    allowed = can_read(attr) if want == READ else can_write(attr) if want == WRITE else can_exec(attr)
    if not allowed:
        return Fault(Signal.SIGSEGV, SiCode.SEGV_ACCERR, addr)
    if is_sigbus(attr):
        return Fault(Signal.SIGBUS, SiCode.BUS_ADRERR, addr)
    return None


def access_fault(state: State, pid: int, addr: int, size: int, want: str) -> Fault | None:
    """The fault an access of `size` bytes at `addr` raises, or None (concrete)."""
    last = (addr + size - 1) & 0xFFFF_FFFF_FFFF_FFFF      # 64-bit linear addresses wrap
    if not is_canonical(addr) or not is_canonical(last):
        return Fault(Signal.SIGSEGV, SiCode.SI_KERNEL, 0)                    # #GP: non-canonical
    pages = state.space_of(pid).pages
    first_page, last_page = addr >> PAGE_SHIFT, last >> PAGE_SHIFT
    fault = _fault_for(pages.get(first_page), want, addr)
    if fault is None and last_page != first_page:
        fault = _fault_for(pages.get(last_page), want, last_page << PAGE_SHIFT)
    return fault


def grow_for_access(state: State, pid: int, addr: int, size: int) -> State:
    """Linux's fault path expands a VM_GROWSDOWN mapping (the stack, MAP_GROWSDOWN) down to an
    unmapped address below it (expand_downwards): not below mmap_min_addr, not within
    stack_guard_gap above an accessible non-growsdown mapping, not beyond RLIMIT_STACK. The new
    pages read as zeros (concrete)."""
    for a in (addr, (addr + size - 1) & 0xFFFF_FFFF_FFFF_FFFF):
        page = a >> PAGE_SHIFT
        sp = state.space_of(pid)
        if page >= TASK_PAGES or sp.pages.get(page):
            continue
        nxt = sp.pages.next_mapped(page, TASK_PAGES)
        if nxt >= TASK_PAGES:
            continue
        run = sp.pages.run_at(nxt)
        attr = run[2]
        if not attr & ATTR_GROWSDOWN or (page << PAGE_SHIFT) < MMAP_MIN_ADDR:
            continue
        prev = sp.pages.run_before(page)
        if prev is not None and not prev[2] & ATTR_GROWSDOWN and prev[2] & ATTR_PROT \
                and page - prev[1] < STACK_GUARD_GAP_PAGES:
            continue
        if (run[1] - page) << PAGE_SHIFT > RLIMIT_STACK:
            continue
        state = state.with_space(pid, sp.with_(pages=sp.pages.set(page, nxt, attr), data=sp.data.zero(page, nxt)))
    return state


def load_page(state: State, pid: int, addr: Any, size: int) -> Any:
    """The little-endian value of `size` bytes at `addr` inside one page (generic; no checks)."""
    sp = state.space_of(pid)
    attr = sp.pages.get(page_number(addr))
    if isinstance(attr, int):
        if attr & 0x10:   # ATTR_SHARED
            return state.shared.get(obj_of(attr)).load(addr, size)
        return sp.data.load(addr, size)
    return ite(is_shared(attr), state.shared.get(obj_of(attr)).load(addr, size), sp.data.load(addr, size))


def store_page(state: State, pid: int, addr: Any, size: int, value: Any) -> State:
    """`state` with `size` bytes of `value` stored at `addr` inside one page (generic; no checks):
    into the backing object of a MAP_SHARED page (every sharer sees it), else the space's own
    contents (a vfork child and its parent share the space itself)."""
    sp = state.space_of(pid)
    attr = sp.pages.get(page_number(addr))
    obj = obj_of(attr)
    if isinstance(attr, int):
        if attr & 0x10:
            return state.with_(shared=state.shared.put(obj, state.shared.get(obj).store(addr, size, value)))
        return state.with_space(pid, sp.with_(data=sp.data.store(addr, size, value)))
    to_shared = state.with_(shared=state.shared.put(obj, state.shared.get(obj).store(addr, size, value)))
    to_private = state.with_space(pid, sp.with_(data=sp.data.store(addr, size, value)))
    return ite(is_shared(attr), to_shared, to_private)


def access_outcome(state: State, pid: int, addr: Any, size: int, want: str) -> Any:
    """Generic fault classification for an access inside one page: 0 (fine), or the si_code of
    the SIGSEGV (SEGV_MAPERR / SEGV_ACCERR) — the same rule `access_fault` applies concretely."""
    attr = state.space_of(pid).pages.get(page_number(addr))
    allowed = can_read(attr) if want == READ else can_write(attr) if want == WRITE else can_exec(attr)
    return first_true([(not_(is_mapped(attr)), int(SiCode.SEGV_MAPERR)),
                       (not_(allowed), int(SiCode.SEGV_ACCERR))], 0)


@dataclass(frozen=True)
class Loaded:
    """A load's value; `masked` when it read kernel-owned contents the model does not know."""
    value: int
    masked: bool = False


def _is_masked_range(state: State, pid: int, addr: int, size: int) -> bool:
    pages = state.space_of(pid).pages
    return any(is_masked(pages.get(p)) for p in {addr >> PAGE_SHIFT, (addr + size - 1) >> PAGE_SHIFT})


def _read(state: State, pid: int, addr: int, size: int) -> int:
    boundary = ((addr >> PAGE_SHIFT) + 1) << PAGE_SHIFT
    if addr + size <= boundary:
        return load_page(state, pid, addr, size)
    head = boundary - addr
    return load_page(state, pid, addr, head) | (load_page(state, pid, boundary, size - head) << (8 * head))


def _plain_page(state: State, pid: int, addr: int, size: int, need: int) -> int:
    """The attribute word when an access of `size` bytes at `addr` stays inside one mapped page
    of the lower half that allows it (`need`: PROT bits, any of them) and does not raise SIGBUS:
    then no fault and no stack growth are possible. 0 otherwise (take the general path)."""
    if addr >= _LOWER_HALF or (addr & PAGE_OFFSET) + size > PAGE_SIZE:
        return 0
    attr = state.spaces[state.procs[pid].mm].pages.get(addr >> PAGE_SHIFT)
    if attr & (ATTR_MAPPED | ATTR_SIGBUS) != ATTR_MAPPED or not attr & need:
        return 0
    return attr


def load(state: State, pid: int, addr: int, size: int = 8) -> Result:
    """An 8-byte user load: Loaded(value) or the Fault (concrete)."""
    attr = _plain_page(state, pid, addr, size, ATTR_PROT)
    if attr:
        sp = state.spaces[state.procs[pid].mm]
        value = (state.shared.get(obj_of(attr)) if attr & ATTR_SHARED else sp.data).load(addr, size)
        return Result(True, Loaded(value, is_masked(attr)), state, "load.ok")
    state = grow_for_access(state, pid, addr, size)
    fault = access_fault(state, pid, addr, size, READ)
    if fault is not None:
        return Result(True, fault, state, f"load.{_fault_clause(fault)}")
    return Result(True, Loaded(_read(state, pid, addr, size), _is_masked_range(state, pid, addr, size)), state,
                  "load.ok")


def store(state: State, pid: int, addr: int, value: int, size: int = 8) -> Result:
    """An 8-byte user store: the new state, or the Fault (nothing written)."""
    if _plain_page(state, pid, addr, size, PROT_WRITE):
        return Result(True, None, store_page(state, pid, addr, size, value), "store.ok")
    state = grow_for_access(state, pid, addr, size)
    fault = access_fault(state, pid, addr, size, WRITE)
    if fault is not None:
        return Result(True, fault, state, f"store.{_fault_clause(fault)}")
    return Result(True, None, _write(state, pid, addr, size, value), "store.ok")


def _write(state: State, pid: int, addr: int, size: int, value: int) -> State:
    boundary = ((addr >> PAGE_SHIFT) + 1) << PAGE_SHIFT
    if addr + size <= boundary:
        return store_page(state, pid, addr, size, value)
    head = boundary - addr
    state = store_page(state, pid, addr, head, value & ((1 << (8 * head)) - 1))
    return store_page(state, pid, boundary, size - head, value >> (8 * head))


def fetch(state: State, pid: int, addr: int) -> Result:
    """An instruction fetch at `addr` (a fetch probe's `call`): Loaded(first byte) or the Fault.
    The model runs no code: the caller decides what a byte other than `ret` means."""
    state = grow_for_access(state, pid, addr, 1)
    fault = access_fault(state, pid, addr, 1, EXEC)
    if fault is not None:
        return Result(True, fault, state, f"fetch.{_fault_clause(fault)}")
    return Result(True, Loaded(_read(state, pid, addr, 1), _is_masked_range(state, pid, addr, 1)), state,
                  "fetch.ok")


def _fault_clause(fault: Fault) -> str:
    if fault.signo == Signal.SIGBUS:
        return "sigbus"
    return {SiCode.SEGV_MAPERR: "maperr", SiCode.SEGV_ACCERR: "accerr"}.get(fault.si_code, "gp")


def kernel_put(state: State, pid: int, addr: int, size: int, value: int) -> State | None:
    """The kernel's put_user (wait4's status): the new state, or None for EFAULT (no signal)."""
    state = grow_for_access(state, pid, addr, size)
    if access_fault(state, pid, addr, size, WRITE) is not None or addr + size > TASK_SIZE:
        return None
    return _write(state, pid, addr, size, value)


def user_bytes(state: State, pid: int, addr: int, length: int) -> tuple[bytes, tuple[tuple[int, int], ...], State]:
    """The readable prefix of [addr, addr+length) as the kernel's copy_from_user sees it, the
    (offset, length) pieces of it holding kernel-owned (masked) contents, and the state (its
    faults may grow a growsdown mapping)."""
    out = bytearray()
    masked: list[tuple[int, int]] = []
    cur, end = addr, addr + length
    while cur < end:
        page = cur >> PAGE_SHIFT
        sp = state.space_of(pid)
        attr = sp.pages.get(page)
        if not attr and cur < TASK_SIZE:
            state = grow_for_access(state, pid, cur, 1)
            sp = state.space_of(pid)
            attr = sp.pages.get(page)
        if not can_read(attr) or is_sigbus(attr) or cur >= TASK_SIZE:
            break
        stop = min(end, (page + 1) << PAGE_SHIFT)
        src = state.shared.get(obj_of(attr)) if attr & 0x10 else sp.data
        if is_masked(attr):
            masked.append((cur - addr, stop - cur))
        out += src.load_bytes(cur, stop - cur)
        cur = stop
    return bytes(out), tuple(masked), state


USER_PTR_MAX = 0x7FFF_FFFF_F000       # x86-64 valid_user_address() bound (TASK_SIZE_MAX), measured


def access_ok(addr: int, size: int) -> bool:
    """x86-64 access_ok: a small range needs a valid start, a larger one a valid, unwrapped end
    (measured: write(1, 0x7ffffffff000, 0) -> 0, write(1, 0x7ffffffff001, 0) -> EFAULT)."""
    if size <= PAGE_SIZE:
        return addr <= USER_PTR_MAX
    end = (addr + size) & 0xFFFF_FFFF_FFFF_FFFF
    return end <= USER_PTR_MAX and end >= addr


@dataclass(frozen=True)
class WriteArgs:
    pid: int
    fd: int
    addr: int
    length: int


@dataclass(frozen=True)
class Written:
    """write(2)'s outcome: the return value and the bytes that reach the file."""
    result: int
    data: bytes
    masked: tuple[tuple[int, int], ...] = ()


def write(state: State, args: WriteArgs, choice: Any = None) -> Result:
    """write(2) to fd 1 or 2 (the backends capture both): "write() writes up to count bytes from
    the buffer starting at buf to the file referred to by the file descriptor fd." EBADF: "fd is
    not a valid file descriptor or is not open for writing" (fd 0 is open read-only, the others
    are closed). EFAULT: "buf is outside your accessible address space".
    When only a prefix of the buffer is readable the answer depends on the file: a pipe copies
    in page-sized chunks and drops a chunk that faults part way (EFAULT if it was the first), a
    kernel that copies byte-exactly writes the whole readable prefix. `choice` is the observed
    result; any short count up to the readable prefix, or EFAULT, is allowed then; the Output
    carries the first `result` bytes."""
    fd = args.fd & 0xFFFF_FFFF                      # the kernel takes an unsigned int
    if fd not in (1, 2):
        return Result(True, Written(neg(Errno.EBADF), b""), state, "write.bad-fd")
    if not access_ok(args.addr, args.length):
        return Result(True, Written(neg(Errno.EFAULT), b""), state, "write.access-not-ok")   # EFAULT: access_ok
    length = min(args.length, MAX_RW_COUNT)
    if length == 0:
        return Result(True, Written(0, b""), state, "write.empty")
    data, masked, state = user_bytes(state, args.pid, args.addr, length)
    if not data:
        return Result(True, Written(neg(Errno.EFAULT), b""), state, "write.efault")
    if len(data) == length:
        return Result(True, Written(length, data, masked), state, "write.ok")
    # Partly readable: the kernel's choice (see above).
    observed = choice if isinstance(choice, int) else len(data)
    if observed == neg(Errno.EFAULT):
        return Result(True, Written(observed, b""), state, "write.partial-efault")
    allowed = 0 < observed <= len(data)
    taken = observed if allowed else len(data)
    return Result(allowed, Written(observed if allowed else len(data), data[:taken], masked), state, "write.short",
                  "" if allowed else f"a count in (0, {len(data):#x}] or -EFAULT")


def page_contents(state: State, pid: int, page: int) -> bytes | None:
    """The bytes of one page as the user would read them (None: all zero) (concrete)."""
    sp = state.space_of(pid)
    attr = sp.pages.get(page)
    src = state.shared.get(obj_of(attr)) if attr & 0x10 else sp.data
    return src.page(page)


__all__ = ["load", "store", "fetch", "write", "WriteArgs", "Written", "Loaded", "load_page", "store_page",
           "access_fault", "access_outcome", "kernel_put", "user_bytes", "page_contents", "RET_OPCODE",
           "READ", "WRITE", "EXEC", "PAGE_SIZE"]
