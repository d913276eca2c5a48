"""Refinement level 2 -> level 1: the obligations prove, and a level-2 transition broken on purpose
is caught with a counterexample (which also shows the hypotheses of that obligation can hold)."""
from __future__ import annotations

import dataclasses

import pytest

from forkspec.model import design as d
from forkspec.model import refinement as r
from forkspec.model.refinement import mm as rmm
from forkspec.specs.obligations import FEATURE_SUFFIX, feature_checks, small_states
from forkspec.specs.prove import FAILED, PROVED, call_apart, prove_one

BY_NAME = {o.name: o for o in r.obligations()}


def test_every_transition_has_a_refinement_obligation():
    for name in ("mmap", "munmap", "mprotect", "brk", "fork_cow", "fork_eager", "vfork", "exit", "execve",
                 "wait4", "load", "store"):
        assert any(n == f"{name}-refines-level1" or n.startswith(f"{name}-refines-level1[") for n in BY_NAME), name


def test_skipped_ones_say_why():
    for o in BY_NAME.values():
        if o.skip:
            assert len(o.skip) > 40 and o.name.split("-")[0] in r.SKIPPED


PROVED_HERE = ["mprotect-refines-level1[contents]", "munmap-refines-level1[contents-in-range-unmapped]",
               "brk-refines-level1[contents-grown]", "load-refines-level1", "store-refines-level1[other-page]", "store-refines-level1[same-page]",
               "exit-refines-level1[running-child-by-root]", "exit-refines-level1[zombie-child-by-root]",
               "wait4-refines-level1[zombie-child-by-root-for-other]",
               "wait4-refines-level1[running-child-by-root-for-other]"]


@pytest.fixture(scope="module")
def proved_here(proved) -> dict:
    return proved(PROVED_HERE)


@pytest.mark.parametrize("name", PROVED_HERE)
def test_proved(name, proved_here):
    assert proved_here[name].verdict == PROVED, proved_here[name].counterexample


def _store_off_by_one(orig):
    return lambda s, a, c: orig(s, dataclasses.replace(a, value=d.add(a.value, 1)), c)


def _store_everywhere(orig):
    """A store that also writes the word into every frame in use (other pages change)."""
    def broken(s, a, c):
        allowed, out, new = orig(s, a, c)
        frames = new.frames.update(lambda f, fr: d.sel(fr[0], (fr[0], fr[1], a.value), fr))
        return allowed, out, dataclasses.replace(new, frames=frames)
    return broken


def _load_maperr_for_accerr(orig):
    def broken(s, a, c):
        allowed, out, new = orig(s, a, c)
        return allowed, d.ite(d.eq(out, d.FAULT_ACCERR), d.FAULT_MAPERR, out), new
    return broken


def _exit_keeps_parent(orig):
    def broken(s, a, c):
        allowed, out, new = orig(s, a, c)
        procs = tuple(dataclasses.replace(p, parent=q.parent) for p, q in zip(new.procs, s.procs))
        return allowed, out, dataclasses.replace(new, procs=procs)
    return broken


def _exit_drops_status(orig):
    return lambda s, a, c: orig(s, dataclasses.replace(a, status=0), c)


def _wait4_keeps_zombie(orig):
    def broken(s, a, c):
        allowed, out, _ = orig(s, a, c)
        return allowed, out, s
    return broken


def _wait4_echild_for_running(orig):
    def broken(s, a, c):
        allowed, out, new = orig(s, a, c)
        return allowed, d.ite(d.eq(out, 0), d.neg_errno(d.Errno.ECHILD), out), new
    return broken


def _mprotect_drops_pages(orig):
    """mprotect that also unmaps the range's PTEs (the VMAs keep them): level 2 then reads 0 there."""
    def broken(s, a, c):
        allowed, out, new = orig(s, a, c)
        lo, hi = d.vpn_of(a.addr), d.vpn_of(d.add(a.addr, d.page_align_up(a.length)))
        in_range = lambda k: d.all_of(d.ule(lo, k), d.ult(k, hi))  # noqa: E731
        procs = tuple(dataclasses.replace(p, pt=d.unmap_pages(p, in_range)[0], rmap=d.unmap_pages(p, in_range)[1])
                      for p in new.procs)
        return allowed, out, dataclasses.replace(new, procs=procs)
    return broken


def _zeroes_every_frame(orig):
    """The transition, then every frame's word is 0 (a page outside the range loses its contents)."""
    def broken(s, a, c):
        allowed, out, new = orig(s, a, c)
        return allowed, out, dataclasses.replace(new, frames=new.frames.update(lambda f, fr: (fr[0], fr[1], 0)))
    return broken


