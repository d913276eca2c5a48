"""Level-1 (user-visible) invariants, each stated once, and their proof obligations.

specs/invariants.py holds level 2's (model/design.py); these are about level 1's State
(model/state.py), concrete (the oracle's) or symbolic (model/symbolic.py's fresh_state). A predicate
returns a bool on a concrete state and a Z3 term on a symbolic one; a clause is written once, with
model/logic.py's operations, and quantified per container: over a concrete container's runs and
objects, or by a ForAll over the page / object id of a symbolic one (a mixed state, such as a
symbolic one after execve built a concrete address space, mixes both).

inv1_fresh_objects_unused: level 1's next backing object id `next_obj` fits the 32-bit ATTR_OBJ field
(next_obj < OBJ_LIMIT), every object id >= next_obj reads zero everywhere in the shared store, and
every mapped MAP_SHARED page of every address space names an object id below next_obj. Its instance
at next_obj (model/refinement/mmap.py's fresh_object_unused) is the hypothesis mmap's refinement
needs: a new MAP_SHARED mapping reads zeros. The lemma obligation below proves the invariant implies
that instance at every address.

Obligations (`obligations()`, registered by specs/obligations.all_obligations): the invariant holds
initially and every level-1 transition the oracle runs on memory keeps it: from a state satisfying it,
when the transition allows the step (`Result.allowed`), it holds after. Each has a sat twin (its
hypotheses hold together, on pinned witnesses). Transitions whose process structure is concrete in
Python (fork, vfork, exit, wait4, execve) are proved per enumerated case, all cases of one transition
in one obligation (the cases' terms renamed apart, so no case's hypotheses constrain another's
variables; the sat twin shows all the hypotheses satisfiable at once):
- mmap, munmap, mprotect, brk: two running processes with separate symbolic address spaces, the
  first calling (the other space is a bystander: the clauses are per space, so one bystander stands
  for any number); every argument, placement and resource choice symbolic; mmap under each profile
  (`[linux]`, `[levitate]`: its placement range is the profile's).
- store: store_page of 1 to 8 bytes at any address of the caller, guarded by the fault rule
  (memory.access_outcome: a faulting store writes nothing), as memory.store and the kernel's
  put_user (wait4's status, memory.kernel_put) write: a straddling access is two such stores.
- fork, vfork, exit, wait4 (WNOHANG, for each of the two pids and an absent one): every tree shape of
  model/refinement/relation.SHAPES and each running caller.
- execve: each representative image of model/refinement/exec.IMAGES under the Linux layout, the
  levitate layout with one image, and one image in every shape; `initial`: the first process after
  its first execve, each image under both profiles (the state is concrete: encoded as Z3 terms).
What is not proved here, and why it keeps the invariant (argued, with the test that checks it):
- execve and the initial state with an image outside the enumeration: the loader (model/exec.py's
  load_image, _region_attr) builds attribute words with make_attr(..., shared=False) only, and
  execve leaves the shared store and next_obj as they were; test_invariants1.py checks the new
  spaces of random concrete runs. Its failures (-errno, Killed) return the state unchanged.
- a failed fork (choice.fail) and a wait4 that blocks return the state unchanged; wait4's status
  store is a store (above); clone and exit_group are fork and exit.
- level 1's concrete-only paths, which the symbolic interpretation replaces: growsdown expansion on
  a fault copies a mapped growsdown page's attribute word (never MAP_SHARED: mmap refuses
  MAP_SHARED|MAP_GROWSDOWN), [vdso]/[vvar] mprotect changes PROT bits only (with_prot, as the
  symbolic path), the concrete brk writes heap attributes (never MAP_SHARED), mmap's concrete
  placement is one of the placements the symbolic one allows; tests/model checks that the two
  interpretations agree.
- write(2), getpid, getppid, sched_yield change no memory.

The bound: reaching next_obj = 2^32 takes 2^32 MAP_SHARED calls, but "it takes long" is no proof:
level 1's mmap refuses a MAP_SHARED mapping that would leave next_obj at OBJ_LIMIT (model/mm.py: only
ENOMEM is allowed there, a declared limit of the model).
"""
from __future__ import annotations

