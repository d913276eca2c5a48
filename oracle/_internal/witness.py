"""A failed proof becomes a runnable program (STYLE.md "Where forkspec should do better").

`program_for(model, obligation, ctx)` turns the Z3 model of a failed obligation into program text
(oracle/encoding.py's format) that `forkspec replay` runs on impl and the model: from a fresh
process it builds the counterexample's before-state, then performs the failing step with the
counterexample's arguments, then takes an observation. Where the state or the step cannot be
built by user code it returns a `# no program: <why>` line instead.

What is read from the model (level 2's before-state, DESIGN.md "Proofs"):
- per live process: its VMAs as runs of pages with prot and private/shared, the pages that hold
  a frame with the frame's word, the break;
- only a bounded neighbourhood: the model's functions are finite if-then-else chains over a few
  constants, so between consecutive constants ("breakpoints") a map is constant. Every interval
  between breakpoints is evaluated at both ends, and split by bisection where the ends differ.

How the state is built:
- a run is `mmap(start, len, prot, private|shared|anon|fixed)`; a page holding a frame gets
  `store(page, word)` (8 bytes at the page's first byte: level 2 keeps one word per frame), the
  run first mapped writable and `mprotect`ed to its prot afterwards;
- addresses are the counterexample's own unless they collide with what a fresh process already
  maps (its image low, stack/TLS/[vdso] high): then every address moves by one 2 MiB-aligned
  offset into [0x1000_0000_0000, 0x7FF0_0000_0000), said in a comment. A step whose range does
  not fit in user space (or is unaligned) fails before touching anything and keeps its
  arguments; a munmap/mprotect/mmap range too wide to move is cut to the runs inside it;
- for brk, every address is relative to the initial break (`r1 = brk(0)`), the break is moved to
  the counterexample's, the heap mapping that move made is unmapped, and only the runs brk looks
  at ([heap start, new top + a page)) are built;
- a second live process: a running parent of the caller is built first and forks the caller,
  then waits for it (deterministic: a parent blocked in wait4 keeps its memory); a running child
  of the caller is built first and forked, and the parent adjusts its own memory and steps (the
  child runs after that only if the scheduler lets the parent go first: impl does, on Linux it
  is a race — said in a comment); a zombie child comes from `vfork` + `exit(code)`; a vfork
  parent lending its memory to the caller comes from `vfork`. Frames the two processes share
  must sit at the same page in both (fork shares them there); pages where the caller's frame
  differs from the other's are mapped afresh after the fork. Any other shape (unrelated
  processes, three processes) is an approximation: the caller is built alone, and the first note
  says what was left out. A frame shared at different pages cannot come from an obligation any
  more (the invariant inv_shared_frame_same_page excludes it); _check_sharing stays as a guard;
- the failing step: the syscall or access with the concretised arguments; wait4 with WNOHANG
  (level 2's wait4 answers at once); then `observe` (a fork's continuations observe in both);
  after a munmap or mprotect, a write probe at the range's first page (see _tail).

Not expressible (reported as the reason): execve's segments (a program picks images, not
segment lists), a PTE outside any VMA in the caller (an invariant violation: no user code makes
it), a break next to the stack, more than MAX_STEPS steps. Not reproduced, with a note: MAP_SHARED
pages without a frame (mmap populates shared mappings), non-anonymous mmap flags, a non-zero mmap
offset, an unaligned access, a wait status no exit(code) gives, the fork strategy (replayed
program text runs impl's default eager fork).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable

import z3

from ...model import design as d
from ...model.logic import to_python
from ...specs.abi import (
    MAP_ANONYMOUS,
    MAP_FIXED,
    MAP_FIXED_NOREPLACE,
    MAP_PRIVATE,
    MAP_SHARED,
    PAGE_SHIFT,
    PAGE_SIZE,
    PROT_READ,
    PROT_WRITE,
    TASK_SIZE,
    WNOHANG,
)
from ..encoding import dumps
from ..program import Image, Program, Ref, Step

MAX_STEPS = 200             # a longer program would not be read; the counterexample is then reported only
MAX_FRAME_PAGES = 64        # pages holding frames in one interval before we give up (not a small state)
MAX_BISECT = 4096           # model evaluations spent splitting intervals whose ends differ
# Where a fresh process has nothing mapped on both backends: above its image and heap (levitate
# and Linux load it at 0x40_0000), below the stack, TLS, [vdso] and Linux's top-down mmap base
# (levitate: 0x7FFF_FFF7_0000 and up; Linux without randomisation: about 0x7FFF_F7FF_F000 and up).
SAFE_LO, SAFE_HI = 0x1000_0000, 0x7FF0_0000_0000
RELOCATE_LO = 0x1000_0000_0000     # levitate's mmap region start: where moved pages go
RELOCATE_ALIGN = 0x20_0000         # moves keep 2 MiB alignment classes (placement, huge-page rules)

NO_PROGRAM = "# no program: "


class NotExpressible(Exception):
    """The counterexample has no program; the message says why (internal to this module)."""


class ShapeNotExpressible(NotExpressible):
    """The processes other than the caller cannot be built; the caller alone still can."""


# --- the counterexample's state as plain data ---------------------------------------------------

@dataclass(frozen=True)
class Interval:
    """Pages [lo, hi) (vpns) with one VMA attribute triple and one PTE."""
    lo: int
    hi: int
    found: bool
    prot: int
    shared: bool
    frame: int          # the PTE's frame, meaningful when mapped
    mapped: bool        # the PTE holds a frame


@dataclass(frozen=True)
class ProcView:
    slot: int
    pid: int
    state: int
    parent: int
    vfork_parent: int
    status: int
    brk_start: int
    brk: int
    intervals: tuple[Interval, ...]     # inside a VMA or holding a frame, sorted, disjoint
    words: dict = field(default_factory=dict)   # frame -> word
    problem: str = ""                   # why this process's memory cannot be built ("" if it can)

    def describe(self) -> str:
        state = {d.RUNNING: "running", d.BLOCKED: "blocked", d.ZOMBIE: "zombie"}.get(self.state, str(self.state))
        return f"slot {self.slot} (pid {self.pid:#x}, {state}, parent {self.parent:#x})"


@dataclass(frozen=True)
class StepSpec:
    """The failing step, concretised: the transition's name, the caller's pid, its arguments."""
    transition: str
    pid: int
    args: dict


def _ev(model: z3.ModelRef, x: Any) -> Any:
    if isinstance(x, z3.ExprRef):
        return to_python(model.eval(x, model_completion=True))
    return x


def _numerals(model: z3.ModelRef) -> set[int]:
    """Every bit-vector constant in the model, including inside a function's else-expression."""
    seen: set[int] = set()
    todo: list[Any] = []
    for decl in model.decls():
        val = model[decl]
        if isinstance(val, z3.FuncInterp):
            for entry in val.as_list():
                todo.extend(entry if isinstance(entry, list) else [entry])
        else:
            todo.append(val)
    visited = 0
    while todo and visited < 100_000:
        x = todo.pop()
        visited += 1
        if isinstance(x, z3.BitVecNumRef):
            seen.add(x.as_long())
        elif isinstance(x, z3.ExprRef):
            todo.extend(x.children())
    return seen


