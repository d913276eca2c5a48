"""The proof obligations: every one is proved, none is vacuous, and a broken transition is caught."""
from __future__ import annotations

import dataclasses

import pytest

from forkspec.model import design as d
from forkspec.specs import obligations as ob
from forkspec.specs.invariants import INVARIANTS
from forkspec.specs.prove import FAILED, PROVED, UNKNOWN, call_apart, prove_one

ALL = ob.all_obligations()
BY_NAME = {o.name: o for o in ALL}

def params(obs):
    """One pytest param per obligation; those the prover cannot discharge yet are skipped with
    their reason, so they show up in every report."""
    return [pytest.param(o, id=o.name, marks=[pytest.mark.skip(reason=o.skip)] if o.skip else []) for o in obs]


# A fast, representative subset that always runs (the whole suite is marked slow).
FAST = [o for o in ALL if o.kind in ("initial", "sat", "lemma")] + [BY_NAME[n] for n in (
    "fork_cow-preserves-inv_cow_private_writable_exclusive",
    "fork_eager-preserves-inv_refcount_counts_mappings",
    "store-preserves-inv_refcount_counts_mappings",
    "munmap-preserves-inv_pte_in_vma",
    "exit-preserves-inv_parent_alive_or_reaper",
    "vma_list_remove-refines-pagewise-covered",
    "munmap-refines-level1",
)]


def test_names_are_unique():
    assert len(BY_NAME) == len(ALL)


def test_matrix_covers_every_transition_and_invariant():
    for t in ob.TRANSITIONS:
        for inv in INVARIANTS:
            if inv in ob.STRUCTURAL:
                continue
            assert f"{t}-preserves-{inv}" in BY_NAME
    for inv in INVARIANTS:
        assert f"initial-satisfies-{inv}" in BY_NAME


def test_structural_invariants_are_proved_at_list_level():
    for inv in ob.STRUCTURAL:
        assert f"vma_list_execve-preserves-{inv}" in BY_NAME
    for op in ("remove", "protect", "replace"):
        assert f"vma_list_{op}-disjoint" in BY_NAME and f"vma_list_{op}-inside-slot" in BY_NAME


@pytest.fixture(scope="module")
def fast_results(proved) -> dict:
    return proved([o.name for o in FAST if not o.skip])


@pytest.fixture(scope="module")
def all_results(proved) -> dict:
    return proved([o.name for o in ALL if not o.skip])


@pytest.mark.parametrize("o", params(FAST))
def test_fast_subset_proved(o, fast_results):
    r = fast_results[o.name]
    assert r.verdict == PROVED, r.counterexample


@pytest.mark.slow
@pytest.mark.parametrize("o", params(ALL))
def test_obligation_proved(o, all_results):
    r = all_results[o.name]
    assert r.verdict == PROVED, r.counterexample


# --- deliberately broken transitions (test-only) ---------------------------------------------------


def _cow_no_wp(s, a, c):
    """COW fork that forgets to write-protect the shared private PTEs."""
    ok_caller, parent = d._running(s, a.pid)
    frames = s.frames.update(lambda f, fr: (fr[0], d.add(fr[1], d.ite(parent.rmap.get(f)[0], 1, 0)), fr[2]))
    child = dataclasses.replace(parent, pid=c.pid, parent=a.pid, vfork_parent=0, state=d.RUNNING, status=0)
    new = dataclasses.replace(s, procs=s.procs + (child,), frames=frames)
    pid_ok = d.all_of(d.ne(c.pid, 0), d.ne(c.pid, s.reaper),
                      *[d.implies(d.is_live(p), d.ne(p.pid, c.pid)) for p in s.procs])
    return d.all_of(ok_caller, pid_ok), c.pid, new


def munmap_keeping_refcounts(s, a, c):
    """munmap that removes PTEs but never drops the frames' reference counts."""
    allowed, out, new = d.munmap(s, a, c)
    return allowed, out, dataclasses.replace(new, frames=s.frames)


