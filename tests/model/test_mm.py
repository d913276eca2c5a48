"""mmap / munmap / mprotect / brk against linux-facts.md (the row is named in each test id)."""
from __future__ import annotations

import pytest

from forkspec.model import memory, mm
from forkspec.model.state import Fault
from forkspec.specs.abi import (MAP_ANONYMOUS, MAP_DROPPABLE, MAP_FIXED, MAP_FIXED_NOREPLACE, MAP_GROWSDOWN,
                                MAP_HUGETLB, MAP_PRIVATE, MAP_SHARED, MAP_SHARED_VALIDATE, PROT_EXEC,
                                PROT_GROWSDOWN, PROT_GROWSUP, PROT_READ, PROT_WRITE, TASK_SIZE, U64, Errno, SiCode)

from .helpers import ANON, LINUX_VVAR, PID, err, levitate_state, linux_state, mmap, rights

RW = PROT_READ | PROT_WRITE
MMAP_LO = 0x1000_0000_0000


# (facts row, addr, length, prot, flags, offset, expected result) — levitate, deterministic picks.
MMAP_ERRNO_ROWS = [
    ("offset-unaligned-even-anon", 0, 4096, RW, ANON, 5, err(Errno.EINVAL)),
    ("no-anonymous-fd-minus-1", 0, 4096, RW, MAP_PRIVATE, 0, err(Errno.EBADF)),
    ("no-anonymous-len-0-still-ebadf", 0, 0, RW, MAP_PRIVATE, 0, err(Errno.EBADF)),
    ("len-0", 0, 0, RW, ANON, 0, err(Errno.EINVAL)),
    ("len-minus-1-page-align-wraps", 0, U64, RW, ANON, 0, err(Errno.ENOMEM)),
    ("len-at-least-task-size", 0, TASK_SIZE + 0x1000, RW, ANON, 0, err(Errno.ENOMEM)),
    ("map-type-0", 0, 4096, RW, MAP_ANONYMOUS, 0, err(Errno.EINVAL)),
    ("map-type-3-shared-validate", 0, 4096, RW, MAP_SHARED_VALIDATE | MAP_ANONYMOUS, 0, err(Errno.EINVAL)),
    ("map-type-4", 0, 4096, RW, 4 | MAP_ANONYMOUS, 0, err(Errno.EINVAL)),
    ("shared-growsdown", 0, 4096, RW, MAP_SHARED | MAP_ANONYMOUS | MAP_GROWSDOWN, 0, err(Errno.EINVAL)),
    ("hugetlb-no-hugepages", 0, 0x20_0000, RW, ANON | MAP_HUGETLB, 0, err(Errno.ENOMEM)),
    ("fixed-unaligned", 0x1000_0000_0001, 4096, RW, ANON | MAP_FIXED, 0, err(Errno.EINVAL)),
    ("fixed-noreplace-unaligned", 0x1000_0000_0001, 4096, RW, ANON | MAP_FIXED_NOREPLACE, 0, err(Errno.EINVAL)),
    ("fixed-at-0-unprivileged", 0, 4096, RW, ANON | MAP_FIXED, 0, err(Errno.EPERM)),
    ("fixed-noreplace-at-0-unprivileged-eperm-before-eexist", 0, 4096, RW, ANON | MAP_FIXED_NOREPLACE, 0,
     err(Errno.EPERM)),
    ("fixed-end-beyond-task-size", TASK_SIZE - 0x1000, 0x2000, RW, ANON | MAP_FIXED, 0, err(Errno.ENOMEM)),
    ("fixed-noreplace-over-program", 0x40_0000, 4096, RW, ANON | MAP_FIXED_NOREPLACE, 0, err(Errno.EEXIST)),
    ("fixed-noreplace-partly-overlapping", 0x3F_F000, 0x2000, RW, ANON | MAP_FIXED_NOREPLACE, 0,
     err(Errno.EEXIST)),
    ("fixed-address-in-errno-range-is-returned", (-22) & U64, 4096, RW, ANON | MAP_FIXED, 0, (-22) & U64),
]


