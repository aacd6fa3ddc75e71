"""The generated topic-classification task: distinct items, disjoint splits, majority labels."""

from __future__ import annotations

import pytest

from lmforge.data.topics import TOPICS, labels, make_topic_items


def topic_counts(text: str) -> dict[str, int]:
    words = text.replace(",", "").split()
    return {label: sum(word in TOPICS[label] for word in words) for label in labels()}


def test_items_are_distinct_seeded_and_labelled_by_their_majority_topic():
    items = make_topic_items(500, "train", seed=3)
    assert len({item.text for item in items}) == 500
    assert items == make_topic_items(500, "train", seed=3)
    for item in items:
        counts = topic_counts(item.text)
        assert counts[item.label] == max(counts.values()) and counts[item.label] >= 2
    assert {item.label for item in items} == set(labels())


def test_heldout_sentences_never_appear_in_training():
    train = {item.text for item in make_topic_items(2000, "train")}
    heldout = {item.text for item in make_topic_items(300, "heldout")}
    assert not train & heldout


def test_bad_arguments_are_clear_errors():
    with pytest.raises(ValueError, match="split"):
        make_topic_items(3, "test")
    with pytest.raises(ValueError, match="n must be"):
        make_topic_items(-1)
