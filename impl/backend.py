"""ImplBackend: runs a program's images on the Unicorn kernel and returns its trace."""
from __future__ import annotations

import platform
from typing import Callable

from ..oracle.errors import InvalidArgument
from ..specs.profiles import LEVITATE
from ..specs.trace import Backend, Budget, Event, Trace
from .frames import FrameTable
from .kernel import Kernel
from .machine import Machine
from .zoo import check_plant

FORK_STRATEGIES = ("eager", "cow")

# One booted machine per memory size, shared by every ImplBackend of the process: a run owns it
# only while it runs (runs are sequential), and each run resets the frame table.
_MACHINES: dict[int, tuple[Machine, FrameTable]] = {}


def _shared_machine(memory_mib: int) -> tuple[Machine, FrameTable]:
    if memory_mib not in _MACHINES:
        machine = Machine(memory_mib)
        limit = LEVITATE.frame_budget if memory_mib == 64 else None
        _MACHINES[memory_mib] = (machine, FrameTable(machine, limit))
    return _MACHINES[memory_mib]


class ImplBackend(Backend):
    """The Unicorn-backed kernel as a Backend. The machine boots once per backend and is reused
    by every run (a run resets the frame allocator; frames are zeroed when allocated)."""
    name = "impl"
    profile_name = LEVITATE.name

    def __init__(self, fork_strategy: str = "eager", plant: frozenset[str] = frozenset(),
                 memory_mib: int = 64, quantum: int | None = None):
        if fork_strategy not in FORK_STRATEGIES:
            raise InvalidArgument(f"fork_strategy={fork_strategy!r}; expected one of {', '.join(FORK_STRATEGIES)}")
        if memory_mib < 4:
            raise InvalidArgument(f"memory_mib={memory_mib} is too small; the kernel needs at least 4 MiB")
        check_plant(plant)
        self.fork_strategy = fork_strategy
        self.plant = frozenset(plant)
        self.memory_mib = memory_mib
        self.quantum = quantum
        self._machine: Machine | None = None
        self._frames: FrameTable | None = None
        self.last_kernel: Kernel | None = None

    @property
    def machine(self) -> Machine:
        if self._machine is None:
            self._machine, self._frames = _shared_machine(self.memory_mib)
        return self._machine

    def kernel(self, images: dict[str, bytes], budget: Budget = Budget(),
               on_event: Callable[[Event, Kernel], None] | None = None) -> Kernel:
        """A fresh kernel on the (reused) machine, ready to `run(entry)`."""
        machine = self.machine
        self._frames.reset()
        machine.faulted = True                 # restore the boot context before the first run
        extra = {} if self.quantum is None else {"quantum": self.quantum}
        return Kernel(machine, self._frames, images, self.fork_strategy, self.plant, budget,
                      on_event, LEVITATE, **extra)

    def run(self, images: dict[str, bytes], entry: str, budget: Budget = Budget(),
            on_event: Callable[[Event, Kernel], None] | None = None) -> Trace:
        if entry not in images:
            raise InvalidArgument(f"entry={entry!r} is not in the image table ({', '.join(sorted(images)) or 'empty'})")
        kernel = self.kernel(images, budget, on_event)
        self.last_kernel = kernel
        events = kernel.run(entry)
        meta = (("fork_strategy", self.fork_strategy), ("plant", ",".join(sorted(self.plant))),
                ("memory_mib", str(self.memory_mib)), ("instructions", str(kernel.instructions)))
        return Trace(events=events, backend=self.name, platform=f"unicorn on {platform.platform()}", meta=meta)
