"""Hypothesis strategies that build whole programs, biased to the edges of the semantics.

`programs()` draws a Program of about 15 steps (a budget of 24) with at least one fork;
`malformed_programs()` draws one whose later images are malformed ELF files that image 0
execve's. Every program the strategies produce terminates and has one outcome up to the choices
the model learns from the trace (mmap placement, pids, which zombie wait4(-1) reaps, WNOHANG racing a running child): the
rules below keep scheduling out of everything else.

Rules the generator keeps (why in brackets):
- MAP_SHARED memory is read or written by one process at a time [otherwise what a load sees
  depends on who ran first]. A process holds the "shared token" or not: the root (and every fresh
  image) holds it; a fork hands it to the child; the parent gets it back only by a blocking
  wait4 on that child, and only if the child's subtree forks no further (orphans could still
  write). A vfork child inherits its parent's token and the parent keeps it (it is blocked). A
  process without the token whose address space may hold shared pages makes no memory probe,
  no write() from memory and no observe.
- vfork children (and clone(CLONE_VM|CLONE_VFORK)) only store, exit or execve [they run on the
  parent's memory and stack].
- getppid only where the parent is sure to be alive: the root, and children whose parent's
  continuation starts with a blocking wait4 on them [an orphan's parent is the reaper].
- Stores go to mmap/brk results plus offsets or to addresses outside the image; never into the
  result table or the code [the model does not run machine code]. A store reaches at most 8
  bytes past a mapping's end (the ret/int3 head of an ET_DYN text placed right above it) and 8
  bytes below its start (codegen keeps a table off the last 16 bytes of a page); brk-based stores
  use offsets >= 0 (the image may end right below the break).
- After munmap, mprotect or MAP_FIXED on a mapping the generator often touches it at once (a
  missing TLB flush or a write to the wrong page table shows there), and before munmap/mprotect
  it sometimes touches it first (so that the TLB holds the old translation).
- fetch goes to the image's ret gadget (ET_EXEC), to addresses nothing can map (non-canonical,
  kernel), to mappings that were never executable (any mmap or mprotect with PROT_EXEC marks
  every mapping of the process as possibly executable), or to an address the step before stored
  0xc3 (`ret`) at [executing unknown bytes is unpredictable].
- MAP_FIXED, mprotect and munmap over the image's own pages (ET_EXEC, known addresses) never
  leave code executable with new contents, and end their step list with a plain exit [after the
  table page is replaced, references would read zeros].
- execve goes only to later images (or a missing one: ENOENT) [no exec loops]. No
  MAP_POPULATE/MAP_LOCKED/MAP_HUGETLB [they would touch huge ranges of memory].
Edges the default distribution reaches often (each was slow to find a planted kernel bug): a
fresh mapping touched at once (after execve: stale page-table roots); brk(0) and a grown break
written at once, then forked (a heap that fork forgets); store, mprotect read-only, store again
(a missing TLB flush); loads one page below a break (the page a "shared" layout splits between
text and data); half the images with a drawn layout.

Hypothesis shrinks these well: each step (with the decision to draw it) and each fork is one
span of the choice sequence, so whole steps delete cleanly; each choice's first option is the
simplest one; images after the first are drawn one at a time, each as a span. For speed each
span draws one byte string and its small choices read a byte each (see `_Draws`).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

from hypothesis import strategies as st

from ..specs import abi
from ._internal.elf import MUTATIONS
from .program import ElfSpec, Image, Program, Ref, Step

__all__ = ["programs", "malformed_programs", "elf_specs", "DEFAULT_STEPS"]

DEFAULT_STEPS = 24
PAGE = abi.PAGE_SIZE
RET = 0xC3

# Choices are lists with the common case first (what shrinking moves towards) and repeated to
# weight it; the edges follow.
_RW = abi.PROT_READ | abi.PROT_WRITE
_PRIV = abi.MAP_PRIVATE | abi.MAP_ANONYMOUS
LENGTHS = [0x1000, 0x2000, 0x3000, 0x1000, 0x4000, 0x2000, 0x1, 0xFFF, 0x1001, 0x10000, 0x20_0000, 0,
           abi.U64, abi.TASK_SIZE, 1 << 40, 0x7FFF_FFFF_F000 - 0x1_0000]
PROTS = [_RW, _RW, abi.PROT_READ, _RW, abi.PROT_NONE, _RW, abi.PROT_WRITE, abi.PROT_READ | abi.PROT_EXEC,
         abi.PROT_EXEC, 7, abi.PROT_READ | 0x8, 0x10, abi.PROT_GROWSDOWN | 3]
MAP_FLAGS = [_PRIV, _PRIV, abi.MAP_SHARED | abi.MAP_ANONYMOUS, _PRIV, _PRIV | abi.MAP_NORESERVE,
             abi.MAP_SHARED | abi.MAP_ANONYMOUS, _PRIV, abi.MAP_PRIVATE, abi.MAP_ANONYMOUS,
             abi.MAP_SHARED_VALIDATE | abi.MAP_ANONYMOUS, _PRIV | 0x80, abi.MAP_DROPPABLE | abi.MAP_ANONYMOUS,
             abi.MAP_SHARED | abi.MAP_ANONYMOUS | abi.MAP_GROWSDOWN, _PRIV | abi.MAP_GROWSDOWN]
HINTS = [0x1_0000, 0x1000, 0x1234_5678, abi.TASK_SIZE - PAGE, abi.TASK_SIZE, 0x5000_0000_0000]
FIXED_ADDRS = [0x1_0000, 0x2000_0000, abi.TASK_SIZE - 2 * PAGE, 0, 0x1_0001, abi.TASK_SIZE - PAGE, abi.TASK_SIZE]
# Addresses no image or mapping of ours uses: probes there fault (or are EFAULT for syscalls).
WILD = [0, 0x1000, abi.MMAP_MIN_ADDR, abi.TASK_SIZE - 8, abi.TASK_SIZE, 1 << 47,
        0xFFFF_8000_0000_0000, 0xFFFF_FFFF_FF60_0000, abi.U64 - 7]
# Where a fetch may jump without knowing what is there: nothing can ever be mapped (root may map
# page 0, and a hint or MAP_FIXED may map anything else).
FETCH_WILD = [1 << 47, 0xFFFF_8000_0000_0000, abi.U64 - 7]
_BRK_STORE_OFFSETS = (0, 8)
_BRK_LOAD_OFFSETS = (0, -PAGE, 8, -8)
# mprotect: read-only and no-access first, where a stale writable translation shows.
MPROTECT_PROTS = [abi.PROT_READ, abi.PROT_NONE] + PROTS
# Offsets from a mapping's start for probes, relative to its length (None = from the start).
PROBE_OFFSETS = [(None, 0), (None, 8), ("end", -8), (None, PAGE), (None, PAGE - 4), (None, 1),
                 ("end", 0), (None, -8), ("end", 8)]


@dataclass
class _Region:
    result: int
    length: int
    prot: int
    shared: bool
    ok: bool = True            # probably mapped as asked (sane length and flags, not since unmapped)


@dataclass
class _Process:
    """What the generator knows about one process at one point of its step list."""
    image: int
    regions: list[_Region] = field(default_factory=list)
    brks: list[int] = field(default_factory=list)
    heap: list[tuple[int, int]] = field(default_factory=list)            # (brk result, bytes grown above it)
    children: list[tuple[int, bool, bool]] = field(default_factory=list)   # (pid result, holds token, leaf)
    token: bool = True
    has_shared: bool = False
    vfork_child: bool = False
    getppid_ok: bool = True
    depth: int = 0

    def fork(self) -> "_Process":
        return replace(self, regions=list(self.regions), brks=list(self.brks), heap=list(self.heap), children=[])

    @property
    def memory_ok(self) -> bool:
        """May this process touch memory that could be shared with a running process?"""
        return self.token or not self.has_shared


@dataclass
class _Gen:
    draw: object
    spec: ElfSpec
    image: int
    n_images: int
    budget: int
    max_depth: int
    next_result: int = 1

    def result(self) -> int:
        n = self.next_result
        self.next_result += 1
        return n


DIGITS = 12        # choices a span's byte string carries (a step rarely needs more)


class _Draws:
    """The choice sequence of one test case, drawn from directly.

    Going through a strategy per choice (draw(st.integers(...)), one composite per span) cost
    about 30 us a choice and made generation half of a differential case. Here each span (a
    step, a fork, an image, a layout) draws one byte string of DIGITS bytes and its small
    choices read one byte each: one engine choice per step instead of five to ten. Hypothesis
    shrinks a byte string byte by byte towards zero, so every small choice still shrinks
    towards its first option, and whole spans still delete. Choices past the bytes, or wider
    than a byte, fall back to ordinary integer choices."""

    __slots__ = ("data", "integer", "bytes", "start", "stop", "digits", "pos")

    def __init__(self, data) -> None:
        self.data = data
        self.integer = data.draw_integer
        self.bytes = data.draw_bytes
        # Hypothesis renamed examples to spans (6.131); accept both.
        self.start = getattr(data, "start_span", None) or data.start_example
        self.stop = getattr(data, "stop_span", None) or data.stop_example
        self.digits = b""
        self.pos = 0

    def __call__(self, strategy):
        return self.data.draw(strategy)


class _Direct(st.SearchStrategy):
    """A strategy whose value is `make(_Draws(data), *args)`."""

    def __init__(self, name: str, make, *args) -> None:
        super().__init__()
        self._name, self._make, self._args = name, make, args

    def do_draw(self, data):
        return self._make(_Draws(data), *self._args)

    def __repr__(self) -> str:
        return f"{self._name}{self._args!r}"


def _int(draw: _Draws, lo: int, hi: int) -> int:
    """An integer in [lo, hi]; shrinks towards lo. No choice at all when there is no choice."""
    if lo >= hi:
        return lo
    n = hi - lo + 1
    pos = draw.pos
    if n <= 256 and pos < len(draw.digits):
        draw.pos = pos + 1
        return lo + draw.digits[pos] % n
    return draw.integer(lo, hi)


def _bool(draw: _Draws) -> bool:
    return _int(draw, 0, 1) == 1


def _pick(draw: _Draws, options):
    """One of `options`; shrinks towards the first."""
    return options[_int(draw, 0, len(options) - 1)]


def _span(draw: _Draws, label: int, make, *args):
    """`make(draw, *args)`, drawn as one unit of the choice sequence so that Hypothesis can
    delete a whole step (or a whole fork, or a whole image) when it shrinks. The span's small
    choices come from its own byte string."""
    draw.start(label)
    outer = draw.digits, draw.pos
    draw.digits, draw.pos = draw.bytes(DIGITS, DIGITS), 0
    value = make(draw, *args)
    draw.digits, draw.pos = outer
    draw.stop()
    return value


_ETYPES = ("exec", "dyn")
_LAYOUTS = ("split", "shared", "single")
_BSS = (0, 0x10, 0x800, 0x1000, 0x3008)
_BASES = (0x40_0000, 0x1000_0000, 0x10_0000_0000)
_STACKS = ("rw", None, "rwx")
_TEXTS = ("rx", "rwx", "x")               # "x": readable anyway on x86 without PKU


def elf_specs(allow_dyn: bool = True, allow_mutation: bool = False) -> st.SearchStrategy[ElfSpec]:
    """Image layouts: mostly the default, then the other etypes, layouts, bss sizes, stack flags."""
    return st.builds(
        ElfSpec,
        etype=st.sampled_from(_ETYPES if allow_dyn else ["exec"]),
        layout=st.sampled_from(_LAYOUTS),
        bss=st.sampled_from(_BSS),
        base=st.sampled_from(_BASES),
        stack=st.sampled_from(_STACKS),
        text=st.sampled_from(_TEXTS),
        mutation=st.sampled_from([None] + sorted(MUTATIONS)) if allow_mutation else st.none(),
    )


# --- Arguments ---------------------------------------------------------------------------------

def _length(draw) -> int:
    return _pick(draw, LENGTHS)


def _region_addr(draw, region: _Region, for_store: bool) -> Ref:
    base, offset = _pick(draw, PROBE_OFFSETS)
    if base == "end":
        offset += region.length if region.length < (1 << 40) else 0
    if for_store and offset > region.length + 8:
        offset = 0
    return Ref(region.result, offset)


def _probe_addr(draw, proc: _Process, gen: _Gen, for_store: bool) -> int | Ref:
    """An address for a load/store/write buffer: mostly inside a mapping this process made or
    its grown heap, sometimes its own text, a bare break, or somewhere wild (a fault ends the
    process, so wild addresses are rare)."""
    kind = _int(draw, 0, 12)
    if kind == 12:
        return _pick(draw, WILD)
    if kind >= 10 and proc.brks:
        # Below the break (loads only): the image's last data page; for a "shared" layout with
        # a small data segment, the page that holds both the text's tail and the data's head.
        return Ref(_pick(draw, proc.brks), _pick(draw, _BRK_STORE_OFFSETS if for_store else _BRK_LOAD_OFFSETS))
    if kind == 9 and gen.spec.etype == "exec" and not for_store:
        return gen.spec.base + _pick(draw, [0, 16, PAGE])            # our own text: readable
    if kind >= 7 and proc.heap:
        base, length = _pick(draw, proc.heap)
        return Ref(base, _pick(draw, [0, length - 8, 8, length, PAGE + 8]))
    if proc.regions:
        need = abi.PROT_WRITE if for_store else 7
        usable = [r for r in proc.regions if r.ok and r.prot & need]
        if not usable or kind == 6:
            usable = proc.regions
        return _region_addr(draw, _pick(draw, usable), for_store)
    if proc.heap:
        base, length = _pick(draw, proc.heap)
        return Ref(base, _pick(draw, [0, length - 8, 8]))
    return _pick(draw, WILD)


def _range(draw, proc: _Process, replaces: bool) -> tuple[int | Ref, int]:
    """(start, length) for munmap/mprotect/MAP_FIXED: page-aligned mostly, sometimes not, often
    straddling a mapping's end or a hole. When the call `replaces` contents (MAP_FIXED), a
    range based on a mapping stays inside it: what lies next to a mapping (an ET_DYN image's
    code and table, on Linux) is not ours to overwrite. Ranges never start below the break,
    where the image's data may lie."""
    length = _length(draw)
    if replaces and 0x20_0000 < length < abi.TASK_SIZE:
        # A MAP_FIXED that could succeed stays small: a long one from the break or a constant
        # address would replace code (an ET_DYN image, on Linux) with zeros.
        length = 0x20_0000
    if proc.regions and _int(draw, 0, 3) < 3:
        region = _pick(draw, proc.regions)
        end = region.length & ~(PAGE - 1)
        offset = _pick(draw, [0, PAGE, 0x800, -PAGE, 2 * PAGE, end])
        if replaces:
            if not 0 <= offset < region.length or region.length >= 1 << 40:
                offset = 0
            length = min(length, max(PAGE, region.length - offset), 0x20_0000)
        return Ref(region.result, offset), length
    if proc.brks and _bool(draw):
        return Ref(_pick(draw, proc.brks), _pick(draw, [0, PAGE])), length
    return _pick(draw, FIXED_ADDRS), length


