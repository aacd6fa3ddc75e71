"""Scaling laws from a sweep's runs: fit, intervals, compute-optimal allocation, predictions, plots.

Approach 3 of Hoffmann et al. (2022), as they and Besiroglu et al. (2024) fit it:

    L(N, D) = E + A / N^alpha + B / D^beta
    log L^(N, D) = LSE(a - alpha log N, b - beta log D, e)        A = e^a, B = e^b, E = e^e

minimising the Huber loss (delta = 1e-3) between log L^ and the observed log-loss, summed over
runs, with L-BFGS started from the best points of Hoffmann's grid of initialisations (alpha, beta
in {0, 0.5, ..., 2}, e in {-1, -0.5, ..., 1.5}, a, b in {0, 5, ..., 25}). Confidence intervals
come from a bootstrap over runs (resample runs with replacement, refit from the full-data optimum,
take percentiles).

From the law: the compute-optimal split of a FLOP budget C = 6 N D (closed form) and, when the
sweep lists its family's buildable sizes with their exact FLOPs per token, the best buildable model
for C; prediction intervals for a new (N, D) add a resampled fit residual to each bootstrap
law's prediction. Approach 2 (IsoFLOP profiles): at each FLOP budget of the sweep, a parabola of
loss against log N gives the loss-minimising N; a power law through those minima gives N_opt(C).

Runs are plain dicts (runs.json of `lmforge scale sweep`): name, params_non_embedding and params,
tokens, val_loss, and optionally flops, budget, budget_kind, depth. Plots are standalone
matplotlib Figures (pyplot's global state is never touched).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lmforge.core.files import replace_atomically, write_text_atomically

__all__ = ["CHINCHILLA", "EPOCH_AI", "Law", "LawFit", "compute_optimal", "fit_law", "fit_runs", "isoflop_profiles",
           "plot_compute", "plot_isoflop", "plot_predictions", "predict", "report_section", "summary_markdown",
           "write_outputs"]

PARAMETERS = ("E", "A", "B", "alpha", "beta")
CHINCHILLA = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}  # Hoffmann et al. 2022, approach 3
EPOCH_AI = {"E": 1.8172, "A": 482.01, "B": 2085.43, "alpha": 0.3478, "beta": 0.3658}  # Besiroglu et al. 2024
PARAM_KEYS = {"non_embedding": "params_non_embedding", "total": "params"}
SUMMARY_FILE = "scaling.md"
FIT_FILE = "fit.json"
PREDICTIONS_FILE = "predictions.json"
PLOTS = ("scaling_compute.png", "scaling_isoflop.png", "scaling_prediction.png")

# Hoffmann et al.'s grid of starting points: (a, b, e, alpha, beta)
_GRID = np.array(list(itertools.product(np.arange(0, 30, 5.0), np.arange(0, 30, 5.0), np.arange(-1, 2, 0.5),
                                        np.arange(0, 2.5, 0.5), np.arange(0, 2.5, 0.5))))
_BOUNDS = [(-20.0, 80.0), (-20.0, 80.0), (-10.0, 10.0), (0.0, 4.0), (0.0, 4.0)]


# --------------------------------------------------------------------------------------------
# the law
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Law:
    E: float
    A: float
    B: float
    alpha: float
    beta: float

    def loss(self, N: Any, D: Any) -> Any:
        return self.E + self.A / np.power(N, self.alpha) + self.B / np.power(D, self.beta)

    def optimal(self, flops: Any) -> tuple[Any, Any]:
        """(N, D) minimising the loss at C = 6 N D: N = G (C/6)^(beta/(alpha+beta)), D = (C/6) / N."""
        s = self.alpha + self.beta
        G = (self.alpha * self.A / (self.beta * self.B)) ** (1 / s)
        N = G * np.power(np.asarray(flops, dtype=float) / 6, self.beta / s)
        return N, np.asarray(flops, dtype=float) / 6 / N

    def as_dict(self) -> dict[str, float]:
        return {name: float(getattr(self, name)) for name in PARAMETERS}

    @classmethod
    def from_vector(cls, theta: np.ndarray) -> "Law":
        a, b, e, alpha, beta = (float(v) for v in theta)
        return cls(math.exp(e), math.exp(a), math.exp(b), alpha, beta)


def _objective(theta: np.ndarray, logN: np.ndarray, logD: np.ndarray, logL: np.ndarray, weights: np.ndarray,
               delta: float) -> tuple[float, np.ndarray]:
    """Summed Huber loss of log L^ - log L (divided by delta to keep the optimiser's scale) and its gradient."""
    a, b, e, alpha, beta = theta
    t0, t1 = a - alpha * logN, b - beta * logD
    top = np.maximum(np.maximum(t0, t1), e)
    s0, s1, s2 = np.exp(t0 - top), np.exp(t1 - top), np.exp(e - top)
    total = s0 + s1 + s2
    residual = top + np.log(total) - logL
    size = np.abs(residual)
    huber = np.where(size <= delta, 0.5 * residual * residual, delta * (size - 0.5 * delta))
    slope = weights * np.clip(residual, -delta, delta) / (delta * total)  # d loss / d LSE, over the softmax denominator
    g0, g1 = slope * s0, slope * s1
    grad = np.array([g0.sum(), g1.sum(), slope @ s2, -(g0 @ logN), -(g1 @ logD)])
    return float(weights @ huber) / delta, grad


def _grid_values(logN: np.ndarray, logD: np.ndarray, logL: np.ndarray, weights: np.ndarray, delta: float) -> np.ndarray:
    """The objective at every grid start at once: [len(_GRID)]."""
    a, b, e, alpha, beta = (_GRID[:, i:i + 1] for i in range(5))
    terms = np.stack([a - alpha * logN, b - beta * logD, np.broadcast_to(e, (len(_GRID), len(logN)))])
    residual = np.logaddexp.reduce(terms, axis=0) - logL
    huber = np.where(np.abs(residual) <= delta, 0.5 * residual ** 2, delta * (np.abs(residual) - 0.5 * delta))
    return (weights * huber).sum(axis=1) / delta


def _fit_vector(logN: np.ndarray, logD: np.ndarray, logL: np.ndarray, weights: np.ndarray, delta: float,
                starts: int, extra: list[np.ndarray] = ()) -> np.ndarray:
    from scipy.optimize import minimize

    candidates = list(extra)
    if starts:
        values = _grid_values(logN, logD, logL, weights, delta)
        candidates = [_GRID[i] for i in np.argsort(values)[:starts]] + candidates
    best, best_value = None, math.inf
    for start in candidates:
        result = minimize(_objective, start, args=(logN, logD, logL, weights, delta), jac=True, method="L-BFGS-B",
                          bounds=_BOUNDS, options={"maxiter": 1000, "ftol": 1e-12, "gtol": 1e-8})
        if result.fun < best_value:
            best, best_value = result.x, float(result.fun)
    return best


def _check_data(N: np.ndarray, D: np.ndarray, L: np.ndarray) -> None:
    if not (len(N) == len(D) == len(L)):
        raise ValueError("N, D and L must have the same length")
    if len(N) < len(PARAMETERS):
        raise ValueError(f"{len(N)} runs: fewer than the {len(PARAMETERS)} parameters of L(N, D) = E + A/N^alpha + B/D^beta")
    if np.any(~np.isfinite(L)) or np.any(L <= 0) or np.any(N <= 0) or np.any(D <= 0):
        raise ValueError("every run needs positive, finite parameters, tokens and loss")
    if len(np.unique(N)) < 2 or len(np.unique(D)) < 2:
        raise ValueError("the runs need at least 2 different model sizes and 2 different token counts")


@dataclass
class LawFit:
    """A fitted law with its bootstrap replicates (for intervals and predictions)."""

    law: Law
    samples: np.ndarray  # [bootstrap, 5] in PARAMETERS order
    residuals: np.ndarray  # log L - log L^ of the fitted runs
    level: float = 0.95
    delta: float = 1e-3
    params_kind: str = "non_embedding"
    runs: list[str] = field(default_factory=list)

    def interval(self, values: np.ndarray) -> tuple[float, float]:
        tail = (1 - self.level) / 2 * 100
        low, high = np.nanpercentile(values, [tail, 100 - tail])
        return float(low), float(high)

    def intervals(self) -> dict[str, tuple[float, float]]:
        return {name: self.interval(self.samples[:, i]) for i, name in enumerate(PARAMETERS)}

    def sample_laws(self) -> list[Law]:
        return [Law(*row) for row in self.samples]

    def to_dict(self) -> dict[str, Any]:
        return {"law": self.law.as_dict(), "intervals": {k: list(v) for k, v in self.intervals().items()},
                "level": self.level, "huber_delta": self.delta, "params_kind": self.params_kind, "runs": self.runs,
                "bootstrap": len(self.samples), "samples": self.samples.tolist(), "residuals": self.residuals.tolist()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "LawFit":
        try:
            return cls(Law(**data["law"]), np.array(data["samples"], dtype=float).reshape(-1, 5),
                       np.array(data["residuals"], dtype=float), float(data["level"]), float(data["huber_delta"]),
                       data["params_kind"], list(data.get("runs", [])))
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"not a scaling-law fit ({error})") from None


def fit_law(N: Any, D: Any, L: Any, *, delta: float = 1e-3, bootstrap: int = 1000, level: float = 0.95,
            seed: int = 0, starts: int = 24) -> LawFit:
    """Fit L(N, D) (module docstring) and bootstrap it `bootstrap` times over runs."""
    N, D, L = (np.asarray(v, dtype=float) for v in (N, D, L))
    _check_data(N, D, L)
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    logN, logD, logL = np.log(N), np.log(D), np.log(L)
    ones = np.ones_like(L)
    theta = _fit_vector(logN, logD, logL, ones, delta, starts)
    law = Law.from_vector(theta)
    rng = np.random.default_rng(seed)
    samples = []
    for _ in range(bootstrap):
        weights = np.bincount(rng.integers(0, len(L), len(L)), minlength=len(L)).astype(float)
        vector = _fit_vector(logN, logD, logL, weights, delta, 0, [theta])
        samples.append(list(Law.from_vector(vector).as_dict().values()))
    residuals = logL - np.log(law.loss(N, D))
    return LawFit(law, np.array(samples, dtype=float).reshape(-1, 5), residuals, level, delta)


# --------------------------------------------------------------------------------------------
# runs -> fit, predictions, allocation, IsoFLOP
# --------------------------------------------------------------------------------------------
def _columns(runs: list[dict[str, Any]], params_kind: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    key = PARAM_KEYS.get(params_kind)
    if key is None:
        raise ValueError(f"params must be one of {', '.join(PARAM_KEYS)}, got {params_kind!r}")
    for run in runs:
        missing = [k for k in (key, "tokens", "val_loss") if not isinstance(run.get(k), (int, float))]
        if missing:
            raise ValueError(f"run {run.get('name', '?')}: missing {', '.join(missing)}")
    return (np.array([r[key] for r in runs], dtype=float), np.array([r["tokens"] for r in runs], dtype=float),
            np.array([r["val_loss"] for r in runs], dtype=float))


def fit_runs(runs: list[dict[str, Any]], *, params_kind: str = "non_embedding", **options: Any) -> LawFit:
    """fit_law over a sweep's run records, N counted as `params_kind` (non_embedding or total)."""
    N, D, L = _columns(runs, params_kind)
    fit = fit_law(N, D, L, **options)
    fit.params_kind = params_kind
    fit.runs = [str(r.get("name", i)) for i, r in enumerate(runs)]
    return fit


def predict(fit: LawFit, N: float, D: float) -> dict[str, float]:
    """Point prediction, the interval of the law itself (parameters only), and the prediction
    interval for one new run (each bootstrap law's value times a resampled fit residual, the residuals
    widened by sqrt(n / (n - 5)) for the parameters the fit used up)."""
    point = float(fit.law.loss(N, D))
    laws = np.array([law.loss(N, D) for law in fit.sample_laws()], dtype=float)
    n = len(fit.residuals)
    spread = fit.residuals * math.sqrt(n / max(n - len(PARAMETERS), 1))
    rng = np.random.default_rng(0)
    noisy = laws * np.exp(rng.choice(spread, size=len(laws))) if len(laws) else laws
    low, high = fit.interval(noisy) if len(noisy) else (math.nan, math.nan)
    law_low, law_high = fit.interval(laws) if len(laws) else (math.nan, math.nan)
    return {"predicted": point, "low": low, "high": high, "law_low": law_low, "law_high": law_high, "level": fit.level}


def compute_optimal(fit: LawFit, flops: float, family: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Compute-optimal N and D for a FLOP budget, with intervals: the closed form for C = 6 N D, and
    (given the family's buildable sizes with N and flops_per_token) the best buildable model for the
    exact FLOP count."""
    N, D = fit.law.optimal(flops)
    result: dict[str, Any] = {"flops": float(flops), "N": float(N), "D": float(D), "tokens_per_param": float(D / N),
                              "loss": float(fit.law.loss(N, D))}
    pairs = [law.optimal(flops) for law in fit.sample_laws() if law.alpha > 0 and law.beta > 0]
    if pairs:
        Ns, Ds = np.array(pairs, dtype=float).T
        result.update(N_interval=fit.interval(Ns), D_interval=fit.interval(Ds), tokens_per_param_interval=fit.interval(Ds / Ns))
    if family:
        key = PARAM_KEYS[fit.params_kind]
        sizes = np.array([row[key] for row in family], dtype=float)
        per_token = np.array([row["flops_per_token"] for row in family], dtype=float)
        tokens = flops / per_token

        def best(law: Law) -> int:
            return int(np.argmin(law.loss(sizes, tokens)))

        index = best(fit.law)
        row = family[index]
        chosen = np.array([sizes[best(law)] for law in fit.sample_laws()])
        result["family"] = {"depth": row.get("depth"), "width": row.get("width"), "N": float(sizes[index]),
                            "D": float(tokens[index]), "tokens_per_param": float(tokens[index] / sizes[index]),
                            "loss": float(fit.law.loss(sizes[index], tokens[index]))}
        if len(chosen):
            result["family"]["N_interval"] = fit.interval(chosen)
    return result


def isoflop_profiles(runs: list[dict[str, Any]], params_kind: str = "non_embedding") -> dict[str, Any]:
    """Approach 2: per FLOP budget (runs with budget_kind 'flops'), a parabola of loss against log N
    and its minimum; then N_opt = k C^a and D_opt = k' C^b through the minima inside their grids."""
    key = PARAM_KEYS[params_kind]
    groups: dict[float, list[dict[str, Any]]] = {}
    for run in runs:
        if run.get("budget_kind") == "flops" and isinstance(run.get("budget"), (int, float)):
            groups.setdefault(float(run["budget"]), []).append(run)
    profiles = []
    for budget, members in sorted(groups.items()):
        x = np.log([r[key] for r in members])
        if len(np.unique(x)) < 3:
            continue
        losses = np.array([r["val_loss"] for r in members])
        c2, c1, c0 = np.polyfit(x, losses, 2)
        profile = {"flops": budget, "runs": len(members), "curvature": float(c2), "parabola": [float(c2), float(c1), float(c0)]}
        if c2 > 0:
            best = -c1 / (2 * c2)
            slope, intercept = np.polyfit(x, np.log([r["tokens"] for r in members]), 1)
            profile.update(N=float(np.exp(best)), D=float(np.exp(intercept + slope * best)),
                           loss=float(c0 + c1 * best + c2 * best ** 2), inside=bool(x.min() <= best <= x.max()))
        profiles.append(profile)
    result: dict[str, Any] = {"profiles": profiles}
    usable = [p for p in profiles if p.get("inside")]
    if len(usable) >= 2:
        logC = np.log([p["flops"] for p in usable])
        a, _ = np.polyfit(logC, np.log([p["N"] for p in usable]), 1)
        b, _ = np.polyfit(logC, np.log([p["D"] for p in usable]), 1)
        result.update(a=float(a), b=float(b), budgets_used=len(usable))
    return result


# --------------------------------------------------------------------------------------------
# plots (standalone Figures)
# --------------------------------------------------------------------------------------------
def _figure():
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 4.5), dpi=110)
    return figure, figure.subplots()


def _save(figure: Any, path: str | Path) -> Path:
    figure.tight_layout()
    return replace_atomically(path, figure.savefig)


def _sizes(runs: list[dict[str, Any]], key: str) -> list[float]:
    return sorted({float(r[key]) for r in runs})


def plot_compute(fit: LawFit, runs: list[dict[str, Any]], path: str | Path, family: list[dict[str, Any]] | None = None) -> Path:
    """Loss against training FLOPs: each run, the law's curve for each swept size, and the
    compute-optimal frontier (the best buildable size at each budget, or the 6ND closed form)."""
    key = PARAM_KEYS[fit.params_kind]
    figure, axis = _figure()
    flops = np.array([r.get("flops") or 6 * r[key] * r["tokens"] for r in runs], dtype=float)
    grid = np.geomspace(flops.min() / 2, flops.max() * 8, 200)
    colours = {}
    for index, size in enumerate(_sizes(runs, key)):
        members = [r for r in runs if float(r[key]) == size]
        per_token = np.median([(r.get("flops") or 6 * r[key] * r["tokens"]) / r["tokens"] for r in members])
        line, = axis.plot(grid, fit.law.loss(size, grid / per_token), linewidth=1, alpha=0.7,
                          label=f"N={size:.3g}" + (f" (d{members[0]['depth']})" if "depth" in members[0] else ""))
        colours[size] = line.get_color()
        axis.scatter([(r.get("flops") or 6 * r[key] * r["tokens"]) for r in members], [r["val_loss"] for r in members],
                     color=line.get_color(), s=18, zorder=3)
    if family:
        sizes = np.array([row[key] for row in family], dtype=float)
        per_token = np.array([row["flops_per_token"] for row in family], dtype=float)
        frontier = [fit.law.loss(sizes, c / per_token).min() for c in grid]
        axis.plot(grid, frontier, "k--", linewidth=1.5, label="frontier (best buildable size)")
    else:
        N, D = fit.law.optimal(grid)
        axis.plot(grid, fit.law.loss(N, D), "k--", linewidth=1.5, label="frontier (C = 6ND)")
    axis.set_xscale("log")
    axis.set_xlabel("training FLOPs")
    axis.set_ylabel("validation loss (nats/token)")
    axis.set_title(f"L = {fit.law.E:.3f} + {fit.law.A:.3g}/N^{fit.law.alpha:.3f} + {fit.law.B:.3g}/D^{fit.law.beta:.3f}",
                   fontsize=9)
    axis.grid(alpha=0.3, which="both")
    axis.legend(fontsize=7)
    return _save(figure, path)


def plot_isoflop(fit: LawFit, runs: list[dict[str, Any]], path: str | Path, family: list[dict[str, Any]] | None = None) -> Path:
    """IsoFLOP profiles: loss against N at each FLOP budget (runs, the approach-2 parabola and its
    minimum, and the fitted law at that budget)."""
    key = PARAM_KEYS[fit.params_kind]
    iso = isoflop_profiles(runs, fit.params_kind)
    figure, axis = _figure()
    sizes = np.array([row[key] for row in family], dtype=float) if family else None
    per_token = np.array([row["flops_per_token"] for row in family], dtype=float) if family else None
    if not iso["profiles"] and sizes is not None:  # token budgets: the law's profiles at a few compute levels
        flops = np.array([r["flops"] for r in runs if r.get("flops")], dtype=float)
        span = np.geomspace(min(r[key] for r in runs) / 2, max(r[key] for r in runs) * 2, 100)
        fpt = np.exp(np.interp(np.log(span), np.log(sizes), np.log(per_token)))
        for level in np.geomspace(flops.min(), flops.max(), 4) if len(flops) else []:
            axis.plot(span, fit.law.loss(span, level / fpt), linestyle=":", label=f"law at C={level:.3g}")
    for profile in iso["profiles"]:
        members = [r for r in runs if r.get("budget_kind") == "flops" and float(r.get("budget", -1)) == profile["flops"]]
        x = np.array([r[key] for r in members], dtype=float)
        points = axis.scatter(x, [r["val_loss"] for r in members], s=18, zorder=3, label=f"C={profile['flops']:.3g}")
        colour = points.get_facecolor()[0]
        span = np.geomspace(x.min() / 1.5, x.max() * 1.5, 100)
        c2, c1, c0 = profile["parabola"]
        axis.plot(span, c0 + c1 * np.log(span) + c2 * np.log(span) ** 2, color=colour, linewidth=1, alpha=0.6)
        if sizes is not None:
            inside = (sizes >= span.min()) & (sizes <= span.max())
            fpt = np.exp(np.interp(np.log(span), np.log(sizes[inside] if inside.sum() > 1 else sizes),
                                   np.log(per_token[inside] if inside.sum() > 1 else per_token)))
            axis.plot(span, fit.law.loss(span, profile["flops"] / fpt), color=colour, linestyle=":", linewidth=1)
        if "N" in profile:
            axis.scatter([profile["N"]], [profile["loss"]], marker="*" if profile["inside"] else "x", s=90, color=colour, zorder=4)
    axis.set_xscale("log")
    axis.set_xlabel(f"parameters N ({fit.params_kind.replace('_', '-')})")
    axis.set_ylabel("validation loss (nats/token)")
    title = "IsoFLOP profiles: parabola (solid), fitted law (dotted), minimum (*)"
    if "a" in iso:
        title += f"\napproach 2: N_opt ~ C^{iso['a']:.2f}, D_opt ~ C^{iso['b']:.2f}"
    axis.set_title(title, fontsize=9)
    axis.grid(alpha=0.3, which="both")
    if axis.get_legend_handles_labels()[0]:
        axis.legend(fontsize=7)
    return _save(figure, path)


def plot_predictions(fit: LawFit, runs: list[dict[str, Any]], predictions: list[dict[str, Any]], path: str | Path) -> Path:
    """Observed against predicted loss: the fitted runs, and held-out runs with their prediction intervals."""
    key = PARAM_KEYS[fit.params_kind]
    figure, axis = _figure()
    fitted = [(float(fit.law.loss(r[key], r["tokens"])), r["val_loss"]) for r in runs]
    axis.scatter(*zip(*fitted), s=16, label="runs in the fit", color="tab:blue")
    values = [v for pair in fitted for v in pair]
    for item in predictions:
        errors = [[item["predicted"] - item["low"]], [item["high"] - item["predicted"]]]
        observed = item.get("observed")
        if observed is None:
            axis.errorbar([item["predicted"]], [item["predicted"]], xerr=errors, fmt="o", mfc="none", color="tab:red",
                          capsize=3, label=f"{item['name']} (not trained yet)")
            values.append(item["predicted"])
        else:
            axis.errorbar([item["predicted"]], [observed], xerr=errors, fmt="s", color="tab:red", capsize=3,
                          label=f"{item['name']} (held out): error {100 * (observed / item['predicted'] - 1):+.1f}%")
            values += [item["predicted"], observed]
        values += [item["low"], item["high"]]
    low, high = min(values), max(values)
    pad = 0.03 * (high - low or 1)
    axis.plot([low - pad, high + pad], [low - pad, high + pad], "k--", linewidth=1, label="observed = predicted")
    axis.set_xlabel("predicted loss")
    axis.set_ylabel("observed loss")
    axis.set_title(f"predictions ({100 * fit.level:.0f}% prediction intervals)", fontsize=9)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7)
    return _save(figure, path)


# --------------------------------------------------------------------------------------------
# markdown
# --------------------------------------------------------------------------------------------
def _g(value: Any, digits: int = 4) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}g}"


