"""The evaluation runner: metric arithmetic on a tiny model, generation through the engine, perplexity."""

from __future__ import annotations

import json
import math

import pytest
import torch

from lmforge.eval.extract import extract_answer, numeric_match
from lmforge.eval.prompts import encode_pair, plain_prompt, prompt_ids
from lmforge.eval.runner import EvalConfig, evaluate
from lmforge.eval.tasks import jsonl_task, text_task
from lmforge.infer.engine import Engine
from lmforge.infer.sampling import SamplingParams


def _logprob(model, context, continuation):
    ids = torch.tensor([(context + continuation)[:-1]])
    with torch.no_grad():
        log_probs = torch.log_softmax(model(ids)[0].double(), dim=-1)
    return sum(float(log_probs[len(context) + i - 1, t]) for i, t in enumerate(continuation))


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_multiple_choice_metrics_match_hand_computation(tiny, tmp_path):
    model, tokenizer = tiny
    rows = [
        {"question": "Which is a fruit?", "choices": ["apple", "a car", "a small grey stone"], "answer": 0},
        {"question": "Sky colour?", "choices": ["blue", "the colour green"], "answer": 1},
        {"question": "Largest?", "choices": ["an elephant", "ant", "a mouse", "flea"], "answer": 2},
        {"question": "Opposite of hot?", "choices": ["cold", "warm"], "answer": 0},
        {"question": "Two plus two?", "choices": ["four", "five", "twenty two"], "answer": 0, "split": "train"},
        {"question": "Cats say?", "choices": ["meow", "woof"], "answer": 0, "split": "train"},
    ]
    task = jsonl_task(_write(tmp_path / "mc.jsonl", rows))
    results = evaluate(model, tokenizer, task, EvalConfig(shots=(0, 2), batch_size=3, seed=5))
    assert [run["shots"] for run in results["runs"]] == [0, 2]
    for run in results["runs"]:
        from lmforge.eval.prompts import select_shots

        hits, hits_norm = 0, 0
        for index, (doc, sample) in enumerate(zip(task.docs, run["samples"])):
            text = plain_prompt(task, doc, select_shots(task, index, run["shots"], seed=5))
            logprobs = [_logprob(model, *encode_pair(tokenizer, text, " " + c)) for c in doc.choices]
            assert sample["logprobs"] == pytest.approx(logprobs, abs=2e-3)
            best = max(range(len(logprobs)), key=logprobs.__getitem__)
            best_norm = max(range(len(logprobs)), key=lambda i: logprobs[i] / len(doc.choices[i]))
            assert (sample["pred"], sample["pred_norm"]) == (best, best_norm)
            hits += best == doc.gold
            hits_norm += best_norm == doc.gold
        n = len(task.docs)
        assert run["n"] == n == 4
        assert run["metrics"]["acc"] == pytest.approx(hits / n)
        assert run["metrics"]["acc_norm"] == pytest.approx(hits_norm / n)
        p = hits / n
        assert run["metrics"]["acc_stderr"] == pytest.approx(math.sqrt(p * (1 - p) * n / (n - 1) / n))
    assert "Question: Two plus two?" in results["runs"][1]["example_prompt"] or \
           "Question: Cats say?" in results["runs"][1]["example_prompt"]


def test_perplexity_and_bits_per_byte(tiny, tmp_path):
    model, tokenizer = tiny
    text = "To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer. " * 6
    task = text_task(_write(tmp_path / "t.jsonl", [{"text": text}]))
    results = evaluate(model, tokenizer, task, EvalConfig(max_len=64, stride=32))
    metrics = results["runs"][0]["metrics"]
    ids = tokenizer.encode(text)
    prefix = tokenizer.bos_id
    assert metrics["tokens"] == len(ids) and metrics["bytes"] == len(text.encode())
    from lmforge.infer.scoring import rolling_windows

    logprob = sum(_logprob(model, c, k) for c, k in rolling_windows(ids, 64, 32, prefix))
    assert metrics["logprob"] == pytest.approx(logprob, abs=1e-2)
    assert metrics["bits_per_byte"] == pytest.approx(-logprob / (len(text.encode()) * math.log(2)), rel=1e-4)
    assert metrics["perplexity"] == pytest.approx(math.exp(-logprob / len(ids)), rel=1e-4)
    # --limit counts tokens for perplexity tasks; bytes follow the scored tokens.
    limited = evaluate(model, tokenizer, task, EvalConfig(limit=10))["runs"][0]["metrics"]
    assert limited["tokens"] == 10
    assert limited["bytes"] == len(tokenizer.decode(ids[:10]).encode())


