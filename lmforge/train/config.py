"""Typed, frozen configuration of pretraining runs (recipes live as YAML under configs/).

`PretrainConfig.from_dict` validates a nested dict (as read from YAML, after `key=value` overrides)
against the dataclasses below: unknown keys and wrong types are errors that name the key.
The model section is a `ModelConfig`; its vocab_size and max_seq_len are taken from the data's
tokenizer and from `seq_len`, so a recipe never has to repeat them. `architecture: lstm` trains
the recurrent baseline of the `lstm` section instead (its vocab_size also the data's), by the same
loop with truncated BPTT (train/recurrent.py).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal, Self

from lmforge.core.config import ModelConfig
from lmforge.model.lstm import LSTMConfig


@dataclass(frozen=True)
class OptimConfig:
    """AdamW for everything, or Muon for the hidden matrices plus AdamW for the rest."""

    name: Literal["adamw", "muon"] = "adamw"
    lr: float = 1e-3  # AdamW: all parameters (adamw) or norms/biases (muon)
    embed_lr: float | None = None  # AdamW lr of the token embedding (None -> lr)
    head_lr: float | None = None  # AdamW lr of an untied output head (None -> lr)
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    weight_decay: float = 0.1  # decoupled; matrices only (never norms, biases or embeddings)
    muon_lr: float = 0.02
    muon_momentum: float = 0.95
    muon_weight_decay: float = 0.0  # torch's Muon shrinks weights by lr * this per step
    muon_ns_steps: int = 5

    def __post_init__(self) -> None:
        for name in ("lr", "embed_lr", "head_lr", "eps", "muon_lr", "muon_ns_steps"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"optim.{name} must be positive, got {value}")
        for name in ("weight_decay", "muon_weight_decay"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"optim.{name} must be >= 0, got {getattr(self, name)}")
        if not all(0 <= beta < 1 for beta in (*self.betas, self.muon_momentum)):
            raise ValueError(f"optim.betas and optim.muon_momentum must be in [0, 1), got {list(self.betas)} "
                             f"and {self.muon_momentum}")


@dataclass(frozen=True)
class ScheduleConfig:
    """Learning-rate multiplier: linear warmup over steps, then decay over the run's progress.

    progress is the largest of step/max_steps, tokens/max_tokens and train_time/time_budget_s, so
    with a time budget the schedule decays to exactly the end of the budget.
    """

    name: Literal["cosine", "wsd", "linear", "constant"] = "cosine"
    warmup_steps: int = 100
    min_lr_frac: float = 0.1  # final multiplier
    decay_frac: float = 0.2  # wsd: the last fraction of the run decays linearly to min_lr_frac

    def __post_init__(self) -> None:
        if self.warmup_steps < 0:
            raise ValueError(f"schedule.warmup_steps must be >= 0, got {self.warmup_steps}")
        for name in ("min_lr_frac", "decay_frac"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"schedule.{name} must be in [0, 1], got {getattr(self, name)}")


class RecipeConfig:
    """What every run config offers: to and from plain dicts (YAML recipes, run_config.json)."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        return build_dataclass(cls, data, "")

    def replace(self, **changes: Any) -> Self:
        return dataclasses.replace(self, **changes)

    def _check_run(self, lengths: tuple[str, ...], positive: tuple[str, ...]) -> None:
        """At least one of the run-length fields is set, and every field in `positive` is > 0."""
        if all(getattr(self, name) is None for name in lengths):
            raise ValueError(f"set at least one of {', '.join(lengths[:-1])} or {lengths[-1]}")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")


