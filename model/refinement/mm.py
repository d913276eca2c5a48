"""Refinement of the memory transitions: munmap, mprotect, brk (one process, and two: see "two
processes" below), load, store (one process; two: fork.py).

munmap, mprotect and brk: `obligation_for` proves the outcome, the VMA attributes and the break
(relation.related); `contents_obligation` proves R's third part, the contents clause, after the
step. What made those queries cheap and seed-stable (at most 1.6 M resource units on seeds 0-9,
one process and two, where the first formulations answered unknown on 1-3 of 10 seeds): `at` as
page number and zero offset, the cases stated in level 1's own page terms (in level 2's, or with
`at` a plain 64-bit constant, the level-1 side alone cost 8-26 M units and varied with the seed),
and, where level 1 leaves the page alone, a first link proving just that (UNTOUCHED_PARTS).
"""
from __future__ import annotations

from typing import Any

import z3

from ...specs.abi import TASK_SIZE, SiCode
from .. import design as d
from .. import mm as mm1
from ..logic import bor, eq, first_true, ite, not_
from .relation import (OTHER, PID, ROOT, SHAPES, _states, _tree_states, both_running, contents_at, contents_related,
                       layout_of, other_slot, page_address, populated_page, related, running_slots, sharing_at,
                       slot_related, tree_related, word1)


def _step(name: str, shape: str | None = None, caller: int = PID):
    """Both levels' `name` by `caller`: from one-process states (shape None), or from the states
    relation._tree_states makes for a shape (slots pinned to R's pids)."""
    s2, s1, ctx = _states() if shape is None else _tree_states(shape, layout_of(shape), pin=True)
    addr, length, prot = (z3.BitVec(f"refine.{n}", 64) for n in ("addr", "length", "prot"))
    if name == "brk":
        allowed2, out2, new2 = d.brk(s2, d.BrkArgs(caller, addr), d.Choice())
        r1 = mm1.brk(s1, mm1.BrkArgs(caller, addr), mm1.ResourceChoice())
    elif name == "munmap":
        allowed2, out2, new2 = d.munmap(s2, d.RangeArgs(caller, addr, length), d.Choice())
        r1 = mm1.munmap(s1, mm1.MunmapArgs(caller, addr, length))
    else:
        allowed2, out2, new2 = d.mprotect(s2, d.RangeArgs(caller, addr, length, prot), d.Choice())
        r1 = mm1.mprotect(s1, mm1.MprotectArgs(caller, addr, length, prot), mm1.ResourceChoice())
    return s2, s1, ctx, allowed2, out2, new2, r1, (addr, length, prot)


def _label(shape: str | None, caller: int, part: str = "") -> str:
    """The bracketed part of an obligation's name: the shape and caller (none for one process), then the part."""
    where = f"{shape}-by-{'root' if caller == ROOT else 'other'}" if shape else ""
    label = "-".join(x for x in (where, part) if x)
    return f"[{label}]" if label else ""


def _access_outcome(s1: Any, pid: int, va: Any, want: str) -> Any:
    """Level 1's fault rule for an access inside one page (memory.access_outcome's clauses, from
    the same level-1 predicates): 0, SEGV_MAPERR or SEGV_ACCERR. memory.access_outcome itself
    compares a Z3 boolean with False (`eq(is_mapped(attr), False)`), which raises on Z3 terms: a
    level-1 hook to fix (reported), restated here until then."""
    from ..memory import READ
    from ..predicates import can_read, can_write, is_mapped
    attr = s1.space_of(pid).pages.get(d.vpn_of(va))
    allowed = can_read(attr) if want == READ else can_write(attr)
    return first_true([(not_(is_mapped(attr)), int(SiCode.SEGV_MAPERR)),
                       (not_(allowed), int(SiCode.SEGV_ACCERR))], 0)