def test_config_validation_and_mode_errors(tiny, tmp_path):
    model, tokenizer = tiny
    with pytest.raises(ValueError, match="shots"):
        EvalConfig(shots=(-1,))
    with pytest.raises(ValueError, match="batch_size"):
        EvalConfig(batch_size=0)
    mc = jsonl_task(_write(tmp_path / "mc.jsonl", [{"question": "q", "choices": ["a", "b"], "answer": 0}]))
    with pytest.raises(ValueError, match="--cot applies to generation"):
        evaluate(model, tokenizer, mc, EvalConfig(cot=True))
    with pytest.raises(ValueError, match="no few-shot examples"):
        evaluate(model, tokenizer, mc, EvalConfig(shots=(1,)))


def test_generation_runs_through_the_engine_and_extracts(smollm, tmp_path):
    model, tokenizer = smollm
    rows = [{"question": "Tom has 2 apples and buys 3 more. How many apples does he have?", "answer": "5"},
            {"question": "What is 10 minus 4?", "answer": 6}]
    task = jsonl_task(_write(tmp_path / "arith.jsonl", rows))
    config = EvalConfig(chat=True, cot=True, max_new_tokens=40, batch_size=2)
    results = evaluate(model, tokenizer, task, config)
    run = results["runs"][0]
    assert results["primary_metric"] == "accuracy"
    # Batched generation with a progress callback gives each prompt's one-at-a-time answer.
    prompts = [prompt_ids(tokenizer, task, doc, [], chat=True, cot=True) for doc in task.docs]
    expected = Engine(model, tokenizer, max_batch_size=1).generate(prompts, SamplingParams(max_new_tokens=40))
    correct = 0
    for doc, sample, completion in zip(task.docs, run["samples"], expected):
        assert sample["output"] == completion.text
        answer, how = extract_answer(completion.text)
        assert (sample["extracted"], sample["how"]) == (answer, how)
        assert sample["correct"] == numeric_match(answer, doc.answer)
        correct += sample["correct"]
    assert run["metrics"]["numeric_match"] == run["metrics"]["accuracy"] == pytest.approx(correct / 2)
    assert 0 < run["metrics"]["mean_output_tokens"] <= 40


def test_mixed_answers_headline_counts_every_document(tiny, tmp_path, monkeypatch):
    """Numbers are compared by value and text by exact match, and the headline covers all documents:
    one right number among nine wrong words is 10%, not the 100% of the numeric subset."""
    from lmforge.infer.engine import Completion

    model, tokenizer = tiny
    rows = [{"question": "When did Apollo 11 land?", "answer": "1969"}]
    rows += [{"question": f"Colour number {i}?", "answer": "blue"} for i in range(9)]
    task = jsonl_task(_write(tmp_path / "mixed.jsonl", rows))
    outputs = ["The answer is 1,969."] + ["The answer is red."] * 9
    monkeypatch.setattr(Engine, "generate", lambda self, prompts, params, constraints=None, on_finish=None:
                        [Completion(text, [], "stop", len(p)) for text, p in zip(outputs, prompts)])
    results = evaluate(model, tokenizer, task, EvalConfig(max_new_tokens=16))
    metrics = results["runs"][0]["metrics"]
    assert results["primary_metric"] == "accuracy" and metrics["accuracy"] == pytest.approx(0.1)
    assert metrics["numeric_match"] == 1.0 and metrics["numeric_n"] == 1
    assert metrics["exact_match"] == 0.0  # "1,969" is not the text "1969"


