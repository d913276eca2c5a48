"""The fast paths added for speed agree with the straightforward code they replace: the direct
program-header reader with pyelftools, the run-at-a-time view with a page-at-a-time view, the
run splitter and the first-fit frame allocator with their definitions."""
from __future__ import annotations

import struct

from hypothesis import given, settings, strategies as st

from forkspec.impl import exec as elf_exec
from forkspec.impl.frames import KIND_PAGETABLE, FrameTable, _split_runs
from forkspec.impl.machine import (PTE_COW, PTE_FILE_HOLE, PTE_FRAME_MASK, PTE_NX, PTE_P, PTE_RW,
                                   PTE_US, Machine)
from forkspec.impl.mm import is_run
from forkspec.specs.abi import Errno
from forkspec.specs.trace import RIGHT_R, RIGHT_W, RIGHT_X, page_digest

from .helpers import backend, run_text

_PT_KINDS = st.sampled_from([0, 1, 3, 4, 6, 7, 0x6474E550, 0x6474E551, 0x6474E552, 0x7000_0001])


def _elf(etype: int, entry: int, phdrs: list[tuple], noise: bytes = bytes(26)) -> bytes:
    """An ELF header and program headers; `noise` fills the fields Linux ignores (the rest of
    e_ident, e_version, e_shoff, e_flags, e_ehsize and the section-header fields)."""
    header = bytearray(64)
    header[:4] = b"\x7fELF"
    header[4], header[5] = noise[0] % 3, noise[1] % 3             # class and data: any value
    header[6:16] = noise[2:12]
    version, shoff = int.from_bytes(noise[12:16], "little"), int.from_bytes(noise[16:24], "little")
    struct.pack_into("<HHIQQQIHHHHHH", header, 16, etype, 62, version, entry, 64, shoff, 0, 64, 56, len(phdrs),
                     noise[24], noise[25], noise[24] ^ noise[25])
    return bytes(header) + b"".join(struct.pack("<IIQQQQQQ", *p) for p in phdrs)


def _reference(data: bytes):
    """What the loader parsed before: pyelftools for every image."""
    try:
        segments, exec_stack, entry = elf_exec._segments_pyelftools(data, struct.unpack_from("<H", data, 56)[0])
    except elf_exec.ExecError as error:
        return int(error.errno)
    return tuple(segments), exec_stack, entry


@settings(max_examples=150, deadline=None)
@given(etype=st.sampled_from([2, 3]), entry=st.integers(0, 2**64 - 1),
       phdrs=st.lists(st.tuples(_PT_KINDS, st.integers(0, 7), st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1),
                                st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1),
                                st.integers(0, 2**64 - 1)), min_size=1, max_size=6),
       noise=st.binary(min_size=26, max_size=26))
def test_direct_program_header_reader_agrees_with_pyelftools(etype, entry, phdrs, noise):
    data = _elf(etype, entry, phdrs, noise)
    try:
        image = elf_exec._parse(data)
        got = (image.segments, image.exec_stack, image.entry)
    except elf_exec.ExecError as error:
        got = int(error.errno)
    assert got == _reference(data)


def test_interp_is_enoent_and_a_dynamic_segment_still_goes_through_pyelftools():
    interp = _elf(2, 0x401000, [(3, 4, 0, 0, 0, 0, 0, 0)])
    assert _reference(interp) == Errno.ENOENT
    try:
        elf_exec._parse(interp)
        raise AssertionError("PT_INTERP was accepted")
    except elf_exec.ExecError as error:
        assert error.errno == Errno.ENOENT
    dynamic = _elf(2, 0x401000, [(2, 4, 0, 0, 0, 0, 0, 0), (1, 5, 0, 0x400000, 0, 0x78, 0x78, 0x1000)])
    image = elf_exec._parse(dynamic)
    assert image.segments == _reference(dynamic)[0] and len(image.segments) == 1


@given(st.lists(st.integers(16, 80), max_size=40))
def test_split_runs_covers_the_list_with_maximal_runs(frames):
    runs = _split_runs(frames, limit=len(frames) + 1)
    assert [f for first, count in runs for f in range(first, first + count)] == frames
    assert all(nxt[0] != first + count for (first, count), nxt in zip(runs, runs[1:]))
    limited = _split_runs(frames, limit=2)
    assert limited == (runs if len(runs) <= 2 else None)


