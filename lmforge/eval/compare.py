"""Measurements for `lmforge compare` on trained models, and the report that answers "why transformers".

    per_position_loss   loss at each position of fresh windows (Kaplan et al. 2020, figure 7: a
                        transformer keeps improving with context, an LSTM plateaus)
    recall_probe        a random key of `key_len` tokens appears, then text, then the key again: how
                        well is the second copy predicted, against a control without the first
    decode_cost         milliseconds per generated token after contexts of growing length
    samples             greedy continuations of prompts
    write_report        report.md and PNG plots from the training records and these measurements

Every model is asked through `lmforge.model.architectures.window_token_losses`, so a decoder, an
LSTM and a T5 prefix LM are scored on the same windows the same way.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from lmforge.core.files import write_text_atomically
from lmforge.core.plotting import new_figure, save_figure
from lmforge.model.architectures import family_of, window_token_losses
from lmforge.model.lstm import LSTMLanguageModel
from lmforge.model.t5 import T5ForConditionalGeneration
from lmforge.model.transformer import Transformer
from lmforge.tokenizer.tokenizer import Tokenizer

KEY_LEN = 8


def per_position_loss(model: nn.Module, windows: torch.Tensor, batch_size: int = 32) -> np.ndarray:
    """Mean loss [T] at each position over the windows [N, T+1] (NaN where the model predicts nothing)."""
    losses = torch.cat([window_token_losses(model, windows[i:i + batch_size]) for i in range(0, len(windows), batch_size)])
    return losses.nanmean(dim=0).numpy()


def probe_windows(windows: torch.Tensor, distance: int, key_pool: Sequence[int], seed: int = 0,
                  key_len: int = KEY_LEN) -> tuple[torch.Tensor, torch.Tensor]:
    """(probe, control) windows: a random key of `key_len` ids from `key_pool` ends each window and,
    in the probe only, also appears `distance` tokens before that second copy starts (the control
    keeps the text there)."""
    T1 = windows.shape[1]
    second = T1 - key_len
    first = second - distance - key_len
    if first < 0:
        raise ValueError(f"distance {distance} does not fit windows of {T1} tokens")
    generator = torch.Generator().manual_seed(seed)
    pool = torch.tensor(list(key_pool))
    keys = pool[torch.randint(len(pool), (windows.shape[0], key_len), generator=generator)]
    control = windows.clone()
    control[:, second:] = keys
    probe = control.clone()
    probe[:, first:first + key_len] = keys
    return probe, control


def recall_probe(model: nn.Module, windows: torch.Tensor, distances: Sequence[int], key_pool: Sequence[int],
                 seed: int = 0) -> dict[int, dict[str, float]]:
    """Per distance: mean loss on the second copy's tokens after its first (the first is a guess
    in both), with the earlier copy (`loss`) and without it (`control_loss`), and the mean
    probability given to the right token with it (`p_correct`)."""
    results = {}
    for distance in distances:
        probe, control = probe_windows(windows, distance, key_pool, seed)
        columns = slice(windows.shape[1] - KEY_LEN, windows.shape[1] - 1)  # column t predicts token t + 1
        with_key = window_token_losses(model, probe)[:, columns]
        without = window_token_losses(model, control)[:, columns]
        results[int(distance)] = {"loss": float(with_key.mean()), "control_loss": float(without.mean()),
                                  "p_correct": float(torch.exp(-with_key).mean())}
    return results


def _timed(step, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        step()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


@torch.no_grad()
def decode_cost(model: nn.Module, contexts: Sequence[int], new_tokens: int = 16, repeats: int = 3,
                vocab: int = 16) -> dict[int, float]:
    """Milliseconds per generated token (median of `repeats`) after a context of each length:
    the decoder reads its KV cache, the LSTM its fixed state, T5 its decoder cache plus the
    encoder's keys (the context is the encoder input)."""
    family = family_of(model)
    results = {}
    for length in contexts:
        ids = torch.randint(vocab, (1, length))
        if family == "decoder":
            assert isinstance(model, Transformer)
            cache = model.new_cache(1, length + new_tokens)

            def step() -> None:
                logits = model(ids, cache=cache, last_only=True)
                for i in range(new_tokens):
                    logits = model(logits[:, -1].argmax(-1, keepdim=True), cache=cache, starts=[length + i])
        elif family == "lstm":
            assert isinstance(model, LSTMLanguageModel)
            _, state = model(ids)

            def step() -> None:
                token, current = ids[:, -1:], state
                for _ in range(new_tokens):
                    logits, current = model(token, current)
                    token = logits[:, -1].argmax(-1, keepdim=True)
        else:
            assert isinstance(model, T5ForConditionalGeneration)
            encoded = model.encode(ids)

            def step() -> None:
                cache = model.start_cache(encoded)
                token = ids.new_full((1, 1), model.config.decoder_start_token_id)
                for _ in range(new_tokens):
                    token = model.decode(token, cache)[:, -1].argmax(-1, keepdim=True)
        results[int(length)] = 1000 * _timed(step, repeats) / new_tokens
    return results


