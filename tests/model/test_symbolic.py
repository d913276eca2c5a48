"""The same transition code on concrete values and on Z3 terms: both interpretations agree.

Random concrete states (a small image, then random fixed mmaps and stores) and random arguments
near the mappings; the symbolic run starts from `symbolic.encode(state)` and is evaluated under
a model of its facts (which fix every fresh variable, the inputs being concrete). Outcome, page
attributes and readable bytes must equal the concrete run's.
"""
from __future__ import annotations

import z3
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from forkspec.model import memory, mm, symbolic
from forkspec.model.space import SymContext
from forkspec.specs.abi import MAP_FIXED, MAP_FIXED_NOREPLACE, MAP_SHARED, MAP_ANONYMOUS, U64

from .helpers import ANON, PID, levitate_state

BASE = 0x40_0000
WINDOW = [BASE + (k << 12) for k in range(-3, 12)]
OFFSETS = st.sampled_from([0, 0x1000, 0x2000, 0x3000, 0x5000, 0x8000, -0x1000, -0x2000, 0x123])
LENGTHS = st.sampled_from([0, 1, 0x1000, 0x1001, 0x2000, 0x3000, 0x6000, U64, 0x7FFF_FFFF_F000])
PROTS = st.sampled_from([0, 1, 2, 3, 4, 5, 7, 0x8, 0x10, 0x0100_0000])


@st.composite
def states(draw):
    state = levitate_state()
    for _ in range(draw(st.integers(0, 3))):
        addr = BASE + draw(st.integers(-3, 10)) * 0x1000
        flags = draw(st.sampled_from([ANON, MAP_SHARED | MAP_ANONYMOUS])) | MAP_FIXED
        state = mm.mmap(state, mm.MmapArgs(PID, addr, draw(st.integers(1, 4)) * 0x1000, draw(PROTS) & 7, flags)).state
    for _ in range(draw(st.integers(0, 3))):
        addr = BASE + draw(st.integers(-2, 9)) * 0x1000 + draw(st.sampled_from([0, 8, 0xFF8]))
        result = memory.store(state, PID, addr, draw(st.integers(1, U64)))
        state = result.state
    return state


@st.composite
def calls(draw):
    op = draw(st.sampled_from(["mmap", "munmap", "mprotect", "brk", "store"]))
    addr = (BASE + draw(OFFSETS)) & U64
    if op == "mmap":
        flags = draw(st.sampled_from([ANON | MAP_FIXED, ANON | MAP_FIXED_NOREPLACE, MAP_SHARED | MAP_ANONYMOUS | MAP_FIXED,
                                      MAP_ANONYMOUS | MAP_FIXED, ANON]))
        return op, mm.MmapArgs(PID, addr, draw(LENGTHS), draw(PROTS), flags, U64, draw(st.sampled_from([0, 0, 5])))
    if op == "munmap":
        return op, mm.MunmapArgs(PID, addr, draw(LENGTHS))
    if op == "mprotect":
        return op, mm.MprotectArgs(PID, addr, draw(LENGTHS), draw(PROTS))
    if op == "brk":
        return op, draw(st.sampled_from([0, 1, 0x40_3000, 0x40_3010, 0x40_5000, 0x40_8000, 0x40_2000]))
    return op, (addr + draw(st.sampled_from([0, 8, 0xFFC])), draw(st.integers(0, U64)))


def _run(op, args, state):
    if op == "mmap":
        return mm.mmap(state, args, mm.MmapChoice(addr=0x1000_0000_0000))
    if op == "munmap":
        return mm.munmap(state, args)
    if op == "mprotect":
        return mm.mprotect(state, args, mm.ResourceChoice())
    if op == "brk":
        return mm.brk(state, mm.BrkArgs(PID, args if isinstance(args, int) else args))
    addr, value = args
    new = memory.store_page(state, PID, addr, 8, value)
    return new


@settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))
@given(states(), calls())
def test_concrete_and_symbolic_interpretations_agree(state, call):
    op, args = call
    if op == "store":
        addr, value = args
        if (addr & 0xFFF) > 0xFF8 or memory.access_fault(state, PID, addr, 8, memory.WRITE) is not None:
            return                                  # store_page is the in-page, already-checked core
    concrete = _run(op, args, state)
    ctx = SymContext("t")
    sym_state = symbolic.encode(ctx, state)
    sym_args = args
    if op == "brk":
        sym_args = z3.BitVecVal(args, 64)
    elif op == "store":
        sym_args = (z3.BitVecVal(args[0], 64), z3.BitVecVal(args[1], 64))
    else:
        sym_args = type(args)(PID, *[z3.BitVecVal(getattr(args, f) & U64, 64) for f in list(args.__dataclass_fields__)[1:]])
    sym = _run(op, sym_args, sym_state)
    solver = z3.Solver()
    solver.set("timeout", 20000)
    solver.add(*ctx.facts)
    assert solver.check() == z3.sat
    model = solver.model()
    c_state = concrete if op == "store" else concrete.state
    s_state = sym if op == "store" else sym.state
    if op != "store":
        assert symbolic.eval_word(model, sym.outcome) == concrete.outcome, (op, args)
    for addr in WINDOW + [0x7FFF_FFFF_0000 - 0x1000]:
        c_attr = c_state.space_of(PID).pages.get(addr >> 12)
        s_attr = symbolic.page_attr(model, s_state, PID, addr >> 12)
        assert bool(c_attr & 8) == bool(s_attr & 8), (op, hex(addr))
        if c_attr & 8:
            assert c_attr == s_attr, (op, hex(addr), hex(c_attr), hex(s_attr))
            for off in (0, 8, 0xFF8, 0xFFC):
                want = memory.load_page(c_state, PID, addr + off, 1)
                assert symbolic.read_byte(model, s_state, PID, addr + off) == want, (op, hex(addr + off))
    if op == "brk":
        assert symbolic.eval_word(model, s_state.space_of(PID).brk) == c_state.space_of(PID).brk


def _prove(claim, facts, timeout_ms: int = 20000) -> z3.CheckSatResult:
    solver = z3.Solver()
    solver.set("timeout", timeout_ms)
    solver.add(*facts)
    solver.add(z3.Not(claim))
    return solver.check()


def test_fresh_state_mprotect_never_maps_or_unmaps_a_page():
    """What the proofs helper does: run a transition on a fresh symbolic state and prove a
    page-wise property of its result for every page, address, length and prot."""
    from forkspec.model.predicates import is_mapped
    from forkspec.specs.profiles import LINUX
    state, ctx = symbolic.fresh_state(LINUX, (7,))
    a, n, p = z3.BitVecs("a n p", 64)
    result = mm.mprotect(state, mm.MprotectArgs(7, a, n, p), mm.ResourceChoice())
    page = z3.BitVec("page", 64)
    old = state.space_of(7).pages.get(page)
    new = result.state.space_of(7).pages.get(page)
    claim = z3.ForAll([page], is_mapped(old) == is_mapped(new))
    assert _prove(claim, ctx.facts) == z3.unsat


def test_fresh_state_munmap_result_is_zero_or_einval():
    from forkspec.specs.abi import Errno
    from forkspec.specs.profiles import LEVITATE
    state, ctx = symbolic.fresh_state(LEVITATE, (7, 8))
    a, n = z3.BitVecs("a n", 64)
    result = mm.munmap(state, mm.MunmapArgs(8, a, n))
    claim = z3.Or(result.outcome == 0, result.outcome == z3.BitVecVal(-int(Errno.EINVAL) & U64, 64))
    assert _prove(claim, ctx.facts) == z3.unsat


def test_fork_then_child_write_private_unless_shared_proved():
    """Level 1's fork lemma on Z3 terms: after fork, a child's in-page store is seen by the
    parent exactly when the page is MAP_SHARED."""
    from forkspec.model import process
    from forkspec.model.predicates import is_shared
    from forkspec.specs.profiles import LINUX
    state, ctx = symbolic.fresh_state(LINUX, (7,))
    forked = process.fork(state, process.ForkArgs(7), process.ForkChoice(9)).state
    a, v = z3.BitVecs("a v", 64)
    after = memory.store_page(forked, 9, a, 8, v)
    before_parent = memory.load_page(forked, 7, a, 8)
    after_parent = memory.load_page(after, 7, a, 8)
    shared = is_shared(forked.space_of(7).pages.get(z3.LShR(a, 12)))
    in_page = z3.ULE(a & 0xFFF, 0xFF8)
    assert _prove(z3.Implies(z3.And(in_page, z3.Not(shared)), after_parent == before_parent), ctx.facts) == z3.unsat
    assert _prove(z3.Implies(z3.And(in_page, shared), after_parent == v), ctx.facts) == z3.unsat