def _page_value(model: z3.ModelRef, p: d.Proc, k: int) -> tuple:
    found, prot, shared = (_ev(model, x) for x in d.find_vma(p.vmas, k))
    frame, flags = (_ev(model, x) for x in p.pt.get(k))
    mapped = flags != 0
    return (bool(found), prot if found else 0, bool(shared) if found else False, frame if mapped else 0, mapped)


def _intervals(model: z3.ModelRef, p: d.Proc, breakpoints: list[int], budget: list[int]) -> tuple[Interval, ...]:
    """The non-empty intervals of p's VMA and PTE maps over user space (see the module docstring)."""
    out: list[Interval] = []
    cuts = sorted({b for b in breakpoints if d.FIRST_USER_VPN <= b < d.END_USER_VPN}
                  | {d.FIRST_USER_VPN, d.END_USER_VPN})
    for lo, hi in zip(cuts, cuts[1:]):
        while lo < hi:
            first = _page_value(model, p, lo)
            end = hi
            if hi - lo > 1 and _page_value(model, p, hi - 1) != first:
                # The ends differ: find the first page that differs from lo by bisection.
                a, b = lo, hi - 1              # value(a) == first, value(b) != first
                while b - a > 1 and budget[0] > 0:
                    budget[0] -= 1
                    mid = (a + b) // 2
                    if _page_value(model, p, mid) == first:
                        a = mid
                    else:
                        b = mid
                end = b
            found, prot, shared, frame, mapped = first
            if found or mapped:
                if mapped and end - lo > MAX_FRAME_PAGES:
                    raise NotExpressible(f"{end - lo} pages from {lo << PAGE_SHIFT:#x} hold frames; "
                                         f"more than {MAX_FRAME_PAGES} in one run is not a small state")
                if mapped and not found:
                    raise NotExpressible(f"page {lo << PAGE_SHIFT:#x} holds frame {frame:#x} outside any VMA "
                                         "(an invariant violation: no user code makes it)")
                out.append(Interval(lo, end, found, prot, shared, frame, mapped))
            lo = end
    return tuple(out)


