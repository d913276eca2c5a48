"""mmap, munmap, mprotect, brk on impl's address spaces: Linux's answers (linux-facts.md),
checked on the VMA list and on the page-table entries in emulated memory."""
from __future__ import annotations

import pytest

from forkspec.impl.frames import FrameTable
from forkspec.impl.machine import PTE_COW, PTE_NX, PTE_P, PTE_RW, PTE_US, Machine
from forkspec.impl.mm import AddressSpace
from forkspec.specs.abi import (MAP_ANONYMOUS, MAP_FIXED, MAP_FIXED_NOREPLACE, MAP_GROWSDOWN,
                                MAP_HUGETLB, MAP_PRIVATE, MAP_SHARED, PAGE_SIZE, PROT_EXEC,
                                PROT_GROWSDOWN, PROT_GROWSUP, PROT_READ, PROT_WRITE, TASK_SIZE, U64,
                                Errno)
from forkspec.specs.profiles import LEVITATE

ANON = MAP_PRIVATE | MAP_ANONYMOUS
RW = PROT_READ | PROT_WRITE
LO = LEVITATE.mmap_lo

_machine = Machine(16)


@pytest.fixture
def space():
    frames = FrameTable(_machine)
    space = AddressSpace(_machine, frames, frozenset(), LEVITATE)
    space.start_brk = space.brk = 0x60_0000
    return space


def pages(space, lo, hi):
    return [(va, e) for va, e in space.present_ptes(lo, hi)]


def test_mmap_null_is_bottom_up_first_fit_and_reuses_a_freed_hole(space):
    a = space.mmap(0, PAGE_SIZE, RW, ANON, -1, 0)
    b = space.mmap(0, PAGE_SIZE, RW, ANON, -1, 0)
    c = space.mmap(0, PAGE_SIZE, RW, ANON, -1, 0)
    assert (a, b, c) == (LO, LO + PAGE_SIZE, LO + 2 * PAGE_SIZE)
    assert space.munmap(b, PAGE_SIZE) == 0
    assert space.mmap(0, 2 * PAGE_SIZE, RW, ANON, -1, 0) == LO + 3 * PAGE_SIZE   # skips the hole
    assert space.mmap(0, PAGE_SIZE, RW, ANON, -1, 0) == b                        # fills it


@pytest.mark.parametrize("args, errno", [
    ((0, 4096, RW, ANON, -1, 1), Errno.EINVAL),                         # offset first
    ((0, 0, RW, MAP_PRIVATE, -1, 0), Errno.EBADF),                      # no fd, even with len 0
    ((0, 0, RW, ANON, -1, 0), Errno.EINVAL),
    ((0, U64, RW, ANON, -1, 0), Errno.ENOMEM),                          # PAGE_ALIGN wraps to 0
    ((0, TASK_SIZE + PAGE_SIZE, RW, ANON, -1, 0), Errno.ENOMEM),
    ((0, 4096, RW, MAP_ANONYMOUS, -1, 0), Errno.EINVAL),                # MAP_TYPE 0
    ((0, 4096, RW, MAP_ANONYMOUS | 3, -1, 0), Errno.EINVAL),            # SHARED_VALIDATE
    ((0, 4096, RW, MAP_SHARED | MAP_ANONYMOUS | MAP_GROWSDOWN, -1, 0), Errno.EINVAL),
    ((0, 4096, RW, ANON | MAP_HUGETLB, -1, 0), Errno.ENOMEM),
    ((0x10_0001, 4096, RW, ANON | MAP_FIXED, -1, 0), Errno.EINVAL),
    ((0, 4096, RW, ANON | MAP_FIXED, -1, 0), Errno.EPERM),              # page 0, unprivileged
    ((0x7FFF_FFFF_F000, 8192, RW, ANON | MAP_FIXED, -1, 0), Errno.ENOMEM),
])
def test_mmap_errors(space, args, errno):
    assert space.mmap(*args) == -errno
    assert space.vmas == []


