"""The checker: walk a trace with the model and report the first divergence.

`check(program, build, trace, profile)` replays what the generated code does (the contract in
oracle/_internal/codegen.py's docstring) against the model, process by process, in the trace's
global order:

- Each process runs an interpreter of its step list (a generator). Work that produces no event
  (argument loads from the result table, result stores, stores, fetch probes, instruction fetches
  of the step's own code) runs lazily, just before the process's next event is checked, so that
  memory shared through vfork or MAP_SHARED sees the same order of writes as the real run.
- Every syscall's number, arguments and result are checked; the result must be what the model
  answers with the choice read off it (an mmap address, a child's pid ...) and that choice must
  be allowed under the profile. Reports, outputs, signals, exit statuses and observations (page
  by page: rights and digests, kernel-owned contents masked) are checked too.
- Processes are matched by their place in the fork tree ("root/0/1"), learned from fork results.
- An `Inconclusive` event ends the check as inconclusive, never a divergence; so do things the
  model does not execute (a fetch probe landing on anything but `ret`, code pages rewritten by the
  program, a clone flag set that is not fork-like).

The verdict carries the coverage: the model clauses and errno paths the trace exercised.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Generator, Iterable

from ..model import exec as model_exec
from ..model import memory, process
from ..model import system as model_system
from ..model.predicates import can_exec, is_masked, rights_of
from ..model.state import ATTR_MAPPED, ATTR_SHARED, ATTR_SIGBUS, Blocks, Fault, Killed, Kind, OutOfScope, Run, State
from ..specs.abi import (PAGE_SHIFT, PAGE_SIZE, PROT_EXEC, TASK_SIZE, U64, Errno, Nr, ReportKind, SiCode, Signal, as_signed,
                         is_errno, si_code_name, signal_name, wait_status_signaled)
from ..specs.profiles import Profile
from ..specs.trace import (Exec, Exit, Inconclusive, Observation, Output, Report, Syscall, Trace, View,
                           page_digest, rights_str)
from ..specs.trace import Signal as SignalEvent
from .program import EXIT_OPS, FORK_OPS, Image, Program, Ref, Step

__all__ = ["check", "Verdict", "Divergence"]


@dataclass(frozen=True)
class Divergence:
    event_index: int                 # index of the offending event in trace.events (-1: none)
    process: str                     # place in the fork tree, e.g. "root/1/0"
    step: str                        # the step's text
    expected: str
    observed: str
    detail: str                      # the two address spaces side by side around the divergence
    signature: tuple[str, str, str]  # (syscall/step, allowed class, observed class) for de-dup


@dataclass(frozen=True)
class Verdict:
    status: str                      # "pass" | "divergence" | "inconclusive"
    divergence: Divergence | None
    reason: str
    coverage: frozenset[str]


class _Diverge(Exception):
    def __init__(self, expected: str, observed: str, step: str = "", detail: str = "",
                 signature: tuple[str, str, str] | None = None, pid: int | None = None) -> None:
        super().__init__(f"expected {expected}, observed {observed}")
        self.expected, self.observed, self.step, self.detail = expected, observed, step, detail
        self.signature, self.pid = signature, pid


@dataclass(frozen=True)
class _ExecInto:
    """A successful execve: the process continues with image `image`'s steps."""
    image: int


class _Stop(Exception):
    """The check cannot go on (out of scope for the model): inconclusive."""


class _Dies(Exception):
    """A user-visible fault kills the process (raised inside its interpreter)."""
    def __init__(self, fault: Fault, where: str) -> None:
        super().__init__(where)
        self.fault, self.where = fault, where


# --- where each step's code is ----------------------------------------------------------------

@dataclass(frozen=True)
class _Code:
    start: int            # link-time address of the step's first instruction
    sys_end: int | None   # address after its (first) syscall instruction
    end: int              # end of the step's own code (a fork's: where its child list starts)


@dataclass
class _CodeMap:
    steps: dict[tuple, _Code]
    tails: dict[tuple, int]           # list path -> the exit_group(0) appended to it
    text: bytes                        # the text segment's bytes as the code generator wrote them
    text_vaddr: int


def _code_map(index: int, image: Image, build: Any) -> _CodeMap:
    """Each step's code addresses, from the code generator's record of them in the build
    (ImageInfo.step_spans and syscall_ends in walk_steps order; tail_addrs and
    tail_syscall_ends for the implicit exit_group(0) of each list that runs off its end, in the
    order lists end: a list ends after the lists nested in it)."""
    info = build.info[index]
    spans, sysends = info.step_spans, info.syscall_ends
    tail_iter = iter(zip(info.tail_addrs, info.tail_syscall_ends))
    steps: dict[tuple, _Code] = {}
    tails: dict[tuple, int] = {}
    counter = [0]

    def walk(lst: tuple[Step, ...], base: tuple) -> None:
        for i, step in enumerate(lst):
            path = base + (i,)
            start, end = spans[counter[0]]
            steps[path] = _Code(start, sysends[counter[0]] or None, end)
            counter[0] += 1
            if step.op in FORK_OPS:
                walk(step.child or (), path + ("c",))
                walk(step.parent or (), path + ("p",))
        if not lst or (lst[-1].op not in EXIT_OPS and lst[-1].op not in FORK_OPS):
            at, sys_end = next(tail_iter)
            tails[base] = at
            steps[base + ("tail",)] = _Code(at, sys_end, at + 32)

    try:
        walk(image.steps, ())
        matches = counter[0] == len(spans) and next(tail_iter, None) is None
    except (IndexError, StopIteration):          # the record is shorter than the program
        matches = False
    if not matches:
        raise _Stop(f"image {index}: the build's code record does not match the program")
    return _CodeMap(steps, tails, _text_bytes(index, image, build), info.ret_gadget)