from typing import Any, Callable

import z3

from ..model import design as d
from ..model import memory
from ..model import mm as mm1
from ..model import process as proc1
from ..model.logic import all_of, eq, implies, ite, uge, ult
from ..model.predicates import is_mapped, is_shared, obj_of
from ..model.refinement.relation import ABSENT_PID, OTHER, ROOT, SHAPES, THIRD, _tree_states
from ..model.space import PageMap, SharedStore, SymPageMap, SymSharedStore
from ..model.state import State
from .obligations import Ctx, Obligation, hypotheses_satisfiable, uninterpreted_symbols
from .profiles import LEVITATE, LINUX

OBJ_LIMIT = mm1.OBJ_LIMIT
INV = "inv1_fresh_objects_unused"


# --- the invariant ------------------------------------------------------------------------------

def page_names_old_object(attr: Any, next_obj: Any) -> Any:
    """A mapped MAP_SHARED page names an object id below next_obj."""
    return implies(all_of(is_mapped(attr), is_shared(attr)), ult(obj_of(attr), next_obj))


def object_byte_unused(obj: Any, byte: Any, next_obj: Any) -> Any:
    """A byte of an object id at or above next_obj is zero."""
    if isinstance(byte, z3.BitVecRef) and byte.size() < 64:
        byte = z3.ZeroExt(64 - byte.size(), byte)        # model/logic.py's words are 64 bits
    return implies(uge(obj, next_obj), eq(byte, 0))


def _pages_ok(pages: Any, next_obj: Any) -> Any:
    if isinstance(pages, PageMap):
        return all_of(*[page_names_old_object(attr, next_obj) for _, _, attr in pages.runs])
    if isinstance(pages, SymPageMap):
        k = z3.BitVec("inv1.page", 64)
        return z3.ForAll([k], page_names_old_object(pages.get(k), next_obj))
    raise TypeError(f"not a page map: {pages!r}")


def _objects_ok(shared: Any, next_obj: Any) -> Any:
    if isinstance(shared, SharedStore):
        # A page's largest byte is zero exactly when the page is.
        return all_of(*[object_byte_unused(obj, max(blob), next_obj)
                        for obj, data in shared.objs.items() for blob in data.pages.values()])
    if isinstance(shared, SymSharedStore):
        o, a = z3.BitVec("inv1.obj", 64), z3.BitVec("inv1.addr", 64)
        return z3.ForAll([o, a], object_byte_unused(o, z3.Select(z3.Select(shared.array, o), a), next_obj))
    raise TypeError(f"not a shared store: {shared!r}")


def inv1_fresh_objects_unused(s1: State) -> Any:
    """next_obj < OBJ_LIMIT, every object id >= next_obj reads zero, and every mapped MAP_SHARED page
    of every address space names an object id < next_obj."""
    return all_of(ult(s1.next_obj, OBJ_LIMIT), _objects_ok(s1.shared, s1.next_obj),
                  *[_pages_ok(sp.pages, s1.next_obj) for _, sp in sorted(s1.spaces.items())])


INVARIANTS1: dict[str, Callable[[State], Any]] = {INV: inv1_fresh_objects_unused}


def holds_concretely(s1: State, name: str = INV) -> bool:
    """The invariant on a concrete state (a Python bool; raises on a symbolic one)."""
    value = INVARIANTS1[name](s1)
    if not isinstance(value, bool):
        raise TypeError("holds_concretely needs a concrete state")
    return value


