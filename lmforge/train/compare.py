"""Training for `lmforge compare`: a decoder, an LSTM and a T5 at matched parameters and FLOPs.

    sizes    the decoder's shape is given; the LSTM's width and the T5's feed-forward width are
             chosen so that each has (about) the decoder's parameter count
    budget   the decoder trains for `decoder_time_s` through the pretraining loop (train/pretrain.py);
             the training FLOPs it spent are the budget the LSTM (truncated BPTT, train/recurrent.py)
             and the T5 (prefix LM: the encoder reads the first half of each window, the decoder
             predicts the second) then get, each stopped early only by a wall-clock cap
    FLOPs    per token, 3x the forward pass (forward + backward), counted from the shapes: 2 per
             weight a token meets, plus attention's scores and weighted sums (Kaplan et al. 2020)

All three read the same prepared data (train windows, val windows); the measurements made on
the trained models are lmforge/eval/compare.py's. Each run's metrics.jsonl gets a `flops` field.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lmforge.core.config import ModelConfig
from lmforge.core.progress import ProgressDisplay
from lmforge.data.loader import TrainLoader, eval_batches
from lmforge.data.shards import TokenData
from lmforge.io.hf import load_pretrained
from lmforge.io.hf_seq2seq import save_hf_folder
from lmforge.model.architectures import prefix_split, t5_prefix_batch, window_token_losses
from lmforge.model.lstm import LSTMConfig, LSTMLanguageModel, init_lstm_weights
from lmforge.model.t5 import T5Config, T5ForConditionalGeneration, init_t5_weights
from lmforge.model.transformer import Transformer
from lmforge.tokenizer.tokenizer import Tokenizer
from lmforge.train.config import OptimConfig, PretrainConfig, RecipeConfig, ScheduleConfig
from lmforge.train.losses import token_cross_entropy
from lmforge.train.objective import ObjectiveConfig, train_objective
from lmforge.train.pretrain import pretrain
from lmforge.train.recurrent import CarriedStateLoss, split_tokens, stream_batches


@dataclass(frozen=True)
class CompareConfig(RecipeConfig):
    data: str  # a folder of `lmforge prepare` (e.g. builtin:stdlib with a char tokenizer)
    out_dir: str = "runs/compare"
    seq_len: int = 256
    batch_size: int = 16
    dim: int = 128  # decoder width (also T5's d_model)
    n_layers: int = 4  # decoder layers
    n_heads: int = 4
    lstm_layers: int = 2
    lstm_segment_windows: int | None = 4  # LSTM streams jump (state reset) every this many windows (train/recurrent.py)
    t5_layers: int = 2  # per stack (encoder and decoder)
    decoder_time_s: float = 420.0  # the decoder's training time; its FLOPs are everyone's budget
    time_cap_factor: float = 1.5  # LSTM/T5 stop at the matched FLOPs or this many times decoder_time_s
    lr: float = 3e-3
    eval_every_s: float = 60.0
    eval_tokens: int = 32768  # validation tokens per evaluation (every family the same windows)
    seed: int = 0
    threads: int | None = None

    def __post_init__(self) -> None:
        for name in ("seq_len", "batch_size", "dim", "n_layers", "n_heads", "lstm_layers", "t5_layers", "eval_tokens"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.seq_len < 8:
            raise ValueError("seq_len must be at least 8")
        if self.dim % self.n_heads:
            raise ValueError(f"dim ({self.dim}) must be divisible by n_heads ({self.n_heads})")
        if self.decoder_time_s <= 0 or self.time_cap_factor < 1:
            raise ValueError("decoder_time_s must be positive and time_cap_factor at least 1")


# --------------------------------------------------------------------------------------------
# Sizes
# --------------------------------------------------------------------------------------------
def parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def decoder_config(config: CompareConfig, vocab_size: int) -> ModelConfig:
    return ModelConfig(family="llama", vocab_size=vocab_size, dim=config.dim, n_layers=config.n_layers,
                       n_heads=config.n_heads, ffn_dim=4 * config.dim, max_seq_len=config.seq_len, tie_embeddings=True)


def lstm_config(target: int, vocab_size: int, layers: int) -> LSTMConfig:
    """The LSTM whose parameter count is closest to `target` (an even width)."""
    widths = range(2, 4096, 2)
    return min((LSTMConfig(vocab_size=vocab_size, dim=w, n_layers=layers) for w in widths),
               key=lambda c: abs(c.num_parameters() - target))


def t5_config(config: CompareConfig, target: int, vocab_size: int, pad_id: int, eos_id: int) -> T5Config:
    """A T5 of the decoder's width and heads whose feed-forward width (a multiple of 16) brings
    its parameter count closest to `target`."""
    def build(d_ff: int) -> T5Config:
        return T5Config(vocab_size=vocab_size, d_model=config.dim, d_kv=config.dim // config.n_heads, d_ff=d_ff,
                        num_layers=config.t5_layers, num_heads=config.n_heads, feed_forward_proj="gated-gelu",
                        pad_token_id=pad_id, eos_token_id=eos_id, decoder_start_token_id=pad_id,
                        relative_attention_max_distance=max(128, config.seq_len))

    def count(c: T5Config) -> int:
        d, inner, f, buckets = c.d_model, c.num_heads * c.d_kv, c.d_ff, c.relative_attention_num_buckets
        encoder = c.num_layers * (4 * d * inner + 3 * d * f + 2 * d)
        decoder = c.decoder_layers * (8 * d * inner + 3 * d * f + 3 * d)
        return c.vocab_size * d + encoder + decoder + 2 * d + 2 * buckets * c.num_heads

    return min((build(f) for f in range(16, 16 * config.dim, 16)), key=lambda c: abs(count(c) - target))


# --------------------------------------------------------------------------------------------
# FLOPs per training step (forward + backward = 3 x forward)
# --------------------------------------------------------------------------------------------
def decoder_step_flops(model: Transformer, batch_size: int, seq_len: int) -> float:
    c = model.config
    weights = parameters(model)  # the tied embedding counted once: as the head's matmul (the lookup is free)
    attention = 2 * 2 * c.n_layers * c.n_heads * c.head_size * (seq_len + 1) / 2  # causal: mean context (T+1)/2
    return 3 * batch_size * seq_len * (2 * weights + attention)


def lstm_step_flops(model: LSTMLanguageModel, batch_size: int, seq_len: int) -> float:
    return batch_size * seq_len * model.config.training_flops_per_token()


def t5_step_flops(model: T5ForConditionalGeneration, batch_size: int, seq_len: int) -> float:
    """Prefix LM: p = seq_len // 2 encoder tokens, seq_len + 1 - p decoder tokens per window."""
    c = model.config
    d, inner, f = c.d_model, c.num_heads * c.d_kv, c.d_ff
    ff = (3 if c.gated else 2) * d * f
    S, T = prefix_split(seq_len), seq_len + 1 - prefix_split(seq_len)
    encoder = c.num_layers * S * (2 * (4 * d * inner + ff) + 2 * 2 * inner * S)
    decoder = c.decoder_layers * T * (2 * (8 * d * inner + ff) + 2 * 2 * inner * ((T + 1) / 2 + S))
    head = T * 2 * d * c.vocab_size
    return 3 * batch_size * (encoder + decoder + head)


