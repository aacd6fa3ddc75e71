"""The inside of the sandbox (see lmforge.core.sandbox): bootstrap, init and worker.

Run as a script by `lmforge.core.sandbox.run_python` in an isolated interpreter
(`python -I -S -B -u sandbox_child.py BASE REPORT_FD`). It imports only os, signal, sys and
marshal at start (ctypes and resource where needed), so each run starts in milliseconds.

Its settings come as a marshal file written by the evaluator. What it reports goes back as
Python literals (`repr`), and it never parses what the sandboxed code could have written: the
worker's status lines are passed through as text for the evaluator to read with
`ast.literal_eval`.
"""

import _signal as signal  # the C module (`signal` would import enum)
import marshal
import os
import sys

_CLONE_NEWIPC, _CLONE_NEWUSER, _CLONE_NEWPID, _CLONE_NEWNET = 0x08000000, 0x10000000, 0x20000000, 0x40000000
_PR_SET_PDEATHSIG, _PR_SET_NO_NEW_PRIVS, _PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL = 1, 38, 47, 4
_SYS_LANDLOCK_CREATE_RULESET, _SYS_LANDLOCK_ADD_RULE, _SYS_LANDLOCK_RESTRICT_SELF = 444, 445, 446

# Landlock access rights (linux/landlock.h) and the ABI version that introduced them.
_LL_EXECUTE, _LL_WRITE_FILE, _LL_READ_FILE, _LL_READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
_LL_REFER, _LL_TRUNCATE, _LL_IOCTL_DEV = 1 << 13, 1 << 14, 1 << 15
_LL_FILE_RIGHTS = _LL_EXECUTE | _LL_WRITE_FILE | _LL_READ_FILE | _LL_TRUNCATE | _LL_IOCTL_DEV
_LL_NET_BIND_TCP, _LL_NET_CONNECT_TCP = 1 << 0, 1 << 1
_LL_SCOPE_ABSTRACT_UNIX_SOCKET, _LL_SCOPE_SIGNAL = 1 << 0, 1 << 1


def _libc() -> object:
    import ctypes

    return ctypes.CDLL(None, use_errno=True)


def _errno_text() -> str:
    import ctypes

    return os.strerror(ctypes.get_errno())


def _enter_namespaces(isolation: dict) -> None:
    """New user, network, PID and IPC namespaces where the kernel allows it; the caller's next
    child becomes PID 1 of the new PID namespace."""
    if not sys.platform.startswith("linux"):
        isolation["namespaces"] = "unavailable (not Linux)"
        return
    libc = _libc()
    uid, gid = os.getuid(), os.getgid()
    if libc.unshare(_CLONE_NEWUSER | _CLONE_NEWNET | _CLONE_NEWPID | _CLONE_NEWIPC) == 0:
        isolation.update(user_namespace=True, network_namespace=True, pid_namespace=True)
        try:  # map our own ids into the namespace (files we create must have a mapped owner)
            for name, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"), ("gid_map", f"{gid} {gid} 1")):
                with open(f"/proc/self/{name}", "w") as handle:
                    handle.write(text)
        except OSError as error:
            isolation["id_map_error"] = str(error)
        return
    user_error = _errno_text()
    if libc.unshare(_CLONE_NEWNET | _CLONE_NEWPID | _CLONE_NEWIPC) == 0:  # privileged (root) without a user namespace
        isolation.update(user_namespace=False, network_namespace=True, pid_namespace=True)
        return
    isolation.update(user_namespace=False, network_namespace=False, pid_namespace=False,
                     namespaces=f"unavailable ({user_error})")


def _set_limits(settings: dict, isolation: dict) -> None:
    import resource

    cpu = int(settings["cpu_s"])
    limits = [("RLIMIT_CPU", cpu, cpu + 1), ("RLIMIT_AS", settings["memory_bytes"], settings["memory_bytes"]),
              ("RLIMIT_FSIZE", settings["file_size_bytes"], settings["file_size_bytes"]),
              ("RLIMIT_NOFILE", settings["open_files"], settings["open_files"]), ("RLIMIT_CORE", 0, 0),
              ("RLIMIT_NPROC", 1, 1)]
    applied = []
    for name, soft, hard in limits:
        number = getattr(resource, name, None)
        if number is None:
            continue
        try:
            current_soft, current_hard = resource.getrlimit(number)
            if current_hard != resource.RLIM_INFINITY:  # never ask for more than we have
                soft, hard = min(soft, current_hard), min(hard, current_hard)
            resource.setrlimit(number, (soft, hard))
            applied.append(name)
        except (ValueError, OSError):
            pass
    isolation["rlimits"] = applied
    isolation["fork_limited"] = "RLIMIT_NPROC" in applied and os.geteuid() != 0  # root is exempt


