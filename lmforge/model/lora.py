"""LoRA by wrapping linear layers: works on any model built from `nn.Linear`, no per-model code.

`apply_lora(model, targets, rank, alpha, dropout)` swaps each chosen `nn.Linear` for a
`LoRALinear` that *adopts* the original weight and bias Parameters (same objects, frozen) and adds
two small trainable matrices:

    y = x W^T + b + scaling * dropout(x) A^T B^T        A [r, in], B [out, r], scaling = alpha / r

Because the wrapper keeps the base parameters under their own names, the model's state dict keeps
every original key (`model.layers.0.self_attn.q_proj.weight`) and only gains
`...q_proj.lora_A.weight` / `...q_proj.lora_B.weight` — with the `base_model.model.` prefix these
are exactly PEFT's adapter keys (see `lmforge.io.peft`). `merge_lora` folds the update into the
base weights and puts plain `nn.Linear` modules back, leaving a model any exporter understands.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Iterable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "ALL_LINEAR",
    "LoRALinear",
    "adapters_disabled",
    "apply_lora",
    "count_parameters",
    "lora_modules",
    "lora_state_dict",
    "merge_lora",
    "merged_state_dict",
    "resolve_targets",
]

ALL_LINEAR = "all-linear"  # PEFT's spelling: every linear layer except the output head
_OUTPUT_HEADS = ("lm_head",)


class LoRALinear(nn.Module):
    """A linear layer plus a low-rank update; the base weight/bias are the wrapped layer's own Parameters."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0, use_rslora: bool = False) -> None:
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise ValueError(f"LoRA wraps nn.Linear layers, got {type(base).__name__}")
        if not isinstance(rank, int) or isinstance(rank, bool) or rank <= 0:
            raise ValueError(f"LoRA rank must be a positive integer, got {rank!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"LoRA dropout must be in [0, 1), got {dropout!r}")
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight = base.weight  # adopted, not copied: the base model still owns (and ties) it
        self.bias = base.bias
        self.weight.requires_grad_(False)
        if self.bias is not None:
            self.bias.requires_grad_(False)
        self.rank, self.alpha, self.use_rslora = rank, float(alpha), bool(use_rslora)
        self.scaling = self.alpha / (math.sqrt(rank) if use_rslora else rank)
        factory = {"device": base.weight.device, "dtype": base.weight.dtype}
        if base.weight.device.type == "meta":
            factory["device"] = torch.device("cpu")
        self.lora_A = nn.Linear(self.in_features, rank, bias=False, **factory)
        self.lora_B = nn.Linear(rank, self.out_features, bias=False, **factory)
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.dropout_p = float(dropout)
        self.enabled = True  # False: the layer computes the base model alone (see `adapters_disabled`)
        self.reset_lora()

    def reset_lora(self) -> None:
        """PEFT's default init: A Kaiming-uniform, B zero, so the wrapped model starts unchanged."""
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)

    def delta_weight(self) -> torch.Tensor:
        """The update B @ A * scaling, shaped like the base weight [out, in]."""
        return (self.lora_B.weight @ self.lora_A.weight) * self.scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        base = F.linear(x, self.weight, self.bias)
        if not self.enabled:
            return base
        update = self.lora_B(self.lora_A(self.lora_dropout(x.to(self.lora_A.weight.dtype))))
        return base + (update * self.scaling).to(base.dtype)

    def merged(self) -> nn.Linear:
        """A plain nn.Linear holding W + B A * scaling (in place on the adopted Parameter)."""
        with torch.no_grad():
            self.weight.add_(self.delta_weight().to(self.weight.dtype))
        linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None, device="meta")
        linear.weight = self.weight
        if self.bias is not None:
            linear.bias = self.bias
        return linear

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}, "
                f"alpha={self.alpha:g}, dropout={self.dropout_p:g}{', rslora' if self.use_rslora else ''}")


def _leaf(name: str) -> str:
    return name.rsplit(".", 1)[-1]


