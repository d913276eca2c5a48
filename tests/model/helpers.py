"""Small builders for model tests: a process running a two-segment ELF under a profile."""
from __future__ import annotations

from forkspec.model import exec as mexec
from forkspec.model import mm
from forkspec.model.state import State
from forkspec.oracle._internal.elf import PF_R, PF_W, PF_X, Segment, write_elf
from forkspec.specs.abi import MAP_ANONYMOUS, MAP_PRIVATE, PAGE_SIZE, U64, neg_errno, Errno
from forkspec.specs.profiles import LEVITATE, LINUX, LEVITATE_STACK_TOP, levitate_stack_range
from forkspec.specs.trace import Layout

PID = 100
TEXT = 0x40_0000
DATA = 0x40_1000
IMAGE = write_elf([Segment(TEXT, b"\xc3" * 32, 32, PF_R | PF_X), Segment(DATA, b"data" * 4, 0x2000, PF_R | PF_W)],
                  TEXT)
IMAGE_END = DATA + 0x2000
ANON = MAP_PRIVATE | MAP_ANONYMOUS
LINUX_VVAR = (0x7FFF_F7FF_7000, 0x7FFF_F7FF_D000)
LINUX_VDSO = (0x7FFF_F7FF_D000, 0x7FFF_F7FF_F000)
LINUX_STACK = (0x7FFF_FFFD_E000, 0x7FFF_FFFF_F000)


def err(e: Errno) -> int:
    return neg_errno(e)


def levitate_state() -> State:
    lo, hi = levitate_stack_range()
    layout = Layout(regions=(("stack", lo, hi), ("tls", LEVITATE_STACK_TOP, LEVITATE_STACK_TOP + PAGE_SIZE)),
                    brk=IMAGE_END, entry_sp=hi - 0x100)
    result = mexec.initial_state(LEVITATE, PID, IMAGE, layout)
    assert result.allowed, result.expected
    return result.state


def linux_state() -> State:
    layout = Layout(regions=(("vvar",) + LINUX_VVAR, ("vdso",) + LINUX_VDSO, ("stack",) + LINUX_STACK),
                    brk=IMAGE_END + 0x10_0000, entry_sp=LINUX_STACK[1] - 0x200)
    result = mexec.initial_state(LINUX, PID, IMAGE, layout)
    assert result.allowed, result.expected
    return result.state


def mmap(state: State, addr: int, length: int, prot: int, flags: int, pick: int | None = None, fail: int = 0,
         offset: int = 0, fd: int = U64):
    return mm.mmap(state, mm.MmapArgs(PID, addr, length, prot, flags, fd, offset), mm.MmapChoice(pick, fail))


def rights(state: State, addr: int) -> int:
    """The PROT bits of the page at addr, or None when unmapped."""
    attr = state.space_of(PID).pages.get(addr >> 12)
    return None if not attr else attr & 7
