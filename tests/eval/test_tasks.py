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


def _parquet(rows) -> bytes:
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), buffer)
    return buffer.getvalue()


def _rows(path, n):
    return [json.loads(line) for line in path.read_text().splitlines()[:n]]


def _fixture_folder(tmp_path, files):
    """A --data folder holding the given jsonl rows (the same rows the hub cache gets as parquet)."""
    for name, rows in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        _write_jsonl(tmp_path / name, rows)
    return tmp_path


def test_arc_loads_from_the_hub_cache_by_dataset_id(hub_cache, shared_data, tmp_path):
    """allenai/ai2_arc as `hf download` or `datasets` leave it: {config}/{split}-*.parquet in the hub cache."""
    easy_val, easy_train = _rows(shared_data / "arc" / "ARC-Easy-validation.jsonl", 40), \
        _rows(shared_data / "arc" / "ARC-Easy-train.jsonl", 30)
    challenge = [dict(row, id=f"challenge-{i}") for i, row in enumerate(easy_val[:12])]  # stand-in rows
    hub_cache.add("allenai/ai2_arc", {
        "ARC-Easy/validation-00000-of-00001.parquet": _parquet(easy_val),
        "ARC-Easy/train-00000-of-00001.parquet": _parquet(easy_train),
        "ARC-Challenge/test-00000-of-00001.parquet": _parquet(challenge),
        "README.md": b"---\ndataset_info: ...\n---\n",
    }, repo_type="dataset")
    local = _fixture_folder(tmp_path, {"arc/ARC-Easy-validation.jsonl": easy_val, "arc/ARC-Easy-train.jsonl": easy_train,
                                       "arc/ARC-Challenge-test.jsonl": challenge})
    from_hub, from_folder = load_task("arc_easy"), load_task("arc_easy", local)
    assert len(from_hub.docs) == 40 and len(from_hub.fewshot_pool) == 30
    assert from_hub.docs == from_folder.docs and from_hub.fewshot_pool == from_folder.fewshot_pool
    assert from_hub.source == "allenai/ai2_arc (ARC-Easy)" and from_folder.source == str(local / "arc")
    assert from_hub.docs[0].question == easy_val[0]["question"]
    assert easy_val[0]["choices"]["label"][from_hub.docs[0].gold] == easy_val[0]["answerKey"]
    hard = load_task("arc_challenge", split="test")
    assert hard.name == "arc_challenge" and hard.docs == load_task("arc_challenge", local, split="test").docs
    assert hard.fewshot_pool == ()  # no ARC-Challenge train split cached: 0-shot only
    # The validation split of ARC-Challenge is not cached: one line naming what is missing and how to fetch it.
    with pytest.raises(FileNotFoundError) as error:
        load_task("arc_challenge")
    message = str(error.value)
    assert "\n" not in message and "has no ARC-Challenge/validation-*.parquet" in message
    assert "hf download allenai/ai2_arc --repo-type dataset" in message and "--data DIR" in message


def test_gsm8k_loads_from_the_hub_cache_by_dataset_id(hub_cache, shared_data, tmp_path):
    test, train = _rows(shared_data / "gsm8k" / "test.jsonl", 25), _rows(shared_data / "gsm8k" / "train.jsonl", 15)
    hub_cache.add("openai/gsm8k", {"main/test-00000-of-00001.parquet": _parquet(test),
                                   "main/train-00000-of-00001.parquet": _parquet(train)}, repo_type="dataset")
    local = _fixture_folder(tmp_path, {"gsm8k/test.jsonl": test, "gsm8k/train.jsonl": train})
    from_hub, from_folder = load_task("gsm8k"), load_task("gsm8k", local)
    assert len(from_hub.docs) == 25 and len(from_hub.fewshot_pool) == 15
    # The same documents and ids, so --seed picks the same shots whichever way the data came.
    assert from_hub.docs == from_folder.docs and from_hub.fewshot_pool == from_folder.fewshot_pool
    assert from_hub.docs[0].answer == "18" and from_hub.docs[0].id == "test-1"


def test_benchmarks_without_data_are_one_clear_line(hub_cache, capsys):
    """Nothing cached and offline: the error names the dataset and the command that fetches it."""
    from lmforge.cli.main import main

    for task, repo in (("arc_challenge", "allenai/ai2_arc"), ("arc_easy", "allenai/ai2_arc"), ("gsm8k", "openai/gsm8k")):
        with pytest.raises(FileNotFoundError) as error:
            load_task(task)
        assert "\n" not in str(error.value)
        assert f"dataset {repo!r} is not in the Hugging Face cache" in str(error.value)
        assert f"fetch it with: hf download {repo} --repo-type dataset (or pass --data DIR" in str(error.value)
    assert main(["eval", "--task", "arc_challenge"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("lmforge: error: dataset 'allenai/ai2_arc' is not in the Hugging Face cache")


def test_a_bad_parquet_record_names_the_file_and_row(hub_cache):
    hub_cache.add("openai/gsm8k", {"main/test-00000-of-00001.parquet": _parquet([
        {"question": "1+1?", "answer": "2\n#### 2"}, {"question": "2+2?", "answer": "no final line"}])},
        repo_type="dataset")
    with pytest.raises(ValueError, match=r"test-00000-of-00001\.parquet:row 2: the reference solution has no"):
        load_task("gsm8k")


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


@pytest.mark.parametrize("name", ["add", "multiply", "count", "reverse", "convert"])
def test_generated_fine_tuning_tasks_load_as_generation_benchmarks(name):
    """`lmforge eval --task add`: the held-out questions (seed 0, whatever else is asked) as
    documents, the train split as few-shot pool, the fine-tuning instruction as system message."""
    from lmforge.data.synthetic import INSTRUCTION, make_items
    from lmforge.eval.prompts import chat_messages, select_shots

    task = load_task(name)
    items = make_items(name, 500, "heldout", seed=0)
    assert task.kind == "generation" and task.system == INSTRUCTION
    assert [(d.question, d.answer) for d in task.docs] == [(i.question, i.answer) for i in items]
    assert not {d.question for d in task.fewshot_pool} & {d.question for d in task.docs}
    assert chat_messages(task, task.docs[0], []) == items[0].prompt_messages()  # what fine-tuning trains on
    shots = select_shots(task, 0, 2, seed=1)
    messages = chat_messages(task, task.docs[0], shots)
    assert messages[0] == {"role": "system", "content": INSTRUCTION}
    assert messages[1:5] == [{"role": "user", "content": shots[0].question}, {"role": "assistant", "content": shots[0].answer},
                             {"role": "user", "content": shots[1].question}, {"role": "assistant", "content": shots[1].answer}]
    assert chat_messages(task, task.docs[0], [], system="Be terse.")[0]["content"] == "Be terse."


def test_unknown_task_lists_the_generated_ones():
    with pytest.raises(ValueError, match="unknown task 'sing'.*add, convert, count, multiply, reverse"):
        load_task("sing")