def _text_bytes(index: int, image: Image, build: Any) -> bytes:
    data = build.images[build.info[index].path]
    if image.elf.mutation is not None:
        from ._internal import codegen
        data, _ = codegen.compile_image(index, dataclasses.replace(image, elf=dataclasses.replace(image.elf, mutation=None)))
    parsed = model_exec.parse(data)
    if isinstance(parsed, int) or not parsed.segments:
        return b""
    seg = parsed.segments[0]
    return data[seg.offset:seg.offset + seg.filesz]


# --- text of steps ------------------------------------------------------------------------------

def _arg_text(arg: Any) -> str:
    if isinstance(arg, Ref):
        off = arg.offset & U64
        if not off:
            return f"r{arg.result}"
        signed = off - (1 << 64) if off >> 63 else off
        return f"r{arg.result}{'+' if signed >= 0 else '-'}{abs(signed):#x}"
    return f"{arg:#x}" if isinstance(arg, int) and abs(arg) > 9 else str(arg)


def step_text(step: Step) -> str:
    head = f"r{step.result} = " if step.result is not None else ""
    args = ", ".join(_arg_text(a) for a in step.args)
    return f"{head}{step.op}({args})" if step.args or step.op not in ("fork", "vfork", "getpid", "getppid",
                                                                      "sched_yield", "observe") else f"{head}{step.op}"


class _StepText:
    """A step's text, formatted only when a message needs it (most steps pass unreported)."""
    __slots__ = ("step", "text")

    def __init__(self, step: Step) -> None:
        self.step, self.text = step, None

    def __str__(self) -> str:
        if self.text is None:
            self.text = step_text(self.step)
        return self.text


class _SyscallText:
    """"Syscall(op, args...)" as the checker expects it, formatted only for a report."""
    __slots__ = ("op", "regs", "shown")

    def __init__(self, op: str, regs: tuple[int, ...] | None, shown: int) -> None:
        self.op, self.regs, self.shown = op, regs, shown

    def __str__(self) -> str:
        regs = self.regs
        return f"Syscall({self.op}{'' if regs is None else ', ' + ', '.join(hex(r) for r in regs[:self.shown])})"


def _result_class(value: Any) -> str:
    if isinstance(value, Fault):
        return f"{Signal(value.signo).name}:{si_code_name(value.signo, value.si_code)}"
    if isinstance(value, Killed):
        return "killed"
    if isinstance(value, Blocks):
        return "blocks"
    if isinstance(value, int):
        if is_errno(value):
            try:
                return Errno(-as_signed(value)).name
            except ValueError:
                return f"errno{-as_signed(value)}"
        return "ok"
    return type(value).__name__


def _value_text(value: Any) -> str:
    if isinstance(value, int):
        if is_errno(value):
            return f"-{_result_class(value)}"
        return f"{value:#x}"
    if isinstance(value, Fault):
        return f"{Signal(value.signo).name} {si_code_name(value.signo, value.si_code)} at {value.si_addr:#x}"
    return str(value)


# --- views ---------------------------------------------------------------------------------------

def model_view(state: State, pid: int) -> tuple[list[tuple[int, int, int]], dict[int, bytes | None], set[int], set[int]]:
    """(ranges, digests, masked pages, image pages) of a process's address space as the model
    sees it. Ranges are coalesced by effective rights; digests only for readable pages holding
    non-zero bytes; masked: pages whose contents are kernel-owned."""
    sp = state.space_of(pid)
    ranges: list[tuple[int, int, int]] = []
    masked_runs: list[tuple[int, int]] = []
    image_runs: list[tuple[int, int]] = []
    task_pages = TASK_SIZE >> PAGE_SHIFT
    for s, e, attr in sp.pages.iter_runs(0, task_pages):
        rights = rights_of(attr)
        if is_masked(attr):
            masked_runs.append((s, e))
        if (attr >> 5) & 7 == 1:
            image_runs.append((s, e))
        start, end = s << PAGE_SHIFT, e << PAGE_SHIFT
        if ranges and ranges[-1][1] == start and ranges[-1][2] == rights:
            ranges[-1] = (ranges[-1][0], end, rights)
        else:
            ranges.append((start, end, rights))
    digests: dict[int, bytes | None] = {}
    for s, e, attr in sp.pages.iter_runs(0, task_pages):
        if not rights_of(attr):
            continue
        if attr & 0x10:
            src = state.shared.get(attr >> 16)
            pages = (p for p in src.pages if s <= p < e)
        else:
            src = sp.data
            pages = (p for p in src.pages if s <= p < e)
        for p in pages:
            d = page_digest(src.pages[p])
            if d is not None:
                digests[p << PAGE_SHIFT] = d
    masked = set()
    for s, e in masked_runs:
        if e - s <= 4096:
            masked.update(range(s, e))
    images = set()
    for s, e in image_runs:
        if e - s <= 4096:
            images.update(range(s, e))
    return ranges, digests, masked, images


