"""PII rules: checksums by hand, each type found with its span, look-alikes left alone, placeholders and counts."""

from __future__ import annotations

import pytest

from lmforge.data.pii import PiiScrubber, find_pii, iban_valid, luhn_valid, scrub_pii


def test_luhn_by_hand():
    # 7992739871 + check digit 3: the textbook example (digits doubled from the right, sum 70).
    assert luhn_valid("79927398713")
    assert not any(luhn_valid(f"7992739871{d}") for d in "012456789")
    assert luhn_valid("4111111111111111") and not luhn_valid("4111111111111112")


def test_iban_mod97_on_published_examples():
    assert iban_valid("GB82 WEST 1234 5698 7654 32")
    assert iban_valid("DE89370400440532013000")
    assert not iban_valid("GB82 WEST 1234 5698 7654 33")  # one digit changed
    assert not iban_valid("DE8937040044053201300")  # a digit short for Germany
    assert not iban_valid("XX82WEST12345698765432")  # no such country


@pytest.mark.parametrize("kind,value", [
    ("EMAIL", "ada.lovelace@example.org"),
    ("PHONE", "(415) 273-9988"),
    ("PHONE", "415-273-9988"),
    ("PHONE", "+44 20 7946 0958"),
    ("PHONE", "+49 30 901820"),
    ("IP_ADDRESS", "203.0.113.7"),
    ("IP_ADDRESS", "2001:db8:85a3::8a2e:370:7334"),
    ("CREDIT_CARD", "4111 1111 1111 1111"),
    ("CREDIT_CARD", "378282246310005"),
    ("IBAN", "GB82 WEST 1234 5698 7654 32"),
    ("US_SSN", "078-05-1120"),
])
def test_each_type_found_with_its_exact_span(kind, value):
    text = f"Before it, {value} and after."
    found = find_pii(text)
    assert [(f.kind, f.text) for f in found] == [(kind, value)]
    assert text[found[0].start:found[0].end] == value


@pytest.mark.parametrize("text", [
    "Upgrade to version 3.12.1 first.",
    "Released on 2023-04-05 at 12:30:45.",
    "Order 4111 1111 1111 1112 failed the check.",  # Luhn fails
    "Reference GB83 WEST 1234 5698 7654 32 is wrong.",  # mod 97 fails
    "Form 666-12-3456 and 900-12-3456 were never issued.",  # SSN blocks never issued
    "items = values[1::2] + grid[0:3:1]",  # slices, not IPv6
    "batch 4155550134 of 9999",  # a bare digit run
    "x = 0.5 * 1.25e-3; y = 1 2 3 4",
    "the float +35236450.6 is not a phone",
])
def test_look_alikes_are_left_alone(text):
    assert find_pii(text) == []


def test_scrub_replaces_by_type_and_counts():
    text = "Mail bob@example.com, card 5555-5555-5555-4444, ip 198.51.100.23, again bob@example.com."
    clean, counts = scrub_pii(text)
    assert clean == "Mail <EMAIL>, card <CREDIT_CARD>, ip <IP_ADDRESS>, again <EMAIL>."
    assert counts == {"EMAIL": 2, "CREDIT_CARD": 1, "IP_ADDRESS": 1}
    scrubber = PiiScrubber()
    assert scrubber(text) == clean and scrubber("no identifiers here") == "no identifiers here"
    assert scrubber.counts == counts


def test_overlaps_claimed_once_and_national_phones_need_their_region():
    # An IBAN's digits could look like a card or a phone number: the IBAN claims the span.
    found = find_pii("Pay DE89 3704 0044 0532 0130 00 now")
    assert [f.kind for f in found] == ["IBAN"]
    uk_national = "call 020 7946 0958 today"
    assert find_pii(uk_national) == []  # not a US number
    assert [f.kind for f in find_pii(uk_national, regions=("GB",))] == ["PHONE"]


def test_unknown_type_is_an_error():
    with pytest.raises(ValueError, match="unknown PII type"):
        find_pii("x", types=["NAME"])
