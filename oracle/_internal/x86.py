"""A small x86-64 encoder: exactly the instruction forms the code generator emits.

Not an assembler: no parsing, no optimisation. `Assembler` appends instructions to a buffer that
will be loaded at `origin`; jumps go to `Label`s and RIP-relative operands name absolute link-time
addresses, both resolved when the buffer is finished. Every form uses a fixed-size displacement
(rel32 jumps, disp32 RIP-relative operands), so the length of the code never depends on where the
code or its data ends up — the code generator relies on that to lay out text and data in two
passes. tests/oracle/test_x86.py checks each form against capstone's disassembly.
"""
from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

U64 = (1 << 64) - 1


class Reg(enum.IntEnum):
    rax = 0
    rcx = 1
    rdx = 2
    rbx = 3
    rsp = 4
    rbp = 5
    rsi = 6
    rdi = 7
    r8 = 8
    r9 = 9
    r10 = 10
    r11 = 11
    r12 = 12
    r13 = 13
    r14 = 14
    r15 = 15


class Cond(enum.IntEnum):
    """Condition codes (the low nibble of Jcc's 0F 8x opcode)."""
    o = 0x0
    no = 0x1
    b = 0x2
    ae = 0x3
    e = 0x4
    ne = 0x5
    be = 0x6
    a = 0x7
    s = 0x8
    ns = 0x9
    l = 0xC
    ge = 0xD
    le = 0xE
    g = 0xF


@dataclass(frozen=True)
class Mem:
    """A memory operand: `[base + disp]`, or `[rip + disp]` when base is None and `rip_target`
    names the absolute address the operand should reach."""
    base: Reg | None = None
    disp: int = 0
    rip_target: int | None = None

    def __post_init__(self) -> None:
        if (self.base is None) == (self.rip_target is None):
            raise ValueError("Mem needs exactly one of base and rip_target")
        if not -(1 << 31) <= self.disp < (1 << 31):
            raise ValueError(f"displacement {self.disp:#x} does not fit in 32 bits")


def rip(target: int) -> Mem:
    """`[rip + disp32]` reaching the absolute link-time address `target`."""
    return Mem(rip_target=target)


class Label:
    """A position in the code, bound once; jumps to it are patched when the code is finished."""
    __slots__ = ("offset",)

    def __init__(self) -> None:
        self.offset: int | None = None


def _fits_i32(value: int) -> bool:
    return -(1 << 31) <= value < (1 << 31)


def _signed64(value: int) -> int:
    value &= U64
    return value - (1 << 64) if value >> 63 else value


