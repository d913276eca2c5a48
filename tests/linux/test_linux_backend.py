"""The Linux backend on hand-assembled images: event order, statuses, faults, exec, sandbox."""
from __future__ import annotations

import os

import pytest
from linux_images import DATA, ET_DYN, TEXT, Code, envp_addr, image, path_data, processes_in_group

from forkspec.oracle._internal.sandbox import NOBODY, Sandbox
from forkspec.oracle.errors import InvalidArgument
from forkspec.specs.abi import PAGE_SIZE, Errno, Nr, ReportKind, SiCode, wait_status_exited, wait_status_signaled
from forkspec.specs.trace import (Budget, Exec, Exit, Inconclusive, Observation, Output, Report, Signal,
                                  Syscall, page_digest)


def run(backend, code: Code, data: bytes = b"", extra: dict[str, bytes] | None = None, **kw):
    images = {"i0": image(code, data)}
    images.update(extra or {})
    return backend.run(images, "i0", **kw)


def kinds(trace) -> list[str]:
    return [type(e).__name__ for e in trace.events]


def test_exit_status_and_exec_first(backend):
    trace = run(backend, Code().syscall(Nr.getpid).exit(3))
    assert isinstance(trace.events[0], Exec)
    pid = trace.events[0].pid
    assert trace.events[1] == Syscall(pid, Nr.getpid, (0,) * 6, pid)
    # exit yields no Syscall event, only the Exit with Linux's wait status.
    assert trace.events[2:] == (Exit(pid, wait_status_exited(3)),)
    assert trace.backend == "linux" and dict(trace.meta)["kernel"] == os.uname().release


@pytest.mark.parametrize("code", [0, 255, 256, 300, -1])
def test_exit_group_code_is_masked(backend, code):
    trace = run(backend, Code().syscall(Nr.exit_group, code))
    assert trace.events[-1].status == (code & 0xFF) << 8


def test_initial_layout_without_randomisation(backend):
    trace = run(backend, Code().exit(0), data=b"x" * 10)
    layout = trace.events[0].layout
    names = [name for name, _, _ in layout.regions]
    assert {"stack", "vdso", "vvar"} <= set(names)
    stack = next(r for r in layout.regions if r[0] == "stack")
    assert stack[2] == 0x7FFF_FFFF_F000            # ADDR_NO_RANDOMIZE: stack top at TASK_SIZE
    assert stack[1] <= layout.entry_sp < stack[2]
    # Static ET_EXEC under ADDR_NO_RANDOMIZE: the break is the page after the highest segment.
    assert layout.brk == DATA + PAGE_SIZE
    assert layout.load_bias == 0


def test_et_dyn_load_bias_is_where_the_entry_runs(backend):
    images = {"i0": image(Code().syscall(Nr.getpid).exit(0), etype=ET_DYN)}
    trace = backend.run(images, "i0")
    layout = trace.events[0].layout
    assert layout.load_bias != 0 and layout.load_bias % PAGE_SIZE == 0
    assert trace.events[-1].status == 0


def test_fork_parent_event_first_then_child_runs_to_completion(backend):
    code = (Code().syscall(Nr.fork).mov("rdi", DATA).store_rdi_rax()
            .syscall(Nr.getpid, 0).syscall(Nr.exit, 0))
    trace = run(backend, code, data=bytes(8))
    root = trace.events[0].pid
    fork = trace.events[1]
    assert fork == Syscall(root, Nr.fork, (0,) * 6, fork.result) and fork.result > 0
    child = fork.result
    # Child first, to completion; the child's 0 return is not an event.
    assert [e.pid for e in trace.events[2:4]] == [child, child]
    assert trace.events[2] == Syscall(child, Nr.getpid, (0,) * 6, child)
    assert trace.events[3] == Exit(child, 0)
    assert trace.events[4] == Syscall(root, Nr.getpid, (0,) * 6, root)
    assert trace.events[5] == Exit(root, 0)


