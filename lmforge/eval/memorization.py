"""Memorization audit of planted canaries (Carlini et al. 2019, "The Secret Sharer").

For a canary `prefix + secret` with the secret drawn from a space R, the model's log-perplexity of
a candidate r in R is -log2 P(r | prefix) (in bits, summed over r's tokens). The canary's rank is
its position among all candidates sorted by log-perplexity (1 = the model likes the true secret
best), and its exposure is

    exposure = log2 |R| - log2 rank

from 0 (the secret is no more likely than a random candidate of R's middle) up to log2 |R| (it
is the most likely of all). When |R| is small enough (`enumerate_limit`) every candidate is scored
and the rank is exact. Otherwise, as the paper does (section 4.3), `samples` candidates are drawn
uniformly from R and a skew-normal distribution is fitted to their log-perplexities; the exposure
is then -log2 F(canary's log-perplexity), F the fitted distribution function. The sampled rank
estimate (|R| x (samples scoring better than the secret + 1) / (samples + 1)) is reported beside
it; it cannot exceed log2(samples + 1) bits of exposure, which is why the fit extrapolates.

Extraction: greedy decoding from the prefix; the canary counts as extracted when the decoded
text starts with the secret.

Each sequence is scored as the training data held it: the document boundary token (BOS, else
EOS, as `lmforge prepare` writes it) then the canary text tokenized whole; the tokens that end
inside the prefix are the context, the rest the scored continuation.
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from lmforge.data.canaries import Canary, CanaryFormat
from lmforge.infer.engine import Engine
from lmforge.infer.sampling import SamplingParams
from lmforge.infer.scoring import score_continuations
from lmforge.model.transformer import Transformer
from lmforge.tokenizer.tokenizer import Tokenizer

__all__ = ["AuditConfig", "audit_canaries", "exposure_table", "skewnorm_fit", "skewnorm_logcdf"]

LOG2 = math.log(2)


@dataclass(frozen=True)
class AuditConfig:
    samples: int = 2000  # random candidates per canary when R is too large to enumerate
    enumerate_limit: int = 20_000  # score every candidate when |R| is at most this
    seed: int = 0
    batch_size: int = 64
    max_batch_tokens: int = 16384

    def __post_init__(self) -> None:
        if self.samples < 10:
            raise ValueError(f"samples must be at least 10 (a distribution is fitted to them), got {self.samples}")
        if self.enumerate_limit < 0 or self.batch_size < 1 or self.max_batch_tokens < 1:
            raise ValueError("enumerate_limit must be >= 0, batch_size and max_batch_tokens positive")


# --------------------------------------------------------------------------------------------
# skew-normal (fitted by the method of moments; its distribution function in log space)
# --------------------------------------------------------------------------------------------
_MAX_SKEW = 0.99  # the skew-normal's skewness is below 0.9953 in absolute value


def skewnorm_fit(values: Sequence[float]) -> tuple[float, float, float]:
    """(location, scale, shape alpha) of the skew-normal whose mean, variance and skewness are the
    sample's (skewness clipped to what a skew-normal can have)."""
    x = torch.tensor(values, dtype=torch.float64)
    if x.numel() < 3:
        raise ValueError("a skew-normal fit needs at least 3 values")
    mean, var = x.mean(), x.var(unbiased=True)
    if var <= 0:
        raise ValueError("a skew-normal fit needs values that are not all equal")
    skew = float((((x - mean) / var.sqrt()) ** 3).mean().clamp(-_MAX_SKEW, _MAX_SKEW))
    g = abs(skew) ** (2 / 3)
    delta = math.copysign(math.sqrt(math.pi / 2 * g / (g + ((4 - math.pi) / 2) ** (2 / 3))), skew)
    alpha = delta / math.sqrt(1 - delta**2)
    scale = math.sqrt(float(var) / (1 - 2 * delta**2 / math.pi))
    location = float(mean) - scale * delta * math.sqrt(2 / math.pi)
    return location, scale, alpha


def skewnorm_logcdf(x: float, location: float, scale: float, alpha: float, points: int = 200_001) -> float:
    """log F(x) of the skew-normal, F(z) = integral to z of 2 phi(t) Phi(alpha t), computed in log
    space (trapezoid over [z - 60, z], with z at least 60 below the mode) so far tails keep their digits."""
    z = (x - location) / scale
    low = min(z, -8.0) - 60.0
    t = torch.linspace(low, z, points, dtype=torch.float64)
    log_density = math.log(2) - 0.5 * t**2 - 0.5 * math.log(2 * math.pi) + torch.special.log_ndtr(alpha * t)
    weights = torch.full_like(t, math.log((z - low) / (points - 1)))
    weights[0] = weights[-1] = weights[0] - math.log(2)
    return float(torch.logsumexp(log_density + weights, dim=0).clamp(max=0.0))


# --------------------------------------------------------------------------------------------
# scoring
# --------------------------------------------------------------------------------------------
def _boundary(tokenizer: Tokenizer) -> int:
    boundary = tokenizer.bos_id if tokenizer.bos_id is not None else tokenizer.eos_id
    if boundary is None:
        raise ValueError("the tokenizer has neither a bos nor an eos token (the document boundary of prepared data)")
    return boundary


