"""Optimizers: AdamW, or Muon for hidden matrices with AdamW for embeddings, head, norms and biases.

Muon is PyTorch's own `torch.optim.Muon` (Newton-Schulz orthogonalised momentum, Keller Jordan's
recipe). `Optimizers` makes the two look like one optimizer to the loop: step, zero_grad, one
state_dict, and a learning-rate multiplier applied to every group's base rate.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from lmforge.train.config import OptimConfig

EMBEDDING_NAMES = ("model.embed_tokens.weight", "transformer.wte.weight", "transformer.wpe.weight")
HEAD_NAMES = ("lm_head.weight",)


def split_parameters(model: nn.Module) -> dict[str, list[tuple[str, nn.Parameter]]]:
    """Trainable parameters by role: embedding, head, matrix (hidden 2-D weights), vector (the rest)."""
    roles: dict[str, list[tuple[str, nn.Parameter]]] = {"embedding": [], "head": [], "matrix": [], "vector": []}
    for name, param in model.named_parameters():  # a tied head appears once, as the embedding
        if not param.requires_grad:
            continue
        if name in EMBEDDING_NAMES:
            roles["embedding"].append((name, param))
        elif name in HEAD_NAMES:
            roles["head"].append((name, param))
        elif param.ndim == 2:
            roles["matrix"].append((name, param))
        else:
            roles["vector"].append((name, param))
    return roles


class Optimizers:
    """Several torch optimizers driven as one."""

    def __init__(self, optimizers: list[torch.optim.Optimizer]) -> None:
        self.optimizers = optimizers
        for group in self.param_groups:
            group.setdefault("base_lr", group["lr"])

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return [group for opt in self.optimizers for group in opt.param_groups]

    def set_lr_multiplier(self, multiplier: float) -> None:
        for group in self.param_groups:
            group["lr"] = group["base_lr"] * multiplier

    def step(self) -> None:
        for opt in self.optimizers:
            opt.step()

    def zero_grad(self) -> None:
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=True)

    def state_dict(self) -> dict[str, Any]:
        return {"optimizers": [opt.state_dict() for opt in self.optimizers]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        states = state["optimizers"]
        if len(states) != len(self.optimizers):
            raise ValueError(f"checkpoint holds {len(states)} optimizer states, this run has {len(self.optimizers)}")
        for opt, opt_state in zip(self.optimizers, states):
            # Moments and step counts come from the checkpoint; hyperparameters from this run's
            # config, so a resumed run can change the learning rate (e.g. after a NaN).
            settings = [{k: v for k, v in group.items() if k != "params"} for group in opt.param_groups]
            opt.load_state_dict(opt_state)
            for group, setting in zip(opt.param_groups, settings):
                group.update(setting)


def build_optimizer(model: nn.Module, config: OptimConfig) -> Optimizers:
    roles = split_parameters(model)
    params = {role: [p for _, p in items] for role, items in roles.items()}
    adam = dict(betas=config.betas, eps=config.eps)
    groups = [
        {"params": params["embedding"], "lr": config.embed_lr or config.lr, "weight_decay": 0.0, "role": "embedding"},
        {"params": params["head"], "lr": config.head_lr or config.lr, "weight_decay": 0.0, "role": "head"},
        {"params": params["vector"], "lr": config.lr, "weight_decay": 0.0, "role": "vector"},
    ]
    if config.name == "adamw":
        groups.append({"params": params["matrix"], "lr": config.lr, "weight_decay": config.weight_decay, "role": "matrix"})
        return Optimizers([torch.optim.AdamW([g for g in groups if g["params"]], **adam)])
    if config.name == "muon":
        muon = torch.optim.Muon(params["matrix"], lr=config.muon_lr, momentum=config.muon_momentum,
                                weight_decay=config.muon_weight_decay, ns_steps=config.muon_ns_steps, nesterov=True)
        for group in muon.param_groups:
            group["role"] = "matrix"
        return Optimizers([muon, torch.optim.AdamW([g for g in groups if g["params"]], **adam)])
    raise ValueError(f"unknown optimizer {config.name!r} (adamw or muon)")