# --- Steps -------------------------------------------------------------------------------------

def _mmap(draw, proc: _Process, gen: _Gen) -> list[Step]:
    kind = _int(draw, 0, 11)                 # 0-6: mmap(NULL), 7-8: hint, 9-10: fixed, 11: own image
    length = _length(draw)
    prot = _pick(draw, PROTS)
    flags = _pick(draw, MAP_FLAGS)
    addr: int | Ref = 0
    if kind in (7, 8):
        addr = _pick(draw, HINTS)
    elif kind in (9, 10):
        addr, length = _range(draw, proc, replaces=True)
        flags |= _pick(draw, [abi.MAP_FIXED, abi.MAP_FIXED_NOREPLACE, abi.MAP_FIXED | abi.MAP_FIXED_NOREPLACE])
    elif kind == 11 and gen.spec.etype == "exec" and _bool(draw):
        return _over_own_image(draw, proc, gen, "mmap")
    if flags & abi.MAP_TYPE != abi.MAP_PRIVATE and isinstance(addr, Ref) and not proc.memory_ok:
        flags = (flags & ~abi.MAP_TYPE) | abi.MAP_PRIVATE         # no new sharing under a foreign writer
    n = gen.result()
    shared = flags & abi.MAP_TYPE != abi.MAP_PRIVATE
    if shared:
        proc.has_shared = True                   # conservative: any mapping not plainly private
    ok = (0 < length <= 0x20_0000 and flags & abi.MAP_ANONYMOUS and flags & abi.MAP_TYPE in (1, 2)
          and not flags & (abi.MAP_GROWSDOWN | abi.MAP_FIXED_NOREPLACE) and not isinstance(addr, Ref))
    if prot & abi.PROT_EXEC:
        for region in proc.regions:
            region.prot |= abi.PROT_EXEC          # MAP_FIXED or a hint may have landed on it
    proc.regions.append(_Region(n, length, prot & 7, shared, bool(ok)))
    if flags & abi.MAP_FIXED:
        after = _probe_after(draw, proc, gen, addr)
    elif ok and proc.memory_ok and not proc.vfork_child and prot & _RW and _int(draw, 0, 2) == 2:
        # Touch a fresh mapping at once: its page tables must be the ones the CPU walks (after
        # execve, after fork).
        after = [Step("store", (Ref(n), 0x2A)) if prot & abi.PROT_WRITE else Step("load", (Ref(n),))]
    else:
        after = []
    return [Step("mmap", (addr, length, prot, flags), result=n)] + after


