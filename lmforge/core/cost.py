"""What a run cost: compute (FLOPs), wall time, and energy and money estimated from rates.

    rates = Rates.from_env()                    # LMFORGE_WATTS, LMFORGE_USD_PER_KWH, LMFORGE_USD_PER_HOUR
    record = cost_record(flops=3.1e15, seconds=412.0, rates=rates, tokens=1_200_000)

energy (kWh) = watts x seconds / 3.6e6; money = energy x price per kWh + hours x machine price
per hour (a rented machine's price already holds its power: set one of the two to 0 then).
The watts are the machine's draw under load, a rate the user knows or looks up (a busy laptop
CPU ~30 W, a desktop ~100 W, one H100 ~700 W); nothing is measured here.

`TokenCounter` counts the token positions a model processes and the keys they attend to, from
a forward pre-hook on the model's backbone (prefill, scoring and every decode step), which is
what a FLOP count of inference needs.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["COST_FILE", "Rates", "TokenCounter", "cost_record"]

COST_FILE = "cost.json"


@dataclass(frozen=True)
class Rates:
    watts: float = 100.0
    usd_per_kwh: float = 0.15
    usd_per_hour: float = 0.10

    def __post_init__(self) -> None:
        for name in ("watts", "usd_per_kwh", "usd_per_hour"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or value < 0 or value != value:
                raise ValueError(f"{name} must be a number >= 0, got {value!r}")

    @classmethod
    def from_env(cls, **overrides: float | None) -> "Rates":
        """Defaults, then LMFORGE_WATTS / LMFORGE_USD_PER_KWH / LMFORGE_USD_PER_HOUR, then `overrides`
        that are not None."""
        values: dict[str, float] = {}
        for name in ("watts", "usd_per_kwh", "usd_per_hour"):
            variable = f"LMFORGE_{name.upper()}"
            if os.environ.get(variable):
                try:
                    values[name] = float(os.environ[variable])
                except ValueError:
                    raise ValueError(f"{variable} must be a number, got {os.environ[variable]!r}") from None
            if overrides.get(name) is not None:
                values[name] = float(overrides[name])  # type: ignore[arg-type]
        return cls(**values)

    def energy_kwh(self, seconds: float) -> float:
        return self.watts * seconds / 3.6e6

    def usd(self, seconds: float) -> float:
        return self.energy_kwh(seconds) * self.usd_per_kwh + seconds / 3600 * self.usd_per_hour


def cost_record(flops: float, seconds: float, rates: Rates, **extra: Any) -> dict[str, Any]:
    """A JSON-ready record of one run's cost (flops, seconds, energy, money, the rates used)."""
    return {"flops": float(flops), "seconds": round(float(seconds), 3), "energy_kwh": rates.energy_kwh(seconds),
            "usd": rates.usd(seconds), "rates": asdict(rates), **extra}


class TokenCounter:
    """Counts, while active, the token positions run through `model.backbone` and the attended keys
    (sum over calls of positions x key length). Use as a context manager."""

    def __init__(self, model: Any) -> None:
        self.backbone = model.backbone
        self.tokens = 0
        self.token_keys = 0
        self._handle = None

    def _hook(self, module: Any, args: tuple) -> None:
        if len(args) < 3:  # called without the positional (ids, positions, inputs)
            return
        ids, _, inputs = args[:3]
        tokens = int(ids.numel())
        self.tokens += tokens
        self.token_keys += tokens * int(inputs.end)

    def __enter__(self) -> "TokenCounter":
        self._handle = self.backbone.register_forward_pre_hook(self._hook)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