@torch.no_grad()
def sample(model: nn.Module, tokenizer: Tokenizer, prompt: str, max_new_tokens: int) -> str:
    """Greedy continuation of `prompt` (T5: the prompt is the encoder input)."""
    family = family_of(model)
    ids = torch.tensor([tokenizer.encode(prompt, add_bos=tokenizer.bos_id is not None)])
    if family == "decoder":
        out = []
        cache = model.new_cache(1, min(model.config.max_seq_len, ids.shape[1] + max_new_tokens))
        logits = model(ids, cache=cache, last_only=True)
        for i in range(min(max_new_tokens, cache.max_len - ids.shape[1])):
            token = logits[:, -1].argmax(-1, keepdim=True)
            out.append(int(token))
            if ids.shape[1] + i + 1 >= cache.max_len:
                break
            logits = model(token, cache=cache, starts=[ids.shape[1] + i])
    elif family == "lstm":
        out = model.generate(ids, max_new_tokens)[0].tolist()
    else:
        out = model.generate(ids, max_new_tokens=max_new_tokens)[0, 1:].tolist()
    return tokenizer.decode([t for t in out if t < tokenizer.vocab_size])


# --------------------------------------------------------------------------------------------
# The report
# --------------------------------------------------------------------------------------------
COLOURS = {"decoder": "tab:blue", "lstm": "tab:orange", "t5": "tab:green", "bert": "tab:red"}


def smooth(values: np.ndarray, width: int) -> np.ndarray:
    """Moving average (NaN-aware) over `width` positions."""
    out = np.full_like(values, np.nan)
    for i in range(len(values)):
        chunk = values[max(0, i - width + 1):i + 1]
        if np.isfinite(chunk).any():
            out[i] = np.nanmean(chunk)
    return out


