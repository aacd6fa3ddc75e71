"""Rewards for RL: plain functions of the prompts and completions, combined with weights.

A reward function has TRL's signature

    def my_reward(prompts, completions, **columns) -> list[float]   # one number per completion

`prompts` are the records' prompts (text, or chat messages), `completions` the generated texts
(for chat prompts, TRL's `[{"role": "assistant", "content": text}]`; `completion_text` reads
either), and `columns` the record's other fields (e.g. `answer`), one value per completion. A
function receives only the columns it names, or all of them if it takes `**kwargs`.

    Reward(name, fn, weight)        one named function and its weight in the total
    score_completions(rewards, ...) every function's values (checked) and their weighted sum
    answer_reward(match)            1 when match(completion, record's answer) holds, else 0
    format_reward(pattern)          1 when the completion matches a regular expression, else 0
    reward_model_reward(folder)     a sequence-classification model's score (ours, or any Hugging Face one)
    load_callable("pkg.mod:fn")     a user's function named as module:function

A function that raises, returns something other than one finite number per completion, stops the
step with a `RewardError` naming the function (and the completion); nothing is trained on, and no
checkpoint is written for, that step.
"""

from __future__ import annotations

import importlib
import inspect
import math
import numbers
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

__all__ = ["Reward", "RewardError", "RewardScores", "answer_reward", "completion_text", "format_reward",
           "load_callable", "reward_model_reward", "score_completions"]

RewardFn = Callable[..., Sequence[float]]


class RewardError(RuntimeError):
    """A reward function failed or returned unusable values; the message names it."""


@dataclass(frozen=True)
class Reward:
    name: str
    fn: RewardFn
    weight: float = 1.0

    def __post_init__(self) -> None:
        if not self.name or not isinstance(self.name, str):
            raise ValueError("a reward needs a name")
        if not callable(self.fn):
            raise ValueError(f"reward {self.name!r}: {self.fn!r} is not callable")
        if not math.isfinite(self.weight):
            raise ValueError(f"reward {self.name!r}: weight must be a finite number, got {self.weight}")


@dataclass
class RewardScores:
    total: torch.Tensor  # [N] weighted sum over the functions
    by_name: dict[str, torch.Tensor]  # name -> [N], unweighted

    def metrics(self) -> dict[str, float]:
        """TRL's names: reward, reward_std, rewards/<name>/mean, rewards/<name>/std."""
        out = {"reward": float(self.total.mean()), "reward_std": float(self.total.std()) if len(self.total) > 1 else 0.0}
        for name, values in self.by_name.items():
            out[f"rewards/{name}/mean"] = float(values.mean())
            out[f"rewards/{name}/std"] = float(values.std()) if len(values) > 1 else 0.0
        return out


def completion_text(completion: Any) -> str:
    """The text of a completion given as a string or as TRL's list of one assistant message."""
    if isinstance(completion, str):
        return completion
    return "".join(str(message.get("content", "")) for message in completion)


def _accepted_columns(fn: RewardFn, columns: Mapping[str, Any]) -> dict[str, Any]:
    try:
        parameters = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # builtins without a signature: give everything
        return dict(columns)
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return dict(columns)
    names = {p.name for p in parameters if p.kind in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)}
    return {k: v for k, v in columns.items() if k in names}


def _checked(reward: Reward, values: Any, n: int) -> torch.Tensor:
    if isinstance(values, torch.Tensor) or type(values).__name__ == "ndarray":  # a 1-D array of numbers is fine
        values = values.tolist() if getattr(values, "ndim", 1) == 1 else values
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise RewardError(f"reward function {reward.name!r} returned {type(values).__name__}, not a list of "
                          f"{n} numbers")
    if len(values) != n:
        raise RewardError(f"reward function {reward.name!r} returned {len(values)} values for {n} completions")
    out = []
    for index, value in enumerate(values):
        number = float(value) if isinstance(value, numbers.Real) else math.nan  # bools and numpy scalars count
        if not math.isfinite(number):
            raise RewardError(f"reward function {reward.name!r} returned {value!r} for completion {index} "
                              "(rewards must be finite numbers)")
        out.append(number)
    return torch.tensor(out, dtype=torch.float32)


