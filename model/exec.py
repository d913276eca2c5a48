"""execve: the model reads the ELF image itself (struct; never impl's loader).

Linux (fs/binfmt_elf.c, 6.18) in two halves, as linux-facts.md measured:
- before the point of no return (begin_new_exec): -errno with the caller intact — ENOENT for a
  missing image or interpreter, ENOEXEC for a bad magic, e_type, e_machine, e_phentsize, phnum,
  program-header table (empty, > 64 KiB, beyond EOF), a text file without "#!";
- after it: the new image is mapped segment by segment (MAP_FIXED; later segments win where they
  overlap; the bss tail of the last file page is zeroed when the segment is writable; whole bss
  pages are anonymous rw(x)), and any failure (unaligned p_offset, a segment or entry at or
  above TASK_SIZE, p_memsz < p_filesz, a segment below mmap_min_addr, zeroing a bss tail that
  lies beyond EOF) kills the process with SIGSEGV (SI_KERNEL).
Pages of a file mapping beyond the file's end raise SIGBUS when touched.

The layout (stack, [vdso], [vvar], TLS, initial break, ET_DYN base) is the kernel's choice, read
off the Exec event; `allowed` checks it against the profile.
"""
from __future__ import annotations

import functools
import struct
from dataclasses import dataclass
from typing import Any

from ..specs.abi import DAC_MMAP_MIN_ADDR, PAGE_SHIFT, PAGE_SIZE, PROT_EXEC, PROT_READ, PROT_WRITE, TASK_SIZE, Errno
from ..specs.profiles import LEVITATE_STACK_PAGES, Profile
from ..specs.trace import Layout
from .logic import neg
from .predicates import is_special
from .space import empty_data, empty_pages, empty_shared
from .state import (ATTR_REGION, ATTR_REGION_SHIFT, ATTR_SIGBUS, REAPER, AddressSpace, Killed, Kind, Process,
                    Result, Run, State, make_attr)

PT_LOAD, PT_INTERP = 1, 3
PT_GNU_STACK = 0x6474E551
ET_EXEC, ET_DYN = 2, 3
EM_X86_64 = 62
PF_X, PF_W, PF_R = 1, 2, 4
BINPRM_BUF_SIZE = 256
ELF_MIN_ALIGN = PAGE_SIZE


@dataclass(frozen=True)
class Segment:
    vaddr: int
    offset: int
    filesz: int
    memsz: int
    flags: int


@dataclass(frozen=True)
class ElfImage:
    """What the loader needs of an image that passed the checks before the point of no return."""
    etype: int
    entry: int
    segments: tuple[Segment, ...]
    data: bytes
    exec_stack: bool = False         # PT_GNU_STACK asks for an executable stack

    @property
    def end(self) -> int:
        """The highest p_vaddr + p_memsz (the end of bss: Linux's &end)."""
        return max((s.vaddr + s.memsz for s in self.segments), default=0)


def parse(data: bytes | None) -> ElfImage | int:
    """The image, or the errno execve returns before the point of no return."""
    if data is None:
        return Errno.ENOENT                                  # ENOENT: no such image
    if type(data) is not bytes:
        return _parse(bytes(data))
    return _parse_cached(data)


@functools.lru_cache(maxsize=64)
def _parse_cached(data: bytes) -> ElfImage | int:
    """parse() is pure and the checker asks about the same few images again and again (each
    execve, each entry point); the result is an immutable ElfImage or an errno."""
    return _parse(data)


