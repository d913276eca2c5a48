"""The code generator, checked by running its images natively on this Linux machine.

Reports are invisible natively (Linux answers -ENOSYS), so these tests make the program show
what it computed with write(): results live at known table slots (ET_EXEC link-time addresses).
"""
from __future__ import annotations

import os
import struct
import subprocess
import sys

import capstone
import pytest

from forkspec.oracle._internal.codegen import Build, ImageInfo, compile_program
from forkspec.oracle._internal.elf import PF_R, PF_W, PF_X
from forkspec.oracle.errors import InvalidProgram
from forkspec.oracle.program import ElfSpec, Image, Program, Ref, Step
from forkspec.specs.abi import (MAP_ANONYMOUS, MAP_PRIVATE, MAP_SHARED, PAGE_SIZE, PROT_READ, PROT_WRITE,
                                REPORT_NR, U64, Errno, Nr, ReportKind, neg_errno)
from forkspec.specs.trace import image_path

S = Step
RW = PROT_READ | PROT_WRITE
PRIV = MAP_PRIVATE | MAP_ANONYMOUS
SHARED = MAP_SHARED | MAP_ANONYMOUS

pytestmark = pytest.mark.skipif(sys.platform != "linux" or os.uname().machine != "x86_64",
                                reason="runs x86-64 Linux images natively")


def run_native(build: Build, tmp_path) -> tuple[int, bytes]:
    """Write the build's path table into tmp_path, run image 0 there; (returncode, stdout).
    returncode is negative for a signal, as subprocess reports it."""
    for path, data in build.images.items():
        file = tmp_path / path
        file.write_bytes(data)
        file.chmod(0o755)
    proc = subprocess.run([str(tmp_path / build.entry)], cwd=tmp_path, capture_output=True, timeout=20)
    return proc.returncode, proc.stdout


def program(*steps: Step, **elf) -> Program:
    return Program((Image(tuple(steps), ElfSpec(**elf)),))


def slot(build: Build, n: int, image: int = 0) -> int:
    return build.info[image].table_addr + 8 * n


def words(data: bytes) -> list[int]:
    return list(struct.unpack(f"<{len(data) // 8}Q", data))


def test_empty_program_exits_zero(tmp_path):
    assert run_native(compile_program(program()), tmp_path) == (0, b"")


@pytest.mark.parametrize("code", [0, 3, 255, 256, 300])
def test_exit_status(tmp_path, code):
    rc, _ = run_native(compile_program(program(S("exit", (code,)))), tmp_path)
    assert rc == code & 0xFF


def test_exit_group_and_unreached_steps(tmp_path):
    rc, out = run_native(compile_program(program(S("exit_group", (5,)), S("exit", (6,)))), tmp_path)
    assert (rc, out) == (5, b"")


def test_mmap_store_write_through_refs(tmp_path):
    prog = program(
        S("mmap", (0, 0x2000, RW, PRIV), result=1),
        S("store", (Ref(1, 0x1000), int.from_bytes(b"page two", "little"))),
        S("store", (Ref(1), int.from_bytes(b"page one", "little"))),
        S("write", (1, Ref(1, 0x1000), 8), result=2),
        S("write", (1, Ref(1), 8)),
        S("exit", (Ref(2, 1),)))                                  # 8 + 1
    rc, out = run_native(compile_program(prog), tmp_path)
    assert (rc, out) == (9, b"page twopage one")


def test_results_land_in_their_slots(tmp_path):
    prog = program(
        S("getpid", (), result=3),
        S("mmap", (0, 0, RW, PRIV), result=1),                    # EINVAL
        S("munmap", (0x1234, 0x1000), result=7),                  # EINVAL: unaligned
        S("brk", (0,), result=2),
        S("sched_yield", (), result=4))
    # Compile once to learn the table's address, then again with a step that writes it out.
    build2 = compile_program(Program((Image(prog.steps + (S("write", (1, 0, 8 * 8)),)),)))
    prog3 = Program((Image(prog.steps + (S("write", (1, slot(build2, 0), 8 * 8)),)),))
    build3 = compile_program(prog3)
    assert build3.info[0].table_addr == build2.info[0].table_addr   # same shape, same layout
    rc, out = run_native(build3, tmp_path)
    table = words(out)
    assert rc == 0 and len(table) == 8
    assert table[1] == neg_errno(Errno.EINVAL)
    assert table[7] == neg_errno(Errno.EINVAL)
    assert table[2] > 0x40_0000 and table[3] > 1 and table[4] == 0
    assert table[5] == table[6] == table[0] == 0                  # untouched slots stay zero