def _page_rights(ranges: Iterable[tuple[int, int, int]], page_addr: int) -> int | None:
    for s, e, r in ranges:
        if s <= page_addr < e:
            return r
    return None


def _range_diffs(model_ranges: list, observed: list, limit: int = 8) -> list[tuple[int, int | None, int | None]]:
    """Pages (as runs) whose presence or rights differ: (address, model rights, observed rights)."""
    points = sorted({p for s, e, _ in model_ranges for p in (s, e)} | {p for s, e, _ in observed for p in (s, e)})
    out = []
    for a, b in zip(points, points[1:]):
        m, o = _page_rights(model_ranges, a), _page_rights(observed, a)
        if m != o:
            out.append((a, b, m, o))
            if len(out) >= limit:
                break
    return out


def _rights_cell(r: int | None) -> str:
    return "(absent)" if r is None else rights_str(r)


def side_by_side(model_ranges: list, observed_ranges: list, around: int | None = None,
                 content: list[tuple[int, str, str]] = ()) -> str:
    """Both address spaces, one row per run, marking rows that differ."""
    points = sorted({p for s, e, _ in model_ranges for p in (s, e)} | {p for s, e, _ in observed_ranges for p in (s, e)})
    rows = [f"{'range':<33} {'model':<9} {'observed':<9}"]
    for a, b in zip(points, points[1:]):
        m, o = _page_rights(model_ranges, a), _page_rights(observed_ranges, a)
        if m is None and o is None:
            continue
        mark = "  <-- differs" if m != o else ""
        if around is not None and not mark and not a - 0x10_0000 <= around < b + 0x10_0000 and len(points) > 24:
            continue
        rows.append(f"{a:#014x}-{b:#014x}   {_rights_cell(m):<9} {_rights_cell(o):<9}{mark}")
    for addr, m, o in content:
        rows.append(f"page {addr:#014x} contents: model {m}, observed {o}  <-- differs")
    return "\n".join(rows)


def _digest_text(d: bytes | None) -> str:
    return "zeros" if d is None else d.hex()[:12]


# --- the checker ---------------------------------------------------------------------------------

NEED, PAUSE = "need", "pause"
_EXEC_OK_MASK = ATTR_MAPPED | PROT_EXEC | ATTR_SIGBUS     # what an instruction fetch needs of a page
_EXEC_OK = ATTR_MAPPED | PROT_EXEC
_ZERO_PAGE = bytes(PAGE_SIZE)


