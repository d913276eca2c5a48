"""mmap's refinement level 2 -> level 1: the obligations prove; a level-2 mmap broken on purpose is
refuted (which also shows the hypotheses of that obligation can hold together); the level-1 fact
the proof assumes (the next backing object is unused) is proved from a level-1 invariant (tests:
test_invariants1.py); and the two levels give the same outcome on concrete calls that exercise each
check."""
from __future__ import annotations

import dataclasses

import pytest

from forkspec.model import design as d
from forkspec.model import mm as mm1
from forkspec.model.refinement import mmap as rmmap
from forkspec.model.space import PageData, PageMap, SharedStore
from forkspec.model.state import REAPER, AddressSpace, Process, State
from forkspec.specs.abi import (MAP_ANONYMOUS, MAP_FIXED, MAP_FIXED_NOREPLACE, MAP_HUGETLB, MAP_PRIVATE,
                                MAP_SHARED, PAGE_SIZE, U64)
from forkspec.specs.profiles import LINUX
from forkspec.specs.prove import FAILED, PROVED, call_apart, prove_one

P = PAGE_SIZE
PID = rmmap.PID


@pytest.fixture(scope="module")
def proved_here(proved) -> dict:
    return proved([rmmap.obligation(p).name for p in rmmap.PARTS])


@pytest.mark.parametrize("part", rmmap.PARTS)
def test_proved(part, proved_here):
    res = proved_here[rmmap.obligation(part).name]
    assert res.verdict == PROVED, res.counterexample


def test_every_part_is_registered():
    from forkspec.model import refinement as r
    names = {o.name for o in r.obligations()}
    assert {rmmap.obligation(p).name for p in rmmap.PARTS} <= names
    assert "mmap" not in r.SKIPPED


# --- broken level-2 mmaps (test-only) -------------------------------------------------------------

def _places_one_page_up(s, a, c):
    """Places a non-FIXED mapping one page above the chosen address."""
    return d.mmap(s, a, dataclasses.replace(c, addr=d.add(c.addr, P)))


def _fixed_keeps_old_pages(s, a, c):
    """MAP_FIXED over existing pages keeps their frames (the range is not zeroed)."""
    allowed, out, new = d.mmap(s, a, c)
    procs = tuple(dataclasses.replace(p, pt=q.pt, rmap=q.rmap) for p, q in zip(new.procs, s.procs))
    return allowed, out, dataclasses.replace(new, procs=procs, frames=s.frames)


def _enomem_for_eperm(s, a, c):
    """Below vm.mmap_min_addr answers ENOMEM (level 2's answer before this change)."""
    allowed, out, new = d.mmap(s, a, c)
    return allowed, d.ite(d.eq(out, d.neg_errno(d.Errno.EPERM)), d.neg_errno(d.Errno.ENOMEM), out), new


def _shared_reads_old_frame_data(s, a, c):
    """MAP_SHARED's fresh frames keep whatever word they held."""
    allowed, out, new = d.mmap(s, a, c)
    inv = c.alloc.inv
    frames = new.frames.update(lambda f, fr: d.sel(inv.get(f)[0], (fr[0], fr[1], s.frames.get(f)[2]), fr))
    return allowed, out, dataclasses.replace(new, frames=frames)


def _refute(breaker, part):
    """Runs in a process of its own (prove.call_apart)."""
    return prove_one(rmmap.obligation(part, fn=breaker), rlimit=60_000_000, timeout_s=60)


@pytest.mark.parametrize("breaker, part", [
    (_places_one_page_up, "outcome-placed"),
    (_fixed_keeps_old_pages, "contents"),
    (_enomem_for_eperm, "outcome-fixed"),
    (_shared_reads_old_frame_data, "contents"),
])
def test_broken_level2_is_refuted(breaker, part):
    # Apart: in the pytest process Z3's search depends on the terms earlier tests built.
    res = call_apart(_refute, breaker, part)
    assert res.verdict == FAILED, res.counterexample
    assert "before:" in res.counterexample


