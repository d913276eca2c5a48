"""The ELF64 image format as Linux's loader reads it, and a writer for well-formed static x86-64 images.

`write_elf` lays segments out so that each segment's file offset is congruent to its vaddr
modulo the page size (what Linux's loader needs); segments that share a page share file bytes.
It lives in specs/ because both the code generator (oracle/) and the execve refinement proofs
(model/refinement/exec.py, which may not import oracle/) build images with it.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

from .abi import PAGE_SIZE

ET_EXEC = 2
ET_DYN = 3
EM_X86_64 = 62
PT_LOAD = 1
PT_GNU_STACK = 0x6474E551
PF_X = 1
PF_W = 2
PF_R = 4

EHDR_SIZE = 64
PHDR_SIZE = 56


@dataclass(frozen=True)
class Segment:
    vaddr: int
    data: bytes          # file contents (p_filesz = len(data))
    memsz: int           # >= len(data); the rest is zero-filled (bss)
    flags: int           # PF_R | PF_W | PF_X


def write_elf(segments: list[Segment], entry: int, etype: int = ET_EXEC,
              gnu_stack_flags: int | None = PF_R | PF_W, trailer: bytes = b"") -> bytes:
    """Build an ELF image: header, program headers, then each segment's bytes at an offset
    congruent to its vaddr mod PAGE_SIZE. Later segments never overwrite earlier file bytes.
    `trailer` is appended after the last segment's bytes and belongs to no segment (as section
    headers do in real files): the loader must zero it where it falls inside a bss page."""
    phnum = len(segments) + (1 if gnu_stack_flags is not None else 0)
    cursor = EHDR_SIZE + PHDR_SIZE * phnum
    placed: list[tuple[int, Segment]] = []
    for seg in segments:
        # Smallest offset >= cursor with offset % PAGE_SIZE == vaddr % PAGE_SIZE.
        offset = cursor + ((seg.vaddr - cursor) % PAGE_SIZE)
        placed.append((offset, seg))
        cursor = offset + len(seg.data)
    image = bytearray(cursor)
    image += trailer
    for offset, seg in placed:
        image[offset:offset + len(seg.data)] = seg.data
    ident = b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8)     # ELFCLASS64, little endian, v1, SysV
    image[0:EHDR_SIZE] = ident + struct.pack(
        "<HHIQQQIHHHHHH", etype, EM_X86_64, 1, entry, EHDR_SIZE, 0, 0,
        EHDR_SIZE, PHDR_SIZE, phnum, 0, 0, 0)
    at = EHDR_SIZE
    for offset, seg in placed:
        image[at:at + PHDR_SIZE] = struct.pack(
            "<IIQQQQQQ", PT_LOAD, seg.flags, offset, seg.vaddr, seg.vaddr,
            len(seg.data), seg.memsz, PAGE_SIZE)
        at += PHDR_SIZE
    if gnu_stack_flags is not None:
        image[at:at + PHDR_SIZE] = struct.pack("<IIQQQQQQ", PT_GNU_STACK, gnu_stack_flags, 0, 0, 0, 0, 0, 16)
    return bytes(image)
