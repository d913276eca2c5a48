"""Level-1 invariants (specs/invariants1.py): every obligation proves (each in a process of its own);
a level-1 transition broken on purpose is refuted; the concrete predicate and the Z3 formula decided
on the encoded state agree on random concrete states; the invariant holds after random concrete
level-1 runs; and level 1's mmap keeps the object-id bound (ENOMEM at OBJ_LIMIT)."""
from __future__ import annotations

import dataclasses

import pytest
import z3
from hypothesis import given, settings
from hypothesis import strategies as st

from forkspec.model import memory
from forkspec.model import mm as mm1
from forkspec.model import process as proc1
from forkspec.model.logic import add, band, bor, ite, ne, shl, shr
from forkspec.model.refinement import mmap as rmmap
from forkspec.model.space import PageData, PageMap, SharedStore
from forkspec.model.state import (ATTR_OBJ, ATTR_OBJ_SHIFT, ATTR_SHARED, REAPER, AddressSpace, Fault, Kind,
                                  Process, Run, State, make_attr)
from forkspec.specs import invariants1 as i1
from forkspec.specs.abi import MAP_ANONYMOUS, MAP_FIXED, MAP_PRIVATE, MAP_SHARED, PAGE_SIZE, U64, Errno
from forkspec.specs.obligations import all_obligations, small_states
from forkspec.specs.profiles import LINUX
from forkspec.specs.prove import FAILED, PROVED, call_apart, prove_one

P = PAGE_SIZE
NAMES = [o.name for o in i1.obligations()]