# --- level-1 states ------------------------------------------------------------------------------------
# The level-1 fact the contents part assumes (fresh_object_unused) is proved from the level-1 invariant
# inv1_fresh_objects_unused: tests/proofs/test_invariants1.py (which also runs random concrete runs).

BASE = 0x10_0000


def _level1_state() -> State:
    space = AddressSpace(pages=PageMap(), data=PageData(), start_brk=0x1000_0000, brk=0x1000_0000)
    return State(profile=LINUX, procs={PID: Process(PID, REAPER, "root", 0)}, spaces={0: space},
                 shared=SharedStore(), reaper=1, root=PID)


# --- the two levels agree on concrete calls exercising each check -----------------------------------

def _level2_state() -> d.KState:
    p = d.Proc(pid=PID, state=d.RUNNING, parent=1, vfork_parent=0, status=0,
               vmas=(d.Vma(True, BASE, BASE + 2 * P, 3, False),),
               brk_start=0x1000_0000, brk=0x1000_0000, pt=d.empty_pt(), rmap=d.empty_rmap())
    return d.KState((p,), d.SparseMap(d.FRAME_DEFAULT), 1)


def _level1_with_mapping() -> State:
    s = _level1_state()
    r = mm1.mmap(s, mm1.MmapArgs(PID, BASE, 2 * P, 3, MAP_ANONYMOUS | MAP_PRIVATE | MAP_FIXED), mm1.MmapChoice())
    return r.state


ANON = MAP_ANONYMOUS | MAP_PRIVATE
CALLS = [  # (addr, length, flags, offset)
    (BASE, P, ANON | MAP_FIXED, 5),                         # offset unaligned
    (BASE, P, MAP_PRIVATE | MAP_FIXED, 0),                  # no MAP_ANONYMOUS
    (BASE, 0, ANON | MAP_FIXED, 0),                         # length 0
    (BASE, P, ANON | MAP_FIXED | MAP_HUGETLB, 0),           # MAP_HUGETLB
    (BASE, U64, ANON | MAP_FIXED, 0),                       # length wraps
    ((-4095) & U64, P, ANON | MAP_FIXED, 0),                # MAP_FIXED address in the errno range
    (0x7FFF_FFFF_E000, 2 * P, ANON | MAP_FIXED, 0),         # past TASK_SIZE
    (BASE + 1, P, ANON | MAP_FIXED, 0),                     # unaligned MAP_FIXED
    (0, P, ANON | MAP_FIXED, 0),                            # below vm.mmap_min_addr
    (BASE + P, P, ANON | MAP_FIXED_NOREPLACE, 0),           # NOREPLACE over a mapping
    (BASE + 4 * P, P, MAP_ANONYMOUS | 0x3 | MAP_FIXED, 0),  # bad map type
    (BASE + P, 2 * P, MAP_ANONYMOUS | MAP_SHARED | MAP_FIXED, 0),  # success over part of a mapping
]