def score_completions(rewards: Sequence[Reward], prompts: Sequence[Any], completions: Sequence[Any],
                      columns: Mapping[str, Sequence[Any]] | None = None) -> RewardScores:
    """Run every reward function on the completions; check and combine what they return."""
    if not rewards:
        raise ValueError("no reward functions")
    n = len(completions)
    if len(prompts) != n:
        raise ValueError(f"{len(prompts)} prompts for {n} completions")
    by_name: dict[str, torch.Tensor] = {}
    total = torch.zeros(n, dtype=torch.float32)
    for reward in rewards:
        if reward.name in by_name:
            raise ValueError(f"two rewards are named {reward.name!r}")
        kwargs = _accepted_columns(reward.fn, columns or {})
        try:
            values = reward.fn(list(prompts), list(completions), **kwargs)
        except Exception as error:  # noqa: BLE001 - any failure of user code is reported with its name
            raise RewardError(f"reward function {reward.name!r} raised {type(error).__name__}: {error}") from error
        by_name[reward.name] = _checked(reward, values, n)
        total += reward.weight * by_name[reward.name]
    return RewardScores(total, by_name)


# --------------------------------------------------------------------------------------------
# Built-in rewards
# --------------------------------------------------------------------------------------------
def answer_reward(match: Callable[[str, str], bool], column: str = "answer") -> RewardFn:
    """1.0 where `match(completion text, record[column])` holds, else 0.0: exact match against a
    verifiable answer. `match` is the task's scorer (the CLI passes the eval layer's)."""

    def reward(prompts: Sequence[Any], completions: Sequence[Any], **columns: Any) -> list[float]:
        if column not in columns:
            raise ValueError(f"the prompts have no {column!r} field to check completions against "
                             f"(fields: {', '.join(sorted(columns)) or 'none'})")
        return [float(match(completion_text(c), str(a))) for c, a in zip(completions, columns[column])]

    return reward


def format_reward(pattern: str) -> RewardFn:
    """1.0 where the completion matches `pattern` (re.search, multiline), else 0.0; e.g.
    r"The answer is -?\\d+\\.?$" for "ends with `The answer is N`"."""
    try:
        compiled = re.compile(pattern, re.MULTILINE)
    except re.error as error:
        raise ValueError(f"format reward: {pattern!r} is not a valid regular expression ({error})") from None

    def reward(prompts: Sequence[Any], completions: Sequence[Any], **_: Any) -> list[float]:
        return [float(compiled.search(completion_text(c).strip()) is not None) for c in completions]

    return reward


def reward_model_reward(folder: str | Path, *, batch_size: int = 16, device: str | torch.device = "cpu") -> RewardFn:
    """The score of a reward model: a one-label sequence-classification folder (`lmforge rm`, or any
    Hugging Face `...ForSequenceClassification` with its tokenizer), read by
    `lmforge.infer.reward.score_completions` (tokenized as the reward model was trained, scored at
    the last token that is not the pad token). An empty completion is scored as a single space."""
    from lmforge.infer.reward import score_completions as score_with_model
    from lmforge.io.hf import load_sequence_classifier

    model, tokenizer, pad_id = load_sequence_classifier(folder, device=device)
    if tokenizer is None:
        raise FileNotFoundError(f"reward model {folder} has no tokenizer.json")

    def reward(prompts: Sequence[Any], completions: Sequence[Any], **_: Any) -> list[float]:
        texts = [completion_text(c) if completion_text(c).strip() else " " for c in completions]
        return score_with_model(model, tokenizer, pad_id, list(prompts), texts, batch_size=batch_size)

    return reward


def load_callable(spec: str) -> RewardFn:
    """The function named by "package.module:function" (imported; it is the user's own code)."""
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise ValueError(f"reward {spec!r}: name a Python function as module:function (e.g. my_rewards:brevity)")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ValueError(f"reward {spec!r}: cannot import {module_name!r} ({error})") from None
    fn = module
    for part in attribute.split("."):
        fn = getattr(fn, part, None)
        if fn is None:
            raise ValueError(f"reward {spec!r}: {module_name!r} has no {attribute!r}")
    if not callable(fn):
        raise ValueError(f"reward {spec!r}: {attribute!r} is not callable")
    return fn