def test_is_run_means_consecutive_frames_with_equal_flags():
    flags = PTE_P | PTE_US | PTE_RW | PTE_NX
    assert is_run([(f << 12) | flags for f in range(40, 48)])
    assert not is_run([(f << 12) | flags for f in (40, 41, 43)])
    assert not is_run([(40 << 12) | flags, (41 << 12) | PTE_P])
    assert not is_run([])


def test_first_fit_allocator_hands_out_runs_and_counts_what_it_frees():
    machine = Machine(4)
    frames = FrameTable(machine)
    total = frames.free_count
    table = frames.alloc(KIND_PAGETABLE)
    run = frames.alloc_many(10)
    assert run == list(range(run[0], run[0] + 10)) and table not in run
    frames.put(run[3])                                   # a one-frame hole below the next run
    later = frames.alloc_many(4)
    assert later == list(range(later[0], later[0] + 4)) and later[0] > run[-1]
    assert frames.alloc(KIND_PAGETABLE) == run[3]        # the lowest free frame first
    assert frames.free_count == total - 1 - 10 - 4
    frames.put_many(run[:3] + run[4:] + later)
    frames.put(table)
    frames.put(run[3])
    assert frames.free_count == total and frames.allocated() == [] and frames.corrupt_puts == 0
    frames.put(run[0])                                   # already free: counted, not freed twice
    assert frames.corrupt_puts == 1 and frames.free_count == total


def _reference_view(kernel, proc):
    """The page-at-a-time view (the code the run-at-a-time view replaced)."""
    mem = kernel.machine.mem
    ranges, digests = [], []
    for va, entry in kernel._leaf_entries(proc.cr3):
        if entry & PTE_P:
            if entry & PTE_US:
                rights = RIGHT_R | (RIGHT_W if entry & (PTE_RW | PTE_COW) else 0) | (0 if entry & PTE_NX else RIGHT_X)
                pa = entry & PTE_FRAME_MASK
                digest = page_digest(bytes(mem[pa:pa + 4096]))
                if digest is not None:
                    digests.append((va, digest))
            else:
                rights = 0
        elif entry & PTE_FILE_HOLE:
            rights = (RIGHT_R if entry & PTE_US else 0) | (RIGHT_W if entry & PTE_RW else 0) | (
                0 if entry & PTE_NX or not entry & PTE_US else RIGHT_X)
        else:
            continue
        if ranges and ranges[-1][1] == va and ranges[-1][2] == rights:
            ranges[-1][1] = va + 4096
        else:
            ranges.append([va, va + 4096, rights])
    return tuple((lo, hi, r) for lo, hi, r in ranges), tuple(digests)


def test_view_agrees_with_the_page_at_a_time_view_at_every_event():
    checked = []

    def on_event(event, kernel):
        for proc in kernel.procs.values():
            if proc.mm is not None and proc.cr3:
                view = kernel.view(proc)
                assert (view.ranges, view.digests) == _reference_view(kernel, proc)
                checked.append(len(view.digests))
    for strategy in ("eager", "cow"):
        run_text("""
r1 = mmap(0, 0x5000, rw, private|anon)
r2 = mmap(0, 0x3000, r, private|anon)
store(r1, 7)
r3 = mprotect(r1, 0x2000, r)
r4 = fork
  child:  store(r2, 5); r5 = munmap(r2, 0x1000); exit(3)
  parent:
    r6 = wait4(r4)
    load(r1)
    exit(0)
""", strategy=strategy, on_event=on_event)
    assert checked and max(checked) > 0


def test_backend_runs_are_deterministic_across_reuse_of_the_machine():
    text = """
r1 = mmap(0, 0x3000, rw, private|anon)
store(r1, 3)
r2 = fork
  child:  r3 = munmap(r1, 0x1000); exit(1)
  parent:
    r4 = wait4(r2)
    exit(0)
"""
    first, _ = run_text(text)
    backend("eager").run({"x": b"\x7fELF"}, "x")         # a refused image in between
    second, _ = run_text(text)
    assert first.events == second.events
