"""Model-as-judge: verdict probabilities from log-likelihoods (checked against the scorer), position
swapping and its bookkeeping, rubric grades, judged tasks through the runner."""

from __future__ import annotations

import json
import math

import pytest

from lmforge.eval.judge import PAIRWISE_VERDICTS, Judge, judge_pairwise, judge_rubric
from lmforge.eval.runner import EvalConfig, evaluate, primary_metric
from lmforge.eval.tasks import jsonl_task, load_task
from lmforge.infer.scoring import score_continuations


class ScriptedJudge(Judge):
    """A judge whose verdict probabilities are given per prompt, in order."""

    def __init__(self, scripted: list[list[float]]) -> None:
        object.__setattr__(self, "scripted", scripted)
        object.__setattr__(self, "seen", [])

    def choose(self, prompts, options, progress=None):
        self.seen.extend(prompts)
        return self.scripted[:len(prompts)]


def test_verdict_probabilities_equal_the_scorer(tiny):
    model, tokenizer = tiny
    judge = Judge(model, tokenizer, batch_size=3)
    prompts = ["Is water wet?", "Pick one: A or B. A long prompt " * 8, "x"]
    fast = judge.choose(prompts, PAIRWISE_VERDICTS)
    for text, probabilities in zip(prompts, fast):
        context, _ = judge._context(text)
        scores = score_continuations(model, [(context, tokenizer.encode(v)) for v in PAIRWISE_VERDICTS])
        total = sum(math.exp(s.logprob) for s in scores)
        expected = [math.exp(s.logprob) / total for s in scores]
        assert probabilities == pytest.approx(expected, abs=1e-5)
        assert sum(probabilities) == pytest.approx(1.0)
    # multi-token options take the scorer's path and agree with it too
    slow = judge.choose(prompts, ("A", "B", "a tie between them"))
    assert all(sum(row) == pytest.approx(1.0) for row in slow)


def test_pairwise_swaps_positions_and_counts_agreement():
    # item 1: "a" wins in both orders; item 2: position A wins in both orders (disagreement -> tie);
    # item 3: "b" wins in both orders; item 4: tie voted in one order, "a" in the other (-> tie).
    scripted = [[0.9, 0.1, 0.0], [0.2, 0.8, 0.0],   # a first: A=a wins; b first: B=a wins
                [0.7, 0.3, 0.0], [0.6, 0.4, 0.0],   # A wins both times
                [0.1, 0.9, 0.0], [0.9, 0.1, 0.0],   # b wins both times
                [0.2, 0.2, 0.6], [0.3, 0.6, 0.1]]   # tie, then a
    judge = ScriptedJudge(scripted)
    result = judge_pairwise(judge, ["q1", "q2", "q3", "q4"], ["a1", "a2", "a3", "a4"], ["b1", "b2", "b3", "b4"],
                            ids=["one", "two", "three", "four"])
    winners = [item["winner"] for item in result["items"]]
    assert winners == ["a", "tie", "b", "tie"]
    metrics = result["metrics"]
    assert (metrics["wins"], metrics["ties"], metrics["losses"]) == (1, 2, 1)
    assert metrics["win_rate"] == pytest.approx((1 + 0.5 * 2) / 4)
    assert metrics["agreement"] == pytest.approx(2 / 4)
    assert metrics["tie_vote_rate"] == pytest.approx(1 / 8)
    assert metrics["position_a_rate"] == pytest.approx(4 / 7)  # first-shown picks among the 7 non-tie votes
    assert metrics["win_prob"] == pytest.approx((0.85 + 0.55 + 0.1 + 0.4) / 4)
    assert result["items"][1]["verdict_a_first"] == "a" and result["items"][1]["verdict_b_first"] == "b"
    # the prompts really present both orders
    assert "[Answer A]\na1\n\n[Answer B]\nb1" in judge.seen[0] and "[Answer A]\nb1\n\n[Answer B]\na1" in judge.seen[1]