def test_wait4_reaps_child_status(backend):
    # fork; child exit(7); parent wait4(-1, &status) then report the status word.
    code = Code().syscall(Nr.fork)
    code.buf += b"\x48\x85\xc0"                        # test rax, rax
    child = Code().exit(7).bytes()
    code.buf += b"\x75" + bytes([len(child)])          # jnz parent
    code.buf += child
    code.syscall(Nr.wait4, 2**64 - 1, DATA, 0, 0).load(DATA)
    code.buf += b"\x48\x89\xc6"                        # mov rsi, rax
    code.mov("rdi", ReportKind.wstatus).mov("rax", 0x7F00).buf += b"\x0f\x05"
    code.exit(0)
    trace = run(backend, code, data=bytes(8))
    child_pid = trace.events[1].result
    assert trace.events[2] == Exit(child_pid, wait_status_exited(7))
    wait = trace.events[3]
    assert wait.nr == Nr.wait4 and wait.result == child_pid
    report = trace.events[4]
    assert isinstance(report, Report) and report.kind == ReportKind.wstatus
    assert report.values[0] & 0xFFFF_FFFF == wait_status_exited(7)


def test_vfork_child_writes_shared_memory_and_parent_waits(backend):
    code = Code().syscall(Nr.vfork)
    code.buf += b"\x48\x85\xc0"                        # test rax, rax
    child = Code().store(DATA, 0x1234).exit(4).bytes()
    code.buf += b"\x75" + bytes([len(child)])
    code.buf += child
    code.load(DATA).mov("rsi", DATA)
    code.buf += b"\x48\x89\xc2"                        # mov rdx, rax
    code.mov("rdi", ReportKind.loaded).mov("rax", 0x7F00).buf += b"\x0f\x05"
    code.exit(0)
    trace = run(backend, code, data=bytes(8))
    root = trace.events[0].pid
    vfork = trace.events[1]
    assert vfork.pid == root and vfork.nr == Nr.vfork
    assert trace.events[2] == Exit(vfork.result, wait_status_exited(4))
    assert trace.events[3] == Report(root, ReportKind.loaded, (DATA, 0x1234))


def test_execve_success_failure_and_layout(backend):
    data, argv = path_data("i1", "nope")
    # execve("nope") must fail: rdi points at "nope" (offset 3 in the data, after "i1\0").
    code = (Code().syscall(Nr.execve, DATA + 3, argv["nope"], envp_addr(data))
            .syscall(Nr.execve, DATA + 0, argv["i1"], envp_addr(data)).exit(9))
    target = image(Code().syscall(Nr.getpid).exit(5))
    trace = run(backend, code, data=data, extra={"i1": target})
    root = trace.events[0].pid
    assert trace.events[1].nr == Nr.execve and trace.events[1].result == -Errno.ENOENT
    assert trace.events[2] == Syscall(root, Nr.execve, (DATA, argv["i1"], envp_addr(data), 0, 0, 0), 0)
    assert isinstance(trace.events[3], Exec) and trace.events[3].pid == root
    assert trace.events[4] == Syscall(root, Nr.getpid, (0,) * 6, root)
    assert trace.events[5] == Exit(root, wait_status_exited(5))


@pytest.mark.parametrize("target, expected", [
    (b"", -Errno.ENOEXEC),
    (b"hello, no shebang\n", -Errno.ENOEXEC),
    (b"\x7fELF" + bytes(16), -Errno.ENOEXEC),
])
def test_execve_fails_before_point_of_no_return(backend, target, expected):
    data, argv = path_data("i1")
    code = Code().syscall(Nr.execve, DATA, argv["i1"], envp_addr(data)).exit(1)
    trace = run(backend, code, data=data, extra={"i1": target})
    assert trace.events[1].nr == Nr.execve and trace.events[1].result == expected
    assert trace.events[2] == Exit(trace.events[0].pid, wait_status_exited(1))   # caller intact


def test_execve_failing_after_point_of_no_return_kills_with_sigsegv(backend):
    # p_memsz < p_filesz: accepted before the point of no return, fatal after it.
    good = bytearray(image(Code().exit(0)))
    phoff = int.from_bytes(good[32:40], "little")
    filesz = int.from_bytes(good[phoff + 32:phoff + 40], "little")
    good[phoff + 40:phoff + 48] = (filesz - 1).to_bytes(8, "little")
    data, argv = path_data("i1")
    code = Code().syscall(Nr.execve, DATA, argv["i1"], envp_addr(data)).exit(1)
    trace = run(backend, code, data=data, extra={"i1": bytes(good)})
    root = trace.events[0].pid
    assert trace.events[1:] == (Signal(root, 11, SiCode.SI_KERNEL, 0), Exit(root, wait_status_signaled(11)))