@pytest.mark.parametrize("row,addr,length,prot,flags,offset,expected", MMAP_ERRNO_ROWS,
                         ids=[f"facts-mmap-{r[0]}" for r in MMAP_ERRNO_ROWS])
def test_mmap_errno_rows(row, addr, length, prot, flags, offset, expected):
    state = levitate_state()
    result = mmap(state, addr, length, prot, flags, offset=offset)
    assert result.outcome == expected
    assert result.state is state or result.outcome < TASK_SIZE     # errors leave the state as it was


@pytest.mark.parametrize("flags", [MAP_SHARED | MAP_ANONYMOUS, ANON, MAP_DROPPABLE | MAP_ANONYMOUS],
                         ids=["facts-mmap-type-1-shared", "facts-mmap-type-2-private", "facts-mmap-type-8-droppable"])
def test_mmap_accepted_types(flags):
    result = mmap(levitate_state(), 0, 4096, RW, flags, pick=MMAP_LO)
    assert result.outcome == MMAP_LO and result.allowed


def test_mmap_unknown_prot_bits_ignored_facts_mmap_unknown_prot():
    result = mmap(levitate_state(), 0, 4096, 0xFFFF_FFFF, ANON, pick=MMAP_LO)
    assert result.outcome == MMAP_LO
    assert rights(result.state, MMAP_LO) == PROT_READ | PROT_WRITE | PROT_EXEC


def test_mmap_len_5000_gives_two_pages_facts_mmap_len_5000():
    result = mmap(levitate_state(), 0, 5000, RW, ANON, pick=MMAP_LO)
    assert rights(result.state, MMAP_LO + 0x1000) == RW and rights(result.state, MMAP_LO + 0x2000) is None


def test_levitate_pick_is_bottom_up_first_fit():
    state = levitate_state()
    first = mmap(state, 0, 0x2000, RW, ANON, pick=MMAP_LO)
    assert first.allowed
    wrong = mmap(first.state, 0, 0x1000, RW, ANON, pick=MMAP_LO + 0x5000)
    assert not wrong.allowed and wrong.expected == f"{MMAP_LO + 0x2000:#x}"
    right = mmap(first.state, 0, 0x1000, RW, ANON, pick=MMAP_LO + 0x2000)
    assert right.allowed


def test_hint_free_is_honoured_and_rounded_down_facts_mmap_hint():
    result = mmap(levitate_state(), 0x2000_0000_0123, 4096, RW, ANON)
    assert result.outcome == 0x2000_0000_0000 and result.clause == "mmap.hint"


def test_hint_below_min_addr_is_raised_facts_mmap_hint_0x1000():
    result = mmap(levitate_state(), 0x1000, 4096, RW, ANON)
    assert result.outcome == 0x10000


def test_hint_occupied_goes_where_null_goes_facts_mmap_hint_occupied():
    result = mmap(levitate_state(), 0x40_0000, 4096, RW, ANON, pick=MMAP_LO)
    assert result.outcome == MMAP_LO and result.allowed


def test_fixed_over_middle_zeroes_only_those_pages_facts_mmap_fixed_implicit_munmap():
    state = levitate_state()
    state = mmap(state, 0, 0x4000, RW, ANON, pick=MMAP_LO).state
    for page in range(4):
        state = memory.store(state, PID, MMAP_LO + page * 0x1000, 0x11 + page).state
    state = mmap(state, MMAP_LO + 0x1000, 0x2000, PROT_READ, ANON | MAP_FIXED).state
    values = [memory.load(state, PID, MMAP_LO + p * 0x1000).outcome.value for p in range(4)]
    assert values == [0x11, 0, 0, 0x14]
    assert [rights(state, MMAP_LO + p * 0x1000) for p in range(4)] == [RW, PROT_READ, PROT_READ, RW]