def resolve_targets(model: nn.Module, targets: str | Iterable[str]) -> list[str]:
    """Full names of the linear layers that `targets` selects.

    `targets` is "all-linear" (every nn.Linear but the output head), a list of module-name
    suffixes as PEFT's `target_modules` list (e.g. ["q_proj", "v_proj"] or
    ["self_attn.q_proj"]), or a single string, which PEFT treats as a regular expression that
    must match the whole module name. Selecting nothing is an error naming what was available.
    """
    linear = [name for name, module in model.named_modules() if isinstance(module, (nn.Linear, LoRALinear))]
    if isinstance(targets, str) and targets == ALL_LINEAR:
        chosen = [n for n in linear if _leaf(n) not in _OUTPUT_HEADS]
    elif isinstance(targets, str):
        try:
            pattern = re.compile(targets)
        except re.error as error:
            raise ValueError(f"LoRA targets: {targets!r} is not a valid regular expression ({error})") from None
        chosen = [n for n in linear if pattern.fullmatch(n)]
    else:
        suffixes = list(targets)
        if not suffixes or not all(isinstance(s, str) and s for s in suffixes):
            raise ValueError(f"LoRA targets must be non-empty module names, got {suffixes!r}")
        chosen = [n for n in linear if any(n == s or n.endswith("." + s) for s in suffixes)]
        unused = [s for s in suffixes if not any(n == s or n.endswith("." + s) for n in linear)]
        if unused:
            raise ValueError(f"LoRA targets {unused} match no linear layer; available: {sorted({_leaf(n) for n in linear})}")
    if not chosen:
        raise ValueError(f"LoRA targets {targets!r} select no linear layer; available: {sorted({_leaf(n) for n in linear})}")
    return chosen


def apply_lora(model: nn.Module, targets: str | Sequence[str], rank: int = 8, alpha: float = 16.0,
               dropout: float = 0.0, use_rslora: bool = False) -> list[str]:
    """Freeze every parameter of `model`, wrap the target linear layers; return their names.

    Only the LoRA matrices are trainable afterwards. Applying twice to the same layer is refused.
    """
    names = resolve_targets(model, targets)
    already = [n for n in names if isinstance(model.get_submodule(n), LoRALinear)]
    if already:
        raise ValueError(f"LoRA is already applied to {already[:3]}")
    owners: dict[int, list[str]] = {}
    for module_name, module in model.named_modules():
        for param in module.parameters(recurse=False):
            owners.setdefault(id(param), []).append(module_name)
    tied = [n for n in names if len(owners.get(id(model.get_submodule(n).weight), [])) > 1]
    if tied:  # merging would also change the other user of the weight (e.g. a tied embedding)
        raise ValueError(f"LoRA cannot target {tied[0]}: its weight is shared with "
                         f"{[o for o in owners[id(model.get_submodule(tied[0]).weight)] if o != tied[0]][0]} (tied weights)")
    for param in model.parameters():
        param.requires_grad_(False)
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, LoRALinear(getattr(parent, child), rank, alpha, dropout, use_rslora))
    return names


def lora_modules(model: nn.Module) -> dict[str, LoRALinear]:
    """name -> LoRALinear for every wrapped layer, in module order."""
    return {name: module for name, module in model.named_modules() if isinstance(module, LoRALinear)}


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Only the adapter matrices, under the model's own names (`...q_proj.lora_A.weight`)."""
    out = {}
    for name, module in lora_modules(model).items():
        out[f"{name}.lora_A.weight"] = module.lora_A.weight
        out[f"{name}.lora_B.weight"] = module.lora_B.weight
    return out


@contextlib.contextmanager
def adapters_disabled(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block the model computes its base weights alone: a frozen reference model for
    DPO/RL at no extra memory (PEFT's `disable_adapter`)."""
    modules = list(lora_modules(model).values())
    if not modules:
        raise ValueError("adapters_disabled: the model has no LoRA layers")
    previous = [m.enabled for m in modules]
    for module in modules:
        module.enabled = False
    try:
        yield model
    finally:
        for module, state in zip(modules, previous):
            module.enabled = state


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its base weight and restore plain nn.Linear layers (in place)."""
    modules = lora_modules(model)
    if not modules:
        raise ValueError("merge_lora: the model has no LoRA layers")
    for name, module in modules.items():
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, module.merged())
    return model


def merged_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict the merged model would have (W + B A * scaling, no LoRA keys); `model` is untouched."""
    modules = lora_modules(model)
    out = {}
    for key, value in model.state_dict().items():
        owner, _, leaf = key.rpartition(".")
        if owner.endswith((".lora_A", ".lora_B")):
            continue
        if owner in modules and leaf == "weight":
            value = value + modules[owner].delta_weight().detach().to(value.dtype)
        out[key] = value.detach().clone()
    return out


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; tied weights are counted once."""
    seen: set[int] = set()
    trainable = total = 0
    for param in model.parameters():  # nn.Module.parameters() already skips shared Parameters
        if id(param) in seen:
            continue
        seen.add(id(param))
        total += param.numel()
        trainable += param.numel() if param.requires_grad else 0
    return trainable, total