def execve_keeping_ptes(s, a, c):
    """execve that installs the new VMAs but keeps the old page table (LevitateOS-style leftovers)."""
    allowed, out, new = d.execve(s, a, c)
    _, old_caller = d.find_proc(s, a.pid)
    procs = tuple(d.sel(d.all_of(d.is_live(p), d.eq(p.pid, a.pid)), dataclasses.replace(p, pt=old_caller.pt), p)
                  for p in new.procs)
    return allowed, out, dataclasses.replace(new, procs=procs)


def _cow_child_one_page_up(s, a, c):
    """COW fork whose child maps each of the parent's frames one page higher."""
    allowed, out, new = d.fork(s, a, c)
    child = new.procs[-1]
    pt = d.SparseMap(child.pt.default, fn=lambda k: child.pt.get(d.sub(k, 1)))
    rmap = child.rmap.update(lambda f, r: (r[0], d.add(r[1], 1)))
    return allowed, out, dataclasses.replace(new, procs=new.procs[:-1] + (dataclasses.replace(child, pt=pt, rmap=rmap),))


def _fork_reparents_the_parent_under_the_child(s, a, c):
    """fork that also makes the new child its parent's parent: a parent cycle of two."""
    allowed, out, new = d.fork(s, a, c)
    procs = tuple(d.sel(d.eq(p.pid, a.pid), dataclasses.replace(p, parent=c.pid), p) for p in new.procs[:-1])
    return allowed, out, dataclasses.replace(new, procs=procs + new.procs[-1:])


def _refute(transition, inv, broken):
    """Runs in a process of its own (prove.call_apart): in the pytest process Z3's search, and so
    which counterexample it finds, depends on the terms earlier tests built."""
    return prove_one(ob.preserves(ob.TRANSITIONS[transition], inv, fn=broken))


@pytest.mark.parametrize("transition,broken,inv", [
    ("fork_cow", _cow_no_wp, "inv_cow_private_writable_exclusive"),
    ("fork_cow", _cow_child_one_page_up, "inv_shared_frame_same_page"),
    ("munmap", munmap_keeping_refcounts, "inv_refcount_counts_mappings"),
    ("execve", execve_keeping_ptes, "inv_pte_in_vma"),
])
def test_broken_transition_yields_counterexample(transition, broken, inv):
    r = call_apart(_refute, transition, inv, broken)
    assert r.verdict == FAILED
    # The counterexample is a readable state: processes and page-table entries.
    assert "before:" in r.counterexample and "after:" in r.counterexample
    assert "process slot" in r.counterexample and "pte page" in r.counterexample


def test_a_parent_cycle_is_refuted_with_its_processes():
    r = call_apart(_refute, "fork_cow", "inv_parent_chain_acyclic", _fork_reparents_the_parent_under_the_child)
    assert r.verdict == FAILED and "process slot" in r.counterexample and " parent " in r.counterexample


def test_the_correct_transition_proves_the_same_obligation(proved):
    name = "fork_cow-preserves-inv_cow_private_writable_exclusive"
    assert proved([name])[name].verdict == PROVED


def _prove_starved(name, rlimit):
    """Runs in a process of its own (prove.call_apart): the named obligation under a tiny rlimit."""
    return prove_one(BY_NAME[name], rlimit=rlimit)


def test_unknown_is_not_a_pass():
    r = call_apart(_prove_starved, "mmap-preserves-inv_rmap_inverts_pt", 1000)
    assert r.verdict == UNKNOWN and not r.ok


def test_vacuous_hypotheses_fail_a_sat_check():
    # In this process: a hand-made contradiction (False) that Z3's preprocessing decides, no search.
    contradictory = ob.Obligation("contradiction", "sat", lambda: ([d._as_bool(False)], d._as_bool(True),
                                                                    ob.Ctx({}, {})), expect="sat")
    assert prove_one(contradictory).verdict == FAILED
