"""Generated text sets: deterministic, disjoint splits, the cipher's rules, summaries that hold the facts."""

from __future__ import annotations

import re

import pytest

from lmforge.eval.textsets import OPEN_ENDED, pig_latin, summary_items, translation_items


def test_pig_latin_rules():
    assert pig_latin("market") == "arketmay"  # leading consonant moves, + "ay"
    assert pig_latin("street") == "eetstray"  # a consonant cluster moves whole
    assert pig_latin("old") == "oldway" and pig_latin("apple") == "appleway"  # vowel first: + "way"
    assert pig_latin("by") == "ybay" and pig_latin("rhythm") == "ythmrhay"  # y after the first letter is a vowel
    assert pig_latin("The cat, by the river!") == "ethay atcay, ybay ethay iverray!"


def test_items_are_deterministic_and_splits_disjoint():
    assert summary_items(9) == summary_items(9)
    assert summary_items(5) == summary_items(12)[:5]
    assert translation_items(7) == translation_items(30)[:7]
    train, test = set(translation_items(400, "train")), set(translation_items(400, "test"))
    assert len(train) == len(test) == 400 and not train & test
    assert not {r for r, _ in summary_items(300, "train")} & {r for r, _ in summary_items(300, "test")}
    assert summary_items(3, seed=1) != summary_items(3, seed=0)
    with pytest.raises(ValueError, match="split"):
        summary_items(3, split="dev")


def test_translations_are_the_cipher_of_the_sentence():
    for english, cipher in translation_items(50):
        assert cipher == pig_latin(english) and len(cipher.split()) == len(english.split())


def test_summaries_state_facts_found_in_the_report():
    for report, summary in summary_items(60):
        assert summary[0].isupper() and summary.endswith(".")
        for number in re.findall(r"\d+(?:\.\d+)?", summary):
            assert number in report  # every figure of the summary comes from the report
        assert len(summary) < len(report) / 2


def test_open_ended_prompts():
    assert len(OPEN_ENDED) >= 20
    assert {category for category, _, _ in OPEN_ENDED} == {"creative", "explain", "advice", "writing"}
    assert len({prompt for _, prompt, _ in OPEN_ENDED}) == len(OPEN_ENDED)
    assert all(reference.strip() for _, _, reference in OPEN_ENDED)