def holds_encoded(s1: State, name: str = INV, rlimit: int = 20_000_000) -> bool:
    """The Z3 formula of the invariant, decided on the concrete state encoded as Z3 terms
    (model/symbolic.encode): the tests compare it with holds_concretely."""
    from ..model.symbolic import SymContext, encode
    formula = INVARIANTS1[name](encode(SymContext("inv1enc"), s1))
    solver = z3.Solver()
    solver.set("rlimit", rlimit)
    solver.add(z3.Not(formula))
    answer = solver.check()
    if answer == z3.unknown:
        raise RuntimeError(f"z3 could not decide {name} on an encoded state: {solver.reason_unknown()}")
    return answer == z3.unsat


# --- the transitions, as cases (hypotheses, state after, arguments) ------------------------------
# A transition's `fn` stands in for level 1's function (tests: a broken transition must be refuted).

def _two_spaces(profile: Any = LINUX):
    from ..model.symbolic import fresh_state
    return fresh_state(profile, (ROOT, OTHER), prefix="l1")


def _w(name: str) -> Any:
    return z3.BitVec(f"l1.{name}", 64)


def _memory_case(name: str, fn: Callable | None = None, profile: Any = LINUX) -> tuple:
    """(s1, hyps, after, args) of one memory transition by ROOT."""
    s1, ctx = _two_spaces(profile)
    addr, length, prot, flags, fd, off, placed, fail = (_w(n) for n in (
        "addr", "length", "prot", "flags", "fd", "offset", "placed", "fail"))
    if name == "mmap":
        r = (fn or mm1.mmap)(s1, mm1.MmapArgs(ROOT, addr, length, prot, flags, fd, off),
                             mm1.MmapChoice(addr=placed, fail=fail))
        args = {"addr": addr, "length": length, "prot": prot, "flags": flags, "placed": placed, "fail": fail}
    elif name == "munmap":
        r = (fn or mm1.munmap)(s1, mm1.MunmapArgs(ROOT, addr, length))
        args = {"addr": addr, "length": length}
    elif name == "mprotect":
        r = (fn or mm1.mprotect)(s1, mm1.MprotectArgs(ROOT, addr, length, prot), mm1.ResourceChoice(fail))
        args = {"addr": addr, "length": length, "prot": prot, "fail": fail}
    else:
        r = (fn or mm1.brk)(s1, mm1.BrkArgs(ROOT, addr), mm1.ResourceChoice())
        args = {"addr": addr}
    args["case"] = f"{name}-{profile.name}"
    return s1, [d._as_bool(r.allowed), *ctx.facts], r.state, args


STORE_SIZES = tuple(range(1, 9))


def _store_cases(fn: Callable | None = None) -> list[tuple]:
    """store_page of each size at any address, unless the access faults (nothing is written then)."""
    s1, _ = _two_spaces()
    va, value = _w("va"), _w("value")
    ok = eq(memory.access_outcome(s1, ROOT, va, 1, memory.WRITE), 0)
    # One case (one state before, one hypothesis) with a state after per size.
    afters = [ite(ok, (fn or memory.store_page)(s1, ROOT, va, size, value), s1) for size in STORE_SIZES]
    return [(s1, [], afters, {"case": "store", "va": va, "value": value})]


def _tree_cases(name: str, fn: Callable | None = None) -> list[tuple]:
    """One case per relation.SHAPES shape and running caller (wait4: per target too)."""
    from .abi import WNOHANG
    out = []
    for shape, procs in SHAPES.items():
        for pid, _, run, _ in procs:
            if run != "running":
                continue
            _, s1, ctx = _tree_states(shape)
            label = f"{shape}-by-{'root' if pid == ROOT else 'other'}"
            if name in ("fork", "vfork"):
                child = OTHER if len(procs) == 1 else THIRD
                r = (fn or proc1.fork)(s1, proc1.ForkArgs(pid), proc1.ForkChoice(child=child), vfork=name == "vfork")
                out.append((s1, [d._as_bool(r.allowed), *ctx.facts], r.state, {"case": label}))
            elif name == "exit":
                r = (fn or proc1.exit)(s1, proc1.ExitArgs(pid, _w("code")))
                out.append((s1, [d._as_bool(r.allowed), *ctx.facts], r.state, {"case": label}))
            else:
                for target in (ROOT, OTHER, ABSENT_PID):
                    if target == pid:
                        continue
                    r = (fn or proc1.wait4)(s1, proc1.Wait4Args(pid, target, WNOHANG))
                    out.append((s1, [d._as_bool(r.allowed), *ctx.facts], r.state, {"case": f"{label}-for-{target}"}))
    return out