def _access_step(name: str):
    from ..memory import READ, WRITE, store_page
    s2, s1, ctx = _states()
    va, value, frame = (z3.BitVec(f"refine.{n}", 64) for n in ("va", "value", "frame"))
    args = d.AccessArgs(PID, va, value)
    fn = d.load if name == "load" else d.store
    allowed2, out2, new2 = fn(s2, args, d.Choice(frame=frame))
    fault1 = _access_outcome(s1, PID, va, READ if name == "load" else WRITE)
    ok1 = eq(fault1, 0)
    # Level 1's outcome in level 2's encoding: the value (load) / ACCESS_OK (store), or SIGSEGV's si_code.
    value1 = word1(s1, PID, va) if name == "load" else d.ACCESS_OK
    out1 = ite(ok1, value1, bor(1 << 32, fault1))
    new1 = s1 if name == "load" else ite(ok1, store_page(s1, PID, va, 8, value), s1)
    pre = z3.And(d._as_bool(d.is_page_aligned(va)), z3.ULT(va, TASK_SIZE))
    return s2, s1, ctx, allowed2, out2, new2, out1, new1, pre, (va, value, frame)


def access_obligation(name: str, page: str = ""):
    """`page` splits the contents clause after the step: at the accessed page ("same-page") or at
    any other page ("other-page"); the two cases cover every address."""
    from ...specs.obligations import Ctx, Obligation, invariants_hold

    def build() -> tuple:
        s2, s1, ctx, allowed2, out2, new2, out1, new1, pre, (va, value, frame) = _access_step(name)
        _, after2 = d.find_proc(new2, PID)
        hyps = invariants_hold(s2) + [related(s2.procs[0], s1.space_of(PID)), contents_related(s2, s2.procs[0], s1),
                                      d._as_bool(allowed2), pre] + list(ctx.facts)
        # The contents clause after the step is proved at an arbitrary address `at` (a free
        # constant: proving it for every value of `at` is the ForAll), with R's clause before the step
        # instantiated at `at` and at the accessed address: the byte-array reasoning then stays ground.
        at = z3.BitVec("refine.at", 64)
        hyps += [contents_at(s2, s2.procs[0], s1, PID, at), contents_at(s2, s2.procs[0], s1, PID, va)]
        if page:
            # at == va or not: both page-aligned (else the clause holds trivially), so "not" is "another page".
            same = at == va
            hyps.append(same if page == "same-page" else z3.Not(same))
        goal = z3.And(d._as_bool(eq(out1, out2)), related(after2, new1.space_of(PID)),
                      contents_at(new2, after2, new1, PID, at))
        return hyps, goal, Ctx({"before": s2, "after": new2},
                               {"va": va, "value": value, "frame": frame, "outcome (level 2)": out2,
                                "outcome (level 1)": out1})
    # With R's contents clause instantiated by hand and the two pages cases apart, pattern
    # instantiation finishes each in about 2 s; one query with MBQI took 4-20 s or answered unknown
    # (measured over seeds 0-5).
    return Obligation(f"{name}-refines-level1" + (f"[{page}]" if page else ""), "refine", build, tactic="ematching")


def obligation_for(name: str, shape: str | None = None, caller: int = PID):
    """Equal outcomes, and R's VMA attributes and break for the caller after the step, from the
    caller's R before (quantified). With a shape, in a state of that shape."""
    from ...specs.obligations import Ctx, Obligation, invariants_hold

    def build() -> tuple:
        s2, s1, ctx, allowed2, out2, new2, r1, (addr, length, prot) = _step(name, shape, caller)
        _, after2 = d.find_proc(new2, caller)
        _, p2 = d.find_proc(s2, caller)
        # The caller's R only: the outcome and the caller's VMAs depend on nothing else (with the whole
        # of tree_related, quantified, two-process queries took 3-34 M units and varied with the seed).
        hyps = invariants_hold(s2) + [related(p2, s1.space_of(caller)), d._as_bool(allowed2),
                                      d._as_bool(r1.allowed)] + list(ctx.facts)
        # Level 1 must not refuse its resource choice here: no resource failure is chosen.
        goal = z3.And(d._as_bool(eq(r1.outcome, out2)), related(after2, r1.state.space_of(caller)))
        return hyps, goal, Ctx({"before": s2, "after": new2},
                               {"addr": addr, "length": length, "prot": prot, "outcome (level 2)": out2,
                                "outcome (level 1)": r1.outcome})
    # brk's two hidden-choice quantifiers (level 1's next mapped page, level 2's witness) send MBQI
    # astray; pattern instantiation alone proves it (measured over seeds 0-9).
    return Obligation(f"{name}-refines-level1{_label(shape, caller)}", "refine", build,
                      tactic="ematching" if name == "brk" else "smt")