def _drop_privileges(isolation: dict) -> None:
    """no_new_privs (required by Landlock, and no setuid gains) and an empty capability set."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    libc = _libc()
    isolation["no_new_privs"] = libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0
    libc.prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)

    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class Data(ctypes.Structure):
        _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]

    header, data = Header(0x20080522, 0), (Data * 2)()  # _LINUX_CAPABILITY_VERSION_3, all zero
    isolation["capabilities_dropped"] = libc.capset(ctypes.byref(header), data) == 0


def _landlock(settings: dict, isolation: dict) -> None:
    """Read-only: the Python installation and system libraries; read-write: the work folder;
    execute: nothing. From ABI 4 no TCP bind/connect, from ABI 6 no signals or abstract Unix
    sockets reaching outside the sandbox."""
    isolation["landlock_abi"] = 0
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    libc = _libc()
    libc.syscall.restype = ctypes.c_long
    abi = libc.syscall(_SYS_LANDLOCK_CREATE_RULESET, None, ctypes.c_size_t(0), ctypes.c_uint32(1))
    if abi < 1:
        isolation["landlock"] = f"unavailable ({_errno_text()})"
        return
    fs = (1 << 13) - 1  # ABI 1: EXECUTE .. MAKE_SYM
    fs |= _LL_REFER if abi >= 2 else 0
    fs |= _LL_TRUNCATE if abi >= 3 else 0
    fs |= _LL_IOCTL_DEV if abi >= 5 else 0
    net = _LL_NET_BIND_TCP | _LL_NET_CONNECT_TCP if abi >= 4 else 0
    scoped = _LL_SCOPE_ABSTRACT_UNIX_SOCKET | _LL_SCOPE_SIGNAL if abi >= 6 else 0

    class RulesetAttr(ctypes.Structure):
        _fields_ = [("handled_access_fs", ctypes.c_uint64), ("handled_access_net", ctypes.c_uint64),
                    ("scoped", ctypes.c_uint64)]

    class PathBeneath(ctypes.Structure):
        _pack_ = 1
        _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]

    attr = RulesetAttr(fs, net, scoped)
    size = 8 if abi < 4 else 16 if abi < 6 else 24
    ruleset = libc.syscall(_SYS_LANDLOCK_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(size), ctypes.c_uint32(0))
    if ruleset < 0:
        isolation["landlock"] = f"ruleset refused ({_errno_text()})"
        isolation["landlock_abi"] = 0
        return
    read = _LL_READ_FILE | _LL_READ_DIR
    rules = [(path, read) for path in settings["read_paths"]]
    rules += [("/dev/null", _LL_READ_FILE | _LL_WRITE_FILE | _LL_TRUNCATE), ("/dev/zero", _LL_READ_FILE),
              ("/dev/urandom", _LL_READ_FILE), ("/dev/random", _LL_READ_FILE)]
    rules.append((settings["work"], fs & ~_LL_EXECUTE))
    try:
        for path, access in rules:
            try:
                fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            except OSError:
                continue  # a folder this machine does not have
            try:
                if not os.path.isdir(path):
                    access &= _LL_FILE_RIGHTS
                rule = PathBeneath(access & fs, fd)
                if libc.syscall(_SYS_LANDLOCK_ADD_RULE, ruleset, 1, ctypes.byref(rule), 0) != 0:
                    isolation.setdefault("landlock_rule_errors", []).append(f"{path}: {_errno_text()}")
            finally:
                os.close(fd)
        if libc.syscall(_SYS_LANDLOCK_RESTRICT_SELF, ruleset, 0) != 0:
            isolation["landlock"] = f"restrict_self refused ({_errno_text()})"
            isolation["landlock_abi"] = 0
            return
    finally:
        os.close(ruleset)
    isolation.update(landlock_abi=abi, landlock_tcp=abi >= 4, landlock_signal_scope=abi >= 6)


# Seccomp: system calls refused with an error (per architecture: x86_64, aarch64). Sockets of
# every family (Landlock and the network namespace leave Unix sockets such as a Docker socket
# reachable), new processes (clone without CLONE_THREAD, fork, vfork; clone3 answers ENOSYS so
# threads fall back to clone), exec, ptrace, namespaces, mounts, io_uring (which could issue
# calls past the filter), bpf, userfaultfd, perf events, the kernel keyring, other processes' memory.
_SECCOMP_ARCHES = {
    "x86_64": (0xC000003E, {"socket": 41, "socketpair": 53, "fork": 57, "vfork": 58, "execve": 59, "ptrace": 101,
                            "mount": 165, "add_key": 248, "request_key": 249, "keyctl": 250, "unshare": 272,
                            "perf_event_open": 298, "setns": 308, "process_vm_readv": 310, "process_vm_writev": 311,
                            "bpf": 321, "execveat": 322, "userfaultfd": 323, "io_uring_setup": 425}, 56),
    "aarch64": (0xC00000B7, {"socket": 198, "socketpair": 199, "execve": 221, "ptrace": 117, "mount": 40,
                             "add_key": 217, "request_key": 218, "keyctl": 219, "unshare": 97, "perf_event_open": 241,
                             "setns": 268, "process_vm_readv": 270, "process_vm_writev": 271, "bpf": 280,
                             "execveat": 281, "userfaultfd": 282, "io_uring_setup": 425}, 220),
}
_SYS_CLONE3, _CLONE_THREAD, _X32_SYSCALL_BIT = 435, 0x00010000, 0x40000000


def _seccomp(isolation: dict) -> None:
    """Install the filter above (needs no_new_privs, set before)."""
    isolation["seccomp"] = False
    machine = os.uname().machine
    if not sys.platform.startswith("linux") or machine not in _SECCOMP_ARCHES:
        return
    import ctypes
    import errno

    arch, blocked, clone = _SECCOMP_ARCHES[machine]
    ld_abs, jeq, jge, jset, ret = 0x20, 0x15, 0x35, 0x45, 0x06
    allow, deny, nosys = 0x7FFF0000, 0x00050000 | errno.EPERM, 0x00050000 | errno.ENOSYS
    # (code, jump-if-true label, jump-if-false label, k); labels resolve to the RET instructions below
    program = [(ld_abs, None, None, 4), (jeq, "next", "deny", arch), (ld_abs, None, None, 0)]
    if machine == "x86_64":
        program.append((jge, "deny", "next", _X32_SYSCALL_BIT))
    program += [(jeq, "deny", "next", number) for number in blocked.values()]
    program += [(jeq, "nosys", "next", _SYS_CLONE3), (jeq, "clone", "next", clone), (ret, None, None, allow)]
    labels = {"clone": len(program)}
    program += [(ld_abs, None, None, 16), (jset, "allow", "deny", _CLONE_THREAD)]  # low half of clone's flags
    for name, value in (("allow", allow), ("deny", deny), ("nosys", nosys)):
        labels[name] = len(program)
        program.append((ret, None, None, value))

    class Instruction(ctypes.Structure):
        _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8), ("k", ctypes.c_uint32)]

    class Program(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(Instruction))]

    def offset(label: str | None, index: int) -> int:
        return 0 if label in (None, "next") else labels[label] - index - 1

    filters = (Instruction * len(program))(*[Instruction(code, offset(t, i), offset(f, i), k)
                                             for i, (code, t, f, k) in enumerate(program)])
    fprog = Program(len(program), filters)
    isolation["seccomp"] = _libc().prctl(22, 2, ctypes.byref(fprog), 0, 0) == 0  # PR_SET_SECCOMP, MODE_FILTER


# Audit events the guard refuses outright, and those whose path arguments it checks.
_FORBIDDEN_EVENTS = frozenset({
    "os.fork", "os.forkpty", "os.exec", "os.posix_spawn", "os.spawn", "os.system", "os.startfile",
    "subprocess.Popen", "pty.spawn", "os.kill", "os.killpg", "signal.pthread_kill", "resource.setrlimit",
    "resource.prlimit", "gc.get_objects", "gc.get_referrers", "gc.get_referents", "urllib.Request",
    "http.client.connect", "ftplib.connect", "smtplib.connect", "poplib.connect", "imaplib.open",
    "nntplib.connect", "telnetlib.Telnet.open", "webbrowser.open", "sys.remote_exec",
})
_FORBIDDEN_PREFIXES = ("socket.", "ctypes.", "winreg.", "_winapi.")
_WRITE_EVENTS = frozenset({
    "os.remove", "os.rmdir", "os.rename", "os.mkdir", "os.chmod", "os.chown", "os.chflags", "os.lchflags",
    "os.link", "os.symlink", "os.truncate", "os.utime", "os.setxattr", "os.removexattr", "shutil.rmtree",
    "shutil.move", "shutil.copyfile", "shutil.copymode", "shutil.copystat", "shutil.copytree", "shutil.chown",
    "shutil.make_archive", "shutil.unpack_archive", "tempfile.mkstemp", "tempfile.mkdtemp", "sqlite3.connect",
})
_READ_EVENTS = frozenset({"os.listdir", "os.scandir", "glob.glob", "os.listxattr", "os.getxattr"})
_DEVICES_READ = ("/dev/null", "/dev/zero", "/dev/urandom", "/dev/random")


def _install_audit_hook(settings: dict, denied: list[str]) -> None:
    """A Python-level guard (defence in depth: code that reaches native memory can get round it)."""
    realpath, fsdecode, getcwd, join = os.path.realpath, os.fsdecode, os.getcwd, os.path.join
    work = realpath(settings["work"])
    readable = tuple(realpath(p) for p in settings["read_paths"]) + (work,)
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC

    def within(path: str, roots: tuple[str, ...]) -> bool:
        return any(path == root or path.startswith(root.rstrip("/") + "/") for root in roots)

    def resolve(path: object) -> str | None:
        if path is None or isinstance(path, int):
            return None  # an already open descriptor, or the current folder
        try:
            text = fsdecode(path)
        except TypeError:
            return None
        return realpath(join(getcwd(), text))

    def refuse(event: str, detail: object) -> None:
        message = f"{event} {detail!s}"[:200]
        if len(denied) < 100:
            denied.append(message)
        raise PermissionError(f"sandbox: {message} is not allowed")

    def hook(event: str, args: tuple) -> None:
        if event == "open":
            path, mode, flags = (tuple(args) + (None, None, 0))[:3]
            resolved = resolve(path)
            if resolved is None:
                return
            writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or bool((flags or 0) & write_flags)
            if writing and not (within(resolved, (work,)) or resolved == "/dev/null"):
                refuse("writing", resolved)
            if not writing and not (within(resolved, readable) or resolved in _DEVICES_READ):
                refuse("reading", resolved)
        elif event in _FORBIDDEN_EVENTS or event.startswith(_FORBIDDEN_PREFIXES):
            refuse(event, args[0] if args else "")
        elif event in _WRITE_EVENTS:
            for arg in args:
                if isinstance(arg, (str, bytes, os.PathLike)):
                    resolved = resolve(arg)
                    if resolved is not None and not within(resolved, (work,)):
                        refuse(event, resolved)
        elif event in _READ_EVENTS:
            resolved = resolve(args[0]) if args else None
            if resolved is not None and not within(resolved, readable):
                refuse(event, resolved)

    sys.addaudithook(hook)


def _write_line(fd: int, data: dict) -> None:
    payload = (repr(data) + "\n").encode("utf-8")
    while payload:
        payload = payload[os.write(fd, payload):]


def _worker(settings: dict, status_w: int, isolation: dict, parent: int) -> None:
    """Apply every restriction, report which hold, then run the program. Never returns."""
    try:
        if sys.platform.startswith("linux"):
            _libc().prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
            if os.getppid() != parent:  # the parent died before the line above
                os._exit(1)
        os.chdir(settings["work"])
        os.umask(0o077)
        _set_limits(settings, isolation)
        if settings["kernel_isolation"]:
            _drop_privileges(isolation)
            _landlock(settings, isolation)
            _seccomp(isolation)
        denied: list[str] = []
        if settings["audit_hook"]:
            _install_audit_hook(settings, denied)
        isolation["audit_hook"] = bool(settings["audit_hook"])
        _write_line(status_w, {"isolation": isolation})
        sys.path[:0] = settings["python_paths"]
        filename = os.path.join(settings["work"], "program.py")
        with open(filename, encoding="utf-8") as handle:
            source = handle.read()
    except BaseException as error:  # noqa: BLE001 - a sandbox that cannot be set up runs nothing
        sys.stderr.write(f"sandbox setup failed: {type(error).__name__}: {error}\n")
        sys.stderr.flush()
        os._exit(70)
    os._exit(_run_program(source, filename, status_w, denied))


def _run_program(source: str, filename: str, status_w: int, denied: list[str]) -> int:
    import builtins
    import types

    module = types.ModuleType("__main__")
    module.__file__ = filename
    module.__builtins__ = builtins
    sys.modules["__main__"] = module
    sys.argv = [filename]
    end: dict = {"end": "completed"}
    code = 0
    try:
        exec(compile(source, filename, "exec"), module.__dict__)
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
        end = {"end": "exit", "code": code}
    except BaseException as error:  # noqa: BLE001 - the program's failure is the result
        end = {"end": "exception", "exception": type(error).__name__}
        code = 1
        try:
            import traceback

            traceback.print_exception(type(error), error, error.__traceback__.tb_next)  # from the program's frame
        except BaseException:  # noqa: BLE001 - e.g. no memory left to format it
            pass
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:  # noqa: BLE001 - a closed or full stream
            pass
    end["denied"] = denied[:20]
    try:
        _write_line(status_w, end)
    except OSError:
        pass
    return code & 0xFF


def _init(settings: dict, status_w: int, exit_w: int, isolation: dict) -> None:
    """PID 1 of the namespace (or a plain middle process): start the worker, reap, report. Never returns."""
    me = os.getpid()
    worker = os.fork()
    if worker == 0:
        os.close(exit_w)
        _worker(settings, status_w, isolation, me)
    os.close(status_w)
    while True:
        try:
            pid, wait_status, usage = os.wait4(-1, 0)
        except ChildProcessError:
            os._exit(1)
        if pid == worker:
            break
    info: dict = {"cpu_s": usage.ru_utime + usage.ru_stime, "max_rss_kb": usage.ru_maxrss}
    if os.WIFSIGNALED(wait_status):
        info["signal"] = os.WTERMSIG(wait_status)
    else:
        info["returncode"] = os.waitstatus_to_exitcode(wait_status)
    _write_line(exit_w, info)
    os._exit(0)


def drain(fd: int, limit: int = 1_000_000) -> str:
    """What a pipe holds now (up to about `limit` bytes), without waiting for writers to close it."""
    os.set_blocking(fd, False)
    chunks = []
    total = 0
    while total < limit:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            break
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
    return b"".join(chunks).decode("utf-8", errors="replace")


def _bootstrap(base: str, report_fd: int) -> None:
    with open(os.path.join(base, "config.marshal"), "rb") as handle:
        settings = marshal.load(handle)
    isolation: dict = {"platform": sys.platform, "uid": os.getuid()}
    if settings["kernel_isolation"]:
        _enter_namespaces(isolation)
    status_r, status_w = os.pipe()
    exit_r, exit_w = os.pipe()
    timed_out = []
    init = os.fork()
    if init == 0:
        os.close(report_fd)
        os.close(status_r)
        os.close(exit_r)
        _init(settings, status_w, exit_w, isolation)
    os.close(status_w)
    os.close(exit_w)

    def deadline(signum: int, frame: object) -> None:
        timed_out.append(True)
        try:
            os.kill(init, signal.SIGKILL)  # from outside the PID namespace: the namespace goes with it
        except ProcessLookupError:
            pass

    signal.signal(signal.SIGALRM, deadline)
    signal.setitimer(signal.ITIMER_REAL, settings["timeout_s"])
    os.waitpid(init, 0)  # resumed after the alarm handler (PEP 475) until init is gone
    signal.setitimer(signal.ITIMER_REAL, 0)
    # A few kB of each, so the report fits the pipe (64 kB) that nobody reads before we exit.
    _write_line(report_fd, {"timed_out": bool(timed_out), "isolation": isolation, "status": drain(status_r, 16_000),
                            "exit": drain(exit_r, 4_000)})


if __name__ == "__main__":
    _bootstrap(sys.argv[1], int(sys.argv[2]))
