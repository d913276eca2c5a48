"""execve (success and each malformation class) and user memory accesses (faults, si_code,
si_addr, straddling pages, growsdown mappings, write(2)) against linux-facts.md."""
from __future__ import annotations

import pytest

from forkspec.model import exec as mexec
from forkspec.model import memory, mm
from forkspec.model.state import Fault, Killed
from forkspec.oracle._internal.elf import MUTATIONS, PF_R, PF_W, PF_X, Segment, apply_mutation, write_elf
from forkspec.specs.abi import (MAP_FIXED, MAP_GROWSDOWN, PAGE_SIZE, PROT_EXEC, PROT_READ, PROT_WRITE, U64,
                                Errno, SiCode, Signal)
from forkspec.specs.profiles import LEVITATE, LEVITATE_STACK_TOP, levitate_stack_range
from forkspec.specs.trace import Layout

from .helpers import ANON, IMAGE, LINUX_VVAR, PID, err, levitate_state, linux_state, mmap, rights

LO, HI = levitate_stack_range()


def _layout(image: bytes, bias: int = 0) -> Layout:
    parsed = mexec.parse(image)
    end = (parsed.end + bias + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1) if not isinstance(parsed, int) else 0
    return Layout(regions=(("stack", LO, HI), ("tls", LEVITATE_STACK_TOP, LEVITATE_STACK_TOP + PAGE_SIZE)),
                  brk=end, load_bias=bias, entry_sp=HI - 0x100)


def _execve(image: bytes):
    state = levitate_state()
    return state, mexec.execve(state, mexec.ExecveArgs(PID, 1, image), _layout(image))


@pytest.mark.parametrize("name", sorted(MUTATIONS), ids=[f"facts-execve-{n}" for n in sorted(MUTATIONS)])
def test_each_malformation_class(name):
    expected = MUTATIONS[name].expected
    image = apply_mutation(name, IMAGE)
    state, result = _execve(image)
    if expected == "ENOEXEC":
        assert result.outcome == err(Errno.ENOEXEC)
        assert result.state is state                                        # caller intact
    elif expected == "killed":
        assert isinstance(result.outcome, Killed)
    else:
        assert result.outcome == 0
        entry = mexec.entry_point(image, 0)
        fault = memory.access_fault(result.state, PID, entry, 1, memory.EXEC)
        if expected == "runs":
            assert fault is None
        elif expected == "SIGSEGV at entry":
            assert fault is not None and fault.signo == Signal.SIGSEGV and fault.si_addr == entry
        else:
            assert fault == Fault(Signal.SIGBUS, SiCode.BUS_ADRERR, entry)


def test_execve_missing_image_enoent_caller_intact_facts_execve_missing():
    state = levitate_state()
    result = mexec.execve(state, mexec.ExecveArgs(PID, 7, None), None)
    assert result.outcome == err(Errno.ENOENT) and result.state is state


def test_execve_shebang_enoent_facts_execve_missing_interpreter():
    assert _execve(b"#!/nonexistent\n")[1].outcome == err(Errno.ENOENT)


def test_execve_success_leaves_nothing_of_the_old_space():
    state = mmap(levitate_state(), 0, 0x1000, 3, ANON, pick=0x1000_0000_0000).state
    result = mexec.execve(state, mexec.ExecveArgs(PID, 1, IMAGE), _layout(IMAGE))
    assert result.outcome == 0 and result.allowed
    assert rights(result.state, 0x1000_0000_0000) is None
    assert rights(result.state, 0x40_0000) == PROT_READ | PROT_EXEC


def test_bss_tail_zeroed_and_bss_pages_rw():
    data = b"\x11" * 0x10
    image = write_elf([Segment(0x40_0000, b"\xc3", 1, PF_R | PF_X), Segment(0x40_1000, data, 0x1800, PF_R | PF_W)],
                      0x40_0000, trailer=b"\xaa" * 32)
    state = mexec.execve(levitate_state(), mexec.ExecveArgs(PID, 1, image), _layout(image)).state
    assert memory.load(state, PID, 0x40_1000).outcome.value == int.from_bytes(b"\x11" * 8, "little")
    assert memory.load(state, PID, 0x40_1010).outcome.value == 0                   # the 0xAA trailer is zeroed


def test_layout_must_match_levitate():
    layout = _layout(IMAGE)
    bad = Layout(regions=layout.regions, brk=layout.brk + PAGE_SIZE, entry_sp=layout.entry_sp)
    result = mexec.execve(levitate_state(), mexec.ExecveArgs(PID, 1, IMAGE), bad)
    assert not result.allowed


# --- memory -----------------------------------------------------------------------------------

@pytest.mark.parametrize("addr,code", [(0, SiCode.SEGV_MAPERR), (0x7FFF_FFFF_F000, SiCode.SEGV_MAPERR),
                                       (0xFFFF_8000_0000_0000, SiCode.SEGV_MAPERR),
                                       (0xFFFF_FFFF_FF60_0000, SiCode.SEGV_MAPERR)],
                         ids=["facts-faults-null", "facts-faults-task-size", "facts-faults-kernel-half",
                              "facts-faults-vsyscall-read"])
def test_unmapped_reads_maperr_at_address(addr, code):
    assert memory.load(levitate_state(), PID, addr).outcome == Fault(Signal.SIGSEGV, code, addr)


def test_non_canonical_is_si_kernel_addr_0_facts_faults_non_canonical():
    assert memory.load(levitate_state(), PID, 0x8000_0000_0000).outcome == Fault(Signal.SIGSEGV, 0x80, 0)


