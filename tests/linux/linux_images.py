"""Hand-assembled static ELF images for the Linux backend's tests (no code generator needed)."""
from __future__ import annotations

import os
import struct

from forkspec.oracle._internal.elf import ET_DYN, ET_EXEC, PF_R, PF_W, PF_X, Segment, write_elf
from forkspec.specs.abi import REPORT_NR

TEXT = 0x40_0000
DATA = 0x60_0000
REGS = {"rax": 0, "rcx": 1, "rdx": 2, "rbx": 3, "rsp": 4, "rbp": 5, "rsi": 6, "rdi": 7,
        "r8": 8, "r9": 9, "r10": 10}
ARGS = ("rdi", "rsi", "rdx", "r10", "r8", "r9")


class Code:
    """A few x86-64 instructions, encoded by hand."""

    def __init__(self) -> None:
        self.buf = bytearray()

    def mov(self, reg: str, value: int) -> "Code":
        r = REGS[reg]
        self.buf += bytes([0x48 | (r >> 3), 0xB8 + (r & 7)]) + struct.pack("<Q", value & (2**64 - 1))
        return self

    def syscall(self, nr: int, *args: int) -> "Code":
        self.mov("rax", nr)
        for reg, value in zip(ARGS, args):
            self.mov(reg, value)
        self.buf += b"\x0f\x05"
        return self

    def store_rdi_rsi(self) -> "Code":       # mov [rdi], rsi
        self.buf += b"\x48\x89\x37"
        return self

    def store_rdi_rax(self) -> "Code":       # mov [rdi], rax
        self.buf += b"\x48\x89\x07"
        return self

    def load_rax_rdi(self) -> "Code":        # mov rax, [rdi]
        self.buf += b"\x48\x8b\x07"
        return self

    def store(self, addr: int, value: int) -> "Code":
        return self.mov("rdi", addr).mov("rsi", value).store_rdi_rsi()

    def load(self, addr: int) -> "Code":
        return self.mov("rdi", addr).load_rax_rdi()

    def report(self, kind: int, a: int = 0, b: int = 0) -> "Code":
        return self.syscall(REPORT_NR, kind, a, b)

    def spin(self) -> "Code":                # jmp $
        self.buf += b"\xeb\xfe"
        return self

    def exit(self, code: int) -> "Code":
        return self.syscall(60, code)

    def bytes(self) -> bytes:
        return bytes(self.buf)


def image(code: Code, data: bytes = b"", etype: int = ET_EXEC) -> bytes:
    """An image with the code at TEXT (R-X) and, when given, `data` at DATA (RW)."""
    segments = [Segment(TEXT, code.bytes(), len(code.bytes()), PF_R | PF_X)]
    if data:
        segments.append(Segment(DATA, data, len(data), PF_R | PF_W))
    return write_elf(segments, TEXT, etype=etype)


def path_data(*paths: str) -> tuple[bytes, dict[str, int]]:
    """A data segment holding NUL-terminated paths and, for each, an argv {path, NULL} array;
    returns the bytes and {path: argv address} (the path's address is argv[0])."""
    blob = bytearray()
    where: dict[str, int] = {}
    for p in paths:
        where[p] = len(blob)
        blob += p.encode() + b"\0"
    while len(blob) % 8:
        blob += b"\0"
    argvs: dict[str, int] = {}
    for p in paths:
        argvs[p] = DATA + len(blob)
        blob += struct.pack("<QQ", DATA + where[p], 0)
    blob += bytes(8)                          # a NULL word for envp
    return bytes(blob), argvs


def envp_addr(data: bytes) -> int:
    return DATA + len(data) - 8



def processes_in_group(pgid: int) -> list[int]:
    """Live or zombie processes whose process group is `pgid` (read from /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(b")") + 2:].split()
        if int(fields[2]) == pgid:          # field 5: pgrp
            found.append(int(entry))
    return found


__all__ = ["Code", "image", "path_data", "envp_addr", "processes_in_group", "TEXT", "DATA", "ET_DYN", "ET_EXEC"]