@pytest.fixture(scope="module")
def proved_here(proved) -> dict:
    return proved(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_proved(name, proved_here):
    assert proved_here[name].verdict == PROVED, proved_here[name].counterexample


def test_every_transition_and_twin_is_registered():
    names = {o.name for o in all_obligations()}
    assert set(NAMES) <= names
    for t in ("mmap[linux]", "mmap[levitate]", "munmap", "mprotect", "brk", "store", "fork", "vfork", "exit",
              "wait4", "execve"):
        name = f"level1-{t}-preserves-inv1_fresh_objects_unused"
        if "[" in t:
            t, profile = t.split("[")
            name = f"level1-{t}-preserves-inv1_fresh_objects_unused[{profile}"
        assert name in names and f"{name}-hypotheses-satisfiable" in names
    assert "level1-initial-satisfies-inv1_fresh_objects_unused" in names


def test_every_execve_case_loads():
    # The execve obligation raises on an image that does not load; its cases cover every image.
    from forkspec.model.refinement import exec as rexec
    assert {image for _, _, image, _ in i1.execve_cases_list()} == set(rexec.IMAGES)
    assert len(i1.cases("execve")) == len(i1.execve_cases_list())


# --- broken level-1 transitions (test-only) ----------------------------------------------------------

def _mmap_keeps_next_obj(s, a, c):
    """A MAP_SHARED mmap that does not advance next_obj (the next one reuses the object)."""
    r = mm1.mmap(s, a, c)
    return dataclasses.replace(r, state=r.state.with_(next_obj=s.next_obj))


def _mmap_ignores_object_limit(s, a, c):
    """An mmap whose `allowed` ignores the object-id limit (decided as if next_obj were small)."""
    r = mm1.mmap(s, a, c)
    return dataclasses.replace(r, allowed=mm1.mmap(s.with_(next_obj=z3.BitVecVal(5, 64)), a, c).allowed)


def _fork_gives_child_fresh_object(s, a, c, vfork=False):
    """The child's MAP_SHARED pages name object next_obj (not its parent's objects, next_obj kept)."""
    r = proc1.fork(s, a, c, vfork=vfork)
    child = r.state.procs[c.child]
    sp = r.state.spaces[child.mm]
    pages = sp.pages.assign(0, 1 << 52, lambda at: ite(ne(band(at, ATTR_SHARED), 0),
                                                       bor(band(at, ~ATTR_OBJ & U64), shl(s.next_obj, ATTR_OBJ_SHIFT)),
                                                       at))
    spaces = dict(r.state.spaces)
    spaces[child.mm] = sp.with_(pages=pages)
    return dataclasses.replace(r, state=r.state.with_(spaces=spaces))


def _store_into_next_object(s, pid, va, size, value):
    """A store that writes into the next (unused) object."""
    return s.with_(shared=s.shared.put(s.next_obj, s.shared.get(s.next_obj).store(va, size, value)))


def _mprotect_sets_shared(s, a, c):
    """mprotect that also makes the pages MAP_SHARED, keeping whatever object bits they had."""
    r = mm1.mprotect(s, a, c)
    sp = r.state.space_of(a.pid)
    lo, hi = shr(a.addr, 12), shr(add(a.addr, a.length), 12)
    pages = sp.pages.assign(lo, hi, lambda at: bor(at, ATTR_SHARED))
    return dataclasses.replace(r, state=r.state.with_space(a.pid, sp.with_(pages=pages)))


def _refute(transition, breaker):
    """Runs in a process of its own (prove.call_apart): in the pytest process Z3's search, and so
    which counterexample it finds, depends on the terms earlier tests built."""
    with small_states():
        return prove_one(i1.preservation(transition, fn=breaker), rlimit=60_000_000, timeout_s=90)


@pytest.mark.parametrize("transition, breaker", [
    ("mmap", _mmap_keeps_next_obj),
    ("mmap", _mmap_ignores_object_limit),
    ("fork", _fork_gives_child_fresh_object),
    ("store", _store_into_next_object),
    ("mprotect", _mprotect_sets_shared),
])
def test_broken_level1_is_refuted(transition, breaker):
    res = call_apart(_refute, transition, breaker)
    assert res.verdict == FAILED, res.counterexample
    assert "next_obj" in res.counterexample


def test_the_bound_is_needed():
    """Without the object-id limit the invariant is not inductive: the counterexample's mmap starts
    at the last id below OBJ_LIMIT."""
    res = call_apart(_refute, "mmap", _mmap_ignores_object_limit)
    assert res.verdict == FAILED
    assert f"next_obj before: {i1.OBJ_LIMIT - 1:#x}" in res.counterexample


# --- the concrete predicate and the Z3 formula agree ------------------------------------------------
# These stay in this process: holds_encoded decides the formula on a concrete (ground) state.

ROOT, OTHER = i1.ROOT, i1.OTHER
BASE = 0x10_0000 >> 12


def _state(runs: list, objects: dict, next_obj: int) -> State:
    spaces = {}
    for mm, mine in enumerate(runs):
        pages = PageMap()
        for page, npages, shared, obj in mine:
            pages = pages.set(BASE + page, BASE + page + npages, make_attr(3, Kind.anon, shared=shared, obj=obj))
        spaces[mm] = AddressSpace(pages=pages, data=PageData(), start_brk=0x1000_0000, brk=0x1000_0000)
    procs = {pid: Process(pid, REAPER if pid == ROOT else ROOT, "root" if pid == ROOT else "root/0", mm)
             for mm, pid in enumerate((ROOT, OTHER)[:len(runs)])}
    shared = SharedStore({obj: PageData({page: bytes([0] * 7 + [byte]) + bytes(P - 8)}) for obj, (page, byte) in
                          objects.items()})
    return State(profile=LINUX, procs=procs, spaces=spaces, shared=shared, next_obj=next_obj, reaper=1, root=ROOT)


OBJ_IDS = st.sampled_from([0, 1, 2, 3, 7, i1.OBJ_LIMIT - 2, i1.OBJ_LIMIT - 1])
RUNS = st.lists(st.tuples(st.integers(0, 6), st.integers(1, 2), st.booleans(), OBJ_IDS), max_size=3)


@settings(max_examples=40, deadline=None)
@given(runs=st.lists(RUNS, min_size=1, max_size=2),
       objects=st.dictionaries(OBJ_IDS, st.tuples(st.integers(0, 3), st.integers(0, 2)), max_size=3),
       next_obj=st.sampled_from([1, 2, 4, 8, i1.OBJ_LIMIT - 1, i1.OBJ_LIMIT, i1.OBJ_LIMIT + 1]))
def test_concrete_predicate_agrees_with_the_formula(runs, objects, next_obj):
    s = _state(runs, objects, next_obj)
    assert i1.holds_concretely(s) == i1.holds_encoded(s)


@pytest.mark.parametrize("runs, objects, next_obj, holds", [
    ([[(0, 1, True, 1)]], {1: (0, 5)}, 2, True),               # a used object, written
    ([[(0, 1, True, 2)]], {}, 2, False),                       # a page names next_obj
    ([[(0, 1, False, 0)], [(1, 1, True, 3)]], {}, 2, False),   # ... in the other space
    ([[]], {2: (1, 1)}, 2, False),                             # the next object holds data
    ([[]], {9: (0, 1)}, 2, False),                             # a later object holds data
    ([[]], {9: (0, 0)}, 2, True),                              # a later object, all zero
    ([[]], {}, i1.OBJ_LIMIT, False),                           # next_obj beyond ATTR_OBJ
])
def test_each_clause_decides(runs, objects, next_obj, holds):
    s = _state(runs, objects, next_obj)
    assert i1.holds_concretely(s) is holds
    assert i1.holds_encoded(s) is holds


# --- random concrete level-1 runs (moved from test_refinement_mmap.py, widened) -----------------------

OPS = st.lists(st.tuples(st.sampled_from(["mmap-shared", "mmap-private", "store", "munmap", "mprotect", "fork",
                                          "exit-child", "execve"]),
                         st.integers(0, 5), st.integers(1, 3), st.integers(0, U64)), min_size=1, max_size=12)


def _root_state() -> State:
    return _state([[]], {}, 1)


def _image(value: int) -> str:
    from forkspec.model.refinement import exec as rexec
    return sorted(rexec.IMAGES)[value % len(rexec.IMAGES)]


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 7), OPS)
def test_invariant_holds_on_concrete_runs(first, ops):
    from forkspec.model import exec as exec1
    from forkspec.model.refinement import exec as rexec
    image = _image(first)
    s = exec1.initial_state(LINUX, ROOT, rexec.image_bytes(image), rexec.exec_layout(image, "linux")).state
    assert i1.holds_concretely(s)
    for op, page, npages, value in ops:
        addr = (BASE + page) * P
        pids = [pid for pid, p in s.procs.items() if p.run == Run.running]
        pid = pids[value % len(pids)]
        if op.startswith("mmap"):
            flags = MAP_ANONYMOUS | MAP_FIXED | (MAP_SHARED if op == "mmap-shared" else MAP_PRIVATE)
            r = mm1.mmap(s, mm1.MmapArgs(pid, addr, npages * P, 3, flags), mm1.MmapChoice())
        elif op == "store":
            r = memory.store(s, pid, addr + 8 * (value % 8), value)
            if isinstance(r.outcome, Fault):
                continue
        elif op == "munmap":
            r = mm1.munmap(s, mm1.MunmapArgs(pid, addr, npages * P))
        elif op == "mprotect":
            r = mm1.mprotect(s, mm1.MprotectArgs(pid, addr, npages * P, value % 8 & 3), mm1.ResourceChoice())
        elif op == "fork":
            child = max(s.procs) + 1
            r = proc1.fork(s, proc1.ForkArgs(pid), proc1.ForkChoice(child=child))
        elif op == "execve":
            image = _image(value)
            r = exec1.execve(s, exec1.ExecveArgs(pid, 1, rexec.image_bytes(image)), rexec.exec_layout(image, "linux"))
            assert r.clause == "execve.ok"
            # The loader maps no MAP_SHARED page, whatever the image (the argument for images outside
            # the enumeration the obligations prove).
            new_space = r.state.space_of(pid)
            assert not any(a & ATTR_SHARED for _, _, a in new_space.pages.runs)
            assert r.state.shared is s.shared and r.state.next_obj == s.next_obj
        else:
            children = [c for c in s.procs[ROOT].children if c in s.procs and s.procs[c].run == Run.running]
            if not children:
                continue
            r = proc1.exit(s, proc1.ExitArgs(children[0], 0))
        assert r.allowed
        s = r.state
        assert i1.holds_concretely(s)
        # The refinement's hypothesis, from the invariant (the lemma obligation proves it symbolically).
        assert not s.shared.get(s.next_obj).pages and s.next_obj < rmmap.OBJ_LIMIT
    assert i1.holds_encoded(s)