class _Checker:
    def __init__(self, program: Program, build: Any, trace: Trace, profile: Profile,
                 raw_state_check: Callable | None) -> None:
        self.program, self.build, self.trace, self.profile = program, build, trace, profile
        self.raw_state_check = raw_state_check
        self.state: State | None = None
        self.gens: dict[int, Generator] = {}
        self.paths: dict[int, str] = {}
        self.coverage: set[str] = set()
        self.codemaps: dict[int, _CodeMap | None] = {}
        self.event_index = -1
        self.current_step: dict[int, Any] = {}   # pid -> its step's text (str or _StepText)
        self.last_view: dict[int, View] = {}

    # --- driver ---
    def run(self) -> Verdict:
        try:
            self._walk()
        except _Diverge as d:
            pid = d.pid
            return self._divergence(d, pid)
        except _Stop as s:
            return Verdict("inconclusive", None, str(s), frozenset(self.coverage))
        inconclusive = self.trace.inconclusive
        if inconclusive is not None:
            return Verdict("inconclusive", None, f"budget: {inconclusive.reason}", frozenset(self.coverage))
        return Verdict("pass", None, "every event allowed by the model", frozenset(self.coverage))

    def _divergence(self, d: _Diverge, pid: int | None) -> Verdict:
        process = self.paths.get(pid, f"pid {pid}") if pid is not None else "?"
        step = str(d.step or (self.current_step.get(pid, "") if pid is not None else ""))
        detail = d.detail
        if not detail and self.state is not None and pid is not None and pid in self.state.procs \
                and self.state.procs[pid].mm in self.state.spaces:
            ranges, _, _, _ = model_view(self.state, pid)
            if pid in self.last_view:
                detail = ("model's address space now vs the process's last observation:\n"
                          + side_by_side(ranges, [tuple(r) for r in self.last_view[pid].ranges]))
            else:
                detail = "model's address space (no observation of the process yet):\n" + side_by_side(ranges, ranges)
        op = step.split(" = ")[-1].strip().split("(")[0] if step else "?"
        sig = d.signature or (op, _class_of_text(d.expected), _class_of_text(d.observed))
        div = Divergence(self.event_index, process, step, d.expected, d.observed, detail, sig)
        return Verdict("divergence", div, f"{process}: {step}: expected {d.expected}, observed {d.observed}",
                       frozenset(self.coverage))

    def _walk(self) -> None:
        events = self.trace.events
        if not events:
            raise _Diverge("an Exec event for the first image", "an empty trace")
        for index, event in enumerate(events):
            self.event_index = index
            if isinstance(event, Inconclusive):
                return
            if self.state is None:
                if not isinstance(event, Exec):
                    raise _Diverge("an Exec event first", type(event).__name__)
                self._start(event)
                continue
            pid = event.pid
            gen = self.gens.get(pid)
            if gen is None:
                raise _Diverge("no event from this pid (not a live program process)", _event_text(event), pid=pid)
            proc = self.state.procs.get(pid)
            if proc is not None and proc.run == Run.vfork_blocked:
                raise _Diverge("no event while blocked in vfork until the child exits or execs",
                               _event_text(event), pid=pid)
            try:
                want = gen.send(None)
                while want[0] == PAUSE:
                    want = gen.send(None)
            except StopIteration:
                raise _Diverge("no more events from this process", _event_text(event), pid=pid) from None
            try:
                gen.send(event)
            except StopIteration:
                del self.gens[pid]
            if self.raw_state_check is not None:
                broken = self.raw_state_check(event, self.paths.get(pid, ""))
                if broken:
                    raise _Diverge("kernel invariants hold", f"violated: {broken}", pid=pid,
                                   signature=("invariant", str(broken), "violated"))
        # The trace ended: every process must have finished.
        for pid, gen in list(self.gens.items()):
            try:
                want = gen.send(None)
                while want[0] == PAUSE:
                    want = gen.send(None)
            except StopIteration:
                continue
            if self.trace.inconclusive is None:
                self.event_index = len(events)
                raise _Diverge(str(want[1]), "the trace ended", pid=pid)

    def _start(self, event: Exec) -> None:
        image = self.build.images[self.build.entry]
        try:
            result = model_exec.initial_state(self.profile, event.pid, image, event.layout)
        except ValueError as e:
            raise _Diverge("the first image loads", str(e), pid=event.pid) from None
        if not result.allowed:
            raise _Diverge(f"a layout the {self.profile.name} profile allows: {result.expected}",
                           str(event.layout), step="(exec of the first image)", pid=event.pid,
                           signature=("exec", "layout", "not-allowed"))
        self.coverage.add("exec.initial")
        self.state = result.state
        self.paths[event.pid] = "root"
        gen = self._process(event.pid, self._follow_execs(event.pid, self._run_image(event.pid, 0)))
        next(gen)
        self.gens[event.pid] = gen

    # --- process interpreters ---
    def _process(self, pid: int, body: Generator) -> Generator:
        yield (PAUSE,)
        try:
            yield from body
        except _Dies as dies:
            yield from self._die(pid, dies.fault, dies.where)

    def _event(self, pid: int, want: str) -> Generator:
        """Pause (the next silent work runs when this process's next event arrives), then take it."""
        yield (PAUSE,)
        event = yield (NEED, want)
        return event

    def _die(self, pid: int, fault: Fault, where: str) -> Generator:
        self.coverage.add(f"fault.{Signal(fault.signo).name}.{si_code_name(fault.signo, fault.si_code)}")
        want = f"Signal({Signal(fault.signo).name}, {si_code_name(fault.signo, fault.si_code)}, {fault.si_addr:#x}) at {where}"
        ev = yield from self._event(pid, want)
        if not isinstance(ev, SignalEvent) or (ev.signo, ev.si_code, ev.si_addr) != (fault.signo, fault.si_code, fault.si_addr):
            raise _Diverge(want, _event_text(ev), step=self.current_step.get(pid, where), pid=pid)
        status = wait_status_signaled(fault.signo)
        yield from self._expect_exit(pid, status, where)

    def _expect_exit(self, pid: int, status: int, where: str) -> Generator:
        ev = yield from self._event(pid, f"Exit(status {status:#06x})")
        if not isinstance(ev, Exit) or ev.status != status:
            raise _Diverge(f"Exit(status {status:#06x})", _event_text(ev), step=self.current_step.get(pid, where),
                           pid=pid)
        self.state = process.die(self.state, pid, status)

    def _run_image(self, pid: int, index: int) -> Generator:
        if index not in self.codemaps:
            self.codemaps[index] = _code_map(index, self.program.images[index], self.build)
        proc = self.state.procs[pid]
        image_bytes = self.build.images[self.build.info[index].path]
        entry = model_exec.entry_point(image_bytes, proc.load_bias)
        info = self.build.info[index]
        bias = proc.load_bias if info.etype == "dyn" else 0
        if entry != info.entry + bias:
            fault = memory.access_fault(self.state, pid, entry, 1, memory.EXEC)
            if fault is not None:
                raise _Dies(fault, "the image's entry point")
            raise _Stop("the image's entry point is not the generated code's")
        return (yield from self._run_list(pid, index, (), self.program.images[index].steps, None))

    def _follow_execs(self, pid: int, body: Generator) -> Generator:
        """Run a process's code, then each image it execs into, in a loop: a program may exec
        itself forever (the backend's budget ends it), which recursion could not follow."""
        outcome = yield from body
        while isinstance(outcome, _ExecInto):
            outcome = yield from self._run_image(pid, outcome.image)

    def _run_list(self, pid: int, index: int, base: tuple, steps: tuple[Step, ...],
                  pending_store: tuple[int, int] | None) -> Generator:
        if pending_store is not None:
            self._user_store(pid, pending_store[0], pending_store[1], "the fork's result store")
        for i, step in enumerate(steps):
            path = base + (i,)
            self.current_step[pid] = _StepText(step)
            done = yield from self._step(pid, index, path, step)
            if done:
                return done
        # A list that runs off its end does exit_group(0).
        self.current_step[pid] = "exit_group(0) (end of list)"
        code = self.codemaps[index].steps[base + ("tail",)]
        self._fetch_code(pid, index, code.start, code.sys_end or code.end)
        self.coverage.add("exit_group.end-of-list")
        yield from self._expect_exit(pid, 0, "exit_group(0) (end of list)")

    # --- memory the code touches ---
    def _bias(self, pid: int, index: int) -> int:
        return self.state.procs[pid].load_bias if self.build.info[index].etype == "dyn" else 0

    def _slot(self, pid: int, index: int, n: int) -> int:
        return (self.build.info[index].table_addr + self._bias(pid, index) + 8 * n) & U64

    def _user_load(self, pid: int, addr: int, size: int, where: str) -> int:
        result = memory.load(self.state, pid, addr, size)
        self.state = result.state
        if isinstance(result.outcome, Fault):
            raise _Dies(result.outcome, where)
        return result.outcome.value

    def _user_store(self, pid: int, addr: int, value: int, where: str) -> None:
        result = memory.store(self.state, pid, addr, value & U64)
        self.state = result.state
        if isinstance(result.outcome, Fault):
            raise _Dies(result.outcome, where)
        self.state = result.state

    def _push(self, pid: int, words: list[int], where: str) -> None:
        """The code pushes 8-byte words below the stack pointer, which the generated code never
        moves (it stays at the exec's initial value): [sp-8] = words[0], [sp-16] = words[1] ..."""
        sp = self.state.procs[pid].entry_sp
        for k, value in enumerate(words, start=1):
            self._user_store(pid, (sp - 8 * k) & U64, value, where)

    def _path_addr(self, index: int, k: int) -> int:
        """Link-time address of the NUL-terminated "i{k}" the code passes to execve."""
        data = self.build.images[self.build.info[index].path]
        parsed = model_exec.parse(data)
        if isinstance(parsed, int):
            raise _Stop(f"image {index} cannot be parsed")
        seg = [s for s in parsed.segments if s.flags & 2][-1]
        blob = data[seg.offset:seg.offset + seg.filesz]
        want = _image_path(k).encode() + b"\0"
        first = blob.find(b"forkspec") + 8          # the data starts with this marker
        at = first
        while first >= 8:
            at = blob.find(want, at)
            if at < 0:
                break
            if at == first or blob[at - 1] == 0:
                return seg.vaddr + at
            at += 1
        raise _Stop(f"cannot find the path of image {k} in image {index}'s data")

    def _arg(self, pid: int, index: int, arg: Any, where: str) -> int:
        if isinstance(arg, Ref):
            return (self._user_load(pid, self._slot(pid, index, arg.result), 8, where) + arg.offset) & U64
        return arg & U64

    def _fetch_code(self, pid: int, index: int, lo: int, hi: int) -> None:
        """Instruction fetches of [lo, hi) (link-time addresses): fault, or stop if the bytes
        there are no longer the generated code."""
        cm = self.codemaps[index]
        bias = self._bias(pid, index)
        lo_a, hi_a = lo + bias, hi + bias
        page = lo_a >> PAGE_SHIFT
        sp = self.state.space_of(pid)
        while (page << PAGE_SHIFT) < hi_a:
            attr = sp.pages.get(page)
            at = max(lo_a, page << PAGE_SHIFT)
            if attr & _EXEC_OK_MASK != _EXEC_OK:      # the common case (mapped, PROT_EXEC, no SIGBUS) skips this
                fault = memory._fault_for(attr, memory.EXEC, at)
                if fault is not None:
                    raise _Dies(fault, "an instruction fetch of the step's code")
                if not can_exec(attr):
                    raise _Dies(Fault(Signal.SIGSEGV, SiCode.SEGV_ACCERR, at), "an instruction fetch")
            stop = min(hi_a, (page + 1) << PAGE_SHIFT)
            contents = (sp.data.page(page) if not attr & ATTR_SHARED
                        else memory.page_contents(self.state, pid, page)) or _ZERO_PAGE
            want = cm.text[at - bias - cm.text_vaddr:stop - bias - cm.text_vaddr]
            have = contents[at & (PAGE_SIZE - 1):(at & (PAGE_SIZE - 1)) + (stop - at)]
            if want != have:
                raise _Stop(f"the program rewrote its own code at {at:#x}; the model runs no code")
            page += 1

    # --- one step ---
    def _step(self, pid: int, index: int, path: tuple, step: Step) -> Generator:
        """Run one step; returns True when the process's list ends here (exit, exec, fork)."""
        code = self.codemaps[index].steps[path]
        where = _StepText(step)
        split = code.sys_end if code.sys_end is not None else code.end
        self._fetch_code(pid, index, code.start, split)
        op = step.op
        if op == "store":
            addr = self._arg(pid, index, step.args[0], where)
            value = self._arg(pid, index, step.args[1], where)
            self._user_store(pid, addr, value, where)
            self.coverage.add("store.ok")
            return False
        if op == "fetch":
            addr = self._arg(pid, index, step.args[0], where)
            self._push(pid, [(code.end + self._bias(pid, index)) & U64], where)     # call's return address
            result = memory.fetch(self.state, pid, addr)
            self.state = result.state
            self.coverage.add(result.clause)
            if isinstance(result.outcome, Fault):
                raise _Dies(result.outcome, where)
            if result.outcome.value != memory.RET_OPCODE or result.outcome.masked:
                raise _Stop(f"fetch({addr:#x}) runs code other than `ret`; the model runs no code")
            self._fetch_code(pid, index, split, code.end)
            return False
        if op == "load":
            addr = self._arg(pid, index, step.args[0], where)
            value = self._user_load(pid, addr, 8, where)
            masked = memory.load(self.state, pid, addr, 8).outcome.masked
            if step.result is not None:
                self._user_store(pid, self._slot(pid, index, step.result), value, where)
            ev = yield from self._event(pid, f"Report(loaded, {addr:#x}, {value:#x})")
            if not isinstance(ev, Report) or ev.kind != ReportKind.loaded or len(ev.values) != 2 \
                    or ev.values[0] != addr or (ev.values[1] != value and not masked):
                raise _Diverge(f"Report(loaded, {addr:#x}, {value:#x})", _event_text(ev), step=where, pid=pid,
                               signature=("load", "value", "wrong-value"))
            if masked and step.result is not None:
                self._user_store(pid, self._slot(pid, index, step.result), ev.values[1], where)
            self.coverage.add("load.masked" if masked else "load.ok")
            return False
        if op == "observe":
            tag = self._observe_tag(index, path)
            ev = yield from self._event(pid, f"Report(observe, {tag})")
            if not isinstance(ev, Report) or ev.kind != ReportKind.observe or tuple(ev.values[:1]) != (tag,):
                raise _Diverge(f"Report(observe, {tag})", _event_text(ev), step=where, pid=pid)
            ev = yield from self._event(pid, "Observation")
            if not isinstance(ev, Observation):
                raise _Diverge("Observation", _event_text(ev), step=where, pid=pid)
            self._compare_view(pid, ev.view, where)
            self.coverage.add("observe")
            return False
        if op in EXIT_OPS:
            code_arg = self._arg(pid, index, step.args[0], where)
            status = ((code_arg & 0xFF) << 8)
            self.coverage.add(f"{op}.ok")
            yield from self._expect_exit(pid, status, where)
            return True
        return (yield from self._syscall_step(pid, index, path, step, code, where))

    def _observe_tag(self, index: int, path: tuple) -> int:
        key = ("tags", index)
        tags = self.codemaps.get(key)    # type: ignore[call-overload]
        if tags is None:
            tags = {}
            counter = [0]

            def walk(steps: tuple[Step, ...], base: tuple) -> None:
                for i, s in enumerate(steps):
                    if s.op == "observe":
                        tags[base + (i,)] = counter[0]
                        counter[0] += 1
                    if s.child is not None:
                        walk(s.child, base + (i, "c"))
                        walk(s.parent or (), base + (i, "p"))
            walk(self.program.images[index].steps, ())
            self.codemaps[key] = tags   # type: ignore[index]
        return tags[path]

    def _syscall_step(self, pid: int, index: int, path: tuple, step: Step, code: _Code, where: str) -> Generator:
        op = step.op
        nr = int(Nr[op])
        args = [self._arg(pid, index, a, where) for a in step.args]
        if op == "mmap":
            regs = (args[0], args[1], args[2], args[3], U64, 0)
        elif op == "wait4":
            regs = (args[0], self._slot(pid, index, 0), args[1], 0, 0, 0)
        elif op in ("fork", "vfork"):
            regs = (0,) * 6
        elif op == "execve":
            regs = None
        else:
            regs = tuple(args) + (0,) * (6 - len(args))
        if op == "execve" and self.build.info[index].etype == "dyn":
            # position-independent argv: push 0, push &"i{k}" (codegen's "dyn" execve)
            self._push(pid, [0, (self._path_addr(index, step.args[0]) + self._bias(pid, index)) & U64], where)
        want_text = _SyscallText(op, regs, len(step.args) or 1)
        ev = yield from self._event(pid, want_text)
        if op == "execve":
            return (yield from self._execve(pid, index, path, step, code, where, ev))
        if op == "write" and isinstance(ev, Output):
            output = ev
            ev = yield from self._event(pid, want_text)
        else:
            output = None
        if not isinstance(ev, Syscall) or ev.nr != nr:
            raise _Diverge(str(want_text), _event_text(ev), step=where, pid=pid)
        if regs is not None and tuple(ev.args[:6]) != tuple(regs):
            raise _Diverge(f"arguments {', '.join(hex(r) for r in regs)}",
                           f"arguments {', '.join(hex(a) for a in ev.args)}", step=where, pid=pid,
                           signature=(op, "args", "wrong-args"))
        observed = ev.result & U64
        if op == "clone" and (args[0] & U64) not in (process.CLONE_FORK_FLAGS, process.CLONE_VFORK_FLAGS):
            raise _Stop(f"clone flags {args[0]:#x} are not fork-like (out of scope)")
        result = model_system.syscall(self.state, pid, nr, tuple(regs), observed)
        self.coverage.add(result.clause)
        outcome = result.outcome
        if op == "write":
            written = outcome
            outcome = written.result
            self._check_output(pid, output, written, where)
        if isinstance(outcome, Blocks):
            raise _Diverge(f"{op} to block ({outcome.reason})", _value_text(observed), step=where, pid=pid,
                           signature=(op, "blocks", _result_class(observed)))
        if isinstance(outcome, OutOfScope):
            raise _Stop(outcome.reason)
        if outcome != observed or not result.allowed:
            expected = _value_text(outcome) if outcome != observed else f"{result.expected or 'something else'}"
            raise _Diverge(expected, _value_text(observed), step=where, pid=pid,
                           signature=(op, _result_class(outcome) if outcome != observed else "not-allowed",
                                      _result_class(observed)))
        self.state = result.state
        if op in FORK_OPS and not is_errno(observed):
            child = observed
            self.paths[child] = self.state.procs[child].path
            slot = (self._slot(pid, index, step.result), 0) if step.result is not None else None
            child_gen = self._process(child, self._follow_execs(
                child, self._run_list(child, index, path + ("c",), step.child or (), slot)))
            next(child_gen)
            self.gens[child] = child_gen
            pending = (self._slot(pid, index, step.result), child) if step.result is not None else None
            yield from self._post_syscall(pid, index, code)
            return (yield from self._run_list(pid, index, path + ("p",), step.parent or (), pending)) or True
        if op in FORK_OPS:
            # The fork failed: the code takes the parent's branch (rax != 0).
            pending = (self._slot(pid, index, step.result), observed) if step.result is not None else None
            yield from self._post_syscall(pid, index, code)
            return (yield from self._run_list(pid, index, path + ("p",), step.parent or (), pending)) or True
        yield from self._post_syscall(pid, index, code)
        if step.result is not None:
            self._user_store(pid, self._slot(pid, index, step.result), observed, where)
        if op == "wait4" and as_signed(observed) > 0:
            status = self._user_load(pid, self._slot(pid, index, 0), 4, where)
            ev = yield from self._event(pid, f"Report(wstatus, {status:#x})")
            if not isinstance(ev, Report) or ev.kind != ReportKind.wstatus or tuple(ev.values[:1]) != (status,):
                raise _Diverge(f"Report(wstatus, {status:#x})", _event_text(ev), step=where, pid=pid,
                               signature=("wait4", "status", "wrong-status"))
        return False

    def _post_syscall(self, pid: int, index: int, code: _Code) -> Generator:
        """The code after the syscall instruction runs when the process runs again (lazily)."""
        yield (PAUSE,)
        if code.sys_end is not None:
            self._fetch_code(pid, index, code.sys_end, code.end)

    def _check_output(self, pid: int, output: Output | None, written: Any, where: str) -> None:
        if written.result > 0 and not is_errno(written.result):
            if output is None or output.data is None:
                raise _Diverge(f"Output of {written.result} bytes", "no Output event", step=where, pid=pid,
                               signature=("write", "output", "missing"))
            data = bytearray(output.data)
            for off, n in written.masked:
                data[off:off + n] = written.data[off:off + n]
            if bytes(data) != written.data:
                raise _Diverge(f"Output {written.data[:64]!r}", f"Output {output.data[:64]!r}", step=where, pid=pid,
                               signature=("write", "data", "wrong-data"))
        elif output is not None and output.data:
            raise _Diverge("no Output", f"Output {output.data[:64]!r}", step=where, pid=pid,
                           signature=("write", "no-output", "output"))

    def _execve(self, pid: int, index: int, path: tuple, step: Step, code: _Code, where: str, ev: Any) -> Generator:
        k = step.args[0]
        target = self.build.images.get(_image_path(k)) if k < len(self.program.images) else None
        args = model_exec.ExecveArgs(pid, k, target)
        first = model_exec.execve(self.state, args, None)
        self.coverage.add(first.clause)
        if isinstance(first.outcome, int) and first.outcome != 0:
            if not isinstance(ev, Syscall) or ev.nr != Nr.execve:
                raise _Diverge(f"Syscall(execve) = {_value_text(first.outcome)}", _event_text(ev), step=where, pid=pid)
            if ev.result & U64 != first.outcome:
                raise _Diverge(_value_text(first.outcome), _value_text(ev.result & U64), step=where, pid=pid,
                               signature=("execve", _result_class(first.outcome), _result_class(ev.result & U64)))
            yield from self._post_syscall(pid, index, code)
            if step.result is not None:
                self._user_store(pid, self._slot(pid, index, step.result), first.outcome, where)
            return False
        # Past the point of no return: either Syscall(0) + Exec, or killed.
        if isinstance(ev, SignalEvent):
            # Killed after the PONR: the model must agree the image cannot load, for any layout.
            probe = model_exec.parse(target)
            layout_free = model_exec.load_image(probe, 0 if probe.etype == 2 else _PROBE_BIAS,
                                                _empty_pages(), _empty_data()) if not isinstance(probe, int) else None
            if not isinstance(layout_free, str):
                raise _Diverge("Syscall(execve) = 0 then Exec", _event_text(ev), step=where, pid=pid,
                               signature=("execve", "ok", "killed"))
            if (ev.signo, ev.si_code, ev.si_addr) != (Signal.SIGSEGV, SiCode.SI_KERNEL, 0):
                raise _Diverge("Signal(SIGSEGV, SI_KERNEL, 0x0)", _event_text(ev), step=where, pid=pid)
            self.coverage.add("execve.killed")
            yield from self._expect_exit(pid, wait_status_signaled(Signal.SIGSEGV), where)
            return True
        if not isinstance(ev, Syscall) or ev.nr != Nr.execve or ev.result != 0:
            raise _Diverge("Syscall(execve) = 0", _event_text(ev), step=where, pid=pid)
        ev2 = yield from self._event(pid, "Exec")
        if not isinstance(ev2, Exec):
            raise _Diverge("Exec", _event_text(ev2), step=where, pid=pid)
        result = model_exec.execve(self.state, args, ev2.layout)
        self.coverage.add(result.clause)
        if isinstance(result.outcome, Killed):
            raise _Diverge(f"killed after the point of no return ({result.outcome.reason})", "Exec",
                           step=where, pid=pid, signature=("execve", "killed", "ok"))
        if not result.allowed:
            raise _Diverge(f"a layout the profile allows: {result.expected}", str(ev2.layout), step=where, pid=pid,
                           signature=("execve", "layout", "not-allowed"))
        self.state = result.state
        return _ExecInto(k)         # _follow_execs runs the new image: no recursion per exec

    def _compare_view(self, pid: int, view: View, where: str) -> None:
        self.last_view[pid] = view
        ranges, digests, masked, images = model_view(self.state, pid)
        observed = [tuple(r) for r in view.ranges]
        diffs = _range_diffs(ranges, observed)
        if diffs:
            a, b, m, o = diffs[0]
            raise _Diverge(f"[{a:#x}, {b:#x}) {_rights_cell(m)}", f"[{a:#x}, {b:#x}) {_rights_cell(o)}",
                           step=where, pid=pid, detail=side_by_side(ranges, observed, around=a),
                           signature=("observe", "rights" if m is not None and o is not None else "presence",
                                      "differs"))
        obs_digests = dict(view.digests)
        pages = self.state.space_of(pid).pages
        bad: list[tuple[int, str, str]] = []
        for addr in sorted(set(digests) | set(obs_digests)):
            m, o = digests.get(addr), obs_digests.get(addr)
            if m == o:
                continue
            attr = pages.get(addr >> PAGE_SHIFT)
            if is_masked(attr):
                continue     # kernel-owned contents
            if o is None and (attr >> 5) & 7 == Kind.image:
                continue     # a file page not yet faulted in reads as zero in pagemap-based views
            bad.append((addr, _digest_text(m), _digest_text(o)))
        if bad:
            addr, m, o = bad[0]
            raise _Diverge(f"page {addr:#x} contents {m}", f"{o}", step=where, pid=pid,
                           detail=side_by_side(ranges, observed, around=addr, content=bad[:8]),
                           signature=("observe", "contents", "differs"))


