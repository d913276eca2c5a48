"""A tiny x86-64 assembler for impl's tests: the handful of forms the tests need, with labels."""
from __future__ import annotations

import struct

from forkspec.oracle._internal.elf import ET_EXEC, PF_R, PF_W, PF_X, Segment, write_elf
from forkspec.specs.abi import REPORT_NR, Nr, ReportKind

REGS = {name: i for i, name in enumerate(
    ["rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi", "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15"])}
TEXT = 0x40_0000
DATA = 0x60_0000


class Asm:
    def __init__(self, base: int = TEXT):
        self.base = base
        self.code = bytearray()
        self.labels: dict[str, int] = {}
        self.fixups: list[tuple[int, str]] = []

    @property
    def here(self) -> int:
        return self.base + len(self.code)

    def label(self, name: str) -> "Asm":
        self.labels[name] = len(self.code)
        return self

    def raw(self, data: bytes) -> "Asm":
        self.code += data
        return self

    def mov(self, reg: str, imm: int) -> "Asm":
        r = REGS[reg]
        self.code += bytes([0x48 | (r >> 3), 0xB8 + (r & 7)]) + struct.pack("<Q", imm & (2**64 - 1))
        return self

    def store(self, base: str, src: str) -> "Asm":      # mov [base], src   (base not rsp/rbp/r12/r13)
        b, s = REGS[base], REGS[src]
        self.code += bytes([0x48 | ((s >> 3) << 2) | (b >> 3), 0x89, (s & 7) << 3 | (b & 7)])
        return self

    def load(self, dst: str, base: str) -> "Asm":       # mov dst, [base]
        b, d = REGS[base], REGS[dst]
        self.code += bytes([0x48 | ((d >> 3) << 2) | (b >> 3), 0x8B, (d & 7) << 3 | (b & 7)])
        return self

    def syscall(self) -> "Asm":
        self.code += b"\x0f\x05"
        return self

    def test_rax(self) -> "Asm":
        self.code += b"\x48\x85\xc0"
        return self

    def cmp_rax(self, imm: int) -> "Asm":
        self.code += b"\x48\x3d" + struct.pack("<i", imm)
        return self

    def _jump(self, opcode: bytes, label: str) -> "Asm":
        self.code += opcode
        self.fixups.append((len(self.code), label))
        self.code += b"\0\0\0\0"
        return self

    def jmp(self, label: str) -> "Asm":
        return self._jump(b"\xe9", label)

    def jz(self, label: str) -> "Asm":
        return self._jump(b"\x0f\x84", label)

    def jnz(self, label: str) -> "Asm":
        return self._jump(b"\x0f\x85", label)

    def jl(self, label: str) -> "Asm":
        return self._jump(b"\x0f\x8c", label)

    def call_rax(self) -> "Asm":
        self.code += b"\xff\xd0"
        return self

    def sys(self, nr: int, *args: int) -> "Asm":
        """rax = nr, arguments in rdi, rsi, rdx, r10, r8, r9, then syscall."""
        self.mov("rax", nr)
        for reg, value in zip(("rdi", "rsi", "rdx", "r10", "r8", "r9"), args):
            self.mov(reg, value)
        return self.syscall()

    def exit(self, code: int) -> "Asm":
        return self.sys(Nr.exit_group, code)

    def report_rax_loaded(self, addr: int) -> "Asm":
        """report(loaded, addr, rax)."""
        self.raw(b"\x48\x89\xc2")               # mov rdx, rax
        self.mov("rsi", addr).mov("rdi", ReportKind.loaded).mov("rax", REPORT_NR)
        return self.syscall()

    def observe(self, tag: int = 0) -> "Asm":
        return self.sys(REPORT_NR, ReportKind.observe, tag)

    def assemble(self) -> bytes:
        for at, label in self.fixups:
            struct.pack_into("<i", self.code, at, self.labels[label] - (at + 4))
        return bytes(self.code)


def image(text: bytes, data: bytes = b"", bss: int = 0, text_base: int = TEXT, data_base: int = DATA,
          data_flags: int = PF_R | PF_W, gnu_stack: int | None = PF_R | PF_W) -> bytes:
    """An ET_EXEC image: text (R-X) at text_base, data (RW-) at data_base with `bss` zero bytes."""
    segments = [Segment(text_base, text, len(text), PF_R | PF_X)]
    if data or bss:
        segments.append(Segment(data_base, data, len(data) + bss, data_flags))
    return write_elf(segments, text_base, ET_EXEC, gnu_stack)
