"""The ELF loader (pyelftools) and the initial stack.

Checks before the point of no return give the errno Linux gives (linux-facts.md, execve table):
the caller keeps its address space. Everything after it (segment mapping) can only kill the
process (SIGSEGV, SI_KERNEL). A mapped file page is the whole file page at the segment's offset
(as Linux's private file mapping is), so segments sharing a page see each other's bytes; a later
segment replaces an earlier one's pages where they overlap (Linux maps with MAP_FIXED).
"""
from __future__ import annotations

import io
import struct
from dataclasses import dataclass

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

from ..specs.abi import PAGE_SIZE, PROT_EXEC, PROT_READ, PROT_WRITE, TASK_SIZE, Errno
from ..specs.profiles import LEVITATE_STACK_PAGES, LEVITATE_STACK_TOP
from ..specs.trace import Layout
from .mm import DAC_MMAP_MIN_ADDR, AddressSpace, Vma, page_align, page_down, pte_bits_for_prot
from .machine import PTE_FILE_HOLE, PTE_NX, PTE_P, PTE_RW, PTE_US

ET_EXEC, ET_DYN = 2, 3
EM_X86_64 = 62
PT_LOAD, PT_DYNAMIC, PT_INTERP, PT_GNU_STACK = 1, 2, 3, 0x6474E551
_PHDR = struct.Struct("<IIQQQQQQ")      # p_type, p_flags, p_offset, p_vaddr, p_paddr, p_filesz, p_memsz, p_align
_Q = struct.Struct("<Q")
PF_X, PF_W, PF_R = 1, 2, 4
ET_DYN_BASE = 0x5555_5555_4000        # levitate's fixed ET_DYN base (Linux's ELF_ET_DYN_BASE, -R)
AT_NULL, AT_PHDR, AT_PHENT, AT_PHNUM, AT_PAGESZ, AT_ENTRY, AT_RANDOM = 0, 3, 4, 5, 6, 9, 25
AT_RANDOM_BYTES = bytes(range(0x10, 0x20))   # deterministic "random" bytes


class ExecError(Exception):
    """Internal: execve fails before the point of no return with `errno`."""

    def __init__(self, errno: int):
        super().__init__(errno)
        self.errno = errno


@dataclass(frozen=True)
class LoadSegment:
    vaddr: int
    offset: int
    filesz: int
    memsz: int
    flags: int


@dataclass(frozen=True)
class ElfImage:
    etype: int
    entry: int
    phoff: int
    phnum: int
    segments: tuple[LoadSegment, ...]
    exec_stack: bool


_cache: dict[bytes, ElfImage | int] = {}


def parse(data: bytes) -> ElfImage:
    """Validate an image the way load_elf_binary does before the point of no return."""
    cached = _cache.get(data)
    if cached is None:
        try:
            cached = _parse(data)
        except ExecError as error:
            cached = error.errno
        if len(_cache) > 256:
            _cache.clear()
        _cache[data] = cached
    if isinstance(cached, int):
        raise ExecError(cached)
    return cached


def _parse(data: bytes) -> ElfImage:
    if data[:2] == b"#!":
        raise ExecError(Errno.ENOENT)                # the interpreter does not exist here
    if len(data) < 64 or data[:4] != b"\x7fELF":
        raise ExecError(Errno.ENOEXEC)
    etype, machine = struct.unpack_from("<HH", data, 16)
    phentsize, phnum = struct.unpack_from("<HH", data, 54)
    phoff = struct.unpack_from("<Q", data, 32)[0]
    if etype not in (ET_EXEC, ET_DYN) or machine != EM_X86_64:
        raise ExecError(Errno.ENOEXEC)
    # The table may be up to 64 KiB (elf_read_phdrs); linux-facts.md's "> 4096 B" was re-measured
    # on 6.18.44 by oracle/_internal/elf.py's phdrs-over-4096 mutation: it runs.
    if phentsize != 56 or phnum == 0 or phnum * 56 > 65536:
        raise ExecError(Errno.ENOEXEC)
    if phoff + phnum * 56 > len(data):
        raise ExecError(Errno.ENOEXEC)               # short read of the program headers
    headers = [_PHDR.unpack_from(data, phoff + 56 * i) for i in range(phnum)]
    if any(header[0] == PT_DYNAMIC for header in headers):
        # pyelftools builds a DynamicSegment, which reads section headers and may refuse the
        # image: keep its answer for these rare images.
        segments, exec_stack, entry = _segments_pyelftools(data, phnum)
    else:
        segments, exec_stack = [], False
        for kind, flags, offset, vaddr, _paddr, filesz, memsz, _align in headers:
            if kind == PT_LOAD:
                segments.append(LoadSegment(vaddr, offset, filesz, memsz, flags))
            elif kind == PT_INTERP:
                raise ExecError(Errno.ENOENT)
            elif kind == PT_GNU_STACK:
                exec_stack = bool(flags & PF_X)
        entry = _Q.unpack_from(data, 24)[0]
    return ElfImage(etype, entry, phoff, phnum, tuple(segments), exec_stack)