def test_fixed_noreplace_adjacent_is_fine_facts_mmap_noreplace_adjacent():
    state = mmap(levitate_state(), 0, 0x1000, RW, ANON, pick=MMAP_LO).state
    result = mmap(state, MMAP_LO + 0x1000, 0x1000, RW, ANON | MAP_FIXED_NOREPLACE)
    assert result.outcome == MMAP_LO + 0x1000


def test_linux_top_down_learns_base_then_is_strict_facts_mmap_successive_null():
    state = linux_state()
    below_vvar = LINUX_VVAR[0] - 0x1000
    first = mmap(state, 0, 4096, RW, ANON, pick=below_vvar)
    assert first.allowed
    not_top = mmap(state, 0, 4096, RW, ANON, pick=below_vvar - 0x1000)
    assert not not_top.allowed
    second = mmap(first.state, 0, 4096, RW, ANON, pick=below_vvar - 0x1000)
    assert second.allowed
    # a freed one-page hole is reused, a two-page request skips it
    holed = mm.munmap(second.state, mm.MunmapArgs(PID, below_vvar, 0x1000)).state
    assert mmap(holed, 0, 4096, RW, ANON, pick=below_vvar).allowed
    assert not mmap(holed, 0, 0x2000, RW, ANON, pick=below_vvar).allowed
    assert mmap(holed, 0, 0x2000, RW, ANON, pick=below_vvar - 0x3000).allowed


def test_linux_thp_alignment_facts_mmap_len_multiple_of_2mib():
    state = linux_state()
    top = LINUX_VVAR[0]
    aligned = (top - 0x20_0000) // 0x20_0000 * 0x20_0000
    assert mmap(state, 0, 0x20_0000, RW, ANON, pick=aligned).allowed
    assert not mmap(state, 0, 0x20_0000, RW, ANON, pick=top - 0x20_0000).allowed


def test_resource_enomem_only_beyond_limits():
    state = levitate_state()
    small = mmap(state, 0, 0x1000, RW, ANON, fail=int(Errno.ENOMEM))
    assert small.outcome == err(Errno.ENOMEM) and not small.allowed
    huge = mmap(state, 0, 0x10_0000_0000, RW, ANON, fail=int(Errno.ENOMEM))
    assert huge.allowed


# --- munmap -----------------------------------------------------------------------------------

MUNMAP_ROWS = [
    ("addr-unaligned", 0x40_0001, 4096, err(Errno.EINVAL)),
    ("len-0", 0x40_0000, 0, err(Errno.EINVAL)),
    ("addr-at-task-size", TASK_SIZE, 4096, err(Errno.EINVAL)),
    ("end-beyond-task-size", TASK_SIZE - 0x1000, 0x2000, err(Errno.EINVAL)),
    ("vsyscall", 0xFFFF_FFFF_FF60_0000, 4096, err(Errno.EINVAL)),
    ("len-minus-1", 0x40_0000, U64, err(Errno.EINVAL)),
    ("wholly-unmapped-incl-page-0", 0, 0x1000, 0),
]


@pytest.mark.parametrize("row,addr,length,expected", MUNMAP_ROWS, ids=[f"facts-munmap-{r[0]}" for r in MUNMAP_ROWS])
def test_munmap_rows(row, addr, length, expected):
    assert mm.munmap(levitate_state(), mm.MunmapArgs(PID, addr, length)).outcome == expected


def test_munmap_len_1_removes_one_page_and_hole_faults_maperr_facts_munmap_middle_page():
    state = mmap(levitate_state(), 0, 0x5000, RW, ANON, pick=MMAP_LO).state
    state = mm.munmap(state, mm.MunmapArgs(PID, MMAP_LO + 0x2000, 1)).state
    assert [rights(state, MMAP_LO + p * 0x1000) for p in range(5)] == [RW, RW, None, RW, RW]
    fault = memory.load(state, PID, MMAP_LO + 0x2000).outcome
    assert fault == Fault(11, SiCode.SEGV_MAPERR, MMAP_LO + 0x2000)


