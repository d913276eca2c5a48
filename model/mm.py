"""Memory syscalls: mmap, munmap, mprotect, brk — Linux x86-64, unprivileged, as measured.

Each function is `(state, args, choice) -> Result(allowed, outcome, state', clause)` and is
written against model/logic.py and the container interface of model/space.py, so it runs on
concrete values (the oracle) and on Z3 terms (the proofs). Concrete fast paths (`is_true`,
`is_false`) only skip work the result cannot depend on.

Order of checks and partial effects follow /work/shared/linux-facts.md (cited per clause as
"facts: <table>/<row>") and the kernel functions named in the comments (6.18).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..specs.abi import (DAC_MMAP_MIN_ADDR, MAP_ANONYMOUS, MAP_DROPPABLE, MAP_FIXED, MAP_FIXED_NOREPLACE,
                         MAP_GROWSDOWN, MAP_HUGETLB, MAP_LOCKED, MAP_PRIVATE, MAP_SHARED, MAP_TYPE,
                         MMAP_MIN_ADDR, PAGE_SHIFT, PAGE_SIZE, PROT_EXEC, PROT_GROWSDOWN, PROT_GROWSUP,
                         PROT_READ, PROT_SEM, PROT_WRITE, TASK_SIZE, U64, Errno)
from .ops import (add, all_of, any_of, band, bor, eq, is_sym, is_true, ite, ne, neg, not_, shl, shr, sub,
                    uge, ugt, ule, ult)
from .predicates import (PAGE_LOW, is_growsdown, is_mapped, is_special, page_align_up, page_number,
                         with_prot)
from .state import (ATTR_SIGBUS, ATTR_WIPEONFORK, ATTR_GROWSDOWN, ATTR_MAPPED, ATTR_OBJ_SHIFT, ATTR_PROT, ATTR_SHARED, ATTR_KIND_SHIFT,
                    FRAME_RESERVE_FRACTION, LARGE_REQUEST, STACK_GUARD_GAP_PAGES, TASK_PAGES, THP_SIZE,
                    Kind, Result, Run, State)

EINVAL, EBADF, ENOMEM, EPERM, EEXIST, EAGAIN = (Errno.EINVAL, Errno.EBADF, Errno.ENOMEM, Errno.EPERM,
                                               Errno.EEXIST, Errno.EAGAIN)
THP_PAGES = THP_SIZE >> PAGE_SHIFT
# MAP_SHARED backing object ids are 32 bits (ATTR_OBJ): a mapping that would leave next_obj at
# OBJ_LIMIT is refused, a declared limit of the model (Linux has none, but runs out of memory long
# before 2^32 shmem objects): there only ENOMEM is allowed (specs/invariants1.py needs the bound).
OBJ_LIMIT = 1 << 32


@dataclass(frozen=True)
class MmapArgs:
    pid: int
    addr: Any
    length: Any
    prot: Any
    flags: Any
    fd: Any = U64
    offset: Any = 0


@dataclass(frozen=True)
class MmapChoice:
    """What the kernel picked: `addr` for a placement the kernel chose (mmap(NULL), a refused
    hint; None when the call failed), `fail` the errno of a resource failure it reported (0: none)."""
    addr: Any = None
    fail: Any = 0


@dataclass(frozen=True)
class MunmapArgs:
    pid: int
    addr: Any
    length: Any


@dataclass(frozen=True)
class MprotectArgs:
    pid: int
    addr: Any
    length: Any
    prot: Any


@dataclass(frozen=True)
class ResourceChoice:
    """`fail`: the errno of a resource failure the kernel reported (0: none)."""
    fail: Any = 0


@dataclass(frozen=True)
class BrkArgs:
    pid: int
    addr: Any


def _first_error(cases: list[tuple[Any, int, str]]) -> tuple[Any, Any, str]:
    """(failed, -errno word, clause) of the first case whose condition holds, in order."""
    if not is_sym(*[c for c, _, _ in cases]):
        for cond, errno, clause in cases:
            if cond:
                return True, neg(errno), clause
        return False, 0, ""
    out: Any = 0
    for cond, errno, _ in reversed(cases):
        out = ite(cond, neg(errno), out)
    return any_of(*[c for c, _, _ in cases]), out, "symbolic"


def resource_failure_allowed(state: State, errno: Any, new_pages: Any) -> Any:
    """May the kernel refuse an allocation of `new_pages` for lack of resources (DESIGN.md
    contract 5)? Beyond the profile's declared limits both answers are allowed."""
    if is_sym(errno, new_pages):
        return state.spaces and True   # the proofs treat resource failures as a free choice
    profile = state.profile
    if errno in profile.exhaustion_errnos:
        return True
    if errno != ENOMEM:
        return False
    if profile.frame_budget is None:
        return new_pages * PAGE_SIZE >= LARGE_REQUEST
    committed = sum(sp.pages.count_mapped() for mm, sp in state.spaces.items()
                    if any(p.mm == mm and p.run != Run.reaped for p in state.procs.values()))
    budget = profile.frame_budget - profile.frame_budget // FRAME_RESERVE_FRACTION
    return committed + new_pages > budget