def _over_own_image(draw, proc: _Process, gen: _Gen, op: str) -> list[Step]:
    """mmap(MAP_FIXED)/mprotect/munmap over this ET_EXEC image's own text or data, then exit."""
    page = gen.spec.base + _pick(draw, [PAGE, 0, 2 * PAGE])          # page 1 holds data (split)
    length = _pick(draw, [PAGE, 2 * PAGE])
    prot = _pick(draw, [abi.PROT_READ, abi.PROT_READ | abi.PROT_WRITE, abi.PROT_NONE])   # never X
    result = gen.result() if _bool(draw) else None
    if op == "mmap":
        step = Step("mmap", (page, length, prot, abi.MAP_PRIVATE | abi.MAP_ANONYMOUS | abi.MAP_FIXED), result=result)
    elif op == "mprotect":
        step = Step("mprotect", (page, length, prot), result=result)
    else:
        step = Step("munmap", (page, length), result=result)
    return [step, Step("exit", (_pick(draw, [0, 1, 2]),))]


def _store(draw, proc: _Process, gen: _Gen) -> list[Step]:
    addr = _probe_addr(draw, proc, gen, for_store=True)
    if not proc.vfork_child and _int(draw, 0, 7) == 0:
        # store a `ret` and call it: returns only where the page is executable
        executable = [r for r in proc.regions if r.prot & abi.PROT_EXEC]
        if executable and _bool(draw):
            addr = _region_addr(draw, _pick(draw, executable), for_store=True)
        return [Step("store", (addr, RET)), Step("fetch", (addr,))]
    value = _pick(draw, [0x2A, 0, abi.U64, 0x0A6B6F, 0x8000_0000_0000_0000])
    if proc.regions and _int(draw, 0, 4) == 0:
        value = Ref(_pick(draw, proc.regions).result)                # store a pointer
    return [Step("store", (addr, value))]


