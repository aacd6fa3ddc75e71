"""The shared loop of the non-decoder families: budgets, evaluation, metrics."""

from __future__ import annotations

import json
from itertools import count

import pytest
import torch
from torch import nn

from lmforge.train.config import OptimConfig, ScheduleConfig
from lmforge.train.objective import ObjectiveConfig, mean_loss, train_objective


def regression():
    model = nn.Linear(3, 1, bias=False)
    target = torch.tensor([[1.0, -2.0, 0.5]])
    x = torch.randn(256, 3, generator=torch.Generator().manual_seed(0))
    y = x @ target.T
    batches = (x[i % 8 * 32:(i % 8 + 1) * 32] for i in count())
    loss = lambda model, batch: (((model(batch) - batch @ target.T) ** 2).sum(), batch.shape[0])  # noqa: E731
    return model, batches, loss, (x, y)


def test_steps_evaluations_and_metrics(tmp_path):
    model, batches, loss, (x, y) = regression()
    evaluations = []

    def evaluate():
        evaluations.append(model.training)
        with torch.no_grad():
            return {"val_loss": float(((model(x) - y) ** 2).mean())}

    initial = evaluate()["val_loss"]
    evaluations.clear()
    config = ObjectiveConfig(out_dir=str(tmp_path), max_steps=30, log_every=10, eval_every=20,
                             optim=OptimConfig(lr=0.1, weight_decay=0.0),
                             schedule=ScheduleConfig(name="constant", warmup_steps=0))
    result = train_objective(model, config, lambda: next(batches), loss, evaluate=evaluate)
    assert result.steps == 30 and result.tokens == 30 * 32
    assert evaluations == [False, False]  # at step 20 and at the end, in eval mode
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "train_loss" in r] == [1, 10, 20, 30]
    assert [r["step"] for r in result.evals] == [20, 30]
    assert result.evals[-1]["val_loss"] < 0.1 * initial
    assert (tmp_path / "loss.png").is_file()


def test_mean_loss_weights_by_count():
    batches = [(torch.tensor(2.0), 1), (torch.tensor(12.0), 3)]
    assert mean_loss(None, lambda model, batch: batch, batches) == pytest.approx(14 / 4)


def test_a_run_needs_a_budget(tmp_path):
    with pytest.raises(ValueError, match="max_steps"):
        ObjectiveConfig()
    with pytest.raises(ValueError, match=">= 0"):
        ObjectiveConfig(time_budget_s=-1.0)
    model, batches, loss, _ = regression()
    with pytest.raises(ValueError, match="trains nothing"):
        train_objective(model, ObjectiveConfig(out_dir=str(tmp_path), max_steps=0), lambda: next(batches), loss)