_PROBE_BIAS = 0x5555_5555_4000


def _empty_pages() -> Any:
    from ..model.space import empty_pages
    return empty_pages()


def _empty_data() -> Any:
    from ..model.space import empty_data
    return empty_data()


def _image_path(k: int) -> str:
    from ..specs.trace import image_path
    return image_path(k)


def _class_of_text(text: str) -> str:
    """A coarse class of an expected/observed text, for de-duplicating divergences."""
    for e in Errno:
        if e.name in text:
            return e.name
    for prefix, name in (("Signal(11", "SIGSEGV"), ("Signal(SIGSEGV", "SIGSEGV"), ("Signal(7", "SIGBUS"),
                         ("Signal(SIGBUS", "SIGBUS"), ("Signal(5", "SIGTRAP"), ("Signal(", "signal")):
        if text.startswith(prefix):
            return name
    for s in ("SIGSEGV", "SIGBUS", "SIGTRAP", "Exit", "Report", "Observation", "Output", "Syscall", "Exec",
              "blocks", "layout", "trace ended"):
        if s in text:
            return s
    return "value"


def _event_text(event: Any) -> str:
    if isinstance(event, Syscall):
        try:
            name = Nr(event.nr).name
        except ValueError:
            name = str(event.nr)
        res = event.result
        return f"Syscall({name}) = {res:#x}" if res >= 0 else f"Syscall({name}) = -{_result_class(res & U64)}"
    if isinstance(event, SignalEvent):
        return f"Signal({signal_name(event.signo)}, {si_code_name(event.signo, event.si_code)}, {event.si_addr:#x})"
    if isinstance(event, Exit):
        return f"Exit(status {event.status:#06x})"
    if isinstance(event, Report):
        return f"Report({event.kind}, {', '.join(hex(v) for v in event.values)})"
    if isinstance(event, Output):
        return f"Output(fd {event.fd}, {event.data[:32]!r})"
    if isinstance(event, Observation):
        return "Observation"
    if isinstance(event, Exec):
        return "Exec"
    return type(event).__name__


def check(program: Program, build: Any, trace: Trace, profile: Profile,
          raw_state_check: Callable | None = None) -> Verdict:
    """Walk `trace` with the model; the first divergence, or pass, or inconclusive.

    `raw_state_check(event, process_path)`, if given, is called after every event; a truthy
    return (the violated invariants) is a divergence."""
    return _Checker(program, build, trace, profile, raw_state_check).run()