def _load(draw, proc: _Process, gen: _Gen) -> list[Step]:
    addr = _probe_addr(draw, proc, gen, for_store=False)
    return [Step("load", (addr,), result=gen.result() if _bool(draw) else None)]


def _fetch(draw, proc: _Process, gen: _Gen) -> list[Step]:
    if _int(draw, 0, 3):
        if gen.spec.etype == "exec":
            return [Step("fetch", (gen.spec.base,))]                 # the ret gadget
        return [Step("sched_yield")]                                 # ET_DYN: no known gadget
    choices: list[int | Ref] = [Ref(r.result) for r in proc.regions if not r.prot & abi.PROT_EXEC]
    return [Step("fetch", (_pick(draw, choices + FETCH_WILD),))]


def _munmap_mprotect(draw, proc: _Process, gen: _Gen, op: str) -> list[Step]:
    if gen.spec.etype == "exec" and _int(draw, 0, 15) == 0:
        return _over_own_image(draw, proc, gen, op)
    addr, length = _range(draw, proc, replaces=False)
    result = gen.result() if _bool(draw) else None
    before = _touch_before(draw, proc, addr)
    for region in proc.regions:
        if isinstance(addr, Ref) and addr.result == region.result and op == "munmap":
            region.ok = False
    if op == "munmap":
        return before + [Step("munmap", (addr, length), result=result)] + _probe_after(draw, proc, gen, addr)
    prot = _pick(draw, MPROTECT_PROTS)
    for region in proc.regions:
        if isinstance(addr, Ref) and addr.result == region.result and addr.offset == 0 and not prot & ~7:
            region.prot = prot | (region.prot & abi.PROT_EXEC)       # X stays: it may still be set
    if prot & abi.PROT_EXEC:
        for region in proc.regions:
            region.prot |= abi.PROT_EXEC                               # ranges may straddle regions
    return before + [Step("mprotect", (addr, length, prot), result=result)] + _probe_after(draw, proc, gen, addr)