# --------------------------------------------------------------------------------------------
# Runs
# --------------------------------------------------------------------------------------------
@dataclass
class FamilyRun:
    family: str
    model: nn.Module
    parameters: int
    steps: int
    flops: float
    train_seconds: float
    records: list[dict[str, Any]]  # metrics.jsonl with `flops` added
    folder: Path  # the trained model's folder


def val_windows(data: TokenData, config: CompareConfig) -> torch.Tensor:
    """The validation windows [N, seq_len + 1] every family is scored on (fresh context each)."""
    windows = [torch.cat((x, y[:, -1:]), dim=1) for x, y in
               eval_batches(data.val, config.seq_len, 64, max_tokens=config.eval_tokens) if x.shape[1] == config.seq_len]
    if not windows:
        raise ValueError(f"{data.folder}: the val split has fewer than {config.seq_len + 1} tokens")
    return torch.cat(windows)


def val_loss(model: nn.Module, windows: torch.Tensor) -> dict[str, float]:
    """Mean loss over all predicted tokens and over the second half of each window (what a T5
    prefix LM predicts, so the one number every family has)."""
    losses = window_token_losses(model, windows)
    half = losses[:, prefix_split(windows.shape[1] - 1) - 1:]
    return {"val_loss": float(losses.nanmean()), "val_loss_second_half": float(half.nanmean())}


def with_flops(records: list[dict[str, Any]], step_flops: float) -> list[dict[str, Any]]:
    return [{**r, "flops": r["step"] * step_flops} for r in records]


