"""munmap, mprotect and brk refine level 1 in two-process shapes (model/refinement/mm.py, "two
processes"): every shape and running caller proves, and level-2 steps broken where only another
process can see it (a frame it still maps, the sharing clause) are refuted there, while the
one-process obligations cannot tell."""
from __future__ import annotations

import contextlib
import dataclasses

import pytest

from forkspec.model import design as d
from forkspec.model.refinement import mm as rmm
from forkspec.model.refinement.relation import ROOT, SHAPES
from forkspec.specs import obligations as ob
from forkspec.specs.prove import FAILED, PROVED, call_apart, decide_sat_checks, prove_one, run_measured

EVERY = [o.name for o in rmm.every_shape_obligation()]


def test_every_two_process_source_has_each_part():
    # Every running caller of every shape with two processes, for each of the three steps.
    for shape, procs in SHAPES.items():
        others_run = [run for _, _, run, _ in procs]
        for pid, _, run, _ in procs:
            if len(procs) < 2 or run != "running":
                continue
            who = "root" if pid == ROOT else "other"
            for name, parts in rmm.CONTENTS_PARTS.items():
                want = [f"{name}-refines-level1[{shape}-by-{who}]", f"{name}-refines-level1[{shape}-by-{who}-other-process]"]
                want += [f"{name}-refines-level1[{shape}-by-{who}-{part}]" for part in parts]
                want += [f"{name}-refines-level1[{shape}-by-{who}-{part}-page-untouched]" for part in parts
                         if part in ("contents-outside-range", "contents-in-range-refused")]
                if others_run.count("running") == 2:
                    want.append(f"{name}-refines-level1[{shape}-by-{who}-sharing]")
                assert set(want) <= set(EVERY), (shape, who, name)


def test_the_suite_proves_its_sources_and_declares_their_features():
    suite = {o.name: o for o in ob.all_obligations()}
    for shape, caller in rmm.SHAPE_SOURCES:
        for o in rmm.shape_obligations(shape, caller):
            assert o.name in suite and o.name + ob.VACUITY_SUFFIX in suite
    sharing = suite["munmap-refines-level1[running-child-by-root-sharing]"]
    assert sharing.feature is not None


@pytest.mark.slow
def test_every_shape_and_caller_is_proved(proved):
    # The suite's sources through the session's cache (the whole-suite test proves them too).
    suite = {o.name for o in ob.all_obligations()}
    results = proved([n for n in EVERY if n in suite])
    results.update({r.obligation: r for r, _ in run_measured([n for n in EVERY if n not in suite], jobs=2,
                                                              source=rmm.every_shape_obligation)})
    assert set(results) == set(EVERY) and len(EVERY) > 60
    bad = [(n, r.verdict, r.counterexample[:400]) for n, r in results.items() if r.verdict != PROVED]
    assert not bad


def every_shape_feature_check() -> list:
    return [ob.hypotheses_satisfiable_with_feature(o) for o in rmm.every_shape_obligation() if o.feature is not None]


@pytest.mark.slow
def test_every_shape_feature_is_satisfiable():
    # The other process shares a non-zero frame with the caller (private or MAP_SHARED), or the
    # caller's page holds one: the obligations are about real contents, not empty memory.
    names = [o.name for o in every_shape_feature_check()]
    results = decide_sat_checks(names, source=every_shape_feature_check)
    assert len(results) == len(names) > 40
    assert all(r.verdict == PROVED for r in results.values()), \
        [(n, r.verdict, r.counterexample[:300]) for n, r in results.items() if r.verdict != PROVED]


# --- broken on purpose (test-only) ----------------------------------------------------------------

def _zeroes_frames_still_shared(orig):
    """The step, then every frame whose reference count it lowered but that is still in use reads 0:
    a release path that wipes a frame before checking that nobody else maps it. With one process
    the path is never taken (a mapped frame has one reference)."""
    def broken(s, a, c):
        allowed, out, new = orig(s, a, c)
        frames = new.frames.update(lambda f, fr: d.sel(d.all_of(d.ult(fr[1], s.frames.get(f)[1]), d.ne(fr[1], 0)),
                                                       (fr[0], fr[1], 0), fr))
        return allowed, out, dataclasses.replace(new, frames=frames)
    return broken


