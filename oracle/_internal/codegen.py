"""Compile a Program into static x86-64 ELF images: the bytes every backend runs.

`compile_program(program) -> Build` builds one ELF file per image. The generated code's memory
behaviour is a contract: the model replays it exactly. Here it is.

Image layout (link-time addresses; an ET_DYN image is linked at 0 and every address below moves
by the load bias the kernel picks):
- text (PT_LOAD, rights `ElfSpec.text`, normally R-X) at `ElfSpec.base` ("exec") or 0 ("dyn").
  Its first byte is a `ret` (`ImageInfo.ret_gadget`, what fetch probes may call), then int3
  padding to 16 bytes, then the code; `ImageInfo.entry` is the first instruction of the code.
- data (PT_LOAD, RW): the 8 bytes b"forkspec"; for "exec" images, one argv array
  `{path, NULL}` (16 bytes) per execve target; the NUL-terminated paths `image_path(k)`; then,
  8-aligned, the result table.
  `layout` "split": data starts on the page after the text's last page. "shared": the text is
  padded with int3 to one page past the code plus 0x40 bytes, and data starts (16-aligned) right
  after it, so the text's tail and the data's head share a page; Linux maps that page with the
  later segment's rights (rw-), so no generated code lives on it. "single": one RWX PT_LOAD holds
  text then data.
- bss: `memsz = filesz + ElfSpec.bss` for the data segment (the single segment for "single").
  When bss >= the table's size the table lives at the start of the bss, otherwise in the file as
  zeros. With bss > 0 the file carries up to 64 bytes of 0xAA after the data (in no segment),
  up to the end of that file page: a correct loader zeroes them (they are inside the bss page).
- PT_GNU_STACK with `ElfSpec.stack`'s rights unless it is None.
- `ElfSpec.mutation` (images after the first only) is applied to the finished file;
  `ImageInfo.segments` and the code facts describe the file before the mutation.

`ImageInfo.step_spans`, `syscall_ends` and `tail_addrs` say where each step's code lies, so that
a fault's instruction pointer maps back to its step (oracle/_internal/disasm.py prints them).

Result table (`ImageInfo.table_addr`): 8-byte slots; rN lives at table_addr + 8*N. Slot 0 is
wait4's status word. The table starts zeroed. Slot count = max(1, highest result number + 1).
A table that fits in a page (with 16 bytes to spare) starts on the next page rather than reach
into the last 16 bytes of a page (the generator's stores 8 bytes below a mapping stay off it).

Code, per step, in program order (nothing is kept in registers across steps, and no stack is
used except as noted):
- An argument: a constant is an immediate; `Ref(n, off)` is the 8-byte load of slot n plus off
  (wrapping at 64 bits).
- A syscall step: rax = nr; rdi, rsi, rdx, r10, r8, r9 = its arguments (argument registers a
  call does not use are set to 0, so a trace's six argument values are deterministic);
  `syscall`; then, if the step names a result rN, the 8-byte store of rax into slot N.
  - mmap(addr, length, prot, flags): fd (r8) = -1, offset (r9) = 0.
  - wait4(pid, options): rsi = &slot0, r10 = 0 (no rusage). After the slot store (if any): if
    rax > 0 (signed), `report(wstatus, status)` where status is the 32-bit value at slot 0,
    zero-extended (wait4 writes 4 bytes; the upper half of slot 0 is never written by wait4).
  - execve(k): rdi = &"i{k}", rdx (envp) = a pointer to a NULL word. "exec" images: rsi (argv)
    = the 16-byte array {path, NULL} in data. "dyn" images: the code pushes 0 and the path's
    address on the stack and passes rsp as argv and rsp+8 as envp (position independence without
    relocations; the stack is kernel-owned, its contents masked), then pops them (add rsp, 16)
    if execve returns.
  - clone(flags): rdi = flags, rsi (new stack) = rdx = r10 = r8 = 0.
  - exit(code) is nr 60, exit_group(code) nr 231; a `ud2` follows (never reached).
- load(addr): rsi = addr; rdx = the 8-byte load at [rsi]; if rN, store rdx into slot N; then
  report(loaded, addr, value).
- store(addr, value): rdi = addr; rsi = value; the 8-byte store of rsi at [rdi].
- fetch(addr): rax = addr; `call rax` (pushes an 8-byte return address on the stack; a `ret`
  at addr comes back, anything else runs there).
- observe: report(observe, tag); tag = 0, 1, 2, ... numbers the image's observe steps in
  `walk_steps` order (depth first, a fork's child list before its parent list).
- report(kind, a, b): eax = specs.abi.REPORT_NR, rdi = kind, rsi = a, rdx = b; `syscall`. Its
  return value is ignored (Linux gives -ENOSYS, impl 0).
- fork/vfork/clone: the syscall, the slot store if rN (the child stores 0, the parent the pid —
  with vfork the child's store happens first, in the shared memory), then rax == 0 runs the
  child's list, otherwise the parent's list.
- A step list that runs off its end does exit_group(0).
"""
from __future__ import annotations

