"""The PII measurement: labelled lines hold what their labels say, scoring counts hits and misses."""

from __future__ import annotations

import ipaddress

from lmforge.data.pii import iban_valid, luhn_valid
from lmforge.eval.pii import LabelledLine, clean_text_detections, labelled_lines, score_detection


def test_labelled_lines_are_reproducible_and_their_spans_hold_valid_identifiers():
    lines = labelled_lines(400, seed=5)
    assert lines == labelled_lines(400, seed=5) and lines != labelled_lines(400, seed=6)
    kinds = set()
    for line in lines:
        for kind, start, end in line.spans:
            value = line.text[start:end]
            kinds.add(kind)
            if kind == "CREDIT_CARD":
                assert luhn_valid(value.replace(" ", "").replace("-", ""))
            elif kind == "IBAN":
                assert iban_valid(value)
            elif kind == "IP_ADDRESS":
                ipaddress.ip_address(value)
            elif kind == "EMAIL":
                assert value.count("@") == 1
    assert kinds == {"EMAIL", "PHONE", "IP_ADDRESS", "CREDIT_CARD", "IBAN", "US_SSN"}
    assert sum(1 for line in lines if not line.spans) > 60  # decoy-only lines


def test_scoring_counts_exact_spans():
    text = "mail a@example.com now, or 4111 1111 1111 1111"
    lines = [LabelledLine(text, (("EMAIL", 5, 18), ("PHONE", 27, 46)))]  # the second label has the wrong type
    scores = score_detection(lines)
    assert scores["per_type"]["EMAIL"] == {"gold": 1, "detected": 1, "correct": 1, "recall": 1.0, "precision": 1.0}
    assert scores["per_type"]["PHONE"]["recall"] == 0.0
    assert scores["per_type"]["CREDIT_CARD"]["precision"] == 0.0
    assert scores["recall"] == 0.5 and scores["precision"] == 0.5
    assert scores["misses"] == [{"type": "PHONE", "text": "4111 1111 1111 1111"}]


def test_clean_detections_per_megabyte():
    report = clean_text_detections([("a", "x = 1\n" * 1000), ("b", "ip 192.0.2.1 and 192.0.2.1")])
    assert report["detections"] == 2 and report["bytes"] == 6000 + 26
    assert report["per_type"]["IP_ADDRESS"]["per_mb"] == 2 / (6026 / 1e6)
    assert report["per_type"]["IP_ADDRESS"]["top"] == [("192.0.2.1", 2)]
