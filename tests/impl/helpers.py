"""Shared helpers for impl's tests: run a program (text or asm) on ImplBackend, pick events."""
from __future__ import annotations

from forkspec.impl.backend import ImplBackend
from forkspec.impl.machine import PTE_P
from forkspec.oracle._internal.codegen import compile_program
from forkspec.oracle.encoding import loads
from forkspec.specs.trace import Budget

_backends: dict[tuple, ImplBackend] = {}


def backend(strategy: str = "eager", plant: frozenset[str] = frozenset()) -> ImplBackend:
    key = (strategy, frozenset(plant))
    if key not in _backends:
        _backends[key] = ImplBackend(fork_strategy=strategy, plant=frozenset(plant))
    return _backends[key]


def program(text: str):
    return compile_program(loads("# forkspec-program v1\n" + text.strip("\n") + "\n"))


def run_text(text: str, strategy: str = "eager", plant=frozenset(), on_event=None, budget=Budget()):
    """Compile the program text and run it; returns (trace, build)."""
    build = program(text)
    trace = backend(strategy, plant).run(build.images, build.entry, budget, on_event)
    return trace, build


def run_images(images: dict[str, bytes], strategy: str = "eager", plant=frozenset(), on_event=None,
               budget=Budget(), entry: str = "i0"):
    return backend(strategy, plant).run(images, entry, budget, on_event)


def of(trace, kind, pid=None):
    return [e for e in trace.events if type(e).__name__ == kind and (pid is None or e.pid == pid)]


def syscalls(trace, nr, pid=None):
    return [e for e in of(trace, "Syscall", pid) if e.nr == nr]


def table_slot(build, trace, n: int) -> int:
    """Address of result slot n of image 0 (ET_EXEC: no bias)."""
    return build.info[0].table_addr + 8 * n


def check_raw_invariants(state) -> None:
    """Every present PTE lies inside a VMA of its process; refcounts equal the number of
    distinct page-table mappings; no frame is both free and mapped."""
    mapped: dict[int, set] = {}
    for proc in state.processes:
        if not proc.vmas and not proc.ptes:
            continue
        for va, frame, flags in proc.ptes:
            assert any(v.start <= va < v.end for v in proc.vmas), f"pid {proc.pid}: PTE {va:#x} outside every VMA"
            if flags & PTE_P:
                mapped.setdefault(frame, set()).add((proc.cr3, va))
    table = {f.frame: f for f in state.frames}
    for frame, where in mapped.items():
        assert frame in table, f"frame {frame} is mapped but free"
        assert table[frame].refcount == len(where), f"frame {frame}: refcount {table[frame].refcount} != {len(where)} mappings"
    for f in state.frames:
        if f.kind == "user":
            assert f.frame in mapped, f"user frame {f.frame} is allocated but mapped nowhere (leak)"