from dataclasses import dataclass

from ...specs.abi import PAGE_SIZE, REPORT_NR, U64, Nr, ReportKind
from ...specs.trace import image_path
from ..errors import InvalidProgram
from ..program import EXIT_OPS, FORK_OPS, ElfSpec, Image, Program, Ref, Step, walk_steps
from .elf import ET_DYN, ET_EXEC, PF_R, PF_W, PF_X, Segment, apply_mutation, write_elf
from .x86 import Assembler, Cond, Label, Mem, Reg, rip

ARG_REGS = (Reg.rdi, Reg.rsi, Reg.rdx, Reg.r10, Reg.r8, Reg.r9)
TEXT_HEAD = 16          # ret gadget + int3 padding before the entry point
SHARED_TAIL = 0x40      # "shared" layout: text bytes on the page the data segment starts on
TRAILER_MAX = 64        # bytes of 0xAA after the data when the image has a bss
DATA_MARKER = b"forkspec"   # the data's first 8 bytes: its file part is never empty
TABLE_GUARD = 16        # a table that fits in a page never uses the last 16 bytes of its page


@dataclass(frozen=True)
class ImageInfo:
    path: str                                   # specs.trace.image_path(k)
    etype: str                                  # "exec" | "dyn"
    table_addr: int                             # link-time address of the result table
    ret_gadget: int                             # link-time address of a `ret` in the text
    segments: tuple[tuple[int, int, int, int], ...]   # (vaddr, memsz, filesz, PF_* flags) as written
    entry: int                                  # link-time entry point
    mutation: str | None = None                 # ElfSpec.mutation applied to the file, if any
    slots: int = 1                              # number of 8-byte slots in the result table
    # [start, end) link-time addresses of each step's code, in walk_steps order (the implicit
    # exit_group(0) ending a list belongs to no step): maps a faulting
    # instruction pointer back to its step.
    step_spans: tuple[tuple[int, int], ...] = ()
    # Per step (walk_steps order): the address right after the step's first `syscall`
    # instruction (where a fault lands when the call unmapped or protected the code that
    # follows), or 0 for a step that makes no syscall.
    syscall_ends: tuple[int, ...] = ()
    # The implicit exit_group(0) of each step list that runs off its end, in the order the lists
    # are laid out (a list's code, then its fork's child list, then the parent list).
    tail_addrs: tuple[int, ...] = ()
    # For each entry of tail_addrs, the address right after its `syscall` instruction.
    tail_syscall_ends: tuple[int, ...] = ()


@dataclass(frozen=True)
class Build:
    images: dict[str, bytes]                    # the run's path table: image_path(k) -> ELF bytes
    info: tuple[ImageInfo, ...]
    entry: str                                  # image_path(0)


