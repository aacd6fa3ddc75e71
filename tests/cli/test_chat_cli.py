"""The CLI as a user runs it: one-shot chat, generate, models, and clear errors."""

from __future__ import annotations

import subprocess
import sys

import pytest

from lmforge.cli.main import main


def run_cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lmforge.cli", *args], input=stdin, capture_output=True,
                          text=True, timeout=300)


def test_one_shot_chat_names_paris():
    result = run_cli("chat", "--prompt", "What is the capital of France?", "--max-new-tokens", "24")
    assert result.returncode == 0, result.stderr
    assert "Paris" in result.stdout


def test_interactive_chat_reset_and_exit():
    # A /reset after /exit would print its marker a second time: the count shows /exit stopped the loop.
    script = "What is 2 + 2?\n/reset\nSay the word hello.\n/exit\n/reset\nnever sent\n"
    result = run_cli("chat", "--max-new-tokens", "16", "--system", "Be brief.", stdin=script)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("(conversation cleared)") == 1
    assert result.stdout.index("(conversation cleared)") > 0  # the first question was answered before it


def test_models_lists_the_embedded_model(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "smollm2-135m-instruct" in out and "SmolLM2-135M-Instruct.Q4_1.gguf" in out


@pytest.mark.parametrize("argv, message", [
    (["generate", "--model", "no-such-model", "--prompt", "x"], "neither a known name"),
    (["generate", "--prompt", "x", "--temperature", "-2"], "temperature"),
    (["generate", "--prompt", "x", "--dtype", "float7"], "unknown dtype"),
])
def test_user_errors_are_one_clear_line(capsys, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_corrupt_gguf_model_is_a_clear_error(tmp_path, capsys):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\xff" * 16)
    assert main(["generate", "--model", str(bad), "--prompt", "x"]) == 2
    assert "bad GGUF file" in capsys.readouterr().err


def test_chat_with_tools_calls_the_calculator_each_turn():
    import json
    import re

    from lmforge.infer.tools import calculate

    script = "What is 4821 * 317?\nAnd what is 12 * 12?\n"
    result = run_cli("chat", "--tools", "calculator,python", "--tool-choice", "required", "--max-new-tokens", "60",
                     "--threads", "1", stdin=script)
    assert result.returncode == 0, result.stderr
    calls = re.findall(r"^\[calculator\] (.*)\n\[result\] (.*)$", result.stderr, re.MULTILINE)
    assert len(calls) == 2, result.stderr  # one call per turn, each shown with its result
    for arguments, shown in calls:
        assert shown == str(calculate(json.loads(arguments)["expression"]))
    answers = result.stdout.splitlines()
    assert "1528257" in answers[0] and "144" in answers[1]  # the answers repeat the tool's results


@pytest.mark.parametrize("argv, message", [
    (["chat", "--tools", "calc", "--prompt", "x"], "unknown tool 'calc'; the built-in tools are calculator, python"),
    (["chat", "--tools", "python", "--tool-choice", "calculator", "--prompt", "x"], "--tool-choice: tool_choice names"),
    (["chat", "--tool-choice", "required", "--prompt", "x"], "--tool-choice needs --tools"),
])
def test_chat_tool_flag_errors(capsys, argv, message):
    assert main(argv) == 2
    assert message in capsys.readouterr().err