@dataclass(frozen=True)
class PretrainConfig(RecipeConfig):
    data: str  # a folder written by `lmforge prepare`
    out_dir: str = "runs/pretrain"
    architecture: Literal["decoder", "lstm"] = "decoder"  # which section below is trained
    model: ModelConfig = field(default_factory=ModelConfig)  # the decoder's shape
    lstm: LSTMConfig = field(default_factory=LSTMConfig)  # the LSTM's shape (architecture: lstm)
    # LSTM streams jump to random places (state reset) every this many windows; null: contiguous
    # streams read to the end (train/recurrent.py says why that drifts)
    lstm_segment_windows: int | None = 4
    seq_len: int = 256
    batch_size: int = 16  # sequences per micro-batch per process
    grad_accum: int = 1  # micro-batches per optimizer step (token-weighted)
    max_steps: int | None = None
    max_tokens: int | None = None  # token budget (all processes together)
    time_budget_s: float | None = None  # training wall clock, evaluation excluded
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    grad_clip: float = 1.0  # max global gradient norm; 0 disables
    dtype: Literal["float32", "bfloat16"] = "float32"  # bfloat16 = autocast, weights stay float32
    compile: bool = False
    seed: int = 0
    deterministic: bool = False  # deterministic algorithms; resumed runs then match bit for bit
    device: str = "auto"
    threads: int | None = None  # CPU threads per process (None: PyTorch's default)
    distributed: Literal["ddp", "fsdp"] = "ddp"  # under torchrun
    log_every: int = 10
    eval_every: int = 250  # steps; 0 = only at the end
    eval_every_s: float | None = None  # or: every this many seconds of training time
    eval_tokens: int | None = None  # None = the whole val split
    eval_batch_size: int = 32
    sample_every: int = 0  # steps; 0 = only at the end
    sample_prompts: tuple[str, ...] = ("",)
    sample_tokens: int = 160
    save_every: int = 500  # steps; 0 = only at the end (and on SIGTERM/SIGINT)
    keep_checkpoints: int = 2
    plot: bool = True

    def __post_init__(self) -> None:
        self._check_run(("max_steps", "max_tokens", "time_budget_s"),
                        ("seq_len", "batch_size", "grad_accum", "log_every", "eval_batch_size", "keep_checkpoints"))
        if self.grad_clip < 0:
            raise ValueError("grad_clip must be >= 0")
        if self.lstm_segment_windows is not None and self.lstm_segment_windows <= 0:
            raise ValueError(f"lstm_segment_windows must be positive or null, got {self.lstm_segment_windows}")
        if self.architecture == "lstm" and self.distributed == "fsdp":
            raise ValueError("distributed: fsdp shards transformer blocks; an LSTM (architecture: lstm) trains alone "
                             "or under ddp")


# --------------------------------------------------------------------------------------------
# dict -> dataclass with type checks
# --------------------------------------------------------------------------------------------
def build_dataclass(cls: type, data: Any, where: str = "") -> Any:
    """A (nested) dataclass from a dict, converting and checking each value against its type hint;
    unknown keys and wrong types are a ValueError naming the dotted key (prefixed by `where`)."""
    if isinstance(data, cls):
        return data
    if not isinstance(data, dict):
        raise ValueError(f"{where or 'config'}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"unknown config key(s): {', '.join(where + k for k in unknown)} "
                         f"(known: {', '.join(sorted(known))})")
    values = {name: _convert(hints[name], value, where + name) for name, value in data.items()}
    try:
        return cls(**values)
    except TypeError as error:
        raise ValueError(f"{where or 'config'}: {error}") from None


def _convert(kind: Any, value: Any, where: str) -> Any:
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if dataclasses.is_dataclass(kind):
        return build_dataclass(kind, value, where + ".")
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return _convert(option, value, where)
            except ValueError as error:
                errors.append(str(error))
        raise ValueError(errors[0])
    if origin is Literal:
        if value not in args:
            raise ValueError(f"{where}: must be one of {', '.join(map(repr, args))}, got {value!r}")
        return value
    if origin is tuple:
        if isinstance(value, str) and args[-1] is Ellipsis:
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{where}: expected a list, got {value!r}")
        inner = args[:1] * len(value) if args[-1] is Ellipsis else args
        if len(inner) != len(value):
            raise ValueError(f"{where}: expected {len(inner)} values, got {len(value)}")
        return tuple(_convert(k, v, f"{where}[{i}]") for i, (k, v) in enumerate(zip(inner, value)))
    if kind is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{where}: expected true or false, got {value!r}")
        return value
    if kind is int:
        if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, float) and value.is_integer())):
            raise ValueError(f"{where}: expected an integer, got {value!r}")
        return int(value)
    if kind is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if kind is str:
        if not isinstance(value, str):
            raise ValueError(f"{where}: expected a string, got {value!r}")
        return value
    return value
