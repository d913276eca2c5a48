"""Observations are read from the page tables: rights per page, contents by digest; and random
programs keep the raw-state invariants, leak no frame, and trace alike under both fork strategies."""
from __future__ import annotations

import struct

from hypothesis import HealthCheck, given, settings

from forkspec.oracle._internal.codegen import compile_program
from forkspec.oracle.strategies import malformed_programs, programs
from forkspec.specs.abi import PAGE_SIZE
from forkspec.specs.trace import RIGHT_R, RIGHT_W, RIGHT_X, page_digest

from .helpers import backend, check_raw_invariants, of, run_text


def rights_at(view, address):
    for lo, hi, rights in view.ranges:
        if lo <= address < hi:
            return rights
    return None


def test_observation_shows_written_contents_and_rights():
    trace, _ = run_text("""
r1 = mmap(0, 0x3000, rw, private|anon)
store(r1+0x1008, 0x1122334455667788)
r2 = mprotect(r1+0x2000, 0x1000, none)
r3 = mprotect(r1, 0x1000, x)
observe
exit(0)
""")
    base = of(trace, "Syscall")[0].result
    view = of(trace, "Observation")[0].view
    expected = bytearray(PAGE_SIZE)
    struct.pack_into("<Q", expected, 8, 0x1122334455667788)
    digests = dict(view.digests)
    assert digests[base + 0x1000] == page_digest(bytes(expected))
    assert base not in digests                                       # all-zero pages carry none
    assert rights_at(view, base) == RIGHT_R | RIGHT_X
    assert rights_at(view, base + 0x1000) == RIGHT_R | RIGHT_W
    assert rights_at(view, base + 0x2000) == 0                       # PROT_NONE: mapped, no rights
    assert list(view.ranges) == sorted(view.ranges)


def test_cow_pages_are_observed_writable_and_equal_to_eager():
    text = """
r1 = mmap(0, 0x2000, rw, private|anon)
store(r1, 3)
r2 = fork
  child: observe; exit(0)
  parent: observe; r3 = wait4(r2); exit(0)
"""
    eager = [o.view for o in of(run_text(text, "eager")[0], "Observation")]
    cow = [o.view for o in of(run_text(text, "cow")[0], "Observation")]
    assert eager == cow


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(programs())
def test_random_programs_keep_invariants_and_strategies_agree(program):
    build = compile_program(program)
    traces = {}
    for strategy in ("eager", "cow"):
        be = backend(strategy)
        traces[strategy] = be.run(build.images, build.entry,
                                  on_event=lambda event, kernel: check_raw_invariants(kernel.raw_state()))
        assert be.last_kernel.frames.free_count == be.last_kernel.frames.usable
    assert traces["eager"].events == traces["cow"].events


@settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
@given(malformed_programs())
def test_malformed_programs_never_raise_or_leak(program):
    build = compile_program(program)
    be = backend("cow")
    trace = be.run(build.images, build.entry)
    assert trace.events and be.last_kernel.frames.free_count == be.last_kernel.frames.usable


def test_raw_state_describes_the_kernel():
    states = {}

    def on_event(event, kernel):
        states[type(event).__name__ + str(len(states))] = kernel.raw_state()
    trace, _ = run_text("""
r1 = brk(0)
r2 = brk(r1+0x1000)
r3 = mmap(0, 0x1000, rw, shared|anon)
r4 = vfork
  child: observe; exit(0)
  parent: exit(0)
""", on_event=on_event)
    observe_state = next(s for k, s in states.items() if k.startswith("Observation"))
    parent, child = observe_state.processes[:2]
    assert parent.state == "blocked-vfork" and child.shares_mm_with == parent.pid
    assert child.ptes == parent.ptes and child.cr3 == parent.cr3 == parent.mm_root
    kinds = {v.kind for v in parent.vmas}
    assert {"image", "heap", "stack", "tls", "mmap"} <= kinds
    assert any(v.shared for v in parent.vmas if v.kind == "mmap")
    assert {f.kind for f in observe_state.frames} == {"user", "pagetable"}
    assert observe_state.tlb_flushes > 0
    last = list(states.values())[-1]                                 # at the root's Exit event
    assert all(p.state == "zombie" and not p.vmas and not p.ptes for p in last.processes)
    assert not [f for f in last.frames if f.kind == "user"]
