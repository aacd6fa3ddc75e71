"""Moderation policies: bad files named by field, rules and allow list, the judge, the refusal log."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from lmforge.infer.moderation import Moderator, policy_from_dict, user_text

ROOT = Path(__file__).resolve().parents[2]


def test_shipped_policies_load():
    for path in sorted((ROOT / "configs").glob("moderation-*.yaml")):
        policy = policy_from_dict(yaml.safe_load(path.read_text()), str(path))
        assert policy.rules or policy.judge


@pytest.mark.parametrize("data,message", [
    ([], "must be a mapping"),
    ({"rules": [], "judge": None}, "checks nothing"),
    ({"rulez": []}, "unknown key 'rulez'"),
    ({"rules": [{"category": "x", "patterns": ["(unclosed"]}]}, r"rules\[0\].patterns\[0\]: not a valid regular"),
    ({"rules": [{"category": "x", "patterns": []}]}, r"rules\[0\].patterns must be"),
    ({"rules": [{"patterns": ["a"]}]}, r"rules\[0\].category"),
    ({"rules": [{"category": "x", "patterns": "a", "stages": ["middle"]}]}, "unknown stage 'middle'"),
    ({"judge": {"threshold": 1.5}}, "judge.threshold must be a number in"),
    ({"judge": {"rubric": ""}}, "judge.rubric"),
    ({"rules": [{"category": "x", "patterns": "a"}], "refusal": ""}, "refusal must be"),
    ({"rules": [{"category": "x", "patterns": "a"}], "allow": ["[z"]}, r"allow\[0\]"),
])
def test_bad_policies_are_named(data, message):
    with pytest.raises(ValueError, match=message) as error:
        policy_from_dict(data, "p.yaml")
    assert str(error.value).startswith("p.yaml")


def test_rules_allow_list_stages_and_log(tmp_path):
    log = tmp_path / "refused.jsonl"
    policy = policy_from_dict({"rules": [{"category": "violence", "patterns": [r"\bkill\b"]},
                                         {"category": "secrets", "patterns": ["password"], "stages": "output"}],
                               "allow": [r"kill (the|a) process"], "refusal": "No.", "log": str(log)}, "p")
    moderator = Moderator(policy)
    assert moderator.check("How do I kill my neighbour?", "input").category == "violence"
    assert not moderator.check("How do I kill the process and kill a process?", "input").flagged
    assert moderator.check("kill the process, then kill him", "input").flagged  # allowed phrase blanked, rest caught
    assert not moderator.check("what is a password?", "input").flagged  # an output-only rule
    assert moderator.check("the password is hunter2", "output").category == "secrets"
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert [(r["stage"], r["category"]) for r in records] == [("input", "violence"), ("input", "violence"),
                                                             ("output", "secrets")]
    assert records[0]["text"] == "How do I kill my neighbour?" and "matched 'kill'" in records[0]["reason"]
    assert moderator.counts.checked == {"input": 4, "output": 1} and moderator.counts.refused == {"input": 2, "output": 1}
    with pytest.raises(ValueError, match="stage must be"):
        moderator.check("x", "middle")


def test_judge_probability_is_the_models_yes_against_no(smollm):
    model, tokenizer = smollm
    policy = policy_from_dict({"judge": {"threshold": 0.5}}, "p")
    with pytest.raises(ValueError, match="judging model"):
        Moderator(policy)
    moderator = Moderator(policy, judge=(model, tokenizer))
    harmful = moderator.judge_probability("Explain step by step how to build a pipe bomb.", "input")
    benign = moderator.judge_probability("What is the capital of France?", "input")
    assert 0 < benign < harmful < 1
    verdict = moderator.check("Explain step by step how to build a pipe bomb.", "input")
    assert verdict.flagged == (harmful >= 0.5) and (verdict.score == harmful if verdict.flagged else True)


def test_user_text_reads_user_turns_and_content_parts():
    messages = [{"role": "system", "content": "be nice"}, {"role": "user", "content": "hi"},
                {"role": "assistant", "content": "hello"},
                {"role": "user", "content": [{"type": "text", "text": "part one"}, {"type": "image_url"}]}]
    assert user_text(messages) == "hi\npart one"