def _parse(data: bytes) -> ElfImage | int:
    if data is None:
        return Errno.ENOENT                                  # ENOENT: no such image
    buf = data[:BINPRM_BUF_SIZE].ljust(BINPRM_BUF_SIZE, b"\0")
    if buf[:2] == b"#!":
        return Errno.ENOENT                                  # ENOENT: the interpreter does not exist
    if buf[:4] != b"\x7fELF":
        return Errno.ENOEXEC                                 # ENOEXEC: no binfmt recognises it
    (e_type, e_machine, _version, e_entry, e_phoff, _shoff, _flags, _ehsize, e_phentsize,
     e_phnum) = struct.unpack_from("<HHIQQQIHHH", buf, 16)
    if e_type not in (ET_EXEC, ET_DYN):
        return Errno.ENOEXEC                                 # ENOEXEC: ET_REL, ET_CORE ...
    if e_machine != EM_X86_64:
        return Errno.ENOEXEC                                 # ENOEXEC: elf_check_arch (EI_CLASS unchecked)
    if e_phentsize != 56:
        return Errno.ENOEXEC                                 # ENOEXEC: e_phentsize != sizeof(elf_phdr)
    size = 56 * e_phnum
    if size == 0 or size > 65536:
        return Errno.ENOEXEC                                 # ENOEXEC: no phdrs, or a table > 64 KiB
        # (linux-facts.md says > 4096 bytes; 6.18.44 measured by the codegen helper runs 4144)
    if e_phoff + size > len(data):
        return Errno.ENOEXEC                                 # ENOEXEC: short read of the phdrs (never EIO)
    segments = []
    exec_stack = False
    for i in range(e_phnum):
        p_type, p_flags, p_offset, p_vaddr, _paddr, p_filesz, p_memsz, _align = struct.unpack_from(
            "<IIQQQQQQ", data, e_phoff + 56 * i)
        if p_type == PT_INTERP:
            return Errno.ENOENT                              # ENOENT: the interpreter does not exist
        if p_type == PT_LOAD:
            segments.append(Segment(p_vaddr, p_offset, p_filesz, p_memsz, p_flags))
        elif p_type == PT_GNU_STACK:
            exec_stack = bool(p_flags & PF_X)
    return ElfImage(e_type, e_entry, tuple(segments), data, exec_stack)


def _prot(flags: int) -> int:
    return (PROT_READ if flags & PF_R else 0) | (PROT_WRITE if flags & PF_W else 0) | \
        (PROT_EXEC if flags & PF_X else 0)


def _file_page(image: ElfImage, file_offset: int) -> bytes:
    chunk = image.data[file_offset:file_offset + PAGE_SIZE]
    return chunk.ljust(PAGE_SIZE, b"\0")


def load_image(image: ElfImage, bias: int, pages: Any, data: Any) -> tuple[Any, Any] | str:
    """Map every PT_LOAD of `image` at `bias` over (pages, data): the new containers, or why the
    process is killed after the point of no return (concrete)."""
    eof_page = (len(image.data) + PAGE_SIZE - 1) >> PAGE_SHIFT
    for seg in image.segments:
        vaddr = seg.vaddr + bias
        prot = _prot(seg.flags)
        page_off = vaddr & (PAGE_SIZE - 1)
        start = vaddr - page_off
        if seg.filesz:
            if (seg.offset - page_off) & (PAGE_SIZE - 1) or seg.offset < page_off:
                return "p_offset is not congruent to p_vaddr (mmap EINVAL)"
            size = (seg.filesz + page_off + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)
            if start >= TASK_SIZE or size > TASK_SIZE - start:
                return "PT_LOAD beyond TASK_SIZE (mmap ENOMEM)"
            if start < DAC_MMAP_MIN_ADDR:
                return "PT_LOAD below mmap_min_addr (mmap EPERM)"
            first_file_page = (seg.offset - page_off) >> PAGE_SHIFT
            lo = start >> PAGE_SHIFT
            for i in range(size >> PAGE_SHIFT):
                beyond = first_file_page + i >= eof_page
                pages = pages.set(lo + i, lo + i + 1, make_attr(prot, Kind.image, sigbus=beyond))
                data = data.with_page(lo + i, bytes(PAGE_SIZE) if beyond else
                                      _file_page(image, (first_file_page + i) << PAGE_SHIFT))
            if seg.memsz > seg.filesz:
                zero_start = vaddr + seg.filesz
                zpage = zero_start >> PAGE_SHIFT
                if zero_start & (PAGE_SIZE - 1):
                    attr = pages.get(zpage)
                    writable = bool(prot & PROT_WRITE)
                    if attr & 0x100:   # ATTR_SIGBUS: clear_user faults
                        if writable:
                            return "zeroing the bss tail faults (file page beyond EOF)"
                    elif writable:
                        old = data.page(zpage) or bytes(PAGE_SIZE)
                        cut = zero_start & (PAGE_SIZE - 1)
                        data = data.with_page(zpage, old[:cut] + bytes(PAGE_SIZE - cut))
            zero_start = (vaddr + seg.filesz + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)
        else:
            zero_start = start
        zero_end = (vaddr + seg.memsz + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)
        if seg.memsz > seg.filesz and zero_end > zero_start:
            if zero_start >= TASK_SIZE or zero_end > TASK_SIZE:
                return "bss beyond TASK_SIZE (vm_brk ENOMEM)"
            # vm_brk_flags: anonymous, read-write, executable only if the segment is.
            bss_prot = PROT_READ | PROT_WRITE | (prot & PROT_EXEC)
            lo, hi = zero_start >> PAGE_SHIFT, zero_end >> PAGE_SHIFT
            pages = pages.set(lo, hi, make_attr(bss_prot, Kind.image))
            data = data.zero(lo, hi)
        if vaddr >= TASK_SIZE or seg.filesz > seg.memsz or seg.memsz > TASK_SIZE or TASK_SIZE - seg.memsz < vaddr:
            return "p_filesz > p_memsz or the segment ends beyond TASK_SIZE (set_brk can never work)"
    if image.entry + bias >= TASK_SIZE:
        return "e_entry beyond TASK_SIZE"
    return pages, data