@pytest.mark.parametrize("what, addr, si_code", [
    ("load unmapped", 0x1234, SiCode.SEGV_MAPERR),
    ("store to text", TEXT, SiCode.SEGV_ACCERR),
    ("load non-canonical", 0x8000_0000_0000, SiCode.SI_KERNEL),
])
def test_faults_give_signal_then_exit(backend, what, addr, si_code):
    code = Code().store(addr, 1) if what.startswith("store") else Code().load(addr)
    trace = run(backend, code.exit(0))
    pid = trace.events[0].pid
    expected_addr = 0 if si_code == SiCode.SI_KERNEL else addr
    assert trace.events[1:] == (Signal(pid, 11, si_code, expected_addr), Exit(pid, wait_status_signaled(11)))


def test_report_and_observation_match_known_writes(backend):
    code = (Code().syscall(Nr.mmap, 0, 2 * PAGE_SIZE, 3, 0x22, 2**64 - 1, 0)
            .mov("rdi", DATA).store_rdi_rax())
    # r = mmap(...); *(r + 8) = 0x55aa; report(observe, 7)
    code.load(DATA)
    code.buf += b"\x48\x8d\x78\x08"                    # lea rdi, [rax+8]
    code.mov("rsi", 0x55AA).store_rdi_rsi().report(ReportKind.observe, 7).exit(0)
    trace = run(backend, code, data=bytes(8))
    pid = trace.events[0].pid
    mmap = trace.events[1]
    assert mmap.nr == Nr.mmap and mmap.result > 0
    base = mmap.result
    assert trace.events[2] == Report(pid, ReportKind.observe, (7,))
    view = trace.events[3].view
    assert isinstance(trace.events[3], Observation)
    # The mapping is there with rw rights; both pages, coalesced with neighbours of equal rights.
    covering = [r for r in view.ranges if r[0] <= base and base + 2 * PAGE_SIZE <= r[1]]
    assert covering and covering[0][2] == 3
    digests = dict(view.digests)
    page = bytearray(PAGE_SIZE)
    page[8:16] = (0x55AA).to_bytes(8, "little")
    assert digests[base] == page_digest(bytes(page))
    assert base + PAGE_SIZE not in digests             # never written: reads as zeros
    table = bytearray(PAGE_SIZE)
    table[0:8] = base.to_bytes(8, "little")
    assert digests[DATA] == page_digest(bytes(table))  # the data page holds the stored result
    assert [r for r in view.ranges if r[1] > 0x7FFF_FFFF_F000] == []


def test_prot_none_ranges_are_listed_with_no_rights(backend):
    code = Code().syscall(Nr.mmap, 0, 3 * PAGE_SIZE, 0, 0x22, 2**64 - 1, 0).report(ReportKind.observe, 0).exit(0)
    trace = run(backend, code)
    base = trace.events[1].result
    view = trace.events[3].view
    assert (base, base + 3 * PAGE_SIZE, 0) in view.ranges


def test_shared_memory_written_by_child_is_seen_by_parent_observation(backend):
    # r = mmap(shared); fork; child: *r = 0x77, exit; parent: observe (never touches the page).
    code = Code().syscall(Nr.mmap, 0, PAGE_SIZE, 3, 0x21, 2**64 - 1, 0).mov("rdi", DATA).store_rdi_rax()
    code.syscall(Nr.fork)
    code.buf += b"\x48\x85\xc0"
    child = Code().load(DATA)
    child.buf += b"\x48\x89\xc7"                       # mov rdi, rax
    child.mov("rsi", 0x77).store_rdi_rsi().exit(0)
    code.buf += b"\x75" + bytes([len(child.bytes())]) + child.bytes()
    code.report(ReportKind.observe, 0).exit(0)
    trace = run(backend, code, data=bytes(8))
    base = trace.events[1].result
    obs = [e for e in trace.events if isinstance(e, Observation)]
    assert len(obs) == 1 and obs[0].pid == trace.events[0].pid
    page = bytearray(PAGE_SIZE)
    page[0] = 0x77
    assert dict(obs[0].view.digests)[base] == page_digest(bytes(page))