def context_gain(curve: np.ndarray) -> tuple[float, float]:
    """(mean loss over the second quarter of positions, over the last quarter): how much later
    context still helps."""
    T = len(curve)
    return float(np.nanmean(curve[T // 4:T // 2])), float(np.nanmean(curve[3 * T // 4:]))


def position_verdict(curves: dict[str, np.ndarray], margin: float = 0.02) -> str:
    """One plain sentence on whether the decoder gains more from late context than the LSTM: it must
    itself improve by more than `margin` nats and by `margin` more than the LSTM."""
    (d_mid, d_end), (l_mid, l_end) = context_gain(curves["decoder"]), context_gain(curves["lstm"])
    d_gain, l_gain = d_mid - d_end, l_mid - l_end

    def change(gain: float, mid: float, end: float) -> str:
        return f"{'falls' if gain >= 0 else 'rises'} by {abs(gain):.3f} nats ({mid:.3f} -> {end:.3f})"

    numbers = (f"from the second to the last quarter of the context the decoder's loss {change(d_gain, d_mid, d_end)}, "
               f"the LSTM's {change(l_gain, l_mid, l_end)}")
    if d_gain > margin and d_gain > l_gain + margin:
        return f"The transformer keeps improving with position while the LSTM flattens: {numbers}."
    return (f"At this scale the per-position curves do not show the transformer gaining more from late "
            f"context than the LSTM: {numbers}.")


def _plot_lines(path: Path, title: str, xlabel: str, ylabel: str, series: dict[str, tuple[Sequence[float], Sequence[float]]],
                logx: bool = False, marker: str = "o-") -> Path:
    figure, axis = new_figure(7, 4.2)
    for name, (x, y) in series.items():
        if len(x):
            axis.plot(x, y, marker, label=name, color=COLOURS.get(name), markersize=3, linewidth=1.2)
    if logx:
        axis.set_xscale("log")
    axis.set_xlabel(xlabel)
    axis.set_ylabel(ylabel)
    axis.set_title(title)
    axis.grid(alpha=0.3)
    axis.legend()
    return save_figure(figure, path)


def write_report(out: str | Path, summary: dict[str, dict[str, Any]], records: dict[str, list[dict[str, Any]]],
                 curves: dict[str, np.ndarray], recall: dict[str, dict[int, dict[str, float]]],
                 decode: dict[str, dict[int, float]], samples: dict[str, list[tuple[str, str]]],
                 extra: str = "") -> Path:
    """report.md and its plots in `out`. `summary[family]` holds parameters, steps, flops,
    train_seconds, tokens_per_s and the final val losses; `records[family]` the evaluation records
    (flops, time_s, val_loss)."""
    out = Path(out)
    evals = {f: [r for r in rs if "val_loss" in r] for f, rs in records.items()}
    _plot_lines(out / "loss_vs_flops.png", "validation loss vs training FLOPs", "training FLOPs", "val loss (nats/token)",
                {f: ([r["flops"] for r in rs], [r["val_loss"] for r in rs]) for f, rs in evals.items()}, logx=True)
    _plot_lines(out / "loss_vs_time.png", "validation loss vs training time", "training seconds", "val loss (nats/token)",
                {f: ([r["time_s"] for r in rs], [r["val_loss"] for r in rs]) for f, rs in evals.items()})
    width = max(1, len(next(iter(curves.values()))) // 64)
    _plot_lines(out / "loss_per_position.png", f"loss per position in the context (moving mean over {width})",
                "position in the context (tokens)", "loss (nats/token)",
                {f: (np.arange(1, len(c) + 1), smooth(c, width)) for f, c in curves.items()}, logx=True, marker="-")
    _plot_lines(out / "recall_probe.png", f"recall of a {KEY_LEN}-token key seen earlier", "tokens between the two copies",
                "loss on the second copy (nats/token)",
                {f: (list(r), [v["loss"] for v in r.values()]) for f, r in recall.items()})
    _plot_lines(out / "decode_cost.png", "decode cost per generated token", "context length (tokens)", "ms per token",
                {f: (list(d), list(d.values())) for f, d in decode.items()})

    lines = ["# Decoder vs LSTM vs T5 at matched parameters and training FLOPs", "",
             "Same data, same validation windows. The decoder trained for its time budget; its training FLOPs "
             "were the budget of the LSTM and the T5 (a wall-clock cap may stop them earlier: compare the FLOPs "
             "column). T5 is trained as a prefix language model (its encoder reads the first half of each window, "
             "its decoder predicts the second), so its losses cover the second half of the windows only; "
             "`val loss, 2nd half` is the number all three share.", "",
             "| family | parameters | steps | training FLOPs | training s | window tokens/s | val loss | val loss, 2nd half |",
             "|---|---|---|---|---|---|---|---|"]
    for family, s in summary.items():
        lines.append(f"| {family} | {s['parameters']:,} | {s['steps']:,} | {s['flops']:.3g} | {s['train_seconds']:.0f} | "
                     f"{s['tokens_per_s']:,.0f} | {s['val_loss']:.4f} | {s['val_loss_second_half']:.4f} |")
    short = [f"{f} ({s['flops_share']:.0%})" for f, s in summary.items() if s.get("flops_share", 1.0) < 0.99]
    if short:
        lines += ["", "Stopped by the time cap before spending the decoder's FLOPs (share of them spent): "
                  + ", ".join(short) + ". Compare these at equal FLOPs on the loss-vs-FLOPs plot."]
    lines += ["", "![loss vs FLOPs](loss_vs_flops.png)", "![loss vs time](loss_vs_time.png)", "",
              "## Loss along the context", "", position_verdict(curves) if {"decoder", "lstm"} <= set(curves) else "", "",
              "| family | " + " | ".join(f"positions {a}-{b}" for a, b in _buckets(len(next(iter(curves.values()))))) + " |",
              "|---|" + "---|" * len(_buckets(len(next(iter(curves.values())))))]
    for family, curve in curves.items():
        cells = [np.nanmean(curve[a - 1:b]) if np.isfinite(curve[a - 1:b]).any() else math.nan
                 for a, b in _buckets(len(curve))]
        lines.append(f"| {family} | " + " | ".join("-" if math.isnan(c) else f"{c:.3f}" for c in cells) + " |")
    lines += ["", "![loss per position](loss_per_position.png)", "", "## Long-range recall probe", "",
              f"A random {KEY_LEN}-token key ends each validation window; in the probe it also appears earlier, "
              "the given number of tokens before. Loss on the second copy (its first token excluded) with the "
              "earlier copy / without it (control), and the mean probability of the right token:", "",
              "| family | " + " | ".join(f"{d} tokens" for d in next(iter(recall.values()))) + " |",
              "|---|" + "---|" * len(next(iter(recall.values())))]
    for family, r in recall.items():
        lines.append(f"| {family} | " + " | ".join(f"{v['loss']:.2f} / {v['control_loss']:.2f} (p {v['p_correct']:.2f})"
                                                  for v in r.values()) + " |")
    lines += ["", "![recall probe](recall_probe.png)", "", "## Decode cost per token", "",
              "Milliseconds per greedy token after a context of each length (median of 3; one row, CPU). The "
              "decoder attends over a cache that grows with the context; the LSTM carries a fixed-size state; "
              "T5 attends over its encoder output and its own tokens.", "",
              "| family | " + " | ".join(f"context {c}" for c in next(iter(decode.values()))) + " |",
              "|---|" + "---|" * len(next(iter(decode.values())))]
    for family, d in decode.items():
        lines.append(f"| {family} | " + " | ".join(f"{v:.2f}" for v in d.values()) + " |")
    lines += ["", "![decode cost](decode_cost.png)", "", "## Samples (greedy)", ""]
    for family, pairs in samples.items():
        for prompt, text in pairs:
            lines += [f"**{family}**, prompt `{prompt!r}`:", "", "```", prompt + text, "```", ""]
    if extra:
        lines += [extra, ""]
    return write_text_atomically(out / "report.md", "\n".join(lines) + "\n")


def _buckets(T: int) -> list[tuple[int, int]]:
    """Position ranges 1-8, 9-32, 33-128, ... up to T (inclusive bounds)."""
    edges, a = [], 1
    b = 8
    while a <= T:
        edges.append((a, min(b, T)))
        a, b = b + 1, b * 4
    return edges
