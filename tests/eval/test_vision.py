"""The image-qa task: evaluate_shapes' question scoring as an `lmforge eval` results file, checked
against accuracies and chance levels counted by hand from the data files."""

from __future__ import annotations

import json
from collections import Counter

import pytest

import lmforge.eval.vision as vision_eval
from lmforge.data.shapes import ATTRIBUTES, COUNTS, QUESTIONS, write_shapes_dataset
from lmforge.eval.vision import evaluate_shapes, image_qa_results


def fake_answer(vlm, tokenizer, prompt, **options):
    """'Red.' to the colour question, 'one' to the count question, nonsense to the rest."""
    question = prompt[-1]["content"][-1]["text"]
    reply = {QUESTIONS["colour"]: "Red.", QUESTIONS["count"]: " one"}.get(question, "a picture")
    return reply, 0, 0


def test_image_qa_accuracy_and_chance_per_kind_by_hand(tmp_path, monkeypatch):
    data = write_shapes_dataset(tmp_path / "data", train=1, test=20, heldout=8, image_size=24, seed=3)
    monkeypatch.setattr(vision_eval, "answer_prompt", fake_answer)
    results = image_qa_results(None, None, data, limit=15)
    assert results["lmforge_eval"] == 1 and results["task"] == "image-qa" and results["primary_metric"] == "acc"
    assert [run["split"] for run in results["runs"]] == ["test", "heldout"]
    for run, pictures in zip(results["runs"], (15, 8)):  # heldout has only 8: --limit takes what there is
        scenes = [json.loads(line)["scene"] for line in (data / f"{run['split']}-captions.jsonl").read_text().splitlines()]
        scenes = scenes[:pictures]
        truths = {"colour": [s["colour"] for s in scenes], "shape": [s["shape"] for s in scenes],
                  "count": [COUNTS[s["count"] - 1] for s in scenes], "position": [s["position"] for s in scenes]}
        metrics = run["metrics"]
        assert run["pictures"] == pictures and run["n"] == 4 * pictures
        assert run["n_per_kind"] == dict.fromkeys(ATTRIBUTES, pictures)
        assert metrics["acc_colour"] == round(truths["colour"].count("red") / pictures, 4)
        assert metrics["acc_count"] == round(truths["count"].count("one") / pictures, 4)
        assert metrics["acc_shape"] == metrics["acc_position"] == 0.0
        for kind in ATTRIBUTES:
            assert metrics[f"chance_{kind}"] == round(max(Counter(truths[kind]).values()) / pictures, 4)
        assert metrics["acc"] == pytest.approx(sum(metrics[f"acc_{k}"] for k in ATTRIBUTES) / 4, abs=1e-4)
    assert any(run["metrics"]["acc_colour"] > 0 for run in results["runs"])  # the data gives the check some reds


def test_evaluate_shapes_kinds_and_limit(tmp_path, monkeypatch):
    data = write_shapes_dataset(tmp_path / "data", train=1, test=3, heldout=1, image_size=24)
    monkeypatch.setattr(vision_eval, "answer_prompt", fake_answer)
    everything = evaluate_shapes(None, None, data, limit=None, splits=("test",), kinds=("qa",))
    assert everything["splits"]["test"]["pictures"] == 3 and everything["summary"]["test"]["caption"] is None
    with pytest.raises(ValueError, match="kinds must be qa and/or captions"):
        evaluate_shapes(None, None, data, kinds=("questions",))