def test_write_to_stdout_gives_output_then_syscall(backend):
    data = b"hello, linux\n"
    code = Code().syscall(Nr.write, 1, DATA, len(data)).syscall(Nr.write, 2, 0x10, 4).exit(0)
    trace = run(backend, code, data=data)
    pid = trace.events[0].pid
    assert trace.events[1] == Output(pid, 1, data)
    assert trace.events[2] == Syscall(pid, Nr.write, (1, DATA, len(data), 0, 0, 0), len(data))
    assert trace.events[3] == Syscall(pid, Nr.write, (2, 0x10, 4, 0, 0, 0), -Errno.EFAULT)


def test_seccomp_gives_enosys_for_syscalls_the_model_does_not_know(backend):
    getuid = 102
    trace = run(backend, Code().syscall(getuid).exit(0))
    assert trace.events[1] == Syscall(trace.events[0].pid, getuid, (0,) * 6, -Errno.ENOSYS)


@pytest.mark.skipif(os.geteuid() != 0, reason="the uid drop happens only when started as root")
@pytest.mark.parametrize("spawn", ["launcher", "fork"])
def test_sandbox_runs_as_unused_uid(spawn):
    from forkspec.oracle._internal.linux import LinuxBackend
    getuid, geteuid = 102, 107
    be = LinuxBackend(Sandbox(seccomp=False, spawn=spawn))
    try:
        trace = be.run({"i0": image(Code().syscall(getuid).syscall(geteuid).exit(0))}, "i0")
    finally:
        be.close()
    assert [e.result for e in trace.events if isinstance(e, Syscall)] == [NOBODY, NOBODY]


def test_no_leftover_processes_after_orphans(backend):
    # fork; child forks a grandchild and exits at once; the grandchild becomes an orphan zombie.
    code = Code().syscall(Nr.fork).syscall(Nr.fork).syscall(Nr.getppid).exit(0)
    trace = run(backend, code)
    root = trace.events[0].pid
    exits = [e for e in trace.events if isinstance(e, Exit)]
    assert len(exits) == 4                              # root, two children, one grandchild
    assert processes_in_group(root) == []


def test_wall_time_budget_ends_inconclusive_and_kills_everything(backend):
    code = Code().syscall(Nr.fork).spin()
    trace = run(backend, code, budget=Budget(wall_seconds=0.3))
    assert isinstance(trace.events[-1], Inconclusive)
    assert trace.inconclusive is not None
    assert processes_in_group(trace.events[0].pid) == []


def test_event_budget_ends_inconclusive(backend):
    code = Code()
    for _ in range(20):
        code.syscall(Nr.getpid)
    trace = run(backend, code.exit(0), budget=Budget(max_events=5))
    assert isinstance(trace.events[-1], Inconclusive)
    assert len(trace.events) <= 6
    assert processes_in_group(trace.events[0].pid) == []


def test_bad_entry_is_an_invalid_argument(backend):
    with pytest.raises(InvalidArgument):
        backend.run({"i0": b""}, "i1")
    with pytest.raises(InvalidArgument):
        backend.run({"../x": b""}, "../x")


def test_only_fds_0_to_2_are_open_and_0_is_read_only(backend):
    code = (Code().syscall(Nr.write, 0, DATA, 1).syscall(Nr.write, 3, DATA, 1)
            .syscall(Nr.write, 2, DATA, 1).syscall(Nr.write, 255, DATA, 1).exit(0))
    trace = run(backend, code, data=b"z")
    results = [e.result for e in trace.events if isinstance(e, Syscall)]
    assert results == [-Errno.EBADF, -Errno.EBADF, 1, -Errno.EBADF]


def test_fatal_signal_status_has_no_core_bit(backend):
    trace = run(backend, Code().load(0))
    assert trace.events[-1].status == wait_status_signaled(11, core=False)


