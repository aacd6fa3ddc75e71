"""Crash safety: SIGKILL mid-run then --resume reproduces the uninterrupted losses; SIGTERM saves."""

from __future__ import annotations

import json
import signal
import time

from lmforge.io.checkpoint import is_complete, latest_checkpoint, load_train_state
from run_helpers import start_pretrain, tiny_config, train_losses, write_config

STEPS = 160


def _wait_for(predicate, timeout: float, process) -> None:
    deadline = time.time() + timeout
    while not predicate():
        if process.poll() is not None:
            raise AssertionError(f"run ended early (code {process.returncode}):\n{process.stdout.read()}")
        if time.time() > deadline:
            process.kill()
            raise AssertionError("timed out waiting for the run")
        time.sleep(0.02)


def test_sigkill_then_resume_matches_an_uninterrupted_run(tiny_data, tmp_path):
    def config(name):
        return write_config(tmp_path / f"{name}.yaml", tiny_config(
            tiny_data, tmp_path / name, max_steps=STEPS, save_every=30, deterministic=True,
            **{"optim.name": "muon", "optim.muon_lr": 0.02}))

    reference = start_pretrain(config("reference"), "--quiet")
    crashed = start_pretrain(config("crashed"), "--quiet")
    _wait_for(lambda: latest_checkpoint(tmp_path / "crashed") is not None, 240, crashed)
    crashed.send_signal(signal.SIGKILL)  # no handler can run: only what is on disk survives
    crashed.wait()
    assert crashed.returncode == -signal.SIGKILL
    killed_at = load_train_state(latest_checkpoint(tmp_path / "crashed"))["step"]
    assert 0 < killed_at < STEPS
    resumed = start_pretrain(config("crashed"), "--quiet", "--resume")
    assert resumed.wait(timeout=300) == 0, resumed.stdout.read()
    assert reference.wait(timeout=300) == 0, reference.stdout.read()

    expected, got = train_losses(tmp_path / "reference"), train_losses(tmp_path / "crashed")
    assert sorted(got) == sorted(expected) == list(range(1, STEPS + 1))
    assert [got[s] for s in range(killed_at + 1, STEPS + 1)] == [expected[s] for s in range(killed_at + 1, STEPS + 1)]
    final = json.loads((latest_checkpoint(tmp_path / "crashed") / "meta.json").read_text())
    assert final["step"] == STEPS and final["val_loss"] == json.loads(
        (latest_checkpoint(tmp_path / "reference") / "meta.json").read_text())["val_loss"]


def test_sigterm_saves_a_complete_checkpoint_and_exits_cleanly(tiny_data, tmp_path):
    path = write_config(tmp_path / "c.yaml", tiny_config(tiny_data, tmp_path / "run", max_steps=100_000, save_every=0))
    process = start_pretrain(path)
    metrics = tmp_path / "run" / "metrics.jsonl"
    _wait_for(lambda: metrics.exists() and metrics.read_text().count("train_loss") >= 20, 240, process)
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 0, output
    assert "stopped by SIGTERM" in output
    folder = latest_checkpoint(tmp_path / "run")
    assert folder is not None and is_complete(folder)
    state = load_train_state(folder)
    assert state["step"] >= 20 and state["loader"]["position"] > 0
    assert max(train_losses(tmp_path / "run")) == state["step"]  # saved exactly where it stopped
