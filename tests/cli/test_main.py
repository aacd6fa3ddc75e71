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


# Bad input to each verb: a missing file, a bad YAML key or document, an absurd number. Each is
# caught before any model loads and is one line on stderr with exit status 2, no traceback.
BAD_INPUTS = [
    (["dpo", "--config", "{tmp}/absent.yaml"], "config file {tmp}/absent.yaml not found"),
    (["dpo", "--config", "{tmp}/broken.yaml"],
     "{tmp}/broken.yaml: invalid YAML (line 2, column 1: expected ',' or ']', but got '<stream end>' "
     "(while parsing a flow sequence))"),
    (["dpo", "--beta", "-5", "--data", "{tmp}/absent.jsonl"], "beta must be positive, got -5.0"),
    (["rl", "bogus_key=1"], "unknown config key(s): bogus_key"),
    (["rl", "--reward", "nosuch"], "unknown reward 'nosuch'"),
    (["rm", "frobnicate"], "unknown rm action 'frobnicate'"),
    (["rm", "--batch-size", "-1"], "batch_size must be positive, got -1"),
    (["feedback", "--constitution", "{tmp}/broken.yaml"], "{tmp}/broken.yaml: invalid YAML (line 2, column 1"),
    (["feedback", "--prompts", "{tmp}/absent.jsonl"], "prompt file {tmp}/absent.jsonl does not exist"),
    (["feedback", "--limit", "-3"], "--limit must be at least 1, got -3"),
    (["scale", "sweep", "--config", "{tmp}/unknown-key.yaml"], "unknown config key(s): bogus_key"),
    (["scale", "fit", "{tmp}/absent"], "{tmp}/absent not found"),
    (["audit", "pii", "--lines", "-5", "--clean"], "the labelled set needs at least one line, got -5"),
    (["audit", "pii", "--lines", "10", "--clean", "--json", "{tmp}/unknown-key.yaml/out.json"],
     "File exists: '{tmp}/unknown-key.yaml'"),  # an output under a file: an OSError, reported like the rest
    (["audit", "memorization", "--model", "smollm2-135m-instruct", "--canaries", "{tmp}/absent.jsonl"],
     "canary file {tmp}/absent.jsonl does not exist"),
    (["rag", "index", "{tmp}/absent", "--out", "{tmp}/index"], "{tmp}/absent: no such file or folder"),
    (["rag", "ask", "{tmp}/absent", "why?"], "{tmp}/absent: not a RAG index"),
    (["chat", "--device", "tpu", "--prompt", "hi"], "unknown device 'tpu'; use cpu, cuda, cuda:N or auto"),
    (["chat", "--temperature", "-1", "--prompt", "hi"], "temperature must be in [0, 100], got -1.0"),
    (["chat", "--moderation", "{tmp}/broken.yaml", "--prompt", "hi"], "{tmp}/broken.yaml: not valid YAML (line 2"),
    (["serve", "--port", "99999"], "--port must be in [1, 65535], got 99999"),
    (["serve", "--moderation", "{tmp}/absent.yaml"], "moderation policy {tmp}/absent.yaml does not exist"),
    (["serve", "--rag", "{tmp}/absent"], "{tmp}/absent: not a RAG index"),
    (["eval", "--task", "arc_easy", "--data", "{tmp}/absent"], "{tmp}/absent/arc/ARC-Easy-validation.jsonl does not exist"),
    (["eval", "--task", "add", "--limit", "-1"], "limit must be positive, got -1"),
    (["eval", "--task", "redteam", "--limit", "-2"], "--limit must be at least 1, got -2"),
    (["eval", "--task", "bias", "--limit", "5"], "--limit does not apply to --task bias"),
    (["pretrain", "--config", "{tmp}/unknown-key.yaml"], "unknown config key(s): bogus_key"),
    (["pretrain", "--config", "{tmp}/broken.yaml"], "{tmp}/broken.yaml: invalid YAML (line 2, column 1"),
    (["finetune", "--rank", "0"], "lora.rank must be positive, got 0"),
    (["finetune", "--lr", "-1"], "optim.lr must be positive, got -1.0"),
    (["finetune", "lora=[1, 2]"], "expected a mapping, got list"),
    (["export", "--model", "{tmp}/absent.gguf", "--to", "hf", "--out", "{tmp}/exported"], "{tmp}/absent.gguf"),
    (["generate", "--max-new-tokens", "-3", "--prompt", "hi"], "max_new_tokens must be a positive integer, got -3"),
]


@pytest.mark.parametrize("argv, message", BAD_INPUTS, ids=[" ".join(a[:2]) for a, _ in BAD_INPUTS])
def test_every_verb_reports_bad_input_in_one_line(argv, message, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("LMFORGE_DEBUG", raising=False)
    (tmp_path / "broken.yaml").write_text("model: [unclosed\n")
    (tmp_path / "unknown-key.yaml").write_text("bogus_key: 1\n")
    err = _error(capsys, [part.format(tmp=tmp_path) for part in argv])
    assert err.startswith("lmforge: error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert message.format(tmp=tmp_path) in err