CONTENTS_PARTS = {"mprotect": ("contents",),
                  "munmap": ("contents-outside-range", "contents-in-range-unmapped", "contents-in-range-refused"),
                  "brk": ("contents-outside-range", "contents-shrunk", "contents-grown", "contents-in-range-refused")}


# The contents parts where level 1 leaves `at`'s page alone. Each is a chain of two obligations:
# "<part>-page-untouched" proves level 1's attributes at the page and its 8 bytes at `at` (private
# and in the page's shared object) unchanged; "<part>" takes that as a hypothesis. Level 1's word
# read through its merged (ite) state was the cost: proved in one query, brk's outside-range case
# in two-process shapes used 0.7 M to over 30 M resource units by the seed; split, each query
# stays under 1 M on seeds 0-9.
UNTOUCHED_PARTS = ("contents-outside-range", "contents-in-range-refused")
UNTOUCHED_SUFFIX = "-page-untouched"


def _with_untouched(parts: tuple) -> list:
    """The parts, each of UNTOUCHED_PARTS preceded by its first link."""
    return [p for part in parts for p in ((part + UNTOUCHED_SUFFIX,) if part in UNTOUCHED_PARTS else ()) + (part,)]


def level1_page_untouched(s1: Any, new1: Any, pid: int, at: Any) -> Any:
    """Level 1's page at `at` is the same after the step: its attributes, and its 8 bytes at `at` in
    the process's own contents and in the shared object the page names."""
    from ..predicates import obj_of
    k = d.vpn_of(at)
    before, after = s1.space_of(pid), new1.space_of(pid)
    attr, attr_after = before.pages.get(k), after.pages.get(k)
    return z3.And(d._as_bool(eq(attr_after, attr)),
                  d._as_bool(eq(after.data.load(at, 8), before.data.load(at, 8))),
                  d._as_bool(eq(new1.shared.get(obj_of(attr_after)).load(at, 8), s1.shared.get(obj_of(attr)).load(at, 8))))


