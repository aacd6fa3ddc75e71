"""torchrun with 2 CPU processes (gloo) reproduces one process with the same global batch."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from run_helpers import start_pretrain, tiny_config, train_losses, write_config

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "lmforge.cli.main"]


def _compare(tiny_data, tmp_path: Path, strategy: str, optimizer: str) -> None:
    common = {"max_steps": 12, "deterministic": True, "optim.name": optimizer, "eval_every": 6}
    single = write_config(tmp_path / "single.yaml",
                          tiny_config(tiny_data, tmp_path / "single", batch_size=4, grad_accum=2, **common))
    multi = write_config(tmp_path / "multi.yaml", tiny_config(tiny_data, tmp_path / "multi", batch_size=4, grad_accum=1,
                                                              distributed=strategy, **common))
    one = start_pretrain(single, "--quiet")
    two = start_pretrain(multi, "--quiet", prefix=TORCHRUN)
    assert one.wait(timeout=300) == 0, one.stdout.read()
    assert two.wait(timeout=300) == 0, two.stdout.read()
    expected, got = train_losses(tmp_path / "single"), train_losses(tmp_path / "multi")
    assert sorted(got) == list(range(1, 13))
    for step in expected:
        assert got[step] == pytest.approx(expected[step], rel=2e-5, abs=2e-5), step
    assert (tmp_path / "multi" / "latest" / "model.safetensors").is_file()


def test_ddp_two_processes_match_one_process(tiny_data, tmp_path):
    _compare(tiny_data, tmp_path, "ddp", "muon")


@pytest.mark.slow
def test_fsdp2_two_processes_match_one_process(tiny_data, tmp_path):
    _compare(tiny_data, tmp_path, "fsdp", "adamw")
