"""Level 2, the kernel design: page tables, frames with reference counts, VMA lists, the break.

Every transition is `(state, args, choice) -> (allowed, outcome, state')` (DESIGN.md contract 5)
and is written once against model/logic.py and the few dual primitives below, so the same code
runs on Python values (oracle/abstraction.py evaluates the invariants on impl's real state, the
property test runs transitions on random states) and on Z3 terms (specs/prove.py).

Representation choices, and why:
- Pages are virtual page numbers (vpn = va >> 12), so every 64-bit key is a page and no
  invariant needs an alignment guard.
- A page table, a reverse map and the frame table are `SparseMap`s: concretely a dict of the
  non-default entries, symbolically a Python closure over uninterpreted functions. Updates
  compose closures, so the new state at a page is a quantifier-free term over the old state and
  an invariant `ForAll k` on the new state needs only E-matching on the old one (Hyperkernel's
  style, without its update axioms).
- VMAs have two representations behind one interface (vma_find, vma_remove, vma_protect,
  vma_replace, ...). Concretely a sorted tuple of range-based `Vma`s, as kernels keep them (and as
  impl exports them), so "page-aligned" and "non-overlapping" are real properties the oracle
  checks on impl's lists. Symbolically a page-wise map vpn -> (found, prot, shared): every VMA
  update is then pointwise and each page-wise invariant needs one quantifier instance (range
  lists made the solver split slots and compare 64-bit bounds, and did not finish in time).
  The bridge is proved: the `vma_list-*` obligations show, slot by slot (hence for lists of any
  length), that the list operations keep lists well formed and have exactly the page-wise effect.
- Processes are a tuple of slots; a reaped slot is FREE (concretely it is dropped). Bounding the
  processes lets a reference count be a finite sum over slots — refcount[f] = number of live
  processes whose reverse map holds f — together with the invariant that each process's reverse
  map is the exact inverse of its page table (a frame is mapped at most once per process, true
  for anonymous memory without mremap). That replaces Hyperkernel's counter-plus-permutation
  trick by an inverse-function pair per process, with no cardinality and no quantifier over
  owners.
- Contents are abstracted to one word per frame (`data`); a mapped page reads its frame's word,
  an unmapped page reads 0. An image's file contents are one word per page too (ExecveArgs.words):
  execve populates the pages whose word is not 0 with fresh frames, the rest stay demand-zero.
- vfork lends the parent's address space to the child (the parent is blocked meanwhile, so
  moving the mm and moving it back is observationally CLONE_VM): the child's exit or execve
  hands it back.
- MAP_SHARED anonymous pages are populated at mmap time, so every process that inherits the
  mapping maps the same frames (Linux's shmem object, without a page cache).
- PROT_NONE pages keep their frame with the software bit PTE_PROTNONE and no P bit (as Linux's
  _PAGE_PROTNONE), so mprotect back to readable finds the data again.
"""
from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import z3

from ..specs.abi import (
    MAP_ANONYMOUS,
    MAP_FIXED,
    MAP_FIXED_NOREPLACE,
    MAP_HUGETLB,
    MAP_PRIVATE,
    MAP_SHARED,
    MAP_TYPE,
    PAGE_SHIFT,
    PAGE_SIZE,
    PROT_EXEC,
    PROT_GROWSDOWN,
    PROT_GROWSUP,
    PROT_READ,
    PROT_WRITE,
    TASK_SIZE,
    Errno,
    SiCode,
    neg_errno,
)
from .logic import (
    add,
    all_of,
    any_of,
    band,
    bor,
    eq,
    first_true,
    implies,
    is_sym,
    ite,
    ne,
    not_,
    shr,
    sub,
    uge,
    ugt,
    ule,
    ult,
)

# --- PTE bits (x86-64) -------------------------------------------------------------------------
PTE_P = 1 << 0              # present
PTE_RW = 1 << 1             # writable
PTE_US = 1 << 2             # user-accessible
PTE_PROTNONE = 1 << 8       # software: frame kept for a PROT_NONE page, P clear (Linux's bit 8)
PTE_NX = 1 << 63            # no-execute
PROT_RWX = PROT_READ | PROT_WRITE | PROT_EXEC

# --- process slot states -------------------------------------------------------------------------
FREE = 0                    # slot unused (never created, or reaped)
RUNNING = 1
BLOCKED = 2                 # a vfork parent, until its child exits or execs
ZOMBIE = 3                  # exited, not yet reaped

# --- outcomes of memory accesses (syscalls return their own raw values) -------------------------
ACCESS_OK = 0
FAULT_MAPERR = (1 << 32) | int(SiCode.SEGV_MAPERR)   # SIGSEGV, no VMA at the address
FAULT_ACCERR = (1 << 32) | int(SiCode.SEGV_ACCERR)   # SIGSEGV, VMA forbids the access

MIN_USER_ADDR = PAGE_SIZE           # page 0 is never mapped for uid != 0 (linux-facts: EPERM)
FIRST_USER_VPN = MIN_USER_ADDR >> PAGE_SHIFT
END_USER_VPN = TASK_SIZE >> PAGE_SHIFT

PTE_DEFAULT = (0, 0)                # (frame, flags): nothing mapped
RMAP_DEFAULT = (False, 0)           # (mapped, vpn)
FRAME_DEFAULT = (False, 0, 0)       # (used, refcount, data)


# --- the dual primitives ---------------------------------------------------------------------------

def _is_default(value: tuple, default: tuple) -> Any:
    return all_of(*[_eq_any(v, d) for v, d in zip(value, default)])


def _eq_any(a: Any, b: Any) -> Any:
    if isinstance(a, bool) or isinstance(b, bool) or isinstance(a, z3.BoolRef) or isinstance(b, z3.BoolRef):
        if is_sym(a, b):
            return _as_bool(a) == _as_bool(b)
        return a == b
    return eq(a, b)


def _as_bool(x: Any) -> Any:
    return x if isinstance(x, z3.ExprRef) else z3.BoolVal(bool(x))


def sel(cond: Any, then: Any, other: Any) -> Any:
    """ite for every value a state holds: words, booleans, tuples, SparseMaps, dataclasses."""
    if not is_sym(cond):
        return then if cond else other
    if then is other:
        return then
    if isinstance(then, tuple):
        if len(then) != len(other):
            if not all(isinstance(v, Vma) for v in then + other):
                raise ValueError("sel: tuples of different lengths cannot be merged")
            # VMA lists of different widths: the shorter one gets unused slots.
            n = max(len(then), len(other))
            then = then + (Vma(False, 0, 0, 0, False),) * (n - len(then))
            other = other + (Vma(False, 0, 0, 0, False),) * (n - len(other))
        return tuple(sel(cond, a, b) for a, b in zip(then, other))
    if isinstance(then, SparseMap):
        return then.__ite__(cond, other)
    if dataclasses.is_dataclass(then):
        return type(then)(**{f.name: sel(cond, getattr(then, f.name), getattr(other, f.name))
                             for f in dataclasses.fields(then)})
    if then is None and other is None:
        return None
    if isinstance(then, (str, type(None))) or isinstance(other, (str, type(None))):
        if then == other:
            return then
        raise ValueError(f"sel: cannot merge {then!r} and {other!r} symbolically")
    return ite(cond, then, other)


