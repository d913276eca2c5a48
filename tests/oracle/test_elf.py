"""The ELF writer and the malformed-image mutations (checked natively against this kernel)."""
from __future__ import annotations

import io
import os
import subprocess
import sys

import pytest
from elftools.elf.elffile import ELFFile

from forkspec.oracle._internal.codegen import compile_program
from forkspec.oracle._internal.elf import (ET_DYN, ET_EXEC, MUTATIONS, PF_R, PF_W, PF_X, PT_GNU_STACK, PT_LOAD,
                                            Segment, apply_mutation, expected_outcome, write_elf)
from forkspec.oracle.errors import InvalidProgram
from forkspec.oracle.program import ElfSpec, Image, Program, Ref, Step
from forkspec.specs.abi import PAGE_SIZE, Errno

S = Step
native = pytest.mark.skipif(sys.platform != "linux" or os.uname().machine != "x86_64",
                            reason="runs x86-64 Linux images natively")


def parse(data: bytes) -> ELFFile:
    return ELFFile(io.BytesIO(data))


def test_write_elf_structure_matches_pyelftools():
    segs = [Segment(0x40_0000, b"\xC3" * 100, 100, PF_R | PF_X),
            Segment(0x40_1064, b"data", 0x2000, PF_R | PF_W)]
    data = write_elf(segs, 0x40_0000, ET_EXEC, PF_R | PF_W, trailer=b"\xAA" * 8)
    elf = parse(data)
    assert elf.header.e_type == "ET_EXEC" and elf.header.e_machine == "EM_X86_64"
    assert elf.header.e_entry == 0x40_0000
    loads = [s for s in elf.iter_segments() if s["p_type"] == "PT_LOAD"]
    assert [(s["p_vaddr"], s["p_filesz"], s["p_memsz"], s["p_flags"]) for s in loads] == [
        (0x40_0000, 100, 100, PF_R | PF_X), (0x40_1064, 4, 0x2000, PF_R | PF_W)]
    for seg, want in zip(loads, segs):
        assert seg["p_offset"] % PAGE_SIZE == seg["p_vaddr"] % PAGE_SIZE
        assert seg.data() == want.data
    stack = [s for s in elf.iter_segments() if s["p_type"] == "PT_GNU_STACK"]
    assert len(stack) == 1 and stack[0]["p_flags"] == PF_R | PF_W
    assert data.endswith(b"\xAA" * 8)


def test_write_elf_without_gnu_stack_and_dyn():
    data = write_elf([Segment(0, b"\xC3", 1, PF_R | PF_X)], 0, ET_DYN, None)
    elf = parse(data)
    assert elf.header.e_type == "ET_DYN"
    assert [s["p_type"] for s in elf.iter_segments()] == ["PT_LOAD"]


@pytest.mark.parametrize("spec", [ElfSpec(), ElfSpec(etype="dyn"), ElfSpec(layout="shared", bss=0x10),
                                  ElfSpec(layout="single", bss=0x3000), ElfSpec(stack=None),
                                  ElfSpec(stack="rwx", text="r"), ElfSpec(base=0x1000_0000)])
def test_compiled_images_match_their_info(spec):
    build = compile_program(Program((Image((S("getpid", (), result=4),), spec),)))
    info = build.info[0]
    elf = parse(build.images[info.path])
    loads = [s for s in elf.iter_segments() if s["p_type"] == "PT_LOAD"]
    assert tuple((s["p_vaddr"], s["p_memsz"], s["p_filesz"], s["p_flags"]) for s in loads) == info.segments
    assert elf.header.e_entry == info.entry
    assert elf.header.e_type == ("ET_EXEC" if spec.etype == "exec" else "ET_DYN")
    if spec.etype == "exec":
        assert loads[0]["p_vaddr"] == spec.base
    stack = [s["p_flags"] for s in elf.iter_segments() if s["p_type"] == "PT_GNU_STACK"]
    want = {None: [], "rw": [PF_R | PF_W], "rwx": [PF_R | PF_W | PF_X]}[spec.stack]
    assert stack == want
    if spec.layout != "single":
        assert loads[0]["p_flags"] == sum(f for ch, f in (("r", PF_R), ("w", PF_W), ("x", PF_X)) if ch in spec.text)
    # The table lies inside the data segment's memory and starts zeroed.
    data_seg = loads[-1]
    assert data_seg["p_vaddr"] <= info.table_addr
    assert info.table_addr + 8 * info.slots <= data_seg["p_vaddr"] + data_seg["p_memsz"]
    table_off = info.table_addr - data_seg["p_vaddr"]
    assert data_seg.data()[table_off:table_off + 8 * info.slots].strip(b"\0") == b""