def test_munmap_part_of_vdso_einval_whole_ok_facts_munmap_vdso():
    from .helpers import LINUX_VDSO
    state = linux_state()
    assert mm.munmap(state, mm.MunmapArgs(PID, LINUX_VDSO[0], 0x1000)).outcome == err(Errno.EINVAL)
    assert mm.munmap(state, mm.MunmapArgs(PID, LINUX_VDSO[0], 0x2000)).outcome == 0


# --- mprotect ---------------------------------------------------------------------------------

MPROTECT_ROWS = [
    ("unaligned-even-len-0", 0x40_0001, 0, RW, err(Errno.EINVAL)),
    ("len-0-invalid-prot", 0x40_0000, 0, 0x80, 0),
    ("len-0-unmapped", 0x7000_0000_0000, 0, RW, 0),
    ("wraps-even-invalid-prot", 0x40_0000, U64, 0x80, err(Errno.ENOMEM)),
    ("prot-bit-outside-rwx-sem", 0x7000_0000_0000, 0x1000, 0x10, err(Errno.EINVAL)),
    ("growsdown-and-growsup", 0x40_0000, 0x1000, PROT_GROWSDOWN | PROT_GROWSUP, err(Errno.EINVAL)),
    ("growsdown-normal-vma", 0x40_1000, 0x1000, PROT_READ | PROT_GROWSDOWN, err(Errno.EINVAL)),
    ("growsup", 0x40_1000, 0x1000, PROT_READ | PROT_GROWSUP, err(Errno.EINVAL)),
    ("unmapped", 0x7000_0000_0000, 0x1000, RW, err(Errno.ENOMEM)),
    ("starting-in-hole", 0x3F_F000, 0x2000, RW, err(Errno.ENOMEM)),
    ("at-task-size", TASK_SIZE, 0x1000, RW, err(Errno.ENOMEM)),
    ("prot-sem-accepted", 0x40_1000, 0x1000, PROT_READ | 0x8, 0),
]


@pytest.mark.parametrize("row,addr,length,prot,expected", MPROTECT_ROWS, ids=[f"facts-mprotect-{r[0]}" for r in MPROTECT_ROWS])
def test_mprotect_rows(row, addr, length, prot, expected):
    state = levitate_state()
    result = mm.mprotect(state, mm.MprotectArgs(PID, addr, length, prot))
    assert result.outcome == expected
    if expected != 0:
        assert result.state.space_of(PID).pages == state.space_of(PID).pages


def test_mprotect_over_hole_changes_pages_before_it_facts_mprotect_pages_0_2_hole_3():
    state = mmap(levitate_state(), 0, 0x6000, RW, ANON, pick=MMAP_LO).state
    state = mm.munmap(state, mm.MunmapArgs(PID, MMAP_LO + 0x3000, 0x1000)).state
    result = mm.mprotect(state, mm.MprotectArgs(PID, MMAP_LO, 0x6000, PROT_READ))
    assert result.outcome == err(Errno.ENOMEM)
    got = [rights(result.state, MMAP_LO + p * 0x1000) for p in range(6)]
    assert got == [PROT_READ] * 3 + [None, RW, RW]


def test_mprotect_past_end_changes_mapped_part_facts_mprotect_range_runs_past_end():
    state = levitate_state()
    result = mm.mprotect(state, mm.MprotectArgs(PID, 0x40_1000, 0x10_0000, PROT_READ))
    assert result.outcome == err(Errno.ENOMEM)
    assert rights(result.state, 0x40_2000) == PROT_READ


def test_mprotect_prot_none_then_read_accerr_facts_mprotect_prot_none():
    state = mm.mprotect(levitate_state(), mm.MprotectArgs(PID, 0x40_1000, 0x1000, 0)).state
    assert memory.load(state, PID, 0x40_1008).outcome == Fault(11, SiCode.SEGV_ACCERR, 0x40_1008)


