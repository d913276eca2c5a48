"""A failed proof becomes a runnable program (oracle/_internal/witness.py).

Two parts. A table of hand-made before-states and the program text each must become (what the
module docstring promises, written out by hand). Then level-2 transitions broken on purpose (as
in tests/proofs/test_refinement.py): the failing obligation's program parses, replays on impl
and the model, and where impl can have the same bug (a zoo entry) the program catches it.
"""
from __future__ import annotations

import dataclasses

import pytest

from forkspec.model import design as d
from forkspec.oracle import cli
from forkspec.oracle._internal import witness as w
from forkspec.oracle._internal.pipeline import Config, run_case
from forkspec.oracle.encoding import dumps, loads
from forkspec.oracle.program import Ref
from forkspec.specs import obligations as ob
from forkspec.specs import prove

P = 0x2000_0000_0000 >> 12          # a page in the range a fresh process leaves free
MB = 0x10_0000


def view(intervals, slot=0, pid=7, state=d.RUNNING, parent=1, vfork_parent=0, status=0, brk_start=0x60_0000,
         brk=0x60_0000, words=None, problem="") -> w.ProcView:
    return w.ProcView(slot, pid, state, parent, vfork_parent, status, brk_start, brk, tuple(intervals),
                      words or {}, problem)


def run(lo, n, prot, shared=False, frame=0, mapped=False) -> w.Interval:
    return w.Interval(lo, lo + n, True, prot, shared, frame, mapped)


def text(views, transition, pid=7, **args) -> str:
    program, notes = w.build_program(views, w.StepSpec(transition, pid, args))
    return w.render(program, notes)


def body(t: str) -> list[str]:
    return [line for line in t.splitlines() if not line.startswith("#")]


# --- from a before-state to program text ------------------------------------------------------------

def test_runs_become_mmaps_and_words_become_stores_under_a_writable_mapping():
    # Two runs: two empty private rw pages, then one read-only shared page holding the word 0x2a.
    views = [view([run(P, 2, 3), run(P + 2, 1, 1, shared=True, frame=9, mapped=True)], words={9: 0x2A})]
    got = body(text(views, "munmap", addr=P << 12, length=0x3000))
    a = P << 12
    assert got == [
        f"mmap({a:#x}, 0x2000, rw, private|fixed|anon)",
        f"mmap({a + 0x2000:#x}, 0x1000, rw, shared|fixed|anon)",     # writable while the word is stored
        f"store({a + 0x2000:#x}, 0x2a)",
        f"mprotect({a + 0x2000:#x}, 0x1000, r)",                      # then the counterexample's prot
        f"munmap({a:#x}, 0x3000)",
        "observe",
        f"store({a:#x}, {w.PROBE:#x})",                              # the write probe: must fault now
    ]


def test_a_page_holding_a_zero_word_is_still_touched():
    # The frame exists (a PTE maps it): a store of 0 makes the kernel allocate it, as the state has.
    views = [view([run(P, 1, 3, frame=4, mapped=True)], words={4: 0})]
    assert f"store({P << 12:#x}, 0)" in body(text(views, "load", va=P << 12))


def test_pages_that_collide_with_a_fresh_process_move_together():
    # Page 0x1000 lies under a fresh process's own image area: everything moves by one offset,
    # the step's address too, and a comment says so.
    views = [view([run(1, 1, 3)])]
    t = text(views, "store", va=0x1008, value=5)
    moved = w.RELOCATE_LO
    assert body(t) == [f"mmap({moved + 0x1000:#x}, 0x1000, rw, private|fixed|anon)",
                       f"store({moved + 0x1008:#x}, 5)", "observe"]
    assert f"moved by +{moved:#x}" in t


def test_a_step_beyond_user_space_keeps_its_arguments():
    # mprotect over a range past TASK_SIZE fails before touching anything: its arguments are the point.
    views = [view([run(1, 1, 7)])]
    got = body(text(views, "mprotect", addr=0x8000_0000_0000, length=0x1000, prot=1))
    assert got[-2] == "mprotect(0x800000000000, 0x1000, r)"