def _request(tokenizer: Tokenizer, prefix: str, secret: str, boundary: int) -> tuple[list[int], list[int]]:
    ids, offsets = tokenizer.encode_with_offsets(prefix + secret)
    split = next((i for i, (_, end) in enumerate(offsets) if end > len(prefix)), len(ids))
    if split == len(ids):
        raise ValueError(f"the secret {secret!r} produced no tokens after the prefix {prefix!r}")
    return [boundary] + ids[:split], ids[split:]


def _bits(model: Transformer, tokenizer: Tokenizer, prefix: str, secrets: Sequence[str], config: AuditConfig,
          progress: Callable[[int], None] | None) -> list[float]:
    """Log-perplexity in bits of every secret after the prefix."""
    boundary = _boundary(tokenizer)
    requests = [_request(tokenizer, prefix, secret, boundary) for secret in secrets]
    scores = score_continuations(model, requests, batch_size=config.batch_size, max_batch_tokens=config.max_batch_tokens,
                                 progress=progress)
    return [-s.logprob / LOG2 for s in scores]


def _extracted(model: Transformer, tokenizer: Tokenizer, canaries: Sequence[Canary]) -> list[str]:
    """Greedy continuation of each canary's prefix, as long as the secret's tokens and a few more."""
    boundary = _boundary(tokenizer)
    engine = Engine(model, tokenizer, max_batch_size=min(16, len(canaries)))
    out = []
    for canary in canaries:
        context, continuation = _request(tokenizer, canary.prefix, canary.secret, boundary)
        params = SamplingParams(max_new_tokens=len(continuation) + 4, temperature=0.0)
        text = engine.generate([context], params)[0].text
        # The context may end before the prefix does (a token holding the prefix's last space and the
        # secret's first digit is scored as continuation): the text after the prefix is the context's
        # text and the generated text together, minus the prefix.
        whole = tokenizer.decode(context[1:]) + text
        out.append(whole[len(canary.prefix):] if whole.startswith(canary.prefix) else whole)
    return out


def audit_canaries(model: Transformer, tokenizer: Tokenizer, canaries: Sequence[Canary],
                   config: AuditConfig = AuditConfig(), progress: Any = None) -> dict[str, Any]:
    """Exposure and extraction of every canary (module docstring), and the table by repetitions."""
    was_training = model.training
    model.eval()
    try:
        rows = []
        rng = random.Random(config.seed)
        for canary in canaries:
            space = CanaryFormat(canary.format)
            exact = space.size <= config.enumerate_limit
            candidates = ([space.member(i) for i in range(space.size)] if exact
                          else [space.sample(rng) for _ in range(config.samples)])
            if progress is not None:
                progress.start(f"{canary.id} ({canary.repetitions}x): {len(candidates)} candidates", len(candidates) + 1,
                               counted=True)
            advance = progress.advance if progress is not None else None
            bits = _bits(model, tokenizer, canary.prefix, [canary.secret, *candidates], config, advance)
            secret_bits, others = bits[0], bits[1:]
            log2_size = math.log2(space.size)
            row: dict[str, Any] = {"id": canary.id, "kind": canary.kind, "repetitions": canary.repetitions,
                                   "secret_bits": round(secret_bits, 4), "log2_space": round(log2_size, 3)}
            beaten = sum(1 for b in others if b < secret_bits)  # ties count in the secret's favour
            if exact:  # the secret is one of the candidates, scored identically (one request, deduplicated)
                row.update(method="exact", rank=1 + beaten, exposure=log2_size - math.log2(1 + beaten))
            else:
                sampled_rank = space.size * (beaten + 1) / (len(others) + 1)  # at most log2(samples + 1) bits
                location, scale, alpha = skewnorm_fit(others)
                log_cdf = skewnorm_logcdf(secret_bits, location, scale, alpha)
                row.update(method="extrapolated", rank=2 ** (log2_size + log_cdf / LOG2),
                           exposure=min(log2_size, -log_cdf / LOG2),
                           sampled_exposure=round(log2_size - math.log2(sampled_rank), 3),
                           fit={"location": location, "scale": scale, "alpha": alpha})
            row["exposure"] = round(max(0.0, row["exposure"]), 3)
            row["candidates_bits_median"] = round(sorted(others)[len(others) // 2], 4)
            rows.append(row)
        for row, canary, text in zip(rows, canaries, _extracted(model, tokenizer, canaries)):
            row["greedy"] = text
            row["extracted"] = text.startswith(canary.secret)
        return {"canaries": rows, "by_repetitions": exposure_table(rows), "config": dataclasses.asdict(config)}
    finally:
        model.train(was_training)


def exposure_table(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (kind, repetitions): canaries, mean and max exposure, and how many were extracted."""
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["kind"], row["repetitions"]), []).append(row)
    table = []
    for (kind, repetitions), members in sorted(groups.items(), key=lambda item: (item[0][0], item[0][1])):
        exposures = [m["exposure"] for m in members]
        table.append({"kind": kind, "repetitions": repetitions, "canaries": len(members),
                      "mean_exposure": round(sum(exposures) / len(exposures), 3), "max_exposure": max(exposures),
                      "log2_space": members[0]["log2_space"],
                      "extracted": sum(1 for m in members if m.get("extracted"))})
    return table
