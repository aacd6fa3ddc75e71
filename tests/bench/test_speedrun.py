"""The speedrun's figures from a synthetic evaluation log, and the nanoGPT peer's recipe by hand."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[2]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


speedrun = _load("speedrun")
recipe = _load("nanogpt_recipe")

# A synthetic lmforge curve: evaluations every 20 s of training, the run going on to 100 s.
CURVE = [{"time_s": t, "tokens": 1000 * t, "val_loss": loss}
         for t, loss in ((20.0, 2.4), (40.0, 2.0), (60.0, 1.9), (80.0, 1.8), (100.0, 1.7))]


def test_time_to_loss_is_the_first_evaluation_at_or_below():
    assert speedrun.time_to_loss(CURVE, 1.95) == 60.0  # not interpolated: rounded up to the evaluation
    assert speedrun.time_to_loss(CURVE, 1.9) == 60.0
    assert speedrun.time_to_loss(CURVE, 2.5) == 20.0
    assert math.isnan(speedrun.time_to_loss(CURVE, 1.5))


def test_loss_at_time_is_the_value_at_that_time_not_the_last_one():
    assert speedrun.loss_at_time(CURVE, 86.0) == pytest.approx(1.8 + 0.3 * (1.7 - 1.8))  # between 80 s and 100 s
    assert speedrun.loss_at_time(CURVE, 60.0) == pytest.approx(1.9)  # an evaluation exactly then
    assert speedrun.loss_at_time(CURVE, 100.0) == pytest.approx(1.7)
    assert math.isnan(speedrun.loss_at_time(CURVE, 120.0))  # a run shorter than the time has no value for it
    assert math.isnan(speedrun.loss_at_time(CURVE, 10.0))  # nor one whose first evaluation comes later
    assert math.isnan(speedrun.loss_at_time(CURVE[:1], 86.0))
    assert speedrun.loss_at_time(CURVE[:1], 20.0) == 2.4


def test_summary_line_compares_with_the_peer_of_the_same_run():
    line = speedrun.summary_line(86.0, 1.95, CURVE, 12345.4)
    assert line == ("speedrun: nanogpt_s=86.0 nanogpt_val=1.9500 time_to_nanogpt_val_s=60.0 "
                    "val_at_nanogpt_s=1.7700 tokens_per_s=12345")
    short = speedrun.summary_line(120.0, 1.5, CURVE, 1.0)
    assert "time_to_nanogpt_val_s=nan val_at_nanogpt_s=nan" in short


def test_nanogpt_learning_rate_schedule_by_hand():
    r = recipe.Recipe()
    assert recipe.learning_rate(0, r) == pytest.approx(1e-3 / 101)
    assert recipe.learning_rate(99, r) == pytest.approx(1e-3 * 100 / 101)
    assert recipe.learning_rate(100, r) == pytest.approx(1e-3)  # cosine starts at the top
    assert recipe.learning_rate(1050, r) == pytest.approx(1e-4 + 0.5 * (1e-3 - 1e-4))  # halfway down
    assert recipe.learning_rate(2000, r) == pytest.approx(1e-4)
    assert recipe.learning_rate(2500, r) == 1e-4


def test_baby_gpt_has_nanogpts_shape():
    torch.manual_seed(0)
    model = recipe.BabyGPT(65, recipe.Recipe())
    # nanoGPT counts parameters without the position table: 4 x (4 + 8) x 128^2 + LayerNorms + the tied embedding.
    non_position = sum(p.numel() for p in model.parameters()) - model.wpe.weight.numel()
    assert non_position == 4 * (12 * 128 * 128 + 2 * 128) + 128 + 65 * 128 == 795_904
    assert model.lm_head.weight is model.wte.weight
    assert model.blocks[0].mlp_proj.weight.std().item() == pytest.approx(0.02 / math.sqrt(8), rel=0.05)
    assert model(torch.zeros(2, 64, dtype=torch.long)).shape == (2, 64, 65)


def test_split_and_full_validation_loss_by_hand():
    train, val, vocab = recipe.split_text("abcab" * 20)
    assert vocab == 3 and len(train) == 90 and len(val) == 10 and train[:5].tolist() == [0, 1, 2, 0, 1]
    torch.manual_seed(0)
    model = recipe.BabyGPT(vocab, recipe.Recipe(block_size=4, n_layer=1, n_head=2, n_embd=8))
    # Windows of 4 targets from 0 and 4, then a 1-target tail from 8: every val character but the first predicted.
    expected, count = 0.0, 0
    for start, end in ((0, 5), (4, 9), (8, 10)):
        row = val[start:end][None]
        expected += F.cross_entropy(model(row[:, :-1])[0], row[0, 1:], reduction="sum").item()
        count += end - start - 1
    assert count == len(val) - 1
    assert recipe.full_val_loss(model, val, block_size=4, batch_rows=1) == pytest.approx(expected / count, rel=1e-6)
    assert model.training  # left in training mode


def test_peer_training_runs_and_learns():
    text = "to be or not to be, that is the question. " * 40
    tiny = recipe.Recipe(block_size=16, batch_size=4, n_layer=1, n_head=2, n_embd=16, max_iters=30, warmup_iters=3,
                         lr_decay_iters=30, eval_interval=15, learning_rate=2e-2)
    result = recipe.train(text, tiny)
    assert [r["step"] for r in result["curve"]] == [15, 30]
    assert result["tokens"] == 30 * 4 * 16 and result["train_seconds"] > 0
    assert result["val_loss"] == result["curve"][-1]["val_loss"] < math.log(len(set(text))) - 0.5