_fresh = itertools.count()


def fresh_word(name: str) -> z3.BitVecRef:
    """A fresh 64-bit constant (symbolic states, hidden choices)."""
    return z3.BitVec(f"{name}!{next(_fresh)}", 64)


class SparseMap:
    """key -> value tuple with a default: concretely a dict of non-default entries, symbolically a
    function from a key term to a tuple of terms."""

    __slots__ = ("entries", "fn", "default")

    def __init__(self, default: tuple, entries: dict | None = None, fn: Callable | None = None):
        self.default = default
        self.entries = entries if fn is None else None
        if fn is None and entries is None:
            self.entries = {}
        self.fn = fn

    @property
    def symbolic(self) -> bool:
        return self.fn is not None

    def get(self, key: Any) -> tuple:
        if self.fn is not None:
            return self.fn(key)
        if is_sym(key):
            # A concrete map read at a symbolic key: an ite chain over its entries.
            result = self.default
            for k, v in self.entries.items():
                result = sel(eq(key, k), v, result)
            return result
        return self.entries.get(key, self.default)

    def set(self, key: Any, value: tuple, cond: Any = True) -> "SparseMap":
        """The map with key -> value where cond holds (cond lets a guarded update stay one term)."""
        if self.fn is not None or is_sym(key, cond, *value):
            old = self._as_fn()
            return SparseMap(self.default, fn=lambda k: sel(all_of(cond, eq(k, key)), value, old(k)))
        if not cond:
            return self
        entries = dict(self.entries)
        if all(v == d for v, d in zip(value, self.default)):
            entries.pop(key, None)
        else:
            entries[key] = value
        return SparseMap(self.default, entries)

    def update(self, fn: Callable[[Any, tuple], tuple], touched: Callable[[], Iterable] = tuple) -> "SparseMap":
        """new(k) = fn(k, old(k)) for every key. Concretely fn is applied to the support and to the
        keys `touched()` lists (evaluated only on concrete maps); fn must map a default entry
        outside those keys to the default."""
        if self.fn is not None:
            old = self.fn
            return SparseMap(self.default, fn=lambda k: fn(k, old(k)))
        entries: dict = {}
        keys = set(self.entries)
        keys.update(touched())
        for k in keys:
            v = fn(k, self.entries.get(k, self.default))
            if is_sym(*v):
                raise TypeError("SparseMap.update: a concrete map got symbolic values")
            if not all(a == d for a, d in zip(v, self.default)):
                entries[k] = v
        return SparseMap(self.default, entries)

    def forall(self, pred: Callable[[Any, tuple], Any]) -> Any:
        """pred(k, v) for every non-default entry."""
        if self.fn is not None:
            k = z3.BitVec(f"k!{next(_fresh)}", 64)
            v = self.fn(k)
            return z3.ForAll([k], z3.Implies(_as_bool(not_(_is_default(v, self.default))),
                                             _as_bool(pred(k, v))))
        return all(pred(k, v) for k, v in self.entries.items())

    def items(self):
        """Concrete entries (sorted by key)."""
        if self.fn is not None:
            raise TypeError("a symbolic map has no item list")
        return sorted(self.entries.items())

    def _as_fn(self) -> Callable:
        if self.fn is not None:
            return self.fn
        m = self
        return lambda k: m.get(k)

    def __ite__(self, cond: Any, other: "SparseMap") -> "SparseMap":
        a, b = self._as_fn(), other._as_fn()
        return SparseMap(self.default, fn=lambda k: sel(cond, a(k), b(k)))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SparseMap) or self.symbolic or other.symbolic:
            return NotImplemented
        return self.entries == other.entries

    def __repr__(self) -> str:
        if self.fn is not None:
            return "SparseMap(<symbolic>)"
        return f"SparseMap({self.entries!r})"


def forall_keys(maps: tuple[SparseMap, ...], pred: Callable[[Any], Any]) -> Any:
    """pred(k) for every key where any of `maps` is not default (pred must hold where all are)."""
    if any(m.symbolic for m in maps):
        k = z3.BitVec(f"f!{next(_fresh)}", 64)
        some = z3.Or(*[_as_bool(not_(_is_default(m.get(k), m.default))) for m in maps])
        return z3.ForAll([k], z3.Implies(some, _as_bool(pred(k))))
    keys: set = set()
    for m in maps:
        keys.update(m.entries)
    return all(pred(k) for k in keys)


# --- state -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Vma:
    used: Any           # slot holds a VMA (always True in a concrete state)
    start: Any          # first byte, page-aligned
    end: Any            # one past the last byte, page-aligned
    prot: Any           # PROT_READ | PROT_WRITE | PROT_EXEC bits
    shared: Any         # MAP_SHARED (frames stay shared across fork)


@dataclass(frozen=True)
class Proc:
    pid: Any
    state: Any          # FREE / RUNNING / BLOCKED / ZOMBIE
    parent: Any         # the parent's pid (the reaper's after an orphaning exit)
    vfork_parent: Any   # pid whose address space this process borrows (vfork), or 0
    status: Any         # exit code (a ZOMBIE's)
    vmas: tuple         # of Vma
    brk_start: Any      # start of the heap (page-aligned)
    brk: Any            # the program break
    pt: SparseMap       # vpn -> (frame, flags)
    rmap: SparseMap     # frame -> (mapped, vpn): the inverse of pt


@dataclass(frozen=True)
class KState:
    procs: tuple        # of Proc
    frames: SparseMap   # frame -> (used, refcount, data)
    reaper: Any         # pid orphans are re-parented to (impl's init, Linux's subreaper)
    cow: bool = True    # fork strategy: copy-on-write (True) or eager copy by VMA (False)


@dataclass(frozen=True)
class Alloc:
    """A bijection between the pages that need a fresh frame and free frames (a kernel choice)."""
    fwd: SparseMap      # vpn -> (frame,)
    inv: SparseMap      # frame -> (is_target, vpn)


@dataclass(frozen=True)
class Choice:
    pid: Any = 0                # fork/vfork: the child's pid
    frame: Any = 0              # a demand-zero or copy-on-write fault: the frame to allocate
    addr: Any = 0               # mmap without MAP_FIXED: where the kernel placed the mapping
    alloc: Alloc | None = None  # eager fork, MAP_SHARED mmap: fresh frames per page


