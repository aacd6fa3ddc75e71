"""Canaries: format spaces, planting, canary files (bad lines named), the planter's stream."""

from __future__ import annotations

import json
import random

import pytest

from lmforge.data.canaries import CanaryFormat, CanaryPlanter, plant_canaries, read_canaries, write_canaries
from lmforge.data.pii import find_pii, luhn_valid


def test_format_size_members_and_samples():
    space = CanaryFormat("nd-d")
    assert space.size == 8 * 10 * 10
    members = [space.member(i) for i in range(space.size)]
    assert members[0] == "20-0" and members[-1] == "99-9" and len(set(members)) == space.size
    assert all(space.matches(m) for m in members)
    rng = random.Random(0)
    assert all(space.matches(space.sample(rng)) for _ in range(50))
    assert not space.matches("10-0") and not space.matches("20-00") and not space.matches("20_0")


def test_luhn_digit_formats_are_valid_cards():
    space = CanaryFormat("4ddd dddd dddd dddL")
    assert space.size == 10**14
    rng = random.Random(1)
    for _ in range(20):
        card = space.sample(rng)
        assert luhn_valid(card.replace(" ", "")) and space.matches(card)
    bad = card[:-1] + str((int(card[-1]) + 1) % 10)
    assert not space.matches(bad)
    with pytest.raises(ValueError, match="last character"):
        CanaryFormat("dLd")


def test_pii_shaped_kinds_are_found_by_the_scrubber():
    canaries = plant_canaries(40, [1], ["ssn", "phone", "card", "email", "digits"], seed=3)
    for canary in canaries:
        kinds = {f.kind for f in find_pii(canary.text)}
        assert bool(kinds) == (canary.kind != "digits"), canary.text


def test_plant_cycles_kinds_and_repetitions():
    canaries = plant_canaries(8, [1, 16], ["digits", "ssn"], seed=0)
    assert [(c.kind, c.repetitions) for c in canaries] == [
        ("digits", 1), ("ssn", 1), ("digits", 16), ("ssn", 16)] * 2
    assert len({c.secret for c in canaries}) == 8
    with pytest.raises(ValueError, match="unknown canary kind"):
        plant_canaries(2, [1], ["nope"])
    with pytest.raises(ValueError, match="repetitions"):
        plant_canaries(2, [0])


def test_canary_file_round_trip_and_bad_lines(tmp_path):
    canaries = plant_canaries(4, [1, 4], ["digits", "phone"])
    path = write_canaries(canaries, tmp_path / "c.jsonl")
    assert read_canaries(path) == canaries
    good = json.loads(path.read_text().splitlines()[0])
    cases = {
        "not valid JSON": "{oops",
        "field 'secret'": json.dumps({**good, "secret": ""}),
        "does not fit its format": json.dumps({**good, "secret": "12345"}),
        "field 'repetitions'": json.dumps({**good, "repetitions": "many"}),
        "field 'format'": json.dumps({**good, "format": "xyz"}),
        "repeats an earlier canary": json.dumps(good) + "\n" + json.dumps(good),
    }
    for message, content in cases.items():
        bad = tmp_path / "bad.jsonl"
        bad.write_text(content + "\n")
        with pytest.raises(ValueError, match=message) as error:
            read_canaries(bad)
        assert "bad.jsonl:" in str(error.value)
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(ValueError, match="no canaries"):
        read_canaries(tmp_path / "empty.jsonl")
    with pytest.raises(FileNotFoundError, match="prepare --canaries"):
        read_canaries(tmp_path / "missing.jsonl")


def test_planter_inserts_every_copy_in_order():
    canaries = plant_canaries(3, [1, 2, 5])
    planter = CanaryPlanter(canaries, span_bytes=1000, seed=0)
    read = {"bytes": 0}

    def documents():
        for i in range(10):
            read["bytes"] += 100
            yield f"doc {i}"

    out = list(planter(documents(), lambda: read["bytes"]))
    assert [d for d, planted in out if not planted] == [f"doc {i}" for i in range(10)]
    planted = [d for d, is_canary in out if is_canary]
    assert sorted(planted) == sorted(c.text for c in canaries for _ in range(c.repetitions))
    assert planter.planted == 8