def read_state(model: z3.ModelRef, s: d.KState, extra: set[int]) -> list[ProcView]:
    """The live processes of the before-state, each with its intervals and frame words."""
    nums = _numerals(model) | extra
    breakpoints: set[int] = set()
    for n in nums:
        for v in (n, n >> PAGE_SHIFT, ((n + PAGE_SIZE - 1) >> PAGE_SHIFT)):
            breakpoints.update((v, v + 1))
    budget = [MAX_BISECT]
    views = []
    for slot, p in enumerate(s.procs):
        state = _ev(model, p.state)
        if state == d.FREE:
            continue
        try:
            intervals, problem = _intervals(model, p, sorted(breakpoints), budget), ""
        except NotExpressible as why:
            intervals, problem = (), str(why)
        words = {iv.frame: _ev(model, s.frames.get(iv.frame)[2]) for iv in intervals if iv.mapped}
        views.append(ProcView(slot, _ev(model, p.pid), state, _ev(model, p.parent), _ev(model, p.vfork_parent),
                              _ev(model, p.status), _ev(model, p.brk_start), _ev(model, p.brk), intervals, words,
                              problem))
    return views


# --- which step failed -----------------------------------------------------------------------------

def step_spec(model: z3.ModelRef, name: str, ctx: Any) -> StepSpec:
    """The failing step of obligation `name` (preservation, lemma or refinement)."""
    transition = name.split("-")[0]
    if transition not in _STEP_BUILDERS:
        raise NotExpressible(f"obligation {name!r} is not about one syscall or memory access step")
    if "args" in ctx.args and dataclasses.is_dataclass(ctx.args["args"]):
        a = ctx.args["args"]
        values = {f.name: _ev(model, getattr(a, f.name)) for f in dataclasses.fields(a) if f.name != "segments"}
        choice = ctx.args.get("choice")
        if choice is not None:
            values.update({f"choice.{f}": _ev(model, getattr(choice, f)) for f in ("pid", "frame", "addr")})
        return StepSpec(transition, values.pop("pid"), values)
    # Refinement obligations (model/refinement): named arguments; the caller is the one the shape
    # label names ("...-by-root", "...-by-other"), else the one process of the memory obligations.
    from ...model.refinement.relation import OTHER, PID, ROOT
    values = {k: _ev(model, v) for k, v in ctx.args.items()
              if not k.startswith("outcome") and isinstance(v, (int, z3.ExprRef))}
    pid = OTHER if "-by-other" in name else ROOT if "-by-root" in name else PID
    if transition == "exit" and "code" in values:
        values["status"] = (values.pop("code") & 0xFF) << 8
    return StepSpec(transition, pid, values)


# --- building the program ---------------------------------------------------------------------------

class _Builder:
    """Steps in the order a process runs them, addresses through `addr()` (relocated or relative)."""

    def __init__(self, base: Ref | None = None, origin: int = 0, delta: int = 0) -> None:
        # With a base (the initial break, r1): addresses are base + (x - origin). Without: x + delta.
        self.base, self.origin, self.delta = base, origin, delta
        self.next_result = base.result + 1 if base is not None else 1

    def addr(self, x: int) -> int | Ref:
        if self.base is not None:
            return Ref(self.base.result, x - self.origin)
        return (x + self.delta) & ((1 << 64) - 1)

    def result(self) -> int:
        n = self.next_result
        self.next_result += 1
        return n


def _mmap_flags(shared: bool) -> int:
    return (MAP_SHARED if shared else MAP_PRIVATE) | MAP_ANONYMOUS | MAP_FIXED


def _same_attrs(a: Interval | None, b: Interval | None) -> bool:
    if a is None or b is None:
        return a is b
    return (a.found, a.prot, a.shared) == (b.found, b.prot, b.shared)


def _piece(ivs: tuple[Interval, ...], lo: int, hi: int) -> Interval | None:
    for iv in ivs:
        if iv.lo <= lo and hi <= iv.hi:
            return iv
    return None


