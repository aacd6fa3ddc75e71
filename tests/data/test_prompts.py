"""RL prompt records: TRL's prompt JSONL, checked line by line; generated-task prompts; a resumable order."""

from __future__ import annotations

import json

import pytest

from lmforge.data.prompts import PromptOrder, read_prompt_jsonl, task_prompts


def test_reads_text_and_chat_prompts_with_their_columns(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"prompt": "The sky is", "answer": "blue"}) + "\n\n"
                    + json.dumps({"prompt": [{"role": "user", "content": "6 * 7?"}], "answer": "42", "level": 2}) + "\n")
    first, second = read_prompt_jsonl(path)
    assert first.prompt == "The sky is" and first.columns == {"answer": "blue"} and not first.conversational
    assert second.prompt == ({"role": "user", "content": "6 * 7?"},) and second.columns == {"answer": "42", "level": 2}
    assert second.conversational and second.where == f"{path}:3"
    assert len(read_prompt_jsonl(path, limit=1)) == 1


@pytest.mark.parametrize("line,message", [
    ('{"question": "x"}', r"p.jsonl:2: missing 'prompt' \(keys: question\)"),
    ('{"prompt": ""}', r"p.jsonl:2: 'prompt' is empty"),
    ('{"prompt": 3}', r"p.jsonl:2: 'prompt' must be a string or a list of messages, got int"),
    ('{"prompt": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}', r"ends with an assistant"),
    ('{"prompt": [{"role": "robot", "content": "a"}]}', r"p.jsonl:2: 'prompt': messages\[0\] has role 'robot'"),
    ('{"prompt": [}', r"p.jsonl:2: not valid JSON"),
    ('[1, 2]', r"p.jsonl:2: expected a JSON object with a 'prompt'"),
])
def test_bad_lines_are_named(tmp_path, line, message):
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "fine"}\n' + line + "\n")
    with pytest.raises(ValueError, match=message):
        read_prompt_jsonl(path)


def test_missing_or_empty_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_prompt_jsonl(tmp_path / "none.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(ValueError, match="no prompts"):
        read_prompt_jsonl(tmp_path / "empty.jsonl")


def test_task_prompts_carry_the_answer():
    records = task_prompts("add", 3, "train", seed=0)
    assert len(records) == 3 and all(r.conversational and r.columns["answer"].isdigit() for r in records)
    assert records[0].prompt[-1]["role"] == "user" and "+" in records[0].prompt[-1]["content"]


def test_order_covers_each_epoch_and_resumes():
    order = PromptOrder(5, seed=3)
    first = order.take(5)
    assert sorted(first) == list(range(5))
    again = PromptOrder(5, seed=3)
    again.take(3)
    state = again.state_dict()
    resumed = PromptOrder(5, seed=3)
    resumed.load_state_dict(state)
    assert resumed.take(4) == again.take(4)  # crosses into the second, reshuffled epoch identically
    with pytest.raises(ValueError, match="over 6 prompts"):
        PromptOrder(5).load_state_dict(PromptOrder(6).state_dict())