def round_hint(addr: Any) -> Any:
    """round_hint_to_min: a hint is rounded down to a page; a non-zero hint below mmap_min_addr
    (the larger of the sysctl and CONFIG_LSM_MMAP_MIN_ADDR) is raised to it (facts: mmap/hint rows)."""
    hint = band(addr, ~PAGE_LOW & U64)
    return ite(all_of(ne(hint, 0), ult(hint, MMAP_MIN_ADDR)), MMAP_MIN_ADDR, hint)


def predicted_placement(state: State, pid: int, length: int, thp: bool) -> int | None:
    """Where the profile's allocator puts an anonymous mapping of `length` bytes (concrete):
    levitate bottom-up first fit in [mmap_lo, mmap_hi); Linux top-down, highest fitting gap
    below the learned mmap_base (None before it is learned or when nothing fits)."""
    sp = state.space_of(pid)
    prof = state.profile
    npages = length >> PAGE_SHIFT
    lo = prof.mmap_lo >> PAGE_SHIFT
    guard = _guard(sp.pages)
    if not prof.mmap_topdown:
        return _page_addr(sp.pages.pick_gap(lo, prof.mmap_hi >> PAGE_SHIFT, npages, topdown=False, guard=guard))
    if sp.mmap_base is None:
        return None
    base = sp.mmap_base >> PAGE_SHIFT
    if thp:
        start = sp.pages.pick_gap(lo, base, npages + THP_PAGES, topdown=True, guard=guard)
        return None if start is None else ((start + THP_PAGES) // THP_PAGES * THP_PAGES) << PAGE_SHIFT
    return _page_addr(sp.pages.pick_gap(lo, base, npages, topdown=True, guard=guard))


def _guard(pages: Any) -> Any:
    """vm_start_gap: a gap below a growsdown mapping ends stack_guard_gap below it."""
    def gap_end(end: int) -> int:
        if is_growsdown(pages.get(end)):
            return max(0, end - STACK_GUARD_GAP_PAGES)
        return end
    return gap_end


def _page_addr(page: int | None) -> int | None:
    return None if page is None else page << PAGE_SHIFT


def _learn_first_pick(state: State, pid: int, addr: int, length: int, thp: bool) -> tuple[bool, int]:
    """Linux before mmap_base is known: the first kernel-chosen placement must sit at the top of
    a free gap (THP: the highest 2 MiB-aligned start in it); the gap's top becomes mmap_base.
    Returns (allowed, learned base)."""
    sp = state.space_of(pid)
    prof = state.profile
    lo, npages = addr >> PAGE_SHIFT, length >> PAGE_SHIFT
    hi = lo + npages
    if addr & PAGE_LOW or addr < prof.mmap_lo or hi > prof.mmap_hi >> PAGE_SHIFT or sp.pages.any_mapped(lo, hi):
        return False, 0
    top = _guard(sp.pages)(sp.pages.next_mapped(hi, TASK_PAGES))
    if thp:
        ok = lo == (top - npages) // THP_PAGES * THP_PAGES and top - npages - THP_PAGES >= 0
    else:
        ok = hi == top
    return ok, top << PAGE_SHIFT


def mmap(state: State, args: MmapArgs, choice: MmapChoice = MmapChoice()) -> Result:
    """mmap(2), anonymous mappings only.

    "If addr is NULL, then the kernel chooses the (page-aligned) address at which to create the
    mapping ... If addr is not NULL, then the kernel takes it as a hint about where to place the
    mapping" (mmap(2)); "If the memory region specified by addr and length overlaps pages of any
    existing mapping(s), then the overlapped part of the existing mapping(s) will be discarded"
    (MAP_FIXED); "MAP_FIXED_NOREPLACE ... If the requested range would collide with an existing
    mapping, then this call fails with the error EEXIST."
    Deliberate differences: file mappings are out of scope (no files: fd is ignored only with
    MAP_ANONYMOUS, otherwise EBADF); MAP_GROWSDOWN mappings do not grow on faults; MAP_DROPPABLE
    pages are never dropped; map_count limits are not modelled.
    """
    sp = state.space_of(args.pid)
    addr, length, prot, flags, off = args.addr, args.length, args.prot, args.flags, args.offset
    fixed = ne(band(flags, MAP_FIXED | MAP_FIXED_NOREPLACE), 0)   # do_mmap: NOREPLACE implies FIXED
    noreplace = ne(band(flags, MAP_FIXED_NOREPLACE), 0)
    anon = ne(band(flags, MAP_ANONYMOUS), 0)
    length_al = page_align_up(length)
    bad0, err0, clause = _first_error([
        (ne(band(off, PAGE_LOW), 0), EINVAL, "mmap.offset-unaligned"),   # EINVAL: x86 sys_mmap checks off first
        (not_(anon), EBADF, "mmap.no-file"),                             # EBADF: fget(fd) precedes do_mmap
        (eq(length, 0), EINVAL, "mmap.len-zero"),                        # EINVAL: do_mmap "if (!len)"
        (ne(band(flags, MAP_HUGETLB), 0), ENOMEM, "mmap.hugetlb"),      # ENOMEM: no huge pages reserved
        (eq(length_al, 0), ENOMEM, "mmap.len-wraps"),                    # ENOMEM: PAGE_ALIGN(len) wrapped to 0
        (ugt(length_al, TASK_SIZE), ENOMEM, "mmap.len-too-big"),         # ENOMEM: __get_unmapped_area len > TASK_SIZE
    ])
    if is_true(bad0):
        return Result(True, err0, state, clause)

    npages = shr(length_al, PAGE_SHIFT)
    # Hint: honoured when valid and [hint, hint+len) is free (arch_get_unmapped_area_topdown).
    hint = round_hint(addr)
    use_hint = all_of(not_(fixed), ne(hint, 0), ule(hint, sub(TASK_SIZE, length_al)))
    if not is_sym(use_hint) and use_hint or is_sym(use_hint):
        hint_page = page_number(hint)
        hint_end = add(hint_page, npages)
        use_hint = all_of(use_hint, not_(sp.pages.any_mapped(hint_page, hint_end)))
        if not is_sym(use_hint) and use_hint:
            # x86: addr + len <= vm_start_gap(next vma)
            use_hint = hint_end <= _guard(sp.pages)(sp.pages.next_mapped(hint_end, TASK_PAGES))
    need_pick = all_of(not_(fixed), not_(use_hint))
    # THP: anonymous private mmap(NULL) of a multiple of 2 MiB is 2 MiB aligned (linux only).
    thp = all_of(state.profile.mmap_topdown, eq(addr, 0), eq(band(length_al, THP_SIZE - 1), 0),
                 ne(band(flags, MAP_TYPE), MAP_SHARED))
    pick_allowed: Any = True
    no_gap: Any = False
    base = sp.mmap_base
    picked: Any = choice.addr
    if is_sym(need_pick, choice.addr, npages):
        gap = sp.pages.pick_gap(page_number(state.profile.mmap_lo), page_number(state.profile.mmap_hi), npages,
                                topdown=state.profile.mmap_topdown)
        pick_allowed = eq(picked, shl(gap, PAGE_SHIFT))
    elif need_pick:
        # The kernel placed the mapping (choice.addr), or failed (choice.addr None): then the
        # placement the policy predicts stands in for the checks that follow it.
        learning = sp.mmap_base is None and state.profile.mmap_topdown
        expected = None if learning else predicted_placement(state, args.pid, length_al, thp)
        if learning:
            stand_in = _page_addr(sp.pages.pick_gap(page_number(state.profile.mmap_lo),
                                                    page_number(state.profile.mmap_hi), npages, topdown=True))
            no_gap = stand_in is None
            if picked is None:
                picked = stand_in or 0
            else:
                pick_allowed, base = _learn_first_pick(state, args.pid, picked, length_al, thp)
        else:
            no_gap = expected is None
            if picked is None:
                picked = expected or 0
            elif expected is not None:
                pick_allowed = picked == expected
    if picked is None:
        picked = 0
    start = ite(fixed, addr, ite(use_hint, hint, picked))
    mtype = band(flags, MAP_TYPE)
    is_shared_type = eq(mtype, MAP_SHARED)
    # MAP_FIXED returns the address as arch_get_unmapped_area gives it; an address in the errno
    # range is taken for an error by IS_ERR_VALUE and returned as it is (Linux 6.18).
    err_value = all_of(fixed, uge(addr, neg(4095)))
    if is_true(err_value):
        return Result(True, addr, state, "mmap.fixed-err-value")
    bad, err, clause = _first_error([
        (all_of(need_pick, no_gap), ENOMEM, "mmap.no-free-gap"),                # ENOMEM: vm_unmapped_area found nothing
        (ugt(start, sub(TASK_SIZE, length_al)), ENOMEM, "mmap.beyond-task-size"),  # ENOMEM: addr > TASK_SIZE - len
        (ne(band(start, PAGE_LOW), 0), EINVAL, "mmap.fixed-unaligned"),         # EINVAL: offset_in_page(addr)
        (ult(start, DAC_MMAP_MIN_ADDR), EPERM, "mmap.below-mmap-min-addr"),     # EPERM: security_mmap_addr, no CAP_SYS_RAWIO
        (all_of(noreplace, sp.pages.any_mapped(page_number(start), add(page_number(start), npages))
                if not is_true(ugt(start, sub(TASK_SIZE, length_al))) else False),
         EEXIST, "mmap.noreplace-exists"),                                      # EEXIST: find_vma_intersection
        (all_of(is_shared_type, ne(band(flags, MAP_GROWSDOWN), 0)), EINVAL, "mmap.shared-growsdown"),  # EINVAL
        (all_of(eq(mtype, MAP_DROPPABLE), ne(band(flags, MAP_LOCKED | MAP_GROWSDOWN), 0)), EINVAL,
         "mmap.droppable-locked"),                                              # EINVAL: droppable + locked/stack
        (not_(any_of(is_shared_type, eq(mtype, MAP_PRIVATE), eq(mtype, MAP_DROPPABLE))), EINVAL,
         "mmap.bad-map-type"),                                                  # EINVAL: MAP_TYPE 0, 3 (no SHARED_VALIDATE for anon), ...
        (ne(choice.fail, 0), choice.fail, "mmap.resource"),                     # ENOMEM/EAGAIN: overcommit, frames, mlock limit
    ])
    allowed: Any = True
    at_obj_limit = all_of(is_shared_type, uge(state.next_obj, OBJ_LIMIT - 1))    # ENOMEM: object ids exhausted
    if is_true(bad):
        if clause == "mmap.resource":
            allowed = resource_failure_allowed(state, choice.fail, npages) or (
                choice.fail == EAGAIN and bool(flags & MAP_LOCKED)) or (choice.fail == ENOMEM and at_obj_limit)
        return Result(allowed, err, state, clause, "" if allowed else "success (below the profile's resource limits)")

    lo = page_number(start)
    hi = add(lo, npages)
    obj = state.next_obj
    attr = bor(bor(ATTR_MAPPED | (Kind.anon << ATTR_KIND_SHIFT), band(prot, ATTR_PROT)),
               ite(is_shared_type, bor(ATTR_SHARED, shl(obj, ATTR_OBJ_SHIFT)),
                   bor(ite(ne(band(flags, MAP_GROWSDOWN), 0), ATTR_GROWSDOWN, 0),
                       ite(eq(mtype, MAP_DROPPABLE), ATTR_WIPEONFORK, 0))))   # do_mmap: DROPPABLE sets VM_WIPEONFORK
    # MAP_FIXED's implicit munmap: the old pages go, the new ones read as zeros (facts: mmap/"MAP_FIXED PROT_READ over pages 1-2").
    new_space = sp.with_(pages=sp.pages.set(lo, hi, attr), data=sp.data.zero(lo, hi), mmap_base=base)
    new = state.with_space(args.pid, new_space).with_(next_obj=ite(is_shared_type, add(obj, 1), obj))
    clause = ite(fixed, "mmap.fixed", ite(use_hint, "mmap.hint", "mmap.placed")) if not is_sym(fixed, use_hint) else "mmap.ok"
    if is_sym(bad0, err_value, bad, pick_allowed, start, at_obj_limit):
        failed = any_of(bad0, err_value, bad)
        outcome = ite(bad0, err0, ite(err_value, addr, ite(bad, err, start)))
        allowed = all_of(pick_allowed, any_of(failed, not_(at_obj_limit)))
        return Result(allowed, outcome, ite(failed, state, new), "symbolic", start=start)
    if at_obj_limit:
        return Result(False, start, new, clause, "-ENOMEM (MAP_SHARED object ids exhausted: the model's OBJ_LIMIT)")
    expected = ""
    if not pick_allowed:
        want = predicted_placement(state, args.pid, length_al, thp) \
            if base is not None or not state.profile.mmap_topdown else None
        expected = f"{want:#x}" if want is not None else "the top of a free gap (Linux top-down placement)"
    return Result(pick_allowed, start, new, clause, expected)


def munmap(state: State, args: MunmapArgs, choice: Any = None) -> Result:
    """munmap(2): "The munmap() system call deletes the mappings for the specified address range
    ... It is not an error if the indicated range does not contain any mapped pages."
    Special mappings ([vdso], [vvar]) refuse being split: EINVAL (facts: munmap/"part of [vdso]")."""
    sp = state.space_of(args.pid)
    addr, length = args.addr, args.length
    bad, err, clause = _first_error([
        (ne(band(addr, PAGE_LOW), 0), EINVAL, "munmap.unaligned"),                     # EINVAL: offset_in_page(start)
        (any_of(ugt(addr, TASK_SIZE), ugt(length, sub(TASK_SIZE, addr))), EINVAL,
         "munmap.beyond-task-size"),                                                    # EINVAL: start > TASK_SIZE || len > TASK_SIZE-start
        (eq(length, 0), EINVAL, "munmap.len-zero"),                                     # EINVAL: end == start
    ])
    if is_true(bad):
        return Result(True, err, state, clause)
    lo = page_number(addr)
    hi = page_number(page_align_up(add(addr, length)))
    if not is_sym(lo, hi):
        if _splits_special(sp.pages, lo) or _splits_special(sp.pages, hi):
            return Result(True, neg(EINVAL), state, "munmap.split-special")            # EINVAL: special_mapping may_split
        if not sp.pages.any_mapped(lo, hi):
            return Result(True, 0, state, "munmap.nothing-mapped")                     # 0: no VMA in range
    new = state.with_space(args.pid, sp.with_(pages=sp.pages.set(lo, hi, 0), data=sp.data.zero(lo, hi)))
    if is_sym(bad, lo, hi):
        return Result(True, ite(bad, err, 0), ite(bad, state, new), "symbolic")
    return Result(True, 0, new, "munmap.ok")


def _splits_special(pages: Any, page: int) -> bool:
    """Would a cut at `page` split a special mapping? (both neighbours inside one such run)"""
    if page == 0:
        return False
    below, above = pages.get(page - 1), pages.get(page)
    return is_special(below) and (below | ATTR_SIGBUS) == (above | ATTR_SIGBUS)


def mprotect(state: State, args: MprotectArgs, choice: ResourceChoice = ResourceChoice()) -> Result:
    """mprotect(2): "changes the access protections for the calling process's memory pages
    containing any part of the address range in the interval [addr, addr+len-1]."
    ENOMEM: "Addresses in the range [addr, addr+len-1] are invalid for the address space of the
    process, or specify one or more pages that are not mapped." Linux walks the VMAs upward and
    stops at the first gap: pages before the hole are changed (facts: mprotect/"pages 0-2 mapped,
    3 hole"). Deliberate difference: a resource failure (accounting ENOMEM when making large
    private ranges writable) leaves the range unchanged."""
    sp = state.space_of(args.pid)
    addr, length, prot = args.addr, args.length, args.prot
    grows = band(prot, PROT_GROWSDOWN | PROT_GROWSUP)
    base_prot = band(prot, ~(PROT_GROWSDOWN | PROT_GROWSUP) & U64)
    end = add(addr, page_align_up(length))
    bad, err, clause = _first_error([
        (eq(grows, PROT_GROWSDOWN | PROT_GROWSUP), EINVAL, "mprotect.grows-both"),   # EINVAL: can't be both
        (ne(band(addr, PAGE_LOW), 0), EINVAL, "mprotect.unaligned"),                  # EINVAL: start & ~PAGE_MASK (even len 0)
    ])
    if is_true(bad):
        return Result(True, err, state, clause)
    zero_len = eq(length, 0)                                                          # 0: "if (!len) return 0"
    if is_true(zero_len):
        return Result(True, 0, state, "mprotect.len-zero")
    bad2, err2, clause2 = _first_error([
        (ule(end, addr), ENOMEM, "mprotect.wraps"),                                   # ENOMEM: end <= start
        (ne(band(base_prot, ~(PROT_READ | PROT_WRITE | PROT_EXEC | PROT_SEM) & U64), 0), EINVAL,
         "mprotect.bad-prot"),                                                        # EINVAL: arch_validate_prot
    ])
    if is_true(bad2):
        return Result(True, err2, state, clause2)
    lo, hi = page_number(addr), page_number(end)
    first = sp.pages.next_mapped(lo, hi)
    grows_bad: Any = False
    grows_enomem: Any = False
    if is_sym(grows, first):
        # The same clauses on Z3 terms, except that GROWSDOWN on a growsdown VMA is EINVAL too
        # (the symbolic interpretation has no growsdown mappings).
        has_grows = ne(grows, 0)
        grows_enomem = all_of(has_grows, any_of(uge(first, hi), all_of(eq(grows, PROT_GROWSUP), ugt(first, lo))))
        grows_bad = has_grows
    elif grows:
        # vma = the first VMA ending after start; GROWSDOWN extends the range down to its start
        # and needs VM_GROWSDOWN; GROWSUP needs VM_GROWSUP, which x86 never has (facts:
        # mprotect/"PROT_GROWSDOWN on normal VMA").
        if first >= hi:
            return Result(True, neg(ENOMEM), state, "mprotect.grows-unmapped")      # ENOMEM: no vma
        attr = sp.pages.get(first)
        if grows == PROT_GROWSUP:
            if first > lo:
                return Result(True, neg(ENOMEM), state, "mprotect.starts-in-hole")  # ENOMEM: vma->vm_start > start
            return Result(True, neg(EINVAL), state, "mprotect.growsup")             # EINVAL: no VM_GROWSUP on x86
        if not is_growsdown(attr):
            return Result(True, neg(EINVAL), state, "mprotect.growsdown-not-growsdown")  # EINVAL: no VM_GROWSDOWN
        run_start = first
        while run_start > 0 and sp.pages.get(run_start - 1) == attr:
            run_start -= 1
        lo = first = run_start
    bad3, err3, clause3 = _first_error([
        (grows_enomem, ENOMEM, "mprotect.grows-unmapped"),
        (grows_bad, EINVAL, "mprotect.grows"),
        (ne(first, lo), ENOMEM, "mprotect.starts-in-hole"),                           # ENOMEM: no vma, or vma->vm_start > start
    ])
    if is_true(bad3):
        return Result(True, err3, state, clause3)
    run_end = sp.pages.mapped_run_end(lo, hi)
    hole = ult(run_end, hi)
    prot_bits = band(base_prot, ATTR_PROT)
    if not is_sym(choice.fail, hole) and choice.fail:
        allowed = resource_failure_allowed(state, choice.fail, run_end - lo) and bool(prot_bits & PROT_WRITE)
        # With a hole in range ENOMEM is also the answer after changing the pages before it; a
        # large range made writable is taken as failing its accounting at the first VMA, before
        # anything changed (measured on 6.18: mmap 1 TiB r--, mprotect 1 TiB + 1 page rw ->
        # ENOMEM, the mapping stays r--; corpus/linux-mprotect-accounting-before-hole.repro).
        if not hole or allowed:
            return Result(allowed, neg(choice.fail), state, "mprotect.resource",
                          "" if allowed else "success (below the profile's resource limits)")
    if not is_sym(lo, run_end) and any(is_special(a) for _s, _e, a in sp.pages.iter_runs(lo, run_end)):
        return _mprotect_special(state, args.pid, lo, run_end, hi, prot_bits)
    new_pages = sp.pages.assign(lo, run_end, lambda a: with_prot(a, prot_bits))
    new = state.with_space(args.pid, sp.with_(pages=new_pages))
    outcome = ite(hole, neg(ENOMEM), 0)                                               # ENOMEM after changing the part before the hole
    if is_sym(bad, bad2, bad3, zero_len, hole):
        failed = any_of(bad, zero_len, bad2, bad3)
        out = ite(bad, err, ite(zero_len, 0, ite(bad2, err2, ite(bad3, err3, outcome))))
        return Result(True, out, ite(failed, state, new), "symbolic")
    return Result(True, outcome, new, "mprotect.hole-after-change" if hole else "mprotect.ok")


def _mprotect_special(state: State, pid: int, lo: int, run_end: int, hi: int, prot: int) -> Result:
    """The VMA walk when special mappings are in range (concrete): [vvar] may only be readable
    (no VM_MAYWRITE / VM_MAYEXEC: EACCES), and changing part of a special mapping would split it
    (EINVAL); VMAs before the offending one keep their change (measured on 6.18)."""
    sp = state.space_of(pid)
    pages = sp.pages
    for vma in _vmas(sp.pages, lo, run_end):
        s, e, attr = vma[0][0], vma[-1][1], vma[0][2]
        new_attr = with_prot(attr, prot)
        if (attr >> ATTR_KIND_SHIFT) & 7 == Kind.vvar and prot & (PROT_WRITE | PROT_EXEC):
            return Result(True, neg(Errno.EACCES), state.with_space(pid, sp.with_(pages=pages)),
                          "mprotect.vvar-eacces")                                        # EACCES: no VM_MAYWRITE/MAYEXEC
        cut_below = s == lo and _splits_special(sp.pages, s)
        cut_above = e == run_end and _splits_special(sp.pages, e)
        if new_attr != attr and (cut_below or cut_above):
            return Result(True, neg(EINVAL), state.with_space(pid, sp.with_(pages=pages)),
                          "mprotect.split-special")                                      # EINVAL: may_split refuses
        for rs, re_, rattr in vma:
            pages = pages.set(rs, re_, with_prot(rattr, prot))
    hole = run_end < hi
    return Result(True, neg(ENOMEM) if hole else 0, state.with_space(pid, sp.with_(pages=pages)),
                  "mprotect.hole-after-change" if hole else "mprotect.ok")


def _vmas(pages: Any, lo: int, hi: int) -> list[list[tuple[int, int, int]]]:
    """The runs of [lo, hi) grouped by VMA (concrete): a special mapping whose pages differ only
    in ATTR_SIGBUS ([vvar]'s unpopulated pages) is one VMA, so a change applies to all of it or,
    when it would split it, to none of it."""
    vmas: list[list[tuple[int, int, int]]] = []
    for s, e, attr in pages.iter_runs(lo, hi):
        if vmas and is_special(attr) and vmas[-1][-1][1] == s \
                and (vmas[-1][-1][2] | ATTR_SIGBUS) == (attr | ATTR_SIGBUS):
            vmas[-1].append((s, e, attr))
        else:
            vmas.append([(s, e, attr)])
    return vmas


def brk(state: State, args: BrkArgs, choice: ResourceChoice = ResourceChoice()) -> Result:
    """brk(2): "brk() sets the end of the data segment to the value specified by addr, when that
    value is reasonable, the system has enough memory, and the process does not exceed its
    maximum data size." The raw syscall returns the new break on success and the old one on
    failure (never -errno). Growth needs one free page between the new break and the next
    mapping (stack_guard_gap below a growsdown one); shrinking unmaps; an unaligned break is kept
    verbatim (facts: brk table)."""
    sp = state.space_of(args.pid)
    new_brk, old_brk = args.addr, sp.brk
    newbrk = page_align_up(new_brk)
    oldbrk = page_align_up(old_brk)
    if is_sym(new_brk, old_brk, sp.start_brk):
        return _brk_symbolic(state, args, sp, newbrk, oldbrk)
    if new_brk < sp.start_brk:
        return Result(True, old_brk, state, "brk.below-start")                       # refused: brk < mm->start_brk (brk(0) reads)
    if newbrk == oldbrk:
        return Result(True, new_brk, state.with_space(args.pid, sp.with_(brk=new_brk)), "brk.same-page")
    if new_brk <= old_brk:
        lo, hi = newbrk >> PAGE_SHIFT, oldbrk >> PAGE_SHIFT
        if not sp.pages.any_mapped(lo, hi):
            return Result(True, old_brk, state, "brk.shrink-nothing-mapped")         # refused: no VMA in [newbrk, oldbrk)
        new_sp = sp.with_(brk=new_brk, pages=sp.pages.set(lo, hi, 0), data=sp.data.zero(lo, hi))
        return Result(True, new_brk, state.with_space(args.pid, new_sp), "brk.shrink")
    if newbrk < oldbrk or newbrk > TASK_SIZE:
        return Result(True, old_brk, state, "brk.beyond-task-size")                  # refused: check_brk_limits ENOMEM
    lo, hi = oldbrk >> PAGE_SHIFT, newbrk >> PAGE_SHIFT
    nxt = sp.pages.next_mapped(lo, TASK_PAGES)
    if nxt < TASK_PAGES:
        gap_start = nxt - STACK_GUARD_GAP_PAGES if is_growsdown(sp.pages.get(nxt)) else nxt
        if hi + 1 > gap_start:
            return Result(True, old_brk, state, "brk.next-vma-too-close")            # refused: newbrk + PAGE_SIZE > vm_start_gap(next)
    if choice.fail:
        allowed = resource_failure_allowed(state, ENOMEM, hi - lo)
        return Result(allowed, old_brk, state, "brk.resource", "" if allowed else f"{new_brk:#x}")
    attr = ATTR_MAPPED | (Kind.heap << ATTR_KIND_SHIFT) | PROT_READ | PROT_WRITE
    new_sp = sp.with_(brk=new_brk, pages=sp.pages.set(lo, hi, attr), data=sp.data.zero(lo, hi))
    return Result(True, new_brk, state.with_space(args.pid, new_sp), "brk.grow")


def _brk_symbolic(state: State, args: BrkArgs, sp: Any, newbrk: Any, oldbrk: Any) -> Result:
    """brk on Z3 terms: the same clauses as the concrete path, merged with ite."""
    new_brk, old_brk = args.addr, sp.brk
    lo_s, hi_s = page_number(newbrk), page_number(oldbrk)
    lo_g, hi_g = page_number(oldbrk), page_number(newbrk)
    below = ult(new_brk, sp.start_brk)
    same = eq(newbrk, oldbrk)
    shrink = ule(new_brk, old_brk)
    shrink_ok = sp.pages.any_mapped(lo_s, hi_s)
    grow_bad = any_of(ult(newbrk, oldbrk), ugt(newbrk, TASK_SIZE))
    nxt = sp.pages.next_mapped(lo_g, TASK_PAGES)
    too_close = all_of(ult(nxt, TASK_PAGES),
                       ugt(add(hi_g, 1), ite(is_growsdown(sp.pages.get(nxt)), sub(nxt, STACK_GUARD_GAP_PAGES), nxt)))
    attr = ATTR_MAPPED | (Kind.heap << ATTR_KIND_SHIFT) | PROT_READ | PROT_WRITE
    shrunk = state.with_space(args.pid, sp.with_(brk=new_brk, pages=sp.pages.set(lo_s, hi_s, 0),
                                                 data=sp.data.zero(lo_s, hi_s)))
    grown = state.with_space(args.pid, sp.with_(brk=new_brk, pages=sp.pages.set(lo_g, hi_g, attr),
                                                data=sp.data.zero(lo_g, hi_g)))
    moved = state.with_space(args.pid, sp.with_(brk=new_brk))
    refused = any_of(below, all_of(not_(same), shrink, not_(shrink_ok)),
                     all_of(not_(same), not_(shrink), any_of(grow_bad, too_close)))
    new = ite(same, moved, ite(shrink, shrunk, grown))
    return Result(True, ite(refused, old_brk, new_brk), ite(refused, state, new), "symbolic")


__all__ = ["MmapArgs", "MmapChoice", "MunmapArgs", "MprotectArgs", "BrkArgs", "ResourceChoice", "OBJ_LIMIT",
           "mmap", "munmap", "mprotect", "brk", "predicted_placement", "round_hint", "resource_failure_allowed"]
