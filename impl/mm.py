"""Address spaces: page tables in emulated memory, VMA lists, mmap/munmap/mprotect/brk.

Memory is mapped eagerly, as LevitateOS does: every page of a VMA gets a zeroed frame when the VMA
is created, so a present PTE exists for every mapped page. PROT_NONE pages stay present but
supervisor-only (the frame, and its data, survive an mprotect round trip). A private page shared
after a copy-on-write fork is present read-only with the software PTE_COW bit; its write fault
copies it. The semantics (order of checks, partial effects) are Linux's, as measured in
linux-facts.md, for an unprivileged process.
"""
from __future__ import annotations

from bisect import insort
from operator import attrgetter

from ..specs.abi import (DAC_MMAP_MIN_ADDR, MAP_ANONYMOUS, MAP_DROPPABLE, MAP_FIXED,
                         MAP_FIXED_NOREPLACE, MAP_GROWSDOWN, MAP_HUGETLB, MAP_LOCKED, MAP_PRIVATE,
                         MAP_SHARED, MAP_TYPE, MMAP_MIN_ADDR, PAGE_SIZE, PROT_EXEC, PROT_GROWSDOWN,
                         PROT_GROWSUP, PROT_READ, PROT_SEM, PROT_WRITE, TASK_SIZE, U64, Errno)
from .frames import KIND_PAGETABLE, FrameTable, OutOfFrames
from .machine import (KERNEL_PML4_SLOT, PTE_COW, PTE_FRAME_MASK, PTE_NX, PTE_P,
                      PTE_RW, PTE_US, TABLE_FLAGS, Machine)

STACK_GUARD_GAP = 256 * PAGE_SIZE   # mm/mmap.c stack_guard_gap: kept free below a growsdown VMA
RLIMIT_STACK = 8 << 20              # a growsdown VMA grows on faults up to this size
PROT_RWX = PROT_READ | PROT_WRITE | PROT_EXEC


def is_run(entries: list[int]) -> bool:
    """Entries e, e + 4 KiB, e + 8 KiB ...: consecutive frames with equal flags (a whole eager
    mapping usually is one). Tested at C speed: entries with NX set are three-digit Python ints,
    and per-entry arithmetic on them is what made table walks slow."""
    return bool(entries) and entries == list(range(entries[0], entries[0] + (len(entries) << 12), PAGE_SIZE))


def _leaf_frames(mem64, table: int) -> list[int]:
    """Frame numbers of the present entries of a last-level table, in table order."""
    entries = list(filter(None, mem64[table >> 3:(table >> 3) + 512].tolist()))
    if entries and entries[0] & PTE_P and not (entries[0] ^ entries[-1]) & ~PTE_FRAME_MASK and is_run(entries):
        first = (entries[0] & PTE_FRAME_MASK) >> 12
        return list(range(first, first + len(entries)))
    return [(e & PTE_FRAME_MASK) >> 12 for e in entries if e & PTE_P]


def page_align(value: int) -> int:
    return (value + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1) & U64


def page_down(value: int) -> int:
    return value & ~(PAGE_SIZE - 1)


def pte_bits_for_prot(prot: int, plant: frozenset[str] = frozenset()) -> int:
    """Leaf PTE bits for PROT_* rights: any right makes the page user-accessible (x86 cannot
    express write-only or exec-only); PROT_NONE keeps the page present for the kernel only."""
    if "prot-flags-inverted" in plant:
        # LevitateOS: the writable and no-execute tests were written the wrong way round.
        bits = PTE_P | PTE_US
        if not prot & PROT_WRITE:
            bits |= PTE_RW
        if prot & PROT_EXEC:
            bits |= PTE_NX
        return bits
    bits = PTE_P
    if prot & PROT_RWX:
        bits |= PTE_US
    if prot & PROT_WRITE:
        bits |= PTE_RW
    if not prot & PROT_EXEC:
        bits |= PTE_NX
    return bits


