"""The machine: Unicorn, emulated physical memory, x86-64 4-level page tables, the TLB.

Physical memory is one host buffer handed to Unicorn with `mem_map_ptr`, so the kernel reads and
writes frames and page-table entries through a memoryview (no Unicorn call per access) while the
emulated MMU walks the very same bytes.

Unicorn 2.1.4 facts this module is built around (pinned by tests/impl/test_machine.py):
- `reg_write` of CS/SS does not change the CPL: boot enters ring 3 once through `iretq` from a
  ring-0 stub; a hooked `syscall` returns to ring 3 without a transition, RIP advanced by 2.
- Exceptions never go through an IDT: they reach UC_HOOK_INTR (14 = #PF with CR2, 13 = #GP);
  #UD surfaces as UC_ERR_INSN_INVALID from emu_start.
- The nested-fault state is never reset: the second fault arrives as vector 8 (#DF) and the third
  halts emulation silently. Restoring a context saved in ring 3 before any fault resets it, so
  `resume` restores the boot context after every fault.
- Page-table edits need a TLB flush (UC_CTL_TLB_FLUSH) or a CR3 load.
- Translated code is cached by physical address; host-pointer writes bypass QEMU's
  self-modifying-code tracking, and measured, neither does `uc.mem_write` invalidate the
  translations of a frame (tests/impl/test_machine.py). So when a frame that was ever mapped
  executable is reused, the whole translation cache is flushed before user code runs again.
"""
from __future__ import annotations

import ctypes
import mmap
import struct
from array import array

from unicorn import UC_ARCH_X86, UC_HOOK_INSN, UC_HOOK_INTR, UC_MODE_64, UC_PROT_ALL, Uc, UcError
from unicorn.unicorn_const import UC_CTL_IO_WRITE, UC_CTL_TLB_FLUSH, UC_ERR_OK
from unicorn.unicorn_py3.unicorn import uclib
from unicorn.x86_const import (UC_X86_INS_SYSCALL, UC_X86_REG_CR0, UC_X86_REG_CR2, UC_X86_REG_CR3,
                               UC_X86_REG_CR4, UC_X86_REG_EFLAGS, UC_X86_REG_GDTR, UC_X86_REG_MSR,
                               UC_X86_REG_R8, UC_X86_REG_R9, UC_X86_REG_R10, UC_X86_REG_R11,
                               UC_X86_REG_R12, UC_X86_REG_R13, UC_X86_REG_R14, UC_X86_REG_R15,
                               UC_X86_REG_RAX, UC_X86_REG_RBP, UC_X86_REG_RBX, UC_X86_REG_RCX,
                               UC_X86_REG_RDI, UC_X86_REG_RDX, UC_X86_REG_RIP, UC_X86_REG_RSI,
                               UC_X86_REG_RSP)

from ..specs.abi import PAGE_SIZE

# --- Page-table entry bits (Intel SDM vol. 3, 4.5) ---------------------------------------------
PTE_P = 1 << 0          # present
PTE_RW = 1 << 1         # writable
PTE_US = 1 << 2         # user-accessible
PTE_A = 1 << 5          # accessed (set by the MMU)
PTE_D = 1 << 6          # dirty (set by the MMU)
PTE_COW = 1 << 9        # software: private page shared after fork, write fault copies it
PTE_FILE_HOLE = 1 << 10  # software, with P clear: mapped file page beyond EOF (SIGBUS on touch)
PTE_NX = 1 << 63        # no-execute (EFER.NXE set)
PTE_FRAME_MASK = 0x000F_FFFF_FFFF_F000
PTE_HW_NOISE = PTE_A | PTE_D   # bits the MMU writes; not part of the kernel's state
TABLE_FLAGS = PTE_P | PTE_RW | PTE_US   # intermediate levels: the leaf decides the rights

