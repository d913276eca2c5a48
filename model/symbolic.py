"""Symbolic level-1 states for the proofs: the same transitions, run on Z3 terms.

`fresh_state(profile, pids)` builds a state whose address spaces, contents, breaks and shared
objects are unconstrained Z3 terms, with a bounded, concrete process structure (the given pids,
one address space each). A transition such as `mm.mprotect(state, MprotectArgs(pid, a, l, p),
ResourceChoice())` then returns Z3 terms: `Result.allowed`, `Result.outcome` (a 64-bit word) and
`Result.state` (containers whose arrays are Lambda terms). Global queries a transition asks
(the first mapped page after x, a free gap ...) are fresh variables whose defining constraints
are in `ctx.facts`: assume them.

`encode(ctx, state)` turns a concrete state into a symbolic one equal to it (the property test
that both interpretations agree builds on it); `decode_pages` / `read_bytes` read results back
under a Z3 model.

Limits (deliberate, stated here once): on Z3 terms mmap(NULL) placement is "some free, aligned
gap in the profile's mmap range" (not first fit / top-down), the x86 hint guard gap and
growsdown expansion on faults are not modelled, PROT_GROWS* is EINVAL, special mappings
([vdso], [vvar]) are ordinary, and resource failures are a free choice.
"""
from __future__ import annotations

from typing import Any

import z3

from ..specs.abi import PAGE_SHIFT, PAGE_SIZE
from ..specs.profiles import Profile
from .logic import WORD, to_python
from .space import (BYTE_SORT, WORD_SORT, PageData, PageMap, SharedStore, SymContext, SymPageData, SymPageMap,
                    SymSharedStore)
from .state import REAPER, AddressSpace, Process, State

__all__ = ["fresh_state", "encode", "encode_space", "SymContext", "eval_word", "page_attr", "read_byte"]


def fresh_state(profile: Profile, pids: tuple[int, ...] = (1,), prefix: str = "s") -> tuple[State, SymContext]:
    """A state with `pids` running processes (the first is the root, the others its children),
    each with its own unconstrained address space."""
    ctx = SymContext(prefix)
    procs = {}
    spaces = {}
    root = pids[0]
    for mm_id, pid in enumerate(pids):
        procs[pid] = Process(pid=pid, ppid=REAPER if pid == root else root,
                             path="root" if pid == root else f"root/{mm_id - 1}", mm=mm_id,
                             children=tuple(pids[1:]) if pid == root else ())
        spaces[mm_id] = AddressSpace(pages=SymPageMap.fresh(ctx, f"pages{pid}"), data=SymPageData.fresh(ctx, f"data{pid}"),
                                     start_brk=ctx.fresh(f"start_brk{pid}"), brk=ctx.fresh(f"brk{pid}"))
    state = State(profile=profile, procs=procs, spaces=spaces, shared=SymSharedStore.fresh(ctx),
                  next_mm=len(pids), next_obj=ctx.fresh("next_obj"), reaper=profile.reaper_pid or 0, root=root)
    return state, ctx


def _bv(value: int) -> Any:
    return z3.BitVecVal(value, WORD)


def _encode_pages(ctx: SymContext, pages: PageMap) -> SymPageMap:
    p = z3.BitVec(f"{ctx.prefix}!enc_p", WORD)
    body: Any = _bv(0)
    for s, e, a in reversed(pages.runs):
        body = z3.If(z3.And(z3.ULE(_bv(s), p), z3.ULT(p, _bv(e))), _bv(a), body)
    return SymPageMap(ctx, z3.Lambda([p], body))


def _encode_data(ctx: SymContext, data: PageData) -> SymPageData:
    array: Any = z3.K(WORD_SORT, z3.BitVecVal(0, 8))
    for page, blob in sorted(data.pages.items()):
        base = page << PAGE_SHIFT
        for off, byte in enumerate(blob):
            if byte:
                array = z3.Store(array, _bv(base + off), z3.BitVecVal(byte, 8))
    return SymPageData(ctx, array)


def _encode_shared(ctx: SymContext, shared: SharedStore) -> SymSharedStore:
    array: Any = z3.K(WORD_SORT, z3.K(WORD_SORT, z3.BitVecVal(0, 8)))
    for obj, data in sorted(shared.objs.items()):
        array = z3.Store(array, _bv(obj), _encode_data(ctx, data).array)
    return SymSharedStore(ctx, array)


def encode_space(ctx: SymContext, sp: AddressSpace) -> AddressSpace:
    """One concrete address space as Z3 terms (equal to it under every model)."""
    return AddressSpace(pages=_encode_pages(ctx, sp.pages), data=_encode_data(ctx, sp.data),
                        start_brk=_bv(sp.start_brk), brk=_bv(sp.brk), mmap_base=sp.mmap_base)


def encode(ctx: SymContext, state: State) -> State:
    """The concrete `state` as Z3 terms (equal to it under every model)."""
    spaces = {mm_id: encode_space(ctx, sp) for mm_id, sp in state.spaces.items()}
    return state.with_(spaces=spaces, shared=_encode_shared(ctx, state.shared), next_obj=_bv(state.next_obj))


def eval_word(model: z3.ModelRef, term: Any) -> Any:
    """A term's value under `model` as a Python int/bool (Python values pass through)."""
    if isinstance(term, z3.ExprRef):
        return to_python(model.eval(term, model_completion=True))
    return term


def page_attr(model: z3.ModelRef, state: State, pid: int, page: int) -> int:
    return eval_word(model, state.space_of(pid).pages.get(_bv(page)))


def read_byte(model: z3.ModelRef, state: State, pid: int, addr: int) -> int:
    """The byte at `addr` a user of process `pid` would read (shared object or private)."""
    from .predicates import is_shared, obj_of
    attr = state.space_of(pid).pages.get(_bv(addr >> PAGE_SHIFT))
    shared = z3.Select(z3.Select(state.shared.array, obj_of(attr)), _bv(addr))
    private = z3.Select(state.space_of(pid).data.array, _bv(addr))
    return eval_word(model, z3.If(is_shared(attr), shared, private))


_ = (BYTE_SORT, PAGE_SIZE)
