"""Reproducer files: round trip, strict parsing, atomic writes."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given, strategies as st

from forkspec.oracle._internal import corpus
from forkspec.oracle.errors import InvalidProgram

text_line = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"), max_size=30)
meta_key = st.text(alphabet="abcdefghijklmnopqrstuvwxyz-", min_size=1, max_size=12)
meta_value = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-|,. ", max_size=20).map(str.strip)


def body(lines: list[str]) -> str:
    # Section bodies cannot contain lines that look like section headers.
    return "\n".join(l for l in lines if not (l.startswith("[") and l.rstrip().endswith("]")))


@given(meta=st.dictionaries(meta_key, meta_value, max_size=5),
       divergence=st.lists(text_line, max_size=4).map(body),
       program=st.lists(text_line, min_size=1, max_size=6).map(body),
       images=st.lists(st.tuples(st.sampled_from(["i0", "i1", "i2"]), st.binary(max_size=300)),
                       max_size=3, unique_by=lambda t: t[0]))
def test_round_trip(meta, divergence, program, images) -> None:
    repro = corpus.Reproducer(meta=meta, divergence=divergence, program_text=program.rstrip("\n") + "\n",
                              disassembly="", images=tuple(images))
    again = corpus.loads(corpus.dumps(repro))
    assert again.meta == {k.strip(): v for k, v in meta.items()}
    assert again.images == tuple(images)
    assert again.program_text.rstrip("\n") == repro.program_text.rstrip("\n")
    assert again.divergence.rstrip("\n") == divergence.rstrip("\n")


@pytest.mark.parametrize("text,message", [
    ("", "empty file"),
    ("hello\n", "line 1"),
    (corpus.HEADER + "\n[meta]\nno equals sign\n[program]\nx\n", "not 'key = value'"),
    (corpus.HEADER + "\n[meta]\n", "missing section [program]"),
    (corpus.HEADER + "\n[meta]\n[program]\n[program]\n", "appears twice"),
    (corpus.HEADER + "\n[meta]\n[program]\nx\n[image i0]\n!!!\n", "not valid base64"),
])
def test_malformed_reproducers_are_rejected_with_a_message(text: str, message: str) -> None:
    with pytest.raises(InvalidProgram, match=message.replace("[", r"\[").replace("]", r"\]")):
        corpus.loads(text)


def test_save_is_atomic_and_replaces(tmp_path: Path) -> None:
    repro = corpus.Reproducer(meta={"signature": "mmap | 0x1000 | -EINVAL"}, divergence="d", program_text="p\n")
    path = corpus.save(tmp_path, repro)
    assert path.name == corpus.signature_key("mmap | 0x1000 | -EINVAL") + corpus.SUFFIX
    smaller = corpus.Reproducer(meta=repro.meta, divergence="d2", program_text="q\n")
    assert corpus.save(tmp_path, smaller) == path
    assert corpus.load(path).divergence == "d2"
    assert [p.name for p in tmp_path.iterdir()] == [path.name]      # no temporary files left


def test_failed_write_leaves_old_file_and_no_temp(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "x.repro"
    corpus.write_atomic(path, "old")

    def boom(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(OSError):
        corpus.write_atomic(path, "new")
    assert path.read_text() == "old"
    assert corpus.list_corpus(tmp_path) == [path]
