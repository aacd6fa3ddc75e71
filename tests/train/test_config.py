"""Recipe dataclasses refuse absurd optimizer and schedule numbers when they are built, naming the key."""

from __future__ import annotations

import pytest

from lmforge.train.config import OptimConfig, PretrainConfig, ScheduleConfig


@pytest.mark.parametrize("section, values, message", [
    ("optim", {"lr": -1.0}, "optim.lr must be positive, got -1.0"),
    ("optim", {"lr": 0.0}, "optim.lr must be positive, got 0.0"),
    ("optim", {"embed_lr": -0.1}, "optim.embed_lr must be positive, got -0.1"),
    ("optim", {"muon_lr": 0}, "optim.muon_lr must be positive, got 0"),
    ("optim", {"eps": 0.0}, "optim.eps must be positive"),
    ("optim", {"muon_ns_steps": 0}, "optim.muon_ns_steps must be positive, got 0"),
    ("optim", {"weight_decay": -0.01}, "optim.weight_decay must be >= 0, got -0.01"),
    ("optim", {"betas": [0.9, 1.0]}, "optim.betas and optim.muon_momentum must be in [0, 1)"),
    ("optim", {"muon_momentum": -0.5}, "optim.betas and optim.muon_momentum must be in [0, 1)"),
    ("schedule", {"warmup_steps": -1}, "schedule.warmup_steps must be >= 0, got -1"),
    ("schedule", {"min_lr_frac": 1.5}, "schedule.min_lr_frac must be in [0, 1], got 1.5"),
    ("schedule", {"decay_frac": -0.2}, "schedule.decay_frac must be in [0, 1], got -0.2"),
])
def test_absurd_optimizer_and_schedule_values_are_refused(section, values, message):
    with pytest.raises(ValueError) as error:
        PretrainConfig.from_dict({"data": "DATA", "max_steps": 1, section: values})
    assert message in str(error.value)


def test_the_defaults_and_ordinary_values_pass():
    assert OptimConfig().lr == 1e-3 and ScheduleConfig().warmup_steps == 100
    OptimConfig(name="muon", lr=3e-3, embed_lr=0.05, head_lr=0.004, betas=(0.8, 0.95), weight_decay=0.0)
    ScheduleConfig(name="wsd", warmup_steps=0, min_lr_frac=0.0, decay_frac=1.0)