def _refute_patched(attr, breaker, name):
    """Runs in a process of its own (prove.call_apart): level 2's `attr` replaced by breaker(attr),
    then the obligation searched for a counterexample. Searched among small states (maps with two
    entries) from the start: a counterexample there is a real one, and the search is quick and
    stable, where the full search (which prove_one tries first) spent its whole budget before
    falling back, 30 s per case."""
    setattr(d, attr, breaker(getattr(d, attr)))
    with small_states():
        return prove_one(BY_NAME[name], rlimit=60_000_000, timeout_s=90)


@pytest.mark.parametrize("attr, breaker, name", [
    ("mprotect", _mprotect_drops_pages, "mprotect-refines-level1[contents]"),
    ("munmap", _zeroes_every_frame, "munmap-refines-level1[contents-outside-range]"),
    ("brk", _zeroes_every_frame, "brk-refines-level1[contents-outside-range]"),
    ("store", _store_off_by_one, "store-refines-level1[same-page]"),
    ("store", _store_everywhere, "store-refines-level1[other-page]"),
    ("load", _load_maperr_for_accerr, "load-refines-level1"),
    ("exit", _exit_keeps_parent, "exit-refines-level1[running-child-by-root]"),
    ("exit", _exit_drops_status, "exit-refines-level1[running-child-by-other]"),
    ("wait4", _wait4_keeps_zombie, "wait4-refines-level1[zombie-child-by-root-for-other]"),
    ("wait4", _wait4_echild_for_running, "wait4-refines-level1[running-child-by-root-for-other]"),
])
def test_broken_level2_is_caught(attr, breaker, name):
    # Apart: in the pytest process Z3's search depends on the terms earlier tests built.
    res = call_apart(_refute_patched, attr, breaker, name)
    assert res.verdict == FAILED
    assert "before:" in res.counterexample


# --- the bridge: the concrete level-1 load/store the oracle runs agree with the generic core the
# load/store obligations use, for the accesses R relates (8 bytes, page-aligned, ordinary mappings).

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from forkspec.model import memory  # noqa: E402
from forkspec.model.space import PageData, PageMap, SharedStore  # noqa: E402
from forkspec.model.state import REAPER, AddressSpace, Fault, Kind, Process, State, make_attr  # noqa: E402
from forkspec.specs.profiles import LINUX  # noqa: E402

BASE = 0x10000          # first mapped page


def _state(prots: list, shared: list) -> State:
    pages = PageMap()
    for i, (prot, sh) in enumerate(zip(prots, shared)):
        if prot is not None:
            pages = pages.set(BASE + i, BASE + i + 1, make_attr(prot, Kind.anon, shared=sh, obj=1 if sh else 0))
    space = AddressSpace(pages=pages, data=PageData(), start_brk=0x1000_0000, brk=0x1000_0000)
    return State(profile=LINUX, procs={r.PID: Process(r.PID, REAPER, "root", 0)}, spaces={0: space},
                 shared=SharedStore(), reaper=1, root=r.PID)


@settings(max_examples=60, deadline=None)
@given(prots=st.lists(st.one_of(st.none(), st.integers(0, 7)), min_size=3, max_size=3),
       shared=st.lists(st.booleans(), min_size=3, max_size=3), page=st.integers(0, 3),
       value=st.integers(0, (1 << 64) - 1))
def test_concrete_access_matches_the_generic_core(prots, shared, page, value):
    s = _state(prots, shared)
    va = (BASE + page) << 12
    stored = memory.store(s, r.PID, va, value)
    fault = rmm._access_outcome(s, r.PID, va, memory.WRITE)
    if isinstance(stored.outcome, Fault):
        assert stored.outcome.si_code == fault and stored.state is s
        return
    assert fault == 0
    assert memory.load_page(stored.state, r.PID, va, 8) == r.word1(memory.store_page(s, r.PID, va, 8, value), r.PID, va)
    loaded = memory.load(stored.state, r.PID, va)
    read_fault = rmm._access_outcome(stored.state, r.PID, va, memory.READ)
    if isinstance(loaded.outcome, Fault):
        assert loaded.outcome.si_code == read_fault != 0
    else:
        assert read_fault == 0 and loaded.outcome.value == value


# --- vacuity with a feature: the contents obligations hold with a populated private page ------------

# The one-process contents obligations (the two-process ones: test_refinement_mm_shapes.py).
MM_FEATURE_CHECKS = sorted(o.name for o in feature_checks()
                           if o.name.split("-")[0] in ("munmap", "mprotect", "brk") and "[contents" in o.name)


def test_every_contents_obligation_declares_a_feature():
    contents = sorted(n for n in BY_NAME if n.split("-")[0] in ("munmap", "mprotect", "brk") and "[contents" in n)
    # 8 cases (mprotect 1, munmap 3, brk 4), 4 of them with a "-page-untouched" first link.
    assert len(contents) == 12 and MM_FEATURE_CHECKS == sorted(n + FEATURE_SUFFIX for n in contents)