def execve_cases_list() -> list[tuple]:
    """(shape, caller, image, profile): every image alone under Linux, the levitate layout with one
    image, one image in every other shape by each running process (exec.py's choice of cases)."""
    from ..model.refinement import exec as rexec
    out = [("alone", ROOT, image, "linux") for image in rexec.IMAGES] + [("alone", ROOT, *rexec.REGIONS_IMAGE)]
    for shape, procs in SHAPES.items():
        if shape != "alone":
            out += [(shape, pid, *rexec.TREE_IMAGE) for pid, _, run, _ in procs if run == "running"]
    return out


def _execve_cases(fn: Callable | None = None) -> list[tuple]:
    from ..model import exec as exec1
    from ..model.refinement import exec as rexec
    out = []
    for shape, caller, image, profile in execve_cases_list():
        _, s1, ctx = _tree_states(shape)
        s1 = s1.with_(profile=rexec.PROFILES[profile])
        r = (fn or exec1.execve)(s1, exec1.ExecveArgs(caller, 1, rexec.image_bytes(image)),
                                 rexec.exec_layout(image, profile))
        if r.clause != "execve.ok":
            raise ValueError(f"image {image!r} does not load at level 1 under {profile}: {r.clause}")
        label = f"{image}-{profile}-{shape}-by-{'root' if caller == ROOT else 'other'}"
        out.append((s1, [d._as_bool(r.allowed), *ctx.facts], r.state, {"case": label}))
    return out


def _initial_cases() -> list[tuple]:
    """The first process after its first execve, each image under both profiles, encoded."""
    from ..model import exec as exec1
    from ..model.refinement import exec as rexec
    from ..model.space import empty_data
    from ..model.symbolic import SymContext, encode
    out = []
    for image in rexec.IMAGES:
        for profile in ("linux", "levitate"):
            r = exec1.initial_state(rexec.PROFILES[profile], ROOT, rexec.image_bytes(image),
                                    rexec.exec_layout(image, profile))
            # Private contents are left out of the encoding: the invariant does not read them (and
            # encoding a page of code byte by byte is most of the cost).
            spaces = {mm: sp.with_(data=empty_data()) for mm, sp in r.state.spaces.items()}
            out.append((None, [d._as_bool(r.allowed)], encode(SymContext("l1init"), r.state.with_(spaces=spaces)),
                        {"case": f"{image}-{profile}"}))
    return out


def cases(transition: str, fn: Callable | None = None, profile: Any = None) -> list[tuple]:
    """(state before or None, hypotheses beyond the invariant, state after (or a list of them: the
    invariant must hold after each), arguments) per case.
    `profile`: the memory transitions' profile (mmap's placement range depends on it; LINUX by default)."""
    if transition in ("mmap", "munmap", "mprotect", "brk"):
        return [_memory_case(transition, fn, profile or LINUX)]
    if transition == "store":
        return _store_cases(fn)
    if transition in ("fork", "vfork", "exit", "wait4"):
        return _tree_cases(transition, fn)
    if transition == "execve":
        return _execve_cases(fn)
    if transition == "initial":
        return _initial_cases()
    raise ValueError(f"no level-1 transition {transition!r}")


TRANSITIONS1 = ("mmap", "munmap", "mprotect", "brk", "store", "fork", "vfork", "exit", "wait4", "execve")