def _span(pair: Any, digits: int = 3) -> str:
    return f"[{_g(pair[0], digits)}, {_g(pair[1], digits)}]" if pair else "-"


def _heading(title: str, header: list[str]) -> list[str]:
    return [f"## {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]


def summary_markdown(fit: LawFit, runs: list[dict[str, Any]], *, optimal: list[dict[str, Any]],
                     isoflop: dict[str, Any], predictions: list[dict[str, Any]] = (), title: str = "Scaling laws",
                     plots: list[str] = ()) -> str:
    """A markdown page: the law with intervals against published values, allocation, IsoFLOP,
    held-out predictions and the runs (picked up by `lmforge report`)."""
    level = f"{100 * fit.level:.0f}%"
    intervals = fit.intervals()
    lines = [f"# {title}", "",
             f"L(N, D) = E + A / N^alpha + B / D^beta fitted to {len(fit.runs)} runs (N = {fit.params_kind.replace('_', '-')} "
             f"parameters, D = training tokens; Huber loss on log-loss, delta {fit.delta:g}; {len(fit.samples)} bootstrap "
             f"resamples of the runs for {level} intervals).", "",
             f"| parameter | estimate | {level} interval | Chinchilla (Hoffmann et al.) | Epoch AI (Besiroglu et al.) |",
             "|---|---|---|---|---|"]
    for name in PARAMETERS:
        lines.append(f"| {name} | {_g(getattr(fit.law, name))} | {_span(intervals[name], 4)} | {_g(CHINCHILLA[name])} | "
                     f"{_g(EPOCH_AI[name])} |")
    a = fit.law.beta / (fit.law.alpha + fit.law.beta)
    lines += ["", f"Compute-optimal exponents (C = 6ND): N_opt ~ C^{a:.3f}, D_opt ~ C^{1 - a:.3f} "
              f"(Chinchilla's law: C^{CHINCHILLA['beta'] / (CHINCHILLA['alpha'] + CHINCHILLA['beta']):.3f}; "
              f"Epoch AI's: C^{EPOCH_AI['beta'] / (EPOCH_AI['alpha'] + EPOCH_AI['beta']):.3f}). Published values come "
              f"from 10^18-10^24 FLOP runs on web text with BPE tokens and total parameter counts; a small sweep measures "
              f"other units (its own tokens, its own N), a narrow range of N and D, and fixed per-size hyperparameters, "
              f"so its exponents and constants differ.", ""]
    if optimal:
        lines += _heading("Compute-optimal allocation", ["FLOPs", f"N_opt ({level})", f"D_opt ({level})",
                                                          f"tokens/param ({level})", "loss", "best buildable size"])
        for row in optimal:
            fam = row.get("family")
            size = (f"depth {fam['depth']}: N={_g(fam['N'], 3)}, D={_g(fam['D'], 3)}, {_g(fam['tokens_per_param'], 3)} tok/param, "
                    f"N {_span(fam.get('N_interval'))}") if fam else "-"
            lines.append(f"| {_g(row['flops'], 3)} | {_g(row['N'], 3)} {_span(row.get('N_interval'))} | "
                         f"{_g(row['D'], 3)} {_span(row.get('D_interval'))} | {_g(row['tokens_per_param'], 3)} "
                         f"{_span(row.get('tokens_per_param_interval'))} | {_g(row['loss'])} | {size} |")
        lines.append("")
    if isoflop.get("profiles"):
        lines += _heading("IsoFLOP profiles (approach 2)", ["FLOPs", "runs", "N at the minimum", "D there", "loss there",
                                                             "inside the grid"])
        for p in isoflop["profiles"]:
            lines.append(f"| {_g(p['flops'], 3)} | {p['runs']} | {_g(p.get('N'), 3)} | {_g(p.get('D'), 3)} | {_g(p.get('loss'))} | "
                         f"{'yes' if p.get('inside') else 'no'} |")
        if "a" in isoflop:
            lines += ["", f"Approach 2: N_opt ~ C^{isoflop['a']:.3f}, D_opt ~ C^{isoflop['b']:.3f} "
                      f"(from {isoflop['budgets_used']} budgets); approach 3 above: C^{a:.3f}, C^{1 - a:.3f}."]
        else:
            lines += ["", "Approach 2 needs at least 2 budgets whose parabola has its minimum inside the swept sizes."]
        lines.append("")
    if predictions:
        lines += _heading("Held-out predictions", ["run", "N", "D", "FLOPs", "x largest swept", f"predicted ({level} interval)",
                                                    "observed", "error", "inside"])
        for item in predictions:
            observed = item.get("observed")
            error = f"{100 * (observed / item['predicted'] - 1):+.2f}%" if observed is not None else "-"
            inside = ("yes" if item["low"] <= observed <= item["high"] else "no") if observed is not None else "-"
            lines.append(f"| {item['name']} | {_g(item['N'], 3)} | {_g(item['D'], 3)} | {_g(item.get('flops'), 3)} | "
                         f"{_g(item.get('compute_ratio'), 3)} | {item['predicted']:.4f} [{item['low']:.4f}, {item['high']:.4f}] | "
                         f"{_g(observed)} | {error} | {inside} |")
        lines.append("")
    key = PARAM_KEYS[fit.params_kind]
    lines += _heading("Runs", ["run", "N (non-embedding)", "N (total)", "tokens", "FLOPs (exact)", "FLOPs (6ND)", "val loss", "law",
                               "bits/byte", "train time"])
    for run in runs:
        lines.append(f"| {run.get('name', '-')} | {_g(run.get('params_non_embedding'), 4)} | {_g(run.get('params'), 4)} | "
                     f"{_g(run['tokens'], 4)} | {_g(run.get('flops'), 3)} | {_g(run.get('flops_6nd'), 3)} | "
                     f"{run['val_loss']:.4f} | {float(fit.law.loss(run[key], run['tokens'])):.4f} | {_g(run.get('val_bpb'))} | "
                     f"{_g(run.get('train_seconds'), 4)} s |")
    if plots:
        lines += [""] + [f"![{name}]({name})" for name in plots]
    return "\n".join(lines) + "\n"


def report_section(path: Path, root: Path) -> str:
    """A scaling summary inside a report card of `root`: headings one level down, image links
    made relative to the report's folder."""
    text = path.read_text(encoding="utf-8")
    try:
        prefix = path.parent.relative_to(root).as_posix()
    except ValueError:
        prefix = path.parent.as_posix()
    prefix = "" if prefix in ("", ".") else prefix + "/"
    lines = []
    for line in text.splitlines():
        if line.startswith("#"):
            line = "#" + line
        if line.startswith("![") and "](" in line and prefix:
            label, target = line.split("](", 1)
            line = f"{label}]({prefix}{target}"
        lines.append(line)
    return "\n".join(lines)


def write_outputs(folder: str | Path, fit: LawFit, runs: list[dict[str, Any]], *, optimal: list[dict[str, Any]],
                  isoflop: dict[str, Any], predictions: list[dict[str, Any]] = (),
                  family: list[dict[str, Any]] | None = None, title: str = "Scaling laws") -> list[Path]:
    """The three plots and the markdown summary, written into `folder`."""
    folder = Path(folder)
    written = [plot_compute(fit, runs, folder / PLOTS[0], family), plot_isoflop(fit, runs, folder / PLOTS[1], family),
               plot_predictions(fit, runs, list(predictions), folder / PLOTS[2])]
    text = summary_markdown(fit, runs, optimal=optimal, isoflop=isoflop, predictions=list(predictions), title=title,
                            plots=[path.name for path in written])
    written.append(write_text_atomically(folder / SUMMARY_FILE, text))
    return written