class Assembler:
    """Appends machine code for a buffer loaded at `origin`."""

    def __init__(self, origin: int) -> None:
        self.origin = origin
        self.code = bytearray()
        # (offset of a rel32 field, offset of the next instruction, label or absolute target)
        self._fixups: list[tuple[int, int, Label | int]] = []

    # --- bookkeeping ---------------------------------------------------------------------------
    @property
    def here(self) -> int:
        """The link-time address of the next instruction."""
        return self.origin + len(self.code)

    def bind(self, label: Label) -> None:
        if label.offset is not None:
            raise ValueError("label bound twice")
        label.offset = len(self.code)

    def finish(self) -> bytes:
        """Resolve every jump and RIP-relative operand; return the code."""
        for field_at, next_at, target in self._fixups:
            if isinstance(target, Label):
                if target.offset is None:
                    raise ValueError("jump to a label that was never bound")
                rel = target.offset - next_at
            else:
                rel = _signed64(target - (self.origin + next_at))
            if not _fits_i32(rel):
                raise ValueError(f"target {target!r} is out of rel32 reach")
            self.code[field_at:field_at + 4] = struct.pack("<i", rel)
        self._fixups.clear()
        return bytes(self.code)

    def raw(self, data: bytes) -> None:
        self.code += data

    # --- encoding helpers ----------------------------------------------------------------------
    def _rex(self, w: bool, reg: int, index: int, base: int, force: bool = False) -> None:
        rex = 0x40 | (8 if w else 0) | ((reg >> 3) << 2) | ((index >> 3) << 1) | (base >> 3)
        if rex != 0x40 or force:
            self.code.append(rex)

    def _modrm_mem(self, reg: int, mem: Mem, opcode: bytes, w: bool, trailing: int = 0) -> None:
        """Emit [REX] opcode ModRM [SIB] [disp] for a memory operand. `trailing` is the size of
        an immediate that follows (it moves the end of the instruction, which rip-relative
        displacements are measured from)."""
        if mem.base is None:
            self._rex(w, reg, 0, 0)
            self.code += opcode
            self.code.append(((reg & 7) << 3) | 0b101)          # mod 00, rm 101: [rip + disp32]
            field_at = len(self.code)
            self.code += b"\0\0\0\0"
            self._fixups.append((field_at, field_at + 4 + trailing, (mem.rip_target + mem.disp) & U64))
            return
        base = int(mem.base)
        self._rex(w, reg, 0, base)
        self.code += opcode
        if mem.disp == 0 and base & 7 != 5:                    # rbp/r13 have no mod-00 form
            mod, disp = 0b00, b""
        elif -128 <= mem.disp < 128:
            mod, disp = 0b01, struct.pack("<b", mem.disp)
        else:
            mod, disp = 0b10, struct.pack("<i", mem.disp)
        self.code.append((mod << 6) | ((reg & 7) << 3) | (base & 7))
        if base & 7 == 4:                                      # rsp/r12 need a SIB byte
            self.code.append(0x24)
        self.code += disp

    def _modrm_reg(self, reg: int, rm: int, opcode: bytes, w: bool) -> None:
        self._rex(w, reg, 0, rm)
        self.code += opcode
        self.code.append(0xC0 | ((reg & 7) << 3) | (rm & 7))

    # --- instructions --------------------------------------------------------------------------
    def mov_imm(self, dst: Reg, value: int) -> None:
        """dst = value (any 64-bit pattern), in the shortest of three forms. The form depends
        only on the value, never on addresses."""
        value &= U64
        if value < (1 << 32):                                  # mov r32, imm32 zero-extends
            self._rex(False, 0, 0, dst)
            self.code.append(0xB8 + (dst & 7))
            self.code += struct.pack("<I", value)
        elif _fits_i32(_signed64(value)):                      # mov r/m64, simm32 sign-extends
            self._modrm_reg(0, dst, b"\xC7", True)
            self.code += struct.pack("<i", _signed64(value))
        else:                                                  # movabs r64, imm64
            self._rex(True, 0, 0, dst)
            self.code.append(0xB8 + (dst & 7))
            self.code += struct.pack("<Q", value)

    def mov_imm64(self, dst: Reg, value: int) -> None:
        """movabs dst, imm64 (always the 10-byte form)."""
        self._rex(True, 0, 0, dst)
        self.code.append(0xB8 + (dst & 7))
        self.code += struct.pack("<Q", value & U64)

    def load(self, dst: Reg, mem: Mem) -> None:
        """mov dst, qword [mem]"""
        self._modrm_mem(dst, mem, b"\x8B", True)

    def load32(self, dst: Reg, mem: Mem) -> None:
        """mov dst32, dword [mem] (zero-extends into dst)"""
        self._modrm_mem(dst, mem, b"\x8B", False)

    def store(self, mem: Mem, src: Reg) -> None:
        """mov qword [mem], src"""
        self._modrm_mem(src, mem, b"\x89", True)

    def lea(self, dst: Reg, mem: Mem) -> None:
        self._modrm_mem(dst, mem, b"\x8D", True)

    def mov_reg(self, dst: Reg, src: Reg) -> None:
        self._modrm_reg(src, dst, b"\x89", True)

    def add_imm(self, dst: Reg, value: int) -> None:
        """add dst, simm32"""
        if not _fits_i32(value):
            raise ValueError(f"add immediate {value:#x} does not fit in 32 bits")
        self._modrm_reg(0, dst, b"\x81", True)
        self.code += struct.pack("<i", value)

    def add_reg(self, dst: Reg, src: Reg) -> None:
        self._modrm_reg(src, dst, b"\x01", True)

    def cmp_imm(self, dst: Reg, value: int) -> None:
        """cmp dst, simm32"""
        if not _fits_i32(value):
            raise ValueError(f"cmp immediate {value:#x} does not fit in 32 bits")
        self._modrm_reg(7, dst, b"\x81", True)
        self.code += struct.pack("<i", value)

    def test(self, a: Reg, b: Reg) -> None:
        self._modrm_reg(b, a, b"\x85", True)

    def xor32(self, dst: Reg, src: Reg) -> None:
        """xor dst32, src32 (zeroes the whole register when dst == src)"""
        self._modrm_reg(src, dst, b"\x31", False)

    def push(self, src: Reg) -> None:
        self._rex(False, 0, 0, src)
        self.code.append(0x50 + (src & 7))

    def push_imm(self, value: int) -> None:
        """push simm32 (sign-extended to 64 bits)"""
        if not _fits_i32(value):
            raise ValueError(f"push immediate {value:#x} does not fit in 32 bits")
        self.code.append(0x68)
        self.code += struct.pack("<i", value)

    def jmp(self, target: Label) -> None:
        self.code.append(0xE9)
        self._rel32(target)

    def jcc(self, cond: Cond, target: Label) -> None:
        self.code += bytes([0x0F, 0x80 | cond])
        self._rel32(target)

    def call_reg(self, target: Reg) -> None:
        self._rex(False, 0, 0, target)
        self.code += bytes([0xFF, 0xD0 | (target & 7)])          # FF /2, mod 11

    def call_rel(self, target: int) -> None:
        """call rel32 to an absolute link-time address."""
        self.code.append(0xE8)
        field_at = len(self.code)
        self.code += b"\0\0\0\0"
        self._fixups.append((field_at, field_at + 4, target & U64))

    def ret(self) -> None:
        self.code.append(0xC3)

    def syscall(self) -> None:
        self.code += b"\x0F\x05"

    def ud2(self) -> None:
        self.code += b"\x0F\x0B"

    def hlt(self) -> None:
        self.code.append(0xF4)

    def int3(self) -> None:
        self.code.append(0xCC)

    def nop(self) -> None:
        self.code.append(0x90)

    def _rel32(self, target: Label) -> None:
        field_at = len(self.code)
        self.code += b"\0\0\0\0"
        self._fixups.append((field_at, field_at + 4, target))
