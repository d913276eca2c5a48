"""Malformed ELF images: the mutations applied to a well-formed image and Linux's answer to each.

The well-formed writer is specs/elf.py's `write_elf` (re-exported here for the code generator).
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

from ...specs.abi import PAGE_SIZE, TASK_SIZE
from ...specs.elf import (EHDR_SIZE, EM_X86_64, ET_DYN, ET_EXEC, PF_R, PF_W, PF_X, PHDR_SIZE, PT_GNU_STACK, PT_LOAD,
                          Segment, write_elf)

__all__ = ["EHDR_SIZE", "EM_X86_64", "ET_DYN", "ET_EXEC", "PF_R", "PF_W", "PF_X", "PHDR_SIZE", "PT_GNU_STACK",
           "PT_LOAD", "Segment", "write_elf", "MUTATIONS", "Mutation", "apply_mutation", "expected_outcome"]


# --- Malformed images (ElfSpec.mutation) -----------------------------------------------------
# Each mutation rewrites a well-formed image's bytes. `expected` is what Linux x86-64 does when
# an image carrying it is execve'd (linux-facts.md, "execve"), in one of these words:
#   "ENOEXEC"          execve returns -ENOEXEC, the caller continues intact (before the PONR)
#   "killed"           killed after the point of no return: SIGSEGV SI_KERNEL, status 0x000b
#   "runs"             the image runs normally
#   "SIGSEGV at entry" exec completes, the first instruction fetch faults (si_addr = entry)
#   "SIGBUS on touch"  exec completes, touching the segment whose file bytes are missing raises
#                      SIGBUS BUS_ADRERR (here: the text, so at entry)

@dataclass(frozen=True)
class Mutation:
    description: str
    expected: str


MUTATIONS: dict[str, Mutation] = {
    "bad-magic": Mutation("e_ident magic is \\x7fELG", "ENOEXEC"),
    "elfclass32": Mutation("EI_CLASS = ELFCLASS32 on a 64-bit image (x86-64 checks e_machine only)", "runs"),
    "bad-machine": Mutation("e_machine = 3 (EM_386), not 62", "ENOEXEC"),
    "et-rel": Mutation("e_type = ET_REL", "ENOEXEC"),
    "et-core": Mutation("e_type = ET_CORE", "ENOEXEC"),
    "truncated-20": Mutation("only the first 20 bytes of the file", "ENOEXEC"),
    "empty": Mutation("an empty file", "ENOEXEC"),
    "text-no-shebang": Mutation("a text file without #!", "ENOEXEC"),
    "phnum-zero": Mutation("e_phnum = 0", "ENOEXEC"),
    "bad-phentsize": Mutation("e_phentsize = 32, not 56", "ENOEXEC"),
    "phdrs-beyond-eof": Mutation("e_phoff points past the end of the file", "ENOEXEC"),
    "phdrs-too-big": Mutation("e_phnum = 1171: the program header table is 65576 > 65536 bytes "
                              "(the file is padded so that the table lies inside it)", "ENOEXEC"),
    # linux-facts.md says a table > 4096 bytes gives ENOEXEC; 6.18.44 measured here runs it (the
    # kernel's limit is 64 KiB); the extra entries read from file bytes are not PT_LOAD.
    "phdrs-over-4096": Mutation("e_phnum = 74: the program header table is 4144 > 4096 bytes and "
                                "runs into the text's bytes", "runs"),
    "load-offset-beyond-eof": Mutation(
        "the text PT_LOAD's p_offset lies past the end of the file (congruence kept)", "SIGBUS on touch"),
    "memsz-lt-filesz": Mutation("the first PT_LOAD's p_memsz is p_filesz - 1", "killed"),
    "offset-not-congruent": Mutation("the first PT_LOAD's p_offset is 8 more than congruent with p_vaddr",
                                     "killed"),
    "load-above-task-size": Mutation("the last PT_LOAD's p_vaddr is at TASK_SIZE (page offset kept)", "killed"),
    "entry-above-task-size": Mutation("e_entry = TASK_SIZE + 0x1000", "killed"),
    "entry-outside-segments": Mutation("e_entry is 1 MiB past the end of the highest PT_LOAD", "SIGSEGV at entry"),
    "overlapping-loads": Mutation(
        "an extra read-only PT_LOAD over the text, after the others: it wins on the overlap", "SIGSEGV at entry"),
}

_EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
_PHDR = struct.Struct("<IIQQQQQQ")


def _phdrs(image: bytes) -> list[tuple[int, tuple]]:
    """(file offset of the entry, unpacked fields) for each program header of a well-formed image."""
    fields = _EHDR.unpack_from(image, 0)
    phoff, phnum = fields[5], fields[10]
    return [(phoff + i * PHDR_SIZE, _PHDR.unpack_from(image, phoff + i * PHDR_SIZE)) for i in range(phnum)]


def _set_ehdr(image: bytearray, field: str, value: int) -> None:
    at, fmt = {"e_type": (16, "<H"), "e_machine": (18, "<H"), "e_entry": (24, "<Q"),
               "e_phoff": (32, "<Q"), "e_phentsize": (54, "<H"), "e_phnum": (56, "<H")}[field]
    struct.pack_into(fmt, image, at, value)


def apply_mutation(name: str, image: bytes) -> bytes:
    """Return `image` (as write_elf built it) with the malformation `name` applied."""
    if name not in MUTATIONS:
        raise ValueError(f"unknown mutation {name!r}; known: {', '.join(sorted(MUTATIONS))}")
    out = bytearray(image)
    loads = [(at, ph) for at, ph in _phdrs(image) if ph[0] == PT_LOAD]
    entry = _EHDR.unpack_from(image, 0)[4]
    if name == "bad-magic":
        out[3] = ord("G")
    elif name == "elfclass32":
        out[4] = 1
    elif name == "bad-machine":
        _set_ehdr(out, "e_machine", 3)
    elif name == "et-rel":
        _set_ehdr(out, "e_type", 1)
    elif name == "et-core":
        _set_ehdr(out, "e_type", 4)
    elif name == "truncated-20":
        del out[20:]
    elif name == "empty":
        return b""
    elif name == "text-no-shebang":
        return b"echo this is not an executable\n"
    elif name == "phnum-zero":
        _set_ehdr(out, "e_phnum", 0)
    elif name == "bad-phentsize":
        _set_ehdr(out, "e_phentsize", 32)
    elif name == "phdrs-beyond-eof":
        _set_ehdr(out, "e_phoff", len(out) + PAGE_SIZE)
    elif name == "phdrs-too-big":
        _set_ehdr(out, "e_phnum", 1171)
        out += bytes(max(0, EHDR_SIZE + 1171 * PHDR_SIZE - len(out)))
    elif name == "phdrs-over-4096":
        _set_ehdr(out, "e_phnum", 74)
        out += bytes(max(0, EHDR_SIZE + 74 * PHDR_SIZE - len(out)))
    elif name == "load-offset-beyond-eof":
        at, ph = next((at, ph) for at, ph in loads if ph[3] <= entry < ph[3] + ph[6])
        beyond = (len(out) + 2 * PAGE_SIZE) & ~(PAGE_SIZE - 1)
        struct.pack_into("<Q", out, at + 8, beyond + ph[3] % PAGE_SIZE)
    elif name == "memsz-lt-filesz":
        at, ph = loads[0]
        struct.pack_into("<Q", out, at + 40, ph[5] - 1)
    elif name == "offset-not-congruent":
        at, ph = loads[0]
        struct.pack_into("<Q", out, at + 8, ph[2] + 8)
    elif name == "load-above-task-size":
        at, ph = loads[-1]
        vaddr = TASK_SIZE + ph[3] % PAGE_SIZE
        struct.pack_into("<QQ", out, at + 16, vaddr, vaddr)
    elif name == "entry-above-task-size":
        _set_ehdr(out, "e_entry", TASK_SIZE + PAGE_SIZE)
    elif name == "entry-outside-segments":
        top = max(ph[3] + ph[6] for _, ph in loads)
        _set_ehdr(out, "e_entry", ((top + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)) + 0x10_0000)
    elif name == "overlapping-loads":
        fields = _EHDR.unpack_from(image, 0)
        phoff, phnum = fields[5], fields[10]
        first_data = min(ph[2] for _, ph in loads)
        at = phoff + phnum * PHDR_SIZE
        if at + PHDR_SIZE > first_data:
            raise ValueError("no room for another program header before the first segment")
        _, text = next((a, ph) for a, ph in loads if ph[3] <= entry < ph[3] + ph[6])
        out[at:at + PHDR_SIZE] = _PHDR.pack(PT_LOAD, PF_R, *text[2:])
        _set_ehdr(out, "e_phnum", phnum + 1)
    return bytes(out)


def expected_outcome(name: str, text_writable_with_bss: bool = False) -> str:
    """What Linux does when execve meets an image with mutation `name` (MUTATIONS' words).

    `text_writable_with_bss`: the segment holding the entry is writable and has memsz > filesz
    (the "single" layout with a bss): a p_offset beyond EOF then kills after the PONR, because
    zeroing the bss tail of the last file page faults."""
    expected = MUTATIONS[name].expected
    if name == "load-offset-beyond-eof" and text_writable_with_bss:
        return "killed"
    return expected
