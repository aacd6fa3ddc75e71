"""Constitutions: principles read from mappings, rule checks, revision clean-up, example prompts."""

from __future__ import annotations

import random

import pytest

from lmforge.data.constitution import Constitution, build_check, example_prompts

PLAIN = {"name": "plain", "principles": [
    {"name": "short", "critique": "Too long?", "revision": "Shorten it.", "check": {"max_words": 5}},
    {"name": "calm", "critique": "Shouting?", "revision": "Calm down.", "rubric": "No exclamation marks.",
     "check": {"forbid": ["!"]}},
    {"name": "kind", "critique": "Kind?", "revision": "Be kind."},
]}


def test_principles_and_compliance():
    constitution = Constitution.from_dict(PLAIN)
    assert [p.name for p in constitution.principles] == ["short", "calm", "kind"]
    assert constitution.principles[0].rubric == "Too long?" and constitution.principles[1].rubric == "No exclamation marks."
    assert [p.name for p in constitution.checkable] == ["short", "calm"]
    assert constitution.compliant("It is blue.") and not constitution.compliant("It is blue!")
    assert not constitution.compliant("one two three four five six")
    drawn = {constitution.draw(random.Random(seed)).name for seed in range(30)}
    assert drawn == {"short", "calm", "kind"}


def test_rule_checks():
    assert build_check({"max_sentences": 2})("One. Two.") and not build_check({"max_sentences": 2})("One. Two. Three.")
    assert not build_check({"max_lines": 1})("a\nb") and build_check({"max_lines": 1})("a\n\n")
    assert build_check({"require": ["Paris"]})("it is paris") and not build_check({"require": "Rome"})("Paris")
    both = build_check({"max_words": 3, "forbid": ["sorry"]})
    assert both("yes it is") and not both("sorry, no") and not both("no it is not")
    assert build_check({"python": "string:capwords"})("x")  # any importable text -> truthy function
    for spec, message in [({}, "at least one"), ({"max_words": 0}, "positive integer"), ({"forbid": []}, "non-empty"),
                          ({"lenght": 3}, "unknown rule"), ({"python": "nope"}, "module:function"),
                          ({"python": "no_such_module_x:f"}, "cannot import")]:
        with pytest.raises(ValueError, match=message):
            build_check(spec, "c")


@pytest.mark.parametrize("data,message", [
    ({"principles": []}, "non-empty list"),
    ({"principles": [{"name": "a", "critique": "c"}]}, "'revision' must be a non-empty string"),
    ({"principles": [{"name": "a", "critique": "c", "revision": "r", "extra": 1}]}, "unknown key"),
    ({"principles": [{"name": "a", "critique": "c", "revision": "r"}] * 2}, "unique"),
    ({"rules": []}, "unknown key"),
    ("text", "expected a mapping"),
])
def test_bad_constitutions_are_named(data, message):
    with pytest.raises(ValueError, match=message):
        Constitution.from_dict(data, "c.yaml")


def test_clean_revision():
    assert Constitution.clean_revision("Revised response: It is blue.") == "It is blue."
    assert Constitution.clean_revision('**Rewritten answer:** "Short."') == "Short."
    assert Constitution.clean_revision("Here is the revised version: ok") == "ok"
    assert Constitution.clean_revision("Revised plans are good.") == "Revised plans are good."


def test_example_prompts_have_disjoint_splits():
    train = {p[0]["content"] for p in example_prompts(200, "train")}
    held = {p[0]["content"] for p in example_prompts(80, "heldout")}
    assert len(train) == 200 and len(held) == 80 and not train & held
    assert example_prompts(5, "train", seed=1) != example_prompts(5, "train", seed=2)
    with pytest.raises(ValueError, match="only"):
        example_prompts(10_000, "heldout")
