"""`specs/prove.py`: run(), the table, JSON, and the CLI's exit codes."""
from __future__ import annotations

import functools
import json

import pytest

from forkspec.model import design as d
from forkspec.specs import obligations as ob
from forkspec.specs import prove


def test_run_selects_by_substring():
    results = prove.run("initial-satisfies-inv_pids_unique")
    assert [r.obligation for r in results] == ["initial-satisfies-inv_pids_unique"]
    assert results[0].verdict == prove.PROVED and results[0].seconds >= 0


def test_run_selects_by_glob():
    results = prove.run("initial-satisfies-inv_vmas_*")
    assert {r.obligation for r in results} == {
        "initial-satisfies-inv_vmas_page_aligned", "initial-satisfies-inv_vmas_in_user_space",
        "initial-satisfies-inv_vmas_disjoint"}


def test_table_and_json():
    results = prove.run("initial-satisfies-inv_pte")
    table = prove.format_table(results)
    assert "obligation" in table and "initial-satisfies-inv_pte_in_vma" in table
    assert f"{len(results)} proved" in table
    data = json.loads(prove.to_json(results))
    assert {row["obligation"] for row in data} == {r.obligation for r in results}
    assert all(row["verdict"] == "proved" for row in data)


def test_main_exit_zero_when_all_proved(capsys):
    assert prove.main(["-k", "initial-satisfies-inv_rmap"]) == 0
    assert "initial-satisfies-inv_rmap_in_pt" in capsys.readouterr().out


def test_main_json(capsys):
    assert prove.main(["-k", "initial-satisfies-inv_rmap", "--json", "--seed", "3"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 2


@pytest.mark.parametrize("argv", [["--bogus"], ["-k", "no-such-obligation"], ["--seed", "-1"], ["--seed", "x"]])
def test_main_bad_argument_is_one_line_and_exit_2(argv, capsys):
    assert prove.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("forkspec prove:") and "\n" not in err


def _main_with_broken_exit() -> tuple[int, str]:
    """In a process of its own (prove.call_apart): `forkspec prove` over one obligation whose exit
    keeps the old frames; (exit code, what it printed)."""
    import contextlib
    import io

    def broken_exit(s, a, c):
        allowed, out, new = d.exit(s, a, c)
        return allowed, out, new.__class__(procs=new.procs, frames=s.frames, reaper=new.reaper, cow=new.cow)
    bad = ob.preserves(ob.TRANSITIONS["exit"], "inv_refcount_counts_mappings", fn=broken_exit)
    prove.all_obligations = lambda: [bad]
    # proved in this process, where the patch is (isolated workers rebuild the real obligations)
    prove.run = functools.partial(prove.run, isolate=False)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = prove.main([])
    return code, printed.getvalue()


def test_main_exit_one_and_counterexample_on_failure():
    code, out = prove.call_apart(_main_with_broken_exit)
    assert code == 1
    assert "failed" in out and "frame" in out and "refcount" in out


def test_summary_counts_the_hypotheses_satisfiable_checks():
    name = "exit-refines-level1[zombie-child-by-root]"
    results = prove.run(name)
    assert [r.obligation for r in results] == [name, f"{name}-hypotheses-satisfiable"]
    assert all(r.verdict == prove.PROVED for r in results)
    assert "(1 of them hypotheses-satisfiable checks" in prove.format_table(results)


def test_isolated_runs_do_not_depend_on_what_ran_before():
    """The same obligation consumes the same Z3 resource units alone and after others (each gets
    a process of its own); in one process the count depended on the history (measured by
    bench/bench_prove_isolation.py: load-refines-level1 49,715 units alone, 45,778 after the suite)."""
    target = "load-refines-level1"
    (alone, units), = prove.run_measured([target], jobs=1)
    *_, (after, units_after) = prove.run_measured(["munmap-refines-level1", "brk-success-satisfiable", target], jobs=1)
    assert (alone.obligation, alone.verdict, units) == (after.obligation, after.verdict, units_after)
    assert alone.verdict == prove.PROVED and units > 0