def test_mmap_hints(space):
    assert space.mmap(0x20_0000_0123, 4096, RW, ANON, -1, 0) == 0x20_0000_0000     # rounded down
    assert space.mmap(0x5000, 4096, RW, ANON, -1, 0) == 0x1_0000                    # raised to min
    assert space.mmap(0x20_0000_0000, 4096, RW, ANON, -1, 0) == LO                  # occupied: ignored
    assert space.mmap(TASK_SIZE, 4096, RW, ANON, -1, 0) == LO + PAGE_SIZE            # too high: ignored


def test_mmap_ignores_unknown_prot_bits_and_maps_rwx_for_all_ones(space):
    addr = space.mmap(0, 4096, 0xFFFF_FFFF, ANON, -1, 0)
    entry = space.get_pte(addr)
    assert entry & PTE_P and entry & PTE_US and entry & PTE_RW and not entry & PTE_NX


def test_map_fixed_replaces_and_zeroes_the_middle(space):
    base = space.mmap(0, 4 * PAGE_SIZE, RW, ANON, -1, 0)
    assert space.write_user(base, b"\x11" * 4 * PAGE_SIZE)
    assert space.mmap(base + PAGE_SIZE, 2 * PAGE_SIZE, PROT_READ, ANON | MAP_FIXED, -1, 0) == base + PAGE_SIZE
    assert space.read_user(base, 1) == b"\x11"
    assert space.read_user(base + PAGE_SIZE, 2 * PAGE_SIZE) == bytes(2 * PAGE_SIZE)
    assert space.read_user(base + 3 * PAGE_SIZE, 1) == b"\x11"
    assert not space.get_pte(base + PAGE_SIZE) & PTE_RW and space.get_pte(base) & PTE_RW


def test_fixed_noreplace(space):
    base = space.mmap(0, 4 * PAGE_SIZE, RW, ANON, -1, 0)
    assert space.mmap(base + PAGE_SIZE, PAGE_SIZE, RW, ANON | MAP_FIXED_NOREPLACE, -1, 0) == -Errno.EEXIST
    assert space.mmap(base + 4 * PAGE_SIZE, PAGE_SIZE, RW, ANON | MAP_FIXED_NOREPLACE, -1, 0) == base + 4 * PAGE_SIZE
    assert space.mmap(0x800, PAGE_SIZE, RW, ANON | MAP_FIXED_NOREPLACE, -1, 0) == -Errno.EINVAL


def test_munmap(space):
    base = space.mmap(0, 5 * PAGE_SIZE, RW, ANON, -1, 0)
    assert space.munmap(base + 1, 4096) == -Errno.EINVAL
    assert space.munmap(base, 0) == -Errno.EINVAL
    assert space.munmap(TASK_SIZE, 4096) == -Errno.EINVAL
    assert space.munmap(base, U64) == -Errno.EINVAL
    assert space.munmap(0x1000, 4096) == 0                      # wholly unmapped: fine
    assert space.munmap(base + 2 * PAGE_SIZE, 1) == 0           # len 1 removes one page
    assert [(v.start, v.end) for v in space.vmas] == [(base, base + 2 * PAGE_SIZE), (base + 3 * PAGE_SIZE, base + 5 * PAGE_SIZE)]
    assert space.get_pte(base + 2 * PAGE_SIZE) == 0
    free = space.frames.free_count
    assert space.munmap(base, 5 * PAGE_SIZE) == 0               # over a hole
    assert space.frames.free_count == free + 4 and space.vmas == []