def test_brk_is_built_relative_to_the_initial_break():
    start = 0x5000_0000
    views = [view([run((start >> 12) + 4, 1, 3)], brk_start=start, brk=start + 0x2800)]
    got = body(text(views, "brk", addr=start + 0x8000))
    assert got == ["r1 = brk(0)",
                   "brk(r1+0x2800)",                         # the counterexample's break
                   "munmap(r1, 0x3000)",                     # the heap VMA that move made is not in the state
                   "mmap(r1+0x4000, 0x1000, rw, private|fixed|anon)",
                   "brk(r1+0x8000)", "observe"]


def test_brk_below_the_heap_start_stays_refused():
    start = 0x5000_0000
    got = body(text([view([], brk_start=start, brk=start)], "brk", addr=0x1234))
    assert got == ["r1 = brk(0)", "brk(1)", "observe"]


def test_a_running_parent_builds_its_memory_forks_the_caller_and_waits():
    # The caller (pid 7) shares frame 5 with its parent (pid 3) at page P, and has its own page P+1.
    parent = view([run(P, 1, 3, frame=5, mapped=True)], slot=0, pid=3, words={5: 0x11})
    child = view([run(P, 1, 3, frame=5, mapped=True), run(P + 1, 1, 1, frame=6, mapped=True)], slot=1, pid=7,
                 parent=3, words={5: 0x11, 6: 0x22})
    a = P << 12
    got = body(text([parent, child], "store", va=a, value=1))
    assert got == [
        f"mmap({a:#x}, 0x1000, rw, private|fixed|anon)", f"store({a:#x}, 0x11)",
        "r1 = fork",
        "  child:",
        f"    mmap({a + 0x1000:#x}, 0x1000, rw, private|fixed|anon)",   # the shared page P is inherited
        f"    store({a + 0x1000:#x}, 0x22)",
        f"    mprotect({a + 0x1000:#x}, 0x1000, r)",
        f"    store({a:#x}, 1)",
        "    observe",
        "  parent: wait4(r1)",
    ]


def test_a_child_frame_different_from_the_parents_is_mapped_afresh():
    parent = view([run(P, 1, 3, frame=5, mapped=True)], slot=0, pid=3, words={5: 0x11})
    child = view([run(P, 1, 3, frame=8, mapped=True)], slot=1, pid=7, parent=3, words={8: 0x33})
    got = body(text([parent, child], "load", va=P << 12))
    assert f"    mmap({P << 12:#x}, 0x1000, rw, private|fixed|anon)" in got
    assert f"    store({P << 12:#x}, 0x33)" in got


def test_a_zombie_child_comes_from_vfork_and_exit():
    zombie = view([], slot=1, pid=9, state=d.ZOMBIE, parent=7, status=3 << 8)
    got = body(text([view([]), zombie], "wait4", target=9))
    assert got == ["r1 = vfork", "  child:  exit(3)", "  parent: wait4(r1, wnohang); observe"]


def test_fork_step_observes_in_both_processes():
    got = body(text([view([run(P, 1, 3)])], "fork_cow"))
    assert got[1:] == ["r1 = fork", "  child:  observe; exit(0)", "  parent: wait4(r1); observe"]


@pytest.mark.parametrize("views, transition, args, why", [
    ([view([])], "execve", {}, "segments"),
    ([view([], pid=8)], "munmap", {"addr": 0x1000, "length": 0x1000}, "no running process"),
    ([view([], problem="page 0x1000 holds frame 0x3 outside any VMA")], "load", {"va": 0x1000}, "outside any VMA"),
])
def test_what_a_program_cannot_build_is_said(views, transition, args, why):
    with pytest.raises(w.NotExpressible, match=why):
        w.build_program(views, w.StepSpec(transition, 7, args))


@pytest.mark.parametrize("other, why", [
    (view([], slot=1, pid=9, parent=4), "neither parent nor child"),
    (view([run(P + 1, 1, 3, frame=5, mapped=True)], slot=1, pid=3, words={5: 1}), "fork shares a frame at one page"),
    (view([], slot=1, pid=3, problem="page 0x1000 holds frame 0x3 outside any VMA"), "outside any VMA"),
])
def test_a_second_process_that_cannot_be_built_is_left_out_and_said(other, why):
    caller = view([run(P, 1, 3, frame=5, mapped=True)], slot=0, pid=7, parent=3, words={5: 1})
    program, notes = w.build_program([caller, other], w.StepSpec("load", 7, {"va": P << 12}))
    assert not any(s.op == "fork" for s in program.steps)
    assert [s.op for s in program.steps][-2:] == ["load", "observe"]
    assert notes[0].startswith("approximation: the other process is left out") and why in notes[0]