@pytest.mark.parametrize("spawn", ["launcher", "fork"])
def test_both_spawn_methods_give_the_same_trace_shape(spawn):
    from forkspec.oracle._internal.linux import LinuxBackend
    be = LinuxBackend(Sandbox(spawn=spawn))
    try:
        trace = be.run({"i0": image(Code().syscall(102).syscall(Nr.getpid, 0).exit(4))}, "i0")
    finally:
        be.close()
    pid = trace.events[0].pid
    assert trace.events[0].layout.regions[-1][2] == 0x7FFF_FFFF_F000      # no randomisation
    assert trace.events[1:] == (Syscall(pid, 102, (0,) * 6, -Errno.ENOSYS),
                                Syscall(pid, Nr.getpid, (0,) * 6, pid), Exit(pid, wait_status_exited(4)))
    assert dict(trace.meta)["uid"] == str(NOBODY if os.geteuid() == 0 else os.geteuid())


def test_backend_inherited_through_fork_runs_in_the_child_and_leaves_the_parent_intact(backend):
    images = {"i0": image(Code().syscall(Nr.getpid, 0).exit(6))}
    backend.run(images, "i0")                          # the parent's host is in use
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            trace = backend.run(images, "i0")
            code = 0 if trace.events[-1].status == wait_status_exited(6) else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    trace = backend.run(images, "i0")                  # the parent's directory and threads still work
    assert trace.events[-1] == Exit(trace.events[0].pid, wait_status_exited(6))



def _fork_branch(child: Code) -> Code:
    """fork; the child runs `child`, the parent falls through to what is appended next."""
    code = Code().syscall(Nr.fork).mov("rdi", DATA).store_rdi_rax()
    code.buf += b"\x48\x85\xc0"                        # test rax, rax
    code.buf += b"\x75" + bytes([len(child.bytes())])   # jnz parent
    code.buf += child.bytes()
    return code


@pytest.fixture(scope="module")
def parent_first():
    from forkspec.oracle._internal.linux import LinuxBackend
    be = LinuxBackend(schedule="parent-first")
    yield be
    be.close()


def test_parent_first_runs_the_parent_until_it_blocks_in_wait4(parent_first):
    code = _fork_branch(Code().syscall(Nr.getpid, 0).exit(2))
    code.syscall(Nr.wait4, 2**64 - 1, 0, 1, 0)          # WNOHANG: the child has not run yet
    code.syscall(Nr.wait4, 2**64 - 1, 0, 0, 0)          # blocks until the child has exited
    code.exit(0)
    trace = run(parent_first, code, data=bytes(8))
    root = trace.events[0].pid
    child = trace.events[1].result
    assert dict(trace.meta)["schedule"] == "parent-first"
    assert trace.events[2] == Syscall(root, Nr.wait4, (2**64 - 1, 0, 1, 0, 0, 0), 0)
    assert trace.events[3] == Syscall(child, Nr.getpid, (0,) * 6, child)
    assert trace.events[4] == Exit(child, wait_status_exited(2))
    assert trace.events[5] == Syscall(root, Nr.wait4, (2**64 - 1, 0, 0, 0, 0, 0), child)
    assert trace.events[6] == Exit(root, 0)


def test_parent_first_orphan_sees_the_tracer_as_its_parent(parent_first):
    code = _fork_branch(Code().syscall(Nr.getppid, 0).exit(0)).exit(1)
    trace = run(parent_first, code, data=bytes(8))
    root = trace.events[0].pid
    child = trace.events[1].result
    assert trace.events[2] == Exit(root, wait_status_exited(1))
    assert trace.events[3] == Syscall(child, Nr.getppid, (0,) * 6, int(dict(trace.meta)["reaper_pid"]))
    assert trace.events[4] == Exit(child, 0)
    assert processes_in_group(root) == []