def alloc_from_dict(pages: dict[int, int]) -> Alloc:
    """A concrete Alloc from vpn -> frame."""
    return Alloc(SparseMap((0,), {p: (f,) for p, f in pages.items()}),
                 SparseMap((False, 0), {f: (True, p) for p, f in pages.items()}))


def empty_pt() -> SparseMap:
    return SparseMap(PTE_DEFAULT)


def empty_rmap() -> SparseMap:
    return SparseMap(RMAP_DEFAULT)


# --- small predicates (the only place bit tests and range checks are written) -----------------------

def vpn_of(va: Any) -> Any:
    return shr(va, PAGE_SHIFT)


def page_align_up(n: Any) -> Any:
    return band(add(n, PAGE_SIZE - 1), ~(PAGE_SIZE - 1))


def is_page_aligned(va: Any) -> Any:
    return eq(band(va, PAGE_SIZE - 1), 0)


def is_live(p: Proc) -> Any:
    return ne(p.state, FREE)


def pte_mapped(pte: tuple) -> Any:
    """The entry holds a frame (present, or kept for PROT_NONE)."""
    return ne(pte[1], 0)


def pte_present(pte: tuple) -> Any:
    return ne(band(pte[1], PTE_P), 0)


def pte_writable(pte: tuple) -> Any:
    return ne(band(pte[1], PTE_RW), 0)


def pte_user(pte: tuple) -> Any:
    return ne(band(pte[1], PTE_US), 0)


def pte_executable(pte: tuple) -> Any:
    return eq(band(pte[1], PTE_NX), 0)


def pte_flags_for(prot: Any, writable: Any) -> Any:
    """The x86-64 flags of a mapped page in a VMA with `prot`; `writable` is False for a private
    page still shared copy-on-write. W or X imply R (x86 cannot express write-only pages)."""
    rw = all_of(ne(band(prot, PROT_WRITE), 0), writable)
    return ite(eq(band(prot, PROT_RWX), 0), PTE_PROTNONE,
               bor(bor(PTE_P | PTE_US, ite(rw, PTE_RW, 0)),
                   ite(eq(band(prot, PROT_EXEC), 0), PTE_NX, 0)))


def vma_contains(v: Vma, vpn: Any) -> Any:
    return all_of(v.used, ule(vpn_of(v.start), vpn), ult(vpn, vpn_of(v.end)))


def _umin(a: Any, b: Any) -> Any:
    return ite(ult(a, b), a, b)


def _umax(a: Any, b: Any) -> Any:
    return ite(ult(a, b), b, a)


def _compact(vmas: Iterable[Vma]) -> tuple:
    vmas = tuple(vmas)
    if any(is_sym(v.used, v.start) for v in vmas):
        return vmas
    return tuple(sorted((v for v in vmas if v.used), key=lambda v: v.start))


# --- VMA lists (range-based: the concrete representation, and the slot tuples of the list proofs) --

def list_find(vmas: tuple, vpn: Any) -> tuple[Any, Any, Any]:
    """(found, prot, shared) of the VMA holding page vpn (the first slot that does)."""
    if not is_sym(vpn) and not any(is_sym(v.used, v.start, v.end) for v in vmas):
        for v in vmas:                      # concrete fast path (the oracle's)
            if v.used and v.start >> PAGE_SHIFT <= vpn < v.end >> PAGE_SHIFT:
                return True, v.prot, v.shared
        return False, 0, False
    found, prot, shared = False, 0, False
    for v in reversed(vmas):
        hit = vma_contains(v, vpn)
        found = any_of(hit, found)
        prot = ite(hit, v.prot, prot)
        shared = sel(hit, v.shared, shared)
    return found, prot, shared


def list_intersects(vmas: tuple, start: Any, end: Any) -> Any:
    """Some VMA overlaps [start, end)."""
    return any_of(*[all_of(v.used, ult(v.start, end), ult(start, v.end)) for v in vmas])


def list_remove(vmas: tuple, start: Any, end: Any) -> tuple:
    """The VMAs with [start, end) cut out (edge VMAs split)."""
    out = []
    for v in vmas:
        out.append(Vma(all_of(v.used, ult(v.start, _umin(v.end, start))), v.start, _umin(v.end, start),
                       v.prot, v.shared))
        out.append(Vma(all_of(v.used, ult(_umax(v.start, end), v.end)), _umax(v.start, end), v.end,
                       v.prot, v.shared))
    return _compact(out)


def list_protect(vmas: tuple, start: Any, end: Any, prot: Any) -> tuple:
    """The VMAs with the part inside [start, end) given `prot` (edge VMAs split)."""
    out = []
    for v in vmas:
        lo, hi = _umax(v.start, start), _umin(v.end, end)
        out.append(Vma(all_of(v.used, ult(v.start, _umin(v.end, start))), v.start, _umin(v.end, start),
                       v.prot, v.shared))
        out.append(Vma(all_of(v.used, ult(lo, hi)), lo, hi, prot, v.shared))
        out.append(Vma(all_of(v.used, ult(_umax(v.start, end), v.end)), _umax(v.start, end), v.end,
                       v.prot, v.shared))
    return _compact(out)


def list_replace(vmas: tuple, start: Any, end: Any, prot: Any, shared: Any) -> tuple:
    """The VMAs with [start, end) replaced by one VMA (MAP_FIXED's implicit munmap)."""
    return _compact(list_remove(vmas, start, end) + (Vma(True, start, end, prot, shared),))


def list_first_gap(vmas: tuple, start: Any, end: Any) -> Any:
    """The first address in [start, end] not covered by a VMA, end if none (concrete lists only)."""
    at = start
    for v in sorted(vmas, key=lambda v: v.start):
        if v.end <= at:
            continue
        if v.start > at:
            break
        at = v.end
    return min(at, end)


# --- the VMAs of a process: a range-based list, or (symbolic states) a page-wise map --------------
# Symbolically a process's VMAs are a SparseMap vpn -> (found, prot, shared): every update is then
# pointwise and each page-wise invariant needs one quantifier instance. The range-based list
# operations above are proved to refine these page-wise ones, and to keep lists page-aligned,
# disjoint and inside user space, by the `vma_list-*` obligations (specs/obligations.py).

VMA_DEFAULT = (False, 0, False)


def _range(start: Any, end: Any) -> Callable[[Any], Any]:
    lo, hi = vpn_of(start), vpn_of(end)
    return lambda k: all_of(ule(lo, k), ult(k, hi))


def vma_find(vmas: Any, vpn: Any) -> tuple[Any, Any, Any]:
    """(found, prot, shared) of page vpn."""
    if isinstance(vmas, SparseMap):
        return vmas.get(vpn)
    return list_find(vmas, vpn)


find_vma = vma_find


def vma_remove(vmas: Any, start: Any, end: Any) -> Any:
    if isinstance(vmas, SparseMap):
        inside = _range(start, end)
        return vmas.update(lambda k, v: sel(inside(k), VMA_DEFAULT, v))
    return list_remove(vmas, start, end)


