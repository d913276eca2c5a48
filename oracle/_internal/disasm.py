"""Annotated disassembly of a compiled image: which machine code each step became.

For reading divergence reports and for debugging the code generator: `disassemble(build, 0,
program)` lists the text with each step's line of the text encoding above its instructions;
`disassemble_build(build)` does every well-formed image. `step_at(info, address)` maps an
instruction address (a fault's rip) back to the step's index in `walk_steps` order.
"""
from __future__ import annotations

import io

import capstone
from elftools.elf.elffile import ELFFile

from ..encoding import format_step
from ..program import Program, walk_steps
from .codegen import Build, ImageInfo


def step_at(info: ImageInfo, address: int) -> int | None:
    """Index (walk_steps order) of the step whose code holds link-time `address`, or None."""
    for index, (start, end) in enumerate(info.step_spans):
        if start <= address < end:
            return index
    return None


def _text(build: Build, index: int) -> tuple[int, bytes]:
    info = build.info[index]
    elf = ELFFile(io.BytesIO(build.images[info.path]))
    for segment in elf.iter_segments():
        if segment["p_type"] == "PT_LOAD" and segment["p_vaddr"] <= info.entry < segment["p_vaddr"] + segment["p_filesz"]:
            return segment["p_vaddr"], segment.data()
    raise ValueError(f"image {index}: no PT_LOAD holds the entry point {info.entry:#x}")


def disassemble(build: Build, index: int = 0, program: Program | None = None) -> str:
    """The code of image `index` from its entry to the end of its generated code, one
    instruction a line (`address: bytes  mnemonic operands`), each step's text above its code
    when `program` is given."""
    info = build.info[index]
    vaddr, data = _text(build, index)
    end = max((e for _, e in info.step_spans), default=info.entry)
    steps = list(walk_steps(program.images[index].steps)) if program is not None else []
    starts = {start: i for i, (start, _) in enumerate(info.step_spans)}
    md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    lines = [f"; {info.path}: {info.etype}, entry {info.entry:#x}, table {info.table_addr:#x}, "
             f"ret gadget {info.ret_gadget:#x}"]
    code = data[info.entry - vaddr:]
    for insn in md.disasm(code, info.entry):
        if insn.address in starts:
            i = starts[insn.address]
            label = format_step(steps[i]) if i < len(steps) else f"step {i}"
            lines.append(f"; step {i}: {label}")
        lines.append(f"{insn.address:#010x}: {insn.bytes.hex():<22} {insn.mnemonic} {insn.op_str}".rstrip())
        if insn.address + insn.size >= end and insn.mnemonic == "ud2":
            break
    return "\n".join(lines)


def disassemble_build(build: Build, program: Program | None = None) -> str:
    """`disassemble` of every image of the build, one after another."""
    return "\n\n".join(disassemble(build, index, program) for index in range(len(build.info))
                       if build.info[index].mutation is None)