def _touch_before(draw, proc: _Process, addr: int | Ref) -> list[Step]:
    """Sometimes touch a range just before munmap/mprotect changes it: the access fills the TLB,
    so a kernel that forgets to flush it keeps using the old translation on the next touch."""
    if not isinstance(addr, Ref) or not proc.memory_ok or proc.vfork_child or not _bool(draw):
        return []                                          # (no touch is what shrinking reaches)
    region = next((r for r in proc.regions if r.result == addr.result), None)
    if region is None or not region.ok or not 0 <= addr.offset < region.length or region.length >= 1 << 40:
        return []
    if region.prot & abi.PROT_WRITE:
        return [Step("store", (addr, _pick(draw, [0x2A, abi.U64])))]
    if region.prot & abi.PROT_READ:
        return [Step("load", (addr,))]
    return []


def _probe_after(draw, proc: _Process, gen: _Gen, addr: int | Ref) -> list[Step]:
    """Often touch the range a munmap/mprotect/MAP_FIXED just changed, at once: a kernel that
    forgets a TLB flush or updates the wrong page table shows it here and nowhere else. Stores
    mostly: a stale writable translation shows only when written through."""
    if not isinstance(addr, Ref) or not proc.memory_ok or proc.vfork_child or _int(draw, 0, 2) == 0:
        return []
    region = next((r for r in proc.regions if r.result == addr.result), None)
    if region is None or not 0 <= addr.offset <= region.length + 8 or _int(draw, 0, 2) == 2:
        return [Step("load", (addr,))]
    return [Step("store", (addr, 0x2A))]


