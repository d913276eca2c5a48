"""The sandbox a traced program runs in (issue 5): who it runs as and what it may use.

`Sandbox` is the configuration (plain data). `Host` holds what one backend keeps between runs:
the output pipe and the thread that drains it, the cgroups, the seccomp program, and the tracer's
role as child subreaper. `SandboxSession` starts one run's root process and kills and reaps the
whole process group afterwards, whatever happened.

The root process is started by `posix_spawn` (no copy of the tracer's address space, no Python
in the child) of a launcher: a tiny static ELF, built here from raw syscalls, whose file descriptors
0-2 posix_spawn has already set (0 from /dev/null, 1 and 2 the output pipe), in a new process group
with every signal at its default action (ignored signals would survive execve). The launcher
closes every other fd, moves into the private directory, sets the rlimits (RLIMIT_CORE 0,
RLIMIT_CPU, RLIMIT_NPROC, optionally RLIMIT_AS), turns off address-space randomisation
(ADDR_NO_RANDOMIZE), drops to an unused uid when started as root, sets PDEATHSIG and
no_new_privs, calls PTRACE_TRACEME and stops itself with SIGSTOP. The tracer sets the ptrace
options and moves it into the cgroups; the launcher then installs the seccomp filter and execves
the image. A failed step exits with EXIT_SETUP_FAILED; a failed execve exits with its errno.
The filter lets through the syscalls the model knows and the report call; every other syscall
gets ENOSYS, as on impl. (`Sandbox(spawn="fork")` does the same steps in a Python child of
os.fork instead: slower, kept as a fallback and a cross-check.)
"""
from __future__ import annotations

import fcntl
import os
import platform
import resource
import select
import shutil
import signal
import struct
import tempfile
import threading
import time
import weakref
from dataclasses import dataclass
from typing import Callable

from ...specs.abi import Errno
from ..errors import InvalidArgument
from . import ptrace as pt

NOBODY = 65534
EXIT_SETUP_FAILED = 125         # the child's exit code when a sandbox step failed before execve
_F_SETPIPE_SZ = 1031
# Ignored signals survive execve: the root starts with every signal at its default action.
_DEFAULTABLE_SIGNALS = tuple(sorted(set(signal.valid_signals()) - {signal.SIGKILL, signal.SIGSTOP}))
_CGROUP_ROOT = "/sys/fs/cgroup"


@dataclass(frozen=True)
class Sandbox:
    """How a traced program is confined. Defaults suit the fuzzing campaign."""
    uid: int = NOBODY                       # used only when the tracer runs as root
    gid: int = NOBODY
    max_processes: int = 256                # pids cgroup (where available) for the run's processes
    nproc_rlimit: int = 4096                # RLIMIT_NPROC: per-uid, so shared with anyone else as `uid`
    memory_bytes: int = 1 << 30             # memory cgroup limit (where available)
    # RLIMIT_AS. None leaves it unlimited: a limit changes mmap's answers (a 64 TiB PROT_NONE
    # mapping is legal on Linux), and real memory is bounded by the memory cgroup instead.
    address_space: int | None = None
    seccomp: bool = True
    no_randomize: bool = True               # ADDR_NO_RANDOMIZE, for reproducible replays
    # "launcher": posix_spawn a tiny static ELF that does the setup with raw syscalls (cheap:
    # no copy of the tracer's address space, no Python in the child). "fork": os.fork and do the
    # setup in the Python child (the fallback, and a cross-check in the tests).
    spawn: str = "launcher"

    def __post_init__(self) -> None:
        if self.spawn not in ("launcher", "fork"):
            raise InvalidArgument(f"Sandbox spawn={self.spawn!r} must be 'launcher' or 'fork'")
        if self.max_processes < 1 or self.nproc_rlimit < 1:
            raise InvalidArgument(f"Sandbox max_processes={self.max_processes} and "
                                  f"nproc_rlimit={self.nproc_rlimit} must be >= 1")

    def host(self) -> "Host":
        return Host(self)