def _region_attr(name: str, profile: Profile, exec_stack: bool = False) -> int:
    if name.startswith("stack"):
        return make_attr(PROT_READ | PROT_WRITE | (PROT_EXEC if exec_stack else 0), Kind.stack,
                         growsdown=profile.stack_top is None)
    if name.startswith("tls"):
        return make_attr(PROT_READ | PROT_WRITE, Kind.tls)
    if name.startswith("vdso"):
        return make_attr(PROT_READ | PROT_EXEC, Kind.vdso)
    if name.startswith("vvar"):
        return make_attr(PROT_READ, Kind.vvar)
    return make_attr(PROT_READ, Kind.kernel)


def layout_allowed(profile: Profile, image: ElfImage, layout: Layout) -> tuple[bool, str]:
    """Is the kernel's layout legal under the profile? (allowed, what was expected)"""
    bias = layout.load_bias if image.etype == ET_DYN else 0
    if image.etype == ET_EXEC and layout.load_bias:
        return False, "load_bias 0 for ET_EXEC"
    if bias & (PAGE_SIZE - 1):
        return False, "a page-aligned load bias"
    end = (image.end + bias + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)
    regions = {name: (lo, hi) for name, lo, hi in layout.regions}
    if profile.stack_top is not None:
        want_stack = (profile.stack_top - (profile.stack_pages or LEVITATE_STACK_PAGES) * PAGE_SIZE, profile.stack_top)
        if regions.get("stack") != want_stack:
            return False, f"stack at [{want_stack[0]:#x}, {want_stack[1]:#x})"
    if profile.tls_page is not None and regions.get("tls") != (profile.tls_page, profile.tls_page + PAGE_SIZE):
        return False, f"one TLS page at {profile.tls_page:#x}"
    if not profile.has_vdso and any(n.startswith(("vdso", "vvar")) for n in regions):
        return False, "no [vdso]/[vvar] in this profile"
    if layout.brk & (PAGE_SIZE - 1) and image.etype == ET_EXEC:
        return False, f"a page-aligned initial break at or above {end:#x}"
    if not profile.brk_random and image.etype == ET_EXEC and layout.brk != end:
        return False, f"initial break {end:#x} (the page after the highest segment)"
    if profile.brk_random and image.etype == ET_EXEC and layout.brk < end:
        return False, f"initial break at or above {end:#x}"
    for name, lo, hi in layout.regions:
        if lo & (PAGE_SIZE - 1) or hi & (PAGE_SIZE - 1) or not lo < hi <= TASK_SIZE:
            return False, f"region {name} page-aligned inside user space"
    return True, ""


