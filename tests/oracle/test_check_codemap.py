"""The checker's code map comes from the code generator's record in the build: every step's
recorded syscall end must sit right after a `syscall` instruction (0f 05) in the text, spans must
tile the code in order, and a build whose record does not match its program is refused."""
from __future__ import annotations

import dataclasses
import importlib

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from forkspec.oracle._internal.codegen import compile_program
from forkspec.oracle.encoding import loads
from forkspec.oracle.strategies import malformed_programs, programs

checker = importlib.import_module("forkspec.oracle.check")
SYSCALL = b"\x0f\x05"


@settings(max_examples=60, derandomize=True, database=None, deadline=None, phases=[Phase.generate],
          suppress_health_check=list(HealthCheck))
@given(st.one_of(programs(), malformed_programs()))
def test_recorded_code_map_points_at_the_generated_code(program):
    build = compile_program(program)
    for index, image in enumerate(program.images):
        cm = checker._code_map(index, image, build)
        for path, code in cm.steps.items():
            assert cm.text_vaddr <= code.start <= code.end, path
            if code.sys_end is not None:
                offset = code.sys_end - cm.text_vaddr
                assert cm.text[offset - 2:offset] == SYSCALL, (path, hex(code.sys_end))
        # Every list that runs off its end has its exit_group(0) tail recorded.
        assert len(cm.tails) == len(build.info[index].tail_addrs)


def test_a_build_whose_record_does_not_match_the_program_is_refused():
    program = loads("r1 = mmap(0, 0x1000, rw, private|anon)\nr2 = fork\n  child: store(r1, 1)\n"
                    "  parent: wait4(r2); load(r1)\n", strict=False)
    build = compile_program(program)
    short = dataclasses.replace(build, info=tuple(dataclasses.replace(i, step_spans=i.step_spans[:-1],
                                                                       syscall_ends=i.syscall_ends[:-1])
                                                  for i in build.info))
    with pytest.raises(checker._Stop, match="does not match"):
        checker._code_map(0, program.images[0], short)