def test_ref_offsets_wrap_at_64_bits(tmp_path):
    # r1 = getpid; exit(r1 + (2**64 - pid)) would be 0; use the slot of a store instead.
    prog = program(
        S("mmap", (0, 0x1000, RW, PRIV), result=1),
        S("store", (Ref(1), Ref(1, -0x10))),                      # small negative offset
        S("store", (Ref(1, 8), Ref(1, U64))),                     # wraps: r1 - 1
        S("store", (Ref(1, 16), Ref(1, 1 << 40))),                # offset beyond simm32
        S("write", (1, Ref(1), 24)))
    rc, out = run_native(compile_program(prog), tmp_path)
    a, b, c = words(out)
    assert rc == 0
    assert b == (a + 0x10 - 1) and c == a + 0x10 + (1 << 40)


def test_fork_child_and_parent_paths_and_wait_status(tmp_path):
    prog = program(
        S("mmap", (0, 0x1000, RW, PRIV), result=1),
        S("store", (Ref(1), int.from_bytes(b"before\n\0", "little"))),
        S("fork", (), result=2,
          child=(S("store", (Ref(1), int.from_bytes(b"child\n\0\0", "little"))),
                 S("write", (1, Ref(1), 6)), S("exit", (7,))),
          parent=(S("wait4", (Ref(2), 0), result=3),
                  S("write", (1, Ref(1), 7)),                     # private: the child's store is not seen
                  S("exit", (0,)))),
    )
    build = compile_program(prog)
    # Second run: also dump slot 0 (wstatus) and the wait4 result's relation to the pid.
    dump = S("write", (1, slot(build, 0), 24))
    steps = list(prog.steps)
    fork = steps[-1]
    steps[-1] = S("fork", (), result=2, child=fork.child,
                  parent=(fork.parent[0], fork.parent[1], dump, S("exit", (0,))))
    build2 = compile_program(Program((Image(tuple(steps)),)))
    assert build2.info[0].table_addr == build.info[0].table_addr
    rc, out = run_native(build2, tmp_path)
    assert rc == 0
    assert out[:13] == b"child\nbefore\n"
    status, _, pid = words(out[13:])[:3]
    assert status == 7 << 8
    assert pid > 1


def test_shared_memory_after_wait_and_wnohang(tmp_path):
    prog = program(
        S("mmap", (0, 0x1000, RW, SHARED), result=1),
        S("fork", (), result=2,
          child=(S("store", (Ref(1), int.from_bytes(b"shared\n\0", "little"))),),
          parent=(S("wait4", (Ref(2), 0), result=3),
                  S("write", (1, Ref(1), 7)),
                  S("wait4", (-1, 1), result=4),                   # no child left: ECHILD
                  S("exit", (Ref(4, 20),)))))                      # -10 + 20
    rc, out = run_native(compile_program(prog), tmp_path)
    assert (rc, out) == (10, b"shared\n")


def test_vfork_child_runs_first_and_shares_memory(tmp_path):
    prog = program(
        S("mmap", (0, 0x1000, RW, PRIV), result=1),
        S("vfork", (), result=2,
          child=(S("store", (Ref(1), int.from_bytes(b"vforked\n", "little"))), S("exit", (3,))),
          parent=(S("write", (1, Ref(1), 8)), S("wait4", (Ref(2), 0)),
                  S("load", (Ref(1),), result=3), S("exit", (Ref(3),)))))
    build = compile_program(prog)
    rc, out = run_native(build, tmp_path)
    assert out == b"vforked\n"                                     # private mapping, yet shared: vfork
    assert rc == ord("v")                                          # the loaded value's low byte


def test_clone_forklike(tmp_path):
    prog = program(
        S("clone", (17,), result=1,
          child=(S("exit", (4,)),),
          parent=(S("wait4", (Ref(1), 0), result=2), S("write", (1, 0, 0)), S("exit", (0,)))))
    build = compile_program(prog)
    steps = (prog.steps[0].__class__("clone", (17,), result=1, child=prog.steps[0].child,
             parent=(S("wait4", (Ref(1), 0), result=2), S("write", (1, slot(build, 0), 8)), S("exit", (0,)))),)
    rc, out = run_native(compile_program(Program((Image(steps),))), tmp_path)
    assert rc == 0 and words(out) == [4 << 8]


