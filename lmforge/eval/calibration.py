"""Is the model's confidence worth anything? Calibration, selective answering, self-consistency.

Multiple choice (from the runner's per-item log-likelihoods, `results["runs"][k]["samples"]`):
  confidence = the softmax over the choices' log-likelihoods, taken at the predicted choice;
  expected calibration error (ECE) = sum over equal-width confidence bins of
      (items in the bin / all items) x |accuracy in the bin - mean confidence in the bin|
  (Guo et al. 2017, 10 bins), drawn as a reliability diagram.
Selective answering: answer only when the confidence reaches a threshold; the accuracy-coverage
  curve sorts items by confidence and gives the accuracy of the most confident k items for every
  k; its area (mean accuracy over coverages) summarises it, 1 for a perfect ranking.
Generation (self-consistency, Wang et al. 2023): sample several answers per question; the share
  of samples agreeing with the most common extracted answer is the confidence, the most common
  answer is the prediction; the same ECE and curve, plus the AUROC of agreement for telling right
  from wrong answers.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lmforge.core.plotting import new_figure, save_figure

__all__ = ["auroc", "calibration_report", "choice_confidences", "expected_calibration_error",
           "plot_reliability", "plot_selective", "selective_curve", "self_consistency_report"]


def _softmax(logprobs: Sequence[float]) -> list[float]:
    top = max(logprobs)
    weights = [math.exp(lp - top) for lp in logprobs]
    total = sum(weights)
    return [w / total for w in weights]


def choice_confidences(samples: Sequence[dict[str, Any]], normalized: bool = False,
                       lengths: Sequence[Sequence[int]] | None = None) -> tuple[list[float], list[bool]]:
    """(confidence of the predicted choice, whether it is right) per multiple-choice item. With
    `normalized`, the log-likelihoods are divided by the choices' `lengths` first (acc_norm)."""
    confidences, correct = [], []
    for index, sample in enumerate(samples):
        logprobs = list(sample["logprobs"])
        if normalized:
            if lengths is None:
                raise ValueError("normalized confidences need the choices' lengths")
            logprobs = [lp / max(1, n) for lp, n in zip(logprobs, lengths[index])]
        probabilities = _softmax(logprobs)
        prediction = max(range(len(probabilities)), key=probabilities.__getitem__)
        confidences.append(probabilities[prediction])
        correct.append(prediction == sample["gold"])
    return confidences, correct


def expected_calibration_error(confidences: Sequence[float], correct: Sequence[bool],
                               bins: int = 10) -> tuple[float, list[dict[str, float]]]:
    """ECE over `bins` equal-width bins of [0, 1] and the bins (lower, upper, count, confidence,
    accuracy); a confidence of exactly 1 falls in the last bin."""
    if len(confidences) != len(correct) or not confidences:
        raise ValueError("ECE needs as many confidences as outcomes, at least one")
    if bins < 1:
        raise ValueError(f"bins must be positive, got {bins}")
    members: list[list[int]] = [[] for _ in range(bins)]
    for i, confidence in enumerate(confidences):
        if not 0.0 <= confidence <= 1.0:
            raise ValueError(f"confidence {confidence} is outside [0, 1]")
        members[min(int(confidence * bins), bins - 1)].append(i)
    table, ece, n = [], 0.0, len(confidences)
    for b, items in enumerate(members):
        row = {"lower": b / bins, "upper": (b + 1) / bins, "count": len(items), "confidence": float("nan"),
               "accuracy": float("nan")}
        if items:
            row["confidence"] = sum(confidences[i] for i in items) / len(items)
            row["accuracy"] = sum(1.0 for i in items if correct[i]) / len(items)
            ece += len(items) / n * abs(row["accuracy"] - row["confidence"])
        table.append(row)
    return ece, table


def selective_curve(confidences: Sequence[float], correct: Sequence[bool],
                    thresholds: Sequence[float] = (0.0, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)) -> dict[str, Any]:
    """Accuracy against coverage (most confident first), its area, and what answering only at
    confidence >= t gives for each threshold t."""
    order = sorted(range(len(confidences)), key=lambda i: -confidences[i])
    hits, coverage, accuracy = 0, [], []
    for k, i in enumerate(order, 1):
        hits += bool(correct[i])
        coverage.append(k / len(order))
        accuracy.append(hits / k)
    at = []
    for t in thresholds:
        kept = [i for i in range(len(confidences)) if confidences[i] >= t]
        at.append({"threshold": t, "coverage": len(kept) / len(confidences),
                   "accuracy": sum(1.0 for i in kept if correct[i]) / len(kept) if kept else float("nan")})
    return {"coverage": coverage, "accuracy": accuracy, "area": sum(accuracy) / len(accuracy), "thresholds": at}


