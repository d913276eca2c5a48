"""Program minimisation driven by a predicate (syzkaller's prog/minimization.go, for forkspec).

`minimize(program, still_fails)` knows nothing of Z3, Unicorn or ptrace: it proposes smaller
programs and keeps each one for which `still_fails` is true. Passes, each repeated until nothing
changes: drop images no execve can reach; cut every list after a step (drop trailing steps at
once); drop single steps from the end of each list; replace a fork by one of its continuations;
shrink constant arguments (to 0, then to smaller page-aligned or bit-cleared values). A dropped
step's references become the constant 0 (a deleted producer resets its users, as in syzkaller).
Every candidate is a valid Program (constructors validate), so the predicate never sees junk.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Iterator

from .errors import InvalidProgram
from .program import FORK_OPS, Image, Program, Ref, Step

Path = tuple[int, ...]          # index path into a step tree: list position, then 0=child / 1=parent, ...


def minimize(program: Program, still_fails: Callable[[Program], bool], max_tries: int = 2000) -> Program:
    """The smallest program found (by steps, then argument size) that still fails."""
    tries = 0
    best = program

    def attempt(candidate: Program | None) -> bool:
        nonlocal best, tries
        if candidate is None or candidate == best or tries >= max_tries:
            return False
        tries += 1
        if still_fails(candidate):
            best = candidate
            return True
        return False

    changed = True
    while changed and tries < max_tries:
        changed = False
        for propose in (_cut_tails, _drop_single_steps, _unfork, _shrink_args):
            for candidate in propose(best):
                if attempt(candidate):
                    changed = True
                    break        # restart this pass on the new best
    return best


# --- candidate generators ----------------------------------------------------------------------

def _lists(steps: tuple[Step, ...], path: Path = ()) -> Iterator[tuple[Path, tuple[Step, ...]]]:
    """Every step list in a tree with its path (the root list has path ())."""
    yield path, steps
    for i, step in enumerate(steps):
        if step.op in FORK_OPS:
            yield from _lists(step.child or (), path + (i, 0))
            yield from _lists(step.parent or (), path + (i, 1))


def _replace_list(steps: tuple[Step, ...], path: Path, new: tuple[Step, ...]) -> tuple[Step, ...]:
    if not path:
        return new
    i, side, rest = path[0], path[1], path[2:]
    fork = steps[i]
    if side == 0:
        fork = dataclasses.replace(fork, child=_replace_list(fork.child or (), rest, new))
    else:
        fork = dataclasses.replace(fork, parent=_replace_list(fork.parent or (), rest, new))
    return steps[:i] + (fork,) + steps[i + 1:]


def _with_steps(program: Program, image: int, steps: tuple[Step, ...]) -> Program | None:
    images = list(program.images)
    images[image] = dataclasses.replace(images[image], steps=_drop_dangling(steps))
    try:
        return Program(tuple(images))
    except InvalidProgram:
        return None


def _drop_dangling(steps: tuple[Step, ...]) -> tuple[Step, ...]:
    """Replace references to results no longer produced (anywhere in the tree) by 0."""
    produced = {s.result for _, lst in _lists(steps) for s in lst if s.result is not None}

    def fix(lst: tuple[Step, ...]) -> tuple[Step, ...]:
        out = []
        for step in lst:
            args = tuple(0 if isinstance(a, Ref) and a.result not in produced else a for a in step.args)
            if step.op in FORK_OPS:
                step = dataclasses.replace(step, args=args, child=fix(step.child or ()), parent=fix(step.parent or ()))
            elif args != step.args:
                step = dataclasses.replace(step, args=args)
            out.append(step)
        return tuple(out)

    return fix(steps)


def _cut_tails(program: Program) -> Iterator[Program | None]:
    for image_index, image in enumerate(program.images):
        for path, lst in list(_lists(image.steps)):
            for keep in range(len(lst)):            # shortest first: drop as much as possible at once
                yield _with_steps(program, image_index, _replace_list(image.steps, path, lst[:keep]))


def _drop_single_steps(program: Program) -> Iterator[Program | None]:
    for image_index, image in enumerate(program.images):
        for path, lst in list(_lists(image.steps)):
            for i in reversed(range(len(lst))):
                if lst[i].op in FORK_OPS:
                    continue
                yield _with_steps(program, image_index, _replace_list(image.steps, path, lst[:i] + lst[i + 1:]))


def _unfork(program: Program) -> Iterator[Program | None]:
    """A fork replaced by its parent's continuation, or by its child's (the fork dropped)."""
    for image_index, image in enumerate(program.images):
        for path, lst in list(_lists(image.steps)):
            if lst and lst[-1].op in FORK_OPS:
                fork = lst[-1]
                for continuation in (fork.parent or (), fork.child or ()):
                    yield _with_steps(program, image_index,
                                      _replace_list(image.steps, path, lst[:-1] + continuation))


def _smaller_ints(value: int) -> Iterator[int]:
    if value == 0:
        return
    yield 0
    if value >= 1 << 63:                      # a negative number: try its magnitude's smaller cousins
        yield (1 << 64) - 1
        return
    if value > 0x1000:
        yield value & ~0xFFF                  # page-aligned below
        yield 0x1000
    if value > 1:
        yield value >> 1
        yield value - 1


def _shrink_args(program: Program) -> Iterator[Program | None]:
    for image_index, image in enumerate(program.images):
        for path, lst in list(_lists(image.steps)):
            for i, step in enumerate(lst):
                for j, arg in enumerate(step.args):
                    candidates = ([0] + [dataclasses.replace(arg, offset=o) for o in _smaller_ints(arg.offset & ((1 << 64) - 1))]
                                  if isinstance(arg, Ref) else list(_smaller_ints(arg)))
                    for smaller in candidates:
                        args = step.args[:j] + (smaller,) + step.args[j + 1:]
                        try:
                            new_step = dataclasses.replace(step, args=args)
                        except InvalidProgram:
                            continue
                        yield _with_steps(program, image_index,
                                          _replace_list(image.steps, path, lst[:i] + (new_step,) + lst[i + 1:]))