def _fake_engine(monkeypatch, outputs):
    """Engine.generate answers `outputs` in order and records the prompts it was given."""
    from lmforge.infer.engine import Completion

    seen: list[list[int]] = []

    def generate(self, prompts, params, constraints=None, on_finish=None):
        seen.extend(prompts)
        return [Completion(text, [], "stop", len(p)) for text, p in zip(outputs, prompts)]

    monkeypatch.setattr(Engine, "generate", generate)
    return seen


# (reply, whole reply is the answer, extracted answer is right): the two figures fine-tuning reports.
ADD_REPLIES = [("{a}", True, True), (" {a}.\n", True, True), ("{a:,}", True, True), ("The answer is {a}.", False, True),
               ("7519 + 629 = {a}", False, True), ("{a}0", False, False), ("", False, False)]
REVERSE_REPLIES = [('"{a}"', True, True), ("{A}", True, True), ('The reversed word is "{a}".', False, True),
                   ('The word "planet" is a noun.', False, False)]


@pytest.mark.parametrize("name, replies", [("add", ADD_REPLIES), ("reverse", REVERSE_REPLIES)])
def test_generated_tasks_report_strict_and_lenient_accuracy(tiny, monkeypatch, name, replies):
    """strict_match: the reply is the answer and nothing else; accuracy: the extracted answer is right.
    Chat prompts are the fine-tuning conversations up to the answer."""
    from lmforge.data.synthetic import make_items
    from lmforge.eval.tasks import load_task
    from lmforge.tokenizer.chat import render_conversation

    model, tokenizer = tiny
    task = load_task(name)
    docs = task.docs[:len(replies)]
    outputs = [reply.format(a=int(d.answer) if d.answer.isdigit() else d.answer, A=d.answer.upper())
               for (reply, _, _), d in zip(replies, docs)]
    prompts = _fake_engine(monkeypatch, outputs)
    run = evaluate(model, tokenizer, task, EvalConfig(chat=True, limit=len(replies), max_new_tokens=16))["runs"][0]
    assert [(s["strict"], s["correct"]) for s in run["samples"]] == [(strict, lenient) for _, strict, lenient in replies]
    n = len(replies)
    assert run["metrics"]["strict_match"] == pytest.approx(sum(r[1] for r in replies) / n)
    assert run["metrics"]["accuracy"] == pytest.approx(sum(r[2] for r in replies) / n)
    items = make_items(name, n, "heldout", seed=0)
    assert prompts == [render_conversation(tokenizer, i.prompt_messages(), add_generation_prompt=True)[0] for i in items]


def test_task_scorer_returns_the_runners_figures_writes_results_and_keeps_train_mode(tiny, monkeypatch, tmp_path):
    from lmforge.eval.runner import task_scorer
    from lmforge.eval.tasks import synthetic_task

    model, tokenizer = tiny
    task = synthetic_task("add", n_docs=4)
    _fake_engine(monkeypatch, [task.docs[0].answer, f"It is {task.docs[1].answer}", "0", "no idea"])
    score = task_scorer(task, EvalConfig(chat=True, max_new_tokens=8), out_dir=tmp_path / "eval", model_name="tiny")
    model.train()
    assert score(model, tokenizer, "before") == {"accuracy": 0.5, "strict_match": 0.25, "n": 4}
    assert model.training  # the runner switched to eval mode for generation and back again
    model.eval()
    saved = json.loads((tmp_path / "eval" / "add_before.json").read_text())
    assert saved["lmforge_eval"] == 1 and saved["model"] == "tiny (before)" and len(saved["runs"][0]["samples"]) == 4
    with pytest.raises(ValueError, match="one number of shots"):
        task_scorer(task, EvalConfig(shots=(0, 1)))
    with pytest.raises(ValueError, match="reports no acc_norm"):
        task_scorer(task, EvalConfig(max_new_tokens=8), metrics=("acc_norm",))(model, tokenizer, "x")
