"""Profiles: where layout and limits come from (DESIGN.md contract 8).

Semantics are Linux's everywhere; a profile says which layout decisions are fixed and which the
kernel makes (learned as choices), and which resource limits a backend declares so that the model
can allow both answers beyond them.
"""
from __future__ import annotations

from dataclasses import dataclass

from .abi import PAGE_SIZE, TASK_SIZE


@dataclass(frozen=True)
class Profile:
    name: str
    # Fixed layout, or None where the kernel chooses (learned from the trace's Exec event).
    stack_top: int | None
    stack_pages: int | None
    tls_page: int | None                 # address of the one TLS page the kernel maps, if any
    mmap_lo: int                         # mmap(NULL) places mappings inside [mmap_lo, mmap_hi)
    mmap_hi: int
    mmap_topdown: bool                   # top-down (highest fitting gap) or bottom-up placement
    has_vdso: bool                       # Linux maps [vdso] and [vvar]; levitate maps neither
    brk_random: bool                     # initial break randomised above the image's end
    # Declared limits (DESIGN.md contract 5): beyond them both answers are allowed.
    frame_budget: int | None             # frames of physical memory the backend has, None: unknown
    max_processes: int | None            # fork beyond this may fail with EAGAIN
    # Errno codes the kernel may give for resource exhaustion at any allocating call.
    exhaustion_errnos: tuple[int, ...] = ()
    # The pid orphans are re-parented to (and the root's parent), when the backend fixes it;
    # None: learned from the trace (Linux: the tracer, a subreaper).
    reaper_pid: int | None = None


LEVITATE_STACK_TOP = 0x7FFF_FFFF_0000
LEVITATE_STACK_PAGES = 128

LEVITATE = Profile(
    name="levitate",
    stack_top=LEVITATE_STACK_TOP,
    stack_pages=LEVITATE_STACK_PAGES,
    # One TLS page directly above the stack top, outside the stack's range (zoo: tls-inside-stack).
    tls_page=LEVITATE_STACK_TOP,
    mmap_lo=0x1000_0000_0000,
    mmap_hi=0x7000_0000_0000,
    mmap_topdown=False,
    has_vdso=False,
    brk_random=False,
    frame_budget=16384,                  # 64 MiB of emulated physical memory
    max_processes=64,
    reaper_pid=1,                        # impl's init
)

LINUX = Profile(
    name="linux",
    stack_top=None,
    stack_pages=None,
    tls_page=None,
    mmap_lo=0x1_0000,
    mmap_hi=TASK_SIZE,
    mmap_topdown=True,
    has_vdso=True,
    brk_random=True,
    frame_budget=None,
    max_processes=None,
)

PROFILES = {p.name: p for p in (LEVITATE, LINUX)}


def levitate_stack_range() -> tuple[int, int]:
    """[start, end) of the levitate profile's initial stack."""
    return LEVITATE_STACK_TOP - LEVITATE_STACK_PAGES * PAGE_SIZE, LEVITATE_STACK_TOP