def vma_protect(vmas: Any, start: Any, end: Any, prot: Any) -> Any:
    if isinstance(vmas, SparseMap):
        inside = _range(start, end)
        return vmas.update(lambda k, v: sel(all_of(inside(k), v[0]), (True, prot, v[2]), v))
    return list_protect(vmas, start, end, prot)


def vma_replace(vmas: Any, start: Any, end: Any, prot: Any, shared: Any) -> Any:
    if isinstance(vmas, SparseMap):
        inside = _range(start, end)
        return vmas.update(lambda k, v: sel(inside(k), (True, prot, shared), v))
    return list_replace(vmas, start, end, prot, shared)


def vma_empty(vmas: Any) -> Any:
    if isinstance(vmas, SparseMap):
        return SparseMap(VMA_DEFAULT, fn=lambda k: VMA_DEFAULT)
    return ()


def vma_from_segments(like: Any, segments: tuple) -> Any:
    """A process's VMAs holding exactly `segments`, in the representation of `like`."""
    if isinstance(like, SparseMap):
        return SparseMap(VMA_DEFAULT, fn=lambda k: list_find(segments, k))
    return _compact(segments)


def vma_intersects(vmas: Any, start: Any, end: Any) -> tuple[Any, Any]:
    """(b, constraint): b says some page of [start, end) is in a VMA. On a page-wise map b is a
    fresh boolean pinned down by the constraint (a witness page, or none in the range), which goes
    into `allowed` so that no existential quantifier sits inside the new state."""
    if not isinstance(vmas, SparseMap):
        return list_intersects(vmas, start, end), True
    b, wit = z3.Bool(f"hit!{next(_fresh)}"), fresh_word("witness")
    inside = _range(start, end)
    k = z3.BitVec(f"i!{next(_fresh)}", 64)
    none = z3.ForAll([k], z3.Implies(_as_bool(inside(k)), z3.Not(_as_bool(vmas.get(k)[0]))))
    return b, z3.And(z3.Implies(b, _as_bool(all_of(inside(wit), vmas.get(wit)[0]))), z3.Implies(z3.Not(b), none))


def vma_first_gap(vmas: Any, start: Any, end: Any) -> tuple[Any, Any]:
    """(g, constraint): g is the first address in [start, end] not covered by a VMA (end if none).
    On a page-wise map g is a fresh constant pinned down by the constraint (goes into `allowed`)."""
    if not isinstance(vmas, SparseMap):
        return list_first_gap(vmas, start, end), True
    g = fresh_word("gap")
    k = z3.BitVec(f"g!{next(_fresh)}", 64)
    covered = z3.ForAll([k], z3.Implies(_as_bool(_range(start, g)(k)), _as_bool(vmas.get(k)[0])))
    return g, all_of(ule(start, g), ule(g, end), is_page_aligned(g), covered,
                     any_of(eq(g, end), not_(vmas.get(vpn_of(g))[0])))


def user_range_ok(start: Any, length: Any) -> Any:
    """[start, start+length) is inside user space (page 0 excluded) and does not wrap."""
    return all_of(uge(start, MIN_USER_ADDR), ule(length, TASK_SIZE), ule(start, sub(TASK_SIZE, length)))


def find_proc(s: KState, pid: Any) -> tuple[Any, Proc]:
    """(found, proc): the live process with `pid` (the last matching slot if pids repeat)."""
    found, proc = False, s.procs[0]
    for p in s.procs:
        hit = all_of(is_live(p), eq(p.pid, pid))
        found = any_of(found, hit)
        proc = sel(hit, p, proc)
    return found, proc


def _replace_caller(s: KState, pid: Any, fn: Callable[[Proc], Proc]) -> tuple:
    return tuple(sel(all_of(is_live(p), eq(p.pid, pid)), fn(p), p) for p in s.procs)


def _running(s: KState, pid: Any) -> tuple[Any, Proc]:
    found, proc = find_proc(s, pid)
    return all_of(found, eq(proc.state, RUNNING)), proc


def refcount_of(s: KState, f: Any) -> Any:
    return s.frames.get(f)[1]


def unmap_pages(p: Proc, in_range: Callable[[Any], Any]) -> tuple[SparseMap, SparseMap]:
    """(pt', rmap') of p with the pages satisfying in_range(vpn) unmapped."""
    pt = p.pt.update(lambda k, pte: sel(in_range(k), PTE_DEFAULT, pte))
    rmap = p.rmap.update(lambda f, r: sel(all_of(r[0], in_range(r[1])), RMAP_DEFAULT, r))
    return pt, rmap


def drop_frames(s: KState, caller: Proc, in_range: Callable[[Any], Any]) -> SparseMap:
    """The frame table after the caller unmapped the pages satisfying in_range(vpn): each of their
    frames loses one reference, and is free when none is left."""
    def drop(f: Any, fr: tuple) -> tuple:
        r = caller.rmap.get(f)
        hit = all_of(r[0], in_range(r[1]))
        rc = sub(fr[1], ite(hit, 1, 0))
        return (sel(hit, ne(rc, 0), fr[0]), rc, fr[2])
    return s.frames.update(drop)


# --- transitions -----------------------------------------------------------------------------------
# Each returns (allowed, outcome, state'). `allowed` is False when the caller cannot run (no
# such RUNNING process) or a kernel choice is illegal; errors the kernel reports are outcomes.

@dataclass(frozen=True)
class MmapArgs:
    pid: Any
    addr: Any
    length: Any
    prot: Any
    flags: Any
    offset: Any = 0     # the file offset: must be page-aligned even for an anonymous mapping


