"""Layer 4: training.

config       frozen dataclasses of a run (`PretrainConfig`, `OptimConfig`, `ScheduleConfig`)
losses       losses as pure functions (token sums, so accumulation is token-weighted)
optim        AdamW, Muon (torch.optim.Muon) for matrices + AdamW for the rest, as one `Optimizers`
schedule     warmup + cosine / linear / warmup-stable-decay multipliers over run progress
distributed  torchrun process groups, DDP / FSDP2 wrapping, the collectives that keep ranks agreeing
helpers      what every loop shares: accumulate, clip, evaluate, log, checkpoint, signals, clocks
pretrain     the pretraining loop
"""