def test_deep_fork_tree_exit_codes_propagate(tmp_path):
    # Each level waits for its child and exits with the child's status code + 1.
    def level(depth: int, result: int) -> tuple[Step, ...]:
        if depth == 0:
            return (S("exit", (1,)),)
        return (S("fork", (), result=result,
                  child=level(depth - 1, result + 2),
                  parent=(S("wait4", (Ref(result), 0)),
                          S("load", (0,)) if False else S("getpid", ()),
                          S("exit", (depth + 1,)))),)
    rc, _ = run_native(compile_program(Program((Image(level(4, 1)),))), tmp_path)
    assert rc == 5


@pytest.mark.parametrize("etype", ["exec", "dyn"])
@pytest.mark.parametrize("layout", ["split", "shared", "single"])
@pytest.mark.parametrize("bss", [0, 0x10, 0x3000])
def test_execve_into_image_of_every_shape(tmp_path, etype, layout, bss):
    target = Image((
        S("mmap", (0, 0x1000, RW, PRIV), result=1),
        S("store", (Ref(1), int.from_bytes(b"image 1\n", "little"))),
        S("write", (1, Ref(1), 8)),
        S("observe", ()),
        S("brk", (0,), result=2),
        S("exit", (42,))), ElfSpec(etype=etype, layout=layout, bss=bss))
    root = Image((S("write", (1, 0, 0)), S("execve", (1,), result=1), S("exit", (1,))),
                 ElfSpec(etype=etype, layout=layout, bss=bss))
    rc, out = run_native(compile_program(Program((root, target))), tmp_path)
    assert (rc, out) == (42, b"image 1\n")


def test_execve_of_missing_image_fails_and_continues(tmp_path):
    prog = program(S("execve", (5,), result=1), S("exit", (Ref(1, 10),)))     # -ENOENT + 10
    rc, _ = run_native(compile_program(prog), tmp_path)
    assert rc == 10 - Errno.ENOENT


@pytest.mark.parametrize("etype", ["exec", "dyn"])
def test_execve_failure_keeps_the_stack_balanced_and_dyn_works(tmp_path, etype):
    # Many failed execves in a row, then a fetch (which needs the stack) still returns.
    steps = tuple(S("execve", (3,)) for _ in range(50))
    prog = Program((Image(steps + (S("brk", (0,), result=1), S("exit", (11,))), ElfSpec(etype=etype)),))
    rc, _ = run_native(compile_program(prog), tmp_path)
    assert rc == 11


def test_load_probe_and_fetch_of_ret_gadget(tmp_path):
    probe = program(S("exit", (0,)))
    gadget = compile_program(probe).info[0].ret_gadget
    prog = program(
        S("mmap", (0, 0x1000, RW, PRIV), result=1),
        S("store", (Ref(1, 8), 0x1122334455667788)),
        S("load", (Ref(1, 8),), result=2),
        S("fetch", (gadget,)),
        S("fetch", (gadget,)),
        S("store", (Ref(1), Ref(2))),
        S("write", (1, Ref(1), 8)))
    rc, out = run_native(compile_program(prog), tmp_path)
    assert rc == 0 and words(out) == [0x1122334455667788]


@pytest.mark.parametrize("step, signo", [
    (S("load", (0,)), 11), (S("store", (0x1000, 1)), 11), (S("fetch", (0x10000,)), 11)])
def test_faulting_probes_kill_with_sigsegv(tmp_path, step, signo):
    rc, out = run_native(compile_program(program(S("write", (1, 0, 0)), step, S("exit", (0,)))), tmp_path)
    assert rc == -signo


def test_fetch_into_data_is_not_executable(tmp_path):
    build = compile_program(program(S("exit", (0,))))
    rc, _ = run_native(compile_program(program(S("fetch", (build.info[0].table_addr,)))), tmp_path)
    assert rc == -11


def test_store_to_text_faults(tmp_path):
    build = compile_program(program(S("exit", (0,))))
    rc, _ = run_native(compile_program(program(S("store", (build.info[0].entry, 0)))), tmp_path)
    assert rc == -11


def test_mmap_fixed_over_own_data_page_kills_the_table_user(tmp_path):
    # MAP_FIXED PROT_READ over the table's page: the next result store faults.
    build = compile_program(program(S("mmap", (0, 0x1000, 1, 0x32), result=1), S("exit", (0,))))
    page = build.info[0].table_addr & ~(PAGE_SIZE - 1)
    prog = program(S("mmap", (page, 0x1000, PROT_READ, PRIV | 0x10), result=1), S("exit", (0,)))
    assert compile_program(prog).info[0].table_addr == build.info[0].table_addr
    rc, _ = run_native(compile_program(prog), tmp_path)
    assert rc == -11


