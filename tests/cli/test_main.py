"""`lmforge` turns user errors into one line; `--debug` or LMFORGE_DEBUG=1 adds the traceback."""

from __future__ import annotations

import argparse

import pytest

from lmforge.cli.common import report_error
from lmforge.cli.main import main

BAD_TASK = ["eval", "--task", "sing"]  # fails while reading the task, before any model is loaded


def _error(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    return capsys.readouterr().err


def test_a_user_error_is_one_line_without_a_traceback(capsys, monkeypatch):
    monkeypatch.delenv("LMFORGE_DEBUG", raising=False)
    err = _error(capsys, BAD_TASK)
    assert err.startswith("lmforge: error: unknown task 'sing'; choose one of") and err.count("\n") == 1
    assert "Traceback" not in err


def test_debug_flag_shows_the_traceback_then_the_line(capsys, monkeypatch):
    monkeypatch.delenv("LMFORGE_DEBUG", raising=False)
    err = _error(capsys, ["--debug", *BAD_TASK])
    assert err.startswith("Traceback (most recent call last):")
    assert "in load_task" in err and "ValueError: unknown task 'sing'" in err  # where it was raised
    assert err.splitlines()[-1].startswith("lmforge: error: unknown task 'sing'")


@pytest.mark.parametrize("value, shown", [("1", True), ("yes", True), ("0", False), ("", False)])
def test_the_environment_switch_does_the_same(capsys, monkeypatch, value, shown):
    monkeypatch.setenv("LMFORGE_DEBUG", value)
    err = _error(capsys, BAD_TASK)
    assert ("Traceback (most recent call last):" in err) == shown
    assert err.splitlines()[-1].startswith("lmforge: error: unknown task 'sing'")


def test_errors_a_verb_reports_itself_follow_the_same_switch(capsys, monkeypatch):
    """Verbs that catch their own run errors (a NaN loss, a failed checkpoint) report through
    `report_error`, which honours --debug too."""
    monkeypatch.delenv("LMFORGE_DEBUG", raising=False)
    try:
        raise RuntimeError("training loss became nan at step 3")
    except RuntimeError as error:
        caught = error
    report_error(caught, argparse.Namespace(debug=False))
    assert capsys.readouterr().err == "lmforge: error: training loss became nan at step 3\n"
    report_error(caught, argparse.Namespace(debug=True), suffix="; the last checkpoint is unchanged")
    err = capsys.readouterr().err
    assert "Traceback" in err and "test_errors_a_verb_reports_itself" in err
    assert err.endswith("lmforge: error: training loss became nan at step 3; the last checkpoint is unchanged\n")
