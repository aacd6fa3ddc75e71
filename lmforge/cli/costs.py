"""Cost records of training and evaluation runs (FLOPs from lmforge.train.scaling's counts, wall time,
energy and money from `lmforge.core.cost.Rates`), written where `lmforge report` finds them."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from lmforge.core.config import ModelConfig
from lmforge.core.cost import COST_FILE, Rates, TokenCounter, cost_record
from lmforge.core.files import write_text_atomically
from lmforge.model.lstm import LSTMConfig
from lmforge.train.scaling import flops_per_token

__all__ = ["eval_cost", "forward_flops", "write_training_cost"]


def forward_flops(config: ModelConfig, tokens: int, token_keys: int) -> float:
    """Forward FLOPs of `tokens` positions attending to `token_keys` keys in all (summed over calls
    of positions x keys): scaling.flops_per_token counts forward + backward (3 forwards) and is
    linear in the attended length, so its forward part at S keys is (f(0) + S (f(1) - f(0))) / 3."""
    base, per_key = flops_per_token(config, 0), flops_per_token(config, 1) - flops_per_token(config, 0)
    return (tokens * base + token_keys * per_key) / 3


def eval_cost(counter: TokenCounter, config: ModelConfig, seconds: float, rates: Rates | None = None) -> dict[str, Any]:
    return cost_record(forward_flops(config, counter.tokens, counter.token_keys), seconds, rates or Rates.from_env(),
                       tokens=counter.tokens, kind="evaluation (forward passes)")


def write_training_cost(out_dir: str | os.PathLike, model: ModelConfig | LSTMConfig, seq_len: int, tokens: int,
                        seconds: float, rates: Rates | None = None) -> Path:
    """OUT_DIR/cost.json of a training run: FLOPs = training FLOPs per token (forward and backward,
    attention over seq_len; an LSTM's are the same at any length) x tokens trained."""
    per_token = model.training_flops_per_token() if isinstance(model, LSTMConfig) else flops_per_token(model, seq_len)
    record = cost_record(per_token * tokens, seconds, rates or Rates.from_env(), tokens=tokens,
                         kind="training (forward + backward)", flops_per_token=per_token,
                         parameters=model.num_parameters())
    return write_text_atomically(Path(out_dir) / COST_FILE, json.dumps(record, indent=1) + "\n")