def new_space(profile: Profile, image: ElfImage, layout: Layout) -> AddressSpace | str:
    """The address space a successful execve builds, or why the process is killed."""
    bias = layout.load_bias if image.etype == ET_DYN else 0
    pages, data = empty_pages(), empty_data()
    for name, lo, hi in layout.regions:
        if name.startswith("stack"):
            pages = pages.set(lo >> PAGE_SHIFT, hi >> PAGE_SHIFT, _region_attr(name, profile, image.exec_stack))
    loaded = load_image(image, bias, pages, data)
    if isinstance(loaded, str):
        return loaded
    pages, data = loaded
    for index, (name, lo, hi) in enumerate(layout.regions):
        attr = _region_attr(name, profile)
        if is_special(attr):
            # Each named region is its own special VMA (munmap of exactly [vvar] succeeds next to
            # [vvar_vclock]; measured on 6.18): its identity keeps neighbours from merging.
            attr |= min(index + 1, ATTR_REGION >> ATTR_REGION_SHIFT) << ATTR_REGION_SHIFT
        if not name.startswith("stack"):
            pages = pages.set(lo >> PAGE_SHIFT, hi >> PAGE_SHIFT, attr)
        if name.startswith("vvar"):
            # Measured on this machine (6.18): in [vvar] (4 pages) and [vvar_vclock] (2 pages) the
            # odd pages fault with SIGBUS (no timens page, no pvclock/hvclock page), for user loads
            # and kernel copies alike; the even ones read.
            for page in range((lo >> PAGE_SHIFT) + 1, hi >> PAGE_SHIFT, 2):
                pages = pages.set(page, page + 1, attr | ATTR_SIGBUS)
    # Linux maps [vvar]/[vdso] top-down right below mmap_base at exec (6.x: get_unmapped_area), so
    # their top is mmap_base (measured with ADDR_NO_RANDOMIZE: both end at TASK_SIZE - 128 MiB).
    specials = [hi for name, lo, hi in layout.regions if name.startswith(("vdso", "vvar"))]
    base = max(specials) if profile.mmap_topdown and specials else None
    return AddressSpace(pages=pages, data=data, start_brk=layout.brk, brk=layout.brk, mmap_base=base)


@dataclass(frozen=True)
class ExecveArgs:
    pid: int
    image_index: int
    image: bytes | None              # the file at the path, None if there is none


def execve(state: State, args: ExecveArgs, choice: Layout | None) -> Result:
    """execve(2): "executes the program referred to by pathname. This causes the program that is
    currently being run by the calling process to be replaced with a new program, with newly
    initialized stack, heap, and (initialized and uninitialized) data segments." "If any of the
    parts of execve() fail after the point of no return, the calling process is killed."

    Outcome: -errno (caller intact), 0 with the new state (`choice` is the Exec event's layout;
    None when the caller only needs to know whether the call gets past the point of no return),
    or Killed."""
    parsed = parse(args.image)
    if isinstance(parsed, int):
        return Result(True, neg(parsed), state, f"execve.{Errno(parsed).name}")
    if choice is None:
        return Result(True, 0, state, "execve.ponr")
    built = new_space(state.profile, parsed, choice)
    proc = state.procs[args.pid]
    if isinstance(built, str):
        return Result(True, Killed(built), state, "execve.killed")
    allowed, expected = layout_allowed(state.profile, parsed, choice)
    spaces = dict(state.spaces)
    mm = state.next_mm
    spaces[mm] = built
    if not any(p.mm == proc.mm and p.pid != proc.pid and p.run in (Run.running, Run.vfork_blocked)
               for p in state.procs.values()):
        spaces.pop(proc.mm, None)
    procs = dict(state.procs)
    if proc.vfork_parent and proc.vfork_parent in procs:
        vp = procs[proc.vfork_parent]
        procs[vp.pid] = Process(**{**vp.__dict__, "run": Run.running})
    procs[args.pid] = Process(**{**proc.__dict__, "mm": mm, "vfork_parent": 0, "image": args.image_index,
                                 "entry_sp": choice.entry_sp,
                                 "load_bias": choice.load_bias if parsed.etype == ET_DYN else 0})
    new = state.with_(procs=procs, spaces=spaces, next_mm=mm + 1)
    return Result(allowed, 0, new, "execve.ok", expected)


def initial_state(profile: Profile, pid: int, image: bytes, layout: Layout) -> Result:
    """The state after the backend started the root process in `image` (the first Exec event)."""
    base = State(profile=profile, procs={pid: Process(pid=pid, ppid=REAPER, path="root", mm=0)},
                 spaces={0: AddressSpace(empty_pages(), empty_data(), 0, 0)}, shared=empty_shared(),
                 next_mm=1, root=pid, reaper=profile.reaper_pid or 0)
    result = execve(base, ExecveArgs(pid, 0, image), layout)
    if not isinstance(result.outcome, int) or result.outcome != 0:
        raise ValueError(f"the program's first image does not load: {result.outcome!r}")
    return result


def entry_point(image: bytes, load_bias: int) -> int:
    parsed = parse(image)
    assert isinstance(parsed, ElfImage)
    return parsed.entry + (load_bias if parsed.etype == ET_DYN else 0)


__all__ = ["parse", "ElfImage", "Segment", "execve", "ExecveArgs", "initial_state", "layout_allowed",
           "new_space", "load_image", "entry_point"]