# --- Kernel layout -----------------------------------------------------------------------------
KERNEL_BASE = 0xFFFF_8000_0000_0000   # PML4 slot 256: the kernel's half, supervisor-only
KERNEL_PML4_SLOT = 256
KERNEL_FRAMES = 16                    # frames 0..15 belong to the kernel
_F_KPDPT, _F_KPD, _F_KPT, _F_GDT, _F_STUB, _F_KSTACK = 1, 2, 3, 4, 5, 6
_F_BOOT_PML4, _F_BOOT_PDPT, _F_BOOT_PD, _F_BOOT_PT, _F_BOOT_CODE = 7, 8, 9, 10, 11
BOOT_USER_PAGE = 0x1000               # the boot context's ring-3 page (in the boot table only)
USER_CS = 0x23
USER_SS = 0x1B
RFLAGS_USER = 0x202                   # IF set, reserved bit 1
# emu_start's `until`. Measured: any non-zero value makes the first fault after a context restore
# arrive as #DF (vector 8), so 0 it is; page 0 is never mapped (MAP_FIXED at 0 is EPERM, ELF
# segments there are refused), so a stop at RIP 0 is the fetch fault at 0 the kernel reports.
UNTIL = 0
MSR_EFER = 0xC000_0080
EFER_SCE, EFER_LME, EFER_LMA, EFER_NXE = 1 << 0, 1 << 8, 1 << 10, 1 << 11
CR0_PE, CR0_WP, CR0_PG = 1 << 0, 1 << 16, 1 << 31
CR4_PAE = 1 << 5

# The saved register frame (LevitateOS's SyscallFrame): this order is the frame's layout.
FRAME_REGS = (UC_X86_REG_RAX, UC_X86_REG_RBX, UC_X86_REG_RCX, UC_X86_REG_RDX, UC_X86_REG_RSI,
              UC_X86_REG_RDI, UC_X86_REG_RBP, UC_X86_REG_RSP, UC_X86_REG_R8, UC_X86_REG_R9,
              UC_X86_REG_R10, UC_X86_REG_R11, UC_X86_REG_R12, UC_X86_REG_R13, UC_X86_REG_R14,
              UC_X86_REG_R15, UC_X86_REG_RIP, UC_X86_REG_EFLAGS)
FRAME_NAMES = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp", "r8", "r9", "r10", "r11",
               "r12", "r13", "r14", "r15", "rip", "rflags")
R_RAX, R_RCX, R_RDX, R_RSI, R_RDI, R_RSP = 0, 2, 3, 4, 5, 7
R_R8, R_R9, R_R10, R_R11, R_RIP, R_RFLAGS = 8, 9, 10, 11, 16, 17

_GDT = (0, 0x00AF_9A00_0000_FFFF, 0x00CF_9200_0000_FFFF, 0x00CF_F200_0000_FFFF,
        0x00AF_FA00_0000_FFFF)       # null, kernel code64, kernel data, user data, user code64
_IRETQ = b"\x48\xcf"
_SYSCALL = b"\x0f\x05"
_TLB_FLUSH = ctypes.c_int((UC_CTL_IO_WRITE << 30) | UC_CTL_TLB_FLUSH)   # uc_ctl's encoding, no arguments
_Q = struct.Struct("<Q")
ZERO_PAGE = bytes(PAGE_SIZE)
_ZERO_RUN_PAGES = 512
_ZERO_RUN = memoryview(bytes(_ZERO_RUN_PAGES * PAGE_SIZE))   # zeroes a 2 MiB run per slice write


# The Unicorn library loaded a second time as a PyDLL: calls keep the GIL. Releasing and
# re-taking it doubles the cost of a short call made from inside a hook (measured ~1.5 -> 0.7 us);
# used only for calls that never run Python hooks (register batches, TLB flush).
_uc_direct = ctypes.PyDLL(uclib._name)
# The hot calls are declared without argtypes and always passed ready-made ctypes objects (the
# handle as c_void_p, arrays, c_int): checking and converting through argtypes doubled the cost
# of each call (measured ~1.0 -> 0.5 us).
_reg_read_batch = _uc_direct["uc_reg_read_batch"]
_reg_write_batch = _uc_direct["uc_reg_write_batch"]
_uc_ctl = _uc_direct["uc_ctl"]
for _function in (_reg_read_batch, _reg_write_batch, _uc_ctl):
    _function.restype = ctypes.c_int
