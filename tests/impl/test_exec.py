"""execve and the ELF loader: success, every malformation of oracle/_internal/elf.py with the
outcome Linux gives it, no frame leaked, ET_DYN placement, bss zeroing, shared pages."""
from __future__ import annotations

import pytest

from forkspec.impl.exec import ET_DYN_BASE
from forkspec.oracle._internal.elf import ET_DYN, MUTATIONS, PF_R, PF_W, PF_X, Segment, write_elf
from forkspec.specs.abi import Errno, Nr, ReportKind, SiCode, Signal as Sig
from forkspec.specs.profiles import LEVITATE_STACK_TOP

from .asm import DATA, TEXT, Asm, image
from .helpers import backend, of, run_images, run_text, syscalls


def test_execve_success_yields_syscall_then_exec_and_runs_the_new_image():
    trace, _ = run_text("""
r1 = mmap(0, 0x1000, rw, private|anon)
r2 = execve(1)
exit(1)
image 1 (exec, split):
exit(42)
""")
    kinds = [type(e).__name__ for e in trace.events]
    at = trace.events.index(syscalls(trace, Nr.execve)[0])
    assert trace.events[at].result == 0 and kinds[at + 1] == "Exec"
    assert of(trace, "Exit")[-1].status == 42 << 8
    layout = trace.events[at + 1].layout
    assert dict((name, (lo, hi)) for name, lo, hi in layout.regions)["tls"] == (LEVITATE_STACK_TOP, LEVITATE_STACK_TOP + 4096)


def test_execve_of_a_missing_image_is_enoent_with_the_caller_intact():
    trace, _ = run_text("""
r1 = mmap(0, 0x1000, rw, private|anon)
store(r1, 5)
r2 = execve(7)
load(r1)
exit(0)
""")
    assert syscalls(trace, Nr.execve)[0].result == -Errno.ENOENT
    assert [r.values[1] for r in of(trace, "Report") if r.kind == ReportKind.loaded] == [5]


@pytest.mark.parametrize("mutation", sorted(MUTATIONS))
@pytest.mark.parametrize("strategy", ["eager", "cow"])
def test_malformed_images_get_linux_answers_and_leak_nothing(mutation, strategy):
    trace, _ = run_text(f"""
r1 = execve(1)
exit(0)
image 1 (exec, split, mutation={mutation}):
exit(0x28)
""", strategy)
    expected = MUTATIONS[mutation].expected
    execs = syscalls(trace, Nr.execve)
    signals = of(trace, "Signal")
    if expected == "ENOEXEC":
        assert execs[0].result == -Errno.ENOEXEC and of(trace, "Exit")[-1].status == 0
    elif expected == "runs":
        assert execs[0].result == 0 and of(trace, "Exit")[-1].status == 0x28 << 8
    elif expected == "killed":
        assert execs == []
        assert [(s.signo, s.si_code, s.si_addr) for s in signals] == [(Sig.SIGSEGV, SiCode.SI_KERNEL, 0)]
        assert of(trace, "Exit")[-1].status == 0x0B
    elif expected == "SIGSEGV at entry":
        assert execs[0].result == 0 and len(signals) == 1 and signals[0].signo == Sig.SIGSEGV
        assert signals[0].si_code in (SiCode.SEGV_MAPERR, SiCode.SEGV_ACCERR)
    elif expected == "SIGBUS on touch":
        assert execs[0].result == 0
        assert [(s.signo, s.si_code) for s in signals] == [(Sig.SIGBUS, SiCode.BUS_ADRERR)]
    else:
        pytest.fail(f"unknown expectation {expected!r}")
    kernel = backend(strategy).last_kernel
    assert kernel.frames.free_count == kernel.frames.usable


def test_entry_image_refused_ends_inconclusive():
    trace = run_images({"i0": b"\x7fELF" + bytes(10)})
    assert trace.inconclusive is not None and "ENOEXEC" in trace.inconclusive.reason


def test_et_dyn_is_placed_at_the_fixed_base():
    code = Asm(0).exit(9).assemble()
    elf = write_elf([Segment(0, code, len(code), PF_R | PF_X)], 0, ET_DYN)
    trace = run_images({"i0": elf})
    assert trace.events[0].layout.load_bias == ET_DYN_BASE
    assert of(trace, "Exit")[0].status == 9 << 8


def test_bss_tail_of_the_last_file_page_is_zeroed():
    a = Asm().mov("rbx", DATA + 8).load("rax", "rbx").report_rax_loaded(DATA + 8).exit(0)
    elf = image(a.assemble(), b"data0123", bss=0x100) + b"\xaa" * 64     # junk after the data
    trace = run_images({"i0": elf})
    assert [r.values for r in of(trace, "Report")] == [(DATA + 8, 0)]


def test_segments_sharing_a_page_see_the_file_page_and_the_later_rights():
    text = Asm().mov("rbx", TEXT + 0x1000).load("rax", "rbx").report_rax_loaded(TEXT + 0x1000).exit(0).assemble()
    text = text + b"\xcc" * (0x1010 - len(text))                      # text runs into page 2
    elf = write_elf([Segment(TEXT, text, len(text), PF_R | PF_X),
                     Segment(TEXT + 0x1010, b"D" * 16, 16, PF_R | PF_W)], TEXT)
    trace = run_images({"i0": elf})
    assert [r.values[1] for r in of(trace, "Report")] == [0xCCCC_CCCC_CCCC_CCCC]


def test_initial_stack_is_the_linux_abi():
    # argc at rsp; argv[0] -> "i0"; AT_PAGESZ present in auxv.
    a = Asm().raw(b"\x48\x89\xe3")                                    # mov rbx, rsp
    a.load("rax", "rbx").report_rax_loaded(0)
    a.raw(b"\x48\x83\xc3\x08").load("rax", "rbx").raw(b"\x48\x8b\x00").report_rax_loaded(1)  # *argv[0]
    a.exit(0)
    trace = run_images({"i0": image(a.assemble())})
    values = [r.values[1] for r in of(trace, "Report")]
    assert values[0] == 1 and values[1] & 0xFFFFFF == int.from_bytes(b"i0\0", "little")


def test_et_dyn_entry_that_wraps_past_task_size_is_killed_after_the_point_of_no_return():
    # The only PT_LOAD sits at TASK_SIZE: the bias moves it to the ET_DYN base, and e_entry plus
    # that bias wraps to a kernel address: BAD_ADDR(elf_entry) kills the process.
    trace, _ = run_text("""
r1 = execve(1)
exit(0)
image 1 (dyn, single, mutation=load-above-task-size):
exit(0x28)
""")
    assert syscalls(trace, Nr.execve) == []
    assert [(s.signo, s.si_code, s.si_addr) for s in of(trace, "Signal")] == [(Sig.SIGSEGV, SiCode.SI_KERNEL, 0)]