def test_parent_first_vfork_parent_waits_for_the_child(parent_first):
    code = Code().syscall(Nr.vfork)
    code.buf += b"\x48\x85\xc0"
    child = Code().store(DATA, 0x99).exit(3).bytes()
    code.buf += b"\x75" + bytes([len(child)]) + child
    code.load(DATA)
    code.buf += b"\x48\x89\xc2"                        # mov rdx, rax
    code.mov("rsi", DATA).mov("rdi", ReportKind.loaded).mov("rax", 0x7F00).buf += b"\x0f\x05"
    code.exit(0)
    trace = run(parent_first, code, data=bytes(8))
    root = trace.events[0].pid
    child = trace.events[1].result
    assert trace.events[2] == Exit(child, wait_status_exited(3))
    assert trace.events[3] == Report(root, ReportKind.loaded, (DATA, 0x99))


def test_unknown_schedule_is_refused():
    from forkspec.oracle._internal.linux import LinuxBackend
    with pytest.raises(InvalidArgument):
        LinuxBackend(schedule="random")


def test_huge_write_ends_inconclusive_not_out_of_memory(backend, monkeypatch):
    from forkspec.oracle._internal import linux
    monkeypatch.setattr(linux, "MAX_OUTPUT", 4096)
    code = (Code().syscall(Nr.mmap, 0, 4 * PAGE_SIZE, 3, 0x22, 2**64 - 1, 0).mov("rdi", DATA).store_rdi_rax()
            .load(DATA))
    code.buf += b"\x48\x89\xc6"                        # mov rsi, rax
    code.mov("rdi", 1).mov("rdx", 4 * PAGE_SIZE).mov("rax", Nr.write).buf += b"\x0f\x05"
    trace = run(backend, code.exit(0), data=bytes(8))
    assert isinstance(trace.events[-1], Inconclusive) and "output budget" in trace.events[-1].reason
    assert processes_in_group(trace.events[0].pid) == []


def test_layout_regions_are_whole_special_mappings(backend):
    # One Layout region per kernel mapping: unmapping a whole region works, cutting one does not.
    regions = run(backend, Code().exit(0)).events[0].layout.regions
    special = [r for r in regions if r[0] != "stack" and r[2] - r[1] > PAGE_SIZE]
    assert special, regions
    name, lo, hi = special[0]
    code = Code().syscall(Nr.munmap, lo, PAGE_SIZE).syscall(Nr.munmap, lo, hi - lo).exit(0)
    trace = run(backend, code)
    results = [e.result for e in trace.events if isinstance(e, Syscall)]
    assert results == [-Errno.EINVAL, 0], (name, hex(lo), hex(hi))


def test_partial_write_starts_on_an_empty_pipe(backend):
    # A pipe write tops up a non-empty pipe's last buffer with len % 4096 bytes first; on an
    # empty pipe it copies whole 4 KiB chunks and a chunk that faults counts for nothing. The
    # tracer empties the pipe before each write(1|2), so the answer is the empty-pipe one.
    code = (Code().syscall(Nr.mmap, 0, 2 * PAGE_SIZE, 3, 0x22, 2**64 - 1, 0).mov("rdi", DATA).store_rdi_rax()
            .load(DATA))
    code.buf += b"\x48\x8d\xb8\x00\x10\x00\x00"        # lea rdi, [rax+0x1000]
    code.mov("rsi", PAGE_SIZE).mov("rax", Nr.munmap).buf += b"\x0f\x05"
    for _ in range(5):
        code.load(DATA)
        code.buf += b"\x48\x89\xc6"                    # mov rsi, rax
        code.mov("rdi", 1).mov("rdx", 10).mov("rax", Nr.write).buf += b"\x0f\x05"
        code.load(DATA)
        code.buf += b"\x48\x8d\xb0\x00\x0f\x00\x00"    # lea rsi, [rax+0xf00]
        code.mov("rdi", 1).mov("rdx", 0x1100).mov("rax", Nr.write).buf += b"\x0f\x05"
    trace = run(backend, code.exit(0), data=bytes(8))
    writes = [e.result for e in trace.events if isinstance(e, Syscall) and e.nr == Nr.write]
    assert writes == [10, -Errno.EFAULT] * 5


def test_unrunnable_entry_image_is_a_backend_error_naming_the_errno(backend):
    from forkspec.oracle.errors import BackendError
    with pytest.raises(BackendError, match="Exec format error"):
        backend.run({"i0": b"not an ELF"}, "i0")
    trace = run(backend, Code().exit(0))                # the backend is still usable
    assert trace.events[-1].status == 0
