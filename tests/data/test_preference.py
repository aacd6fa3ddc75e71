"""Preference JSONL in TRL's layouts: parsing, implicit prompts, bad lines named, counted skips."""

from __future__ import annotations

import json

import pytest

from lmforge.data.preference import (PreferencePair, UnpairedExample, read_preference_jsonl, split_shared_prefix, unpair,
                                     write_preference_jsonl)

USER = [{"role": "user", "content": "Sky colour?"}]
BLUE = [{"role": "assistant", "content": "Blue."}]
GREEN = [{"role": "assistant", "content": "Green."}]


def write_lines(path, records) -> str:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return str(path)


def test_every_trl_layout_is_read(tmp_path):
    path = write_lines(tmp_path / "p.jsonl", [
        {"prompt": "The sky is", "chosen": " blue.", "rejected": " green."},
        "",
        {"prompt": USER, "chosen": BLUE, "rejected": GREEN},
        {"chosen": "The sky is blue.", "rejected": "The sky is green."},
        {"chosen": USER + BLUE, "rejected": USER + GREEN, "extra": 1},
    ])
    data = read_preference_jsonl(path)
    assert data.paired and len(data) == 4 and not data.skipped
    standard, chat, implicit, implicit_chat = data.pairs
    assert (standard.prompt, standard.chosen, standard.rejected, standard.line) == ("The sky is", " blue.", " green.", 1)
    assert chat.conversational and chat.prompt == tuple(USER) and chat.chosen == tuple(BLUE) and chat.line == 3
    assert (implicit.prompt, implicit.chosen, implicit.rejected) == ("The sky is", " blue.", " green.")  # TRL's split
    assert implicit_chat.prompt == tuple(USER) and implicit_chat.rejected == tuple(GREEN)
    # Written back in TRL's explicit layout, read again unchanged.
    again = read_preference_jsonl(write_preference_jsonl(data.pairs, tmp_path / "again.jsonl"))
    assert [(p.prompt, p.chosen, p.rejected) for p in again.pairs] == [(p.prompt, p.chosen, p.rejected) for p in data.pairs]


def test_unpaired_records_and_unpairing(tmp_path):
    path = write_lines(tmp_path / "u.jsonl", [{"prompt": "2+2=", "completion": "4", "label": True},
                                              {"prompt": USER, "completion": GREEN, "label": False}])
    data = read_preference_jsonl(path)
    assert not data.paired and [e.label for e in data.unpaired] == [True, False]
    examples = unpair([PreferencePair("p", "a", "b")])
    assert examples == [UnpairedExample("p", "a", True), UnpairedExample("p", "b", False)]


@pytest.mark.parametrize("line,message", [
    ("not json", "p.jsonl:2: not valid JSON"),
    ('["a list"]', "p.jsonl:2: expected a JSON object"),
    ({"prompt": "x", "chosen": "y"}, "p.jsonl:2: missing 'rejected'"),
    ({"prompt": "x", "chosen": 3, "rejected": "z"}, "'chosen' must be a string or a list of messages"),
    ({"prompt": "x", "chosen": BLUE, "rejected": GREEN}, "prompt is a string but chosen, rejected are message lists"),
    ({"prompt": USER, "chosen": [{"role": "robot", "content": "x"}], "rejected": GREEN}, "has role 'robot'"),
    ({"prompt": USER, "chosen": USER, "rejected": GREEN}, "'chosen' must end with an assistant message"),
    ({"prompt": "x", "completion": "y"}, "missing 'label'"),
    ({"prompt": "x", "completion": "y", "label": "yes"}, "'label' must be true or false"),
    ({"prompt": "x", "completion": "y", "label": True}, "p.jsonl:2: an unpaired record in a file of paired records"),
])
def test_a_bad_line_is_named_by_file_line_and_problem(tmp_path, line, message):
    path = write_lines(tmp_path / "p.jsonl", [{"prompt": "a", "chosen": "b", "rejected": "c"}, line])
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        read_preference_jsonl(path)


def test_records_without_a_preference_are_skipped_and_counted(tmp_path):
    path = write_lines(tmp_path / "p.jsonl", [
        {"prompt": "a", "chosen": "  ", "rejected": "c"},
        {"prompt": "a", "chosen": "same", "rejected": "same"},
        {"prompt": USER, "chosen": [{"role": "assistant", "content": ""}], "rejected": GREEN},
        {"chosen": "blue sky", "rejected": "green sky"},
        {"prompt": "a", "chosen": "b", "rejected": "c"},
    ])
    data = read_preference_jsonl(path)
    assert len(data) == 1 and data.pairs[0].line == 5
    assert dict(data.skipped) == {"empty chosen": 2, "chosen identical to rejected": 1, "no shared prompt to split off": 1}
    assert "2 empty chosen" in data.describe_skipped()
    only_skips = write_lines(tmp_path / "none.jsonl", [{"prompt": "a", "chosen": "b", "rejected": "b"}])
    with pytest.raises(ValueError, match="no usable preference records"):
        read_preference_jsonl(only_skips)
    with pytest.raises(FileNotFoundError):
        read_preference_jsonl(tmp_path / "missing.jsonl")


def test_split_shared_prefix():
    assert split_shared_prefix("Q: hi A: yes", "Q: hi A: no") == ("Q: hi A:", " yes", " no")
    assert split_shared_prefix("abc", "abcd") == ("abc", "", "d")
    assert split_shared_prefix(tuple(USER + BLUE), tuple(USER + GREEN)) == (tuple(USER), tuple(BLUE), tuple(GREEN))
