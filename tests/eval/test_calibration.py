"""Calibration: ECE and bins by hand, selective answering, AUROC, self-consistency, plots."""

from __future__ import annotations

import math

import pytest

from lmforge.eval.calibration import (auroc, calibration_report, choice_confidences, expected_calibration_error,
                                      plot_reliability, plot_selective, selective_curve, self_consistency_report)


def test_ece_by_hand():
    confidences = [0.95, 0.9, 0.85, 0.6, 0.55, 0.3, 1.0]
    correct = [True, True, False, True, False, False, True]
    ece, bins = expected_calibration_error(confidences, correct, bins=4)
    # bins [0,.25) [.25,.5) [.5,.75) [.75,1]: {} {0.3:F} {0.6:T,0.55:F} {0.95:T,0.9:T,0.85:F,1.0:T}
    expected = (1 / 7) * abs(0 - 0.3) + (2 / 7) * abs(0.5 - 0.575) + (4 / 7) * abs(0.75 - 0.925)
    assert ece == pytest.approx(expected)
    assert [b["count"] for b in bins] == [0, 1, 2, 4] and math.isnan(bins[0]["accuracy"])
    with pytest.raises(ValueError):
        expected_calibration_error([1.2], [True])


def test_choice_confidences_are_softmax_of_logprobs():
    samples = [{"logprobs": [math.log(0.2), math.log(0.6), math.log(0.2)], "gold": 1},
               {"logprobs": [-1.0, -1.0 + math.log(3)], "gold": 0}]
    confidences, correct = choice_confidences(samples)
    assert confidences == pytest.approx([0.6, 0.75]) and correct == [True, False]
    normalized, _ = choice_confidences(samples, normalized=True, lengths=[[1, 1, 1], [1, 10]])
    assert normalized[1] == pytest.approx(1 / (1 + math.exp(-1 - (-1 + math.log(3)) / 10)))  # choice 1 now wins


def test_selective_curve_and_auroc():
    curve = selective_curve([0.9, 0.8, 0.4, 0.2], [True, False, True, False], thresholds=(0.5,))
    assert curve["accuracy"] == pytest.approx([1.0, 0.5, 2 / 3, 0.5])
    assert curve["area"] == pytest.approx((1 + 0.5 + 2 / 3 + 0.5) / 4)
    assert curve["thresholds"] == [{"threshold": 0.5, "coverage": 0.5, "accuracy": 0.5}]
    assert auroc([0.9, 0.8, 0.4, 0.2], [True, False, True, False]) == pytest.approx(3 / 4)
    assert auroc([0.5, 0.5], [True, False]) == 0.5 and math.isnan(auroc([1.0], [True]))


def test_self_consistency_majority_and_agreement():
    answers = [["4", "4", "5"], ["7", "8", "9"], ["", "", "3"]]
    report = self_consistency_report(answers, ["4", "9", "3"], lambda a, g: a == g, bins=2)
    items = report["items"]
    assert [i["majority"] for i in items] == ["4", "7", ""]  # a three-way tie goes to the first answer
    assert [i["correct"] for i in items] == [True, False, False]  # no extracted answer is never right
    assert [i["agreement"] for i in items] == pytest.approx([2 / 3, 1 / 3, 2 / 3])
    assert items[1]["sample_accuracy"] == pytest.approx(1 / 3) and report["accuracy"] == pytest.approx(1 / 3)
    assert report["samples_per_question"] == 3


def test_plots_are_written(tmp_path):
    report = calibration_report([0.9, 0.7, 0.6, 0.3], [True, True, False, False])
    assert plot_reliability(report, tmp_path / "r.png").stat().st_size > 1000
    assert plot_selective(report, tmp_path / "s.png").stat().st_size > 1000
