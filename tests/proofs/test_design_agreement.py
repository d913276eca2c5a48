"""The concrete and symbolic interpretations of level 2 agree (one transition source, two readings).

Random reachable concrete states are built by running the concrete transitions; each step is then
replayed on the same state lifted to Z3 terms (maps become closures over the concrete entries,
VMA lists become page-wise maps, numbers become numerals), and Z3 checks that `allowed`, the
outcome and the new state agree with the concrete run on every page and frame either run touched.
The concrete states must also satisfy every invariant (they are reachable)."""
from __future__ import annotations

import dataclasses

import z3
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from forkspec.model import design as d
from forkspec.specs.abi import MAP_ANONYMOUS, MAP_FIXED, MAP_PRIVATE, MAP_SHARED, PAGE_SIZE
from forkspec.specs.invariants import violated

P = PAGE_SIZE
REAPER = 1


def initial(cow: bool) -> d.KState:
    p = d.Proc(pid=2, state=d.RUNNING, parent=REAPER, vfork_parent=0, status=0, vmas=(), brk_start=0x700000,
               brk=0x700000, pt=d.empty_pt(), rmap=d.empty_rmap())
    s = d.KState((p,), d.SparseMap(d.FRAME_DEFAULT), REAPER, cow)
    segs = (d.Vma(True, 0x400000, 0x402000, 5, False), d.Vma(True, 0x600000, 0x602000, 3, False))
    allowed, _, s = d.execve(s, d.ExecveArgs(2, segs, 0x700000), d.Choice())
    assert allowed
    return s


# --- lifting a concrete state to Z3 terms ---------------------------------------------------------

def _num(x):
    if isinstance(x, bool):
        return z3.BoolVal(x)
    if isinstance(x, int):
        return z3.BitVecVal(x, 64)
    return x


def _lift_map(m: d.SparseMap) -> d.SparseMap:
    entries = [(k, tuple(_num(x) for x in v)) for k, v in m.items()]
    default = m.default

    def fn(k):
        out = default
        for key, val in entries:
            out = d.sel(k == key, val, out)
        return out
    return d.SparseMap(default, fn=fn)


def lift(s: d.KState) -> d.KState:
    def proc(p: d.Proc) -> d.Proc:
        vmas = p.vmas
        return d.Proc(pid=_num(p.pid), state=_num(p.state), parent=_num(p.parent), vfork_parent=_num(p.vfork_parent),
                      status=_num(p.status), brk_start=_num(p.brk_start), brk=_num(p.brk),
                      vmas=d.SparseMap(d.VMA_DEFAULT, fn=lambda k: d.list_find(vmas, k)),
                      pt=_lift_map(p.pt), rmap=_lift_map(p.rmap))
    return d.KState(tuple(proc(p) for p in s.procs), _lift_map(s.frames), _num(s.reaper), s.cow)


def lift_args(a):
    fields = {}
    for f in dataclasses.fields(a):
        v = getattr(a, f.name)
        if f.name == "segments":
            v = tuple(d.Vma(z3.BoolVal(True), _num(x.start), _num(x.end), _num(x.prot), z3.BoolVal(x.shared)) for x in v)
        elif f.name != "vfork":
            v = _num(v)
        fields[f.name] = v
    return type(a)(**fields)


def lift_choice(c: d.Choice) -> d.Choice:
    alloc = None
    if c.alloc is not None:
        alloc = d.Alloc(_lift_map(c.alloc.fwd), _lift_map(c.alloc.inv))
    return d.Choice(pid=_num(c.pid), frame=_num(c.frame), addr=_num(c.addr), alloc=alloc)


# --- comparing ---------------------------------------------------------------------------------------

def _same(x, y):
    return d._as_bool(d._eq_any(x, y))