def compile_program(program: Program) -> Build:
    """Compile every image of `program`; image 0 is the run's entry."""
    images: dict[str, bytes] = {}
    infos = []
    for index, image in enumerate(program.images):
        data, info = compile_image(index, image)
        images[info.path] = data
        infos.append(info)
    return Build(images=images, info=tuple(infos), entry=image_path(0))


def _rights_to_pf(rights: str) -> int:
    return (PF_R if "r" in rights else 0) | (PF_W if "w" in rights else 0) | (PF_X if "x" in rights else 0)


def _align(value: int, to: int) -> int:
    return (value + to - 1) // to * to


@dataclass(frozen=True)
class _Symbols:
    table: int
    paths: dict[int, int]       # execve target -> address of its path string
    argvs: dict[int, int]       # execve target -> address of its {path, NULL} array (exec only)
    null_word: int              # address of an 8-byte zero (envp); exec only


def compile_image(index: int, image: Image) -> tuple[bytes, ImageInfo]:
    """One image's ELF bytes and the facts the model needs about them."""
    spec = image.elf
    steps = tuple(walk_steps(image.steps))
    targets = sorted({s.args[0] for s in steps if s.op == "execve"})
    slots = max([1] + [s.result + 1 for s in steps if s.result is not None]
                + [a.result + 1 for s in steps for a in s.args if isinstance(a, Ref)])
    text_vaddr = spec.base if spec.etype == "exec" else 0
    entry = text_vaddr + TEXT_HEAD

    # Pass 1 measures the code (its length does not depend on data addresses), pass 2 emits it.
    probe = _Symbols(table=entry, paths={k: entry for k in targets}, argvs={k: entry for k in targets},
                     null_word=entry)
    code_len = len(_generate(image, spec, entry, probe))
    text_len = TEXT_HEAD + code_len
    if spec.layout == "shared":
        text_len = _align(text_len, PAGE_SIZE) + SHARED_TAIL
    text_end = text_vaddr + text_len
    data_vaddr = _align(text_end, PAGE_SIZE) if spec.layout == "split" else _align(text_end, 16)

    # Data contents: a marker, argv arrays and a NULL word (exec), paths, then the table.
    data = bytearray(DATA_MARKER)
    argvs: dict[int, int] = {}
    null_word = 0
    if spec.etype == "exec" and targets:
        for k in targets:
            argvs[k] = data_vaddr + len(data)
            data += bytes(16)                                # filled once the paths are placed
        null_word = argvs[targets[0]] + 8
    paths: dict[int, int] = {}
    for k in targets:
        paths[k] = data_vaddr + len(data)
        data += image_path(k).encode() + b"\0"
    for k in argvs:
        at = argvs[k] - data_vaddr
        data[at:at + 8] = paths[k].to_bytes(8, "little")
    data += bytes(_align(len(data), 8) - len(data))
    table_size = 8 * slots
    if (data_vaddr + len(data)) % PAGE_SIZE + table_size + TABLE_GUARD > PAGE_SIZE \
            and table_size + TABLE_GUARD <= PAGE_SIZE:
        data += bytes(_align(data_vaddr + len(data), PAGE_SIZE) - (data_vaddr + len(data)))
    table_addr = data_vaddr + len(data)
    if spec.bss < table_size:
        data += bytes(table_size)
    symbols = _Symbols(table=table_addr, paths=paths, argvs=argvs, null_word=null_word)
    code_layout: dict = {}
    code = _generate(image, spec, entry, symbols, code_layout)
    if len(code) != code_len:
        raise AssertionError("code length changed between passes")      # an encoder bug, not the user's
    text = bytearray(b"\xC3" + b"\xCC" * (TEXT_HEAD - 1)) + code
    text += b"\xCC" * (text_len - len(text))

    data_end = data_vaddr + len(data)
    trailer = b""
    if spec.bss:
        trailer = b"\xAA" * min(TRAILER_MAX, _align(data_end, PAGE_SIZE) - data_end)
    if spec.layout == "single":
        blob = bytes(text) + bytes(data_vaddr - text_end) + bytes(data)
        segments = [Segment(text_vaddr, blob, len(blob) + spec.bss, PF_R | PF_W | PF_X)]
    else:
        segments = [Segment(text_vaddr, bytes(text), len(text), _rights_to_pf(spec.text)),
                    Segment(data_vaddr, bytes(data), len(data) + spec.bss, PF_R | PF_W)]
    stack_flags = None if spec.stack is None else _rights_to_pf(spec.stack)
    elf = write_elf(segments, entry, ET_EXEC if spec.etype == "exec" else ET_DYN, stack_flags, trailer)
    if spec.mutation is not None:
        elf = apply_mutation(spec.mutation, elf)
    info = ImageInfo(
        path=image_path(index), etype=spec.etype, table_addr=table_addr, ret_gadget=text_vaddr,
        segments=tuple((s.vaddr, s.memsz, len(s.data), s.flags) for s in segments),
        entry=entry, mutation=spec.mutation, slots=slots, **code_layout)
    return elf, info


