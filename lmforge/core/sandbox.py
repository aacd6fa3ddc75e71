"""The one sandbox for untrusted Python: generated code under evaluation, the Python tool.

    from lmforge.core.sandbox import SandboxConfig, run_python
    result = run_python("print(sum(range(10)))", SandboxConfig(timeout_s=5))
    result.status, result.stdout        # ('completed', '45\\n')

Every run is a fresh interpreter in three processes, started from `sandbox_child.py`:

    evaluator ── bootstrap (deadline keeper) ── init (reaper) ── worker (runs the code)

* The evaluator starts the bootstrap in a new session with an empty environment (HOME and
  TMPDIR point into a fresh temporary folder, `work/`, which is also the working directory),
  stdin from /dev/null and stdout/stderr into files beside `work/`, and waits for it with a
  safety margin past the deadline; afterwards it kills the whole process group and deletes
  the folder.
* The bootstrap tries to enter new user, network, PID and IPC namespaces (Linux, no root
  needed where unprivileged user namespaces are allowed), forks `init` (PID 1 of the new
  PID namespace) and kills it with SIGKILL at the wall-clock deadline, which takes every
  process in the namespace with it.
* `init` forks the worker and reaps it. The worker, before the code runs: dies with its
  parent (PR_SET_PDEATHSIG), sets resource limits (CPU seconds, address space, file size,
  open files, no core files, RLIMIT_NPROC so it cannot fork or start threads), sets
  no_new_privs, drops every capability, applies a Landlock ruleset (read-only access to the
  Python installation and system libraries, read-write only inside `work/`, no `execve`
  anywhere, and on newer kernels no TCP and no signals out of the sandbox), then installs an
  audit hook that refuses writes outside `work/`, reads outside the allowed folders,
  deletions, renames, process creation, signals, sockets, ctypes and heap walking.

What is a guarantee and what is defence in depth (see also the README): the kernel enforces
the namespaces, the resource limits, no_new_privs, the dropped capabilities and Landlock;
the audit hook is Python-level and can be bypassed by determined code, so it backs the
kernel layers up and catches the common cases on machines that lack them. `SandboxResult.
isolation` says which layers were in force for a run. RLIMIT_NPROC does not bind root.
"""

from __future__ import annotations

import ast
import marshal
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from lmforge.core.sandbox_child import drain

__all__ = ["SandboxConfig", "SandboxResult", "isolation_report", "run_many", "run_python"]

STATUSES = ("completed", "exit", "error", "denied", "memory", "timeout", "cpu_limit", "killed", "sandbox_error")