def _segments_pyelftools(data: bytes, phnum: int) -> tuple[list[LoadSegment], bool, int]:
    """The program headers as pyelftools reads them (the reference for the direct reader)."""
    # Linux reads every image as ELF64 little-endian (elf_check_arch tests e_machine only);
    # normalise the identification bytes so pyelftools does too.
    normalised = bytearray(data[:64])
    normalised[4], normalised[5] = 2, 1
    try:
        elf = ELFFile(io.BytesIO(bytes(normalised) + data[64:]))
        segments, exec_stack = [], False
        for i in range(phnum):
            header = elf.get_segment(i).header
            kind = header["p_type"]
            if kind == "PT_LOAD":
                segments.append(LoadSegment(header["p_vaddr"], header["p_offset"], header["p_filesz"],
                                            header["p_memsz"], header["p_flags"]))
            elif kind == "PT_INTERP":
                raise ExecError(Errno.ENOENT)
            elif kind == "PT_GNU_STACK":
                exec_stack = bool(header["p_flags"] & PF_X)
        return segments, exec_stack, elf.header["e_entry"]
    except (ELFError, struct.error, ValueError) as error:
        raise ExecError(Errno.ENOEXEC) from error


def _segment_prot(flags: int) -> int:
    return (PROT_READ if flags & PF_R else 0) | (PROT_WRITE if flags & PF_W else 0) | (PROT_EXEC if flags & PF_X else 0)


class KillAfterPonr(Exception):
    """Internal: the new image cannot be set up; the process dies with SIGSEGV (SI_KERNEL)."""


def load(space: AddressSpace, image: ElfImage, data: bytes, argv: list[bytes], envp: list[bytes],
         plant: frozenset[str]) -> tuple[Layout, int, int]:
    """Map `image` into the fresh `space`; returns (layout, entry, stack pointer).
    Raises KillAfterPonr when Linux would kill the process."""
    bias = 0
    if image.etype == ET_DYN and image.segments:
        bias = (ET_DYN_BASE - page_down(image.segments[0].vaddr)) & 0xFFFF_FFFF_FFFF_FFFF
    highest = 0
    for seg in image.segments:
        _map_segment(space, seg, bias, data, plant)
        highest = max(highest, ((seg.vaddr + bias) & 0xFFFF_FFFF_FFFF_FFFF) + seg.memsz)
    entry = (image.entry + bias) & 0xFFFF_FFFF_FFFF_FFFF   # unsigned long arithmetic, as Linux
    if entry >= TASK_SIZE:
        raise KillAfterPonr                          # BAD_ADDR(elf_entry): -EINVAL after the PONR
    space.start_brk = space.brk = page_align(highest)
    stack_lo = LEVITATE_STACK_TOP - LEVITATE_STACK_PAGES * PAGE_SIZE
    stack_prot = PROT_READ | PROT_WRITE | (PROT_EXEC if image.exec_stack else 0)
    _map_anon(space, stack_lo, LEVITATE_STACK_TOP, stack_prot, "stack")
    phdr = _phdr_address(image, bias)
    sp = _build_stack(space, argv, envp, image, entry, phdr)
    if "tls-inside-stack" in plant:
        # LevitateOS: the TLS page went at the top of the stack's range, over the page holding
        # the initial stack; the stack frame there leaked and the VMA insert failed silently.
        tls_lo = LEVITATE_STACK_TOP - PAGE_SIZE
        _need(space, PAGE_SIZE)
        new = space.frames.alloc()
        table = space.page_table(tls_lo, True)
        space.machine.write_u64(table + 8 * ((tls_lo >> 12) & 511), new << 12 | PTE_P | PTE_US | PTE_RW | PTE_NX)
        space.flush_owed.append(tls_lo)
    else:
        tls_lo = LEVITATE_STACK_TOP
        _map_anon(space, tls_lo, tls_lo + PAGE_SIZE, PROT_READ | PROT_WRITE, "tls")
    layout = Layout(regions=(("stack", stack_lo, LEVITATE_STACK_TOP), ("tls", tls_lo, tls_lo + PAGE_SIZE)),
                    brk=space.brk, load_bias=bias, entry_sp=sp)
    return layout, entry, sp


def _need(space: AddressSpace, size: int) -> None:
    if space.frames.free_count < (size >> 12) + 8:
        raise KillAfterPonr


def _map_anon(space: AddressSpace, lo: int, hi: int, prot: int, kind: str) -> None:
    if not space.enough_frames(lo, hi):
        raise KillAfterPonr
    space.carve(lo, hi)
    space.unmap_ptes(lo, hi)
    space.map_fresh(lo, hi, pte_bits_for_prot(prot))
    space.insert_vma(Vma(lo, hi, prot, False, kind))