def test_mprotect_write_only_and_exec_only_are_readable_facts_mprotect_write_only():
    for prot in (PROT_WRITE, PROT_EXEC):
        state = mm.mprotect(levitate_state(), mm.MprotectArgs(PID, 0x40_1000, 0x1000, prot)).state
        assert memory.load(state, PID, 0x40_1000).outcome.value == int.from_bytes(b"data" * 2, "little")
    state = mm.mprotect(levitate_state(), mm.MprotectArgs(PID, 0x40_1000, 0x1000, PROT_EXEC)).state
    assert memory.store(state, PID, 0x40_1000, 1).outcome == Fault(11, SiCode.SEGV_ACCERR, 0x40_1000)


def test_mprotect_vvar_write_eacces_measured():
    state = linux_state()
    result = mm.mprotect(state, mm.MprotectArgs(PID, LINUX_VVAR[0], 0x1000, RW))
    assert result.outcome == err(Errno.EACCES)
    assert mm.mprotect(state, mm.MprotectArgs(PID, LINUX_VVAR[0], 0x1000, PROT_READ)).outcome == 0
    assert mm.mprotect(state, mm.MprotectArgs(PID, LINUX_VVAR[0], 0x1000, 0)).outcome == err(Errno.EINVAL)


# --- brk --------------------------------------------------------------------------------------

def _brk(state, value):
    return mm.brk(state, mm.BrkArgs(PID, value))


def test_brk_0_returns_current_break_facts_brk_0():
    state = levitate_state()
    assert _brk(state, 0).outcome == state.space_of(PID).brk


@pytest.mark.parametrize("value", [1, TASK_SIZE, U64, 0x40_0000],
                         ids=["facts-brk-1", "facts-brk-task-size", "facts-brk-minus-1", "facts-brk-below-start"])
def test_brk_refused_returns_old_break(value):
    state = levitate_state()
    result = _brk(state, value)
    assert result.outcome == state.space_of(PID).brk and result.state is state


def test_brk_grow_shrink_unaligned_facts_brk_grow_shrink():
    state = levitate_state()
    start = state.space_of(PID).brk
    grown = _brk(state, start + 0x2010)
    assert grown.outcome == start + 0x2010
    assert rights(grown.state, start + 0x2000) == RW                       # mapped to the page end
    stored = memory.store(grown.state, PID, start + 0x2000, 7).state
    shrunk = _brk(stored, start + 0x1000)
    assert rights(shrunk.state, start + 0x1000) is None
    regrown = _brk(shrunk.state, start + 0x3000)
    assert memory.load(regrown.state, PID, start + 0x2000).outcome.value == 0     # regrow reads zeros


def test_brk_keeps_one_free_page_before_next_mapping_facts_brk_grow_next_vma():
    state = levitate_state()
    start = state.space_of(PID).brk
    state = mmap(state, start + 0x4000, 0x1000, RW, ANON | MAP_FIXED).state
    assert _brk(state, start + 0x3000).outcome == start + 0x3000
    assert _brk(state, start + 0x3001).outcome == start


def test_brk_shrink_over_munmapped_heap_is_refused_facts_brk_hole_not_refilled():
    state = levitate_state()
    start = state.space_of(PID).brk
    state = _brk(state, start + 0x2000).state
    state = mm.munmap(state, mm.MunmapArgs(PID, start, 0x2000)).state
    assert _brk(state, start).outcome == start + 0x2000


def _linux_6_18_state():
    """The layout Linux 6.18 gives a static ELF (ADDR_NO_RANDOMIZE): [vvar] (4 pages),
    [vvar_vclock] (2 pages) and [vdso] (2 pages), each its own special VMA."""
    from forkspec.model import exec as mexec
    from forkspec.specs.profiles import LINUX
    from forkspec.specs.trace import Layout

    from .helpers import IMAGE, IMAGE_END, LINUX_STACK, LINUX_VDSO

    layout = Layout(regions=(("vvar", LINUX_VVAR[0], LINUX_VVAR[0] + 0x4000),
                             ("vvar_vclock", LINUX_VVAR[0] + 0x4000, LINUX_VVAR[1]),
                             ("vdso",) + LINUX_VDSO, ("stack",) + LINUX_STACK),
                    brk=IMAGE_END + 0x10_0000, entry_sp=LINUX_STACK[1] - 0x200)
    result = mexec.initial_state(LINUX, PID, IMAGE, layout)
    assert result.allowed, result.expected
    return result.state