# --- Structure of the build ----------------------------------------------------------------

def test_build_shape_and_info():
    prog = Program((Image((S("execve", (1,)),)), Image((S("getpid", (), result=9),), ElfSpec(etype="dyn"))))
    build = compile_program(prog)
    assert build.entry == image_path(0) and set(build.images) == {image_path(0), image_path(1)}
    i0, i1 = build.info
    assert (i0.etype, i1.etype) == ("exec", "dyn")
    assert i0.entry == 0x40_0000 + 16 and i0.ret_gadget == 0x40_0000
    assert i1.ret_gadget == 0 and i1.slots == 10
    for info, data in zip(build.info, build.images.values()):
        assert data[:4] == b"\x7fELF"
        text, table = info.segments[0], info.segments[-1]
        assert text[3] == PF_R | PF_X and table[3] == PF_R | PF_W
        assert table[0] <= info.table_addr and info.table_addr + 8 * info.slots <= table[0] + table[1]
        assert data[text[0] - text[0] + 0x1000] == 0xC3           # ret gadget at the text's start


@pytest.mark.parametrize("layout", ["split", "shared", "single"])
def test_layouts(layout):
    build = compile_program(program(S("getpid", (), result=1), layout=layout))
    segs = build.info[0].segments
    if layout == "single":
        assert len(segs) == 1 and segs[0][3] == PF_R | PF_W | PF_X
        return
    (tv, tm, tf, _), (dv, dm, df, _) = segs
    if layout == "split":
        assert dv % PAGE_SIZE == 0 and dv >= tv + tm
    else:
        assert (tv + tm - 1) // PAGE_SIZE == dv // PAGE_SIZE      # text's end and data's start share a page
        code_end = build.info[0].entry + 1
        assert code_end // PAGE_SIZE < dv // PAGE_SIZE            # no code on the shared page


def test_bss_holds_the_table_and_is_zero_filled(tmp_path):
    build = compile_program(program(S("getpid", (), result=1), bss=0x2000))
    (dv, dm, df, _) = build.info[0].segments[-1]
    assert dm == df + 0x2000
    assert dv + df <= build.info[0].table_addr < dv + dm
    data = build.images[image_path(0)]
    assert b"\xAA" in data[-64:]                                   # the trailer a loader must zero


def _disassemble_all(code: bytes, origin: int) -> list[capstone.CsInsn]:
    md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    return list(md.disasm(code, origin))


def test_generated_code_disassembles_and_reports_use_the_reserved_number():
    prog = program(S("observe", ()), S("load", (0x1000,)), S("observe", ()),
                   S("wait4", (-1, 0), result=1))
    build = compile_program(prog)
    info = build.info[0]
    text_vaddr, text_mem, text_file, _ = info.segments[0]
    data = build.images[image_path(0)]
    text = data[0x1000:0x1000 + text_file]
    insns = _disassemble_all(text[16:], info.entry)
    assert sum(i.size for i in insns) == len(text) - 16
    mov_eax = [i.op_str for i in insns if i.mnemonic == "mov" and i.op_str.startswith("eax,")]
    assert mov_eax.count(f"eax, {REPORT_NR:#x}") == 4               # observe, loaded, observe, wstatus
    assert f"eax, {int(Nr.wait4):#x}" in mov_eax
    assert f"edi, {int(ReportKind.observe)}" in [i.op_str for i in insns]


def test_execve_with_ref_index_is_refused():
    with pytest.raises(InvalidProgram, match="execve image index"):
        S("execve", (Ref(1),))


@pytest.mark.parametrize("text, etype, rc", [("x", "exec", 7), ("rwx", "dyn", 7), ("r", "exec", -11)])
def test_text_rights(tmp_path, text, etype, rc):
    prog = program(S("getpid", ()), S("exit", (7,)), text=text, etype=etype)
    assert run_native(compile_program(prog), tmp_path)[0] == rc