def _map_segment(space: AddressSpace, seg: LoadSegment, bias: int, data: bytes, plant: frozenset[str]) -> None:
    vaddr = (seg.vaddr + bias) & 0xFFFF_FFFF_FFFF_FFFF
    if (seg.offset - seg.vaddr) % PAGE_SIZE or seg.memsz < seg.filesz:
        raise KillAfterPonr                          # mmap refuses: EINVAL after the PONR
    if seg.memsz == 0:
        return
    if vaddr >= TASK_SIZE or seg.memsz > TASK_SIZE - vaddr:
        raise KillAfterPonr
    lo = page_down(vaddr)
    file_hi = page_align(vaddr + seg.filesz) if seg.filesz else lo
    hi = page_align(vaddr + seg.memsz)
    if lo < DAC_MMAP_MIN_ADDR:
        raise KillAfterPonr                          # EPERM from mmap_min_addr
    if not space.enough_frames(lo, hi):
        raise KillAfterPonr
    bits = pte_bits_for_prot(_segment_prot(seg.flags))     # the loader's own mapping: never planted
    frames, machine = space.frames, space.machine
    file_page = page_down(seg.offset)
    zero_start = vaddr + seg.filesz
    shared_page_bug = "shared-page-overwrite" in plant
    # MAP_FIXED semantics: this segment replaces whatever earlier segments mapped here.
    space.carve(lo, hi)
    space.unmap_ptes(lo, hi)
    for va in range(lo, file_hi, PAGE_SIZE):
        offset = file_page + (va - lo)
        if offset >= len(data):
            # Beyond EOF: mapped, but a touch raises SIGBUS; zeroing bss there faults.
            if seg.memsz > seg.filesz and seg.flags & PF_W and va <= zero_start < va + PAGE_SIZE:
                raise KillAfterPonr
            space.set_pte(va, PTE_FILE_HOLE | (bits & ~PTE_P))
            continue
        frame = frames.alloc()
        if shared_page_bug:
            # LevitateOS copied only this segment's bytes into a fresh frame, so a page shared
            # with the previous segment lost that segment's bytes.
            seg_lo = max(va, vaddr)
            seg_hi = min(va + PAGE_SIZE, vaddr + seg.filesz)
            src = seg.offset + (seg_lo - vaddr)
            chunk = data[src:src + (seg_hi - seg_lo)]
            machine.write_phys((frame << 12) + (seg_lo - va), chunk)
        else:
            chunk = data[offset:offset + PAGE_SIZE]
            machine.write_phys(frame << 12, chunk)
        if seg.memsz > seg.filesz and seg.flags & PF_W and va <= zero_start < va + PAGE_SIZE:
            # padzero: clear the rest of the last file page (only writable segments manage it).
            start = zero_start - va
            machine.write_phys((frame << 12) + start, bytes(PAGE_SIZE - start))
        space.set_pte(va, frame << 12 | bits)
    if hi > file_hi:
        space.map_fresh(file_hi, hi, bits)
    space.insert_vma(Vma(lo, hi, _segment_prot(seg.flags), False, "image"))
    if "elf-no-vmas" in plant:
        # LevitateOS: the loader mapped the segment's pages but never recorded a VMA.
        space.carve(lo, hi)


def _phdr_address(image: ElfImage, bias: int) -> int:
    for seg in image.segments:
        if seg.offset <= image.phoff < seg.offset + seg.filesz:
            return (image.phoff - seg.offset + seg.vaddr + bias) & 0xFFFF_FFFF_FFFF_FFFF
    return 0


def _build_stack(space: AddressSpace, argv: list[bytes], envp: list[bytes], image: ElfImage,
                 entry: int, phdr: int) -> int:
    """The Linux-ABI initial stack: argc, argv, NULL, envp, NULL, auxv; strings and AT_RANDOM above."""
    top = LEVITATE_STACK_TOP
    blob = bytearray()
    pointers = []
    strings_base = top - 16 - sum(len(s) + 1 for s in argv + envp)
    strings_base &= ~0xF
    cursor = strings_base
    for s in argv + envp:
        pointers.append(cursor)
        blob += s + b"\0"
        cursor += len(s) + 1
    random_addr = top - 16
    argv_ptrs, envp_ptrs = pointers[:len(argv)], pointers[len(argv):]
    auxv = [(AT_PHDR, phdr), (AT_PHENT, 56), (AT_PHNUM, image.phnum), (AT_PAGESZ, PAGE_SIZE),
            (AT_ENTRY, entry), (AT_RANDOM, random_addr), (AT_NULL, 0)]
    words = [len(argv)] + argv_ptrs + [0] + envp_ptrs + [0] + [x for pair in auxv for x in pair]
    sp = (strings_base - 8 * len(words)) & ~0xF
    table = struct.pack(f"<{len(words)}Q", *(w & 0xFFFF_FFFF_FFFF_FFFF for w in words))
    ok = (space.write_user(sp, table) and space.write_user(strings_base, bytes(blob))
          and space.write_user(random_addr, AT_RANDOM_BYTES))
    if not ok:
        raise KillAfterPonr
    return sp