# --- broken level-2 transitions: the failing obligation's program ------------------------------------

def _keep_ptes(orig):
    """The transition forgets to unmap: page tables, reverse maps and frames stay as they were."""
    def broken(s, a, c):
        allowed, out, new = orig(s, a, c)
        procs = tuple(dataclasses.replace(q, pt=p.pt, rmap=p.rmap) for p, q in zip(s.procs, new.procs))
        return allowed, out, dataclasses.replace(new, procs=procs, frames=s.frames)
    return broken


def _all_writable(orig):
    """Every present PTE becomes writable (the zoo's prot-flags-inverted, write half)."""
    def broken(s, a, c):
        allowed, out, new = orig(s, a, c)
        rw = lambda k, pte: d.sel(d.pte_present(pte), (pte[0], d.bor(pte[1], d.PTE_RW)), pte)  # noqa: E731
        return allowed, out, dataclasses.replace(new, procs=tuple(dataclasses.replace(q, pt=q.pt.update(rw))
                                                                  for q in new.procs))
    return broken


def _extra_reference(orig):
    """The stored-to frame gets one reference too many."""
    def broken(s, a, c):
        allowed, out, new = orig(s, a, c)
        frames = new.frames.update(lambda f, fr: d.sel(d.eq(f, c.frame), (fr[0], d.add(fr[1], 1), fr[2]), fr),
                                   touched=lambda: [c.frame])
        return allowed, out, dataclasses.replace(new, frames=frames)
    return broken


def _no_write_protect(orig):
    """Copy-on-write fork that leaves the parent's private PTEs writable."""
    def broken(s, a, c):
        allowed, out, new = orig(s, a, c)
        procs = tuple(dataclasses.replace(q, pt=p.pt) for p, q in zip(s.procs, new.procs))
        return allowed, out, dataclasses.replace(new, procs=procs + new.procs[len(s.procs):])
    return broken


BROKEN = {
    "mmap": ("inv_pte_rights_within_vma", _keep_ptes),
    "munmap": ("inv_pte_in_vma", _keep_ptes),
    "mprotect": ("inv_pte_rights_within_vma", _all_writable),
    "brk": ("inv_pte_in_vma", _keep_ptes),
    "store": ("inv_refcount_counts_mappings", _extra_reference),
    "fork_cow": ("inv_cow_private_writable_exclusive", _no_write_protect),
}
STEP_OP = {"fork_cow": "fork"}
_RESULTS: dict[str, prove.ProofResult] = {}


_STATES: dict[str, tuple] = {}


SEEDS = 4      # Z3's counterexample depends on the seed


def _refute(transition: str, seed: int) -> tuple[prove.ProofResult, tuple]:
    """In a process of its own (prove.call_apart): the broken transition's failing obligation, and
    the before-state and step the witness read."""
    inv, breaker = BROKEN[transition]
    t = ob.TRANSITIONS[transition]
    seen = []

    def record(model, name, ctx):
        seen.append((w.read_state(model, ctx.states["before"], set()), w.step_spec(model, name, ctx)))
        return w.program_for(model, name, ctx)
    res = prove.prove_one(ob.preserves(t, inv, fn=breaker(t.fn)), seed=seed, timeout_s=120, witness=record)
    return res, seen[0] if seen else ()


def _failed(transition: str) -> prove.ProofResult:
    """The broken transition's failing obligation, proved once per test session, apart (the
    counterexample then depends only on the obligation and the seed); the before-state the witness
    read is kept in _STATES. Some counterexamples have no program (a break next to the stack, say):
    the first of SEEDS seeds whose counterexample has one is taken."""
    if transition not in _RESULTS:
        for seed in range(SEEDS):
            res, _STATES[transition] = prove.call_apart(_refute, transition, seed)
            _RESULTS[transition] = res
            if not res.program.startswith(w.NO_PROGRAM):
                break
    return _RESULTS[transition]