def contents_obligation(name: str, part: str = "contents", shape: str | None = None, caller: int = PID):
    """R's contents clause after mprotect / munmap / brk at a free page-aligned address `at`, written
    as page number and zero offset (Concat: level 1's 8-byte read at `at` then stays on one page
    without adder reasoning; proving it for every page is the ForAll, and the clause says nothing
    at unaligned addresses). Hypotheses: the clause before at `at`; R's attributes before and after
    the step at `at`'s page and equal outcomes (both proved by `<name>-refines-level1`: this is the
    second link of a chain, as mmap's); the invariants at that page and the frame mapped there;
    both levels' `allowed`. munmap and brk are split, exhaustively, by level 1's own page ranges:
    outside them nothing changes; a page a successful munmap or brk shrink removes is in no VMA
    after (a stronger goal than the clause, whose antecedent it falsifies); a page a successful
    brk grow maps reads zero at both levels; inside a refused call's range nothing changes.
    With a shape, the caller's clause in a state of that shape. `part` may end in UNTOUCHED_SUFFIX
    (for UNTOUCHED_PARTS: the first link, level 1's page unchanged)."""
    from ...specs.obligations import Ctx, Obligation, invariants_hold
    from ..predicates import page_align_up, page_number
    from .fork import _instances

    case = part.removesuffix(UNTOUCHED_SUFFIX)

    def build() -> tuple:
        s2, s1, ctx, allowed2, out2, new2, r1, (addr, length, prot) = _step(name, shape, caller)
        _, after2 = d.find_proc(new2, caller)
        _, p2 = d.find_proc(s2, caller)
        at = page_address()
        k = d.vpn_of(at)
        keys = (k, p2.pt.get(k)[0])
        hyps = [_instances(inv, keys, ()) for inv in invariants_hold(s2)] + [
            _instances(related(p2, s1.space_of(caller)), (k,), ()),
            _instances(related(after2, r1.state.space_of(caller)), (k,), ()), d._as_bool(eq(r1.outcome, out2)),
            contents_at(s2, p2, s1, caller, at), d._as_bool(allowed2), d._as_bool(r1.allowed)] + list(ctx.facts)
        goal = contents_at(new2, after2, r1.state, caller, at)
        if name == "munmap":
            lo, hi = page_number(addr), page_number(page_align_up(addr + length))
            inside = z3.And(z3.ULE(lo, k), z3.ULT(k, hi))
            succeeded = d._as_bool(eq(out2, 0))
            hyps += {"contents-outside-range": [z3.Not(inside)],
                     "contents-in-range-unmapped": [inside, succeeded],
                     "contents-in-range-refused": [inside, z3.Not(succeeded)]}[case]
            if part == "contents-in-range-unmapped":
                goal = z3.Not(d._as_bool(d.vma_find(after2.vmas, k)[0]))
        elif name == "brk":
            newbrk, oldbrk = page_align_up(addr), page_align_up(s1.space_of(caller).brk)
            shrunk = z3.And(z3.ULE(page_number(newbrk), k), z3.ULT(k, page_number(oldbrk)))
            grown = z3.And(z3.ULE(page_number(oldbrk), k), z3.ULT(k, page_number(newbrk)))
            succeeded = d._as_bool(eq(out2, addr))
            hyps += {"contents-outside-range": [z3.Not(shrunk), z3.Not(grown)],
                     "contents-shrunk": [shrunk, succeeded],
                     "contents-grown": [grown, succeeded],
                     "contents-in-range-refused": [z3.Or(shrunk, grown), z3.Not(succeeded)]}[case]
            if part == "contents-shrunk":
                goal = z3.Not(d._as_bool(d.vma_find(after2.vmas, k)[0]))
        if case in UNTOUCHED_PARTS:
            untouched = level1_page_untouched(s1, r1.state, caller, at)
            if part == case:
                hyps.append(untouched)        # proved by "<part>-page-untouched"
            else:
                goal = untouched
        return hyps, goal, Ctx({"before": s2, "after": new2},
                               {"addr": addr, "length": length, "prot": prot, "at": at,
                                "outcome (level 2)": out2, "outcome (level 1)": r1.outcome})
    return Obligation(f"{name}-refines-level1{_label(shape, caller, part)}", "refine", build, tactic="push-ite",
                      feature=populated_page(caller))


# --- two processes: the caller's step and the rest of R ------------------------------------------
# In a shape with another process (SHAPES), R after munmap / mprotect / brk by the caller is: the
# caller's clauses (obligation_for and contents_obligation with the shape: the other process may
# share the caller's frames copy-on-write or MAP_SHARED), the other process's slot (OTHER_PARTS
# "other-process": its VMAs, page table, break and words unchanged at both levels, e.g. a munmap
# that frees a frame the other still maps is refuted), and, when both run, the sharing clause ("sharing": a page the caller unmaps leaves no
# frame of the other's shared object behind). Each is proved at free constants (page `kx`, address
# `at`) with R before instantiated there, as fork.store_obligation; "sharing" is chained on
# obligation_for's equal outcomes and the caller's attributes after.

OTHER_PARTS = ("other-process", "sharing")


def shares_a_frame(caller: int, shared: bool):
    """A vacuity feature (Obligation.feature) of a two-process shape: in the before-state the caller
    maps, in a MAP_SHARED VMA (`shared`) or a private one, a frame the other process maps too and
    that holds a non-zero word: the step then acts on a frame that is not the caller's alone."""
    def feature(ctx: Any) -> Any:
        s2 = ctx.states["before"]
        _, p = d.find_proc(s2, caller)
        (other,) = [q for q in s2.procs if q is not p]
        k = z3.BitVec("vacuity.k", 64)
        pte = p.pt.get(k)
        in_shared = d._as_bool(d.find_vma(p.vmas, k)[2])
        return z3.And(d._as_bool(d.pte_present(pte)), in_shared if shared else z3.Not(in_shared),
                      d._as_bool(other.rmap.get(pte[0])[0]), s2.frames.get(pte[0])[2] != 0)
    return feature


