"""User faults: the signal, si_code and si_addr Linux gives, and the process's wait status."""
from __future__ import annotations

from forkspec.specs.abi import SiCode, Signal as Sig

from .asm import TEXT, Asm, image
from .helpers import of, run_images, run_text


def signal_of(trace):
    [signal] = of(trace, "Signal")
    return signal.signo, signal.si_code, signal.si_addr


def test_unmapped_read_is_maperr_at_the_address():
    trace, _ = run_text("load(0x7ffffffff000)")
    assert signal_of(trace) == (Sig.SIGSEGV, SiCode.SEGV_MAPERR, 0x7FFF_FFFF_F000)
    assert of(trace, "Exit")[0].status == 0x0B


def test_write_to_text_and_read_of_prot_none_are_accerr():
    assert signal_of(run_text("store(0x400000, 1)")[0]) == (Sig.SIGSEGV, SiCode.SEGV_ACCERR, 0x40_0000)
    trace, _ = run_text("r1 = mmap(0, 0x1000, none, private|anon)\nload(r1)")
    base = of(trace, "Syscall")[0].result
    assert signal_of(trace) == (Sig.SIGSEGV, SiCode.SEGV_ACCERR, base)


def test_fetch_from_a_data_page_is_accerr_at_the_jump_target():
    trace, _ = run_text("r1 = mmap(0, 0x1000, rw, private|anon)\nfetch(r1+0x10)")
    base = of(trace, "Syscall")[0].result
    assert signal_of(trace) == (Sig.SIGSEGV, SiCode.SEGV_ACCERR, base + 0x10)


def test_call_to_null_is_maperr_at_zero():
    assert signal_of(run_text("fetch(0)")[0]) == (Sig.SIGSEGV, SiCode.SEGV_MAPERR, 0)


def test_non_canonical_address_is_si_kernel_with_address_zero():
    assert signal_of(run_text("load(0x800000000000)")[0]) == (Sig.SIGSEGV, SiCode.SI_KERNEL, 0)


def test_privileged_and_invalid_instructions():
    hlt = run_images({"i0": image(Asm().raw(b"\xf4").assemble())})
    assert signal_of(hlt) == (Sig.SIGSEGV, SiCode.SI_KERNEL, 0)
    ud2 = run_images({"i0": image(Asm().raw(b"\x0f\x0b").assemble())})
    assert signal_of(ud2) == (Sig.SIGILL, 2, TEXT)                  # ILL_ILLOPN at the instruction
    assert of(ud2, "Exit")[0].status == Sig.SIGILL


def test_file_page_beyond_eof_is_sigbus_on_touch():
    trace, _ = run_text("""
r1 = execve(1)
exit(0)
image 1 (exec, split, mutation=load-offset-beyond-eof):
exit(0x28)
""")
    signo, code, _ = signal_of(trace)
    assert (signo, code) == (Sig.SIGBUS, SiCode.BUS_ADRERR)
    assert of(trace, "Exit")[-1].status == Sig.SIGBUS


def test_unknown_syscall_is_enosys_and_runaway_loop_is_inconclusive():
    from forkspec.specs.trace import Budget
    trace = run_images({"i0": image(Asm().sys(500).raw(b"\xeb\xfe").assemble())}, budget=Budget(instructions=100_000))
    assert of(trace, "Syscall")[0].result == -38
    assert trace.inconclusive is not None and "instruction budget" in trace.inconclusive.reason
