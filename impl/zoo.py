"""The bug zoo: real LevitateOS mistakes, each plantable by name at the place it was made.

Names and stories come from shared/bug-zoo.md; `missing-tlb-flush` is an extra entry for the
TLB-flush bug class. Each bug is a condition inside the kernel code that made the mistake
(grep for its name in impl/), never a post-processing of results.
"""
from __future__ import annotations

from ..oracle.errors import InvalidArgument

BUGS: dict[str, str] = {
    "elf-no-vmas": "ELF loader maps PT_LOAD pages but records no VMA; fork (copy by VMA) gives the child an empty image (exec.py _map_segment)",
    "frame-corrupt-on-return": "a fork child's saved register frame is read one slot (8 bytes) off on its first return to user (kernel.py _switch_to)",
    "stale-root-after-exec": "execve loads CR3 with the new table but the mm keeps the old root; later mmaps go into the old table (kernel.py _exec)",
    "shared-page-overwrite": "a segment sharing a page with the previous one gets a fresh frame with only its own bytes (exec.py _map_segment)",
    "no-cr3-switch": "the context switch never loads the next process's page-table root (kernel.py _switch_to)",
    "heap-not-forked": "brk maps the new heap pages but adds no VMA; fork (copy by VMA) loses them (mm.py set_brk)",
    "prot-flags-inverted": "mmap/mprotect translate PROT_* to PTE bits with the write and exec tests inverted (mm.py pte_bits_for_prot)",
    "tls-inside-stack": "the TLS page is mapped over the top stack page: stack data lost, frame leaked, no TLS VMA (exec.py load)",
    "missing-tlb-flush": "mprotect rewrites PTEs without owing a TLB flush; stale writable translations survive (mm.py _reprotect)",
}


def check_plant(plant) -> None:
    """Reject unknown bug names with the list of known ones (a typo must not run a clean kernel)."""
    unknown = sorted(set(plant) - set(BUGS))
    if unknown:
        raise InvalidArgument(f"unknown bug(s) {', '.join(unknown)}; known: {', '.join(sorted(BUGS))}")
