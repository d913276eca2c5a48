"""Programs as plain data (DESIGN.md contract 1).

A `Program` is a tuple of `Image`s; the root process starts in image 0. An image holds a step list
and the layout of its ELF file. A step is a syscall, a memory probe or an `observe` checkpoint.
A fork-like step (`fork`, `vfork`, `clone`) ends its list and carries two continuations, `child`
and `parent`. `execve(k)` continues, when it succeeds, with image k's steps; when it fails, with
the steps after it. A list that runs off its end exits with status 0 (`exit_group(0)`).

Arguments are constants or `Ref(n, offset)`: the value step `rn` returned plus an offset. Result
numbers are per image, unique across the image's whole step tree, and a reference must name a
step that ran earlier in the same process (an ancestor's step before the fork counts).

The constructors validate; the classes do nothing else.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Union

from ..specs.abi import MMAP_MIN_ADDR, PAGE_SIZE, TASK_SIZE, U64
from ._internal.elf import MUTATIONS
from .errors import InvalidProgram


@dataclass(frozen=True)
class Ref:
    """The value step `r{result}` returned, plus `offset` (wrapping at 64 bits)."""
    result: int
    offset: int = 0

    def __post_init__(self) -> None:
        if self.result < 1:
            raise InvalidProgram(f"reference r{self.result} must name a result r1 or later")
        if not -(1 << 63) <= self.offset < (1 << 64):
            raise InvalidProgram(f"reference offset={self.offset:#x} does not fit in 64 bits")


Arg = Union[int, Ref]

# op -> number of arguments. Syscalls take their Linux arguments in order; omitted trailing
# arguments of mmap are fd=-1, offset=0.
OPS: dict[str, int] = {
    # syscalls
    "mmap": 4, "munmap": 2, "mprotect": 3, "brk": 1,
    "getpid": 0, "getppid": 0, "sched_yield": 0,
    "write": 3,                      # write(fd, address, length)
    "wait4": 2,                      # wait4(pid, options); status goes through a pointer and is reported
    "exit": 1, "exit_group": 1,
    "execve": 1,                     # execve(image index); an index without an image gives ENOENT
    "fork": 0, "vfork": 0, "clone": 1,   # clone(flags), fork-like flag sets only
    # memory probes
    "load": 1,                       # 8-byte load, value reported
    "store": 2,                      # 8-byte store of a value
    "fetch": 1,                      # call to the address (expects a `ret` there)
    # checkpoint
    "observe": 0,
}
FORK_OPS = frozenset({"fork", "vfork", "clone"})
EXIT_OPS = frozenset({"exit", "exit_group"})
# Steps whose value is worth keeping in the result table (the others return nothing useful).
VALUE_OPS = frozenset({"mmap", "munmap", "mprotect", "brk", "getpid", "getppid", "wait4", "write",
                       "fork", "vfork", "clone", "load", "execve", "sched_yield"})


def _check_int(name: str, op: str, value: int) -> None:
    if not -(1 << 63) <= value <= U64:
        raise InvalidProgram(f"{op} {name}={value:#x} does not fit in 64 bits")


@dataclass(frozen=True)
class Step:
    op: str
    args: tuple[Arg, ...] = ()
    result: int | None = None                    # r{result} names this step's value
    child: tuple["Step", ...] | None = None      # fork-like steps only
    parent: tuple["Step", ...] | None = None     # fork-like steps only

    def __post_init__(self) -> None:
        if self.op not in OPS:
            raise InvalidProgram(f"unknown step {self.op!r}; known: {', '.join(sorted(OPS))}")
        if len(self.args) != OPS[self.op]:
            raise InvalidProgram(f"{self.op} takes {OPS[self.op]} arguments, got {len(self.args)}")
        for i, arg in enumerate(self.args):
            if isinstance(arg, bool) or not isinstance(arg, (int, Ref)):
                raise InvalidProgram(f"{self.op} argument {i}={arg!r} must be an int or a Ref")
            if isinstance(arg, int):
                _check_int(f"argument {i}", self.op, arg)
        if self.result is not None:
            if self.op not in VALUE_OPS:
                raise InvalidProgram(f"{self.op} returns no value to name r{self.result}")
            if self.result < 1:
                raise InvalidProgram(f"result number r{self.result} must be >= 1")
        if self.op == "execve" and not (isinstance(self.args[0], int) and 0 <= self.args[0] < 1 << 16):
            raise InvalidProgram(f"execve image index={self.args[0]!r} must be a constant in [0, 65536)")
        is_fork = self.op in FORK_OPS
        if is_fork != (self.child is not None) or is_fork != (self.parent is not None):
            raise InvalidProgram(f"{self.op}: child and parent continuations go with fork, vfork and clone only")


@dataclass(frozen=True)
class ElfSpec:
    """How an image's ELF file is laid out; oracle/_internal/elf.py builds it.

    `etype`: "exec" (ET_EXEC at `base`) or "dyn" (static ET_DYN, kernel-chosen base).
    `layout`: "split" (text and data on separate pages), "shared" (text ends and data starts on
    one page), "single" (one RWX segment). `bss`: bytes of zero-fill beyond the data's file size.
    `mutation`: None for a well-formed image, else the name of a malformation (see elf.py).
    `base`: the link-time address of the text for "exec"; "dyn" images are linked at 0 and ignore it.
    `text`: the text PT_LOAD's rights ("rx" normally; "single" layouts are always "rwx").
    `stack`: PT_GNU_STACK's rights, or None to omit the header.
    """
    etype: str = "exec"
    base: int = 0x40_0000
    layout: str = "split"
    bss: int = 0
    mutation: str | None = None
    text: str = "rx"
    stack: str | None = "rw"

    def __post_init__(self) -> None:
        if self.etype not in ("exec", "dyn"):
            raise InvalidProgram(f"image etype={self.etype!r} must be 'exec' or 'dyn'")
        if self.layout not in LAYOUTS:
            raise InvalidProgram(f"image layout={self.layout!r} must be one of {', '.join(LAYOUTS)}")
        if self.base % PAGE_SIZE or not MMAP_MIN_ADDR <= self.base < TASK_SIZE:
            raise InvalidProgram(f"image base={self.base:#x} must be page aligned in [{MMAP_MIN_ADDR:#x}, {TASK_SIZE:#x})")
        if not 0 <= self.bss < 1 << 32:
            raise InvalidProgram(f"image bss={self.bss:#x} must be in [0, 2**32)")
        for name, rights in (("text", self.text), ("stack", self.stack)):
            if rights is not None and (not rights or set(rights) - set("rwx") or len(set(rights)) != len(rights)):
                raise InvalidProgram(f"image {name}={rights!r} must be letters from 'rwx', e.g. 'rx'")
        if self.mutation is not None and self.mutation not in MUTATIONS:
            raise InvalidProgram(f"image mutation={self.mutation!r} is unknown; known: {', '.join(sorted(MUTATIONS))}")


LAYOUTS = ("split", "shared", "single")


@dataclass(frozen=True)
class Image:
    steps: tuple[Step, ...]
    elf: ElfSpec = field(default_factory=ElfSpec)


def walk_steps(steps: tuple[Step, ...]) -> Iterator[Step]:
    """Every step of a step tree, depth first (a fork's child list before its parent list)."""
    for step in steps:
        yield step
        if step.child is not None:
            yield from walk_steps(step.child)
            yield from walk_steps(step.parent or ())


@dataclass(frozen=True)
class Program:
    images: tuple[Image, ...]

    def __post_init__(self) -> None:
        if not self.images:
            raise InvalidProgram("a program needs at least one image")
        if self.images[0].elf.mutation is not None:
            raise InvalidProgram(f"image 0 must be well formed (mutation={self.images[0].elf.mutation!r}); "
                                 "malformed images are reached by execve")
        for index, image in enumerate(self.images):
            _validate_image(index, image)

    @property
    def steps(self) -> tuple[Step, ...]:
        return self.images[0].steps

    def step_count(self) -> int:
        return sum(1 for image in self.images for _ in walk_steps(image.steps))


def _validate_image(index: int, image: Image) -> None:
    seen: set[int] = set()

    def check_list(steps: tuple[Step, ...], visible: frozenset[int]) -> None:
        for position, step in enumerate(steps):
            for arg in step.args:
                if isinstance(arg, Ref) and arg.result not in visible:
                    raise InvalidProgram(
                        f"image {index}: {step.op} refers to r{arg.result}, which this process has not computed yet")
            if step.result is not None:
                if step.result in seen:
                    raise InvalidProgram(f"image {index}: result r{step.result} is named twice")
                seen.add(step.result)
                visible = visible | {step.result}
            if step.op in FORK_OPS:
                if position != len(steps) - 1:
                    raise InvalidProgram(f"image {index}: {step.op} must end its step list (its continuations hold the rest)")
                check_list(step.child or (), visible)
                check_list(step.parent or (), visible)

    check_list(image.steps, frozenset())