def mmap(s: KState, a: MmapArgs, c: Choice) -> tuple[Any, Any, KState]:
    """Anonymous mmap, with Linux's checks in Linux's order (x86 sys_mmap, do_mmap,
    __get_unmapped_area; linux-facts "mmap", uid != 0), as level 1 states them: the refinement
    obligations (model/refinement/mmap.py) prove the two agree. There are no files (without
    MAP_ANONYMOUS fget(fd) fails: EBADF) and no reserved huge pages (MAP_HUGETLB: ENOMEM).
    Not modelled: MAP_GROWSDOWN (level 2 has no growsdown VMAs), MAP_DROPPABLE (refused as a bad
    map type, where Linux accepts it) and resource failures; the refinement's scope excludes them.
    Without MAP_FIXED the kernel's placement is the choice c.addr: a free page-aligned user range,
    or an address past TASK_SIZE - len when no gap fits (ENOMEM). MAP_FIXED replaces what was
    there (implicit munmap)."""
    ok_caller, caller = _running(s, a.pid)
    length = page_align_up(a.length)
    mtype = band(a.flags, MAP_TYPE)
    fixed = ne(band(a.flags, MAP_FIXED | MAP_FIXED_NOREPLACE), 0)     # do_mmap: NOREPLACE implies FIXED
    noreplace = ne(band(a.flags, MAP_FIXED_NOREPLACE), 0)
    shared = eq(mtype, MAP_SHARED)
    addr = ite(fixed, a.addr, c.addr)
    end = add(addr, length)
    hit, hit_ok = vma_intersects(caller.vmas, addr, end)
    einval, enomem = neg_errno(Errno.EINVAL), neg_errno(Errno.ENOMEM)
    early = [(ne(band(a.offset, PAGE_SIZE - 1), 0), einval),             # EINVAL: x86 sys_mmap checks off first
             (eq(band(a.flags, MAP_ANONYMOUS), 0), neg_errno(Errno.EBADF)),  # EBADF: no files, fget(fd) fails
             (eq(a.length, 0), einval),                                  # EINVAL: do_mmap "if (!len)"
             (ne(band(a.flags, MAP_HUGETLB), 0), enomem),                # ENOMEM: no huge pages reserved
             (eq(length, 0), enomem),                                    # ENOMEM: PAGE_ALIGN(len) wrapped to 0
             (ugt(length, TASK_SIZE), enomem)]                           # ENOMEM: len > TASK_SIZE
    # MAP_FIXED with an address in the errno range: IS_ERR_VALUE takes it for an error and
    # do_mmap returns it as it is (Linux 6.18), with nothing mapped.
    err_value = all_of(fixed, uge(a.addr, 0xFFFF_FFFF_FFFF_F001))     # addr >= -4095
    late = [(ugt(addr, sub(TASK_SIZE, length)), enomem),                 # ENOMEM: addr > TASK_SIZE - len
            (not_(is_page_aligned(addr)), einval),                       # EINVAL: offset_in_page(addr)
            (ult(addr, MIN_USER_ADDR), neg_errno(Errno.EPERM)),          # EPERM: below vm.mmap_min_addr
            (all_of(noreplace, hit), neg_errno(Errno.EEXIST)),           # EEXIST: NOREPLACE hit
            (all_of(not_(shared), ne(mtype, MAP_PRIVATE)), einval)]      # EINVAL: bad map type
    placing = all_of(not_(fixed), *[not_(cond) for cond, _ in early])
    ok = all_of(*[not_(cond) for cond, _ in early + [(err_value, 0)] + late])
    out = first_true(early + [(err_value, a.addr)] + late, addr)
    lo, hi = vpn_of(addr), vpn_of(end)

    def in_range(k: Any) -> Any:
        return all_of(ule(lo, k), ult(k, hi))
    frames = drop_frames(s, caller, in_range)
    # The kernel picks a free gap (non-FIXED) and, for MAP_SHARED, a fresh frame per page.
    placed_ok = all_of(is_page_aligned(c.addr),
                       any_of(ugt(c.addr, sub(TASK_SIZE, length)), all_of(uge(c.addr, MIN_USER_ADDR), not_(hit))))
    alloc_ok = not_(shared)
    if c.alloc is not None:
        alloc_ok = any_of(not_(shared), _alloc_ok(s, c.alloc, in_range))
        fwd, inv = c.alloc.fwd, c.alloc.inv
        frames = frames.update(lambda f, fr: sel(all_of(shared, inv.get(f)[0]), (True, 1, 0), fr),
                               touched=lambda: [f for f, _ in inv.items()] if shared else ())

    def update(p: Proc) -> Proc:
        pt, rmap = unmap_pages(p, in_range)
        vmas = vma_replace(p.vmas, addr, end, band(a.prot, PROT_RWX), shared)
        if c.alloc is not None:
            flags = pte_flags_for(a.prot, True)
            pt = pt.update(lambda k, pte: sel(all_of(shared, in_range(k)), (fwd.get(k)[0], flags), pte),
                           touched=lambda: range(lo, hi) if shared else ())
            rmap = rmap.update(lambda f, r: sel(all_of(shared, inv.get(f)[0]), (True, inv.get(f)[1]), r),
                               touched=lambda: [f for f, _ in inv.items()] if shared else ())
        return dataclasses.replace(p, vmas=vmas, pt=pt, rmap=rmap)
    new = dataclasses.replace(s, procs=_replace_caller(s, a.pid, update), frames=frames)
    allowed = all_of(ok_caller, hit_ok, implies(placing, placed_ok), implies(ok, alloc_ok))
    return allowed, out, sel(ok, new, s)


def _alloc_ok(s: KState, alloc: Alloc, needs: Callable[[Any], Any]) -> Any:
    """alloc is a bijection between the pages with needs(vpn) and free frames."""
    fwd, inv = alloc.fwd, alloc.inv
    if not fwd.symbolic and not inv.symbolic:
        pages = [k for k, _ in fwd.items()]
        targets = [v[0] for _, v in fwd.items()]
        return (len(set(targets)) == len(targets)
                and all(not s.frames.get(f)[0] for f in targets)
                and all(inv.get(fwd.get(k)[0]) == (True, k) for k in pages))
    k = z3.BitVec(f"a!{next(_fresh)}", 64)
    f = z3.BitVec(f"b!{next(_fresh)}", 64)
    fwd_ok = z3.ForAll([k], z3.Implies(_as_bool(needs(k)), _as_bool(all_of(
        not_(s.frames.get(fwd.get(k)[0])[0]),
        inv.get(fwd.get(k)[0])[0], eq(inv.get(fwd.get(k)[0])[1], k)))))
    inv_ok = z3.ForAll([f], z3.Implies(_as_bool(inv.get(f)[0]), _as_bool(all_of(
        needs(inv.get(f)[1]), eq(fwd.get(inv.get(f)[1])[0], f)))))
    return z3.And(fwd_ok, inv_ok)


@dataclass(frozen=True)
class RangeArgs:
    pid: Any
    addr: Any
    length: Any
    prot: Any = 0


def munmap(s: KState, a: RangeArgs, c: Choice) -> tuple[Any, Any, KState]:
    """munmap: unmapped parts of the range are ignored; edge VMAs split (linux-facts "munmap")."""
    ok_caller, caller = _running(s, a.pid)
    length = page_align_up(a.length)
    bad = any_of(not_(is_page_aligned(a.addr)), eq(a.length, 0),        # EINVAL: unaligned, length 0
                 ugt(a.addr, TASK_SIZE), ugt(a.length, sub(TASK_SIZE, a.addr)),  # EINVAL: past TASK_SIZE
                 eq(length, 0))                                         # EINVAL: length wraps
    end = add(a.addr, length)
    lo, hi = vpn_of(a.addr), vpn_of(end)
    in_range = lambda k: all_of(ule(lo, k), ult(k, hi))  # noqa: E731

    def update(p: Proc) -> Proc:
        pt, rmap = unmap_pages(p, in_range)
        return dataclasses.replace(p, vmas=vma_remove(p.vmas, a.addr, end), pt=pt, rmap=rmap)
    new = dataclasses.replace(s, procs=_replace_caller(s, a.pid, update), frames=drop_frames(s, caller, in_range))
    return ok_caller, ite(bad, neg_errno(Errno.EINVAL), 0), sel(bad, s, new)


