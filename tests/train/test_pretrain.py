"""End-to-end pretraining: metrics, plot, samples, checkpoints that load elsewhere, NaN handling."""

from __future__ import annotations

import json

import pytest
import torch

from lmforge.cli.main import main
from lmforge.io.checkpoint import latest_checkpoint, list_checkpoints
from lmforge.io.hf import load_pretrained
from lmforge.train.config import PretrainConfig
from lmforge.train.step import NonFiniteLossError
from lmforge.train.pretrain import pretrain
from run_helpers import tiny_config, train_losses, write_config


def test_short_run_learns_logs_and_checkpoints(tiny_data, tmp_path):
    config = PretrainConfig.from_dict(tiny_config(tiny_data, tmp_path / "run", max_steps=60, eval_every=30, save_every=25,
                                                  **{"optim.name": "muon", "optim.lr": 0.01, "optim.muon_lr": 0.03}))
    result = pretrain(config, show_progress=False)
    out = tmp_path / "run"
    losses = train_losses(out)
    assert sorted(losses) == list(range(1, 61))
    assert losses[60] < losses[1] - 1.0  # it learns
    assert [e["step"] for e in result.evals] == [30, 60] and result.evals[-1]["val_loss"] < 3.2
    assert 0 < result.evals[-1]["val_bpb"] < 5
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert any("sample" in r and r["prompt"] == "ROMEO:" for r in records)
    assert (out / "loss.png").stat().st_size > 10_000
    assert [p.name for p in list_checkpoints(out)] == ["step_00000050", "step_00000060"]  # keep_checkpoints=2
    assert latest_checkpoint(out) == result.checkpoint == out / "step_00000060"
    meta = json.loads((result.checkpoint / "meta.json").read_text())
    assert meta["step"] == 60 and meta["pretrain_config"]["optim"]["name"] == "muon"
    # The checkpoint is a model folder: lmforge loads it and reproduces the trained model's logits.
    model, tokenizer = load_pretrained(result.checkpoint)
    ids = torch.tensor([tokenizer.encode("ROMEO: what", add_bos=True)])
    from lmforge.data.shards import TokenData
    assert tokenizer.vocab_size == TokenData.open(tiny_data).vocab_size
    logits = model(ids)
    assert logits.shape == (1, ids.shape[1], tokenizer.vocab_size) and torch.isfinite(logits).all()


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_generate_cli_and_transformers_load_a_pretrained_checkpoint(tiny_data, tmp_path, capsys, family):
    path = write_config(tmp_path / "c.yaml", tiny_config(tiny_data, tmp_path / "run", max_steps=20))
    assert main(["pretrain", "--quiet", "--config", str(path), f"model.family={family}", "model.ffn_dim=null"]) == 0
    folder = latest_checkpoint(tmp_path / "run")
    assert main(["generate", "--model", str(folder), "--prompt", "ROMEO:", "--max-new-tokens", "10"]) == 0
    assert capsys.readouterr().out.startswith("ROMEO:")
    from transformers import AutoModelForCausalLM

    ours, tokenizer = load_pretrained(folder)
    theirs = AutoModelForCausalLM.from_pretrained(str(folder)).eval()
    ids = torch.tensor([tokenizer.encode("KING: hello", add_bos=True)])
    with torch.no_grad():
        assert torch.allclose(ours(ids), theirs(ids).logits, atol=1e-4)


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_good_checkpoint(tiny_data, tmp_path, capsys):
    config = tiny_config(tiny_data, tmp_path / "run", max_steps=3, save_every=1)
    path = write_config(tmp_path / "c.yaml", config)
    assert main(["pretrain", "--quiet", "--config", str(path)]) == 0
    good = latest_checkpoint(tmp_path / "run")
    good_weights = (good / "model.safetensors").read_bytes()
    # Resume with an absurd learning rate: the weights explode and the loss turns NaN/inf.
    bad = write_config(tmp_path / "bad.yaml", {**config, "max_steps": 50, "grad_clip": 0.0, "save_every": 0,
                                               "optim": {"name": "adamw", "lr": 1e30}, "schedule": {"warmup_steps": 0}})
    with pytest.raises(NonFiniteLossError, match="became (nan|inf)"):
        pretrain(PretrainConfig.from_dict({**config, "max_steps": 50, "grad_clip": 0.0, "save_every": 0,
                                           "optim": {"name": "adamw", "lr": 1e30}, "schedule": {"warmup_steps": 0}}),
                 resume=True, show_progress=False)
    assert main(["pretrain", "--quiet", "--resume", "--config", str(bad)]) == 1
    assert "training loss became" in capsys.readouterr().err
    assert latest_checkpoint(tmp_path / "run") == good and (good / "model.safetensors").read_bytes() == good_weights


def test_readonly_output_fails_clearly(tiny_data, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    path = write_config(tmp_path / "c.yaml", tiny_config(tiny_data, blocker / "run", max_steps=2))
    assert main(["pretrain", "--quiet", "--config", str(path)]) == 1
    assert "cannot write to the output folder" in capsys.readouterr().err