class Vma:
    """[start, end) with one protection; `kind`: image, heap, stack, tls or mmap; `growsdown`:
    MAP_GROWSDOWN (a fault just below it extends it down); `wipeonfork`: a fork child gets zero
    pages here (Linux's VM_WIPEONFORK, which MAP_DROPPABLE implies)."""
    __slots__ = ("start", "end", "prot", "shared", "kind", "growsdown", "wipeonfork")

    def __init__(self, start: int, end: int, prot: int, shared: bool, kind: str, growsdown: bool = False,
                 wipeonfork: bool = False):
        self.start, self.end, self.prot, self.shared, self.kind = start, end, prot, shared, kind
        self.growsdown, self.wipeonfork = growsdown, wipeonfork

    def copy(self) -> "Vma":
        return Vma(self.start, self.end, self.prot, self.shared, self.kind, self.growsdown, self.wipeonfork)

    def with_range(self, start: int, end: int) -> "Vma":
        """This VMA's attributes over [start, end): a piece of a split keeps every attribute."""
        piece = self.copy()
        piece.start, piece.end = start, end
        return piece

    def start_gap(self) -> int:
        """vm_start_gap: placements keep stack_guard_gap free below a growsdown VMA."""
        return max(0, self.start - STACK_GUARD_GAP) if self.growsdown else self.start

    def __repr__(self) -> str:
        return f"Vma({self.start:#x}-{self.end:#x} prot={self.prot} {'shared' if self.shared else 'private'} {self.kind})"


_vma_start = attrgetter("start")