def mprotect(s: KState, a: RangeArgs, c: Choice) -> tuple[Any, Any, KState]:
    """mprotect: changes the VMAs from addr up to the first gap; ENOMEM if there was one
    (linux-facts "mprotect": pages before the hole change). Mapped pages get the new rights,
    except that a private page shared copy-on-write stays read-only. Checks in Linux's order
    (do_mprotect_pkey); level 2 has no MAP_GROWSDOWN VMAs, so PROT_GROWS* never changes anything."""
    ok_caller, caller = _running(s, a.pid)
    length = page_align_up(a.length)
    end = add(a.addr, length)
    grows = band(a.prot, PROT_GROWSDOWN | PROT_GROWSUP)
    hit, hit_ok = vma_intersects(caller.vmas, a.addr, end)
    start_mapped = find_vma(caller.vmas, vpn_of(a.addr))[0]
    gap, gap_ok = vma_first_gap(caller.vmas, a.addr, end)
    einval, enomem = neg_errno(Errno.EINVAL), neg_errno(Errno.ENOMEM)
    out = ite(eq(grows, PROT_GROWSDOWN | PROT_GROWSUP), einval,          # EINVAL: both GROWS bits, first
          ite(not_(is_page_aligned(a.addr)), einval,                     # EINVAL: unaligned (even len 0)
          ite(eq(a.length, 0), 0,                                        # 0: length 0, before prot checks
          ite(ule(end, a.addr), enomem,                                  # ENOMEM: end <= start (wraps)
          ite(ne(band(a.prot, ~(0xF | PROT_GROWSDOWN | PROT_GROWSUP)), 0), einval,   # EINVAL: arch_validate_prot
          ite(ne(band(grows, PROT_GROWSDOWN), 0), ite(hit, einval, enomem),  # GROWSDOWN: no VM_GROWSDOWN vma
          ite(not_(start_mapped), enomem,                                # ENOMEM: start in a hole
          ite(ne(grows, 0), einval,                                      # EINVAL: GROWSUP (no VM_GROWSUP on x86)
          ite(eq(gap, end), 0, enomem)))))))))                           # ENOMEM: a hole before end
    changes = any_of(eq(out, 0), all_of(eq(out, enomem), eq(grows, 0), start_mapped, ne(a.length, 0),
                                        ugt(end, a.addr), eq(band(a.prot, ~0xF), 0), is_page_aligned(a.addr)))
    prot = band(a.prot, PROT_RWX)
    lo, hi = vpn_of(a.addr), vpn_of(gap)

    def update(p: Proc) -> Proc:
        def reprotect(k: Any, pte: tuple) -> tuple:
            in_run = all_of(ule(lo, k), ult(k, hi), pte_mapped(pte))
            # The VMA's sharing is unchanged; a private frame still shared copy-on-write stays read-only.
            writable = any_of(find_vma(p.vmas, k)[2], eq(refcount_of(s, pte[0]), 1))
            return sel(in_run, (pte[0], pte_flags_for(prot, writable)), pte)
        return dataclasses.replace(p, vmas=vma_protect(p.vmas, a.addr, gap, prot), pt=p.pt.update(reprotect))
    new = dataclasses.replace(s, procs=_replace_caller(s, a.pid, update))
    return all_of(ok_caller, hit_ok, implies(changes, gap_ok)), out, sel(changes, new, s)


@dataclass(frozen=True)
class BrkArgs:
    pid: Any
    addr: Any


def brk(s: KState, a: BrkArgs, c: Choice) -> tuple[Any, Any, KState]:
    """brk returns the new break, or the old one when refused: below the heap start, past
    TASK_SIZE, growing to less than one free page below the next mapping, or shrinking where
    nothing is mapped (linux-facts "brk"). Grow maps RW private pages, shrink unmaps; a move
    within the same page only records the (unaligned) break."""
    ok_caller, caller = _running(s, a.pid)
    old_top, new_top = page_align_up(caller.brk), page_align_up(a.addr)
    grow = ugt(new_top, old_top)
    shrink = ult(new_top, old_top)
    mapped_below, below_ok = vma_intersects(caller.vmas, new_top, old_top)
    # Linux leaves one free page between the heap and the next mapping.
    hit, hit_ok = vma_intersects(caller.vmas, old_top, add(new_top, PAGE_SIZE))
    refused = any_of(ult(a.addr, caller.brk_start),                     # below mm->start_brk
                     ult(new_top, a.addr),                              # PAGE_ALIGN wraps
                     all_of(shrink, not_(mapped_below)),                # shrink: no VMA in [newbrk, oldbrk)
                     all_of(grow, any_of(ugt(new_top, TASK_SIZE), hit)))  # grow: past TASK_SIZE, too close
    lo, hi = vpn_of(new_top), vpn_of(old_top)
    in_range = lambda k: all_of(shrink, ule(lo, k), ult(k, hi))  # noqa: E731 -- shrink only

    def update(p: Proc) -> Proc:
        grown = vma_replace(p.vmas, old_top, new_top, PROT_READ | PROT_WRITE, False)
        shrunk = vma_remove(p.vmas, new_top, old_top)
        pt, rmap = unmap_pages(p, in_range)
        return dataclasses.replace(p, vmas=sel(grow, grown, sel(shrink, shrunk, p.vmas)), pt=pt, rmap=rmap,
                                   brk=a.addr)
    new = dataclasses.replace(s, procs=_replace_caller(s, a.pid, update), frames=drop_frames(s, caller, in_range))
    ok = not_(refused)
    return all_of(ok_caller, hit_ok, below_ok), ite(ok, a.addr, caller.brk), sel(ok, new, s)


@dataclass(frozen=True)
class ForkArgs:
    pid: Any
    vfork: bool = False


