"""Address-space containers: the same interface, concrete (the oracle's) and symbolic (the proofs').

Transitions (model/mm.py ...) are written against this interface only, so one source runs on
Python ints and on Z3 terms (DESIGN.md "Proofs"):

`PageMap`  page -> attribute word (model/state.py's ATTR_*):
    get(page)                      the attribute of one page
    assign(lo, hi, fn)             pages in [lo, hi) get fn(old attribute)
    next_mapped(page, limit)       the first mapped page in [page, limit), else limit
    mapped_run_end(page, limit)    the first unmapped page in [page, limit), else limit
    any_mapped(lo, hi)             some page in [lo, hi) is mapped
    pick_gap(lo, hi, n, ...)       where a placement policy puts n pages (first fit / top-down)
`PageData` private contents, byte-addressed:
    load(addr, size) / store(addr, size, value) (within one page), zero(lo, hi) (pages)
`SharedStore` object id -> PageData of a MAP_SHARED mapping.

Concrete containers are persistent: an update returns a new object and never changes the old
one (a fork child simply shares its parent's containers). The range map keeps sorted, disjoint,
coalesced runs of mapped pages, so a 64 TiB PROT_NONE mapping is one entry.

Symbolic containers (SymPageMap, SymPageData, SymSharedStore) hold Z3 arrays; updates are
Lambda terms, `__ite__` merges two containers under a symbolic condition, and global queries
(next_mapped, pick_gap ...) return fresh variables whose defining constraints are appended to a
shared `SymContext.facts` list the prover must assume.
"""
from __future__ import annotations

from bisect import bisect_left, bisect_right
from typing import Any, Callable, Iterator

import z3

from ..specs.abi import PAGE_SHIFT, PAGE_SIZE
from .logic import MASK, WORD

_PAGE = PAGE_SIZE
_ZERO_PAGE = bytes(PAGE_SIZE)


# ============================================================================================
# Concrete
# ============================================================================================