def _generate(image: Image, spec: ElfSpec, entry: int, symbols: _Symbols,
              layout: dict | None = None) -> bytes:
    gen = _Generator(Assembler(entry), spec, symbols)
    gen.steps(image.steps)
    if layout is not None:
        layout.update(step_spans=tuple(gen.spans), syscall_ends=tuple(gen.sysends), tail_addrs=tuple(gen.tails),
                      tail_syscall_ends=tuple(gen.tail_sysends))
    return gen.asm.finish()


class _Generator:
    def __init__(self, asm: Assembler, spec: ElfSpec, symbols: _Symbols) -> None:
        self.asm = asm
        self.spec = spec
        self.sym = symbols
        self.observe_tag = 0
        self.spans: list[tuple[int, int]] = []
        self.sysends: list[int] = []
        self.tails: list[int] = []
        self.tail_sysends: list[int] = []
        self.current: int | None = None            # index of the step being emitted

    def slot(self, n: int) -> Mem:
        return rip(self.sym.table + 8 * n)

    def arg(self, reg: Reg, arg: int | Ref) -> None:
        if isinstance(arg, Ref):
            self.asm.load(reg, self.slot(arg.result))
            offset = arg.offset & U64
            signed = offset - (1 << 64) if offset >> 63 else offset
            if -(1 << 31) <= signed < (1 << 31):
                if signed:
                    self.asm.add_imm(reg, signed)
            else:
                self.asm.mov_imm(Reg.r11, offset)
                self.asm.add_reg(reg, Reg.r11)
        else:
            self.asm.mov_imm(reg, arg)

    def zero(self, reg: Reg) -> None:
        self.asm.xor32(reg, reg)

    def store_result(self, step: Step, reg: Reg = Reg.rax) -> None:
        if step.result is not None:
            self.asm.store(self.slot(step.result), reg)

    def syscall(self, nr: int, args: list[int | Ref | Mem | None], step: Step) -> None:
        """Load args (None: leave as set by the caller; Mem: its address via lea), zero the
        rest, make the call and store the result."""
        for reg, value in zip(ARG_REGS, args):
            if isinstance(value, Mem):
                self.asm.lea(reg, value)
            elif value is not None:
                self.arg(reg, value)
        for reg in ARG_REGS[len(args):]:
            self.zero(reg)
        self.asm.mov_imm(Reg.rax, nr)
        self.asm.syscall()
        self._syscall_end()
        self.store_result(step)

    def _syscall_end(self) -> None:
        if self.current is not None and not self.sysends[self.current]:
            self.sysends[self.current] = self.asm.here

    def report(self, kind: ReportKind, a: Reg | int, b: Reg | int) -> None:
        # rsi/rdx first: they may be computed from registers the kind's mov would not touch.
        for reg, value in ((Reg.rsi, a), (Reg.rdx, b)):
            if isinstance(value, Reg):
                if value != reg:
                    self.asm.mov_reg(reg, value)
            else:
                self.asm.mov_imm(reg, value)
        self.asm.mov_imm(Reg.rdi, int(kind))
        self.asm.mov_imm(Reg.rax, REPORT_NR)
        self.asm.syscall()
        self._syscall_end()

    def steps(self, steps: tuple[Step, ...]) -> None:
        for step in steps:
            at = len(self.spans)
            self.spans.append((self.asm.here, 0))
            self.sysends.append(0)
            self.current = at
            self.step(step)
            if step.op not in FORK_OPS:
                self.spans[at] = (self.spans[at][0], self.asm.here)
        if not steps or (steps[-1].op not in EXIT_OPS and steps[-1].op not in FORK_OPS):
            self.current = None
            self.tails.append(self.asm.here)
            self.syscall(Nr.exit_group, [0], Step("exit_group", (0,)))
            self.tail_sysends.append(self.asm.here)       # syscall() ends with the instruction
            self.asm.ud2()

    def step(self, step: Step) -> None:
        asm = self.asm
        op, args = step.op, list(step.args)
        if op == "mmap":
            self.syscall(Nr.mmap, args + [(-1) & U64, 0], step)
        elif op in ("munmap", "mprotect", "brk", "getpid", "getppid", "sched_yield", "write"):
            self.syscall(Nr[op], args, step)
        elif op in EXIT_OPS:
            self.syscall(Nr[op], args, step)
            asm.ud2()
        elif op == "wait4":
            self.syscall(Nr.wait4, [args[0], self.slot(0), args[1], 0], step)
            skip = Label()
            asm.test(Reg.rax, Reg.rax)
            asm.jcc(Cond.le, skip)
            asm.load32(Reg.rsi, self.slot(0))
            self.report(ReportKind.wstatus, Reg.rsi, 0)
            asm.bind(skip)
        elif op == "execve":
            k = args[0]
            path = rip(self.sym.paths[k])
            if self.spec.etype == "exec":
                self.syscall(Nr.execve, [path, rip(self.sym.argvs[k]), rip(self.sym.null_word)], step)
            else:
                asm.push_imm(0)
                asm.lea(Reg.rdi, path)
                asm.push(Reg.rdi)
                asm.mov_reg(Reg.rsi, Reg.rsp)
                asm.lea(Reg.rdx, Mem(Reg.rsp, 8))
                self.syscall(Nr.execve, [None, None, None], step)
                asm.add_imm(Reg.rsp, 16)
        elif op in FORK_OPS:
            if op == "clone":
                self.syscall(Nr.clone, args, step)
            else:
                self.syscall(Nr[op], [], step)
            parent = Label()
            asm.test(Reg.rax, Reg.rax)
            asm.jcc(Cond.ne, parent)
            at = self.current if self.current is not None else len(self.spans) - 1
            self.spans[at] = (self.spans[at][0], asm.here)          # the fork's own code ends here
            self.steps(step.child or ())
            asm.bind(parent)
            self.steps(step.parent or ())
        elif op == "load":
            self.arg(Reg.rsi, args[0])
            asm.load(Reg.rdx, Mem(Reg.rsi))
            self.store_result(step, Reg.rdx)
            self.report(ReportKind.loaded, Reg.rsi, Reg.rdx)
        elif op == "store":
            self.arg(Reg.rdi, args[0])
            self.arg(Reg.rsi, args[1])
            asm.store(Mem(Reg.rdi), Reg.rsi)
        elif op == "fetch":
            self.arg(Reg.rax, args[0])
            asm.call_reg(Reg.rax)
        elif op == "observe":
            self.report(ReportKind.observe, self.observe_tag, 0)
            self.observe_tag += 1
        else:                                           # OPS and this dispatch must agree
            raise InvalidProgram(f"the code generator has no rule for step {op!r}")
