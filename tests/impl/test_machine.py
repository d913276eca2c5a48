"""Unicorn facts the kernel is built on, pinned: ring 3 via iretq, the syscall hook, faults
(many in one run), TLB staleness, and stale translated code after frame reuse."""
from __future__ import annotations

from unicorn.x86_const import UC_X86_REG_CS, UC_X86_REG_RIP, UC_X86_REG_SS

from forkspec.impl.frames import FrameTable
from forkspec.impl.machine import PTE_NX, PTE_P, PTE_RW, PTE_US, Machine
from forkspec.impl.mm import AddressSpace
from forkspec.specs.abi import Nr, SiCode, Signal as Sig
from forkspec.specs.profiles import LEVITATE

from .asm import DATA, Asm, image
from .helpers import of, run_images

CODE = 0x40_0000


def _space_with_code(code: bytes):
    machine = Machine(16)
    frames = FrameTable(machine)
    space = AddressSpace(machine, frames, frozenset(), LEVITATE)
    space.map_fresh(CODE, CODE + 0x1000, PTE_P | PTE_US)
    space.map_fresh(DATA, DATA + 0x1000, PTE_P | PTE_US | PTE_RW | PTE_NX)
    pa = space.user_pa(CODE, False)
    machine.mem[pa:pa + len(code)] = code
    machine.load_cr3(space.root)
    return machine, space


def _regs(rip: int, **values) -> list[int]:
    from forkspec.impl.machine import FRAME_NAMES
    regs = [0] * 18
    regs[FRAME_NAMES.index("rip")] = rip
    regs[FRAME_NAMES.index("rflags")] = 0x202
    for name, value in values.items():
        regs[FRAME_NAMES.index(name)] = value
    return regs


def test_boot_enters_ring_3_through_iretq():
    machine = Machine(16)
    assert machine.uc.reg_read(UC_X86_REG_CS) & 3 == 3
    assert machine.uc.reg_read(UC_X86_REG_SS) & 3 == 3


def test_syscall_hook_sees_ring_3_and_rip_advances_past_it():
    code = Asm(CODE).syscall().raw(b"\xeb\xfe").assemble()       # syscall; jmp $
    machine, _ = _space_with_code(code)
    seen = []

    def on_syscall(uc):
        seen.append((uc.reg_read(UC_X86_REG_RIP), uc.reg_read(UC_X86_REG_CS) & 3))
        uc.emu_stop()
    machine.syscall_handler = on_syscall
    machine.run(_regs(CODE), 100)
    assert seen == [(CODE, 3)]
    assert machine.uc.reg_read(UC_X86_REG_RIP) == CODE + 2


def test_second_fault_without_context_restore_arrives_as_double_fault():
    code = Asm(CODE).load("rax", "rbx").raw(b"\xeb\xfe").assemble()
    machine, _ = _space_with_code(code)
    vectors = []

    def on_interrupt(uc, vector, cr2):
        vectors.append(vector)
        uc.emu_stop()
    machine.interrupt_handler = on_interrupt
    for i in range(2):
        machine.faulted = False            # skip the kernel's context restore on purpose
        machine.run(_regs(CODE, rbx=0x1000_0000 + i * 0x1000), 100)
    assert vectors == [14, 8]


def test_many_faults_in_one_machine_with_context_restore():
    code = Asm(CODE).load("rax", "rbx").raw(b"\xeb\xfe").assemble()
    machine, _ = _space_with_code(code)
    seen = []

    def on_interrupt(uc, vector, cr2):
        seen.append((vector, cr2))
        uc.emu_stop()
    machine.interrupt_handler = on_interrupt
    for i in range(50):
        machine.run(_regs(CODE, rbx=0x1000_0000 + i * 0x1000), 100)
    assert seen == [(14, 0x1000_0000 + i * 0x1000) for i in range(50)]


def test_stale_tlb_entry_survives_a_pte_change_until_flushed():
    code = Asm(CODE).load("rax", "rbx").syscall().assemble()
    machine, space = _space_with_code(code)
    events = []
    machine.syscall_handler = lambda uc: (events.append("syscall"), uc.emu_stop())
    machine.interrupt_handler = lambda uc, v, cr2: (events.append(("fault", v, cr2)), uc.emu_stop())
    machine.run(_regs(CODE, rbx=DATA), 100)
    table = space.page_table(DATA, False)
    machine.write_u64(table + 8 * ((DATA >> 12) & 511), 0)     # unmap without a flush
    machine.run(_regs(CODE, rbx=DATA), 100)
    machine.flush_tlb()
    machine.run(_regs(CODE, rbx=DATA), 100)
    assert events == ["syscall", "syscall", ("fault", 14, DATA)]


def test_reused_code_frames_never_run_stale_translations():
    # Every run reuses the same frames for the text; stale translated code would exit 1 each time.
    statuses = []
    for code in (1, 2, 3, 1, 5):
        trace = run_images({"i0": image(Asm().exit(code).assemble())})
        statuses.append(of(trace, "Exit")[0].status >> 8)
    assert statuses == [1, 2, 3, 1, 5]


def test_forty_faulting_children_in_one_run():
    a = Asm().mov("r12", 40)
    a.label("loop").sys(Nr.fork).test_rax().jnz("parent")
    a.mov("rbx", 0x10).load("rax", "rbx")                      # child: fault on page 0
    a.label("parent").sys(Nr.wait4, 2**64 - 1, 0, 0, 0)
    a.raw(b"\x49\xff\xcc")                                      # dec r12
    a.jnz("loop").exit(0)
    trace = run_images({"i0": image(a.assemble())})
    signals = of(trace, "Signal")
    assert len(signals) == 40
    assert all((s.signo, s.si_code, s.si_addr) == (Sig.SIGSEGV, SiCode.SEGV_MAPERR, 0x10) for s in signals)
    assert of(trace, "Exit")[-1].status == 0
