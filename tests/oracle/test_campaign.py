"""Campaigns: find, shrink and keep reproducers; a killed campaign loses nothing it found."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from forkspec.oracle._internal import corpus
from forkspec.oracle._internal.campaign import search
from forkspec.oracle._internal.pipeline import Config, run_case
from forkspec.oracle.encoding import loads
from forkspec.oracle.cli import main, replay_file

ROOT = Path(__file__).resolve().parents[2]


def test_search_finds_a_planted_bug_and_saves_a_replayable_reproducer(tmp_path: Path) -> None:
    config = Config(plant=frozenset({"elf-no-vmas"}))
    found = search(config, seed=1, deadline=time.monotonic() + 60, corpus=tmp_path, known=set(), stop_at_first=True)
    assert found, "elf-no-vmas must be caught within 60 s"
    files = corpus.list_corpus(tmp_path)
    assert files
    repro = corpus.load(files[-1])
    assert repro.meta["plant"] == "elf-no-vmas" and repro.meta["backend"] == "impl"
    status, _ = replay_file(files[-1])
    assert status == "divergence"
    # The same program on the clean kernel passes: the divergence is the planted bug's.
    assert run_case(loads(repro.program_text), Config()).verdict.status == "pass"


def test_clean_kernel_fixed_budget_finds_nothing() -> None:
    found = search(Config(), seed=0, deadline=float("inf"), corpus=None, known=set(), max_examples=40)
    assert found == [], [f.verdict.divergence for f in found]


def test_replay_exit_codes(tmp_path: Path, capsys) -> None:
    found = search(Config(plant=frozenset({"prot-flags-inverted"})), seed=2, deadline=time.monotonic() + 60,
                   corpus=tmp_path, known=set(), stop_at_first=True)
    assert found
    path = corpus.list_corpus(tmp_path)[0]
    assert main(["replay", str(path)]) == 1                 # still diverges with the bug planted
    assert "divergence" in capsys.readouterr().out


@pytest.mark.slow
def test_killed_campaign_keeps_every_reproducer(tmp_path: Path) -> None:
    out = tmp_path / "corpus"
    proc = subprocess.Popen(
        [sys.executable, "-m", "forkspec.oracle.cli", "fuzz", "--plant", "elf-no-vmas", "--workers", "1",
         "--time", "300", "--corpus", str(out)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT, start_new_session=True)
    try:
        limit = time.monotonic() + 120
        while not corpus.list_corpus(out):          # wait for the first reproducer to be written
            assert proc.poll() is None, "the campaign ended before finding the planted bug"
            assert time.monotonic() < limit, "no reproducer within 120 s"
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    files = corpus.list_corpus(out)
    assert files
    assert all(not p.name.startswith(".tmp-") for p in files)      # half-written files are never listed
    for path in files:
        status, _ = replay_file(path)
        assert status == "divergence"