def _ops(steps) -> list[str]:
    out = []
    for s in steps:
        out.append(s.op)
        out += _ops(s.child or ()) + _ops(s.parent or ())
    return out


@pytest.mark.parametrize("transition", sorted(BROKEN))
def test_broken_transition_gives_a_program_that_parses_and_replays(transition, tmp_path):
    res = _failed(transition)
    assert res.verdict == prove.FAILED
    assert res.program.startswith("# forkspec-program v1"), res.program
    program = loads(res.program)                                     # (a) strict parse
    assert STEP_OP.get(transition, transition) in _ops(program.steps)
    path = tmp_path / f"{transition}.fsp"
    path.write_text(res.program)
    status, result = cli.replay_file(path)                          # (b) impl and the model, to the end
    assert status == "pass", (res.program, result.verdict)
    assert "as a program" in prove.format_table([res])


def test_a_planted_zoo_bug_is_caught_by_the_emitted_program():
    # (c) level 2's mprotect broken like the zoo's prot-flags-inverted: impl with that bug planted
    # diverges on the counterexample's program, the clean impl does not.
    program = loads(_failed("mprotect").program)
    assert run_case(program, Config()).verdict.status == "pass"
    planted = run_case(program, Config(plant=frozenset({"prot-flags-inverted"})))
    assert planted.verdict.status == "divergence", planted.verdict


@pytest.mark.parametrize("plant", ["missing-tlb-flush", "prot-flags-inverted"])
def test_the_write_probe_after_mprotect_catches_stale_rights(plant):
    # A page written while rw, then made read-only by the failing mprotect: the probe must fault.
    a = P << 12
    program, _ = w.build_program([view([run(P, 1, 3, frame=4, mapped=True)], words={4: 7})],
                                 w.StepSpec("mprotect", 7, {"addr": a, "length": 0x1000, "prot": 1}))
    assert program.steps[-1].op == "store"
    assert run_case(program, Config()).verdict.status == "pass"
    assert run_case(program, Config(plant=frozenset({plant}))).verdict.status == "divergence"


def _prove_cli_with_broken_munmap(out: str) -> tuple[int, str]:
    """In a process of its own: `forkspec prove --emit-programs` with level 2's munmap broken
    (proved in that process, where the patch is); (exit code, what it printed)."""
    import contextlib
    import io
    inv, breaker = BROKEN["munmap"]
    t = ob.TRANSITIONS["munmap"]
    ob.TRANSITIONS["munmap"] = dataclasses.replace(t, fn=breaker(t.fn))
    run = prove.run
    prove.run = lambda *a, **k: run(*a, **{**k, "isolate": False})
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(printed):
        code = cli.main(["prove", "-k", f"munmap-preserves-{inv}", "--emit-programs", out])
    return code, printed.getvalue()


def test_cli_writes_one_file_per_failed_obligation(tmp_path):
    inv, _ = BROKEN["munmap"]
    out = tmp_path / "programs"
    code, printed = prove.call_apart(_prove_cli_with_broken_munmap, str(out))
    assert code == 1
    files = sorted(out.iterdir())
    assert [f.name for f in files] == [f"munmap-preserves-{inv}.fsp"]
    assert cli.main(["replay", str(files[0])]) == 0
    assert "as a program" in printed and str(files[0]) in printed


def test_emit_programs_without_a_program_builder_is_refused(capsys):
    assert prove.main(["-k", "initial-satisfies-inv_pids_unique", "--emit-programs", "x"]) == 2
    assert "--emit-programs" in capsys.readouterr().err


def test_obligations_without_a_step_say_why():
    class Ctx:
        states = {"initial": None}
        args: dict = {}
    assert w.program_for(None, "initial-satisfies-inv_pte_in_vma", Ctx()).startswith(w.NO_PROGRAM)


def test_refs_survive_the_text_round_trip():
    start = 0x5000_0000
    program, _ = w.build_program([view([run((start >> 12) + 1, 1, 3)], brk_start=start, brk=start)],
                                 w.StepSpec("brk", 7, {"addr": start + 0x4000}))
    assert loads(dumps(program)) == program
    assert any(isinstance(a, Ref) for s in program.steps for a in s.args)


