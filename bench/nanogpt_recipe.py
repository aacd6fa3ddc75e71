"""nanoGPT's documented CPU recipe for character-level Shakespeare, re-implemented as the speedrun's peer.

nanoGPT cannot be installed from a package registry, so this file rebuilds what its README runs on
a CPU ("baby GPT": `python train.py config/train_shakespeare_char.py --device=cpu --compile=False
--eval_iters=20 --log_interval=1 --block_size=64 --batch_size=12 --n_layer=4 --n_head=4
--n_embd=128 --max_iters=2000 --lr_decay_iters=2000 --dropout=0.0`), written here from that
description and nanoGPT's model and training loop, not copied:

- data: the characters of the text, sorted, as the vocabulary; first 90% train, last 10% val;
  each step draws 12 random windows of 64 characters (inputs) and the next character of each
- model: GPT-2 blocks without biases (pre-LayerNorm, causal attention, 4x GELU MLP), learned
  positions, output head tied to the token embedding; N(0, 0.02) init, residual projections
  scaled by 1/sqrt(2 * layers)
- AdamW (betas 0.9/0.99, weight decay 0.1 on matrices and embeddings only), lr 1e-3 with 100
  linear warmup steps and a cosine decay to 1e-4 at step 2000, gradient clipping at 1.0, float32
- 2000 optimizer steps

One deliberate difference, for a fair comparison: the validation loss is measured the way the
speedrun measures its own, over the *whole* val split in non-overlapping windows, instead of
nanoGPT's estimate from 20 random batches. Evaluation time is excluded from the training clock.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class Recipe:
    block_size: int = 64
    batch_size: int = 12
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    max_iters: int = 2000
    learning_rate: float = 1e-3
    min_lr: float = 1e-4
    warmup_iters: int = 100
    lr_decay_iters: int = 2000
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0
    eval_interval: int = 250
    seed: int = 1337


class _Block(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.ln_1 = nn.LayerNorm(dim, bias=False)
        self.c_attn = nn.Linear(dim, 3 * dim, bias=False)
        self.attn_proj = nn.Linear(dim, dim, bias=False)
        self.ln_2 = nn.LayerNorm(dim, bias=False)
        self.c_fc = nn.Linear(dim, 4 * dim, bias=False)
        self.mlp_proj = nn.Linear(4 * dim, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).split(C, dim=2)
        q, k, v = (t.view(B, T, self.heads, C // self.heads).transpose(1, 2) for t in (q, k, v))
        attended = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.attn_proj(attended.transpose(1, 2).reshape(B, T, C))
        return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x))))


class BabyGPT(nn.Module):
    def __init__(self, vocab_size: int, recipe: Recipe) -> None:
        super().__init__()
        dim = recipe.n_embd
        self.wte = nn.Embedding(vocab_size, dim)
        self.wpe = nn.Embedding(recipe.block_size, dim)
        self.blocks = nn.ModuleList(_Block(dim, recipe.n_head) for _ in range(recipe.n_layer))
        self.ln_f = nn.LayerNorm(dim, bias=False)
        self.lm_head = nn.Linear(dim, vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # tied
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)
        for block in self.blocks:
            for projection in (block.attn_proj, block.mlp_proj):
                nn.init.normal_(projection.weight, mean=0.0, std=0.02 / math.sqrt(2 * recipe.n_layer))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.wte(ids) + self.wpe(torch.arange(ids.shape[1], device=ids.device))
        for block in self.blocks:
            x = block(x)
        return self.lm_head(self.ln_f(x))


def learning_rate(step: int, recipe: Recipe) -> float:
    """Linear warmup, then cosine decay to min_lr at lr_decay_iters (constant after)."""
    if step < recipe.warmup_iters:
        return recipe.learning_rate * (step + 1) / (recipe.warmup_iters + 1)
    if step > recipe.lr_decay_iters:
        return recipe.min_lr
    progress = (step - recipe.warmup_iters) / (recipe.lr_decay_iters - recipe.warmup_iters)
    return recipe.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (recipe.learning_rate - recipe.min_lr)


def split_text(text: str) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(train ids, val ids, vocabulary size): sorted characters, first 90% / last 10%."""
    chars = sorted(set(text))
    index = {c: i for i, c in enumerate(chars)}
    ids = torch.tensor([index[c] for c in text], dtype=torch.long)
    cut = int(len(ids) * 0.9)
    return ids[:cut], ids[cut:], len(chars)


@torch.no_grad()
def full_val_loss(model: BabyGPT, val: torch.Tensor, block_size: int, batch_rows: int = 128) -> float:
    """Mean next-character loss over the whole split, non-overlapping windows (the last one shorter)."""
    model.eval()
    starts = list(range(0, len(val) - 1, block_size))
    full = [s for s in starts if s + block_size + 1 <= len(val)]
    total, count = 0.0, 0
    for begin in range(0, len(full), batch_rows):
        rows = torch.stack([val[s:s + block_size + 1] for s in full[begin:begin + batch_rows]])
        logits = model(rows[:, :-1])
        total += float(F.cross_entropy(logits.flatten(0, 1), rows[:, 1:].flatten(), reduction="sum"))
        count += rows[:, 1:].numel()
    for s in starts[len(full):]:
        row = val[s:][None]
        total += float(F.cross_entropy(model(row[:, :-1]).flatten(0, 1), row[:, 1:].flatten(), reduction="sum"))
        count += row.shape[1] - 1
    model.train()
    return total / count


def train(text: str, recipe: Recipe = Recipe(), on_eval: Callable[[dict], None] | None = None) -> dict:
    """Train the recipe on `text`; returns {"train_seconds", "tokens", "val_loss", "curve"}."""
    torch.manual_seed(recipe.seed)
    train_ids, val_ids, vocab = split_text(text)
    model = BabyGPT(vocab, recipe)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": recipe.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}],
                                  lr=recipe.learning_rate, betas=(recipe.beta1, recipe.beta2))
    curve: list[dict] = []
    seconds, tokens = 0.0, 0

    def evaluate(step: int) -> None:
        record = {"step": step, "tokens": tokens, "time_s": round(seconds, 3),
                  "val_loss": full_val_loss(model, val_ids, recipe.block_size)}
        curve.append(record)
        if on_eval is not None:
            on_eval(record)

    for step in range(recipe.max_iters):
        if step % recipe.eval_interval == 0 and step:
            evaluate(step)
        started = time.perf_counter()
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, recipe)
        starts = torch.randint(len(train_ids) - recipe.block_size, (recipe.batch_size,))
        x = torch.stack([train_ids[s:s + recipe.block_size] for s in starts])
        y = torch.stack([train_ids[s + 1:s + 1 + recipe.block_size] for s in starts])
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        seconds += time.perf_counter() - started
        tokens += x.numel()
    evaluate(recipe.max_iters)
    return {"train_seconds": seconds, "tokens": tokens, "val_loss": curve[-1]["val_loss"], "curve": curve}