def _brk(draw, proc: _Process, gen: _Gen) -> list[Step]:
    if proc.brks and _int(draw, 0, 3):
        base = _pick(draw, proc.brks)
        delta = _pick(draw, [PAGE, 2 * PAGE, 0x1001, -PAGE, 0x10_0000, 8])
        arg: int | Ref = Ref(base, delta)
        if delta > 0:
            proc.heap.append((base, delta))          # valid if the break was not moved since
    else:
        arg = _pick(draw, [0, 1, abi.TASK_SIZE, abi.U64])
        if arg == 0 and _bool(draw):
            return _grow_heap(draw, proc, gen)
    n = gen.result()
    proc.brks.append(n)
    return [Step("brk", (arg,), result=n)]


def _grow_heap(draw, proc: _Process, gen: _Gen) -> list[Step]:
    """brk(0), grow the break from it, and often write the new heap: memory that fork must copy
    and exec must drop like any mapping's."""
    n, m = gen.result(), gen.result()
    delta = _pick(draw, [PAGE, 2 * PAGE, 0x1001])
    proc.brks += [n, m]
    proc.heap.append((n, delta))
    steps = [Step("brk", (0,), result=n), Step("brk", (Ref(n, delta),), result=m)]
    if proc.memory_ok and not proc.vfork_child and _bool(draw):
        steps.append(Step("store", (Ref(n, _pick(draw, [0, delta - 8])), 0x2A)))
    return steps


def _write(draw, proc: _Process, gen: _Gen) -> list[Step]:
    fd = _pick(draw, [1, 2, 99, -1])
    addr = _probe_addr(draw, proc, gen, for_store=False)
    length = _pick(draw, [8, 1, 0, PAGE, 2 * PAGE])
    return [Step("write", (fd, addr, length), result=gen.result() if _bool(draw) else None)]


def _wait4(draw, proc: _Process, gen: _Gen) -> list[Step]:
    kind = _int(draw, 0, 5)
    options = 0
    if kind <= 1 and proc.children:
        index = _int(draw, 0, len(proc.children) - 1)
        pid_result, holds_token, leaf = proc.children[index]
        options = abi.WNOHANG if kind == 1 else _pick(draw, [0, abi.WALL, abi.WUNTRACED])
        if not options & abi.WNOHANG:
            if holds_token and leaf:
                proc.token = True
            proc.children.pop(index)
        pid: int | Ref = Ref(pid_result)
    elif kind == 2:
        pid, options = -1, _pick(draw, [0, abi.WNOHANG])
    elif kind == 3:
        pid, options = -1, _pick(draw, [0x100, abi.WNOHANG | 0x4, 0x100_0000])    # EINVAL
    elif kind == 4:
        pid = _pick(draw, [1, 0x7FFF_FFFF, -(1 << 31)])                             # ECHILD / ESRCH
    else:
        pid = -1
    result = gen.result() if _int(draw, 0, 2) else None
    return [Step("wait4", (pid, options), result=result)]


def _execve(draw, proc: _Process, gen: _Gen) -> list[Step]:
    # Mostly an image that may exist; sometimes one past the last possible image (ENOENT).
    target = gen.n_images if _int(draw, 0, 3) == 3 else _int(draw, gen.image + 1, max(gen.image + 1, gen.n_images - 1))
    return [Step("execve", (target,), result=gen.result() if _bool(draw) else None)]


# --- Lists -------------------------------------------------------------------------------------

# Ops by weight (repeats), simplest first so shrinking moves towards getpid. brk appears twice:
# a grown heap is memory fork must copy and the break a base for loads below it.
_SIMPLE = ["getpid", "mmap", "store", "load", "mmap", "store", "brk", "munmap", "mprotect", "load",
           "write", "observe", "mmap", "wait4", "store", "observe", "sched_yield", "getppid", "fetch",
           "mprotect", "brk", "execve", "exit"]
_STOP = None                     # the first entries of every step table: end the list (what shrinking tries first)
_STEP_TABLES: dict[tuple, tuple] = {}


def _step_table(proc: _Process, may_exit: bool) -> tuple:
    """The ops this process may draw now, by weight, after the stop entries (built once per kind of
    process: recomputing the filter for every step cost as much as a choice)."""
    key = (proc.vfork_child, proc.memory_ok, bool(proc.regions), bool(proc.heap), proc.getppid_ok, may_exit)
    table = _STEP_TABLES.get(key)
    if table is None:
        ops = tuple(op for op in _SIMPLE if _allowed(op, proc) and (may_exit or op != "exit"))
        # Three stops to every two rounds of the ops: a list of all ops ends after 16 steps on average.
        table = _STEP_TABLES[key] = (_STOP,) * 3 + ops * 2
    return table