def _reached(program) -> tuple[int, d.KState]:
    """Run the program on impl; (observer's pid, impl's state abstracted to level 2 at its observe)."""
    from forkspec.oracle._internal.codegen import compile_program
    from forkspec.oracle._internal.pipeline import make_backend
    from forkspec.oracle.abstraction import abstract
    from forkspec.specs.abi import ReportKind
    from forkspec.specs.trace import Budget, Report

    seen: list = []

    def on_event(event, kernel):
        if isinstance(event, Report) and event.kind == ReportKind.observe and not seen:
            seen.append((event.pid, abstract(kernel.raw_state())))
    build = compile_program(program)
    make_backend(Config()).run(build.images, build.entry, Budget(instructions=2_000_000, wall_seconds=30),
                               on_event=on_event)
    assert seen, "the program never reached its observe"
    return seen[0]


@pytest.mark.parametrize("transition", sorted(BROKEN))
def test_the_program_reaches_the_counterexamples_before_state(transition):
    # impl runs the failing step's program up to that step; its state, abstracted to level 2, has
    # the runs of the counterexample the program keeps, page by page, at (and next to) every run.
    _failed(transition)
    _assert_reaches(*_STATES[transition])


def test_a_brk_counterexample_wider_than_free_space_is_reached_around_the_heap():
    # Runs from page 2 to just under the stack: no move fits them all. brk's program keeps the
    # runs next to the heap, so reaching its before-state builds those, heap-relative.
    heap = 0x5000_0000
    views = [view([run(2, 1, 3), run((heap >> 12) + 1, 2, 3, frame=4, mapped=True), run(0x7000_0000_0, 1, 1)],
                  brk_start=heap, brk=heap + 0x3000, words={4: 9})]
    spec = w.StepSpec("brk", 7, {"addr": heap + 0x1000})
    reached = _assert_reaches(views, spec)
    assert [(iv.lo, iv.hi) for iv in reached.views[0].intervals] == [((heap >> 12) + 1, (heap >> 12) + 3)]
    assert any(isinstance(s.args[0], Ref) for s in reached.program.steps if s.op == "mmap")


def _assert_reaches(views, spec) -> w.Reached:
    reached = w.reach(views, spec)
    pid, state = _reached(reached.program)
    by_pid = {p.pid: p for p in state.procs}
    caller = next(v for v in reached.views if v.pid == spec.pid and v.state == d.RUNNING)
    others = [v for v in reached.views if v is not caller]

    def impl_page(page: int) -> int:        # where the program put a counterexample page
        at = reached.addr(page << 12)
        return (by_pid[pid].brk_start + at.offset if isinstance(at, Ref) else at) >> 12
    pairs = [(caller, by_pid[pid])]
    if others:       # the other process is the caller's parent or child in impl's tree
        relative = by_pid[pid].parent if others[0].pid == caller.parent else \
            next(p.pid for p in state.procs if p.parent == pid)
        pairs.append((others[0], by_pid[relative]))
    for view_, proc in pairs:
        if view_.state != d.RUNNING:
            continue
        for iv in view_.intervals:
            for k in {iv.lo, iv.hi - 1}:
                page = impl_page(k)
                assert d.find_vma(proc.vmas, page) == (True, iv.prot, iv.shared), (hex(page << 12), iv)
                # A page holding a frame holds one in impl too (the converse need not hold: a shared
                # mapping is populated at mmap, and a frame holding 0 reads as no frame does).
                assert d.pte_mapped(proc.pt.get(page)) or not iv.mapped, (hex(page << 12), iv, dumps(reached.program))
            for k in (iv.lo - 1, iv.hi):
                if not any(x.lo <= k < x.hi for x in view_.intervals):
                    assert not d.find_vma(proc.vmas, impl_page(k))[0], hex(impl_page(k) << 12)
    return reached


def test_a_step_over_all_of_user_space_is_cut_to_the_runs_it_covers():
    views = [view([run(P, 2, 3)])]
    got = body(text(views, "munmap", addr=0x1000, length=0x7FFF_FFFF_B000))
    assert got[-3] == f"munmap({(P - 1) << 12:#x}, 0x4000)"      # the run and a page on each side