def fork(s: KState, a: ForkArgs, c: Choice) -> tuple[Any, Any, KState]:
    """fork: the child gets a copy of the VMAs and page tables. Copy-on-write: both map the same
    frames, private ones write-protected. Eager: private pages are copied into fresh frames by VMA.
    MAP_SHARED frames stay shared either way. vfork: the child borrows the parent's address space
    and the parent blocks until the child exits or execs."""
    ok_caller, parent = _running(s, a.pid)
    pid_ok = all_of(ne(c.pid, 0), ne(c.pid, s.reaper),
                    *[implies(is_live(p), ne(p.pid, c.pid)) for p in s.procs])
    shared_at = lambda k: find_vma(parent.vmas, k)[2]  # noqa: E731
    if a.vfork:
        child = dataclasses.replace(parent, pid=c.pid, parent=a.pid, vfork_parent=a.pid, state=RUNNING,
                                    status=0)
        # The parent holds nothing while its address space is lent to the child.
        procs = _replace_caller(s, a.pid, lambda p: dataclasses.replace(
            p, state=BLOCKED, vmas=vma_empty(p.vmas), pt=empty_pt(), rmap=empty_rmap()))
        new = dataclasses.replace(s, procs=procs + (child,))
        return all_of(ok_caller, pid_ok), c.pid, new
    frames = s.frames
    alloc_ok: Any = True
    def write_protect(p: Proc) -> SparseMap:
        return p.pt.update(lambda k, pte: sel(find_vma(p.vmas, k)[2], pte, (pte[0], band(pte[1], ~PTE_RW))))
    update: Callable[[Proc], Proc] = lambda p: p  # noqa: E731
    if s.cow:
        child_pt, child_rmap = write_protect(parent), parent.rmap
        update = lambda p: dataclasses.replace(p, pt=write_protect(p))  # noqa: E731
        frames = frames.update(lambda f, fr: (fr[0], add(fr[1], ite(parent.rmap.get(f)[0], 1, 0)), fr[2]))
    else:
        if c.alloc is None:
            raise ValueError("eager fork needs Choice.alloc (a fresh frame per private page)")
        fwd, inv = c.alloc.fwd, c.alloc.inv
        private = lambda k: all_of(pte_mapped(parent.pt.get(k)), not_(shared_at(k)))  # noqa: E731
        alloc_ok = _alloc_ok(s, c.alloc, private)
        child_pt = parent.pt.update(lambda k, pte: sel(private(k), (fwd.get(k)[0], pte[1]), pte))

        def child_r(f: Any, r: tuple) -> tuple:
            t = inv.get(f)
            return sel(t[0], (True, t[1]), sel(all_of(r[0], shared_at(r[1])), r, RMAP_DEFAULT))
        child_rmap = parent.rmap.update(child_r, touched=lambda: [f for f, _ in inv.items()])

        def copy(f: Any, fr: tuple) -> tuple:
            t, r = inv.get(f), parent.rmap.get(f)
            src = s.frames.get(parent.pt.get(t[1])[0])
            return sel(t[0], (True, 1, src[2]),
                       (fr[0], add(fr[1], ite(all_of(r[0], shared_at(r[1])), 1, 0)), fr[2]))
        frames = frames.update(copy, touched=lambda: [f for f, _ in inv.items()])
    child = dataclasses.replace(parent, pid=c.pid, parent=a.pid, vfork_parent=0, state=RUNNING, status=0,
                                pt=child_pt, rmap=child_rmap)
    new = dataclasses.replace(s, procs=_replace_caller(s, a.pid, update) + (child,), frames=frames)
    return all_of(ok_caller, pid_ok, alloc_ok), c.pid, new


def _release_mm(s: KState, pid: Any, fresh: Callable[[Proc], Proc]) -> KState:
    """The caller's address space goes away: handed back to its vfork parent (which unblocks), or
    freed (every frame it mapped loses one reference). `fresh(caller)` is the caller afterwards.
    The break goes back with the VMAs: it belongs to the mm, so a brk by the vfork child is the
    parent's too (Linux: mm->brk; level 1: one shared address space)."""
    _, caller = find_proc(s, pid)
    lender = caller.vfork_parent
    lends = ne(lender, 0)
    frames = drop_frames(s, caller, lambda k: True)

    def update(p: Proc) -> Proc:
        is_caller = all_of(is_live(p), eq(p.pid, pid))
        is_lender = all_of(lends, eq(p.state, BLOCKED), eq(p.pid, lender))
        back = dataclasses.replace(p, state=RUNNING, vmas=caller.vmas, pt=caller.pt, rmap=caller.rmap,
                                   brk_start=caller.brk_start, brk=caller.brk)
        return sel(is_caller, fresh(caller), sel(is_lender, back, p))
    return dataclasses.replace(s, procs=tuple(update(p) for p in s.procs), frames=sel(lends, s.frames, frames))


@dataclass(frozen=True)
class ExitArgs:
    pid: Any
    status: Any


def exit(s: KState, a: ExitArgs, c: Choice) -> tuple[Any, Any, KState]:  # noqa: A001 -- the syscall's name
    """exit/exit_group (one thread per process): the address space is freed, children go to the
    reaper, the process stays a zombie until its parent reaps it."""
    ok_caller, _ = _running(s, a.pid)
    gone = _release_mm(s, a.pid, lambda p: dataclasses.replace(
        p, state=ZOMBIE, status=a.status, vfork_parent=0, vmas=vma_empty(p.vmas), pt=empty_pt(), rmap=empty_rmap()))
    procs = tuple(sel(all_of(is_live(p), eq(p.parent, a.pid), ne(p.pid, a.pid)),
                      dataclasses.replace(p, parent=s.reaper), p) for p in gone.procs)
    return ok_caller, 0, dataclasses.replace(gone, procs=procs)


@dataclass(frozen=True)
class ExecveArgs:
    pid: Any
    segments: tuple         # of Vma: the image's segments and the profile's kernel regions
    brk: Any                # the initial break (page-aligned)
    # The image's file contents at level 2's abstraction: vpn -> (word,), the first word of each
    # page as the loader leaves it (file bytes, a zeroed bss tail). None: every page demand-zero.
    words: SparseMap | None = None