def _step(draw, proc: _Process, gen: _Gen, op: str) -> list[Step]:
    if op in ("getpid", "sched_yield", "getppid"):
        return [Step(op, (), result=gen.result() if _bool(draw) else None)]
    if op == "exit":
        return [Step(_pick(draw, ["exit", "exit_group"]), (_pick(draw, [0, 1, 255, 256, 300, -1]),))]
    if op == "observe":
        return [Step("observe")]
    if op in ("munmap", "mprotect"):
        return _munmap_mprotect(draw, proc, gen, op)
    return _MAKERS[op](draw, proc, gen)


def _allowed(op: str, proc: _Process) -> bool:
    if proc.vfork_child:
        return op in ("store", "exit", "execve") and (op != "store" or proc.memory_ok and bool(proc.regions))
    if op == "observe":
        return proc.memory_ok
    if op in ("store", "load", "fetch", "write"):
        return proc.memory_ok and bool(proc.regions or proc.heap or op == "fetch")
    if op == "getppid":
        return proc.getppid_ok
    return True


# Span labels: one per kind of unit, so that mutations swap like with like.
_STEP_SPAN, _FORK_SPAN, _IMAGE_SPAN, _SPEC_SPAN = 0x5EB1, 0x5EB2, 0x5EB3, 0x5EB4


def _maybe_step(draw, proc: _Process, gen: _Gen, force_fork: bool) -> list[Step] | None:
    """The next steps of a list, or None to end it. The decision to go on and the op are one
    choice (the first entries end the list), inside the step's span."""
    if gen.budget <= 0:
        return None
    op = _pick(draw, _step_table(proc, not force_fork))
    if op is _STOP:
        return None
    new = _step(draw, proc, gen, op)
    if force_fork and new[-1].op in ("exit", "exit_group"):
        return []                                        # this list must reach its fork
    return new


_MAKERS = {"mmap": _mmap, "store": _store, "load": _load, "fetch": _fetch, "brk": _brk,
           "write": _write, "wait4": _wait4, "execve": _execve}


def _maybe_fork(draw, proc: _Process, gen: _Gen, force_fork: bool) -> Step | None:
    if (force_fork or (gen.budget > 1 and _int(draw, 0, 3) == 0)) and proc.depth < gen.max_depth \
            and not proc.vfork_child:
        return _fork(draw, proc, gen)
    return None


def _step_list(draw, proc: _Process, gen: _Gen, force_fork: bool) -> tuple[Step, ...]:
    steps: list[Step] = []
    while True:
        new = _span(draw, _STEP_SPAN, _maybe_step, proc, gen, force_fork)
        if new is None:
            break
        gen.budget -= len(new)
        steps += new
        if new and new[-1].op in ("exit", "exit_group"):
            return tuple(steps)
    fork = _span(draw, _FORK_SPAN, _maybe_fork, proc, gen, force_fork)
    if fork is not None:
        steps.append(fork)
    return tuple(steps)


def _fork(draw, proc: _Process, gen: _Gen) -> Step:
    op, flags = _pick(draw, [("fork", None), ("vfork", None), ("clone", int(abi.Signal.SIGCHLD)),
                             ("clone", abi.CLONE_VM | abi.CLONE_VFORK | int(abi.Signal.SIGCHLD))])
    is_vfork = op == "vfork" or (flags is not None and bool(flags & abi.CLONE_VFORK))
    n = gen.result()
    gen.budget -= 1
    child = proc.fork()
    child.depth = proc.depth + 1
    parent = proc
    if is_vfork:
        # The parent is blocked until the child exits or execs: both keep the parent's token.
        child.vfork_child = True
        child.getppid_ok = True
    else:
        leaf = child.depth >= gen.max_depth or _bool(draw)
        if leaf:
            child.depth = gen.max_depth                  # a leaf forks no further
        parent.children.append((n, proc.has_shared and proc.token, leaf))
        if proc.has_shared:
            parent.token = False                         # the child may write the shared pages now
    # The parent's list first: whether it starts by waiting for this child decides getppid.
    parent_share = _int(draw, 0, max(0, gen.budget))
    child_share = gen.budget - parent_share
    gen.budget = parent_share
    parent_steps = _step_list(draw, parent, gen, force_fork=False)
    gen.budget = max(0, gen.budget) + child_share
    if not is_vfork:
        first = parent_steps[0] if parent_steps else None
        child.getppid_ok = bool(first is not None and first.op == "wait4" and first.args[0] == Ref(n)
                                and not first.args[1] & abi.WNOHANG)
    child_steps = _step_list(draw, child, gen, force_fork=False)
    args = () if op != "clone" else (flags,)
    return Step(op, args, result=n, child=child_steps, parent=parent_steps)