def _keeps_reverse_map(orig):
    """The step, then the caller's reverse map as it was: an unmapped frame still says it is mapped."""
    def broken(s, a, c):
        allowed, out, new = orig(s, a, c)
        procs = tuple(dataclasses.replace(q, rmap=p.rmap) for p, q in zip(s.procs, new.procs))
        return allowed, out, dataclasses.replace(new, procs=procs)
    return broken


def _touches_the_other_process(orig):
    """brk that also moves every other process's break to the caller's new one."""
    def broken(s, a, c):
        allowed, out, new = orig(s, a, c)
        _, caller = d.find_proc(new, a.pid)
        procs = tuple(d.sel(d.eq(p.pid, a.pid), p, dataclasses.replace(p, brk=caller.brk)) for p in new.procs)
        return allowed, out, dataclasses.replace(new, procs=procs)
    return broken


BREAKERS = {"zeroes-frames-still-shared": _zeroes_frames_still_shared, "keeps-reverse-map": _keeps_reverse_map,
            "touches-the-other-process": _touches_the_other_process}


def _prove_broken(step: str, breaker: str, names: tuple) -> dict:
    """In a process of its own (call_apart): design's `step` broken by BREAKERS[breaker], then the
    named obligations (one-process or shape ones): {name: (verdict, counterexample)}."""
    setattr(d, step, BREAKERS[breaker](getattr(d, step)))
    known = {o.name: o for o in rmm.obligations() + rmm.every_shape_obligation()}
    out = {}
    for name in names:
        # Shape obligations are searched among small states at once (their full search spends its
        # budget first, as test_refinement's breakers); one-process ones must prove as they are.
        with ob.small_states() if "[running-child" in name else contextlib.nullcontext():
            r = prove_one(known[name], rlimit=60_000_000, timeout_s=90)
        out[name] = (r.verdict, r.counterexample)
    return out


@pytest.mark.parametrize("step, breaker, refuted, blind", [
    # A munmap that wipes a copy-on-write frame the child still maps: the child's word changes.
    ("munmap", "zeroes-frames-still-shared", "munmap-refines-level1[running-child-by-root-other-process]",
     ("munmap-refines-level1[contents-outside-range]", "munmap-refines-level1[contents-in-range-unmapped]")),
    # A munmap that leaves the caller's reverse map: the child's MAP_SHARED frame looks shared still.
    ("munmap", "keeps-reverse-map", "munmap-refines-level1[running-child-by-root-sharing]", ()),
    ("brk", "touches-the-other-process", "brk-refines-level1[running-child-by-root-other-process]",
     ("brk-refines-level1",)),
])
def test_a_step_broken_for_the_other_process_is_refuted_in_two_process_shapes(step, breaker, refuted, blind):
    got = call_apart(_prove_broken, step, breaker, (refuted,) + blind)
    verdict, counterexample = got[refuted]
    assert verdict == FAILED, counterexample
    assert "process slot 1" in counterexample
    for name in blind:          # one process: the broken path is never taken, the obligation proves
        assert got[name][0] == PROVED, (name, got[name])


def _prove_with_level1_brk(breaker: str, name: str):
    """In a process of its own: level 1's brk broken (BREAKERS1), then the named obligation."""
    from forkspec.model import mm as mm1
    mm1.brk = BREAKERS1[breaker](mm1.brk)
    known = {o.name: o for o in rmm.obligations() + rmm.every_shape_obligation()}
    with ob.small_states():
        return prove_one(known[name], rlimit=60_000_000, timeout_s=90)


def _level1_brk_wipes_every_private_byte(orig):
    """Level 1's brk, then the caller's private contents all zero (pages outside the range too)."""
    def broken(state, args, choice=None):
        from forkspec.model.mm import ResourceChoice
        r = orig(state, args, choice or ResourceChoice())
        sp = r.state.space_of(args.pid)
        return dataclasses.replace(r, state=r.state.with_space(args.pid, sp.with_(data=sp.data.zero(0, 1 << 52))))
    return broken


BREAKERS1 = {"wipes-every-private-byte": _level1_brk_wipes_every_private_byte}


@pytest.mark.parametrize("name", ["brk-refines-level1[contents-outside-range-page-untouched]",
                                  "brk-refines-level1[running-child-by-root-contents-outside-range-page-untouched]"])
def test_the_page_untouched_link_refutes_a_level1_brk_that_wipes_other_pages(name):
    # The first link of the chain is a claim about level 1: it must fail when level 1 breaks it.
    res = call_apart(_prove_with_level1_brk, "wipes-every-private-byte", name)
    assert res.verdict == FAILED, res.counterexample
