"""The sandbox: what runs, what is stopped, what is refused, by which layer; the caller always goes on."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from lmforge.core.sandbox import SandboxConfig, isolation_report, run_many, run_python

QUICK = SandboxConfig(timeout_s=20)
KERNEL_ONLY = SandboxConfig(timeout_s=20, audit_hook=False)  # the guarantees alone, without the Python-level guard
HOOK_ONLY = SandboxConfig(timeout_s=20, kernel_isolation=False)


def test_runs_code_and_captures_output():
    result = run_python("import sys\nprint('hello', sum(range(10)))\nprint('warn', file=sys.stderr)", QUICK)
    assert result.status == "completed" and result.ok
    assert result.stdout == "hello 45\n"
    assert result.stderr == "warn\n"
    assert result.returncode == 0 and result.exception is None


def test_exception_is_an_error_with_its_traceback():
    result = run_python("def f():\n    return 1 / 0\nf()\n", QUICK)
    assert result.status == "error" and not result.ok
    assert result.exception == "ZeroDivisionError"
    assert "program.py\", line 2, in f" in result.stderr and "sandbox_child" not in result.stderr


def test_syntax_error_and_sys_exit_are_not_completions():
    assert run_python("def broken(:\n", QUICK).exception == "SyntaxError"
    exited = run_python("import sys\nprint('before')\nsys.exit(0)\nprint('after')", QUICK)
    assert exited.status == "exit" and exited.returncode == 0 and exited.stdout == "before\n"


def test_infinite_loop_is_stopped_at_the_wall_clock_and_the_next_run_goes_on():
    started = time.perf_counter()
    result = run_python("while True:\n    pass\n", SandboxConfig(timeout_s=1.5, cpu_s=30))
    assert result.status == "timeout"  # the wall-clock deadline stopped it, not the 30 s CPU limit
    assert time.perf_counter() - started < 60  # only a hang guard, generous for a loaded machine
    assert run_python("print('still here')", QUICK).stdout == "still here\n"


def test_sleeping_code_is_stopped_too():
    result = run_python("import time\ntime.sleep(600)\n", SandboxConfig(timeout_s=1.0))
    assert result.status == "timeout"


def test_cpu_limit():
    result = run_python("while True:\n    pass\n", SandboxConfig(timeout_s=60, cpu_s=1))
    assert result.status == "cpu_limit"
    assert result.cpu_s is not None and 0.9 <= result.cpu_s <= 2.5


@pytest.mark.parametrize("code", ["blocks = []\nwhile True:\n    blocks.append(bytearray(10**7))\n",
                                  "x = ' ' * (10**11)\n"])
def test_unbounded_allocation_is_a_memory_failure(code):
    result = run_python(code, SandboxConfig(timeout_s=30, memory_mb=256))
    assert result.status == "memory", result.stderr


@pytest.mark.parametrize("config", [QUICK, KERNEL_ONLY, HOOK_ONLY], ids=["all", "kernel", "hook"])
@pytest.mark.parametrize("code", [
    "import os\npid = os.fork()\nprint('forked', pid)\n",
    "import subprocess\nprint(subprocess.run(['/bin/echo', 'escaped']).returncode)\n",
    "import os\nif os.system('echo escaped') != 0:\n    raise PermissionError('os.system failed')\n",
], ids=["fork", "subprocess", "system"])
def test_process_creation_is_refused(code, config):
    result = run_python(code, config)
    assert result.status == "denied", (result.status, result.stderr)
    assert "escaped" not in result.stdout and "forked" not in result.stdout


@pytest.mark.parametrize("config", [QUICK, KERNEL_ONLY, HOOK_ONLY], ids=["all", "kernel", "hook"])
@pytest.mark.parametrize("code", [
    "import socket\ns = socket.socket()\ns.connect(('127.0.0.1', 9))\n",
    "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\ns.sendto(b'x', ('8.8.8.8', 53))\n",
    "import socket\ns = socket.socket(socket.AF_UNIX)\ns.connect('/var/run/docker.sock')\n",
    "import urllib.request\nurllib.request.urlopen('http://example.com', timeout=2)\n",
], ids=["tcp", "udp", "unix", "urllib"])
def test_network_is_refused(code, config):
    result = run_python(code, config)
    assert result.status in ("denied", "error"), result.stderr
    assert result.exception in ("PermissionError", "URLError", "OSError"), result.stderr


@pytest.mark.parametrize("config", [QUICK, KERNEL_ONLY, HOOK_ONLY], ids=["all", "kernel", "hook"])
def test_files_outside_the_folder_cannot_be_written_deleted_renamed_or_read(tmp_path, config):
    precious = tmp_path / "precious.txt"
    precious.write_text("keep me")
    target = tmp_path / "new.txt"
    attempts = {
        "write": f"open({str(target)!r}, 'w').write('x')",
        "append": f"open({str(precious)!r}, 'a').write('x')",
        "os.open": f"import os\nos.open({str(target)!r}, os.O_WRONLY | os.O_CREAT)",
        "delete": f"import os\nos.remove({str(precious)!r})",
        "rename": f"import os\nos.rename({str(precious)!r}, {str(target)!r})",
        "rmtree": f"import shutil\nshutil.rmtree({str(tmp_path)!r})",
        "read": f"print(open({str(precious)!r}).read())",
        "listdir": f"import os\nprint(os.listdir({str(tmp_path)!r}))",
    }
    for name, code in attempts.items():
        result = run_python(code, config)
        assert result.status == "denied", (name, result.status, result.stderr)
        assert "keep me" not in result.stdout and "precious" not in result.stdout, name
    assert precious.read_text() == "keep me"
    assert not target.exists()


@pytest.mark.parametrize("config", [QUICK, KERNEL_ONLY, HOOK_ONLY], ids=["all", "kernel", "hook"])
def test_signals_cannot_reach_processes_outside(config):
    bystander = subprocess.Popen(["sleep", "60"])
    try:
        result = run_python(f"import os, signal\nos.kill({bystander.pid}, signal.SIGKILL)\n", config)
        assert result.status in ("denied", "error") and result.exception in ("PermissionError", "ProcessLookupError")
        result = run_python("import os, signal\nos.kill(-1, signal.SIGKILL)\nprint('sent')\n", config)
        assert result.status != "completed" or result.stdout == "sent\n"  # inside a PID namespace: reaches nobody
        time.sleep(0.2)
        assert bystander.poll() is None  # the bystander lives
        assert run_python("print('ok')", QUICK).ok  # and the evaluator goes on
    finally:
        bystander.kill()
        bystander.wait()


def test_work_folder_home_environment_stdin_and_files():
    os.environ["LMFORGE_TEST_SECRET"] = "s3cret"
    try:
        code = ("import os, sys, tempfile\n"
                "open('out.txt', 'w').write('written')\n"
                "os.mkdir('sub'); os.rename('out.txt', 'sub/out.txt'); os.remove('sub/out.txt')\n"
                "print(os.getcwd() == os.environ['HOME'] == tempfile.gettempdir())\n"
                "print('LMFORGE_TEST_SECRET' in os.environ)\n"
                "print(open('data/input.txt').read())\n"
                "print(sys.stdin.read())\n")
        result = run_python(code, QUICK, stdin="from stdin", files={"data/input.txt": "from a file"})
    finally:
        del os.environ["LMFORGE_TEST_SECRET"]
    assert result.ok, result.stderr
    assert result.stdout.split("\n")[:4] == ["True", "False", "from a file", "from stdin"]


def test_output_is_capped():
    result = run_python("print('x' * 100_000)", SandboxConfig(timeout_s=20, output_chars=1000))
    assert result.ok
    assert result.stdout.startswith("x" * 1000) and "truncated at 1000 characters" in result.stdout
    assert len(result.stdout) < 1100


def test_file_size_limit():
    result = run_python("open('big', 'wb').write(b'x' * (8 * 2**20))", SandboxConfig(timeout_s=20, file_size_mb=1))
    assert not result.ok and result.status in ("killed", "error")


def test_run_many_keeps_order_and_isolates_failures():
    codes = ["print(1)", "while True: pass", "print(3)", "raise ValueError('x')", "print(5)"]
    finished = []
    results = run_many(codes, SandboxConfig(timeout_s=1.5, cpu_s=10), workers=2, on_finish=finished.append)
    assert [r.status for r in results] == ["completed", "timeout", "completed", "error", "completed"]
    assert [r.stdout for r in results if r.ok] == ["1\n", "3\n", "5\n"]
    assert len(finished) == 5


def test_the_temporary_folder_is_removed():
    result = run_python("import os\nos.chmod('.', 0o500)\nprint(os.getcwd())", QUICK)
    assert result.ok
    assert not Path(result.stdout.strip()).exists()


def test_isolation_layers_on_this_machine():
    layers = isolation_report()
    assert layers["probe_status"] == "completed"
    assert layers["audit_hook"] is True and "RLIMIT_AS" in layers["rlimits"] and "RLIMIT_CPU" in layers["rlimits"]
    if layers["platform"].startswith("linux"):  # what the kernel tests above rely on
        assert layers["landlock_abi"] >= 1 and layers["seccomp"] and layers["no_new_privs"]


def test_bad_configs_and_inputs_are_refused():
    with pytest.raises(ValueError, match="timeout_s"):
        SandboxConfig(timeout_s=0)
    with pytest.raises(ValueError, match="read_paths"):
        SandboxConfig(read_paths=("relative/path",))
    with pytest.raises(ValueError, match="relative path inside"):
        run_python("pass", QUICK, files={"../escape.txt": "x"})
    with pytest.raises(ValueError, match="code must be a string"):
        run_python(b"print(1)", QUICK)  # type: ignore[arg-type]


def test_read_paths_make_extra_folders_readable_and_importable(tmp_path):
    (tmp_path / "helper_module.py").write_text("VALUE = 42\n")
    allowed = run_python("import helper_module\nprint(helper_module.VALUE)",
                         SandboxConfig(timeout_s=20, read_paths=(str(tmp_path),)))
    assert allowed.ok and allowed.stdout == "42\n"
    refused = run_python(f"print(open({str(tmp_path / 'helper_module.py')!r}).read())", QUICK)
    assert refused.status == "denied"