def adjust(b: _Builder, have: tuple[Interval, ...], want: ProcView) -> list[Step]:
    """Steps turning a process whose memory is `have` (inherited, frames shared with it) into
    `want`. A page keeps its inherited frame only where `want` maps the same frame at that page."""
    cuts = sorted({x for iv in have + want.intervals for x in (iv.lo, iv.hi)})
    actions: list[tuple[str, int, int, Interval | None]] = []    # (action, lo, hi, wanted interval)
    for lo, hi in zip(cuts, cuts[1:]):
        h, w = _piece(have, lo, hi), _piece(want.intervals, lo, hi)
        if w is None or not w.found:
            action = "unmap" if h is not None and h.found else "none"
        elif h is not None and h.found and h.mapped == w.mapped and (not w.mapped or h.frame == w.frame):
            if h.shared != w.shared:
                action = "remap"
            else:
                action = "none" if h.prot == w.prot else "protect"
        else:
            action = "remap"
        if actions and actions[-1][0] == action and actions[-1][2] == lo and action != "none" \
                and _same_attrs(actions[-1][3], w) and not (w is not None and w.mapped) \
                and not (actions[-1][3] is not None and actions[-1][3].mapped):
            actions[-1] = (action, actions[-1][1], hi, w)
        else:
            actions.append((action, lo, hi, w))
    steps: list[Step] = []
    for action, lo, hi, w in actions:
        start, length = b.addr(lo << PAGE_SHIFT), (hi - lo) << PAGE_SHIFT
        if action == "unmap":
            steps.append(Step("munmap", (start, length)))
        elif action == "protect":
            steps.append(Step("mprotect", (start, length, w.prot)))
        elif action == "remap":
            writable = w.prot | PROT_READ | PROT_WRITE if w.mapped else w.prot
            steps.append(Step("mmap", (start, length, writable, _mmap_flags(w.shared))))
            if w.mapped:
                for k in range(lo, hi):
                    steps.append(Step("store", (b.addr(k << PAGE_SHIFT), want.words.get(w.frame, 0))))
                if writable != w.prot:
                    steps.append(Step("mprotect", (start, length, w.prot)))
    return steps


def _check_sharing(caller: ProcView, other: ProcView) -> None:
    """Frames two processes share must sit at the same page in both (fork shares them there)."""
    theirs = {iv.frame: iv.lo for iv in other.intervals if iv.mapped}
    for iv in caller.intervals:
        if iv.mapped and iv.frame in theirs and theirs[iv.frame] != iv.lo:
            raise ShapeNotExpressible(f"frame {iv.frame:#x} is mapped at page {iv.lo << PAGE_SHIFT:#x} by the "
                                      f"caller and at {theirs[iv.frame] << PAGE_SHIFT:#x} by the other process; "
                                      "fork shares a frame at one page only")


def _failing_step(b: _Builder, spec: StepSpec, views: list[ProcView], caller: ProcView,
                  fork_result: int | None, notes: list[str]) -> list[Step]:
    return _STEP_BUILDERS[spec.transition](b, spec, views, caller, fork_result, notes)


def _mmap_step(b, spec, views, caller, fork_result, notes):
    a = spec.args
    flags = a["flags"]
    if not flags & MAP_ANONYMOUS:
        notes.append("the counterexample's flags lack MAP_ANONYMOUS; level 2 maps no files (EBADF), a "
                     "program's mmap passes fd=-1 as well")
    if a.get("offset", 0):
        notes.append(f"offset={a['offset']:#x} is left out: a program's mmap passes offset 0")
    fixed = flags & (MAP_FIXED | MAP_FIXED_NOREPLACE)
    if not fixed:
        chose = a.get("start (level 1)", a.get("choice.addr", 0))    # refinement / preservation obligations
        notes.append(f"without MAP_FIXED the kernel places the mapping; the counterexample chose {chose:#x}")
    addr = _at(b, spec, a["addr"]) if fixed else a["addr"]
    return [Step("mmap", (addr, a["length"], a["prot"], flags))]


def _at(b: _Builder, spec: StepSpec, x: int) -> int | Ref:
    """A step's address: moved with the state, unless the step touches no user page (its
    arguments are then what makes it fail, and stay as they are)."""
    return b.addr(x) if _step_range(spec) is not None else x


def _range_step(op):
    def build(b, spec, views, caller, fork_result, notes):
        a = spec.args
        args = (_at(b, spec, a["addr"]), a["length"]) + ((a["prot"],) if op == "mprotect" else ())
        return [Step(op, args)]
    return build


def _brk_step(b, spec, views, caller, fork_result, notes):
    addr = spec.args["addr"]
    if addr >= TASK_SIZE:
        return [Step("brk", (addr,))]               # refused wherever the heap starts
    if addr < caller.brk_start:
        # Below the heap start: refused. Relative to the real start it could wrap or land above it.
        notes.append(f"brk({addr:#x}) lies below the heap start {caller.brk_start:#x}: brk(1) stands for it")
        return [Step("brk", (1,))]
    return [Step("brk", (b.addr(addr),))]


def _access_step(op):
    def build(b, spec, views, caller, fork_result, notes):
        va = _at(b, spec, spec.args["va"])
        if spec.args["va"] & 7:
            notes.append(f"va={spec.args['va']:#x} is not 8-byte aligned: the program's 8-byte access "
                         "may straddle a page, level 2 reads one word per page")
        return [Step(op, (va,) + ((spec.args["value"],) if op == "store" else ()))]
    return build


