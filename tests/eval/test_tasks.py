"""Task loading: ARC and GSM8K files, user JSONL tasks, text files, the generated ICL probe."""

from __future__ import annotations

import json

import pytest

from lmforge.eval.tasks import icl_probe_task, jsonl_task, load_task, text_task


def test_arc_easy_loads_hf_jsonl_layout(shared_data):
    task = load_task("arc_easy", shared_data)
    assert task.kind == "multiple_choice" and len(task.docs) == 570 and len(task.fewshot_pool) == 2251
    first = json.loads((shared_data / "arc" / "ARC-Easy-validation.jsonl").read_text().splitlines()[0])
    doc = task.docs[0]
    assert doc.question == first["question"] and list(doc.choices) == first["choices"]["text"]
    assert first["choices"]["label"][doc.gold] == first["answerKey"]
    assert all(0 <= d.gold < len(d.choices) for d in task.docs)
    assert task.limited(10).docs == task.docs[:10]


def test_gsm8k_loads_answers_and_rationales(shared_data):
    task = load_task("gsm8k", shared_data)
    assert task.kind == "generation" and len(task.docs) == 1319 and len(task.fewshot_pool) == 7473
    assert task.docs[0].answer == "18"
    assert all("<<" not in d.rationale and "####" not in d.rationale for d in task.docs)
    assert all("," not in d.answer for d in task.docs)  # '2,125' is stored as '2125'


def test_missing_data_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "arc" / "ARC-Easy-validation.jsonl")):
        load_task("arc_easy", tmp_path)
    with pytest.raises(FileNotFoundError, match="gsm8k"):
        load_task("gsm8k", tmp_path)
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        load_task(f"ppl:{tmp_path / 'nope.txt'}", tmp_path)
    with pytest.raises(ValueError, match="unknown task 'mmlu'"):
        load_task("mmlu", tmp_path)


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_user_multiple_choice_task(tmp_path):
    path = _write_jsonl(tmp_path / "capitals.jsonl", [
        {"question": "Capital of France?", "choices": ["Paris", "Rome"], "answer": 0},
        {"question": "Capital of Italy?", "choices": ["Paris", "Rome", "Oslo"], "answer": "Rome", "id": "it"},
        {"question": "Capital of Norway?", "choices": ["Oslo", "Rome"], "answer": 0, "split": "train"},
    ])
    task = load_task(f"jsonl:{path}", tmp_path)
    assert task.name == "capitals" and task.kind == "multiple_choice"
    assert [d.gold for d in task.docs] == [0, 1] and task.docs[1].id == "it"
    assert [d.question for d in task.fewshot_pool] == ["Capital of Norway?"]
    assert task.chance == pytest.approx((1 / 2 + 1 / 3) / 2)


def test_user_generation_task(tmp_path):
    path = _write_jsonl(tmp_path / "sums.jsonl", [
        {"question": "2+2?", "answer": 4},
        {"question": "3+5?", "answer": "8", "rationale": "3 plus 5 is 8."},
    ])
    task = jsonl_task(path)
    assert task.kind == "generation" and [d.answer for d in task.docs] == ["4", "8"]
    assert task.docs[1].rationale == "3 plus 5 is 8."


@pytest.mark.parametrize("rows, message", [
    ([{"question": "q", "choices": ["a", "b"], "answer": 2}], "out of range"),
    ([{"question": "q", "choices": ["a", "b"], "answer": "c"}], "not one of the choices"),
    ([{"question": "q", "choices": ["a"], "answer": 0}], "at least two"),
    ([{"question": "q", "answer": ""}], "non-empty"),
    ([{"question": 3, "answer": "x"}], "'question' must be a string"),
    ([{"question": "q", "answer": "x"}, {"question": "q", "choices": ["a", "b"], "answer": 0}], "mixes"),
    ([{"question": "q", "answer": "x", "split": "train"}], "no lines to evaluate"),
    ([{"question": "q", "answer": "x", "split": "dev"}], "'split'"),
])
def test_user_task_errors_name_the_line(tmp_path, rows, message):
    path = _write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(ValueError, match=message):
        jsonl_task(path)