def _image_steps(draw, spec: ElfSpec, image: int, n_images: int, budget: int, max_depth: int,
                 forks: bool) -> tuple[Step, ...]:
    gen = _Gen(draw, spec, image, n_images, budget, max_depth)
    root = _Process(image=image, getppid_ok=(image == 0))
    return _step_list(draw, root, gen, force_fork=forks)


def _draw_spec(draw) -> ElfSpec:
    """elf_specs() without mutations, drawn choice by choice."""
    return ElfSpec(etype=_pick(draw, _ETYPES), layout=_pick(draw, _LAYOUTS), bss=_pick(draw, _BSS),
                   base=_pick(draw, _BASES), stack=_pick(draw, _STACKS), text=_pick(draw, _TEXTS))


def _maybe_spec(draw, vary_elf: bool) -> ElfSpec:
    # Half the images vary their layout: "shared" pages, bss tails and ET_DYN placement are
    # where loaders go wrong.
    return _draw_spec(draw) if vary_elf and _bool(draw) else ElfSpec()


def _maybe_image(draw, index: int, max_images: int, budget: int, max_depth: int, forks: bool,
                 vary_elf: bool) -> Image | None:
    if index > 0 and _int(draw, 0, 2) == 0:
        return None
    spec = _span(draw, _SPEC_SPAN, _maybe_spec, vary_elf)
    steps = _image_steps(draw, spec, index, max_images, budget, max_depth, forks)
    return Image(steps, spec)


def _program(draw, max_steps: int, max_images: int, max_depth: int, min_forks: int, vary_elf: bool) -> Program:
    max_images = max(1, max_images)
    first = max_steps if max_images == 1 else (2 * max_steps) // 3
    later = max(2, (max_steps - first) // max(1, max_images - 1))
    images = [_span(draw, _IMAGE_SPAN, _maybe_image, 0, max_images, first, max_depth, min_forks > 0, vary_elf)]
    for index in range(1, max_images):
        image = _span(draw, _IMAGE_SPAN, _maybe_image, index, max_images, later, max_depth, False, vary_elf)
        if image is None:
            break
        images.append(image)
    return Program(tuple(images))


def programs(max_steps: int = DEFAULT_STEPS, max_images: int = 2, max_depth: int = 4,
             min_forks: int = 1, vary_elf: bool = True) -> st.SearchStrategy[Program]:
    """A whole program: image 0 (with at least `min_forks` fork when min_forks > 0) and up to
    `max_images - 1` more images reached by execve; at most about `max_steps` steps in all.
    Image 0 gets two thirds of the budget when there may be more images. execve targets run to
    `max_images`, so a target may be missing (ENOENT)."""
    return _Direct("programs", _program, max_steps, max_images, max_depth, min_forks, vary_elf)


@st.composite
def malformed_programs(draw, max_steps: int = 10) -> Program:
    """Image 0 execve's one to three malformed images (each a different mutation, each an
    `exit(40 + i)` if it runs), takes brk(0) and an observation after each execve (the caller
    must be intact after an error before the point of no return), then runs a drawn tail of
    ordinary steps. Half the time the execves happen in a forked child the root waits for."""
    names = draw(st.lists(st.sampled_from(sorted(MUTATIONS)), min_size=1, max_size=3, unique=True))
    targets = [Image((Step("exit", (40 + i,)),), replace(draw(elf_specs()), mutation=name))
               for i, name in enumerate(names)]
    steps: list[Step] = [Step("brk", (0,), result=1)]
    next_result = 2
    for index in range(1, len(targets) + 1):
        steps.append(Step("execve", (index,), result=next_result))
        next_result += 1
        steps += [Step("brk", (0,), result=next_result), Step("observe")]
        next_result += 1
    tail = draw(_Direct("_image_steps", _image_steps, ElfSpec(), 0, len(targets) + 1, max_steps, 2, False))
    # Renumber the tail's results past ours (the tail was drawn with its own numbering).
    tail = _renumber(tail, next_result - 1)
    if draw(st.booleans()):
        pid = next_result + 1000
        body = tuple(steps[1:])
        root = (steps[0], Step("fork", (), result=pid, child=body,
                              parent=(Step("wait4", (Ref(pid), 0), result=pid + 1),) + tail))
    else:
        root = tuple(steps) + tail
    return Program((Image(tuple(root)),) + tuple(targets))


def _renumber(steps: tuple[Step, ...], shift: int) -> tuple[Step, ...]:
    def arg(a):
        return Ref(a.result + shift, a.offset) if isinstance(a, Ref) else a
    out = []
    for s in steps:
        out.append(Step(s.op, tuple(arg(a) for a in s.args), None if s.result is None else s.result + shift,
                        None if s.child is None else _renumber(s.child, shift),
                        None if s.parent is None else _renumber(s.parent, shift)))
    return tuple(out)
