"""Generated verifiable tasks: right answers, disjoint splits, determinism (scoring: tests/eval)."""

from __future__ import annotations

import re

import pytest

from lmforge.data.synthetic import INSTRUCTION, TASKS, WORDS, make_items, task_names

FACTORS = {("km", "m"): 1000, ("m", "cm"): 100, ("cm", "mm"): 10, ("kg", "g"): 1000, ("L", "mL"): 1000,
           ("hours", "minutes"): 60, ("minutes", "seconds"): 60, ("days", "hours"): 24, ("weeks", "days"): 7,
           ("feet", "inches"): 12, ("yards", "feet"): 3, ("dollars", "cents"): 100}


def recompute(task: str, question: str) -> str:
    """An independent solver for each task's question text."""
    if task == "add":
        a, b = map(int, re.fullmatch(r"What is (\d+) \+ (\d+)\?", question).groups())
        return str(a + b)
    if task == "multiply":
        a, b = map(int, re.fullmatch(r"What is (\d+) \* (\d+)\?", question).groups())
        return str(a * b)
    if task == "count":
        letter, word = re.fullmatch(r'How many times does the letter "(\w)" appear in the word "(\w+)"\?', question).groups()
        return str(sum(1 for ch in word if ch == letter))
    if task == "reverse":
        (word,) = re.fullmatch(r'Reverse the word "(\w+)"\.', question).groups()
        return "".join(reversed(word))
    value, source, target = re.fullmatch(r"Convert (\d+) (\w+) to (\w+)\.", question).groups()
    return str(int(value) * FACTORS[(source, target)])


@pytest.mark.parametrize("task", task_names())
def test_every_answer_is_right_and_splits_are_disjoint(task):
    train = make_items(task, 300, "train", seed=0)
    heldout = make_items(task, 200, "heldout", seed=0)
    for item in train + heldout:
        assert item.task == task
        assert item.answer == recompute(task, item.question), item
    train_questions = {i.question for i in train}
    assert len(train_questions) == 300 and len({i.question for i in heldout}) == 200
    assert not train_questions & {i.question for i in heldout}
    # The split is a property of the question, not of the draw: other seeds never cross it either.
    assert not {i.question for i in make_items(task, 200, "heldout", seed=7)} & train_questions


def test_items_are_deterministic_and_render_as_chat():
    assert make_items("add", 20, seed=3) == make_items("add", 20, seed=3)
    assert make_items("add", 20, seed=3) != make_items("add", 20, seed=4)
    item = make_items("reverse", 1)[0]
    assert item.messages() == [{"role": "system", "content": INSTRUCTION}, {"role": "user", "content": item.question},
                               {"role": "assistant", "content": item.answer}]
    assert item.record()["messages"] == item.messages() and item.record()["answer"] == item.answer
    assert len(set(WORDS)) == len(WORDS)


def test_bad_requests_are_errors(monkeypatch):
    with pytest.raises(ValueError, match="unknown task 'sing'"):
        make_items("sing", 3)
    with pytest.raises(ValueError, match="split"):
        make_items("add", 3, split="test")
    monkeypatch.setitem(TASKS, "coin", lambda rng: (f"Flip {rng.randint(0, 49)}?", "heads"))
    with pytest.raises(ValueError, match="only .* distinct"):
        make_items("coin", 60)  # a finite question space says so instead of looping forever
