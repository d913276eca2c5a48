"""The encoder's output, checked against capstone's disassembly for every form it offers."""
from __future__ import annotations

import capstone
import pytest

from forkspec.oracle._internal.x86 import Assembler, Cond, Label, Mem, Reg, rip

ORIGIN = 0x40_1000
REGS = list(Reg)
SPREAD = [Reg.rax, Reg.rcx, Reg.rsp, Reg.rbp, Reg.rsi, Reg.rdi, Reg.r8, Reg.r10, Reg.r11, Reg.r12, Reg.r13, Reg.r15]

_md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
_md.detail = False


def disasm(code: bytes, origin: int = ORIGIN) -> list[str]:
    """`mnemonic op_str` per instruction; fails when capstone does not consume every byte."""
    out, used = [], 0
    for insn in _md.disasm(code, origin):
        out.append(f"{insn.mnemonic} {insn.op_str}".strip())
        used += insn.size
    assert used == len(code), f"capstone stopped after {used} of {len(code)} bytes: {code.hex()}"
    return out


def one(emit, origin: int = ORIGIN) -> str:
    asm = Assembler(origin)
    emit(asm)
    lines = disasm(asm.finish(), origin)
    assert len(lines) == 1, lines
    return lines[0]


@pytest.mark.parametrize("reg", REGS, ids=lambda r: r.name)
@pytest.mark.parametrize("value", [0, 1, 0x7FFF_FFFF, 0xFFFF_FFFF, 0x1_0000_0000, -1, -0x8000_0000,
                                   0x7FFF_FFFF_F000, 0x8000_0000_0000_0000, 0xDEAD_BEEF_CAFE_F00D])
def test_mov_imm(reg, value):
    text = one(lambda a: a.mov_imm(reg, value))
    mnemonic, ops = text.split(" ", 1)
    dst, imm = (s.strip() for s in ops.split(","))
    assert mnemonic in ("mov", "movabs")
    v = value & (2**64 - 1)
    if v < 2**32:
        # the 32-bit form zero-extends: capstone names the 32-bit register
        assert dst == {0: "eax", 1: "ecx", 2: "edx", 3: "ebx", 4: "esp", 5: "ebp", 6: "esi", 7: "edi"}.get(
            reg, f"{reg.name}d")
        assert int(imm, 0) == v
    else:
        assert dst == reg.name
        assert int(imm, 0) & (2**64 - 1) == v


@pytest.mark.parametrize("reg", REGS, ids=lambda r: r.name)
def test_mov_imm64_always_long(reg):
    asm = Assembler(ORIGIN)
    asm.mov_imm64(reg, 5)
    code = asm.finish()
    assert len(code) == 10
    assert disasm(code) == [f"movabs {reg.name}, 5"]


def _mem_text(base: Reg, disp: int) -> str:
    if disp == 0:
        return f"[{base.name}]"
    magnitude = abs(disp) if abs(disp) < 10 else hex(abs(disp))     # capstone's number style
    return f"[{base.name} {'+' if disp > 0 else '-'} {magnitude}]"


@pytest.mark.parametrize("dst", SPREAD, ids=lambda r: r.name)
@pytest.mark.parametrize("base", SPREAD, ids=lambda r: r.name)
@pytest.mark.parametrize("disp", [0, 8, -8, 0x7F, 0x80, -0x81, 0x1000, -0x7FFF_FFFF])
def test_load_store_lea_base_disp(dst, base, disp):
    mem = Mem(base, disp)
    assert one(lambda a: a.load(dst, mem)) == f"mov {dst.name}, qword ptr {_mem_text(base, disp)}"
    assert one(lambda a: a.store(mem, dst)) == f"mov qword ptr {_mem_text(base, disp)}, {dst.name}"
    assert one(lambda a: a.lea(dst, mem)) == f"lea {dst.name}, {_mem_text(base, disp)}"


@pytest.mark.parametrize("reg", REGS, ids=lambda r: r.name)
@pytest.mark.parametrize("target", [ORIGIN - 0x1000, ORIGIN + 0x2008, ORIGIN + 0x7FFF_0000])
def test_rip_relative_forms_reach_their_target(reg, target):
    for emit, kind in ((lambda a: a.load(reg, rip(target)), "load"),
                       (lambda a: a.store(rip(target), reg), "store"),
                       (lambda a: a.lea(reg, rip(target)), "lea"),
                       (lambda a: a.load32(reg, rip(target)), "load32")):
        asm = Assembler(ORIGIN)
        emit(asm)
        code = asm.finish()
        insn = next(_md.disasm(code, ORIGIN))
        assert insn.size == len(code)
        assert "rip" in insn.op_str, (kind, insn.op_str)
        disp = int(insn.op_str.split("rip")[1].split("]")[0].replace(" ", ""), 0)
        assert ORIGIN + len(code) + disp == target, kind