def test_every_mutation_changes_the_file_and_has_a_known_outcome():
    base = compile_program(Program((Image(()), Image((S("exit", (1,)),))))).images["i1"]
    words = {"ENOEXEC", "killed", "runs", "SIGSEGV at entry", "SIGBUS on touch"}
    for name, mutation in MUTATIONS.items():
        assert mutation.expected in words, name
        assert apply_mutation(name, base) != base, name
    with pytest.raises(ValueError, match="unknown mutation"):
        apply_mutation("no-such", base)


def test_mutation_is_refused_for_image_zero_and_unknown_names():
    with pytest.raises(InvalidProgram, match="image 0 must be well formed"):
        Program((Image((), ElfSpec(mutation="bad-magic")),))
    with pytest.raises(InvalidProgram, match="mutation='nope' is unknown"):
        ElfSpec(mutation="nope")


def _run(build, tmp_path) -> int:
    for path, data in build.images.items():
        (tmp_path / path).write_bytes(data)
        (tmp_path / path).chmod(0o755)
    return subprocess.run([str(tmp_path / build.entry)], cwd=tmp_path, capture_output=True,
                          timeout=20).returncode


# Exit codes image 0 and image 1 use to tell the outcomes apart.
RAN = 42
ENOEXEC_CODE = 100 - Errno.ENOEXEC


@native
@pytest.mark.parametrize("name", sorted(MUTATIONS))
@pytest.mark.parametrize("etype,layout,bss", [("exec", "split", 0), ("dyn", "shared", 0x2000),
                                              ("exec", "single", 0x2000)])
def test_mutations_behave_as_linux_does(tmp_path, name, etype, layout, bss):
    # Image 0: r1 = execve(1); exit(r1 + 100). A returned -ENOEXEC exits with 92.
    prog = Program((Image((S("execve", (1,), result=1), S("exit", (Ref(1, 100),)))),
                    Image((S("exit", (RAN,)),), ElfSpec(etype=etype, layout=layout, bss=bss, mutation=name))))
    rc = _run(compile_program(prog), tmp_path)
    want = expected_outcome(name, text_writable_with_bss=(layout == "single" and bss > 0))
    assert {"ENOEXEC": ENOEXEC_CODE, "runs": RAN, "killed": -11, "SIGSEGV at entry": -11,
            "SIGBUS on touch": -7}[want] == rc


@native
def test_enoexec_leaves_the_caller_intact(tmp_path):
    # After a failed execve the caller's memory and break are as before.
    prog = Program((Image((S("mmap", (0, 0x1000, 3, 0x22), result=1),
                           S("store", (Ref(1), 0x0A6B6F)),
                           S("execve", (1,), result=2),
                           S("write", (1, Ref(1), 3)),
                           S("exit", (Ref(2, 100),)))),
                    Image((S("exit", (RAN,)),), ElfSpec(mutation="bad-machine"))))
    build = compile_program(prog)
    for path, data in build.images.items():
        (tmp_path / path).write_bytes(data)
        (tmp_path / path).chmod(0o755)
    proc = subprocess.run([str(tmp_path / "i0")], cwd=tmp_path, capture_output=True, timeout=20)
    assert (proc.returncode, proc.stdout) == (ENOEXEC_CODE, b"ok\n")