@dataclass(frozen=True)
class SandboxConfig:
    """Limits and permissions of one run. Frozen; the defaults suit a unit-test-sized program."""

    timeout_s: float = 10.0  # wall clock from the start of the code; the whole process tree is killed then
    cpu_s: float | None = None  # CPU seconds (SIGXCPU, then SIGKILL one second later); default: timeout_s
    memory_mb: int = 1024  # address space of the worker (MemoryError beyond it)
    file_size_mb: int = 16  # largest file the code may write (its stdout and stderr included)
    open_files: int = 64  # file descriptors
    output_chars: int = 20_000  # characters of stdout and of stderr kept in the result
    read_paths: tuple[str, ...] = ()  # extra folders the code may read and import from (e.g. site-packages)
    audit_hook: bool = True  # Python-level guard (defence in depth)
    kernel_isolation: bool = True  # namespaces, capabilities, Landlock
    # (the last two exist to test each layer alone; leave them on)

    def __post_init__(self) -> None:
        problems = []
        for name in ("timeout_s", "memory_mb", "file_size_mb", "open_files", "output_chars"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0 or not math.isfinite(value):
                problems.append(f"{name} must be a positive number, got {value!r}")
        if self.cpu_s is not None and (not isinstance(self.cpu_s, (int, float)) or not 0 < self.cpu_s < 1e6):
            problems.append(f"cpu_s must be a positive number, got {self.cpu_s!r}")
        if self.open_files < 16:
            problems.append(f"open_files must be at least 16 (the interpreter needs some), got {self.open_files}")
        if not isinstance(self.read_paths, tuple) or not all(isinstance(p, str) and os.path.isabs(p) for p in self.read_paths):
            problems.append("read_paths must be a tuple of absolute paths")
        if problems:
            raise ValueError("invalid sandbox config: " + "; ".join(problems))


@dataclass(frozen=True)
class SandboxResult:
    """How a run ended.

    status: completed (the code ran to its end), exit (it called sys.exit or os._exit), error (an
    uncaught exception, named in `exception`), denied (stopped by a refused operation: PermissionError
    from the audit hook or the kernel), memory (MemoryError), timeout (wall clock), cpu_limit,
    killed (another signal, e.g. a segfault), sandbox_error (the sandbox itself failed to start).
    """

    status: str
    stdout: str = ""
    stderr: str = ""
    returncode: int | None = None
    signal: int | None = None
    exception: str | None = None
    denied: tuple[str, ...] = ()  # operations the audit hook refused
    wall_s: float = 0.0
    cpu_s: float | None = None
    isolation: Mapping[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == "completed"

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["denied"] = list(self.denied)
        data["isolation"] = dict(self.isolation)
        return data


# ================================================================================================
# Evaluator side
# ================================================================================================
_CHILD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sandbox_child.py")
_SAFETY_MARGIN_S = 5.0  # the bootstrap keeps the deadline; this only catches a bootstrap that hangs


def _system_read_paths() -> list[str]:
    """Folders the interpreter needs after the restrictions are in place: its standard library and
    extension modules (sys.path of an isolated interpreter) and the system's shared libraries."""
    paths = [p for p in sys.path if p and os.path.isabs(p)] + [_CHILD]
    paths += [os.path.join(sys.base_prefix, "lib"), "/usr", "/lib", "/lib64", "/lib32", "/etc/ld.so.cache",
              "/etc/localtime"]
    return list(dict.fromkeys(paths))


def _write_inputs(work: Path, files: Mapping[str, str | bytes]) -> None:
    for name, content in files.items():
        relative = Path(name)
        if relative.is_absolute() or ".." in relative.parts or not relative.parts:
            raise ValueError(f"sandbox file name {name!r} must be a relative path inside the work folder")
        target = work / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            target.write_bytes(content)
        else:
            target.write_text(content, encoding="utf-8")


def _read_capped(path: Path, limit: int) -> str:
    try:
        with open(path, "rb") as handle:
            data = handle.read(limit * 4 + 4)
            rest = os.fstat(handle.fileno()).st_size - len(data)
    except OSError:
        return ""
    text = data.decode("utf-8", errors="replace")
    if len(text) > limit or rest > 0:
        text = text[:limit] + f"\n[... output truncated at {limit} characters]"
    return text


def _remove_tree(path: Path) -> None:
    def make_writable_and_retry(function, name, _):  # the code may have made its files read-only
        try:
            os.chmod(os.path.dirname(name), 0o700)
            os.chmod(name, 0o700)
            function(name)
        except OSError:
            pass

    shutil.rmtree(path, onerror=make_writable_and_retry)


def run_python(code: str, config: SandboxConfig = SandboxConfig(), *, stdin: str | None = None,
               files: Mapping[str, str | bytes] | None = None) -> SandboxResult:
    """Run `code` as the __main__ module of a fresh sandboxed interpreter; never raises for what
    the code does (a crash, hang or refused operation is a status), only for a bad config."""
    if os.name != "posix":
        raise OSError("the sandbox needs a POSIX system (Linux gives it all its layers)")
    if not isinstance(code, str):
        raise ValueError(f"code must be a string, got {type(code).__name__}")
    base = Path(tempfile.mkdtemp(prefix="lmforge-sandbox-"))
    started = time.perf_counter()
    try:
        work = base / "work"
        work.mkdir(mode=0o700)
        _write_inputs(work, files or {})
        (work / "program.py").write_text(code, encoding="utf-8")
        cpu_s = config.cpu_s if config.cpu_s is not None else config.timeout_s
        settings = {
            "work": str(work), "timeout_s": float(config.timeout_s), "cpu_s": max(1, math.ceil(cpu_s)),
            "memory_bytes": int(config.memory_mb * 2**20), "file_size_bytes": int(config.file_size_mb * 2**20),
            "open_files": int(config.open_files), "python_paths": list(config.read_paths),
            "read_paths": _system_read_paths() + list(config.read_paths),
            "audit_hook": config.audit_hook, "kernel_isolation": config.kernel_isolation,
        }
        (base / "config.marshal").write_bytes(marshal.dumps(settings))
        if stdin is not None:
            (base / "stdin").write_text(stdin, encoding="utf-8")
        env = {"HOME": str(work), "TMPDIR": str(work), "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8",
               # numerical libraries in read_paths must not try to start threads (RLIMIT_NPROC refuses them)
               "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        report_r, report_w = os.pipe()
        try:
            with open(base / "stdout", "wb") as out, open(base / "stderr", "wb") as err, \
                    open(base / "stdin" if stdin is not None else os.devnull, "rb") as inp:
                process = subprocess.Popen(
                    [sys.executable, "-I", "-S", "-B", "-u", _CHILD, str(base), str(report_w)],
                    stdin=inp, stdout=out, stderr=err, env=env, cwd=work, pass_fds=(report_w,),
                    start_new_session=True)
            os.close(report_w)
            report_w = -1
            outer_timeout = False
            try:
                process.wait(timeout=config.timeout_s + _SAFETY_MARGIN_S)
            except subprocess.TimeoutExpired:
                outer_timeout = True
            finally:
                try:  # whatever is left of the tree (the bootstrap, stragglers in its group)
                    os.killpg(process.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
                process.wait()
            report = _read_report(report_r)
        finally:
            os.close(report_r)
            if report_w >= 0:
                os.close(report_w)
        wall_s = time.perf_counter() - started
        stdout = _read_capped(base / "stdout", config.output_chars)
        stderr = _read_capped(base / "stderr", config.output_chars)
        return _result(report, outer_timeout, process.returncode, stdout, stderr, wall_s, settings["cpu_s"])
    finally:
        _remove_tree(base)


def _literal(text: str) -> Any:
    """A Python literal written by the sandbox (None for anything else: it may come from the code)."""
    try:
        return ast.literal_eval(text)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return None


def _read_report(fd: int) -> dict[str, Any]:
    """The bootstrap's report, with the worker's status lines and init's exit line unpacked."""
    report = _literal(drain(fd, limit=1_000_000))
    if not isinstance(report, dict):
        return {}
    lines = [_literal(line) for line in str(report.get("status", "")).splitlines()[:1000] if len(line) < 100_000]
    lines = [line for line in lines if isinstance(line, dict)]
    first = lines[0] if lines else {}
    if isinstance(first.get("isolation"), dict):  # written before the code ran
        report["isolation"] = first["isolation"]
    ends = [line for line in lines if "end" in line]
    report["end"] = ends[-1] if ends else {}
    worker = _literal(str(report.get("exit", "")).split("\n")[0])
    report["worker"] = worker if isinstance(worker, dict) else {}
    return report


def _result(report: dict[str, Any], outer_timeout: bool, bootstrap_code: int | None, stdout: str, stderr: str,
            wall_s: float, cpu_limit: int) -> SandboxResult:
    isolation = report.get("isolation") if isinstance(report.get("isolation"), dict) else {}
    worker = report.get("worker") if isinstance(report.get("worker"), dict) else {}
    end = report.get("end") if isinstance(report.get("end"), dict) else {}
    returncode, signum = worker.get("returncode"), worker.get("signal")
    cpu_s = worker.get("cpu_s")
    denied = tuple(str(d) for d in end.get("denied", []) if isinstance(d, str))[:20]
    exception = end.get("exception") if isinstance(end.get("exception"), str) else None
    if outer_timeout or report.get("timed_out"):
        status = "timeout"
    elif not report:
        status = "sandbox_error"
        stderr = (stderr + f"\n[sandbox: the bootstrap exited with {bootstrap_code} and no report]").strip()
    elif signum == signal.SIGXCPU or (signum == signal.SIGKILL and isinstance(cpu_s, (int, float))
                                      and cpu_s >= cpu_limit - 0.05):
        status = "cpu_limit"
    elif end.get("end") == "completed" and returncode == 0:
        status = "completed"
    elif exception == "MemoryError":
        status = "memory"
    elif exception == "PermissionError" or (denied and end.get("end") == "exception"):
        status = "denied"
    elif end.get("end") == "exception":
        status = "error"
    elif signum is not None:
        status = "killed"
    else:
        status = "exit"  # sys.exit / os._exit before the end of the program
    return SandboxResult(status=status, stdout=stdout, stderr=stderr, returncode=returncode, signal=signum,
                         exception=exception, denied=denied, wall_s=round(wall_s, 4),
                         cpu_s=round(cpu_s, 4) if isinstance(cpu_s, (int, float)) else None, isolation=isolation)


def run_many(codes: Sequence[str], config: SandboxConfig = SandboxConfig(), workers: int | None = None,
             on_finish: Any = None) -> list[SandboxResult]:
    """`run_python` over many programs, `workers` at a time (default: the CPU count); results in order.
    `on_finish(1)` is called as each finishes (a progress bar's advance)."""
    from concurrent.futures import ThreadPoolExecutor

    workers = max(1, workers or os.cpu_count() or 1)

    def one(code: str) -> SandboxResult:
        result = run_python(code, config)
        if on_finish is not None:
            on_finish(1)
        return result

    if workers == 1 or len(codes) <= 1:
        return [one(code) for code in codes]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(one, codes))


@lru_cache(maxsize=1)
def isolation_report() -> dict[str, Any]:
    """Which layers this machine gives a sandboxed run (probed once with an empty program)."""
    result = run_python("pass", SandboxConfig(timeout_s=30))
    return dict(result.isolation, probe_status=result.status)