def test_invalid_json_line_is_reported(tmp_path):
    path = tmp_path / "broken.jsonl"
    path.write_text('{"question": "q", "answer": "a"}\n{not json\n')
    with pytest.raises(ValueError, match=r"broken.jsonl:2"):
        jsonl_task(path)


def test_text_task_reads_txt_and_jsonl(tmp_path):
    (tmp_path / "a.txt").write_text("Hello there.\nGeneral Kenobi.\n")
    task = text_task(tmp_path / "a.txt")
    assert task.kind == "perplexity" and len(task.docs) == 1 and task.docs[0].question.startswith("Hello")
    _write_jsonl(tmp_path / "b.jsonl", [{"text": "one"}, {"text": "two"}])
    assert [d.question for d in text_task(tmp_path / "b.jsonl").docs] == ["one", "two"]
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(ValueError, match="no text"):
        text_task(tmp_path / "empty.txt")
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ValueError, match="not UTF-8"):
        text_task(tmp_path / "bin.txt")


def test_icl_probe_answers_exist_only_in_the_shots():
    task = icl_probe_task(n_items=40, words_per_item=6, seed=3)
    assert task == icl_probe_task(n_items=40, words_per_item=6, seed=3)  # deterministic
    assert task.docs != icl_probe_task(n_items=40, words_per_item=6, seed=4).docs
    assert len(task.docs) == 40 and sum(d.gold for d in task.docs) == 20  # balanced classes
    label_pairs = set()
    for index, doc in enumerate(task.docs):
        pool = task.pool_for(index)
        assert len(pool) == 64 and all(shot.choices == doc.choices for shot in pool)
        mapping: dict[str, int] = {}
        for shot in pool:  # one consistent word -> label mapping per item
            assert mapping.setdefault(shot.question, shot.gold) == shot.gold
        assert len(mapping) <= 6 and set(mapping.values()) <= {0, 1}
        if doc.question in mapping:
            assert mapping[doc.question] == doc.gold
        label_pairs.add(doc.choices)
    assert len(label_pairs) > 5  # the labels themselves change from item to item
    assert len(task.limited(6).per_doc_pools) == 6
    assert len(task.limited(5).docs) == 6  # --limit keeps mirrored pairs whole, so 0-shot stays exactly 50%
    with pytest.raises(ValueError, match="even"):
        icl_probe_task(n_items=3)


def test_icl_probe_items_come_in_mirrored_pairs():
    """Same word, labels and shots with the mapping flipped: 0-shot prompts are identical and exactly
    one of the two golds is right, so label preferences cannot move 0-shot accuracy off 50%."""
    from lmforge.eval.prompts import plain_prompt, select_shots

    task = icl_probe_task(n_items=20)
    for index in range(0, 20, 2):
        doc, mirror = task.docs[index], task.docs[index + 1]
        assert (doc.question, doc.choices, doc.shot_key) == (mirror.question, mirror.choices, mirror.shot_key)
        assert doc.gold == 1 - mirror.gold
        assert plain_prompt(task, doc, []) == plain_prompt(task, mirror, []) == f"{doc.question}:"
        shots, mirrored = select_shots(task, index, 8, seed=1), select_shots(task, index + 1, 8, seed=1)
        assert [s.question for s in shots] == [s.question for s in mirrored]
        assert [s.gold for s in shots] == [1 - s.gold for s in mirrored]


def test_icl_shots_are_counted_per_label_balanced_and_nested():
    from lmforge.eval.prompts import select_shots

    task = icl_probe_task(n_items=20)
    assert task.shots_per_class
    last_labels = []
    for index in range(20):
        doc = task.docs[index]
        sixteen = select_shots(task, index, 16, seed=5)
        assert len(sixteen) == 32
        for k in (1, 4):
            shots = select_shots(task, index, k, seed=5)
            assert shots == sixteen[:2 * k]  # nested: k per label is a prefix of 16 per label
            assert sorted(s.gold for s in shots) == [0] * k + [1] * k  # each round shows both labels
        last_labels.append(select_shots(task, index, 1, seed=5)[-1].gold == doc.gold)
    assert 0 < sum(last_labels) < 20  # the label shown last is sometimes the answer, sometimes not
    with pytest.raises(ValueError, match="shots per class requested"):
        select_shots(task, 0, 40, seed=5)  # more than the pool holds of one label
