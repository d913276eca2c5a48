"""The checker's code map: read from the build's record (ImageInfo.step_spans, syscall_ends,
tail_addrs) it must equal the one the code generator's replay gives, for well-formed and
malformed programs; a build without the record falls back to the replay."""
from __future__ import annotations

import dataclasses
import importlib

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from forkspec.oracle._internal.codegen import compile_program
from forkspec.oracle.strategies import malformed_programs, programs

checker = importlib.import_module("forkspec.oracle.check")


def _same(a, b) -> bool:
    return (a is not None and b is not None and a.steps == b.steps and a.tails == b.tails
            and a.text == b.text and a.text_vaddr == b.text_vaddr)


@settings(max_examples=60, derandomize=True, database=None, deadline=None, phases=[Phase.generate],
          suppress_health_check=list(HealthCheck))
@given(st.one_of(programs(), malformed_programs()))
def test_recorded_code_map_equals_the_replayed_one(program):
    build = compile_program(program)
    for index, image in enumerate(program.images):
        recorded = checker._recorded_code_map(index, image, build)
        replayed = checker._replayed_code_map(index, image, build)
        assert _same(recorded, replayed)
        assert any(path[-1] == "tail" for path in recorded.steps) or image.steps


def test_a_build_without_the_record_falls_back_to_the_replay():
    from forkspec.oracle.encoding import loads

    program = loads("r1 = mmap(0, 0x1000, rw, private|anon)\nr2 = fork\n  child: store(r1, 1)\n"
                    "  parent: wait4(r2); load(r1)\n", strict=False)
    build = compile_program(program)
    bare = dataclasses.replace(build, info=tuple(dataclasses.replace(i, step_spans=(), syscall_ends=(),
                                                                      tail_addrs=()) for i in build.info))
    assert checker._recorded_code_map(0, program.images[0], bare) is None
    assert _same(checker._code_map(0, program.images[0], bare), checker._code_map(0, program.images[0], build))