def _fork_step(vfork):
    def build(b, spec, views, caller, fork_result, notes):
        r = b.result()
        child = (Step("observe"), Step("exit", (0,)))
        parent = (Step("observe"),) if vfork else (Step("wait4", (Ref(r), 0)), Step("observe"))
        return [Step("vfork" if vfork else "fork", (), r, child, parent)]
    return build


def _exit_step(b, spec, views, caller, fork_result, notes):
    status = spec.args["status"]
    code = (status >> 8) & 0xFF
    if status != code << 8:
        notes.append(f"wait status {status:#x} is not exit(code)'s (code & 0xff) << 8; exit({code:#x}) is the nearest")
    return [Step("exit", (code,))]


def _wait4_step(b, spec, views, caller, fork_result, notes):
    # Level 2's wait4 answers at once (0 for a running child): WNOHANG.
    target = spec.args["target"]
    others = [v for v in views if v.pid == target and v is not caller]
    if others and fork_result is not None:
        return [Step("wait4", (Ref(fork_result), WNOHANG))]
    notes.append(f"target pid {target:#x} is no process the program made: a pid that is no child of the caller "
                 "(0x3ffffe) stands for it")
    return [Step("wait4", (0x3FFFFE, WNOHANG))]


def _not_a_program(what):
    def build(b, spec, views, caller, fork_result, notes):
        raise NotExpressible(what)
    return build


_STEP_BUILDERS: dict[str, Callable] = {
    "mmap": _mmap_step, "munmap": _range_step("munmap"), "mprotect": _range_step("mprotect"), "brk": _brk_step,
    "load": _access_step("load"), "store": _access_step("store"),
    "fork_cow": _fork_step(False), "fork_eager": _fork_step(False), "vfork": _fork_step(True),
    "exit": _exit_step, "wait4": _wait4_step,
    "observe": lambda b, spec, views, caller, fork_result, notes: [Step("observe")],   # reach() only
    "execve": _not_a_program("execve's segments and break are arguments at level 2; a program can only "
                             "execve an image it carries (ElfSpec layouts), not a list of segments"),
}


def _step_range(spec: StepSpec) -> tuple[int, int] | None:
    """[lo, hi) vpns the failing step touches, or None when it touches no user page: a range that
    does not fit in user space makes munmap, mprotect and mmap(MAP_FIXED) fail before any change."""
    a = spec.args
    fixed_mmap = spec.transition == "mmap" and a["flags"] & (MAP_FIXED | MAP_FIXED_NOREPLACE)
    if spec.transition in ("munmap", "mprotect") or fixed_mmap:
        end = a["addr"] + ((a["length"] + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1))
        if end > TASK_SIZE or a["addr"] >= TASK_SIZE or a["addr"] % PAGE_SIZE or end == a["addr"]:
            return None             # EINVAL/ENOMEM (or mprotect's length-0 no-op) before any change
        return a["addr"] >> PAGE_SHIFT, max(a["addr"] >> PAGE_SHIFT, (end + PAGE_SIZE - 1) >> PAGE_SHIFT)
    if spec.transition in ("load", "store"):
        if a["va"] >= TASK_SIZE:
            return None
        return a["va"] >> PAGE_SHIFT, (a["va"] >> PAGE_SHIFT) + 1
    return None


def _clip_step(views: list[ProcView], spec: StepSpec, notes: list[str]) -> StepSpec:
    """A munmap/mprotect/mmap(MAP_FIXED) range too wide for the free range would take the program's
    own image or stack with it: it is cut to the counterexample's runs inside it, plus a page on
    each side (a sub-range of user space, so the call still succeeds or fails as before on them)."""
    rng = _step_range(spec)
    if rng is None or spec.transition in ("load", "store") or \
            (rng[1] - rng[0]) << PAGE_SHIFT <= SAFE_HI - RELOCATE_LO or \
            (SAFE_LO <= rng[0] << PAGE_SHIFT and rng[1] << PAGE_SHIFT <= SAFE_HI):
        return spec
    lo, hi = rng
    inside = [iv for v in views for iv in v.intervals if iv.lo < hi and lo < iv.hi]
    new_lo = max(lo, min(iv.lo for iv in inside) - 1) if inside else lo
    new_hi = min(hi, max(iv.hi for iv in inside) + 1) if inside else lo + 1
    notes.append(f"the step's range [{lo << PAGE_SHIFT:#x}, {hi << PAGE_SHIFT:#x}) would cover the program's own "
                 f"image and stack: cut to [{new_lo << PAGE_SHIFT:#x}, {new_hi << PAGE_SHIFT:#x}), the "
                 "counterexample's runs inside it and a page on each side")
    return dataclasses.replace(spec, args=dict(spec.args, addr=new_lo << PAGE_SHIFT,
                                               length=(new_hi - new_lo) << PAGE_SHIFT))


