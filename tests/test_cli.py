"""The command line: bad arguments get one line on stderr and exit code 2."""
from __future__ import annotations

import pytest

from forkspec.oracle.cli import main


@pytest.mark.parametrize("argv,fragment", [
    ([], "required"),
    (["fuzz", "--time", "0"], "positive"),
    (["fuzz", "--time", "soon"], "number of seconds"),
    (["fuzz", "--workers", "0"], ">= 1"),
    (["fuzz", "--backend", "bsd"], "invalid choice"),
    (["fuzz", "--fork-strategy", "lazy"], "invalid choice"),
    (["fuzz", "--seed", "x1"], "integer seed"),
    (["run"], "required"),
    (["replay"], "required"),
    (["frobnicate"], "invalid choice"),
])
def test_bad_arguments_exit_2_with_one_line(argv, fragment, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert err.startswith("forkspec") and fragment in err


def test_missing_image_is_one_line_exit_2(tmp_path, capsys) -> None:
    assert main(["run", str(tmp_path / "nope.elf")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot read" in err and "nope.elf" in err


def test_unreadable_reproducer_is_one_line_exit_2(tmp_path, capsys) -> None:
    bad = tmp_path / "bad.repro"
    bad.write_text("not a reproducer\n")
    assert main(["replay", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "bad.repro" in err and "line 1" in err
