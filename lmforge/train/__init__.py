"""Layer 4: training.

config         frozen dataclasses of a run (`PretrainConfig`, `OptimConfig`, `ScheduleConfig`)
losses/        losses as pure functions (token sums, so accumulation is token-weighted)
optim          AdamW, Muon (torch.optim.Muon) for matrices + AdamW for the rest, as one `Optimizers`
schedule       warmup + cosine / linear / warmup-stable-decay multipliers over run progress (fraction_done)
distributed    torchrun process groups, DDP / FSDP2 wrapping, the collectives that keep ranks agreeing

What every loop shares, one job per module (each takes plain values, never a config object):
reproducibility  seeds, deterministic algorithms, RNG states for resume
precision        bf16 autocast
step             token-weighted gradient accumulation, clipping, the finite-loss check
validation       held-out loss and bits per byte, sample generations
signals          SIGTERM/SIGINT -> save and exit; a training clock that excludes pauses
metrics          metrics.jsonl, loss-curve PNG, the progress status line, tokens/s
checkpointing    atomic checkpoints with full resume state, RunState, save-on-schedule-or-signal

The loops, one per method: pretrain, finetune.
"""