# --- the object-id limit in level 1's mmap -----------------------------------------------------------

SHARED_FIXED = MAP_ANONYMOUS | MAP_SHARED | MAP_FIXED


@pytest.mark.parametrize("next_obj, flags, allowed", [
    (i1.OBJ_LIMIT - 2, SHARED_FIXED, True),                                   # the last id that fits
    (i1.OBJ_LIMIT - 1, SHARED_FIXED, False),                                  # would leave next_obj at OBJ_LIMIT
    (i1.OBJ_LIMIT - 1, MAP_ANONYMOUS | MAP_PRIVATE | MAP_FIXED, True),        # private: no object
])
def test_mmap_success_at_the_object_limit(next_obj, flags, allowed):
    s = _root_state().with_(next_obj=next_obj)
    r = mm1.mmap(s, mm1.MmapArgs(ROOT, BASE * P, P, 3, flags), mm1.MmapChoice())
    assert r.allowed is allowed and r.outcome == BASE * P
    if allowed:
        assert i1.holds_concretely(r.state)
    else:
        assert "ENOMEM" in r.expected


@pytest.mark.parametrize("next_obj, allowed", [(i1.OBJ_LIMIT - 1, True), (i1.OBJ_LIMIT - 2, False)])
def test_mmap_enomem_at_the_object_limit(next_obj, allowed):
    # Linux's profile allows ENOMEM only for large requests (no frame budget): for one page, only at the limit.
    s = _root_state().with_(next_obj=next_obj)
    r = mm1.mmap(s, mm1.MmapArgs(ROOT, BASE * P, P, 3, SHARED_FIXED), mm1.MmapChoice(fail=Errno.ENOMEM))
    assert r.outcome == (-Errno.ENOMEM) & U64 and r.state is s
    assert r.allowed is allowed
