"""The kernel: syscall dispatch, fault handling, the scheduler, reports, observations, raw state.

Syscalls run inside Unicorn's `syscall` hook; the ones that do not change which process runs
(mmap, getpid, fork ...) return to user mode straight from the hook. The others (exit, a blocking
wait4, vfork, execve, sched_yield) stop emulation and the scheduler picks the next process:
round-robin with an instruction quantum (Unicorn's `count`), deterministic.

Budgets: Unicorn does not say how many instructions ran before a stop, so a quantum that runs
out is charged in full and a quantum cut short by a syscall or fault is charged one instruction:
the instruction count is exact for runaway loops and a lower bound otherwise; the wall-clock and
event budgets bound the rest. Exhausting one ends the trace with Inconclusive.

Observation rule (DESIGN.md contract 4), read by walking the page tables the CPU uses (CR3):
a present user PTE is readable; it is writable if PTE.RW, or if it carries PTE_COW (a private page
shared after a copy-on-write fork is writable for the user: its write fault is the kernel's
business); executable unless PTE.NX. A present supervisor-only PTE is a PROT_NONE page (rights 0).
A non-present PTE marked PTE_FILE_HOLE is a mapped file page beyond EOF (rights from its bits).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from itertools import compress
from operator import itemgetter

from unicorn import UcError
from unicorn.unicorn_const import UC_ERR_INSN_INVALID

from ..specs.abi import (PAGE_SIZE, REPORT_NR, TASK_SIZE, U64, Errno, Nr, ReportKind, SiCode,
                         Signal as Sig, as_signed, wait_status_signaled)
from ..specs.profiles import LEVITATE, Profile
from ..specs.trace import (RIGHT_R, RIGHT_W, RIGHT_X, Budget, Event, Exec, Exit, Inconclusive,
                           Observation, Output, Report, Signal, Syscall, View, page_digest)
from . import exec as elf_exec
from .frames import KIND_NAMES, KIND_USER, FrameTable, OutOfFrames
from .machine import (KERNEL_PML4_SLOT, PTE_COW, PTE_FILE_HOLE, PTE_FRAME_MASK, PTE_HW_NOISE,
                      PTE_NX, PTE_P, PTE_RW, PTE_US, R_RAX, R_RDI, R_RDX, R_RFLAGS, R_RIP, R_RSI,
                      R_R8, R_R9, R_R10, R_R11, R_RCX, R_RSP, RFLAGS_USER, ZERO_PAGE, Machine)
from .mm import AddressSpace, is_run, page_down, pte_bits_for_prot
from .process import INIT_PID, REAPED, ZOMBIE, Process, ProcessSyscalls
from .zoo import check_plant

MAX_RW_COUNT = 0x7FFF_F000
SIGFPE, FPE_INTDIV, ILL_ILLOPN = 8, 1, 2
QUANTUM = 20_000


@dataclass(frozen=True)
class RawVma:
    start: int
    end: int
    prot: int
    shared: bool
    anon: bool
    kind: str          # image, heap, stack, tls, mmap
    growsdown: bool = False


@dataclass(frozen=True)
class RawProcess:
    pid: int
    ppid: int
    state: str         # runnable, blocked-wait, blocked-vfork, zombie
    exit_status: int | None
    vmas: tuple[RawVma, ...]
    ptes: tuple[tuple[int, int, int], ...]   # (va, frame, flags) read from the CR3 root; A/D masked
    brk: int
    start_brk: int
    cr3: int           # the root the CPU loads for this process
    mm_root: int       # the root the kernel's mm records (they differ only under a planted bug)
    shares_mm_with: int | None               # vfork child: the parent whose mm it borrows


@dataclass(frozen=True)
class RawFrame:
    frame: int
    refcount: int
    kind: str          # user, pagetable
    mappings: tuple[tuple[int, int], ...]    # (root, va) of every leaf PTE that maps it


@dataclass(frozen=True)
class RawKernelState:
    processes: tuple[RawProcess, ...]
    frames: tuple[RawFrame, ...]
    free_frames: int
    pending_tlb_flushes: tuple[tuple[int, int], ...]   # (pid, va) owed before returning to user
    generation: int
    corrupt_frame_puts: int = 0        # frees of frames not in use (user-corrupted page tables)
    tlb_flushes: int = 0               # TLB flushes and CR3 loads performed so far (monotonic)


USER_PTR_MAX = 0x7FFF_FFFF_F000


def access_ok(addr: int, size: int) -> bool:
    """x86-64 access_ok: up to a page needs a valid start, more a valid end that does not wrap
    (valid_user_address: at most USER_PTR_MAX)."""
    if size <= PAGE_SIZE:
        return addr <= USER_PTR_MAX
    end = (addr + size) & U64
    return end <= USER_PTR_MAX and end >= addr


_syscall_args = itemgetter(R_RDI, R_RSI, R_RDX, R_R10, R_R8, R_R9)   # the six argument registers


class _Quiet(int):
    """A syscall result returned without a Syscall event (the report call)."""


class Kernel(ProcessSyscalls):
    SWITCH = object()       # the handler rearranged processes: stop emulation, reschedule

    def __init__(self, machine: Machine, frames: FrameTable, images: dict[str, bytes],
                 fork_strategy: str = "eager", plant: frozenset[str] = frozenset(),
                 budget: Budget = Budget(), on_event=None, profile: Profile = LEVITATE,
                 quantum: int = QUANTUM):
        check_plant(plant)
        self.machine = machine
        self.frames = frames
        self.images = images
        self.fork_strategy = fork_strategy
        self.plant = frozenset(plant)
        self.budget = budget
        self.on_event = on_event
        self.profile = profile
        self.quantum = quantum
        self.max_processes = profile.max_processes or 64
        self.events: list[Event] = []
        self.procs: dict[int, Process] = {}
        self.run_queue: list[Process] = []
        self.next_pid = INIT_PID + 1
        self.pgid = INIT_PID + 1
        self.current: Process | None = None
        self.instructions = 0
        self.generation = 0
        self._raw_cache: tuple[int, RawKernelState] | None = None
        self._halted = False
        self._stop_reason = None
        self._cur_nr = 0
        self._cur_args: tuple[int, ...] = ()
        self._spurious: tuple[int, int, int] | None = None
        self._deadline = 0.0
        self._syscalls = {
            Nr.write: self.sys_write, Nr.mmap: self.sys_mmap, Nr.mprotect: self.sys_mprotect,
            Nr.munmap: self.sys_munmap, Nr.brk: self.sys_brk, Nr.sched_yield: self.sys_sched_yield,
            Nr.getpid: self.sys_getpid, Nr.clone: self.sys_clone, Nr.fork: self.sys_fork,
            Nr.vfork: self.sys_vfork, Nr.execve: self.sys_execve, Nr.exit: self.sys_exit,
            Nr.wait4: self.sys_wait4, Nr.getppid: self.sys_getppid,
            Nr.exit_group: self.sys_exit_group, REPORT_NR: self.sys_report,
        }
        machine.syscall_handler = self._on_syscall
        machine.interrupt_handler = self._on_interrupt

    # --- events --------------------------------------------------------------------------------
    def emit(self, event: Event) -> None:
        self.generation += 1
        self.events.append(event)
        if self.on_event is not None:
            self.on_event(event, self)
        if len(self.events) >= self.budget.max_events and not self._halted:
            self._halt(f"event budget of {self.budget.max_events} events exhausted")

    def emit_syscall(self, proc: Process, result: int, nr: int | None = None, args=None) -> None:
        self.emit(Syscall(proc.pid, self._cur_nr if nr is None else nr,
                          self._cur_args if args is None else tuple(args), as_signed(result)))

    def emit_exit(self, proc: Process, status: int) -> None:
        self.emit(Exit(proc.pid, status))

    def _halt(self, reason: str) -> None:
        self._halted = True
        self.events.append(Inconclusive(reason))
        if self.on_event is not None:
            self.on_event(self.events[-1], self)
        self.machine.uc.emu_stop()

    # --- boot and the scheduler -------------------------------------------------------------------
    def run(self, entry: str) -> tuple[Event, ...]:
        start = time.perf_counter()
        self._deadline = start + self.budget.wall_seconds
        init = Process(INIT_PID, None)
        init.state = "init"
        self.procs[INIT_PID] = init
        root = Process(self.next_pid, init)
        self.next_pid += 1
        init.children.append(root)
        self.procs[root.pid] = root
        self.current = root
        path = entry.encode()
        result = self._exec(root, path, [path], [], first=True)
        if result is not self.SWITCH:
            self._halt(f"the entry image {entry!r} was refused: execve would return {Errno(-result).name}")
            return tuple(self.events)
        self.run_queue.append(root)
        self._schedule()
        return tuple(self.events)

    def _schedule(self) -> None:
        while not self._halted:
            try:
                if not self._run_next():
                    return
            except (IndexError, OverflowError) as error:
                # Only reachable when user code corrupted kernel page tables (planted bugs that
                # run a process on another's tables): the kernel stops, as a real one would panic.
                self._halt(f"kernel panic: {type(error).__name__}: {error}")
                return

    def _run_next(self) -> bool:
        """Run the next process for one quantum and handle why it stopped; False when done."""
        machine = self.machine
        if not self.run_queue:
            live = [p for p in self.procs.values() if p.pid != INIT_PID and p.state not in (ZOMBIE, REAPED)]
            if live:
                self._halt("deadlock: every process is blocked")
            return False
        if time.perf_counter() > self._deadline:
            self._halt(f"wall-clock budget of {self.budget.wall_seconds} s exhausted")
            return False
        left = self.budget.instructions - self.instructions
        if left <= 0:
            self._halt(f"instruction budget of {self.budget.instructions} exhausted")
            return False
        proc = self.run_queue[0]
        self._switch_to(proc)
        count = min(self.quantum, left)
        self._stop_reason = None
        try:
            machine.run(proc.regs, count)
        except UcError as error:
            machine.faulted = True
            regs = machine.read_frame()
            proc.regs = regs
            if error.errno == UC_ERR_INSN_INVALID:
                self._kill(proc, Sig.SIGILL, ILL_ILLOPN, regs[R_RIP])
            else:
                self._kill(proc, Sig.SIGSEGV, SiCode.SI_KERNEL, 0)
            return True
        reason = self._stop_reason
        if reason is None and machine.read_rip() == 0:
            reason = ("fault", 14, 0)                      # emulation stops at `until` = 0
        if reason is None:
            if self._halted:
                return False
            # The quantum ran out: save the frame, go to the back of the queue.
            self.instructions += count
            proc.regs = machine.read_frame()
            if self.run_queue and self.run_queue[0] is proc:
                self.run_queue.append(self.run_queue.pop(0))
            self.generation += 1
        elif reason[0] == "fault":
            self.instructions += 1
            proc.regs = machine.read_frame()
            self._fault(proc, reason[1], reason[2])
        else:
            self.instructions += 1
        return True

    def _switch_to(self, proc: Process) -> None:
        machine = self.machine
        self.current = proc
        if proc.fork_child_return:
            proc.fork_child_return = False
            if "frame-corrupt-on-return" in self.plant:
                # LevitateOS: the return path read the saved frame through a stack pointer the
                # compiler prologue had moved, one slot (8 bytes) off.
                proc.regs = proc.regs[1:] + [0]
        if machine.loaded_cr3 != proc.cr3 and "no-cr3-switch" not in self.plant:
            machine.load_cr3(proc.cr3)
            proc.mm.flush_owed.clear()
        elif proc.mm.flush_owed:
            machine.flush_tlb()
            proc.mm.flush_owed.clear()

    # --- syscalls --------------------------------------------------------------------------------
    def _on_syscall(self, uc) -> None:
        machine = self.machine
        regs = machine.read_frame()
        regs[R_RIP] += 2                                   # return past the syscall instruction
        proc = self.current
        proc.regs = regs
        nr = regs[R_RAX]
        args = _syscall_args(regs)
        self._cur_nr, self._cur_args = nr, args
        self.generation += 1
        handler = self._syscalls.get(nr)
        result = handler(proc, args) if handler is not None else -Errno.ENOSYS
        if result is self.SWITCH or self._halted:
            self._stop_reason = ("switch",)
            uc.emu_stop()
            return
        if not isinstance(result, _Quiet):
            self.emit(Syscall(proc.pid, nr, args, as_signed(result)))     # emit_syscall, inline
            if self._halted:
                self._stop_reason = ("switch",)
                uc.emu_stop()
                return
        value = result & U64
        regs[R_RAX] = value
        if machine.tb_flush_owed:
            # Reused code frames: leave the hook so the translation cache is flushed first.
            regs[R_RCX], regs[R_R11] = regs[R_RIP], regs[R_RFLAGS]
            self._stop_reason = ("switch",)
            uc.emu_stop()
            return
        machine.set_syscall_return(value, regs[R_RIP], regs[R_RFLAGS])
        if proc.mm.flush_owed:
            machine.flush_tlb()
            proc.mm.flush_owed.clear()

    def sys_mmap(self, proc, args):
        return proc.mm.mmap(*args)

    def sys_munmap(self, proc, args):
        return proc.mm.munmap(args[0], args[1])

    def sys_mprotect(self, proc, args):
        return proc.mm.mprotect(args[0], args[1], args[2])

    def sys_brk(self, proc, args):
        return proc.mm.set_brk(args[0])

    def sys_write(self, proc, args):
        fd = args[0] & 0xFFFF_FFFF
        if fd not in (1, 2):
            return -Errno.EBADF
        if not access_ok(args[1], args[2]):
            return -Errno.EFAULT                           # checked before the length clamp
        count = min(args[2], MAX_RW_COUNT)
        if count == 0:
            return 0
        va, data = args[1], bytearray()
        while len(data) < count:
            chunk = min(count - len(data), PAGE_SIZE - (va & (PAGE_SIZE - 1)))
            piece = proc.mm.read_user(va, chunk)
            if piece is None:
                break
            data += piece
            va += chunk
        if not data:
            return -Errno.EFAULT
        self.emit(Output(proc.pid, fd, bytes(data)))
        return len(data)

    def sys_report(self, proc, args):
        kind = args[0]
        if kind == ReportKind.observe or kind == ReportKind.wstatus:
            values = (args[1],)
        else:
            values = (args[1], args[2])
        self.emit(Report(proc.pid, kind, values))
        if kind == ReportKind.observe and not self._halted:
            self.emit(Observation(proc.pid, self.view(proc)))
        return _Quiet(0)

    def sys_execve(self, proc, args):
        mm = proc.mm
        path = mm.read_cstring(args[0])
        if path is None:
            return -Errno.EFAULT
        argv = self._read_string_array(mm, args[1])
        envp = self._read_string_array(mm, args[2])
        if argv is None or envp is None:
            return -Errno.EFAULT
        return self._exec(proc, path, argv or [b""], envp, first=False)

    @staticmethod
    def _read_string_array(mm: AddressSpace, va: int) -> list[bytes] | None:
        out: list[bytes] = []
        if va == 0:
            return out
        while len(out) < 4096:
            raw = mm.read_user(va + 8 * len(out), 8)
            if raw is None:
                return None
            pointer = int.from_bytes(raw, "little")
            if pointer == 0:
                return out
            s = mm.read_cstring(pointer, 131072)
            if s is None:
                return None
            out.append(s)
        return None

    def _exec(self, proc: Process, path: bytes, argv: list[bytes], envp: list[bytes], first: bool):
        data = self.images.get(path.decode("utf-8", "replace")) if path else None
        if data is None:
            return -Errno.ENOENT
        try:
            image = elf_exec.parse(data)
        except elf_exec.ExecError as error:
            return -int(error.errno)
        if self.frames.free_count < 200:
            return -Errno.ENOMEM
        try:
            space = AddressSpace(self.machine, self.frames, self.plant, self.profile)
        except OutOfFrames:
            return -Errno.ENOMEM
        # The point of no return: the old image is gone whatever happens next.
        old_mm, owned = proc.mm, proc.owns_mm
        stale_root = "stale-root-after-exec" in self.plant and old_mm is not None and owned
        if old_mm is not None and owned and not stale_root:
            self.release_mm(proc)
        proc.owns_mm = True
        self.release_vfork_parent(proc)
        try:
            layout, entry, sp = elf_exec.load(space, image, data, argv, envp, self.plant)
        except (elf_exec.KillAfterPonr, OutOfFrames):
            space.teardown()
            proc.mm = None
            if stale_root:
                old_mm.teardown()
            self._kill(proc, Sig.SIGSEGV, SiCode.SI_KERNEL, 0)
            return self.SWITCH
        proc.mm = space
        proc.cr3 = space.root
        if stale_root:
            # LevitateOS: CR3 moved to the new table but the task's recorded root did not.
            old_mm.vmas = []
            space.root = old_mm.root
        self.machine.load_cr3(proc.cr3)
        space.flush_owed.clear()
        regs = [0] * 18
        regs[R_RIP], regs[R_RSP], regs[R_RFLAGS] = entry, sp, RFLAGS_USER
        proc.regs = regs
        if not first:
            self.emit_syscall(proc, 0)
        self.emit(Exec(proc.pid, layout))
        return self.SWITCH

    def release_mm(self, proc: Process) -> None:
        mm = proc.mm
        if mm.root != proc.cr3:
            mm.teardown(proc.cr3)                      # both tables of a stale-root process
        mm.teardown()
        mm.vmas = []

    # --- faults ------------------------------------------------------------------------------------
    def _on_interrupt(self, uc, vector: int, cr2: int) -> None:
        self._stop_reason = ("fault", vector, cr2)
        uc.emu_stop()

    def _fault(self, proc: Process, vector: int, cr2: int) -> None:
        rip = proc.regs[R_RIP]
        if vector == 14:
            self._page_fault(proc, cr2, rip)
        elif vector == 0:
            self._kill(proc, SIGFPE, FPE_INTDIV, rip)
        elif vector == 6:
            self._kill(proc, Sig.SIGILL, ILL_ILLOPN, rip)
        elif vector == 3:
            self._kill(proc, Sig.SIGTRAP, SiCode.SI_KERNEL, 0)
        else:
            self._kill(proc, Sig.SIGSEGV, SiCode.SI_KERNEL, 0)   # #GP: non-canonical, privileged

    def _page_fault(self, proc: Process, cr2: int, rip: int) -> None:
        mm = proc.mm
        vma = mm.find_vma(cr2) if cr2 < TASK_SIZE else None
        if vma is None:
            if cr2 < TASK_SIZE and mm.expand_downwards(cr2):
                return                                     # a growsdown VMA grew: retry
            self._kill(proc, Sig.SIGSEGV, SiCode.SEGV_MAPERR, cr2)
            return
        page = page_down(cr2)
        entry = mm.get_pte(page)
        fetch = rip <= cr2 < rip + 16
        if not entry & PTE_P:
            if entry & PTE_FILE_HOLE:
                self._kill(proc, Sig.SIGBUS, SiCode.BUS_ADRERR, cr2)
                return
            # A VMA page without a frame: demand-zero it (eager mapping leaves none normally).
            if self.frames.free_count < 8:
                self._kill(proc, Sig.SIGKILL, SiCode.SI_KERNEL, 0)
                return
            mm.map_fresh(page, page + PAGE_SIZE, pte_bits_for_prot(vma.prot, self.plant))
            return
        if not entry & PTE_US or (fetch and entry & PTE_NX):
            self._kill(proc, Sig.SIGSEGV, SiCode.SEGV_ACCERR, cr2)
            return
        if not entry & PTE_RW and not fetch:
            if mm.break_cow(cr2):
                return                                     # copy-on-write resolved: retry
            if self.frames.free_count == 0 and vma.prot & 2 and not vma.shared:
                self._kill(proc, Sig.SIGKILL, SiCode.SI_KERNEL, 0)
            else:
                self._kill(proc, Sig.SIGSEGV, SiCode.SEGV_ACCERR, cr2)
            return
        # The page table allows the access: a stale translation. Flush and retry once.
        key = (proc.pid, rip, cr2)
        if self._spurious == key:
            self._spurious = None
            self._kill(proc, Sig.SIGSEGV, SiCode.SEGV_ACCERR, cr2)
            return
        self._spurious = key
        self.machine.flush_tlb()

    def _kill(self, proc: Process, signo: int, si_code: int, si_addr: int) -> None:
        """A user-visible fault: Signal, then the process dies with the signal's wait status."""
        self.emit(Signal(proc.pid, int(signo), int(si_code), si_addr))
        self.do_exit(proc, wait_status_signaled(int(signo)))

    # --- observation ---------------------------------------------------------------------------------
    def _leaf_tables(self, root: int):
        """(base va, 512 entries) for every present user last-level table under `root`, ascending."""
        read = self.machine.read_table

        def present(table: list[int]):
            # compress() picks the non-zero entries at C speed; tables are mostly empty.
            return [(i, table[i]) for i in compress(range(len(table)), table) if table[i] & PTE_P]
        for i4, e4 in present(read(root)[:KERNEL_PML4_SLOT]):
            for i3, e3 in present(read(e4 & PTE_FRAME_MASK)):
                for i2, e2 in present(read(e3 & PTE_FRAME_MASK)):
                    yield (i4 << 39) | (i3 << 30) | (i2 << 21), read(e2 & PTE_FRAME_MASK)

    def _leaf_entries(self, root: int):
        """(va, entry) for every non-zero user leaf entry under `root`, ascending."""
        for base, pt in self._leaf_tables(root):
            for i1 in compress(range(512), pt):
                yield base | (i1 << 12), pt[i1]

    def view(self, proc: Process) -> View:
        """The address space as the user sees it, read from the page tables in CR3."""
        ranges: list[list[int]] = []
        readable: list[tuple[int, int]] = []           # (va, pa) of every present user page
        last = [0, 0, -1]
        for base, pt in self._leaf_tables(proc.cr3):
            used = list(compress(range(512), pt))
            first = pt[used[0]] if used else 0
            if (len(used) > 1 and used[-1] - used[0] == len(used) - 1 and first & PTE_P and first & PTE_US
                    and not (first ^ pt[used[-1]]) & ~PTE_FRAME_MASK and is_run(pt[used[0]:used[-1] + 1])):
                # One run of consecutive frames with equal rights (a stack, a heap): no per-page work.
                va, count = base | (used[0] << 12), len(used)
                rights = RIGHT_R | (RIGHT_W if first & (PTE_RW | PTE_COW) else 0) | (0 if first & PTE_NX else RIGHT_X)
                pa = first & PTE_FRAME_MASK
                readable.extend(zip(range(va, va + (count << 12), PAGE_SIZE), range(pa, pa + (count << 12), PAGE_SIZE)))
                if last[1] == va and last[2] == rights:
                    last[1] = va + (count << 12)
                else:
                    last = [va, va + (count << 12), rights]
                    ranges.append(last)
                continue
            for i in used:
                entry = pt[i]
                va = base | (i << 12)
                if entry & PTE_P:
                    if entry & PTE_US:
                        rights = RIGHT_R | (RIGHT_W if entry & (PTE_RW | PTE_COW) else 0) | (0 if entry & PTE_NX else RIGHT_X)
                        readable.append((va, entry & PTE_FRAME_MASK))
                    else:
                        rights = 0
                elif entry & PTE_FILE_HOLE:
                    rights = (RIGHT_R if entry & PTE_US else 0) | (RIGHT_W if entry & PTE_RW else 0) | (
                        0 if entry & PTE_NX or not entry & PTE_US else RIGHT_X)
                else:
                    continue
                if last[1] == va and last[2] == rights:
                    last[1] = va + PAGE_SIZE
                else:
                    last = [va, va + PAGE_SIZE, rights]
                    ranges.append(last)
        return View(tuple((lo, hi, r) for lo, hi, r in ranges), self._digests(readable))

    def _digests(self, pages: list[tuple[int, int]]) -> tuple[tuple[int, bytes], ...]:
        """page_digest of every non-zero page in `pages` ((va, pa), ascending va). Each page is
        compared with zeros where it lies (no copy); only non-zero pages are copied and hashed."""
        mem, is_zero = self.machine.mem, ZERO_PAGE.startswith
        last = self.machine.phys_size - PAGE_SIZE      # a corrupted entry may point past memory
        return tuple((va, page_digest(bytes(mem[pa:pa + PAGE_SIZE]))) for va, pa in pages
                     if pa > last or not is_zero(mem[pa:pa + PAGE_SIZE]))

    # --- raw state -----------------------------------------------------------------------------------
    def raw_state(self) -> RawKernelState:
        """Plain data for the refinement check; cached until the kernel changes something."""
        if self._raw_cache is not None and self._raw_cache[0] == self.generation:
            return self._raw_cache[1]
        processes = []
        mappings: dict[int, list[tuple[int, int]]] = {}
        walked: dict[int, tuple] = {}
        pending = []
        for pid in sorted(self.procs):
            proc = self.procs[pid]
            if pid == INIT_PID:
                continue
            mm = proc.mm
            if mm is None:
                processes.append(RawProcess(pid, proc.ppid, proc.state, proc.exit_status, (), (), 0, 0,
                                            0, 0, None))
                continue
            if proc.cr3 not in walked:
                ptes = []
                for va, entry in self._leaf_entries(proc.cr3):
                    if entry & PTE_P:
                        frame = (entry & PTE_FRAME_MASK) >> 12
                        mappings.setdefault(frame, []).append((proc.cr3, va))
                    else:
                        frame = 0
                    ptes.append((va, frame, entry & ~PTE_FRAME_MASK & ~PTE_HW_NOISE))
                walked[proc.cr3] = tuple(ptes)
            vmas = tuple(RawVma(v.start, v.end, v.prot, v.shared, True, v.kind, v.growsdown) for v in mm.vmas)
            borrower = proc.vfork_parent.pid if (not proc.owns_mm and proc.vfork_parent) else None
            processes.append(RawProcess(pid, proc.ppid, proc.state, proc.exit_status, vmas,
                                        walked[proc.cr3], mm.brk, mm.start_brk, proc.cr3, mm.root,
                                        borrower))
            if proc.owns_mm:
                pending.extend((pid, va) for va in mm.flush_owed)
        frames = self.frames
        table = tuple(RawFrame(f, frames.refcount[f], KIND_NAMES[frames.kind[f]],
                               tuple(mappings.get(f, ()) if frames.kind[f] == KIND_USER else ()))
                      for f in frames.allocated())
        state = RawKernelState(tuple(processes), table, frames.free_count, tuple(pending), self.generation,
                               frames.corrupt_puts, self.machine.tlb_flushes)
        self._raw_cache = (self.generation, state)
        return state