def _span(views: list[ProcView], rng: tuple[int, int] | None) -> tuple[int, int] | None:
    pages = [(iv.lo, iv.hi) for v in views for iv in v.intervals] + ([rng] if rng else [])
    if not pages:
        return None
    return min(p[0] for p in pages) << PAGE_SHIFT, max(p[1] for p in pages) << PAGE_SHIFT


def _keep_near(views: list[ProcView], lo: int, hi: int) -> list[ProcView]:
    """The views with only the runs intersecting vpns [lo, hi)."""
    return [dataclasses.replace(v, intervals=tuple(iv for iv in v.intervals if iv.lo < hi and lo < iv.hi))
            for v in views]


def _choose_delta(views: list[ProcView], spec: StepSpec, notes: list[str]) -> tuple[int, list[ProcView]]:
    """(offset added to every address, the views kept): no move when everything lies where a fresh
    process maps nothing; else one move into the free range; else, if the step touches few pages,
    only the runs next to them are kept."""
    rng = _step_range(spec)
    span = _span(views, rng)
    if span is None or (SAFE_LO <= span[0] and span[1] <= SAFE_HI):
        return 0, views
    if span[1] - (span[0] & ~(RELOCATE_ALIGN - 1)) > SAFE_HI - RELOCATE_LO and rng is not None:
        near = _keep_near(views, rng[0] - 1, rng[1] + 1)
        dropped = sum(len(v.intervals) for v in views) - sum(len(v.intervals) for v in near)
        notes.append(f"{dropped} run(s) away from the step's pages [{rng[0] << PAGE_SHIFT:#x}, "
                     f"{rng[1] << PAGE_SHIFT:#x}) are left out: together they span more than a fresh process "
                     "leaves free")
        views = near
        span = _span(views, rng)
        if SAFE_LO <= span[0] and span[1] <= SAFE_HI:
            return 0, views
    lo, hi = span
    base = lo & ~(RELOCATE_ALIGN - 1)
    if hi - base > SAFE_HI - RELOCATE_LO:
        raise NotExpressible(f"the counterexample spans [{lo:#x}, {hi:#x}), wider than the address range a "
                             f"fresh process leaves free ([{RELOCATE_LO:#x}, {SAFE_HI:#x}))")
    delta = RELOCATE_LO - base
    notes.append(f"every address moved by {delta:+#x}: the counterexample's pages [{lo:#x}, {hi:#x}) overlap "
                 "what a fresh process maps (image, stack, TLS, [vdso])")
    return delta, views


def build_program(views: list[ProcView], spec: StepSpec) -> tuple[Program, list[str]]:
    """The program reaching `views` (the before-state) from a fresh process, then the failing step.
    When the other processes cannot be built, the caller alone is, and a note says what is left out
    (their frames then do not share the caller's: reference counts differ from the counterexample)."""
    program, notes, _ = _build_any(views, spec, False)
    return program, notes


@dataclass(frozen=True)
class Reached:
    """What reach() built: the program, its notes, the views it kept (the runs the failing step's
    program builds too) and where a counterexample address lies in the program (an int, or a Ref
    to the caller's initial break when the layout is heap-relative, as for brk)."""
    program: Program
    notes: list[str]
    views: list[ProcView]
    addr: Callable[[int], int | Ref]


def reach(views: list[ProcView], spec: StepSpec) -> Reached:
    """The program build_program(views, spec) makes, with the failing step and what follows it
    replaced by an observation by the caller: the same runs kept, at the same addresses (tests
    compare the state it reaches with the counterexample's)."""
    program, notes, (kept, b) = _build_any(views, spec, True)
    return Reached(program, notes, kept, b.addr)


def _build_any(views: list[ProcView], spec: StepSpec, observe_only: bool):
    callers = [v for v in views if v.pid == spec.pid and v.state == d.RUNNING]
    if not callers:
        raise NotExpressible(f"no running process has the caller's pid {spec.pid:#x}")
    if callers[-1].problem:
        raise NotExpressible(callers[-1].problem)
    layout: list = []
    try:
        program, notes = _build(views, callers[-1], spec, [], observe_only, layout)
    except ShapeNotExpressible as why:
        layout.clear()
        program, notes = _build([callers[-1]], callers[-1], spec,
                                [f"approximation: the other process is left out, the caller is built alone: {why}"],
                                observe_only, layout)
    return program, notes, layout[0]


