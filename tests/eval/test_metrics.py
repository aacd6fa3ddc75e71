"""Text-similarity metrics: values equal rouge-score's and sacrebleu's own, bootstrap intervals behave,
jsonl tasks name their metric, the shipped summarize/translate tasks run through the runner."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import sacrebleu
from rouge_score import rouge_scorer

from lmforge.eval.metrics import bleu, bootstrap_ci, chrf, rouge, similarity_metrics
from lmforge.eval.runner import EvalConfig, evaluate, primary_metric
from lmforge.eval.tasks import jsonl_task, load_task

PREDICTIONS = ["The Otters beat the Badgers 3-1 on Tuesday.", "Revenue rose 12% to $4 million.",
               "the road will close for two weeks", "", "ethay atcay atsay"]
REFERENCES = ["Ashford Otters beat Kelso Badgers 3-1 at Ashford Park on Tuesday.",
              "Bluepeak Foods's revenue rose 12% to $4.2 million because of a new online shop.",
              "Mill Lane in Corran will be closed for 2 weeks from May 3 for resurfacing work.",
              "Something the model did not say.", "ethay atcay atsay onway ethay atmay"]


def test_rouge_equals_rouge_score():
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    ours = rouge(PREDICTIONS, REFERENCES)
    for i, (prediction, reference) in enumerate(zip(PREDICTIONS, REFERENCES)):
        theirs = scorer.score(reference, prediction)
        for name in ("rouge1", "rouge2", "rougeL"):
            assert ours[name][i] == theirs[name].fmeasure
    summary = similarity_metrics("rouge", PREDICTIONS, REFERENCES)
    assert summary["rougeL"] == pytest.approx(np.mean([scorer.score(r, p)["rougeL"].fmeasure
                                                       for p, r in zip(PREDICTIONS, REFERENCES)]))


def test_bleu_and_chrf_equal_sacrebleu():
    assert bleu(PREDICTIONS, REFERENCES) == sacrebleu.corpus_bleu(PREDICTIONS, [REFERENCES]).score
    assert chrf(PREDICTIONS, REFERENCES) == sacrebleu.corpus_chrf(PREDICTIONS, [REFERENCES]).score
    summary = similarity_metrics("chrf", PREDICTIONS, REFERENCES)
    assert summary["chrf"] == sacrebleu.corpus_chrf(PREDICTIONS, [REFERENCES]).score
    assert summary["bleu"] == sacrebleu.corpus_bleu(PREDICTIONS, [REFERENCES]).score


def test_corpus_intervals_from_sentence_statistics_equal_recomputed_corpus_scores():
    """The fast bootstrap (summing per-sentence statistics) gives what sacrebleu computes on the
    resampled sentences themselves."""
    rng = np.random.default_rng(3)
    for name, function in (("bleu", sacrebleu.corpus_bleu), ("chrf", sacrebleu.corpus_chrf)):
        scorer = sacrebleu.metrics.BLEU() if name == "bleu" else sacrebleu.metrics.CHRF()
        stats = np.asarray(scorer._extract_corpus_statistics(PREDICTIONS, [REFERENCES]), dtype=np.float64)
        for _ in range(5):
            rows = rng.integers(0, len(PREDICTIONS), len(PREDICTIONS))
            fast = scorer._compute_score_from_stats(stats[rows].sum(0)).score
            slow = function([PREDICTIONS[i] for i in rows], [[REFERENCES[i] for i in rows]]).score
            assert fast == pytest.approx(slow, abs=1e-9)


def test_bootstrap_intervals():
    values = [0.0, 1.0] * 50
    low, high = bootstrap_ci(values, resamples=2000, seed=1)
    assert low < 0.5 < high and high - low == pytest.approx(0.2, abs=0.06)  # about ±1.96·0.05
    assert bootstrap_ci([0.3] * 10) == pytest.approx((0.3, 0.3))
    assert all(np.isnan(bootstrap_ci([1.0])))
    assert bootstrap_ci(values, seed=4) == bootstrap_ci(values, seed=4)
    for name in ("rouge1", "rouge2", "rougeL"):
        summary = similarity_metrics("rouge", PREDICTIONS, REFERENCES)
        low, high = summary[f"{name}_ci"]
        assert low <= summary[name] <= high
    with pytest.raises(ValueError, match="statistic"):
        bootstrap_ci()


def test_bad_inputs():
    with pytest.raises(ValueError, match="2 predictions but 1 references"):
        rouge(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="unknown similarity metric"):
        similarity_metrics("meteor", ["a"], ["a"])
    with pytest.raises(ValueError, match="no predictions"):
        similarity_metrics("bleu", [], [])


@pytest.mark.parametrize("task, module, package", [("summarize", "rouge_score", "rouge-score"),
                                                   ("translate", "sacrebleu", "sacrebleu")])
def test_a_missing_metric_package_stops_the_run_before_anything_is_generated(monkeypatch, task, module, package):
    """Without the `eval` extra (a runtime-only install), the run fails at once in one line naming the
    package, instead of after generating every answer."""
    class Untouchable:  # evaluate() may only read and restore the training flag before the check
        training = False

        def train(self, mode):
            pass

        def __getattr__(self, name):
            raise AssertionError(f"the model was used ({name}) before the package check")

    monkeypatch.setitem(sys.modules, module, None)  # `import` of it now raises ModuleNotFoundError
    monkeypatch.setitem(sys.modules, f"{module}.rouge_scorer" if module == "rouge_score" else module, None)
    with pytest.raises(ValueError) as error:
        evaluate(Untouchable(), None, load_task(task), EvalConfig(limit=2))
    assert str(error.value) == (f"this metric needs the `{package}` package: pip install 'lmforge[eval]' "
                                f"(or pip install {package})")


def test_shipped_tasks_and_their_references():
    summarize, translate = load_task("summarize"), load_task("translate")
    assert summarize.metric == "rouge" and translate.metric == "chrf"
    assert len(summarize.docs) == 100 and len(translate.docs) == 200
    assert not {d.question for d in summarize.docs} & {d.question for d in summarize.fewshot_pool}
    assert not {d.question for d in translate.docs} & {d.question for d in translate.fewshot_pool}
    references = [d.answer for d in summarize.docs]
    perfect = similarity_metrics("rouge", references, references)
    assert perfect["rouge1"] == perfect["rougeL"] == 1.0
    assert primary_metric("generation", {}, "rouge") == "rougeL"
    assert primary_metric("generation", {}, "chrf") == "chrf"
    assert primary_metric("generation", {}, "numeric") == "numeric_match"


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_jsonl_tasks_name_their_metric(tmp_path):
    rows = [{"question": "Say hello in French.", "answer": "bonjour", "metric": "chrf"},
            {"question": "Say goodbye in French.", "answer": "au revoir"}]
    assert jsonl_task(_write(tmp_path / "t.jsonl", rows)).metric == "chrf"
    assert jsonl_task(_write(tmp_path / "t.jsonl", rows[1:])).metric == ""
    bad = [rows[0], rows[1] | {"metric": "rouge"}]
    with pytest.raises(ValueError, match="different metrics"):
        jsonl_task(_write(tmp_path / "t.jsonl", bad))
    with pytest.raises(ValueError, match=r"t.jsonl:1: 'metric' must be one of"):
        jsonl_task(_write(tmp_path / "t.jsonl", [rows[0] | {"metric": "meteor"}]))
    with pytest.raises(ValueError, match="applies to generation lines"):
        jsonl_task(_write(tmp_path / "t.jsonl", [{"question": "q", "choices": ["a", "b"], "answer": 0, "metric": "bleu"}]))


def test_runner_scores_whole_answers_with_the_libraries(tiny, tmp_path):
    model, tokenizer = tiny
    task = load_task("summarize")
    results = evaluate(model, tokenizer, task, EvalConfig(limit=4, max_new_tokens=8, shots=(0, 1)))
    assert results["primary_metric"] == "rougeL"
    for run in results["runs"]:
        samples = run["samples"]
        assert [s["reference"] for s in samples] == [d.answer for d in task.docs[:4]]
        expected = rouge([s["candidate"] for s in samples], [s["reference"] for s in samples])
        assert run["metrics"]["rouge2"] == pytest.approx(np.mean(expected["rouge2"]))
        assert set(run["metrics"]) >= {"rouge1", "rouge1_ci", "rougeL_ci", "mean_output_tokens"}
    rows = [{"question": f"Say {w} twice.", "answer": f"{w} {w}", "metric": "bleu"} for w in ("yes", "no", "maybe")]
    results = evaluate(model, tokenizer, jsonl_task(_write(tmp_path / "b.jsonl", rows)), EvalConfig(max_new_tokens=6))
    run = results["runs"][0]
    assert results["primary_metric"] == "bleu"
    assert run["metrics"]["bleu"] == sacrebleu.corpus_bleu([s["candidate"] for s in run["samples"]],
                                                           [[s["reference"] for s in run["samples"]]]).score