class _Cgroups:
    """Best-effort pids and memory cgroups for one backend (v1 hierarchies, or v2 unified)."""

    def __init__(self, name: str, max_processes: int, memory_bytes: int) -> None:
        self.dirs: list[str] = []
        self.names: list[str] = []
        if os.geteuid() != 0:
            return
        _remove_stale_cgroups()
        v1 = (("pids", {"pids.max": str(max_processes)}),
              ("memory", {"memory.limit_in_bytes": str(memory_bytes)}))
        for controller, settings in v1:
            base = os.path.join(_CGROUP_ROOT, controller)
            if os.path.exists(os.path.join(base, "cgroup.procs")):
                self._make(os.path.join(base, name), settings, controller)
        if not self.dirs and os.path.exists(os.path.join(_CGROUP_ROOT, "cgroup.subtree_control")):
            try:
                with open(os.path.join(_CGROUP_ROOT, "cgroup.subtree_control")) as f:
                    enabled = f.read().split()
            except OSError:
                enabled = []
            settings = {}
            if "pids" in enabled:
                settings["pids.max"] = str(max_processes)
            if "memory" in enabled:
                settings["memory.max"] = str(memory_bytes)
            if settings:
                self._make(os.path.join(_CGROUP_ROOT, name), settings, "+".join(sorted(settings)))

    def _make(self, path: str, settings: dict[str, str], label: str) -> None:
        try:
            os.makedirs(path, exist_ok=True)
            for key, value in settings.items():
                with open(os.path.join(path, key), "w") as f:
                    f.write(value)
        except OSError:
            self._remove(path)
            return
        self.dirs.append(path)
        self.names.append(label)

    def enter(self, pid: int) -> None:
        for path in self.dirs:
            with open(os.path.join(path, "cgroup.procs"), "w") as f:
                f.write(str(pid))

    @staticmethod
    def _remove(path: str) -> None:
        try:
            os.rmdir(path)
        except OSError:
            pass

    def destroy(self) -> None:
        for path in self.dirs:
            self._remove(path)
        self.dirs = []


def _remove_stale_cgroups() -> None:
    """Remove forkspec cgroups left by tracers that died without cleaning up (empty ones only:
    rmdir refuses a cgroup that still holds processes)."""
    for base in (os.path.join(_CGROUP_ROOT, "pids"), os.path.join(_CGROUP_ROOT, "memory"), _CGROUP_ROOT):
        try:
            names = os.listdir(base)
        except OSError:
            continue
        for name in names:
            parts = name.split("-")
            if len(parts) == 3 and parts[0] == "forkspec" and parts[1].isdigit() \
                    and not os.path.exists(f"/proc/{parts[1]}"):
                _Cgroups._remove(os.path.join(base, name))


def _remove_stale_dirs() -> None:
    """Remove the directories of hosts whose process is gone (killed, or left through os._exit
    as campaign workers do), recognised by name and layout: forkspec-<pid>-*/{run,launch}."""
    base = tempfile.gettempdir()
    try:
        names = os.listdir(base)
    except OSError:
        return
    for name in names:
        parts = name.split("-", 2)
        if len(parts) != 3 or parts[0] != "forkspec" or not parts[1].isdigit():
            continue
        path = os.path.join(base, name)
        if os.path.exists(f"/proc/{parts[1]}") or not os.path.isdir(os.path.join(path, "launch")):
            continue
        shutil.rmtree(path, ignore_errors=True)


class Watchdog:
    """One daemon thread that runs an action once a deadline has passed (the wall-time budget).

    Persistent, because starting a thread per run costs more than a whole short run; and arming
    does not wake it (a wake-up per run costs a GIL hand-off): it looks at the deadline at least
    every POLL seconds, so a budget is enforced within POLL of its end."""
    POLL = 0.05

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._armed: tuple[float, Callable[[], None]] | None = None
        self._thread: threading.Thread | None = None

    def arm(self, seconds: float, action: Callable[[], None]) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._loop, daemon=True, name="forkspec-linux-watchdog")
            self._thread.start()
        self._armed = (time.monotonic() + seconds, action)

    def disarm(self) -> None:
        with self._lock:
            self._armed = None

    def _loop(self) -> None:
        while True:
            armed = self._armed
            now = time.monotonic()
            if armed is None or now < armed[0]:
                time.sleep(self.POLL if armed is None else min(self.POLL, armed[0] - now))
                continue
            with self._lock:
                if self._armed is armed:    # not disarmed meanwhile: the run is still going
                    self._armed = None
                    armed[1]()


