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
KIND_QUARANTINE = 3      # free, but held code: reusable only after a translation-cache flush
KIND_NAMES = {KIND_USER: "user", KIND_PAGETABLE: "pagetable"}


_IN_USE = re.compile(rb"[\x01\x02]")
_ONE_REF = array("I", [1])


def _split_runs(frames: list[int], limit: int = 4) -> list[tuple[int, int]] | None:
    """(first, count) for the maximal runs of consecutive ascending frames in `frames`, found by
    list compares (C speed); None when there are more than `limit` runs (a per-frame loop wins)."""
    runs, i, n = [], 0, len(frames)
    while i < n:
        if len(runs) == limit:
            return None
        first = frames[i]
        if frames[i:] == list(range(first, first + n - i)):
            end = n
        else:
            good, bad = i + 1, n               # frames[i:good] is a run, frames[i:bad] is not
            while bad - good > 1:
                mid = (good + bad) // 2
                if frames[i:mid] == list(range(first, first + mid - i)):
                    good = mid
                else:
                    bad = mid
            end = good
        runs.append((first, end - i))
        i = end
    return runs


class OutOfFrames(Exception):
    """Internal: no free frame; syscalls turn it into -ENOMEM before changing anything."""


class FrameTable:
    """First fit over the kind table: a frame is free when its kind byte is KIND_FREE, so
    `bytearray.find` finds the lowest free frame, or the lowest run of `count` free frames, at C
    speed. Allocation is deterministic, and a mapping made in one go gets consecutive frames
    whenever such a run exists, which lets fork copy and exit free it a run at a time."""

    def __init__(self, machine: Machine, limit: int | None = None):
        self.machine = machine
        self.nframes = machine.nframes if limit is None else min(limit, machine.nframes)
        self._no_refs = array("I", bytes(4 * self.nframes))     # copied by every reset
        self.reset()

    def reset(self) -> None:
        """Every non-kernel frame free (a fresh run on a reused machine)."""
        # Frames below KERNEL_FRAMES are never searched (their kind stays KIND_FREE).
        self.kind = bytearray(self.nframes)
        self.refcount = array("I", self._no_refs)
        self._nfree = self.nframes - KERNEL_FRAMES
        self._low = KERNEL_FRAMES          # no free frame below this one
        # Freed frames that held code wait here: reusing one needs a translation-cache flush,
        # so they are recycled all at once (one flush) when the free frames run out.
        self._quarantine: list[int] = []
        self.corrupt_puts = 0
        if self.machine.code_frames:
            self.machine.code_frames.clear()
            self.machine.tb_flush_owed = True

    @property
    def free_count(self) -> int:
        return self._nfree + len(self._quarantine)

    def _recycle(self) -> None:
        self.machine.code_frames.difference_update(self._quarantine)
        self.machine.tb_flush_owed = True
        kind = self.kind
        for frame in self._quarantine:
            kind[frame] = KIND_FREE
        if self._quarantine:
            self._low = min(self._low, min(self._quarantine))
        self._nfree += len(self._quarantine)
        self._quarantine = []

    @property
    def usable(self) -> int:
        return self.nframes - KERNEL_FRAMES

    def _first_free(self) -> int:
        frame = self.kind.find(0, self._low)
        if frame < 0:
            if not self._quarantine:
                raise OutOfFrames
            self._recycle()
            frame = self.kind.find(0, self._low)
        self._low = frame + 1
        return frame

    def alloc(self, kind: int = KIND_USER, zero: bool = True) -> int:
        frame = self._first_free()
        self._nfree -= 1
        if zero:
            self.machine.zero_frame(frame)
        self.refcount[frame] = 1
        self.kind[frame] = kind
        return frame

    def alloc_many(self, count: int, zero: bool = True) -> list[int]:
        """`count` user frames, ascending (callers checked free_count)."""
        if count == 0:
            return []
        if self._nfree < count:
            self._recycle()
            if self._nfree < count:
                raise OutOfFrames
        refcount, kind = self.refcount, self.kind
        first = kind.find(bytes(count), self._low)
        if first >= 0:
            if first == self._low:
                self._low = first + count
            self._nfree -= count
            refcount[first:first + count] = _ONE_REF * count
            kind[first:first + count] = bytes((KIND_USER,)) * count
            if zero:
                self.machine.zero_frames(first, count)
            return list(range(first, first + count))
        frames = []                            # fragmented: the lowest free frames one by one
        for _ in range(count):
            frame = kind.find(0, self._low)
            self._low = frame + 1
            refcount[frame] = 1
            kind[frame] = KIND_USER
            frames.append(frame)
        self._nfree -= count
        if zero:
            mem, zero_page = self.machine.mem, ZERO_PAGE
            for frame in frames:
                mem[frame << 12:(frame + 1) << 12] = zero_page
        return frames

    def get(self, frame: int) -> None:
        self.refcount[frame] += 1

    def put(self, frame: int) -> None:
        refcount = self.refcount
        if not KERNEL_FRAMES <= frame < self.nframes or refcount[frame] == 0:
            self.corrupt_puts += 1                 # see put_many
            return
        count = refcount[frame] - 1
        refcount[frame] = count
        if count == 0:
            self._release(frame)

    def _release(self, frame: int) -> None:
        if frame in self.machine.code_frames:
            self.kind[frame] = KIND_QUARANTINE
            self._quarantine.append(frame)
        else:
            self.kind[frame] = KIND_FREE
            self._nfree += 1
            if frame < self._low:
                self._low = frame

    def put_many(self, frames) -> None:
        """Drop one reference to each of `frames` (runs of consecutive frames at C speed)."""
        runs = _split_runs(frames) if len(frames) > 8 else None
        if runs is None:
            self._put_each(frames)
            return
        refcount, code = self.refcount, self.machine.code_frames
        for first, count in runs:
            frames_run = range(first, first + count)
            if (count > 8 and KERNEL_FRAMES <= first and first + count <= self.nframes
                    and refcount[first:first + count] == _ONE_REF * count and code.isdisjoint(frames_run)):
                # A private run (one reference each, never code): slice writes.
                refcount[first:first + count] = array("I", bytes(4 * count))
                self.kind[first:first + count] = bytes(count)
                self._nfree += count
                if first < self._low:
                    self._low = first
            else:
                self._put_each(frames_run)

    def _put_each(self, frames) -> None:
        refcount, kind, code, nframes = self.refcount, self.kind, self.machine.code_frames, self.nframes
        for frame in frames:
            if not KERNEL_FRAMES <= frame < nframes or refcount[frame] == 0:
                # A page table the user could write to (only under a planted bug) named a frame
                # that is not in use: count the corruption instead of freeing it twice.
                self.corrupt_puts += 1
                continue
            count = refcount[frame] - 1
            refcount[frame] = count
            if count:
                continue
            if frame in code:                  # _release, inline: this loop is hot
                kind[frame] = KIND_QUARANTINE
                self._quarantine.append(frame)
            else:
                kind[frame] = KIND_FREE
                self._nfree += 1
                if frame < self._low:
                    self._low = frame

    def allocated(self) -> list[int]:
        """Frames in use, ascending (a C-speed scan of the kind table for user/table bytes)."""
        return [m.start() for m in _IN_USE.finditer(self.kind, KERNEL_FRAMES)]