# emu_start keeps the GIL too: every syscall hook then re-enters Python without re-taking it
# (the hooks run on this thread; nothing else in the process needs the GIL meanwhile).
_uc_direct.uc_emu_start.argtypes = (ctypes.c_void_p, ctypes.c_uint64, ctypes.c_uint64, ctypes.c_uint64,
                                    ctypes.c_size_t)
_uc_direct.uc_emu_start.restype = ctypes.c_int
# The `syscall` hook registered without the binding's three wrapper layers: (uc, user_data).
_SYSCALL_HOOK = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p)


class _RegBatch:
    """Raw uc_reg_{read,write}_batch over a fixed register list (the binding's own batch calls
    cost ~30 us; these ~1 us)."""

    def __init__(self, uc: Uc, regs: tuple[int, ...]):
        self._uch = uc._uch                  # a c_void_p, passed as it is
        self.n = len(regs)
        self._count = ctypes.c_int(self.n)
        self.values = (ctypes.c_uint64 * self.n)()
        base = ctypes.addressof(self.values)
        self._ptrs = (ctypes.c_void_p * self.n)(*[base + 8 * i for i in range(self.n)])
        self._ids = (ctypes.c_int * self.n)(*regs)
        self._view = memoryview(self.values).cast("B").cast("Q")   # tolist() beats slicing 2.5x

    def read(self) -> list[int]:
        _reg_read_batch(self._uch, self._ids, self._ptrs, self._count)
        return self._view.tolist()

    def write(self, values) -> None:
        self.values[:] = values
        _reg_write_batch(self._uch, self._ids, self._ptrs, self._count)