def agreement(old: d.KState, new_c: d.KState, new_s: d.KState, pages: set[int]) -> z3.BoolRef:
    """new_s equals new_c on every process field, on the given pages and on every frame either mentions."""
    conds = []
    frames = set()
    for s in (old, new_c):
        frames |= {k for k, _ in s.frames.items()}
        for p in s.procs:
            frames |= {k for k, _ in p.rmap.items()} | {v[0] for _, v in p.pt.items()}
            pages |= {k for k, _ in p.pt.items()}
            for v in p.vmas:
                pages |= {v.start // P - 1, v.start // P, v.end // P - 1, v.end // P}
    live_pids = {p.pid for p in new_c.procs}
    for q in new_s.procs:       # every live symbolic slot is a concrete process, and vice versa
        conds.append(z3.Implies(d._as_bool(d.is_live(q)), z3.Or(*[_same(q.pid, pid) for pid in live_pids])))
    for p in new_c.procs:
        found, q = d.find_proc(new_s, p.pid)
        conds.append(d._as_bool(found))
        for f in ("state", "parent", "vfork_parent", "status", "brk_start", "brk"):
            conds.append(_same(getattr(q, f), getattr(p, f)))
        for k in pages:
            conds += [_same(x, y) for x, y in zip(d.vma_find(q.vmas, k), d.list_find(p.vmas, k))]
            conds += [_same(x, y) for x, y in zip(q.pt.get(k), p.pt.get(k))]
        for f in frames:
            conds += [_same(x, y) for x, y in zip(q.rmap.get(f), p.rmap.get(f))]
    for f in frames:
        conds += [_same(x, y) for x, y in zip(new_s.frames.get(f), new_c.frames.get(f))]
    return z3.And(*conds)


def check_step(s: d.KState, fn, args, choice, pages: set[int]) -> tuple:
    allowed_c, out_c, new_c = fn(s, args, choice)
    allowed_s, out_s, new_s = fn(lift(s), lift_args(args), lift_choice(choice))
    solver = z3.Solver()
    solver.add(d._as_bool(allowed_s))
    if not allowed_c:
        assert solver.check() == z3.unsat, f"{fn.__name__}{args}: symbolic allows what concrete refuses"
        return allowed_c, out_c, new_c
    assert solver.check() == z3.sat, f"{fn.__name__}{args}: symbolic refuses what concrete allows"
    solver.add(z3.Not(z3.And(_same(out_s, out_c), agreement(s, new_c, new_s, set(pages)))))
    assert solver.check() == z3.unsat, f"{fn.__name__}{args}: interpretations differ: {solver.model()}"
    return allowed_c, out_c, new_c


# --- random steps ------------------------------------------------------------------------------------

def fresh_frame(s: d.KState, n: int = 0) -> int:
    used = [k for k, v in s.frames.items()]
    return max(used, default=0x100) + 1 + n


def pick_proc(s: d.KState, data) -> d.Proc:
    running = [p for p in s.procs if p.state == d.RUNNING]
    return data.draw(st.sampled_from(running)) if running else None


def draw_step(s: d.KState, data):
    p = pick_proc(s, data)
    if p is None:
        return None
    starts = sorted({v.start for v in p.vmas} | {0x10000000, 0x600000, 0x700000})
    base = data.draw(st.sampled_from(starts)) + P * data.draw(st.integers(-1, 2))
    npages = data.draw(st.integers(0, 3))
    kind = data.draw(st.sampled_from(["mmap", "munmap", "mprotect", "brk", "fork", "vfork", "exit", "execve",
                                      "wait4", "load", "store", "store"]))
    if kind == "mmap":
        flags = data.draw(st.sampled_from([MAP_PRIVATE, MAP_SHARED, MAP_PRIVATE | MAP_FIXED, MAP_SHARED | MAP_FIXED]))
        flags |= MAP_ANONYMOUS
        addr = max(base, 0x10000000) if not flags & MAP_FIXED else base
        length = max(npages, 1) * P
        c = d.Choice(addr=0x20000000 + P * data.draw(st.integers(0, 4)))
        if flags & MAP_SHARED:
            at = addr if flags & MAP_FIXED else c.addr
            c = dataclasses.replace(c, alloc=d.alloc_from_dict(
                {at // P + i: fresh_frame(s, i) for i in range(length // P)}))
        return d.mmap, d.MmapArgs(p.pid, addr, length, data.draw(st.sampled_from([0, 1, 3, 5, 7])), flags), c
    if kind in ("munmap", "mprotect"):
        fn = d.munmap if kind == "munmap" else d.mprotect
        return fn, d.RangeArgs(p.pid, base, npages * P, data.draw(st.sampled_from([0, 1, 3, 5]))), d.Choice()
    if kind == "brk":
        return d.brk, d.BrkArgs(p.pid, p.brk + data.draw(st.sampled_from([-P, 0, 5, P, 3 * P]))), d.Choice()
    if kind in ("fork", "vfork"):
        pid = max(q.pid for q in s.procs) + 1
        private = {k: fresh_frame(s, i) for i, (k, _) in enumerate(p.pt.items()) if not d.list_find(p.vmas, k)[2]}
        return d.fork, d.ForkArgs(p.pid, kind == "vfork"), d.Choice(pid=pid, alloc=d.alloc_from_dict(private))
    if kind == "exit":
        return d.exit, d.ExitArgs(p.pid, data.draw(st.integers(0, 3))), d.Choice()
    if kind == "execve":
        segs = (d.Vma(True, 0x400000, 0x401000, 5, False), d.Vma(True, 0x600000, 0x600000 + P * max(npages, 1), 3, False))
        return d.execve, d.ExecveArgs(p.pid, segs, 0x800000), d.Choice()
    if kind == "wait4":
        targets = [q.pid for q in s.procs] + [99]
        return d.wait4, d.Wait4Args(p.pid, data.draw(st.sampled_from(targets))), d.Choice()
    fn = d.load if kind == "load" else d.store
    va = base + data.draw(st.sampled_from([0, 8, P - 8]))
    return fn, d.AccessArgs(p.pid, va, data.draw(st.integers(1, 9))), d.Choice(frame=fresh_frame(s))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.booleans(), st.data())
def test_concrete_and_symbolic_agree(cow, data):
    s = initial(cow)
    assert violated(s) == []
    for _ in range(data.draw(st.integers(1, 8))):
        step = draw_step(s, data)
        if step is None:
            break
        fn, args, choice = step
        pages = {getattr(args, "va", 0) // P, getattr(args, "addr", 0) // P}
        allowed, _, new = check_step(s, fn, args, choice, pages)
        if allowed:
            assert violated(new) == [], f"{fn.__name__}{args} broke {violated(new)}"
            s = new


def test_lift_round_trip_sees_the_same_pages():
    s = initial(True)
    _, _, s = d.store(s, d.AccessArgs(2, 0x600008, 5), d.Choice(frame=0x200))
    lifted = lift(s)
    k = 0x600
    assert z3.simplify(lifted.procs[0].pt.get(z3.BitVecVal(k, 64))[0]).as_long() == 0x200
    assert z3.is_true(z3.simplify(d._as_bool(d.vma_find(lifted.procs[0].vmas, z3.BitVecVal(k, 64))[0])))


def test_mprotect_success_from_a_reachable_state():
    s = initial(True)
    _, _, s = d.store(s, d.AccessArgs(2, 0x600008, 5), d.Choice(frame=0x200))
    assert violated(s) == []
    allowed, out, new = d.mprotect(s, d.RangeArgs(2, 0x600000, 2 * P, 1), d.Choice())
    assert allowed and out == 0
    assert d.list_find(new.procs[0].vmas, 0x600)[1] == 1
    assert new.procs[0].pt.get(0x600)[1] & d.PTE_RW == 0
    assert violated(new) == []