def test_mprotect_order_of_checks(space):
    assert space.mprotect(0x1001, 0, 0xFF) == -Errno.EINVAL      # unaligned, even with len 0
    assert space.mprotect(0x1000, 0, 0xFF) == 0                  # len 0 before prot check
    assert space.mprotect(0x1000, U64, 0xFF) == -Errno.ENOMEM    # wrap before prot check
    assert space.mprotect(0x1000, 4096, 0x10) == -Errno.EINVAL   # bad prot, even unmapped
    assert space.mprotect(0x1000, 4096, PROT_READ) == -Errno.ENOMEM
    base = space.mmap(0, PAGE_SIZE, RW, ANON, -1, 0)
    assert space.mprotect(base, 4096, PROT_READ | PROT_GROWSDOWN) == -Errno.EINVAL
    assert space.mprotect(base, 4096, PROT_READ | PROT_GROWSUP) == -Errno.EINVAL
    assert space.mprotect(base, 4096, PROT_READ | 0x8) == 0      # PROT_SEM accepted


def test_mprotect_over_a_hole_changes_the_pages_before_it(space):
    base = space.mmap(0, 6 * PAGE_SIZE, RW, ANON, -1, 0)
    space.munmap(base + 3 * PAGE_SIZE, PAGE_SIZE)
    assert space.mprotect(base, 6 * PAGE_SIZE, PROT_READ) == -Errno.ENOMEM
    assert [bool(space.get_pte(base + i * PAGE_SIZE) & PTE_RW) for i in (0, 1, 2, 4, 5)] == [False] * 3 + [True] * 2
    assert space.mprotect(base + 3 * PAGE_SIZE, PAGE_SIZE, PROT_READ) == -Errno.ENOMEM   # starts in the hole


def test_mprotect_none_keeps_data_and_exec_only_is_readable(space):
    base = space.mmap(0, PAGE_SIZE, RW, ANON, -1, 0)
    space.write_user(base, b"keep")
    assert space.mprotect(base, PAGE_SIZE, 0) == 0
    entry = space.get_pte(base)
    assert entry & PTE_P and not entry & PTE_US and space.read_user(base, 4) is None
    assert space.mprotect(base, PAGE_SIZE, PROT_EXEC) == 0
    assert space.read_user(base, 4) == b"keep"
    assert not space.get_pte(base) & (PTE_RW | PTE_NX)


def test_mprotect_write_on_a_shared_private_frame_marks_cow(space):
    base = space.mmap(0, PAGE_SIZE, PROT_READ, ANON, -1, 0)
    frame = space.get_pte(base) >> 12 & 0xFF_FFFF_FFFF
    space.frames.get(frame)                                     # as if a fork relative shared it
    assert space.mprotect(base, PAGE_SIZE, RW) == 0
    entry = space.get_pte(base)
    assert entry & PTE_COW and not entry & PTE_RW
    space.frames.put(frame)


def test_brk(space):
    start = space.brk
    assert space.set_brk(0) == start
    assert space.set_brk(start - 1) == start                    # below start_brk: refused
    assert space.set_brk(start + 10) == start + 10              # unaligned: verbatim
    assert space.find_vma(start).kind == "heap"
    assert space.set_brk(start + 3 * PAGE_SIZE) == start + 3 * PAGE_SIZE
    assert space.set_brk(start + PAGE_SIZE) == start + PAGE_SIZE
    assert space.get_pte(start + 2 * PAGE_SIZE) == 0            # shrink unmaps
    assert space.set_brk(TASK_SIZE + 1) == start + PAGE_SIZE
    assert space.set_brk(U64) == start + PAGE_SIZE


def test_brk_keeps_one_free_page_before_the_next_mapping(space):
    start = space.brk
    space.mmap(start + 4 * PAGE_SIZE, PAGE_SIZE, RW, ANON | MAP_FIXED, -1, 0)
    assert space.set_brk(start + 3 * PAGE_SIZE) == start + 3 * PAGE_SIZE
    assert space.set_brk(start + 3 * PAGE_SIZE + 1) == start + 3 * PAGE_SIZE