class Machine:
    """One emulated x86-64 CPU with `memory_mib` of physical memory, booted into ring 3 once.

    The kernel installs its handlers with `on_syscall(uc)` and `on_interrupt(uc, vector)`.
    """

    def __init__(self, memory_mib: int = 64):
        self.nframes = memory_mib * 256
        self.phys_size = self.nframes * PAGE_SIZE
        # Anonymous host memory: zero pages until touched, so an idle machine costs little RSS.
        self._buffer = mmap.mmap(-1, self.phys_size)
        self._base = ctypes.addressof(ctypes.c_char.from_buffer(self._buffer))
        self.mem = memoryview(self._buffer).cast("B")
        self.mem64 = self.mem.cast("Q")      # page-table entries, indexed by physical address >> 3
        self.uc = Uc(UC_ARCH_X86, UC_MODE_64)
        self.uc.mem_map_ptr(0, self.phys_size, UC_PROT_ALL, self._base)
        self._uch = self.uc._uch
        self.frame_regs = _RegBatch(self.uc, FRAME_REGS)
        self._ret_regs = _RegBatch(self.uc, (UC_X86_REG_RAX, UC_X86_REG_RCX, UC_X86_REG_R11))
        self._cr3_reg = _RegBatch(self.uc, (UC_X86_REG_CR3,))
        self._rip_reg = _RegBatch(self.uc, (UC_X86_REG_RIP,))
        self.code_frames: set[int] = set()   # frames ever mapped executable (may hold translations)
        self.loaded_cr3 = 0
        self.faulted = False                 # a fault happened since the last context restore
        self.tb_flush_owed = False           # a frame that held code got new contents
        self.tlb_flushes = 0                 # TLB flushes and CR3 loads so far (raw state)
        self.syscall_handler = None
        self.interrupt_handler = None
        self._booting = False
        self._syscall_hook = _SYSCALL_HOOK(self._raw_hook_syscall)     # referenced: never collected
        handle = ctypes.c_size_t()
        status = uclib.uc_hook_add(self._uch, ctypes.byref(handle), UC_HOOK_INSN, self._syscall_hook, None,
                                   ctypes.c_uint64(1), ctypes.c_uint64(0), ctypes.c_int(UC_X86_INS_SYSCALL))
        if status != UC_ERR_OK:
            raise UcError(status)
        self.uc.hook_add(UC_HOOK_INTR, self._hook_interrupt)
        self._boot()

    # --- boot --------------------------------------------------------------------------------
    def _boot(self) -> None:
        pa = lambda frame: frame * PAGE_SIZE
        w = lambda addr, value: _Q.pack_into(self.mem, addr, value)
        # Kernel half: PDPT -> PD -> PT mapping the kernel's frames at KERNEL_BASE, supervisor.
        w(pa(_F_KPDPT), pa(_F_KPD) | PTE_P | PTE_RW)
        w(pa(_F_KPD), pa(_F_KPT) | PTE_P | PTE_RW)
        for frame in range(KERNEL_FRAMES):
            w(pa(_F_KPT) + 8 * frame, pa(frame) | PTE_P | PTE_RW)
        for i, desc in enumerate(_GDT):
            w(pa(_F_GDT) + 8 * i, desc)
        self.mem[pa(_F_STUB):pa(_F_STUB) + 2] = _IRETQ
        # Boot address space: the kernel half plus one user page holding `syscall`.
        boot_root = pa(_F_BOOT_PML4)
        w(boot_root + 8 * KERNEL_PML4_SLOT, pa(_F_KPDPT) | PTE_P | PTE_RW)
        w(boot_root, pa(_F_BOOT_PDPT) | TABLE_FLAGS)
        w(pa(_F_BOOT_PDPT), pa(_F_BOOT_PD) | TABLE_FLAGS)
        w(pa(_F_BOOT_PD), pa(_F_BOOT_PT) | TABLE_FLAGS)
        w(pa(_F_BOOT_PT) + 8 * (BOOT_USER_PAGE >> 12), pa(_F_BOOT_CODE) | PTE_P | PTE_US)
        self.mem[pa(_F_BOOT_CODE):pa(_F_BOOT_CODE) + 2] = _SYSCALL
        uc = self.uc
        uc.reg_write(UC_X86_REG_GDTR, (0, KERNEL_BASE + pa(_F_GDT), 8 * len(_GDT) - 1, 0))
        uc.reg_write(UC_X86_REG_CR3, boot_root)
        uc.reg_write(UC_X86_REG_CR4, CR4_PAE)
        uc.reg_write(UC_X86_REG_MSR, (MSR_EFER, EFER_SCE | EFER_LME | EFER_LMA | EFER_NXE))
        uc.reg_write(UC_X86_REG_CR0, CR0_PG | CR0_WP | CR0_PE | 0x32)
        # iretq frame on the kernel stack: RIP, CS, RFLAGS, RSP, SS.
        kstack = pa(_F_KSTACK) + PAGE_SIZE - 64
        self.mem[kstack:kstack + 40] = struct.pack("<5Q", BOOT_USER_PAGE, USER_CS, RFLAGS_USER, 0, USER_SS)
        uc.reg_write(UC_X86_REG_RSP, KERNEL_BASE + kstack)
        self._booting = True
        uc.emu_start(KERNEL_BASE + pa(_F_STUB), UNTIL, count=10)
        self._booting = False
        if uc.reg_read(UC_X86_REG_RIP) != BOOT_USER_PAGE + 2:
            raise RuntimeError("boot did not reach ring 3")   # the emulator itself is broken
        self.boot_context = uc.context_save()
        self.loaded_cr3 = boot_root

    # --- hooks ---------------------------------------------------------------------------------
    def _raw_hook_syscall(self, _handle, _user_data) -> None:
        uc = self.uc
        try:
            if self._booting:
                uc.emu_stop()
                return
            self.syscall_handler(uc)
        except BaseException as error:     # noqa: BLE001 - handed to emu_start's caller, as the binding does
            # An exception cannot cross the C frames: record it, stop, and re-raise after.
            if uc._hook_exception is None:
                uc._hook_exception = error
            uc.emu_stop()

    def _emu_start(self, begin: int, count: int) -> None:
        """uc.emu_start(begin, UNTIL, count=count) with the GIL kept (see _uc_direct)."""
        uc = self.uc
        uc._hook_exception = None
        status = _uc_direct.uc_emu_start(self._uch, begin, UNTIL, 0, count)
        if status != UC_ERR_OK:
            raise UcError(status)
        if uc._hook_exception is not None:
            raise uc._hook_exception

    def _hook_interrupt(self, uc, vector, _user_data) -> None:
        self.faulted = True
        self.interrupt_handler(uc, vector, uc.reg_read(UC_X86_REG_CR2) if vector == 14 else 0)

    # --- CPU -----------------------------------------------------------------------------------
    def load_cr3(self, root: int) -> None:
        """Switch page-table roots (flushes the TLB, as on hardware)."""
        self._cr3_reg.write((root,))
        self.loaded_cr3 = root
        self.tlb_flushes += 1

    def flush_tlb(self) -> None:
        # uc_ctl(UC_CTL_TLB_FLUSH) called directly: the binding's ctl() costs a few microseconds.
        if _uc_ctl(self._uch, _TLB_FLUSH) != 0:
            raise RuntimeError("uc_ctl(UC_CTL_TLB_FLUSH) failed")
        self.tlb_flushes += 1

    def run(self, regs: list[int], count: int) -> None:
        """Run user code from the frame `regs` for at most `count` instructions (or until a
        handler calls emu_stop). After a fault, the boot context is restored first."""
        if self.faulted:
            self.uc.context_restore(self.boot_context)
            self.uc.reg_write(UC_X86_REG_CR3, self.loaded_cr3)
            self.faulted = False
        if self.tb_flush_owed:
            self.uc.ctl_flush_tb()
            self.tb_flush_owed = False
        self.frame_regs.write(regs)
        self._emu_start(regs[R_RIP], count)

    def read_rip(self) -> int:
        return self._rip_reg.read()[0]

    def read_frame(self) -> list[int]:
        return self.frame_regs.read()

    def set_syscall_return(self, rax: int, rcx: int, r11: int) -> None:
        self._ret_regs.write((rax, rcx, r11))

    # --- physical memory -------------------------------------------------------------------------
    def zero_frame(self, frame: int) -> None:
        pa = frame * PAGE_SIZE
        self.reuse_frame(frame)
        self.mem[pa:pa + PAGE_SIZE] = ZERO_PAGE

    def zero_frames(self, first: int, count: int) -> None:
        """Zero `count` consecutive frames from `first` (callers handle code_frames)."""
        pa = first * PAGE_SIZE
        while count > 0:
            n = min(count, _ZERO_RUN_PAGES)
            self.mem[pa:pa + n * PAGE_SIZE] = _ZERO_RUN[:n * PAGE_SIZE]
            pa += n * PAGE_SIZE
            count -= n

    def reuse_frame(self, frame: int) -> None:
        """A frame gets new contents: drop translations of its old code before user code runs."""
        if frame in self.code_frames:
            self.code_frames.discard(frame)
            self.tb_flush_owed = True

    def write_phys(self, pa: int, data: bytes) -> None:
        self.mem[pa:pa + len(data)] = data

    def read_phys(self, pa: int, size: int) -> bytes:
        return bytes(self.mem[pa:pa + size])

    def read_u64(self, pa: int) -> int:
        return self.mem64[pa >> 3]

    def write_u64(self, pa: int, value: int) -> None:
        self.mem64[pa >> 3] = value

    def read_table(self, pa: int) -> list[int]:
        if pa + PAGE_SIZE > self.phys_size:
            return [0] * 512                     # a corrupted entry points outside memory
        return self.mem64[pa >> 3:(pa >> 3) + 512].tolist()

    def write_entries(self, pa: int, values: list[int]) -> None:
        """Store consecutive 8-byte entries starting at `pa`."""
        self.mem64[pa >> 3:(pa >> 3) + len(values)] = array("Q", values)

    def kernel_pml4_entry(self) -> int:
        return _F_KPDPT * PAGE_SIZE | PTE_P | PTE_RW