class AddressSpace:
    """One page-table root (a PML4 frame) plus the VMA list and the break."""

    def __init__(self, machine: Machine, frames: FrameTable, plant: frozenset[str], profile):
        self.machine = machine
        self.frames = frames
        self.plant = plant
        self.profile = profile
        root_frame = frames.alloc(KIND_PAGETABLE)
        self.root = root_frame * PAGE_SIZE
        machine.write_u64(self.root + 8 * KERNEL_PML4_SLOT, machine.kernel_pml4_entry())
        self.vmas: list[Vma] = []
        self.start_brk = 0
        self.brk = 0
        self.flush_owed: list[int] = []      # addresses whose translations must be flushed
        self._pt_cache: dict[tuple[int, int], int] = {}

    # --- page tables ---------------------------------------------------------------------------
    def page_table(self, va: int, create: bool, root: int | None = None) -> int | None:
        """Physical address of the last-level table covering `va` (allocating missing levels)."""
        root = self.root if root is None else root
        key = (root, va >> 21)
        table = self._pt_cache.get(key)
        if table is not None:
            return table
        m = self.machine
        table = root
        for shift in (39, 30, 21):
            entry_pa = table + 8 * ((va >> shift) & 511)
            entry = m.read_u64(entry_pa)
            if not entry & PTE_P:
                if not create:
                    return None
                entry = self.frames.alloc(KIND_PAGETABLE) * PAGE_SIZE | TABLE_FLAGS
                m.write_u64(entry_pa, entry)
            table = entry & PTE_FRAME_MASK
        self._pt_cache[key] = table
        return table

    def get_pte(self, va: int) -> int:
        table = self.page_table(va, False)
        return 0 if table is None else self.machine.read_u64(table + 8 * ((va >> 12) & 511))

    def set_pte(self, va: int, value: int) -> None:
        table = self.page_table(va, True)
        self.machine.write_u64(table + 8 * ((va >> 12) & 511), value)
        if value & PTE_P and not value & PTE_NX:
            self.machine.code_frames.add((value & PTE_FRAME_MASK) >> 12)
        self.flush_owed.append(va)

    def tables_needed(self, lo: int, hi: int) -> int:
        """Upper bound on the page-table frames mapping [lo, hi) may allocate."""
        return ((hi - lo) >> 21) + 2 + ((hi - lo) >> 30) + 2 + 2

    def map_fresh(self, lo: int, hi: int, bits: int) -> None:
        """Map zeroed frames over [lo, hi) (callers checked that enough frames are free)."""
        if hi <= lo:
            return
        # Tables first, then the data frames in one run: consecutive mappings (a stack, then its
        # TLS page) get consecutive frames, which later copies and frees handle a run at a time.
        tables, va = [], lo
        while va < hi:
            tables.append(self.page_table(va, True))
            va = (va | 0x1F_FFFF) + 1
        frames = self.frames.alloc_many((hi - lo) >> 12)
        machine = self.machine
        executable = bits & PTE_P and not bits & PTE_NX
        done, va = 0, lo
        for table in tables:
            next_va = min(hi, (va | 0x1F_FFFF) + 1)
            chunk = frames[done:done + ((next_va - va) >> 12)]
            machine.write_entries(table + 8 * ((va >> 12) & 511), [(f << 12) | bits for f in chunk])
            if executable:
                machine.code_frames.update(chunk)
            done += len(chunk)
            va = next_va
        # No flush owed: the TLB never holds a translation for a page that was not present.

    def leaf_tables(self, lo: int, hi: int, root: int | None = None):
        """(table, first_va, end_va) for every existing last-level table over [lo, hi),
        skipping absent upper levels in one step (a 64 TiB range costs a handful of reads)."""
        root = self.root if root is None else root
        mem64 = self.machine.mem64
        va = lo
        while va < hi:
            e4 = mem64[(root >> 3) + ((va >> 39) & 511)]
            if not e4 & PTE_P:
                va = ((va >> 39) + 1) << 39
                continue
            e3 = mem64[((e4 & PTE_FRAME_MASK) >> 3) + ((va >> 30) & 511)]
            if not e3 & PTE_P:
                va = ((va >> 30) + 1) << 30
                continue
            e2 = mem64[((e3 & PTE_FRAME_MASK) >> 3) + ((va >> 21) & 511)]
            next_va = ((va >> 21) + 1) << 21
            if e2 & PTE_P:
                yield e2 & PTE_FRAME_MASK, va, min(hi, next_va)
            va = next_va

    def unmap_ptes(self, lo: int, hi: int) -> None:
        """Clear every leaf entry in [lo, hi), dropping the frames' references."""
        machine = self.machine
        mem64 = machine.mem64
        for table, va, end in list(self.leaf_tables(lo, hi)):
            first = (table >> 3) + ((va >> 12) & 511)
            count = (end - va) >> 12
            entries = mem64[first:first + count].tolist()
            if not any(entries):
                continue
            self.frames.put_many([(e & PTE_FRAME_MASK) >> 12 for e in entries if e & PTE_P])
            machine.write_entries(first << 3, [0] * count)
            self.flush_owed.append(va)

    def present_ptes(self, lo: int, hi: int, root: int | None = None):
        """(va, entry) for every non-zero leaf entry in [lo, hi), ascending."""
        mem64 = self.machine.mem64
        for table, va, end in self.leaf_tables(lo, hi, root):
            first = (va >> 12) & 511
            entries = mem64[(table >> 3) + first:(table >> 3) + first + ((end - va) >> 12)].tolist()
            base = va
            for i, entry in enumerate(entries):
                if entry:
                    yield base + (i << 12), entry

    def teardown(self, root: int | None = None) -> None:
        """Free every user frame and table reachable from the root, and the root itself."""
        root = self.root if root is None else root
        put, mem64 = self.frames.put, self.machine.mem64

        def present(table: int, count: int = 512) -> list[int]:
            # filter(None, ...) drops the (many) zero entries at C speed.
            return [e & PTE_FRAME_MASK for e in filter(None, mem64[table >> 3:(table >> 3) + count].tolist())
                    if e & PTE_P]
        for pdpt in present(root, KERNEL_PML4_SLOT):
            for pd in present(pdpt):
                for pt in present(pd):
                    self.frames.put_many(_leaf_frames(mem64, pt))
                    put(pt >> 12)
                put(pd >> 12)
            put(pdpt >> 12)
        put(root >> 12)
        self._pt_cache = {k: v for k, v in self._pt_cache.items() if k[0] != root}

    # --- VMAs ------------------------------------------------------------------------------------
    def find_vma(self, va: int) -> Vma | None:
        for v in self.vmas:
            if v.end > va:
                return v if v.start <= va else None
        return None

    def overlaps(self, lo: int, hi: int) -> bool:
        return any(v.start < hi and lo < v.end for v in self.vmas)

    def insert_vma(self, vma: Vma) -> None:
        insort(self.vmas, vma, key=_vma_start)

    def carve(self, lo: int, hi: int) -> None:
        """Remove [lo, hi) from the VMA list, splitting the VMAs at its edges."""
        kept: list[Vma] = []
        for v in self.vmas:
            if v.end <= lo or v.start >= hi:
                kept.append(v)
                continue
            if v.start < lo:
                kept.append(v.with_range(v.start, lo))
            if v.end > hi:
                kept.append(v.with_range(hi, v.end))
        self.vmas = kept

    def split_at(self, addr: int) -> None:
        v = self.find_vma(addr)
        if v is not None and v.start < addr:
            tail = v.with_range(addr, v.end)
            v.end = addr
            self.insert_vma(tail)

    def find_free(self, length: int) -> int | None:
        """Bottom-up first fit inside the profile's [mmap_lo, mmap_hi)."""
        lo, hi = self.profile.mmap_lo, self.profile.mmap_hi
        cursor = lo
        for v in self.vmas:
            if v.end <= cursor:
                continue
            if v.start_gap() >= hi:
                break
            if v.start_gap() >= cursor and v.start_gap() - cursor >= length:
                return cursor
            cursor = max(cursor, v.end)
        return cursor if cursor + length <= hi else None

    def next_vma(self, va: int) -> Vma | None:
        """The first VMA ending above `va` (find_vma)."""
        for v in self.vmas:
            if v.end > va:
                return v
        return None

    def hint_fits(self, lo: int, hi: int) -> bool:
        nxt = self.next_vma(lo)
        return nxt is None or hi <= nxt.start_gap()

    def expand_downwards(self, va: int) -> bool:
        """A fault at unmapped `va` just below a growsdown VMA extends it (expand_downwards):
        not below mmap_min_addr, not within stack_guard_gap of an accessible non-growsdown VMA
        below, not beyond RLIMIT_STACK. True when the VMA now covers `va`."""
        page = page_down(va)
        vma = self.next_vma(page)
        if vma is None or not vma.growsdown or vma.start <= page or page < MMAP_MIN_ADDR:
            return False
        prev = None
        for v in self.vmas:
            if v.end <= page:
                prev = v
        if prev is not None and not prev.growsdown and prev.prot & PROT_RWX and page - prev.end < STACK_GUARD_GAP:
            return False
        if vma.end - page > RLIMIT_STACK or not self.enough_frames(page, vma.start):
            return False
        self.map_fresh(page, vma.start, pte_bits_for_prot(vma.prot, self.plant))
        vma.start = page
        return True

    def enough_frames(self, lo: int, hi: int) -> bool:
        return self.frames.free_count >= ((hi - lo) >> 12) + self.tables_needed(lo, hi)

    # --- syscalls --------------------------------------------------------------------------------
    def mmap(self, addr: int, length: int, prot: int, flags: int, fd: int, offset: int) -> int:
        if offset & (PAGE_SIZE - 1):
            return -Errno.EINVAL                      # offset checked first, before EBADF
        if not flags & MAP_ANONYMOUS:
            return -Errno.EBADF                       # no files: every fd is unopened
        if flags & MAP_HUGETLB:
            return -Errno.ENOMEM                      # no huge pages reserved
        if length == 0:
            return -Errno.EINVAL
        fixed = flags & (MAP_FIXED | MAP_FIXED_NOREPLACE)
        if not fixed:
            addr = page_down(addr)                    # round_hint_to_min: rounded down, raised
            if addr and addr < MMAP_MIN_ADDR:
                addr = MMAP_MIN_ADDR
        alen = page_align(length)
        if alen == 0 or alen > TASK_SIZE:
            return -Errno.ENOMEM
        if fixed:
            if addr >= U64 - 4094:
                # get_unmapped_area hands a MAP_FIXED address back unchecked, and IS_ERR_VALUE
                # then takes one in the errno range for an error: it is returned as it is.
                return addr - (1 << 64)
            if addr > TASK_SIZE - alen:
                return -Errno.ENOMEM
            if addr & (PAGE_SIZE - 1):
                return -Errno.EINVAL
            if addr < DAC_MMAP_MIN_ADDR:
                return -Errno.EPERM
            start = addr
        else:
            if addr and addr <= TASK_SIZE - alen and self.hint_fits(addr, addr + alen):
                start = addr                          # a free hint is honoured
            else:
                found = self.find_free(alen)
                if found is None:
                    return -Errno.ENOMEM
                start = found
        if flags & MAP_FIXED_NOREPLACE and self.overlaps(start, start + alen):
            return -Errno.EEXIST
        map_type = flags & MAP_TYPE
        if map_type == MAP_SHARED:
            if flags & MAP_GROWSDOWN:
                return -Errno.EINVAL
            shared = True
        elif map_type == MAP_DROPPABLE:
            if flags & (MAP_LOCKED | MAP_GROWSDOWN):
                return -Errno.EINVAL
            shared = False
        elif map_type == MAP_PRIVATE:
            shared = False
        else:
            return -Errno.EINVAL
        end = start + alen
        if not self.enough_frames(start, end):
            return -Errno.ENOMEM                      # out of frames: nothing changed
        prot &= PROT_RWX                              # mmap never validates prot
        if fixed:
            self.carve(start, end)                    # MAP_FIXED: implicit munmap
            self.unmap_ptes(start, end)
        self.map_fresh(start, end, pte_bits_for_prot(prot, self.plant))
        self.insert_vma(Vma(start, end, prot, shared, "mmap", bool(flags & MAP_GROWSDOWN) and not shared,
                            wipeonfork=map_type == MAP_DROPPABLE))
        return start

    def munmap(self, addr: int, length: int) -> int:
        if addr & (PAGE_SIZE - 1) or addr > TASK_SIZE or length > TASK_SIZE - addr:
            return -Errno.EINVAL
        alen = page_align(length)
        if alen == 0:
            return -Errno.EINVAL
        self.carve(addr, addr + alen)
        self.unmap_ptes(addr, addr + alen)
        return 0

    def mprotect(self, addr: int, length: int, prot: int) -> int:
        grows = prot & (PROT_GROWSDOWN | PROT_GROWSUP)
        prot &= ~grows
        if grows == PROT_GROWSDOWN | PROT_GROWSUP:
            return -Errno.EINVAL                      # can't be both, checked first
        if addr & (PAGE_SIZE - 1):
            return -Errno.EINVAL
        if length == 0:
            return 0                                  # before any prot check
        end = (addr + page_align(length)) & U64
        if page_align(length) == 0 or end <= addr:
            return -Errno.ENOMEM                      # wrap check precedes the prot check
        if prot & ~(PROT_RWX | PROT_SEM):
            return -Errno.EINVAL                      # arch_validate_prot
        first = self.next_vma(addr)
        if first is None or first.start >= end:
            return -Errno.ENOMEM
        if grows == PROT_GROWSDOWN:
            if not first.growsdown:
                return -Errno.EINVAL
            addr = first.start                        # extends the range down to vm_start
        else:
            if first.start > addr:
                return -Errno.ENOMEM                  # starts in a hole
            if grows == PROT_GROWSUP:
                return -Errno.EINVAL                  # x86 has no VM_GROWSUP
        prot &= PROT_RWX
        self.split_at(addr)
        self.split_at(end)
        cursor = addr
        for v in list(self.vmas):
            if v.end <= addr or v.start >= end:
                continue
            if v.start != cursor:
                return -Errno.ENOMEM                  # a hole: the pages before it stay changed
            v.prot = prot
            self._reprotect(v.start, v.end, prot, v.shared)
            cursor = v.end
        return 0 if cursor >= end else -Errno.ENOMEM

    def _reprotect(self, lo: int, hi: int, prot: int, shared: bool) -> None:
        """Rewrite the rights of every entry in [lo, hi), a last-level table at a time."""
        bits = pte_bits_for_prot(prot, self.plant)
        rights = PTE_RW | PTE_US | PTE_NX
        refcount, machine = self.frames.refcount, self.machine
        mem64 = machine.mem64
        executable = bits & PTE_P and not bits & PTE_NX
        for table, va, end in list(self.leaf_tables(lo, hi)):
            first = (table >> 3) + ((va >> 12) & 511)
            entries = mem64[first:first + ((end - va) >> 12)].tolist()
            new = []
            for entry in entries:
                if not entry & PTE_P:
                    new.append((entry & ~rights) | (bits & rights) if entry else 0)
                    continue
                frame_pa = entry & PTE_FRAME_MASK
                value = frame_pa | bits
                if bits & PTE_RW and not shared and refcount[frame_pa >> 12] > 1:
                    value = (value & ~PTE_RW) | PTE_COW   # still shared with a fork relative
                new.append(value)
                if executable:
                    machine.code_frames.add(frame_pa >> 12)
            machine.write_entries(first << 3, new)
            if "missing-tlb-flush" not in self.plant:
                # The planted mistake: the entries are rewritten in place without owing a flush.
                self.flush_owed.append(va)

    def set_brk(self, addr: int) -> int:
        """brk(addr): the new break, or the old one when refused (never -errno)."""
        old = self.brk
        if addr < self.start_brk:
            return old
        newbrk, oldbrk = page_align(addr), page_align(old)
        if newbrk == 0 or newbrk > TASK_SIZE:
            return old
        if newbrk == oldbrk:
            self.brk = addr
            return addr
        if addr <= old:
            if not any(v.start < oldbrk and v.end > newbrk for v in self.vmas):
                # Linux's shrink looks for the VMA to cut in [newbrk, oldbrk): none there (the
                # heap pages were munmap()ed) refuses the call, the old break stays.
                return old
            self.carve(newbrk, oldbrk)
            self.unmap_ptes(newbrk, oldbrk)
            self.brk = addr
            return addr
        for v in self.vmas:                           # one free page must stay before the next VMA
            if v.end > oldbrk and v.start_gap() < newbrk + PAGE_SIZE:
                return old
        if not self.enough_frames(oldbrk, newbrk):
            return old
        self.map_fresh(oldbrk, newbrk, pte_bits_for_prot(PROT_READ | PROT_WRITE))
        if "heap-not-forked" not in self.plant:       # LevitateOS mapped the pages, no VMA
            self.insert_vma(Vma(oldbrk, newbrk, PROT_READ | PROT_WRITE, False, "heap"))
        self.brk = addr
        return addr

    # --- faults and kernel access to user memory ---------------------------------------------------
    def break_cow(self, va: int) -> bool:
        """Resolve a write to a copy-on-write page at `va`; False if it is not one (or no frame)."""
        vma = self.find_vma(va)
        page = page_down(va)
        entry = self.get_pte(page)
        # Only pages the kernel shared on purpose (PTE_COW) are copied; any other read-only PTE
        # in a writable VMA is the kernel's own mistake and faults like LevitateOS did.
        if (vma is None or vma.shared or not vma.prot & PROT_WRITE or not entry & PTE_P
                or not entry & PTE_US or entry & PTE_RW or not entry & PTE_COW):
            return False
        old_frame = (entry & PTE_FRAME_MASK) >> 12
        flags = (entry & ~PTE_FRAME_MASK & ~PTE_COW) | PTE_RW
        if self.frames.refcount[old_frame] == 1:
            self.set_pte(page, (old_frame << 12) | flags)
            return True
        try:
            new_frame = self.frames.alloc(zero=False)
        except OutOfFrames:
            return False
        m = self.machine
        m.write_phys(new_frame << 12, m.mem[old_frame << 12:(old_frame + 1) << 12])
        self.frames.put(old_frame)
        self.set_pte(page, (new_frame << 12) | flags)
        return True

    def user_pa(self, va: int, write: bool) -> int | None:
        """Physical address behind user address `va` as the kernel's uaccess sees it (a uaccess
        fault below a growsdown VMA extends it, as the user's own access would)."""
        entry = self.get_pte(page_down(va))
        if not entry and self.find_vma(va) is None and self.expand_downwards(va):
            entry = self.get_pte(page_down(va))
        if not entry & PTE_P or not entry & PTE_US:
            return None
        if write and not entry & PTE_RW:
            if not self.break_cow(va):
                return None
            entry = self.get_pte(page_down(va))
        return (entry & PTE_FRAME_MASK) | (va & (PAGE_SIZE - 1))

    def read_user(self, va: int, size: int) -> bytes | None:
        out = bytearray()
        while size > 0:
            if va >= TASK_SIZE:
                return None
            pa = self.user_pa(va, False)
            if pa is None:
                return None
            chunk = min(size, PAGE_SIZE - (va & (PAGE_SIZE - 1)))
            out += self.machine.mem[pa:pa + chunk]
            va += chunk
            size -= chunk
        return bytes(out)

    def write_user(self, va: int, data: bytes) -> bool:
        offset = 0
        while offset < len(data):
            if va + offset >= TASK_SIZE:
                return False
            pa = self.user_pa(va + offset, True)
            if pa is None:
                return False
            chunk = min(len(data) - offset, PAGE_SIZE - ((va + offset) & (PAGE_SIZE - 1)))
            self.machine.write_phys(pa, data[offset:offset + chunk])
            offset += chunk
        return True

    def read_cstring(self, va: int, limit: int = 4096) -> bytes | None:
        out = bytearray()
        while len(out) < limit:
            chunk = self.read_user(va, 1)
            if chunk is None:
                return None
            if chunk == b"\0":
                return bytes(out)
            out += chunk
            va += 1
        return None