def _build(views: list[ProcView], caller: ProcView, spec: StepSpec, notes: list[str], observe_only: bool = False,
           layout: list | None = None) -> tuple[Program, list[str]]:
    """build_program's work; with `observe_only` the caller observes instead of taking the step.
    The views kept and the address builder are appended to `layout`."""
    others = [v for v in views if v is not caller]
    if len(others) > 1:
        raise ShapeNotExpressible(f"{len(others) + 1} live processes; programs are built for two at most")
    other = others[0] if others else None
    if other is not None and other.problem:
        raise ShapeNotExpressible(f"{other.describe()}: {other.problem}")
    prefix: list[Step] = []
    if spec.transition == "brk":
        b = _Builder(Ref(1), origin=caller.brk_start)
        prefix.append(Step("brk", (0,), 1))
        # brk looks at [old top, new top + one page); runs below the heap start (where a program's
        # own image lies) or beyond that window do not change its answer.
        tops = [d.page_align_up(caller.brk)] + ([d.page_align_up(spec.args["addr"])]
                                                if caller.brk_start <= spec.args["addr"] < TASK_SIZE else [])
        window = (caller.brk_start >> PAGE_SHIFT, (max(tops) >> PAGE_SHIFT) + 1)
        near = _keep_near(views, *window)
        dropped = sum(len(v.intervals) for v in views) - sum(len(v.intervals) for v in near)
        if dropped:
            notes.append(f"{dropped} run(s) outside the heap's neighbourhood [{caller.brk_start:#x}, "
                         f"{window[1] << PAGE_SHIFT:#x}) are left out: brk does not look at them")
            views = near
            caller = next(v for v in views if v.slot == caller.slot)
            other = next((v for v in views if v.slot != caller.slot), None)
        if (window[1] << PAGE_SHIFT) - caller.brk_start > SAFE_HI - SAFE_LO:
            raise NotExpressible(f"the heap's neighbourhood reaches {(window[1] << PAGE_SHIFT) - caller.brk_start:#x} "
                                 "bytes above the heap start, into the stack and [vdso] area")
        if caller.brk != caller.brk_start:
            prefix.append(Step("brk", (b.addr(caller.brk),)))
            heap = d.page_align_up(caller.brk) - caller.brk_start
            if heap > 0:
                prefix.append(Step("munmap", (Ref(1), heap)))
    else:
        spec = _clip_step(views, spec, notes)
        delta, views = _choose_delta(views, spec, notes)
        b = _Builder(delta=delta)
        caller = next(v for v in views if v.slot == caller.slot)
        other = next((v for v in views if v.slot != caller.slot), None)
    if layout is not None:
        layout.append((views, b))
    if observe_only:
        spec = StepSpec("observe", spec.pid, {})
    if other is not None:
        _check_sharing(caller, other)
    if spec.transition == "fork_cow":
        notes.append("the obligation's fork is copy-on-write; replaying program text uses impl's default eager fork "
                     "(both must give the same trace)")
    if any(iv.found and iv.shared and not iv.mapped for v in views for iv in v.intervals):
        notes.append("MAP_SHARED pages without a frame are not reachable: mmap populates a shared mapping, so "
                     "the program's pages hold a frame reading 0 (the same view)")
    empty: tuple[Interval, ...] = ()
    if other is None:
        body = prefix + adjust(b, empty, caller)
        body += _failing_step(b, spec, views, caller, None, notes) + _tail(b, spec)
        return _finish(body, notes)
    if other.state == d.ZOMBIE and other.parent == caller.pid:
        code = (other.status >> 8) & 0xFF
        if other.status != code << 8:
            notes.append(f"the zombie's wait status {other.status:#x} is not an exit(code)'s; exit({code:#x}) stands "
                         "for it")
        r = b.result()
        rest = adjust(b, empty, caller) + _failing_step(b, spec, views, caller, r, notes) + _tail(b, spec)
        notes.append(f"{other.describe()} is the caller's zombie child: vfork, and the child exits")
        return _finish(prefix + [Step("vfork", (), r, (Step("exit", (code,)),), tuple(rest))], notes)
    if other.state == d.BLOCKED and caller.vfork_parent == other.pid:
        r = b.result()
        notes.append(f"the caller is the vfork child of {other.describe()}, which lent it the address space built "
                     "before the vfork")
        # Build the lent space before the vfork; the child steps in it.
        body = prefix + adjust(b, empty, caller)
        rest = _failing_step(b, spec, views, caller, r, notes) + _tail(b, spec)
        return _finish(body + [Step("vfork", (), r, tuple(rest), ())], notes)
    if other.state != d.RUNNING:
        raise ShapeNotExpressible(f"{other.describe()} is neither a running process, a zombie child of the caller "
                                  "nor the caller's vfork parent; a program builds no other shape")
    r = b.result()
    base = prefix + adjust(b, empty, other)
    mine = adjust(b, other.intervals, caller)
    if caller.parent == other.pid:
        if other.parent == caller.pid:
            notes.append("the two processes are each other's parent (no fork makes that): the caller is built as the "
                         "child")
        notes.append(f"{other.describe()} is the caller's parent: it builds its memory, forks the caller and waits")
        rest = mine + _failing_step(b, spec, views, caller, r, notes) + _tail(b, spec)
        return _finish(base + [Step("fork", (), r, tuple(rest), (Step("wait4", (Ref(r), 0)),))], notes)
    if other.parent == caller.pid:
        notes.append(f"{other.describe()} is the caller's running child: built first and forked; it must not run "
                     "before the caller's failing step (impl runs the parent first; on Linux this is a race)")
        rest = mine + _failing_step(b, spec, views, caller, r, notes) + _tail(b, spec)
        if spec.transition != "exit":
            rest = _then(rest, [Step("wait4", (Ref(r), 0))])
        return _finish(base + [Step("fork", (), r, (), tuple(rest))], notes)
    raise ShapeNotExpressible(f"{other.describe()} is neither parent nor child of the caller (pid {caller.pid:#x}, "
                              f"parent {caller.parent:#x}); a program relates two processes by fork only")


