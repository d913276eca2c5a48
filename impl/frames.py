"""The frame allocator: physical frames with reference counts.

A user frame's count is the number of page-table entries that map it (a private page after a
copy-on-write fork counts once per process; a MAP_SHARED page once per sharer). Page-table frames
count 1. Freeing happens when the count drops to zero.
"""
from __future__ import annotations

import re
from array import array

from .machine import KERNEL_FRAMES, ZERO_PAGE, Machine

KIND_FREE = 0
KIND_USER = 1
KIND_PAGETABLE = 2
KIND_NAMES = {KIND_USER: "user", KIND_PAGETABLE: "pagetable"}


_IN_USE = re.compile(rb"[^\x00]")


class OutOfFrames(Exception):
    """Internal: no free frame; syscalls turn it into -ENOMEM before changing anything."""


class FrameTable:
    def __init__(self, machine: Machine, limit: int | None = None):
        self.machine = machine
        self.nframes = machine.nframes if limit is None else min(limit, machine.nframes)
        self.reset()

    def reset(self) -> None:
        """Every non-kernel frame free (a fresh run on a reused machine)."""
        # Popped from the end: ascending frame numbers first, so eager copies stay contiguous.
        self._free = list(range(self.nframes - 1, KERNEL_FRAMES - 1, -1))
        # Freed frames that held code wait here: reusing one needs a translation-cache flush,
        # so they are recycled all at once (one flush) when the free list runs dry.
        self._quarantine: list[int] = []
        self.refcount = array("I", bytes(4 * self.nframes))
        self.corrupt_puts = 0
        self.kind = bytearray(self.nframes)
        if self.machine.code_frames:
            self.machine.code_frames.clear()
            self.machine.tb_flush_owed = True

    @property
    def free_count(self) -> int:
        return len(self._free) + len(self._quarantine)

    def _recycle(self) -> None:
        self.machine.code_frames.difference_update(self._quarantine)
        self.machine.tb_flush_owed = True
        self._quarantine.reverse()
        self._free.extend(self._quarantine)
        self._quarantine = []

    @property
    def usable(self) -> int:
        return self.nframes - KERNEL_FRAMES

    def alloc(self, kind: int = KIND_USER, zero: bool = True) -> int:
        if not self._free:
            if not self._quarantine:
                raise OutOfFrames
            self._recycle()
        frame = self._free.pop()
        if zero:
            self.machine.zero_frame(frame)
        self.refcount[frame] = 1
        self.kind[frame] = kind
        return frame

    def alloc_many(self, count: int, zero: bool = True) -> list[int]:
        """`count` user frames (callers checked free_count)."""
        if len(self._free) < count:
            self._recycle()
            if len(self._free) < count:
                raise OutOfFrames
        free = self._free
        frames = free[len(free) - count:][::-1]
        del free[len(free) - count:]
        refcount, kind = self.refcount, self.kind
        mem, zero_page = self.machine.mem, ZERO_PAGE
        for frame in frames:
            refcount[frame] = 1
            kind[frame] = KIND_USER
            if zero:
                mem[frame << 12:(frame + 1) << 12] = zero_page
        return frames

    def get(self, frame: int) -> None:
        self.refcount[frame] += 1

    def put(self, frame: int) -> None:
        self.put_many((frame,))

    def put_many(self, frames) -> None:
        refcount, kind, code = self.refcount, self.kind, self.machine.code_frames
        for frame in frames:
            if not KERNEL_FRAMES <= frame < self.nframes or refcount[frame] == 0:
                # A page table the user could write to (only under a planted bug) named a frame
                # that is not in use: count the corruption instead of freeing it twice.
                self.corrupt_puts += 1
                continue
            count = refcount[frame] - 1
            refcount[frame] = count
            if count == 0:
                kind[frame] = KIND_FREE
                (self._quarantine if frame in code else self._free).append(frame)

    def allocated(self) -> list[int]:
        """Frames in use, ascending (a C-speed scan of the kind table for non-zero bytes)."""
        return [m.start() for m in _IN_USE.finditer(self.kind, KERNEL_FRAMES)]