class PageMap:
    """Concrete page -> attribute map as sorted runs `(start, end, attr)` of mapped pages."""
    __slots__ = ("runs", "starts", "ends")

    def __init__(self, runs: tuple[tuple[int, int, int], ...] = ()) -> None:
        self.runs = runs
        self.starts = [r[0] for r in runs]
        self.ends = [r[1] for r in runs]

    def __repr__(self) -> str:
        body = ", ".join(f"{s << PAGE_SHIFT:#x}-{e << PAGE_SHIFT:#x}:{a:#x}" for s, e, a in self.runs)
        return f"PageMap({body})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PageMap) and self.runs == other.runs

    def __hash__(self) -> int:
        return hash(self.runs)

    def get(self, page: int) -> int:
        i = bisect_right(self.starts, page) - 1
        if i >= 0 and page < self.ends[i]:
            return self.runs[i][2]
        return 0

    def assign(self, lo: int, hi: int, fn: Callable[[int], int]) -> "PageMap":
        """Pages in [lo, hi) get fn(attr); fn sees 0 for unmapped pages and returns 0 to unmap."""
        if lo >= hi:
            return self
        runs = self.runs
        i = bisect_right(self.ends, lo)          # first run ending after lo
        j = bisect_left(self.starts, hi)         # first run starting at or after hi
        pieces: list[tuple[int, int, int]] = []
        cur = lo
        for s, e, a in runs[i:j]:
            if s < lo:
                pieces.append((s, lo, a))
                s = lo
            if cur < s:
                pieces.append((cur, s, fn(0)))
            end = e if e < hi else hi
            pieces.append((s, end, fn(a)))
            if e > hi:
                pieces.append((hi, e, a))
            cur = end
        if cur < hi:
            pieces.append((cur, hi, fn(0)))
        # Coalesce the edited pieces with each other and with the untouched neighbours.
        if i > 0:
            i -= 1
            pieces.insert(0, runs[i])
        if j < len(runs):
            pieces.append(runs[j])
            j += 1
        out: list[tuple[int, int, int]] = []
        for s, e, a in pieces:
            if not a or s >= e:
                continue
            if out and out[-1][1] == s and out[-1][2] == a:
                out[-1] = (out[-1][0], e, a)
            else:
                out.append((s, e, a))
        new = PageMap.__new__(PageMap)
        new.runs = runs[:i] + tuple(out) + runs[j:]
        new.starts = self.starts[:i] + [r[0] for r in out] + self.starts[j:]
        new.ends = self.ends[:i] + [r[1] for r in out] + self.ends[j:]
        return new

    def set(self, lo: int, hi: int, attr: int) -> "PageMap":
        return self.assign(lo, hi, lambda _old: attr)

    def next_mapped(self, page: int, limit: int) -> int:
        i = bisect_right(self.ends, page)
        if i < len(self.runs):
            s = self.runs[i][0]
            s = s if s > page else page
            return s if s < limit else limit
        return limit

    def mapped_run_end(self, page: int, limit: int) -> int:
        """First unmapped page at or after `page` (runs are coalesced only by equal attrs, so
        follow adjacent runs)."""
        i = bisect_right(self.ends, page)
        cur = page
        while i < len(self.runs):
            s, e, _a = self.runs[i]
            if s > cur:
                break
            cur = e
            i += 1
            if cur >= limit:
                return limit
        return cur if cur < limit else limit

    def any_mapped(self, lo: int, hi: int) -> bool:
        return lo < hi and self.next_mapped(lo, hi) < hi

    def run_at(self, page: int) -> tuple[int, int, int] | None:
        """The maximal equal-attribute run holding `page`, or None."""
        i = bisect_right(self.starts, page) - 1
        if i >= 0 and page < self.ends[i]:
            return self.runs[i]
        return None

    def run_before(self, page: int) -> tuple[int, int, int] | None:
        """The last run starting below `page` (for an unmapped page: the mapping below it)."""
        i = bisect_left(self.starts, page) - 1
        return self.runs[i] if i >= 0 else None

    def iter_runs(self, lo: int = 0, hi: int = 1 << 52) -> Iterator[tuple[int, int, int]]:
        """Mapped runs clipped to [lo, hi)."""
        i = bisect_right(self.ends, lo)
        for s, e, a in self.runs[i:]:
            if s >= hi:
                break
            yield (s if s > lo else lo, e if e < hi else hi, a)

    def count_mapped(self, pred: Callable[[int], bool] | None = None) -> int:
        return sum(e - s for s, e, a in self.runs if pred is None or pred(a))

    def gaps(self, lo: int, hi: int) -> Iterator[tuple[int, int]]:
        """Free intervals inside [lo, hi), ascending."""
        cur = lo
        for s, e, _a in self.iter_runs(lo, hi):
            if s > cur:
                yield cur, s
            cur = e if e > cur else cur
        if cur < hi:
            yield cur, hi

    def pick_gap(self, lo: int, hi: int, npages: int, topdown: bool, align: int = 1,
                 guard: Callable[[int], int] | None = None) -> int | None:
        """Where a placement policy puts `npages` in [lo, hi): bottom-up first fit (lowest
        address) or top-down (highest fitting gap, highest address in it), aligned to `align`
        pages. `guard(gap_end)` may lower a gap's usable end (Linux's stack_guard_gap below a
        growsdown neighbour). None when nothing fits."""
        if npages <= 0:
            return None
        if topdown:
            for s, e in self._gaps_descending(lo, hi):
                if guard is not None:
                    e = guard(e)
                start = (e - npages) // align * align
                if e - s >= npages and start >= s:
                    return start
            return None
        for s, e in self.gaps(lo, hi):
            if guard is not None:
                e = guard(e)
            start = -(-s // align) * align
            if start + npages <= e:
                return start
        return None

    def _gaps_descending(self, lo: int, hi: int) -> Iterator[tuple[int, int]]:
        """Free intervals inside [lo, hi), highest first."""
        j = bisect_left(self.starts, hi)          # runs[j-1] is the last starting below hi
        top = hi
        for k in range(j - 1, -1, -1):
            s, e, _a = self.runs[k]
            if e <= lo:
                break
            if e < top:
                yield (e if e > lo else lo), top
            top = s if s < top else top
            if top <= lo:
                return
        if lo < top:
            yield lo, top


class PageData:
    """Concrete private contents: page -> 4096 bytes, only pages holding a non-zero byte."""
    __slots__ = ("pages",)

    def __init__(self, pages: dict[int, bytes] | None = None) -> None:
        self.pages = pages if pages is not None else {}

    def __repr__(self) -> str:
        return f"PageData({len(self.pages)} pages)"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PageData) and self.pages == other.pages

    def page(self, page: int) -> bytes | None:
        return self.pages.get(page)

    def load(self, addr: int, size: int) -> int:
        data = self.pages.get(addr >> PAGE_SHIFT)
        if data is None:
            return 0
        off = addr & (_PAGE - 1)
        return int.from_bytes(data[off:off + size], "little")

    def load_bytes(self, addr: int, size: int) -> bytes:
        data = self.pages.get(addr >> PAGE_SHIFT)
        off = addr & (_PAGE - 1)
        return bytes(size) if data is None else data[off:off + size]

    def store(self, addr: int, size: int, value: int) -> "PageData":
        return self.store_bytes(addr, (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little"))

    def store_bytes(self, addr: int, blob: bytes) -> "PageData":
        page = addr >> PAGE_SHIFT
        off = addr & (_PAGE - 1)
        old = self.pages.get(page, _ZERO_PAGE)
        new = old[:off] + blob + old[off + len(blob):]
        pages = dict(self.pages)
        if new == _ZERO_PAGE:
            pages.pop(page, None)
        else:
            pages[page] = new
        return PageData(pages)

    def with_page(self, page: int, data: bytes) -> "PageData":
        pages = dict(self.pages)
        if data == _ZERO_PAGE:
            pages.pop(page, None)
        else:
            pages[page] = data
        return PageData(pages)

    def zero(self, lo: int, hi: int) -> "PageData":
        """Pages [lo, hi) read as zeros again (unmapped, or mapped afresh)."""
        doomed = [p for p in self.pages if lo <= p < hi]
        if not doomed:
            return self
        pages = dict(self.pages)
        for p in doomed:
            del pages[p]
        return PageData(pages)

    def copy_pages(self, other: "PageData", lo: int, hi: int) -> "PageData":
        """These contents with pages [lo, hi) taken from `other`."""
        base = self.zero(lo, hi)
        extra = {p: d for p, d in other.pages.items() if lo <= p < hi}
        if not extra:
            return base
        pages = dict(base.pages)
        pages.update(extra)
        return PageData(pages)


class SharedStore:
    """Concrete MAP_SHARED backing objects: object id -> PageData."""
    __slots__ = ("objs",)

    def __init__(self, objs: dict[int, PageData] | None = None) -> None:
        self.objs = objs if objs is not None else {}

    def get(self, obj: int) -> PageData:
        return self.objs.get(obj) or _EMPTY

    def put(self, obj: int, data: PageData) -> "SharedStore":
        objs = dict(self.objs)
        objs[obj] = data
        return SharedStore(objs)


_EMPTY = PageData()


def empty_pages() -> PageMap:
    return PageMap()


def empty_data() -> PageData:
    return _EMPTY


def empty_shared() -> SharedStore:
    return SharedStore()


# ============================================================================================
# Symbolic
# ============================================================================================

PAGE_SORT = z3.BitVecSort(WORD)
WORD_SORT = z3.BitVecSort(WORD)
BYTE_SORT = z3.BitVecSort(8)


class SymContext:
    """Fresh-variable counter and the defining constraints of global queries (`facts`), shared
    by every symbolic container of one state."""

    def __init__(self, prefix: str = "s") -> None:
        self.prefix = prefix
        self.counter = 0
        self.facts: list[Any] = []

    def fresh(self, name: str, sort: Any = WORD_SORT) -> Any:
        self.counter += 1
        return z3.Const(f"{self.prefix}!{name}!{self.counter}", sort)


def _bv(value: Any) -> Any:
    return value if isinstance(value, z3.ExprRef) else z3.BitVecVal(value & MASK, WORD)


def _in(p: Any, lo: Any, hi: Any) -> Any:
    return z3.And(z3.ULE(_bv(lo), p), z3.ULT(p, _bv(hi)))


def _attr_fn_term(fn: Callable[[Any], Any], old: Any) -> Any:
    out = fn(old)
    return _bv(out)


class SymPageMap:
    """page -> attribute word as a Z3 array (BitVec64 -> BitVec64)."""

    def __init__(self, ctx: SymContext, array: Any) -> None:
        self.ctx = ctx
        self.array = array

    @staticmethod
    def fresh(ctx: SymContext, name: str = "pages") -> "SymPageMap":
        return SymPageMap(ctx, ctx.fresh(name, z3.ArraySort(PAGE_SORT, WORD_SORT)))

    def get(self, page: Any) -> Any:
        return z3.Select(self.array, _bv(page))

    def assign(self, lo: Any, hi: Any, fn: Callable[[Any], Any]) -> "SymPageMap":
        p = z3.BitVec(f"{self.ctx.prefix}!p", WORD)
        old = z3.Select(self.array, p)
        return SymPageMap(self.ctx, z3.Lambda([p], z3.If(_in(p, lo, hi), _attr_fn_term(fn, old), old)))

    def set(self, lo: Any, hi: Any, attr: Any) -> "SymPageMap":
        return self.assign(lo, hi, lambda _old: attr)

    def _mapped(self, p: Any) -> Any:
        from .state import ATTR_MAPPED
        return (z3.Select(self.array, p) & ATTR_MAPPED) != 0

    def next_mapped(self, page: Any, limit: Any) -> Any:
        """Fresh n: the first mapped page in [page, limit), or limit."""
        n = self.ctx.fresh("next_mapped")
        q = z3.BitVec(f"{self.ctx.prefix}!q", WORD)
        page, limit = _bv(page), _bv(limit)
        self.ctx.facts.append(z3.Or(
            z3.And(z3.ULE(page, n), z3.ULT(n, limit), self._mapped(n),
                   z3.ForAll([q], z3.Implies(z3.And(z3.ULE(page, q), z3.ULT(q, n)), z3.Not(self._mapped(q))))),
            z3.And(n == limit, z3.ForAll([q], z3.Implies(_in(q, page, limit), z3.Not(self._mapped(q)))))))
        return n

    def mapped_run_end(self, page: Any, limit: Any) -> Any:
        """Fresh n: the first unmapped page in [page, limit), or limit."""
        n = self.ctx.fresh("run_end")
        q = z3.BitVec(f"{self.ctx.prefix}!q", WORD)
        page, limit = _bv(page), _bv(limit)
        self.ctx.facts.append(z3.Or(
            z3.And(z3.ULE(page, n), z3.ULT(n, limit), z3.Not(self._mapped(n)),
                   z3.ForAll([q], z3.Implies(z3.And(z3.ULE(page, q), z3.ULT(q, n)), self._mapped(q)))),
            z3.And(n == limit, z3.ForAll([q], z3.Implies(_in(q, page, limit), self._mapped(q))))))
        return n

    def any_mapped(self, lo: Any, hi: Any) -> Any:
        return z3.ULT(self.next_mapped(lo, hi), _bv(hi))

    def pick_gap(self, lo: Any, hi: Any, npages: Any, topdown: bool, align: int = 1,
                 guard: Any = None) -> Any:
        """Fresh start: a free, aligned run of npages inside [lo, hi). Over-approximates the
        concrete policy (which picks one such run); `found` is not modelled — the caller's
        `allowed` compares with the choice instead."""
        start = self.ctx.fresh("gap")
        q = z3.BitVec(f"{self.ctx.prefix}!q", WORD)
        end = start + _bv(npages)
        facts = [z3.ULE(_bv(lo), start), z3.ULE(end, _bv(hi)), z3.ULT(start, end),
                 z3.ForAll([q], z3.Implies(_in(q, start, end), z3.Not(self._mapped(q))))]
        if align > 1:
            facts.append(z3.URem(start, align) == 0)
        # Either a free gap, or the all-ones sentinel (nothing fits): the facts stay satisfiable.
        self.ctx.facts.append(z3.Or(z3.And(*facts), start == z3.BitVecVal(MASK, WORD)))
        return start

    def __ite__(self, cond: Any, other: "SymPageMap") -> "SymPageMap":
        return SymPageMap(self.ctx, z3.If(cond, self.array, other.array))


class SymPageData:
    """Private contents as a Z3 array byte address -> byte."""

    def __init__(self, ctx: SymContext, array: Any) -> None:
        self.ctx = ctx
        self.array = array

    @staticmethod
    def fresh(ctx: SymContext, name: str = "data") -> "SymPageData":
        return SymPageData(ctx, ctx.fresh(name, z3.ArraySort(WORD_SORT, BYTE_SORT)))

    @staticmethod
    def zeros(ctx: SymContext) -> "SymPageData":
        return SymPageData(ctx, z3.K(WORD_SORT, z3.BitVecVal(0, 8)))

    def load(self, addr: Any, size: int) -> Any:
        addr = _bv(addr)
        parts = [z3.Select(self.array, addr + i) for i in range(size)]
        value = z3.Concat(*reversed(parts)) if size > 1 else parts[0]
        return z3.ZeroExt(WORD - 8 * size, value) if size < 8 else value

    def store(self, addr: Any, size: int, value: Any) -> "SymPageData":
        addr, value = _bv(addr), _bv(value)
        array = self.array
        for i in range(size):
            array = z3.Store(array, addr + i, z3.Extract(8 * i + 7, 8 * i, value))
        return SymPageData(self.ctx, array)

    def zero(self, lo: Any, hi: Any) -> "SymPageData":
        a = z3.BitVec(f"{self.ctx.prefix}!a", WORD)
        page = z3.LShR(a, PAGE_SHIFT)
        return SymPageData(self.ctx, z3.Lambda([a], z3.If(_in(page, lo, hi), z3.BitVecVal(0, 8),
                                                          z3.Select(self.array, a))))

    def copy_pages(self, other: "SymPageData", lo: Any, hi: Any) -> "SymPageData":
        a = z3.BitVec(f"{self.ctx.prefix}!a", WORD)
        page = z3.LShR(a, PAGE_SHIFT)
        return SymPageData(self.ctx, z3.Lambda([a], z3.If(_in(page, lo, hi), z3.Select(other.array, a),
                                                          z3.Select(self.array, a))))

    def __ite__(self, cond: Any, other: "SymPageData") -> "SymPageData":
        return SymPageData(self.ctx, z3.If(cond, self.array, other.array))


class SymSharedStore:
    """MAP_SHARED objects: object id -> (byte address -> byte), a nested Z3 array."""

    def __init__(self, ctx: SymContext, array: Any) -> None:
        self.ctx = ctx
        self.array = array

    @staticmethod
    def fresh(ctx: SymContext, name: str = "shared") -> "SymSharedStore":
        return SymSharedStore(ctx, ctx.fresh(name, z3.ArraySort(WORD_SORT, z3.ArraySort(WORD_SORT, BYTE_SORT))))

    def get(self, obj: Any) -> SymPageData:
        return SymPageData(self.ctx, z3.Select(self.array, _bv(obj)))

    def put(self, obj: Any, data: SymPageData) -> "SymSharedStore":
        return SymSharedStore(self.ctx, z3.Store(self.array, _bv(obj), data.array))

    def __ite__(self, cond: Any, other: "SymSharedStore") -> "SymSharedStore":
        return SymSharedStore(self.ctx, z3.If(cond, self.array, other.array))