def test_munmap_exactly_vvar_next_to_vvar_vclock_measured():
    # Measured (Linux 6.18.44, corpus/linux-munmap-exactly-vvar.repro): munmap of exactly [vvar] -> 0,
    # of exactly [vvar_vclock] -> 0; cutting inside either -> EINVAL.
    state = _linux_6_18_state()
    vvar, vclock = LINUX_VVAR[0], LINUX_VVAR[0] + 0x4000
    whole = mm.munmap(state, mm.MunmapArgs(PID, vvar, 0x4000))
    assert whole.outcome == 0 and rights(whole.state, vvar) is None and rights(whole.state, vclock) == PROT_READ
    assert mm.munmap(state, mm.MunmapArgs(PID, vclock, 0x2000)).outcome == 0
    assert mm.munmap(state, mm.MunmapArgs(PID, vvar, 0x3000)).outcome == err(Errno.EINVAL)
    assert mm.munmap(state, mm.MunmapArgs(PID, vclock, 0x1000)).outcome == err(Errno.EINVAL)
    assert mm.mprotect(state, mm.MprotectArgs(PID, vvar, 0x6000, PROT_READ)).outcome == 0


def test_mprotect_part_of_vvar_changes_none_of_it_measured():
    # Measured (6.18.44): mprotect(PROT_NONE) of the first 3 of [vvar]'s 4 pages -> EINVAL and
    # [vvar] stays r-- as a whole (its unpopulated SIGBUS pages are the same VMA).
    state = _linux_6_18_state()
    vvar = LINUX_VVAR[0]
    result = mm.mprotect(state, mm.MprotectArgs(PID, vvar, 0x3000, 0))
    assert result.outcome == err(Errno.EINVAL)
    assert [rights(result.state, vvar + k * 0x1000) for k in range(4)] == [PROT_READ] * 4
    whole = mm.mprotect(state, mm.MprotectArgs(PID, vvar, 0x4000, 0))
    assert whole.outcome == 0
    assert [rights(whole.state, vvar + k * 0x1000) for k in range(6)] == [0] * 4 + [PROT_READ] * 2


def test_mprotect_accounting_failure_before_a_hole_measured():
    # Measured (6.18.44): mmap 1 TiB r--, then mprotect(rw) of 1 TiB + 1 page (a hole at the end)
    # -> ENOMEM and the mapping stays r--: accounting fails at the first VMA. A small range with a
    # hole still changes the pages before the hole.
    state = linux_state()
    big = mmap(state, 0, 0x100_0000_0000, PROT_READ, ANON, pick=0x7EFF_F7E0_0000)
    assert big.outcome == 0x7EFF_F7E0_0000 and big.allowed
    failed = mm.mprotect(big.state, mm.MprotectArgs(PID, big.outcome, 0x100_0000_1000, RW),
                         mm.ResourceChoice(int(Errno.ENOMEM)))
    assert failed.outcome == err(Errno.ENOMEM) and failed.allowed
    assert rights(failed.state, big.outcome) == PROT_READ
    small = mmap(state, 0x1000_0000, 0x2000, PROT_READ, ANON | MAP_FIXED)
    assert small.outcome == 0x1000_0000
    tail = mm.mprotect(small.state, mm.MprotectArgs(PID, small.outcome, 0x3000, RW),
                       mm.ResourceChoice(int(Errno.ENOMEM)))
    assert tail.outcome == err(Errno.ENOMEM) and rights(tail.state, small.outcome) == RW