def _then(steps: list[Step], more: list[Step]) -> list[Step]:
    """`steps` followed by `more`; after a fork-like step `more` goes to its parent continuation."""
    if steps and steps[-1].child is not None:
        last = steps[-1]
        return steps[:-1] + [dataclasses.replace(last, parent=tuple(_then(list(last.parent or ()), more)))]
    return steps + more


PROBE = 0x5AFE_5AFE       # the word a write probe stores


def _tail(b: _Builder, spec: StepSpec) -> list[Step]:
    """What follows the failing step: an observation of the caller's address space, and after a
    munmap or mprotect that touches user pages a write probe at the range's first page: the rights
    the step left must hold at once (a stale writable TLB entry, the zoo's missing-tlb-flush, lets
    the write through). The probe faults wherever writing is refused, so it comes last."""
    if spec.transition in ("exit", "fork_cow", "fork_eager", "vfork", "observe"):
        return []          # exit does not return; a fork's continuations observe already
    rng = _step_range(spec)
    probe = [Step("store", (b.addr(rng[0] << PAGE_SHIFT), PROBE))] \
        if spec.transition in ("munmap", "mprotect") and rng is not None else []
    return [Step("observe")] + probe


def _finish(steps: list[Step], notes: list[str]) -> tuple[Program, list[str]]:
    if _count(steps) > MAX_STEPS:
        raise NotExpressible(f"the program would take {_count(steps)} steps (more than {MAX_STEPS})")
    return Program((Image(_close(tuple(steps))),)), notes


def _close(steps: tuple[Step, ...]) -> tuple[Step, ...]:
    """A fork-like step must end its list: anything after one is a mistake of this module."""
    for i, s in enumerate(steps):
        if s.child is not None and i != len(steps) - 1:
            raise AssertionError("a fork-like step must end its list")
    return steps


def _count(steps) -> int:
    return sum(1 + _count(s.child or ()) + _count(s.parent or ()) for s in steps)


# --- the hook specs/prove.py calls -------------------------------------------------------------------

def witness(model: z3.ModelRef, name: str, ctx: Any) -> tuple[Program | None, list[str]]:
    """(program, notes) for a failed obligation, or (None, [reason])."""
    try:
        if ctx is None or "before" not in ctx.states:
            raise NotExpressible("the obligation has no before-state (not a step of a running program)")
        spec = step_spec(model, name, ctx)
        extra = {v for v in spec.args.values() if isinstance(v, int)}
        rng = _step_range(spec)
        if rng is not None:
            extra |= {rng[0] << PAGE_SHIFT, rng[1] << PAGE_SHIFT}
        views = read_state(model, ctx.states["before"], extra)
        return build_program(views, spec)
    except NotExpressible as why:
        return None, [str(why)]


def program_for(model: z3.ModelRef, name: str, ctx: Any) -> str:
    """Program text for a failed obligation (notes as `#` comments under the header), or one
    `# no program: <why>` line."""
    program, notes = witness(model, name, ctx)
    if program is None:
        return NO_PROGRAM + notes[0]
    return render(program, notes, name)


def render(program: Program, notes: list[str], name: str = "") -> str:
    """Program text with the notes as comments under the header (loads ignores them)."""
    head, _, body = dumps(program).partition("\n")
    comments = ([f"# from obligation {name}"] if name else []) + [f"# note: {n}" for n in notes]
    return "\n".join([head, *comments, body]).rstrip("\n") + "\n"


__all__ = ["program_for", "witness", "render", "reach", "read_state", "step_spec", "build_program", "ProcView",
           "Interval", "StepSpec", "NotExpressible", "NO_PROGRAM"]