# --- the launcher: the sandbox setup as a static ELF of raw syscalls ---------------------------
_LAUNCH_TEXT = 0x40_0000
_LAUNCH_DATA = 0x60_0000
_R = {"rax": 0, "rdx": 2, "rsi": 6, "rdi": 7, "r8": 8, "r9": 9, "r10": 10}
_ARGS = ("rdi", "rsi", "rdx", "r10", "r8", "r9")
_SYS = {"chdir": 80, "close_range": 436, "prlimit64": 302, "personality": 135, "setgroups": 116,
        "setresgid": 119, "setresuid": 117, "prctl": 157, "ptrace": 101, "getpid": 39, "kill": 62,
        "execve": 59, "exit": 60}
_RLIMIT_CPU, _RLIMIT_CORE, _RLIMIT_NPROC, _RLIMIT_AS = 0, 4, 6, 9


class _LaunchCode:
    """x86-64 for the launcher: syscalls with immediate arguments, each checked (a negative
    result exits with EXIT_SETUP_FAILED)."""

    def __init__(self) -> None:
        self.code = bytearray()
        self._to_fail: list[int] = []

    def mov(self, reg: str, value: int) -> None:           # movabs reg, imm64
        r = _R[reg]
        self.code += bytes([0x48 | (r >> 3), 0xB8 + (r & 7)]) + struct.pack("<Q", value & (2**64 - 1))

    def call(self, name: str, *args: int, check: bool = True) -> None:
        self.mov("rax", _SYS[name])
        for reg, value in zip(_ARGS, args):
            self.mov(reg, value)
        self.code += b"\x0f\x05"                            # syscall
        if check:
            self.code += b"\x48\x85\xc0\x0f\x88"           # test rax, rax; js fail
            self._to_fail.append(len(self.code))
            self.code += bytes(4)

    def raw(self, data: bytes) -> None:
        self.code += data

    def finish(self) -> bytes:
        fail = len(self.code)
        self.mov("rdi", EXIT_SETUP_FAILED)
        self.call("exit", check=False)
        for at in self._to_fail:
            self.code[at:at + 4] = struct.pack("<i", fail - (at + 4))
        return bytes(self.code)