def test_write_text_accerr_and_exec_data_accerr_facts_faults_accerr():
    state = levitate_state()
    assert memory.store(state, PID, 0x40_0000, 1).outcome == Fault(Signal.SIGSEGV, SiCode.SEGV_ACCERR, 0x40_0000)
    assert memory.fetch(state, PID, 0x40_1000).outcome == Fault(Signal.SIGSEGV, SiCode.SEGV_ACCERR, 0x40_1000)
    assert memory.fetch(state, PID, 0x40_0000).outcome.value == 0xC3


def test_straddling_access_faults_at_second_page_and_writes_nothing():
    state = mmap(levitate_state(), 0, 0x1000, 3, ANON, pick=0x1000_0000_0000).state
    addr = 0x1000_0000_0FFC
    result = memory.store(state, PID, addr, U64)
    assert result.outcome == Fault(Signal.SIGSEGV, SiCode.SEGV_MAPERR, 0x1000_0000_1000)
    assert memory.load(result.state, PID, addr, 4).outcome.value == 0
    state = mmap(state, 0x1000_0000_1000, 0x1000, 3, ANON | MAP_FIXED).state
    state = memory.store(state, PID, addr, 0x1122_3344_5566_7788).state
    assert memory.load(state, PID, addr).outcome.value == 0x1122_3344_5566_7788
    assert memory.load(state, PID, 0x1000_0000_1000, 4).outcome.value == 0x1122_3344


def test_growsdown_mapping_grows_on_fault_below_it():
    state = mmap(levitate_state(), 0x2000_0000_0000, 0x1000, 3, ANON | MAP_GROWSDOWN | MAP_FIXED).state
    result = memory.store(state, PID, 0x2000_0000_0000 - 0x3000, 5)
    assert result.outcome is None
    assert rights(result.state, 0x2000_0000_0000 - 0x3000) == PROT_READ | PROT_WRITE
    too_far = memory.store(state, PID, 0x2000_0000_0000 - (9 << 20), 5)
    assert too_far.outcome.si_code == SiCode.SEGV_MAPERR


@pytest.mark.parametrize("fd,addr,length,expected", [
    (3, 0x40_1000, 4, err(Errno.EBADF)),
    (0, 0x40_1000, 4, err(Errno.EBADF)),
    (1, 0x7FFF_FFFF_F000, 0, 0),
    (1, 0x7FFF_FFFF_F001, 0, err(Errno.EFAULT)),
    (1, 0x1000_0000_0000, 4, err(Errno.EFAULT)),
    (1, 0x40_1000, 4, 4),
    (2, 0x40_2FFE, 8, 2),
], ids=["ebadf-3", "ebadf-stdin", "len0-at-user-max", "len0-past-user-max", "unmapped", "ok", "short"])
def test_write(fd, addr, length, expected):
    result = memory.write(levitate_state(), memory.WriteArgs(PID, fd, addr, length))
    assert result.outcome.result == expected
    if expected == 4:
        assert result.outcome.data == b"data"


def test_linux_vvar_odd_pages_sigbus_measured():
    from .helpers import LINUX_VVAR, linux_state
    state = linux_state()
    assert memory.load(state, PID, LINUX_VVAR[0]).outcome.masked
    assert memory.load(state, PID, LINUX_VVAR[0] + 0x1000).outcome == Fault(Signal.SIGBUS, SiCode.BUS_ADRERR,
                                                                          LINUX_VVAR[0] + 0x1000)


def test_write_partly_readable_allows_pipe_chunking_or_prefix():
    state = levitate_state()
    args = memory.WriteArgs(PID, 1, 0x40_2000, 0x2000)            # one readable page, then unmapped
    assert memory.write(state, args, 0x1000).allowed
    assert memory.write(state, args, (-int(Errno.EFAULT)) & U64).allowed
    assert not memory.write(state, args, 0x1800).allowed
    assert memory.write(state, args, 0x800).outcome.data == memory.user_bytes(state, PID, 0x40_2000, 0x800)[0]


def test_linux_mmap_base_is_the_top_of_vdso_vvar():
    from .helpers import LINUX_VDSO, linux_state
    state = linux_state()
    assert state.space_of(PID).mmap_base == LINUX_VDSO[1]
    first = mmap(state, 0, 0x1000, 3, ANON, pick=0x7FFF_F7FF_6000)
    assert first.allowed


def test_access_outcome_runs_on_z3_terms_and_agrees_with_access_fault():
    # The refinement proofs use access_outcome on symbolic states; concretely it must classify
    # like access_fault (0 / SEGV_MAPERR / SEGV_ACCERR) for accesses inside one page.
    import z3

    from forkspec.model import memory, symbolic
    from forkspec.specs.profiles import LINUX as LINUX_PROFILE

    sym_state, _ctx = symbolic.fresh_state(LINUX_PROFILE, (1,))
    outcome = memory.access_outcome(sym_state, 1, z3.BitVec("va", 64), 8, memory.READ)
    assert isinstance(outcome, z3.ExprRef)
    state = linux_state()
    for addr in (0x40_0000, 0x40_1000, 0x1000, LINUX_VVAR[0]):
        for want in (memory.READ, memory.WRITE):
            fault = memory.access_fault(state, PID, addr, 8, want)
            assert memory.access_outcome(state, PID, addr, 8, want) == (0 if fault is None else fault.si_code)