@pytest.mark.parametrize("addr, length, flags, offset", CALLS)
def test_levels_agree_on_concrete_calls(addr, length, flags, offset):
    r1 = mm1.mmap(_level1_with_mapping(), mm1.MmapArgs(PID, addr, length, 3, flags, U64, offset), mm1.MmapChoice())
    alloc = d.alloc_from_dict({(addr >> 12) + i: 100 + i for i in range(max(length, 0) // P)}
                              if length < (1 << 40) else {})
    allowed, out2, _ = d.mmap(_level2_state(), d.MmapArgs(PID, addr, length, 3, flags, offset),
                              d.Choice(addr=0, alloc=alloc))
    assert allowed and r1.allowed
    assert out2 == r1.outcome


def _contents_hypotheses_with_a_new_mapping(shared: int) -> str:
    """Runs in a process of its own (prove.call_apart): Z3's answer, as text, to the contents
    obligation's hypotheses together with a successful non-FIXED `shared` mmap whose range holds the
    checked address."""
    import z3
    hyps, _, ctx = rmmap.obligation("contents").build()
    a = ctx.args
    start, flags, out = a["start (level 1's, generalised)"], a["flags"], a["outcome (level 2)"]
    at = z3.Concat(z3.BitVec("refine.at_page", 52), z3.BitVecVal(0, 12))
    witness = [flags & 0xF == shared, flags & (MAP_FIXED | MAP_FIXED_NOREPLACE) == 0, rmmap.succeeded(out),
               z3.ULE(start, at), z3.ULT(at, start + a["length"])]
    solver = z3.Solver()
    solver.set("rlimit", 100_000_000)
    solver.add(*hyps, *[z3.simplify(w) for w in witness])
    return str(solver.check())


@pytest.mark.parametrize("shared", [MAP_SHARED, MAP_PRIVATE])
def test_contents_hypotheses_hold_for_a_new_mapping(shared):
    """Vacuity: the contents obligation's hypotheses (with the instances and the fresh-object fact)
    hold together for a successful non-FIXED mmap whose range holds the checked address."""
    assert call_apart(_contents_hypotheses_with_a_new_mapping, shared) == "sat"


# --- two-process shapes: the other process's slot ------------------------------------------------------

OTHER_PROCESS = [o.name for o in rmmap.obligations() if "-other-process:" in o.name]


def test_every_two_process_source_has_an_other_process_obligation():
    from forkspec.model.refinement.fork import sources
    from forkspec.model.refinement.relation import SHAPES
    want = {(shape, "root" if caller == rmmap.ROOT else "other") for shape, caller in sources() if len(SHAPES[shape]) > 1}
    got = {(n.split("[")[1].split("-by-")[0], n.split("-by-")[1].split("-")[0]) for n in OTHER_PROCESS}
    assert got == want and len(want) == 6       # running-child and orphan by each, zombie-child, vfork-child


@pytest.mark.parametrize("name", OTHER_PROCESS)
def test_other_process_obligation_proved(name, proved):
    res = proved([name])[name]
    assert res.verdict == PROVED, res.counterexample


def _alloc_any_frame(s, alloc, needs):
    """An allocator that hands out frames without checking they are free."""
    return True


def _refute_with_any_frame(obligation: str, shape: str, caller: int):
    """In a process of its own: level 2's frame allocator broken, then rmmap's `obligation`
    ("other_process_obligation" or "sharing_obligation") for the shape and caller."""
    from forkspec.specs.obligations import small_states
    d._alloc_ok = _alloc_any_frame
    with small_states():
        return prove_one(getattr(rmmap, obligation)(shape, caller), rlimit=60_000_000, timeout_s=90)


def test_mmap_allocating_a_frame_the_other_process_maps_is_refuted():
    # MAP_SHARED populates fresh frames with zeros: a frame still mapped by the child loses its word.
    res = call_apart(_refute_with_any_frame, "other_process_obligation", "running-child", rmmap.ROOT)
    assert res.verdict == FAILED, res.counterexample
    assert "process slot 1" in res.counterexample


@pytest.mark.slow
def test_every_shape_chain_and_sharing_is_proved_with_satisfiable_hypotheses():
    from forkspec.specs.obligations import VACUITY_SUFFIX
    from forkspec.specs.prove import decide_sat_checks, run_measured
    names = [o.name for o in rmmap.every_shape_obligation()]
    assert len(names) == 34            # 6 sources x 5 parts, and sharing where both processes run (4)
    results = {r.obligation: r for r, _ in run_measured(names, jobs=2, source=rmmap.every_shape_obligation)}
    assert [n for n in names if results[n].verdict != PROVED] == []
    twins = decide_sat_checks([n + VACUITY_SUFFIX for n in names], source=every_shape_twin)
    assert [n for n, r in twins.items() if r.verdict != PROVED] == []


def every_shape_twin() -> list:
    from forkspec.specs.obligations import hypotheses_satisfiable
    return [hypotheses_satisfiable(o) for o in rmmap.every_shape_obligation()]


def test_mmap_sharing_a_frame_with_the_other_process_is_refuted():
    # A MAP_SHARED page of the caller's new object mapped onto a frame of the other's object: level
    # 2 shares a frame where level 1 has two objects.
    res = call_apart(_refute_with_any_frame, "sharing_obligation", "running-child", rmmap.ROOT)
    assert res.verdict == FAILED, res.counterexample