def launcher_image(workdir: str, entry: str, sandbox: Sandbox, cpu_seconds: int, drop: bool,
                   filter_code: bytes) -> bytes:
    """The static ELF that sets a run's root process up (module docstring) and execs `entry`."""
    from .elf import PF_R, PF_W, PF_X, Segment, write_elf
    data = bytearray()
    at: dict[str, int] = {}

    def put(name: str, blob: bytes) -> None:
        data.extend(bytes(-len(data) % 8))
        at[name] = _LAUNCH_DATA + len(data)
        data.extend(blob)

    put("workdir", workdir.encode() + b"\0")
    put("path", entry.encode() + b"\0")
    put("argv", struct.pack("<QQ", at["path"], 0))
    put("envp", bytes(8))
    put("rl_core", struct.pack("<QQ", 0, 0))
    put("rl_cpu", struct.pack("<QQ", cpu_seconds, cpu_seconds + 1))
    put("rl_nproc", struct.pack("<QQ", sandbox.nproc_rlimit, sandbox.nproc_rlimit))
    if sandbox.address_space is not None:
        put("rl_as", struct.pack("<QQ", sandbox.address_space, sandbox.address_space))
    if filter_code:
        put("filter", filter_code)
        put("fprog", struct.pack("<HxxxxxxQ", len(filter_code) // 8, at["filter"]))
    c = _LaunchCode()
    c.call("close_range", 3, 0xFFFF_FFFF, 0)
    c.call("chdir", at["workdir"])
    c.call("prlimit64", 0, _RLIMIT_CORE, at["rl_core"], 0)
    c.call("prlimit64", 0, _RLIMIT_CPU, at["rl_cpu"], 0)
    c.call("prlimit64", 0, _RLIMIT_NPROC, at["rl_nproc"], 0)
    if "rl_as" in at:
        c.call("prlimit64", 0, _RLIMIT_AS, at["rl_as"], 0)
    if sandbox.no_randomize:
        c.call("personality", pt.ADDR_NO_RANDOMIZE)
    if drop:
        c.call("setgroups", 0, 0)
        c.call("setresgid", sandbox.gid, sandbox.gid, sandbox.gid)
        c.call("setresuid", sandbox.uid, sandbox.uid, sandbox.uid)
    c.call("prctl", pt.PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)    # after setresuid
    c.call("prctl", pt.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
    c.call("ptrace", pt.PTRACE_TRACEME, 0, 0, 0)
    c.call("getpid")
    c.raw(b"\x48\x89\xc7")                                   # mov rdi, rax
    c.mov("rsi", int(signal.SIGSTOP))
    c.mov("rax", _SYS["kill"])
    c.raw(b"\x0f\x05")                                       # kill(getpid(), SIGSTOP)
    if filter_code:
        c.call("prctl", pt.PR_SET_SECCOMP, pt.SECCOMP_MODE_FILTER, at["fprog"], 0, 0)
    c.call("execve", at["path"], at["argv"], at["envp"], check=False)
    c.raw(b"\x48\xf7\xd8\x48\x89\xc7")                       # neg rax; mov rdi, rax
    c.mov("rax", _SYS["exit"])
    c.raw(b"\x0f\x05")                                       # exit(errno of execve)
    text = c.finish()
    return write_elf([Segment(_LAUNCH_TEXT, text, len(text), PF_R | PF_X),
                      Segment(_LAUNCH_DATA, bytes(data), len(data), PF_R | PF_W)], _LAUNCH_TEXT)


class Host:
    """What one backend keeps between runs (module docstring)."""

    def __init__(self, sandbox: Sandbox) -> None:
        self.sandbox = sandbox
        self.drop_privileges = os.geteuid() == 0
        self.platform = f"Linux {platform.release()} {platform.machine()}"
        self._filter: bytes | None = None
        self._filter_for: frozenset[int] = frozenset()
        self._subreaper_pid = 0
        # fds 1 and 2 of every tracee: a pipe. Its read end is non-blocking, drained by a thread
        # (so a write larger than the pipe completes) and, before every write(1|2) a tracee
        # makes, by the tracer itself (`empty_output_pipe`): a pipe write cuts its source into
        # 4 KiB chunks and counts only whole chunks when it faults, except that it first tops up
        # a non-empty pipe's last buffer — so a faulting write's result would depend on how far
        # the thread had drained. Starting every write on an empty pipe makes it deterministic.
        self._out_r, self._out_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        os.set_blocking(self._out_w, True)      # the tracee's side blocks, as an ordinary pipe does
        try:
            fcntl.fcntl(self._out_w, _F_SETPIPE_SZ, 1 << 20)
        except OSError:
            pass                                # keeps the default size; the drain thread copes
        self.devnull = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        self._drain = threading.Thread(target=_drain, args=(self._out_r,), daemon=True,
                                       name="forkspec-linux-output")
        self._drain.start()
        self.watchdog = Watchdog()
        self.cgroups = _Cgroups(f"forkspec-{os.getpid()}-{id(self):x}", sandbox.max_processes,
                                sandbox.memory_bytes)
        # One directory per host, named after the tracer's pid (so a later host can remove it if
        # this process dies without cleaning up): "run" holds a run's images and is its cwd
        # (0755, reused run after run); "launch" holds the launchers (0700: they run as root).
        _remove_stale_dirs()
        self.basedir = tempfile.mkdtemp(prefix=f"forkspec-{os.getpid()}-")
        os.chmod(self.basedir, 0o711)
        self.workdir = os.path.join(self.basedir, "run")
        os.mkdir(self.workdir, 0o755)
        os.chmod(self.workdir, 0o755)
        self.launcher_dir = os.path.join(self.basedir, "launch")
        os.mkdir(self.launcher_dir, 0o700)
        self._launchers: dict[tuple[str, int, bool], str] = {}
        self._finalizer = weakref.finalize(self, _close_host, os.getpid(), self.cgroups, self._out_w,
                                           self.devnull, self.basedir)

    def launcher(self, entry: str, cpu_seconds: int, filter_code: bytes) -> str:
        """The path of the launcher for this entry and CPU limit (built once, then cached)."""
        key = (entry, cpu_seconds, bool(filter_code))
        path = self._launchers.get(key)
        if path is None:
            path = os.path.join(self.launcher_dir, f"launch-{len(self._launchers)}")
            image = launcher_image(self.workdir, entry, self.sandbox, cpu_seconds,
                                   self.drop_privileges, filter_code)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o700)
            try:
                os.write(fd, image)
            finally:
                os.close(fd)
            self._launchers[key] = path
        return path

    @property
    def out_w(self) -> int:
        return self._out_w

    def empty_output_pipe(self) -> None:
        """Read the output pipe until it is empty (every tracee is stopped while this runs)."""
        _empty_pipe(self._out_r)

    @property
    def meta(self) -> tuple[tuple[str, str], ...]:
        s = self.sandbox
        return (("kernel", platform.release()), ("kernel_build", platform.version()),
                ("uid", str(s.uid if self.drop_privileges else os.geteuid())),
                ("schedule", "child-first"),
                ("aslr", "off" if s.no_randomize else "on"),
                ("seccomp", "on" if s.seccomp else "off"),
                ("cgroups", ",".join(self.cgroups.names) or "none"),
                ("reaper_pid", str(os.getpid())))

    def seccomp_program(self, allowed: frozenset[int]) -> bytes:
        if self._filter is None or self._filter_for != allowed:
            self._filter = pt.seccomp_filter(allowed, int(Errno.ENOSYS))
            self._filter_for = allowed
        return self._filter

    def become_subreaper(self) -> None:
        """Orphans of the run come to the tracer (not inherited across fork: re-checked per pid)."""
        if self._subreaper_pid != os.getpid():
            pt.prctl(pt.PR_SET_CHILD_SUBREAPER, 1)
            self._subreaper_pid = os.getpid()

    def session(self, entry: str, workdir: str, cpu_seconds: int,
                allowed: frozenset[int] | set[int]) -> "SandboxSession":
        return SandboxSession(self, entry, workdir, cpu_seconds, frozenset(allowed))

    def close(self) -> None:
        self._finalizer()


def _drain(fd: int) -> None:
    """Discard what tracees write to fds 1 and 2 (Output events come from the write syscalls)."""
    while True:
        try:
            select.select([fd], [], [])
            if not os.read(fd, 1 << 16):
                return                          # every write end closed
        except BlockingIOError:
            continue                            # the tracer emptied it first
        except (OSError, ValueError):
            return                              # closed under us


def _empty_pipe(fd: int) -> None:
    while True:
        try:
            if not os.read(fd, 1 << 16):
                return
        except BlockingIOError:
            return


def _close_host(owner: int, cgroups: _Cgroups, out_w: int, devnull: int, *dirs: str) -> None:
    if os.getpid() == owner:            # a forked copy must not remove what its parent still uses
        cgroups.destroy()
        for path in dirs:
            shutil.rmtree(path, ignore_errors=True)
    for fd in (out_w, devnull):
        try:
            os.close(fd)
        except OSError:
            pass


class SandboxSession:
    """One run's root process: spawn it, and kill and reap its whole process group."""

    def __init__(self, host: Host, entry: str, workdir: str, cpu_seconds: int,
                 allowed: frozenset[int]) -> None:
        self.host = host
        self.entry = entry
        self.workdir = workdir
        self.cpu_seconds = cpu_seconds
        self.allowed = allowed
        self.pgid = 0

    def spawn(self) -> int:
        """Start the root; it stops itself with SIGSTOP before execve (see the module docstring)."""
        host = self.host
        host.become_subreaper()
        code = host.seccomp_program(self.allowed) if host.sandbox.seccomp else b""
        if host.sandbox.spawn == "launcher":
            launcher = host.launcher(self.entry, self.cpu_seconds, code)
            pid = os.posix_spawn(
                launcher, [launcher], {},
                file_actions=[(os.POSIX_SPAWN_DUP2, host.devnull, 0), (os.POSIX_SPAWN_DUP2, host.out_w, 1),
                              (os.POSIX_SPAWN_DUP2, host.out_w, 2)],
                setpgroup=0, setsigmask=(), setsigdef=_DEFAULTABLE_SIGNALS)
            self.pgid = pid
            return pid
        prepared = pt.PreparedExec(self.entry.encode(), code)
        pid = os.fork()
        if pid == 0:
            self._child(prepared)           # never returns
        self.pgid = pid
        try:
            os.setpgid(pid, pid)            # also done by the child; whichever runs first wins
        except OSError:
            pass
        return pid

    def _child(self, prepared: pt.PreparedExec) -> None:
        code = EXIT_SETUP_FAILED
        try:
            s = self.host.sandbox
            os.setpgid(0, 0)
            os.dup2(self.host.devnull, 0)
            os.dup2(self.host.out_w, 1)
            os.dup2(self.host.out_w, 2)
            os.closerange(3, 1 << 20)
            for signo in range(1, 32):
                if signo not in (signal.SIGKILL, signal.SIGSTOP):
                    pt.set_signal_default(signo)
            signal.pthread_sigmask(signal.SIG_SETMASK, ())
            os.chdir(self.workdir)
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
            resource.setrlimit(resource.RLIMIT_CPU, (self.cpu_seconds, self.cpu_seconds + 1))
            resource.setrlimit(resource.RLIMIT_NPROC, (s.nproc_rlimit, s.nproc_rlimit))
            if s.address_space is not None:
                resource.setrlimit(resource.RLIMIT_AS, (s.address_space, s.address_space))
            if s.no_randomize:
                pt.personality(pt.ADDR_NO_RANDOMIZE)
            if self.host.drop_privileges:
                os.setgroups([])
                os.setresgid(s.gid, s.gid, s.gid)
                os.setresuid(s.uid, s.uid, s.uid)
            pt.prctl(pt.PR_SET_PDEATHSIG, signal.SIGKILL)   # after setresuid, which clears it
            pt.prctl(pt.PR_SET_NO_NEW_PRIVS, 1)
            pt.traceme()
            os.kill(os.getpid(), signal.SIGSTOP)
            if s.seccomp:
                code = prepared.install_filter_and_exec()
            else:
                code = prepared.exec_only()
            code = min(code, EXIT_SETUP_FAILED - 1)
        except BaseException:                   # noqa: B036 — nothing may unwind into the parent's stack
            pass
        os._exit(code)

    def describe_setup_failure(self, status: int) -> str:
        if os.WIFEXITED(status):
            code = os.WEXITSTATUS(status)
            if code == EXIT_SETUP_FAILED:
                return "a sandbox step failed before execve (rlimits, uid drop or ptrace)"
            return f"execve failed: {os.strerror(code)}"
        if os.WIFSIGNALED(status):
            return f"killed by signal {os.WTERMSIG(status)}"
        return "unexpected stop"

    def enter_cgroups(self, pid: int) -> None:
        try:
            self.host.cgroups.enter(pid)
        except OSError:
            pass                                # best effort: rlimits still apply

    def kill(self) -> None:
        if self.pgid:
            try:
                os.killpg(self.pgid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass

    def kill_and_reap(self, anything_alive: bool = True) -> None:
        """SIGKILL the run's process group and wait until none of it is left (tracees,
        re-parented orphans and zombies included)."""
        if not self.pgid:
            return
        if anything_alive:
            self.kill()
        while True:
            try:
                os.waitpid(-self.pgid, pt.WALL)
            except ChildProcessError:
                break
            except InterruptedError:
                continue