def test_rip_relative_with_disp_and_trailing_code():
    asm = Assembler(ORIGIN)
    asm.nop()
    asm.load(Reg.r9, Mem(rip_target=ORIGIN + 0x3000, disp=16))
    code = asm.finish()
    insn = list(_md.disasm(code, ORIGIN))[1]
    disp = int(insn.op_str.split("rip")[1].split("]")[0].replace(" ", ""), 0)
    assert insn.address + insn.size + disp == ORIGIN + 0x3010


@pytest.mark.parametrize("reg", REGS, ids=lambda r: r.name)
def test_register_forms(reg):
    other = Reg.r11 if reg != Reg.r11 else Reg.rdx
    assert one(lambda a: a.add_imm(reg, 0x1000)) == f"add {reg.name}, 0x1000"
    assert one(lambda a: a.add_imm(reg, -16)) == f"add {reg.name}, -0x10"
    assert one(lambda a: a.add_reg(reg, other)) == f"add {reg.name}, {other.name}"
    assert one(lambda a: a.cmp_imm(reg, 7)) == f"cmp {reg.name}, 7"
    assert one(lambda a: a.test(reg, other)) == f"test {reg.name}, {other.name}"
    assert one(lambda a: a.mov_reg(reg, other)) == f"mov {reg.name}, {other.name}"
    assert one(lambda a: a.push(reg)) == f"push {reg.name}"
    assert one(lambda a: a.call_reg(reg)) == f"call {reg.name}"


def test_xor32_and_push_imm():
    assert one(lambda a: a.xor32(Reg.rax, Reg.rax)) == "xor eax, eax"
    assert one(lambda a: a.xor32(Reg.r10, Reg.r10)) == "xor r10d, r10d"
    assert one(lambda a: a.push_imm(0)) == "push 0"
    assert one(lambda a: a.push_imm(-1)) == "push -1"


def test_single_byte_and_system_forms():
    assert one(lambda a: a.ret()) == "ret"
    assert one(lambda a: a.syscall()) == "syscall"
    assert one(lambda a: a.ud2()) == "ud2"
    assert one(lambda a: a.hlt()) == "hlt"
    assert one(lambda a: a.int3()) == "int3"
    assert one(lambda a: a.nop()) == "nop"


@pytest.mark.parametrize("cond", list(Cond), ids=lambda c: c.name)
def test_jumps_forward_and_backward(cond):
    asm = Assembler(ORIGIN)
    back = Label()
    asm.bind(back)
    asm.nop()
    fwd = Label()
    asm.jcc(cond, fwd)
    asm.jmp(back)
    asm.nop()
    asm.bind(fwd)
    asm.ret()
    code = asm.finish()
    insns = list(_md.disasm(code, ORIGIN))
    assert [i.mnemonic for i in insns][1:3] == [f"j{_CAPSTONE_CC[cond]}", "jmp"]
    assert insns[1].size == 6 and insns[2].size == 5          # always rel32
    assert int(insns[1].op_str, 0) == insns[4].address         # to the ret
    assert int(insns[2].op_str, 0) == ORIGIN                   # back to the start


_CAPSTONE_CC = {Cond.o: "o", Cond.no: "no", Cond.b: "b", Cond.ae: "ae", Cond.e: "e", Cond.ne: "ne",
                Cond.be: "be", Cond.a: "a", Cond.s: "s", Cond.ns: "ns", Cond.l: "l", Cond.ge: "ge",
                Cond.le: "le", Cond.g: "g"}


def test_call_rel_reaches_absolute_target():
    asm = Assembler(ORIGIN)
    asm.nop()
    asm.call_rel(ORIGIN - 0x20)
    insn = list(_md.disasm(asm.finish(), ORIGIN))[1]
    assert insn.mnemonic == "call" and int(insn.op_str, 0) == ORIGIN - 0x20


def test_unbound_label_and_out_of_range_are_refused():
    asm = Assembler(ORIGIN)
    asm.jmp(Label())
    with pytest.raises(ValueError, match="never bound"):
        asm.finish()
    with pytest.raises(ValueError, match="32 bits"):
        Assembler(ORIGIN).add_imm(Reg.rax, 1 << 31)
    asm = Assembler(ORIGIN)
    asm.load(Reg.rax, rip(ORIGIN + (1 << 33)))
    with pytest.raises(ValueError, match="rel32"):
        asm.finish()
