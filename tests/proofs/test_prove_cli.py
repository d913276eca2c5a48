"""`specs/prove.py`: run(), the table, JSON, and the CLI's exit codes."""
from __future__ import annotations

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


def test_main_exit_one_and_counterexample_on_failure(monkeypatch, capsys):
    def broken_exit(s, a, c):
        allowed, out, new = d.exit(s, a, c)
        return allowed, out, new.__class__(procs=new.procs, frames=s.frames, reaper=new.reaper, cow=new.cow)
    bad = ob.preserves(ob.TRANSITIONS["exit"], "inv_refcount_counts_mappings", fn=broken_exit)
    monkeypatch.setattr(prove, "all_obligations", lambda: [bad])
    assert prove.main([]) == 1
    out = capsys.readouterr().out
    assert "failed" in out and "frame" in out and "refcount" in out