def test_step_spans_cover_every_step_in_walk_order():
    from forkspec.oracle._internal.disasm import disassemble, step_at
    from forkspec.oracle.program import walk_steps
    prog = program(
        S("mmap", (0, 0x1000, RW, PRIV), result=1),
        S("fork", (), result=2,
          child=(S("store", (Ref(1), 1)), S("observe", ())),
          parent=(S("wait4", (Ref(2), 0)), S("vfork", (), child=(S("exit", (0,)),), parent=(S("getpid", ()),)))))
    build = compile_program(prog)
    info = build.info[0]
    steps = list(walk_steps(prog.steps))
    assert len(info.step_spans) == len(steps)
    for (start, end), (next_start, _) in zip(info.step_spans, info.step_spans[1:]):
        assert start < end <= next_start
    assert info.step_spans[0][0] == info.entry
    for index, (start, end) in enumerate(info.step_spans):
        assert step_at(info, start) == index and step_at(info, end - 1) == index
    assert step_at(info, info.ret_gadget) is None
    listing = disassemble(build, 0, prog)
    assert listing.count("; step ") == len(steps)
    assert "; step 3: observe" in listing and "syscall" in listing


def test_observe_tags_number_observes_in_walk_order():
    prog = program(S("observe", ()),
                   S("fork", (), child=(S("observe", ()), S("observe", ())), parent=(S("observe", ()),)))
    build = compile_program(prog)
    data = build.images[image_path(0)]
    info = build.info[0]
    md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    text = data[0x1000 + 16:0x1000 + info.segments[0][2]]
    tags = [int(i.op_str.split(",")[1], 0) for i in md.disasm(text, info.entry)
            if i.mnemonic == "mov" and i.op_str.startswith("esi,")]
    assert tags == [0, 1, 2, 3]


def test_syscall_ends_and_tails():
    prog = program(S("getpid", ()), S("store", (0x1000, 1)), S("load", (0x1000,)),
                   S("fork", (), child=(S("observe", ()),), parent=(S("wait4", (-1, 0)), S("exit", (0,)))))
    build = compile_program(prog)
    info = build.info[0]
    data = build.images[image_path(0)]
    text_at = lambda addr: data[0x1000 + addr - info.segments[0][0]:][:2]        # noqa: E731
    assert len(info.syscall_ends) == len(info.step_spans) == 7
    assert info.syscall_ends[1] == 0                                   # a store makes no syscall
    for (start, end), after in zip(info.step_spans, info.syscall_ends):
        if after:
            assert start < after <= end and text_at(after - 2) == b"\x0f\x05"
    assert len(info.tail_addrs) == 1                                   # the child's list runs off its end
    assert info.step_spans[4][1] <= info.tail_addrs[0] < info.step_spans[5][0]


def test_shared_layout_page_holds_text_tail_and_data_and_is_not_executable(tmp_path):
    probe = compile_program(program(S("exit", (0,)), layout="shared"))
    (tv, tm, tf, _), (dv, dm, df, _) = probe.info[0].segments
    tail = tv + tm - 8                                           # last 8 text bytes, on the shared page
    assert tail // PAGE_SIZE == dv // PAGE_SIZE
    # The text tail reads as int3 padding; the data's marker follows; a call into the tail faults
    # because Linux maps the shared page with the data segment's rights (rw-).
    prog = program(S("mmap", (0, 0x1000, RW, PRIV), result=1),
                   S("load", (tail,), result=2),
                   S("store", (Ref(1), Ref(2))),
                   S("write", (1, Ref(1), 8)),
                   S("write", (1, dv, 8)),
                   S("fetch", (tail,)),
                   S("exit", (0,)), layout="shared")
    build = compile_program(prog)
    assert (build.info[0].segments[0][:2], build.info[0].segments[1][0]) == ((tv, tm), dv)   # same layout
    rc, out = run_native(build, tmp_path)
    assert out == b"\xCC" * 8 + b"forkspec"
    assert rc == -11


@pytest.mark.parametrize("top", [1, 40, 300, 505, 506, 507, 509])
@pytest.mark.parametrize("layout", ["split", "single"])
def test_table_never_reaches_into_the_last_16_bytes_of_a_page(top, layout):
    prog = Program((Image((S("execve", (1,)), S("getpid", (), result=top)), ElfSpec(layout=layout)),))
    info = compile_program(prog).info[0]
    start, end = info.table_addr, info.table_addr + 8 * info.slots
    if 8 * info.slots + 16 <= PAGE_SIZE:
        assert start // PAGE_SIZE == (end - 1) // PAGE_SIZE
        assert end % PAGE_SIZE == 0 or end % PAGE_SIZE <= PAGE_SIZE - 16
        assert end % PAGE_SIZE != 0