def other_obligation(name: str, shape: str, caller: int, part: str):
    from ...specs.obligations import Ctx, Obligation, invariants_hold
    from .fork import _instances

    def build() -> tuple:
        layout = layout_of(shape)
        s2, s1, ctx, allowed2, out2, new2, r1, (addr, length, prot) = _step(name, shape, caller)
        kx = z3.BitVec("refine.kx", 64)
        at = page_address()
        pages = (kx, d.vpn_of(at))
        keys = pages + tuple(p.pt.get(k)[0] for p in s2.procs for k in pages)
        hyps = [_instances(inv, keys, ()) for inv in invariants_hold(s2)] + [
            _instances(tree_related(s2, s1, layout), pages, (at,)), d._as_bool(allowed2),
            d._as_bool(r1.allowed)] + list(ctx.facts)
        running = running_slots(s1, layout)
        if part == "other-process":
            goal = _instances(slot_related(new2, r1.state, layout, other_slot(s1, layout, caller), at), (kx,), (at,))
        else:
            _, after2 = d.find_proc(new2, caller)
            hyps += [d._as_bool(eq(r1.outcome, out2)),       # proved by obligation_for(name, shape, caller)
                     _instances(related(after2, r1.state.space_of(caller)), (kx,), ())]
            (a, i), (b, j) = running
            goal = sharing_at(r1.state, a, new2.procs[i], b, new2.procs[j], kx)
        return hyps, goal, Ctx({"before": s2, "after": new2},
                               {"addr": addr, "length": length, "prot": prot, "page": kx, "at": at,
                                "outcome (level 2)": out2, "outcome (level 1)": r1.outcome})
    return Obligation(f"{name}-refines-level1{_label(shape, caller, part)}", "refine", build, tactic="push-ite",
                      feature=shares_a_frame(caller, part == "sharing") if both_running(shape) else None)


def shape_obligations(shape: str, caller: int) -> list:
    """Every munmap / mprotect / brk obligation for `caller` in `shape`."""
    obs = []
    for name, parts in CONTENTS_PARTS.items():
        obs.append(obligation_for(name, shape, caller))
        obs += [contents_obligation(name, part, shape, caller) for part in _with_untouched(parts)]
        obs += [other_obligation(name, shape, caller, part) for part in OTHER_PARTS
                if part == "other-process" or both_running(shape)]
    return obs


def every_shape_obligation() -> list:
    """shape_obligations for every running caller of every shape with two processes (the proof
    suite proves those of SHAPE_SOURCES; tests prove these, each in a process of its own)."""
    from .fork import sources
    return [o for shape, caller in sources() if len(SHAPES[shape]) > 1 for o in shape_obligations(shape, caller)]


# The proof suite's two-process sources, for its time budget (measured before the page-untouched
# links: all 96 obligations then cost 53 s of CPU, these two sources 36 of them): the parent with a running child (frames shared copy-on-write and
# MAP_SHARED) and a vfork child in its lender's address space. The orphan shape differs in parent
# pointers, which these steps neither read nor write; running-child by OTHER is the same with the
# slots swapped; zombie-child is one address space. tests/proofs/test_refinement_mm_shapes.py
# proves every_shape_obligation (marked slow).
SHAPE_SOURCES = (("running-child", ROOT), ("vfork-child", OTHER))


def obligations() -> list:
    obs = [obligation_for(name) for name in ("munmap", "mprotect", "brk")]
    obs += [contents_obligation(name, part) for name, parts in CONTENTS_PARTS.items() for part in _with_untouched(parts)]
    obs += [o for shape, caller in SHAPE_SOURCES for o in shape_obligations(shape, caller)]
    return obs + [access_obligation("load"), access_obligation("store", "same-page"),
                  access_obligation("store", "other-page")]