def test_rubric_expected_grade():
    judge = ScriptedJudge([[0.0, 0.0, 0.0, 0.5, 0.5], [1.0, 0.0, 0.0, 0.0, 0.0]])
    result = judge_rubric(judge, ["q1", "q2"], ["good", "bad"])
    assert [item["score"] for item in result["items"]] == [4.5, 1.0]
    assert [item["grade"] for item in result["items"]] == [4, 1]
    assert result["metrics"]["rubric_score"] == pytest.approx(2.75)
    with pytest.raises(ValueError, match="same positive number"):
        judge_rubric(judge, ["q1"], ["a", "b"])


def test_long_answers_are_clipped(tiny):
    judge = Judge(*tiny, max_answer_chars=10)
    assert judge.clip("short") == "short" and judge.clip("x" * 50) == "x" * 10 + " [...]"


def test_open_ended_task_through_the_runner(tiny, tmp_path):
    model, tokenizer = tiny
    judge = Judge(model, tokenizer, name="tiny")
    task = load_task("open_ended")
    assert task.kind == "judged" and all(doc.answer for doc in task.docs)
    config = EvalConfig(limit=3, max_new_tokens=6, resamples=200)
    results = evaluate(model, tokenizer, task, config, judge=judge)
    assert results["primary_metric"] == "win_rate"
    run = results["runs"][0]
    assert run["judge"] == {"model": "tiny", "mode": "pairwise", "opponent": "reference"}
    assert set(run["metrics"]) >= {"win_rate", "win_rate_ci", "agreement", "position_a_rate", "wins", "ties"}
    sample = run["samples"][0]
    assert sample["reference"] == task.docs[0].answer and "candidate" in sample and sample["winner"] in ("a", "b", "tie")
    assert sum(sample["p_a_first"]) == pytest.approx(1.0, abs=1e-3)
    # rubric: no opponent; baseline: another model's answers replace the references
    rubric = evaluate(model, tokenizer, task, EvalConfig(limit=2, max_new_tokens=4, judge_mode="rubric"), judge=judge)
    assert rubric["primary_metric"] == "rubric_score" and 1 <= rubric["runs"][0]["metrics"]["rubric_score"] <= 5
    assert primary_metric("judged", rubric["runs"][0]["metrics"]) == "rubric_score"
    versus = evaluate(model, tokenizer, task, EvalConfig(limit=2, max_new_tokens=4), judge=judge, baseline=(model, tokenizer))
    assert versus["runs"][0]["judge"]["opponent"] == "baseline" and "baseline" in versus["runs"][0]["samples"][0]
    # the same model against itself, greedy: identical answers
    assert [s["candidate"] for s in versus["runs"][0]["samples"]] == [s["baseline"] for s in versus["runs"][0]["samples"]]


def test_judged_jsonl_and_missing_pieces(tiny, tmp_path):
    model, tokenizer = tiny
    path = tmp_path / "open.jsonl"
    path.write_text(json.dumps({"question": "Write a haiku.", "metric": "judge"}) + "\n"
                    + json.dumps({"question": "Explain rain.", "answer": "Water falls.", "metric": "judge"}) + "\n")
    task = jsonl_task(path)
    assert task.kind == "judged" and [d.answer for d in task.docs] == ["", "Water falls."]
    with pytest.raises(ValueError, match="judged by a model"):
        evaluate(model, tokenizer, task, EvalConfig(max_new_tokens=4))
    with pytest.raises(ValueError, match="reference answers on every item or a baseline"):
        evaluate(model, tokenizer, task, EvalConfig(max_new_tokens=4), judge=Judge(model, tokenizer))
    path.write_text(json.dumps({"question": "", "metric": "judge"}) + "\n")
    with pytest.raises(ValueError, match="open.jsonl:1: 'question'"):
        jsonl_task(path)