def _apart(index: int, terms: list) -> list:
    """The terms with every constant renamed for case `index`: cases built from the same fresh-state
    names become independent (one case's hypotheses then say nothing about another's variables)."""
    subs = [(k, z3.Const(f"{k}#{index}", k.sort())) for k in uninterpreted_symbols(terms)[1]]
    return [z3.substitute(t, *subs) if isinstance(t, z3.ExprRef) and subs else t for t in terms]


def _build(transition: str, name: str, fn: Callable | None, profile: Any = None) -> tuple:
    """All cases of a transition in one query. Each case's terms are renamed apart (_apart), so the
    hypotheses of different cases share no variable: with every case's hypotheses satisfiable (the
    sat twin shows they hold together), the conjunction of the invariant after each case follows
    from all the hypotheses exactly when each case's follows from its own."""
    inv = INVARIANTS1[name]
    hyps, goals, args = [], [], {}
    for i, (before, h, after, a) in enumerate(cases(transition, fn, profile)):
        label = a.get("case", str(i))
        shown = {f"{label}: {k}": v for k, v in a.items() if k != "case"}
        if before is not None:
            shown[f"{label}: next_obj before"] = before.next_obj
        afters = after if isinstance(after, list) else [after]
        shown[f"{label}: next_obj after"] = afters[0].next_obj
        pre = [d._as_bool(x) for x in ([inv(before)] if before is not None else []) + list(h)]
        keys = list(shown)
        terms = _apart(i, pre + [z3.And(*[d._as_bool(inv(a)) for a in afters])] + [shown[k] for k in keys])
        hyps += terms[:len(pre)]
        goals.append(terms[len(pre)])
        args.update(zip(keys, terms[len(pre) + 1:]))
    return hyps, z3.And(*goals), Ctx({}, args)


def preservation(transition: str, name: str = INV, fn: Callable | None = None, profile: Any = None) -> Obligation:
    """`level1-<transition>-preserves-<name>`: the invariant and `allowed` before imply it after.
    `fn` replaces level 1's function (tests: a broken transition must be refuted). `profile` (memory
    transitions): named as a suffix `[<profile>]`."""
    suffix = f"[{profile.name}]" if profile is not None else ""
    return Obligation(f"level1-{transition}-preserves-{name}{suffix}", "preserve",
                      lambda: _build(transition, name, fn, profile))


# mmap places mappings in the profile's range (pick_gap): proved under each profile, one obligation each
# (together in one query they took 2-3 s).
MMAP_PROFILES = (LINUX, LEVITATE)


def initial(name: str = INV) -> Obligation:
    return Obligation(f"level1-initial-satisfies-{name}", "initial", lambda: _build("initial", name, None))


def implies_fresh_object_unused() -> Obligation:
    """The lemma mmap's refinement uses: the invariant implies model/refinement/mmap.fresh_object_unused
    at every address (a free constant `at`: proving it for every value is the ForAll)."""
    def build() -> tuple:
        from ..model.refinement.mmap import fresh_object_unused
        s1, _ = _two_spaces()
        at = _w("at")
        return [inv1_fresh_objects_unused(s1)], fresh_object_unused(s1, at), Ctx({}, {"at": at,
                                                                                   "next_obj": s1.next_obj})
    return Obligation(f"level1-{INV}-implies-fresh_object_unused", "lemma", build)


def obligations() -> list[Obligation]:
    """Every level-1 invariant obligation, each followed by its sat twin (hypotheses satisfiable)."""
    obs = [initial()] + [preservation("mmap", profile=p) for p in MMAP_PROFILES] \
        + [preservation(t) for t in TRANSITIONS1 if t != "mmap"] + [implies_fresh_object_unused()]
    out = []
    for o in obs:
        out += [o, hypotheses_satisfiable(o)]
    return out


__all__ = ["inv1_fresh_objects_unused", "INVARIANTS1", "OBJ_LIMIT", "holds_concretely", "holds_encoded",
           "page_names_old_object", "object_byte_unused", "preservation", "initial", "implies_fresh_object_unused",
           "obligations", "cases", "TRANSITIONS1", "execve_cases_list"]
