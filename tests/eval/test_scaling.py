"""Scaling-law fits: recovery of a known law, gradients, allocation, IsoFLOP, predictions, plots, summary."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.optimize import check_grad, minimize_scalar

from lmforge.eval.report import build_report
from lmforge.eval.scaling import (PLOTS, SUMMARY_FILE, Law, LawFit, _objective, compute_optimal, fit_law, fit_runs,
                                  isoflop_profiles, predict, write_outputs)

TRUE = Law(E=1.2, A=300.0, B=900.0, alpha=0.4, beta=0.45)


def synthetic(noise: float = 0.005, seed: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """5 sizes x 4 token counts from TRUE, with multiplicative noise."""
    rng = np.random.default_rng(seed)
    N = np.repeat(np.geomspace(1e5, 3e6, 5), 4)
    D = np.tile(np.geomspace(2e6, 5e7, 4), 5)
    return N, D, TRUE.loss(N, D) * np.exp(rng.normal(0, noise, len(N)))


@pytest.fixture(scope="module")
def fitted() -> LawFit:
    return fit_law(*synthetic(), bootstrap=200, seed=0)


def test_fit_recovers_a_known_law_within_its_bootstrap_intervals(fitted):
    intervals = fitted.intervals()
    for name in ("E", "A", "B", "alpha", "beta"):
        low, high = intervals[name]
        assert low <= getattr(TRUE, name) <= high, (name, getattr(TRUE, name), (low, high))
        assert low <= getattr(fitted.law, name) <= high
    # ... and the intervals are informative, not just wide
    assert intervals["alpha"][1] - intervals["alpha"][0] < 0.1 and intervals["beta"][1] - intervals["beta"][0] < 0.15
    assert abs(fitted.law.E - TRUE.E) < 0.1 and abs(fitted.law.alpha - TRUE.alpha) < 0.03
    assert fitted.samples.shape == (200, 5) and len(fitted.residuals) == 20
    assert np.std(fitted.residuals) == pytest.approx(0.005, rel=0.5)  # the noise level comes back


def test_noiseless_fit_is_exact():
    N = np.repeat(np.geomspace(1e5, 3e6, 4), 3)
    D = np.tile(np.geomspace(2e6, 5e7, 3), 4)
    fit = fit_law(N, D, TRUE.loss(N, D), bootstrap=3)
    for name in ("E", "A", "B", "alpha", "beta"):
        assert getattr(fit.law, name) == pytest.approx(getattr(TRUE, name), rel=1e-3)


def test_objective_gradient_matches_finite_differences():
    N, D, L = synthetic()
    args = (np.log(N), np.log(D), np.log(L), np.arange(1.0, 21.0) % 3, 1e-3)  # uneven weights, as in a bootstrap
    for theta in ([5.0, 7.0, 0.2, 0.4, 0.5], [3.0, 9.0, -0.5, 0.3, 0.6]):
        error = check_grad(lambda t: _objective(t, *args)[0], lambda t: _objective(t, *args)[1], np.array(theta), epsilon=1e-7)
        assert error < 1e-4 * max(1.0, np.linalg.norm(_objective(np.array(theta), *args)[1]))


def test_too_few_runs_or_sizes_are_rejected():
    with pytest.raises(ValueError, match="4 runs: fewer than the 5 parameters"):
        fit_law([1e5, 2e5, 3e5, 4e5], [1e6, 2e6, 3e6, 4e6], [3.0, 2.9, 2.8, 2.7])
    with pytest.raises(ValueError, match="at least 2 different model sizes"):
        fit_law([1e5] * 6, np.geomspace(1e6, 1e7, 6), np.linspace(3, 2, 6))
    with pytest.raises(ValueError, match="run r1: missing params_non_embedding"):
        fit_runs([{"name": "r1", "tokens": 10, "val_loss": 2.0}] * 6)


def test_compute_optimal_matches_a_brute_force_search(fitted):
    C = 1e16
    result = compute_optimal(fitted, C)
    law = fitted.law
    best = minimize_scalar(lambda x: law.loss(math.exp(x), C / (6 * math.exp(x))), bounds=(5, 30), method="bounded",
                           options={"xatol": 1e-10})
    assert result["N"] == pytest.approx(math.exp(best.x), rel=1e-4)
    assert result["D"] == pytest.approx(C / 6 / result["N"]) and result["tokens_per_param"] == pytest.approx(result["D"] / result["N"])
    low, high = result["N_interval"]
    assert low < result["N"] < high
    true_N = TRUE.optimal(C)[0]
    assert low <= true_N <= high
    # a family of buildable sizes: the best one is the argmin of the law at each size's exact FLOPs
    family = [{"depth": d, "params_non_embedding": 12 * (64 * d) ** 2 * d, "flops_per_token": 6 * 12 * (64 * d) ** 2 * d * 1.2}
              for d in range(1, 40)]
    chosen = compute_optimal(fitted, C, family)["family"]
    losses = [law.loss(row["params_non_embedding"], C / row["flops_per_token"]) for row in family]
    assert chosen["depth"] == family[int(np.argmin(losses))]["depth"]
    assert chosen["D"] == pytest.approx(C / family[chosen["depth"] - 1]["flops_per_token"])


def test_isoflop_profiles_find_the_law_optimum():
    runs = []
    for C in (1e14, 1e15, 1e16):
        N_opt = TRUE.optimal(C)[0]
        for factor in (0.25, 0.5, 1, 2, 4):
            N = N_opt * factor
            runs.append({"name": f"{C:g}-{factor}", "params_non_embedding": N, "tokens": C / (6 * N),
                         "val_loss": float(TRUE.loss(N, C / (6 * N))), "budget": C, "budget_kind": "flops", "flops": C})
    iso = isoflop_profiles(runs)
    assert [p["inside"] for p in iso["profiles"]] == [True, True, True]
    for profile in iso["profiles"]:
        assert profile["N"] == pytest.approx(TRUE.optimal(profile["flops"])[0], rel=0.1)  # a parabola in log N
    assert iso["a"] == pytest.approx(TRUE.beta / (TRUE.alpha + TRUE.beta), abs=0.02)
    assert iso["b"] == pytest.approx(TRUE.alpha / (TRUE.alpha + TRUE.beta), abs=0.02)
    # token budgets are not IsoFLOP groups
    assert isoflop_profiles([{**r, "budget_kind": "tokens"} for r in runs])["profiles"] == []


def test_prediction_interval_covers_a_held_out_run(fitted):
    N, D = 6e6, 1e8  # twice the largest N, beyond the largest D
    result = predict(fitted, N, D)
    truth = float(TRUE.loss(N, D))
    assert result["low"] <= truth <= result["high"]
    assert result["low"] <= result["law_low"] <= result["predicted"] <= result["law_high"] <= result["high"]
    assert abs(result["predicted"] / truth - 1) < 0.01
    # the saved fit predicts the same after a round trip through JSON-able data
    again = LawFit.from_dict(fitted.to_dict())
    assert predict(again, N, D) == pytest.approx(result)


def test_plots_summary_and_report(fitted, tmp_path):
    import matplotlib.pyplot as plt

    figures_before = plt.get_fignums()
    runs = [{"name": f"d{d}/c{C:g}", "depth": d, "params_non_embedding": n, "params": n + 1000, "tokens": C / (7 * n),
             "flops": C, "flops_6nd": 6 * n * C / (7 * n), "budget": C, "budget_kind": "flops",
             "val_loss": float(TRUE.loss(n, C / (7 * n))), "val_bpb": 1.0, "train_seconds": 1.0}
            for d, n in ((2, 2e5), (3, 6e5), (4, 1.5e6)) for C in (1e14, 1e15)]
    family = [{"depth": d, "width": 64 * d, "params": n + 1000, "params_non_embedding": n, "flops_per_token": 7 * n}
              for d, n in ((1, 5e4), (2, 2e5), (3, 6e5), (4, 1.5e6), (5, 3e6))]
    prediction = {"name": "holdout/d5", "N": 3e6, "D": 2e15 / 2.1e7, "flops": 2e15, "compute_ratio": 2.0,
                  **predict(fitted, 3e6, 2e15 / 2.1e7), "observed": float(TRUE.loss(3e6, 2e15 / 2.1e7))}
    written = write_outputs(tmp_path / "sweep", fitted, runs, optimal=[compute_optimal(fitted, 1e16, family)],
                            isoflop=isoflop_profiles(runs), predictions=[prediction], family=family, title="test sweep")
    assert [p.name for p in written] == [*PLOTS, SUMMARY_FILE]
    for path in written[:3]:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000
    assert plt.get_fignums() == figures_before  # standalone Figures: pyplot's state untouched
    text = (tmp_path / "sweep" / SUMMARY_FILE).read_text()
    assert text.startswith("# test sweep")
    assert "| alpha | 0.39" in text and "| 0.34 | 0.3478 |" in text  # our estimate beside Chinchilla's and Epoch AI's
    assert "| holdout/d5 |" in text and "| yes |" in text  # the held-out run, inside its interval
    assert "## IsoFLOP profiles (approach 2)" in text and "best buildable size" in text
    # `lmforge report` on the parent folder includes the summary, headings one level down, links rebased
    report = build_report(tmp_path)
    assert "## test sweep" in report and "### Compute-optimal allocation" in report
    assert "![scaling_compute.png](sweep/scaling_compute.png)" in report