def execve(s: KState, a: ExecveArgs, c: Choice) -> tuple[Any, Any, KState]:
    """execve past the point of no return: nothing of the old address space survives; the new one
    holds exactly the given segments. A page of a segment whose image word is non-zero is
    populated at exec time with a fresh frame (Choice.alloc) holding that word, private, with the
    segment's rights (a kernel that reads the image at exec; an all-zero word stays demand-zero,
    which reads the same). Level 1 decides errors and layout; `allowed` asks the layout to be a
    valid VMA list and the frames to be a bijection onto free frames."""
    ok_caller, _ = _running(s, a.pid)
    segs = tuple(Vma(True, v.start, v.end, band(v.prot, PROT_RWX), False) for v in a.segments)
    valid = all_of(*[all_of(is_page_aligned(v.start), is_page_aligned(v.end), ult(v.start, v.end),
                            user_range_ok(v.start, sub(v.end, v.start))) for v in segs],
                   *[any_of(ule(x.end, y.start), ule(y.end, x.start))
                     for i, x in enumerate(segs) for y in segs[i + 1:]],
                   is_page_aligned(a.brk), uge(a.brk, MIN_USER_ADDR), ult(a.brk, TASK_SIZE))
    pt, rmap, alloc_ok = empty_pt(), empty_rmap(), True
    words = a.words
    if words is not None:
        if c.alloc is None:
            raise ValueError("execve with image words needs Choice.alloc (a fresh frame per populated page)")
        fwd, inv = c.alloc.fwd, c.alloc.inv

        def filled(k: Any) -> Any:
            return all_of(list_find(segs, k)[0], ne(words.get(k)[0], 0))
        alloc_ok = _alloc_ok(s, c.alloc, filled)
        if not fwd.symbolic and not words.symbolic:
            # The concrete _alloc_ok checks fwd's own pages; here fwd must cover exactly the filled ones.
            alloc_ok = alloc_ok and {k for k, _ in fwd.items()} == {k for k, _ in words.items() if filled(k)}
        if words.symbolic or fwd.symbolic or inv.symbolic:
            # A concrete map's update lists the touched keys, which symbolic maps cannot.
            pt = SparseMap(PTE_DEFAULT, fn=lambda k: PTE_DEFAULT)
            rmap = SparseMap(RMAP_DEFAULT, fn=lambda f: RMAP_DEFAULT)
        flags = lambda k: pte_flags_for(list_find(segs, k)[1], True)  # noqa: E731 -- private, writable if PROT_WRITE
        pt = pt.update(lambda k, pte: sel(filled(k), (fwd.get(k)[0], flags(k)), pte),
                       touched=lambda: [k for k, _ in words.items()])
        rmap = rmap.update(lambda f, r: sel(inv.get(f)[0], (True, inv.get(f)[1]), r),
                           touched=lambda: [f for f, _ in inv.items()])
    new = _release_mm(s, a.pid, lambda p: dataclasses.replace(
        p, vfork_parent=0, vmas=vma_from_segments(p.vmas, segs), pt=pt, rmap=rmap,
        brk_start=a.brk, brk=a.brk))
    if words is not None:
        # The fresh frames were free before the old space went away, so releasing it left them alone.
        new = dataclasses.replace(new, frames=new.frames.update(
            lambda f, fr: sel(inv.get(f)[0], (True, 1, words.get(inv.get(f)[1])[0]), fr),
            touched=lambda: [f for f, _ in inv.items()]))
    return all_of(ok_caller, valid, alloc_ok), 0, new


@dataclass(frozen=True)
class Wait4Args:
    pid: Any            # the caller
    target: Any         # the child's pid (level 1 resolves -1 to a choice)


def wait4(s: KState, a: Wait4Args, c: Choice) -> tuple[Any, Any, KState]:
    """wait4 on one child: reaps it if it is a zombie whose parent is the caller; 0 if it is the
    caller's child but still running (WNOHANG); ECHILD otherwise."""
    ok_caller, _ = _running(s, a.pid)
    child = lambda p: all_of(is_live(p), eq(p.pid, a.target), eq(p.parent, a.pid))  # noqa: E731
    is_child = any_of(*[child(p) for p in s.procs])
    zombie = any_of(*[all_of(child(p), eq(p.state, ZOMBIE)) for p in s.procs])
    procs = tuple(sel(all_of(child(p), eq(p.state, ZOMBIE)), dataclasses.replace(p, state=FREE), p)
                  for p in s.procs)
    if not is_sym(zombie):
        procs = tuple(p for p in procs if p.state != FREE)
    out = ite(zombie, a.target, ite(is_child, 0, neg_errno(Errno.ECHILD)))
    return ok_caller, out, dataclasses.replace(s, procs=procs)


@dataclass(frozen=True)
class AccessArgs:
    pid: Any
    va: Any
    value: Any = 0      # store: the word written


def load(s: KState, a: AccessArgs, c: Choice) -> tuple[Any, Any, KState]:
    """A read: the frame's word, 0 for a page not yet mapped, or a FAULT_* outcome (SIGSEGV). Level 2
    does not separate a stored word equal to a FAULT_* code from the fault; level 1 owns outcomes."""
    ok_caller, caller = _running(s, a.pid)
    k = vpn_of(a.va)
    found, prot, _ = find_vma(caller.vmas, k)
    pte = caller.pt.get(k)
    value = ite(pte_mapped(pte), s.frames.get(pte[0])[2], 0)
    out = ite(not_(found), FAULT_MAPERR, ite(eq(band(prot, PROT_RWX), 0), FAULT_ACCERR, value))
    return ok_caller, out, s


def store(s: KState, a: AccessArgs, c: Choice) -> tuple[Any, Any, KState]:
    """A write, with the faults the kernel resolves itself: demand-zero (a fresh frame) and
    copy-on-write (a fresh copy if the frame is shared, else the page just becomes writable)."""
    ok_caller, caller = _running(s, a.pid)
    k = vpn_of(a.va)
    found, prot, shared = find_vma(caller.vmas, k)
    can_write = ne(band(prot, PROT_WRITE), 0)
    out = ite(not_(found), FAULT_MAPERR, ite(not_(can_write), FAULT_ACCERR, ACCESS_OK))
    pte = caller.pt.get(k)
    f = pte[0]
    mapped = pte_mapped(pte)
    rc = refcount_of(s, f)
    copy = all_of(mapped, not_(pte_writable(pte)), not_(shared), ugt(rc, 1))   # copy-on-write break
    fresh = any_of(not_(mapped), copy)                                       # needs a new frame
    g = ite(fresh, c.frame, f)
    flags = pte_flags_for(prot, True)

    def frame(x: Any, fr: tuple) -> tuple:
        is_old = all_of(copy, eq(x, f))
        is_new = eq(x, g)
        fr = sel(is_old, (fr[0], sub(fr[1], 1), fr[2]), fr)
        return sel(is_new, (True, ite(fresh, 1, fr[1]), a.value), fr)
    frames = s.frames.update(frame, touched=lambda: [g])
    new = dataclasses.replace(s, procs=_replace_caller(s, a.pid, lambda p: dataclasses.replace(
        p, pt=p.pt.set(k, (g, flags)),
        rmap=p.rmap.set(f, RMAP_DEFAULT, cond=copy).set(c.frame, (True, k), cond=fresh))), frames=frames)
    ok = eq(out, ACCESS_OK)   # a copy-on-write copy is overwritten by the stored word (one word per frame)
    allowed = all_of(ok_caller, implies(all_of(ok, fresh), not_(s.frames.get(c.frame)[0])))
    return allowed, out, sel(ok, new, s)


# Every level-2 transition by syscall name (fork_cow/fork_eager select the strategy via state.cow).
TRANSITIONS: dict[str, Callable] = {
    "mmap": mmap, "munmap": munmap, "mprotect": mprotect, "brk": brk, "fork": fork,
    "exit": exit, "execve": execve, "wait4": wait4, "load": load, "store": store,
}


def proc_view(s: KState, p: Proc, k: Any) -> tuple[Any, Any, Any]:
    """(mapped-in-a-VMA, effective prot, word) of page k as process p's user code sees it."""
    found, prot, _ = find_vma(p.vmas, k)
    pte = p.pt.get(k)
    return found, ite(found, band(prot, PROT_RWX), 0), ite(all_of(found, pte_mapped(pte)), s.frames.get(pte[0])[2], 0)