def train_decoder(config: CompareConfig, data: TokenData, windows: torch.Tensor,
                  display: ProgressDisplay | None) -> FamilyRun:
    out = Path(config.out_dir) / "decoder"
    recipe = PretrainConfig(data=config.data, out_dir=str(out), model=decoder_config(config, data.vocab_size),
                            seq_len=config.seq_len, batch_size=config.batch_size, time_budget_s=config.decoder_time_s,
                            optim=OptimConfig(lr=config.lr, weight_decay=0.01), schedule=ScheduleConfig(warmup_steps=50),
                            seed=config.seed, device="cpu", threads=config.threads, eval_every=0,
                            eval_every_s=config.eval_every_s, eval_tokens=config.eval_tokens, sample_prompts=(),
                            save_every=0, keep_checkpoints=1, plot=True)
    result = pretrain(recipe, show_progress=display is not None and display.enabled)
    model, _ = load_pretrained(result.checkpoint)
    step_flops = decoder_step_flops(model, config.batch_size, config.seq_len)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    records.append({"step": result.steps, "tokens": result.tokens, "time_s": round(result.train_seconds, 3),
                    **val_loss(model, windows), "final": True})
    return FamilyRun("decoder", model, parameters(model), result.steps, result.steps * step_flops,
                     result.train_seconds, with_flops(records, step_flops), result.checkpoint)


def t5_prefix_loss(model: T5ForConditionalGeneration, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, int]:
    x, y = batch
    encoder_ids, decoder_ids, labels = t5_prefix_batch(model, torch.cat((x, y[:, -1:]), dim=1))
    loss_sum, count = token_cross_entropy(model(encoder_ids, decoder_ids), labels)
    return loss_sum, int(count)


def train_matched(family: str, config: CompareConfig, data: TokenData, windows: torch.Tensor, flops_budget: float,
                  display: ProgressDisplay | None) -> FamilyRun:
    """The LSTM or the T5, trained until it has spent `flops_budget` (or hit the time cap)."""
    decoder_params = parameters(Transformer(decoder_config(config, data.vocab_size)))
    if family == "lstm":
        model: nn.Module = LSTMLanguageModel(lstm_config(decoder_params, data.vocab_size, config.lstm_layers))
        init_lstm_weights(model, seed=config.seed)
        step_flops = lstm_step_flops(model, config.batch_size, config.seq_len)
        next_batch = partial(next, stream_batches(split_tokens(data.train), config.batch_size, config.seq_len,
                                                   config.lstm_segment_windows, config.seed))
        loss = CarriedStateLoss()
    else:
        pad_id = Tokenizer.from_folder(data.tokenizer_folder).pad_id
        eos = data.boundary_id
        pad = pad_id if pad_id is not None else eos
        model = T5ForConditionalGeneration(t5_config(config, decoder_params, data.vocab_size, pad, eos))
        init_t5_weights(model, seed=config.seed)
        step_flops = t5_step_flops(model, config.batch_size, config.seq_len)
        next_batch = partial(next, iter(TrainLoader(data.train, config.seq_len, config.batch_size, seed=config.seed)))
        loss = t5_prefix_loss
    out = Path(config.out_dir) / family
    steps = max(1, int(flops_budget // step_flops))
    run = ObjectiveConfig(out_dir=str(out), batch_size=config.batch_size, max_steps=steps,
                          time_budget_s=config.decoder_time_s * config.time_cap_factor,
                          optim=OptimConfig(lr=config.lr, weight_decay=0.01), schedule=ScheduleConfig(warmup_steps=50),
                          seed=config.seed, threads=config.threads, eval_every_s=config.eval_every_s)
    result = train_objective(model, run, next_batch, loss, evaluate=lambda: val_loss(model, windows), name=family,
                             display=display)
    save_hf_folder(model, Tokenizer.from_folder(data.tokenizer_folder), out / "model")
    return FamilyRun(family, model, parameters(model), result.steps, result.steps * step_flops, result.train_seconds,
                     with_flops(result.records, step_flops), out / "model")


def train_families(config: CompareConfig, display: ProgressDisplay | None = None) -> dict[str, FamilyRun]:
    """The decoder, then the LSTM and the T5 at its FLOPs: {family: run}."""
    if config.threads:
        torch.set_num_threads(config.threads)
    data = TokenData.open(config.data)
    windows = val_windows(data, config)
    runs = {"decoder": train_decoder(config, data, windows, display)}
    for family in ("lstm", "t5"):
        torch.manual_seed(config.seed)
        runs[family] = train_matched(family, config, data, windows, runs["decoder"].flops, display)
    return runs
