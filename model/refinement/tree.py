"""Refinement of the process-tree transitions exit and wait4, one obligation per level-1 shape (SHAPES,
including vfork-child: exit by a vfork child hands its parent the address space back)."""
from __future__ import annotations

from typing import Any

import z3

from .. import design as d
from ..logic import eq
from .relation import ABSENT_PID, OTHER, ROOT, SHAPES, _tree_states, layout_of, tree_related


def tree_obligation(name: str, shape: str, caller: int, target: int = 0):
    from ...specs.abi import WNOHANG, wait_status_exited
    from ...specs.obligations import Ctx, Obligation, invariants_hold
    from .. import process as proc1

    def build() -> tuple:
        layout = layout_of(shape)
        s2, s1, ctx = _tree_states(shape, layout)
        if name == "exit":
            code = z3.BitVec("refine.code", 64)
            status = wait_status_exited(code)
            allowed2, out2, new2 = d.exit(s2, d.ExitArgs(caller, status), d.Choice())
            r1 = proc1.exit(s1, proc1.ExitArgs(caller, code))
            out_ok: Any = True        # exit does not return; its status is compared through R (zombie)
            args = {"code": code}
        else:
            allowed2, out2, new2 = d.wait4(s2, d.Wait4Args(caller, target), d.Choice())
            r1 = proc1.wait4(s1, proc1.Wait4Args(caller, target, WNOHANG))
            out_ok = d._as_bool(eq(out2, r1.outcome))
            args = {"target": target, "outcome (level 2)": out2, "outcome (level 1)": r1.outcome}
        hyps = invariants_hold(s2) + [tree_related(s2, s1, layout), d._as_bool(allowed2), d._as_bool(r1.allowed)] \
            + list(ctx.facts)
        goal = z3.And(out_ok, tree_related(new2, r1.state, layout))
        return hyps, goal, Ctx({"before": s2, "after": new2}, args)
    label = f"{shape}-by-{'root' if caller == ROOT else 'other'}"
    if name == "wait4":
        label += "-for-" + {ROOT: "root", OTHER: "other", ABSENT_PID: "absent"}[target]
    return Obligation(f"{name}-refines-level1[{label}]", "refine", build)


def tree_obligations() -> list:
    obs = []
    for shape, procs in SHAPES.items():
        for pid, _, run, _ in procs:
            if run == "running":
                obs.append(tree_obligation("exit", shape, pid))
                for target in (ROOT, OTHER, ABSENT_PID):
                    if target != pid:
                        obs.append(tree_obligation("wait4", shape, pid, target))
    return obs


obligations = tree_obligations
