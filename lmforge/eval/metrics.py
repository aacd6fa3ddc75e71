"""Text-similarity metrics through the libraries the field uses, with bootstrap confidence intervals.

    rouge   ROUGE-1, ROUGE-2, ROUGE-L F-measure per item (Google's `rouge-score`, Porter stemming),
            averaged over items; scale 0..1 as the library reports it.
    bleu    corpus BLEU (`sacrebleu`, its default 13a tokenization); scale 0..100.
    chrf    corpus chrF (`sacrebleu`, character 6-grams, beta 2); scale 0..100.

Values are the libraries' own on the same strings. Intervals are percentile bootstrap 95%
intervals: items are resampled with replacement and the statistic recomputed (the mean for
per-item scores; for BLEU and chrF the corpus score from the resampled sentences' statistics).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

__all__ = ["SIMILARITY_METRICS", "bleu", "bootstrap_ci", "chrf", "require_metric", "rouge", "similarity_metrics"]

SIMILARITY_METRICS = ("rouge", "bleu", "chrf")
ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")


def _require(module: str, package: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ModuleNotFoundError:
        raise ValueError(f"this metric needs the `{package}` package: pip install 'lmforge[eval]' "
                         f"(or pip install {package})") from None


_PACKAGES = {"rouge": ("rouge_score.rouge_scorer", "rouge-score"), "bleu": ("sacrebleu", "sacrebleu"),
             "chrf": ("sacrebleu", "sacrebleu")}


def require_metric(metric: str) -> None:
    """The one-line error of a missing package for `metric` (rouge, bleu, chrf), raised before any
    answer is generated rather than after; other metrics need nothing beyond lmforge."""
    if metric in _PACKAGES:
        _require(*_PACKAGES[metric])


def bootstrap_ci(values: Sequence[float] | None = None, *, statistic: Callable[[np.ndarray], float] | None = None,
                 n: int | None = None, resamples: int = 1000, alpha: float = 0.05, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval. Either `values` (the statistic is their mean) or a
    `statistic(indices)` over `n` items. With fewer than two items the interval is (nan, nan)."""
    if values is not None:
        data = np.asarray(values, dtype=np.float64)
        n = len(data)
    elif statistic is None or n is None:
        raise ValueError("bootstrap_ci needs values, or a statistic and the number of items")
    if resamples < 1 or not 0 < alpha < 1:
        raise ValueError(f"bootstrap needs resamples >= 1 and 0 < alpha < 1, got {resamples}, {alpha}")
    if n < 2:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    indices = rng.integers(0, n, size=(resamples, n))
    if values is not None:
        stats = data[indices].mean(axis=1)
    else:
        stats = np.array([statistic(row) for row in indices])
    low, high = np.quantile(stats, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


def _check_pairs(predictions: Sequence[str], references: Sequence[str]) -> None:
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    if not all(isinstance(s, str) for s in list(predictions) + list(references)):
        raise ValueError("predictions and references must be strings")


def rouge(predictions: Sequence[str], references: Sequence[str]) -> dict[str, list[float]]:
    """Per-item ROUGE F-measures {"rouge1": [...], "rouge2": [...], "rougeL": [...]}."""
    _check_pairs(predictions, references)
    rouge_scorer = _require("rouge_score.rouge_scorer", "rouge-score")
    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
    scores = [scorer.score(reference, prediction) for prediction, reference in zip(predictions, references)]
    return {name: [s[name].fmeasure for s in scores] for name in ROUGE_TYPES}


def bleu(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Corpus BLEU, one reference per item."""
    _check_pairs(predictions, references)
    sacrebleu = _require("sacrebleu", "sacrebleu")
    return float(sacrebleu.corpus_bleu(list(predictions), [list(references)]).score)


def chrf(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Corpus chrF, one reference per item."""
    _check_pairs(predictions, references)
    sacrebleu = _require("sacrebleu", "sacrebleu")
    return float(sacrebleu.corpus_chrf(list(predictions), [list(references)]).score)


def similarity_metrics(metric: str, predictions: Sequence[str], references: Sequence[str], *,
                       resamples: int = 1000, seed: int = 0) -> dict[str, Any]:
    """The metrics a task asks for, each with a 95% bootstrap interval (`NAME_ci`).

    rouge: rouge1, rouge2, rougeL (headline rougeL). bleu or chrf: both corpus scores (headline
    the one asked for); per-item sentence scores are not averaged, as corpus BLEU is not a mean."""
    if metric not in SIMILARITY_METRICS:
        raise ValueError(f"unknown similarity metric {metric!r}; choose one of {', '.join(SIMILARITY_METRICS)}")
    _check_pairs(predictions, references)
    if not predictions:
        raise ValueError("no predictions to score")
    out: dict[str, Any] = {}
    if metric == "rouge":
        for name, values in rouge(predictions, references).items():
            out[name] = float(np.mean(values))
            out[f"{name}_ci"] = list(bootstrap_ci(values, resamples=resamples, seed=seed))
        return out
    sacrebleu = _require("sacrebleu", "sacrebleu")
    predictions, references = list(predictions), list(references)
    for name, scorer in (("bleu", sacrebleu.metrics.BLEU()), ("chrf", sacrebleu.metrics.CHRF())):
        out[name] = float(scorer.corpus_score(predictions, [references]).score)
        out[f"{name}_ci"] = list(_corpus_ci(scorer, predictions, references, resamples, seed))
    return out


def _corpus_ci(scorer: Any, predictions: list[str], references: list[str], resamples: int,
               seed: int) -> tuple[float, float]:
    """Bootstrap interval of a corpus score from its per-sentence sufficient statistics (n-gram
    matches and counts), summed over each resample: what sacrebleu's own significance tests do."""
    stats = np.asarray(scorer._extract_corpus_statistics(predictions, [references]), dtype=np.float64)
    return bootstrap_ci(statistic=lambda rows: scorer._compute_score_from_stats(stats[rows].sum(0)).score,
                        n=len(predictions), resamples=resamples, seed=seed)
