"""Vacuity (issue 2): every refinement obligation comes with a check that its hypotheses are
satisfiable, the sat checks search pinned witnesses, and a contradiction is still found."""
from __future__ import annotations

import dataclasses

import pytest
import z3

from forkspec.model import design as d
from forkspec.model.refinement import mm as rmm
from forkspec.specs import obligations as ob
from forkspec.specs import prove
from forkspec.specs.prove import FAILED, PROVED, call_apart, decide_sat_checks, prove_one

ALL = ob.all_obligations()
BY_NAME = {o.name: o for o in ALL}


def test_every_refinement_obligation_has_its_satisfiable_twin_right_after_it():
    refines = [o for o in ALL if o.kind == "refine" and not o.skip]
    assert len(refines) > 20
    for o in refines:
        twin = ALL[ALL.index(o) + 1]
        assert twin.name == o.name + ob.VACUITY_SUFFIX
        assert (twin.kind, twin.expect, twin.pin, twin.skip) == ("sat", "sat", True, None)


FEATURE_CHECKS = [o.name for o in ob.feature_checks()]


@pytest.fixture(scope="module")
def feature_results() -> dict:
    return decide_sat_checks(FEATURE_CHECKS, source=ob.feature_checks)


@pytest.mark.parametrize("name", FEATURE_CHECKS)
def test_hypotheses_satisfiable_with_feature(name, feature_results):
    """The hypotheses of each refinement obligation that declares a feature hold together with it
    (the fork, execve, store and munmap/mprotect/brk modules test which obligations declare one)."""
    assert feature_results[name].verdict == PROVED, feature_results[name].counterexample


def test_a_new_refinement_obligation_gets_a_twin_and_a_skipped_one_does_not():
    new = ob.Obligation("newcall-refines-level1", "refine", lambda: ([], z3.BoolVal(True), ob.Ctx({}, {})))
    skipped = dataclasses.replace(new, name="later-refines-level1", skip="not yet")
    other = dataclasses.replace(new, name="x-preserves-y", kind="preserve")
    names = [o.name for o in ob.with_vacuity_checks([new, skipped, other])]
    assert names == ["newcall-refines-level1", "newcall-refines-level1-hypotheses-satisfiable",
                     "later-refines-level1", "x-preserves-y"]


def test_success_checks_are_not_skipped():
    for t in ob.TRANSITIONS:
        o = BY_NAME[f"{t}-success-satisfiable"]
        assert o.skip is None and o.pin


# --- pinning ---------------------------------------------------------------------------------------
# These stay in this process: tiny hand-made formulas over F, A and K, not the model's obligations.

F = z3.Function("test.f", z3.BitVecSort(64), z3.BitVecSort(64))
A = z3.Array("test.a", z3.BitVecSort(64), z3.BitVecSort(8))
K = z3.BitVec("test.k", 64)


def _sat_check(hyps: list) -> ob.Obligation:
    return ob.Obligation("test-sat", "sat", lambda: (hyps, z3.BoolVal(True), ob.Ctx({}, {})), expect="sat", pin=True)


def test_pinned_function_is_zero_off_its_entries():
    (pinned,), _ = ob.pin([z3.ForAll([K], F(K) == 0)], 0)
    assert z3.simplify(pinned).eq(z3.BoolVal(True))
    (pinned,), _ = ob.pin([F(z3.BitVecVal(5, 64)) == 7], 0)
    assert z3.simplify(pinned).eq(z3.BoolVal(False))


def test_a_model_of_the_pinned_terms_is_a_model_of_the_original():
    hyps = [F(z3.BitVecVal(1, 64)) == 7, F(z3.BitVecVal(2, 64)) == 9, z3.Select(A, z3.BitVecVal(3, 64)) == 4,
            z3.ForAll([K], z3.Implies(F(K) != 0, z3.ULT(K, 10)))]
    sizes = {"test.f": 2, "test.a": 1}
    pinned, _ = ob.pin(hyps, sizes)
    solver = z3.Solver()
    solver.add(*pinned)
    assert solver.check() == z3.sat
    model = solver.model()
    # f's pinned definition (open in its argument), read under the model: the original facts hold.
    (f_def,), _ = ob.pin([F(z3.Var(0, z3.BitVecSort(64)))], sizes)
    f_at = {n: model.eval(z3.substitute_vars(f_def, z3.BitVecVal(n, 64)), model_completion=True).as_long()
            for n in (1, 2, 11, 1 << 40)}
    assert f_at == {1: 7, 2: 9, 11: 0, 1 << 40: 0}
    (a_def,), _ = ob.pin([A], sizes)
    assert model.eval(z3.Select(a_def, z3.BitVecVal(3, 64)), model_completion=True).as_long() == 4


def test_growing_witnesses_find_a_model_needing_several_entries():
    hyps = [F(z3.BitVecVal(n, 64)) == n + 100 for n in range(1, 3)] + [z3.Select(A, z3.BitVecVal(8, 64)) == 1]
    assert prove_one(_sat_check(hyps)).verdict == PROVED


def test_more_entries_than_pinning_allows_falls_back_to_the_unpinned_query():
    hyps = [F(z3.BitVecVal(n, 64)) == n + 100 for n in range(1, prove.PIN_MAX_ENTRIES + 3)]
    assert prove_one(_sat_check(hyps)).verdict == PROVED


def test_contradictory_hypotheses_fail_after_the_pinned_search():
    hyps = [z3.ForAll([K], z3.ULE(F(K), 3)), F(z3.BitVecVal(5, 64)) == 4]
    r = prove_one(_sat_check(hyps))
    assert r.verdict == FAILED and "contradictory" in r.counterexample and "pinned" in r.counterexample


# --- a refinement obligation made vacuous on purpose is caught by its twin (test-only) ----------------

def _munmap_allowed_only_on_bad_prot(orig):
    """munmap allowed only when the VMA at addr has a prot bit outside R/W/X: impossible under the
    invariants (inv_vmas_page_aligned), so any refinement claim about it holds vacuously."""
    def broken(s, a, c):
        allowed, out, new = orig(s, a, c)
        _, caller = d.find_proc(s, a.pid)
        found, prot, _ = d.find_vma(caller.vmas, d.vpn_of(a.addr))
        return d.all_of(allowed, found, d.ne(d.band(prot, 8), 0)), out, new
    return broken


def _prove_with_vacuous_munmap(twin):
    """Runs in a process of its own (prove.call_apart), where it patches design's munmap: the
    munmap refinement obligation (or, with `twin`, its hypotheses-satisfiable twin) proved there."""
    d.munmap = _munmap_allowed_only_on_bad_prot(d.munmap)
    o = rmm.obligation_for("munmap")
    return prove_one(ob.hypotheses_satisfiable(o) if twin else o, timeout_s=30)


def test_vacuous_refinement_obligation_is_proved_but_its_twin_fails():
    assert call_apart(_prove_with_vacuous_munmap, False).verdict == PROVED    # vacuously: the reason for the twin
    r = call_apart(_prove_with_vacuous_munmap, True)
    assert r.verdict == FAILED and "contradictory" in r.counterexample


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(10))
def test_mprotect_success_satisfiable_on_every_seed(seed):
    # As `forkspec prove --seed N` proves it: in a process of its own (see prove.run).
    (r,) = prove.run("mprotect-success-satisfiable", seed=seed)
    assert r.verdict == PROVED, r.counterexample
