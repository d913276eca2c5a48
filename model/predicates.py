"""The only place bit tests and range checks are written (STYLE.md item 2).

Every function works on concrete values and on Z3 terms (model/logic.py). Specs, the
abstraction and the oracle import these.
"""
from __future__ import annotations

from typing import Any

from ..specs.abi import PAGE_SHIFT, PAGE_SIZE, PROT_EXEC, PROT_WRITE, TASK_SIZE
from ..specs.trace import RIGHT_R, RIGHT_W, RIGHT_X
from .ops import add, all_of, any_of, band, bnot, eq, ite, ne, shr, sub, uge, ule, ult
from .state import (ATTR_GROWSDOWN, ATTR_KIND, ATTR_KIND_SHIFT, ATTR_MAPPED, ATTR_OBJ, ATTR_OBJ_SHIFT,
                    ATTR_PROT, ATTR_SHARED, ATTR_SIGBUS, MASKED_KINDS, SPECIAL_KINDS)

PAGE_LOW = PAGE_SIZE - 1


def is_page_aligned(addr: Any) -> Any:
    return eq(band(addr, PAGE_LOW), 0)


def page_align_down(addr: Any) -> Any:
    return band(addr, bnot(PAGE_LOW))


def page_align_up(value: Any) -> Any:
    """Linux's PAGE_ALIGN: wraps to 0 for values in the last page of the address space."""
    return band(add(value, PAGE_LOW), bnot(PAGE_LOW))


def page_number(addr: Any) -> Any:
    return shr(addr, PAGE_SHIFT)


def is_user_range(addr: Any, length: Any) -> Any:
    """[addr, addr+length) lies inside user space (munmap's `start > TASK_SIZE || len >
    TASK_SIZE - start` negated)."""
    return all_of(ule(addr, TASK_SIZE), ule(length, sub(TASK_SIZE, addr)))


def is_canonical(addr: Any) -> Any:
    """x86-64 48-bit canonical form: the lower half or the upper half."""
    return any_of(ult(addr, 0x0000_8000_0000_0000), uge(addr, 0xFFFF_8000_0000_0000))


# --- page attributes -----------------------------------------------------------------------

def is_mapped(attr: Any) -> Any:
    return ne(band(attr, ATTR_MAPPED), 0)


def is_shared(attr: Any) -> Any:
    return ne(band(attr, ATTR_SHARED), 0)


def is_sigbus(attr: Any) -> Any:
    return ne(band(attr, ATTR_SIGBUS), 0)


def is_growsdown(attr: Any) -> Any:
    return ne(band(attr, ATTR_GROWSDOWN), 0)


def prot_of(attr: Any) -> Any:
    return band(attr, ATTR_PROT)


def kind_of(attr: Any) -> Any:
    return shr(band(attr, ATTR_KIND), ATTR_KIND_SHIFT)


def obj_of(attr: Any) -> Any:
    return shr(band(attr, ATTR_OBJ), ATTR_OBJ_SHIFT)


def with_prot(attr: Any, prot: Any) -> Any:
    """The attribute with its PROT bits replaced (mprotect), unmapped pages untouched."""
    return ite(is_mapped(attr), add(band(attr, bnot(ATTR_PROT)), band(prot, ATTR_PROT)), attr)


def can_read(attr: Any) -> Any:
    """x86-64: any of R, W, X makes a present user page readable."""
    return all_of(is_mapped(attr), ne(prot_of(attr), 0))


def can_write(attr: Any) -> Any:
    return all_of(is_mapped(attr), ne(band(attr, PROT_WRITE), 0))


def can_exec(attr: Any) -> Any:
    """NX is on: only PROT_EXEC pages are executable."""
    return all_of(is_mapped(attr), ne(band(attr, PROT_EXEC), 0))


def is_masked(attr: Any) -> bool:
    """Kernel-owned contents (stack, vDSO, TLS ...): not compared (concrete only)."""
    return bool(attr & ATTR_MAPPED) and ((attr & ATTR_KIND) >> ATTR_KIND_SHIFT) in MASKED_KINDS


def is_special(attr: Any) -> bool:
    """A special mapping that refuses splitting ([vdso], [vvar]) (concrete only)."""
    return bool(attr & ATTR_MAPPED) and ((attr & ATTR_KIND) >> ATTR_KIND_SHIFT) in SPECIAL_KINDS


def rights_of(attr: int) -> int:
    """Effective user rights (specs.trace RIGHT_*) of a page (concrete only)."""
    if not attr & ATTR_MAPPED:
        return 0
    prot = attr & ATTR_PROT
    if not prot:
        return 0
    return RIGHT_R | (RIGHT_W if prot & PROT_WRITE else 0) | (RIGHT_X if prot & PROT_EXEC else 0)


def user_pages(addr: Any, length: Any) -> tuple[Any, Any]:
    """[lo, hi) page numbers of a page-aligned range."""
    return page_number(addr), page_number(add(addr, length))


__all__ = [n for n in dir() if not n.startswith("_") and n[0].islower() and n not in {"annotations"}]