def auroc(scores: Sequence[float], positive: Sequence[bool]) -> float:
    """Probability that a random positive scores above a random negative (ties count half)."""
    pos = [s for s, p in zip(scores, positive) if p]
    neg = [s for s, p in zip(scores, positive) if not p]
    if not pos or not neg:
        return float("nan")
    wins = sum((p > q) + 0.5 * (p == q) for p in pos for q in neg)
    return wins / (len(pos) * len(neg))


def calibration_report(confidences: Sequence[float], correct: Sequence[bool], bins: int = 10) -> dict[str, Any]:
    ece, table = expected_calibration_error(confidences, correct, bins)
    curve = selective_curve(confidences, correct)
    return {"ece": ece, "bins": table, "n": len(confidences), "accuracy": sum(map(bool, correct)) / len(correct),
            "mean_confidence": sum(confidences) / len(confidences), "auroc": auroc(confidences, correct),
            "selective": curve}


def self_consistency_report(answers: Sequence[Sequence[str]], gold: Sequence[str], same: Any,
                            bins: int = 10) -> dict[str, Any]:
    """`answers[i]` are the extracted answers of question i's samples; `same(answer, gold)` says
    whether an answer is right. The majority answer is the prediction, its share the confidence."""
    confidences, correct, items = [], [], []
    for sampled, reference in zip(answers, gold):
        if not sampled:
            raise ValueError("self-consistency needs at least one sample per question")
        counts = Counter(a.strip() for a in sampled)
        majority, votes = max(counts.items(), key=lambda item: (item[1], item[0] != ""))
        confidences.append(votes / len(sampled))
        correct.append(bool(majority) and bool(same(majority, reference)))
        items.append({"majority": majority, "agreement": votes / len(sampled), "correct": correct[-1],
                      "sample_accuracy": sum(1 for a in sampled if same(a, reference)) / len(sampled)})
    report = calibration_report(confidences, correct, bins)
    report["samples_per_question"] = len(answers[0]) if answers else 0
    report["items"] = items
    return report


def plot_reliability(report: dict[str, Any], path: str | os.PathLike, title: str = "") -> Path:
    """Reliability diagram: accuracy per confidence bin against the diagonal, bin counts at the foot."""
    figure, axis = new_figure(5.5, 4.6)
    bins = report["bins"]
    width = bins[0]["upper"] - bins[0]["lower"]
    filled = [b for b in bins if b["count"]]
    axis.bar([b["lower"] for b in filled], [b["accuracy"] for b in filled], width=width, align="edge",
             edgecolor="black", alpha=0.75, label="accuracy")
    axis.bar([b["lower"] for b in filled], [b["confidence"] - b["accuracy"] for b in filled],
             bottom=[b["accuracy"] for b in filled], width=width, align="edge", color="red", alpha=0.25,
             label="gap to mean confidence")
    axis.plot([0, 1], [0, 1], "k--", linewidth=1, label="perfect calibration")
    for b in filled:
        axis.text(b["lower"] + width / 2, 0.02, str(b["count"]), ha="center", fontsize=7)
    axis.set_xlim(0, 1)
    axis.set_ylim(0, 1)
    axis.set_xlabel("confidence (bin counts at the foot)")
    axis.set_ylabel("accuracy")
    axis.set_title(f"{title} reliability, ECE {report['ece']:.3f}".strip())
    axis.legend(loc="upper left", fontsize=8)
    return save_figure(figure, path)


def plot_selective(report: dict[str, Any], path: str | os.PathLike, title: str = "") -> Path:
    """Accuracy-coverage curve of selective answering (most confident answered first)."""
    figure, axis = new_figure(5.5, 4.6)
    curve = report["selective"]
    axis.plot(curve["coverage"], curve["accuracy"], linewidth=1.5, label=f"area {curve['area']:.3f}")
    axis.axhline(report["accuracy"], color="grey", linestyle=":", label=f"answer all ({report['accuracy']:.3f})")
    axis.set_xlim(0, 1)
    axis.set_ylim(0, 1.02)
    axis.set_xlabel("coverage (share answered, most confident first)")
    axis.set_ylabel("accuracy of the answered")
    axis.set_title(f"{title} selective answering".strip())
    axis.legend(loc="lower left", fontsize=8)
    axis.grid(alpha=0.3)
    return save_figure(figure, path)