def test_brk_shrink_over_a_munmapped_heap_page_is_refused(space):
    # linux-facts.md: a munmap()ed heap page leaves a hole; brk's shrink finds no VMA to cut in
    # [new break, old break) and keeps the old break (found by the zoo campaign).
    start = space.brk
    assert space.set_brk(start + PAGE_SIZE) == start + PAGE_SIZE
    assert space.set_brk(start + PAGE_SIZE + 1) == start + PAGE_SIZE + 1
    assert space.munmap(start + PAGE_SIZE, 0x200) == 0
    assert space.set_brk(start + PAGE_SIZE) == start + PAGE_SIZE + 1
    assert space.set_brk(start) == start                       # the lower heap page is still there
    assert space.find_vma(start) is None


def test_out_of_frames_is_enomem_with_nothing_changed():
    machine = Machine(4)
    frames = FrameTable(machine)
    space = AddressSpace(machine, frames, frozenset(), LEVITATE)
    free = frames.free_count
    assert space.mmap(0, 64 << 20, RW, ANON, -1, 0) == -Errno.ENOMEM
    assert frames.free_count == free and space.vmas == []
    space.start_brk = space.brk = 0x60_0000
    assert space.set_brk(0x60_0000 + (64 << 20)) == 0x60_0000


def test_user_access_rules(space):
    base = space.mmap(0, 2 * PAGE_SIZE, PROT_READ, ANON, -1, 0)
    assert space.write_user(base, b"x") is False                # read-only: EFAULT path
    assert space.read_user(base + PAGE_SIZE - 2, 4) == bytes(4)
    assert space.read_user(base + 2 * PAGE_SIZE - 2, 4) is None  # runs off the mapping


def test_growsdown_mapping_grows_on_access_below_it(space):
    top = space.mmap(0, 4 * PAGE_SIZE, RW, ANON | MAP_GROWSDOWN, -1, 0)
    assert space.find_vma(top).growsdown
    assert space.read_user(top - 8, 8) == bytes(8)              # uaccess below it grows it
    assert space.find_vma(top - 8).start == top - PAGE_SIZE
    assert space.expand_downwards(top - (9 << 20)) is False       # beyond RLIMIT_STACK (8 MiB)


def test_growsdown_keeps_the_guard_gap_for_placement(space):
    low = space.mmap(0x30_0000_0000, PAGE_SIZE, RW, ANON, -1, 0)
    gd = space.mmap(0x30_0000_0000 + 300 * PAGE_SIZE, PAGE_SIZE, RW, ANON | MAP_GROWSDOWN, -1, 0)
    assert (low, gd) == (0x30_0000_0000, 0x30_0000_0000 + 300 * PAGE_SIZE)
    # A hint whose end falls inside the 256-page gap below the growsdown VMA is not honoured.
    hint = gd - 10 * PAGE_SIZE
    assert space.mmap(hint, PAGE_SIZE, RW, ANON, -1, 0) != hint
    # Growing stops stack_guard_gap above an accessible mapping below.
    assert space.expand_downwards(low + 2 * PAGE_SIZE) is False


def test_mprotect_growsdown_extends_down_to_the_vma_start(space):
    top = space.mmap(0, 4 * PAGE_SIZE, RW, ANON | MAP_GROWSDOWN, -1, 0)
    assert space.mprotect(top + 3 * PAGE_SIZE, PAGE_SIZE, PROT_READ | PROT_GROWSDOWN) == 0
    assert all(not space.get_pte(top + i * PAGE_SIZE) & PTE_RW for i in range(4))


def test_droppable_with_growsdown_is_einval(space):
    assert space.mmap(0, PAGE_SIZE, RW, 0x08 | MAP_ANONYMOUS | MAP_GROWSDOWN, -1, 0) == -Errno.EINVAL
    assert space.mmap(0, PAGE_SIZE, RW, 0x08 | MAP_ANONYMOUS, -1, 0) > 0


def test_map_fixed_at_an_errno_value_returns_it(space):
    assert space.mmap(U64 - 21, PAGE_SIZE, RW, ANON | MAP_FIXED, -1, 0) == -Errno.EINVAL   # -22 itself
    assert space.mmap(U64 - 4095, PAGE_SIZE, RW, ANON | MAP_FIXED, -1, 0) == -Errno.ENOMEM  # below the range
