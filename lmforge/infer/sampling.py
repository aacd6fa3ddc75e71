"""Sampling parameters and the logits -> next token step."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class SamplingParams:
    """How to pick tokens and when to stop. Validated on construction (absurd values -> ValueError)."""

    max_new_tokens: int = 256
    temperature: float = 0.0  # 0 -> greedy
    top_k: int | None = None
    top_p: float | None = None
    min_p: float | None = None
    repetition_penalty: float = 1.0  # >1 discourages tokens already present (prompt and output)
    presence_penalty: float = 0.0  # OpenAI-style additive penalties over generated tokens
    frequency_penalty: float = 0.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: frozenset[int] | None = None  # None -> the tokenizer's end-of-sequence ids
    ignore_eos: bool = False
    logprobs: int | None = None  # return log-probabilities with this many top alternatives (0..20)
    allowed_tokens: "object | None" = field(default=None, compare=False)  # constraint hook, see constraints

    def __post_init__(self) -> None:
        problems = []

        def finite(name: str, value: float) -> bool:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            if not ok:
                problems.append(f"{name} must be a finite number, got {value!r}")
            return ok

        if not isinstance(self.max_new_tokens, int) or isinstance(self.max_new_tokens, bool) or self.max_new_tokens < 1:
            problems.append(f"max_new_tokens must be a positive integer, got {self.max_new_tokens!r}")
        if finite("temperature", self.temperature) and not 0 <= self.temperature <= 100:
            problems.append(f"temperature must be in [0, 100], got {self.temperature}")
        if self.top_k is not None and (not isinstance(self.top_k, int) or self.top_k < 1):
            problems.append(f"top_k must be a positive integer, got {self.top_k!r}")
        if self.top_p is not None and finite("top_p", self.top_p) and not 0 < self.top_p <= 1:
            problems.append(f"top_p must be in (0, 1], got {self.top_p}")
        if self.min_p is not None and finite("min_p", self.min_p) and not 0 <= self.min_p <= 1:
            problems.append(f"min_p must be in [0, 1], got {self.min_p}")
        if finite("repetition_penalty", self.repetition_penalty) and not 0 < self.repetition_penalty <= 10:
            problems.append(f"repetition_penalty must be in (0, 10], got {self.repetition_penalty}")
        for name in ("presence_penalty", "frequency_penalty"):
            value = getattr(self, name)
            if finite(name, value) and not -2 <= value <= 2:
                problems.append(f"{name} must be in [-2, 2], got {value}")
        if self.seed is not None and (not isinstance(self.seed, int) or isinstance(self.seed, bool) or not 0 <= self.seed < 2**63):
            problems.append(f"seed must be an integer in [0, 2^63), got {self.seed!r}")
        if not isinstance(self.stop, tuple) or not all(isinstance(s, str) and s for s in self.stop) or len(self.stop) > 16:
            problems.append("stop must be at most 16 non-empty strings")
        if self.logprobs is not None and (not isinstance(self.logprobs, int) or not 0 <= self.logprobs <= 20):
            problems.append(f"logprobs must be an integer in [0, 20], got {self.logprobs!r}")
        if problems:
            raise ValueError("invalid sampling parameters: " + "; ".join(problems))

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def apply_penalties(logits: torch.Tensor, params: SamplingParams, seen: torch.Tensor | None,
                    generated_counts: torch.Tensor | None) -> torch.Tensor:
    """logits [V]; seen [V] bool (prompt + output); generated_counts [V] (output only)."""
    if params.repetition_penalty != 1.0 and seen is not None:
        penalised = torch.where(logits > 0, logits / params.repetition_penalty, logits * params.repetition_penalty)
        logits = torch.where(seen, penalised, logits)
    if generated_counts is not None and (params.presence_penalty or params.frequency_penalty):
        counts = generated_counts.to(logits.dtype)
        logits = logits - params.frequency_penalty * counts - params.presence_penalty * (counts > 0).to(logits.dtype)
    return logits


def filter_logits(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """Temperature, then top-k, top-p (nucleus) and min-p truncation; logits [V] float32."""
    logits = logits / params.temperature
    if params.top_k is not None and params.top_k < logits.shape[-1]:
        kth = torch.topk(logits, params.top_k).values[-1]
        logits = logits.masked_fill(logits < kth, -math.inf)
    if params.min_p is not None and params.min_p > 0:
        probs = torch.softmax(logits, dim=-1)
        logits = logits.masked_fill(probs < params.min_p * probs.max(), -math.inf)
    if params.top_p is not None and params.top_p < 1:
        sorted_logits, order = torch.sort(logits, descending=True)
        cumulative = torch.softmax(sorted_logits, dim=-1).cumsum(-1)
        # Drop a token when the tokens ranked before it already reach top_p (the first always stays).
        drop_sorted = (cumulative - torch.softmax(sorted_logits, dim=-1)) >= params.top_p
        drop = torch.zeros_like(drop_sorted).scatter(0, order, drop_sorted)
        logits = logits.masked_fill(drop, -math.inf)
    return logits


def choose_token(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None) -> int:
    """Pick one token id from processed logits [V] (float32)."""
    if params.greedy:
        return int(torch.argmax(logits))
    probs = torch.softmax(filter_logits(logits, params), dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator))
