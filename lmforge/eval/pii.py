"""How well the PII scrubber works: recall and precision on a generated labelled set, and what it
flags in clean text.

    lines = labelled_lines(2000, seed=0)     # real prose with identifiers (and decoys) mixed in
    scores = score_detection(lines)          # per type: recall, precision, counts
    clean = clean_text_detections(texts)     # detections per MB on text that should hold none

The labelled set: sentences of the Python documentation's prose (`pydoc_data.topics`, the text
`help()` shows, present in every Python install), each line with zero to two identifiers written as
people write them (phone numbers in national and international formats, cards grouped or not,
IBANs compact or in fours, compressed IPv6) inside a carrying phrase, and one line in four with a
decoy instead: a card number failing the Luhn check, an IBAN with wrong check digits, an SSN in a
never-issued block, dates, times, versions, ISBNs, hashes, order numbers, bare digit runs. A
detection counts as correct when its type and its span equal an inserted identifier's.
"""

from __future__ import annotations

import ipaddress
import random
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any

from lmforge.data.pii import IBAN_LENGTHS, PII_TYPES, find_pii, iban_checksum, luhn_valid

__all__ = ["LabelledLine", "clean_text_detections", "labelled_lines", "prose_sentences", "score_detection"]


@dataclass(frozen=True)
class LabelledLine:
    text: str
    spans: tuple[tuple[str, int, int], ...]  # (type, start, end) of every inserted identifier


def prose_sentences() -> list[str]:
    """Sentences of the language reference's prose (pydoc_data.topics), without digits or '@'."""
    from pydoc_data.topics import topics

    sentences = []
    for text in topics.values():
        flat = re.sub(r"\s+", " ", text)
        for sentence in re.split(r"(?<=[.!?]) (?=[A-Z])", flat):
            if 40 <= len(sentence) <= 220 and not re.search(r"[\d@*=]", sentence) and sentence[-1] in ".!?":
                sentences.append(sentence)
    return sentences


# -- identifiers ------------------------------------------------------------------------------
_FIRST = ("ada", "alan", "grace", "linus", "maria", "chen", "fatima", "olga", "kwame", "sofia", "ravi", "yuki")
_LAST = ("lovelace", "turing", "hopper", "nguyen", "garcia", "okafor", "ivanova", "smith", "kumar", "tanaka")
_DOMAINS = ("example.com", "mail.example.org", "uni-bonn.de", "post.co.uk", "company.io", "gmail.com", "web.fr")
_US_AREAS = (201, 202, 206, 212, 213, 303, 305, 312, 404, 415, 469, 503, 512, 602, 617, 646, 702, 718, 773, 919)


def _digits(rng: random.Random, n: int) -> str:
    return "".join(rng.choice("0123456789") for _ in range(n))


def _email(rng: random.Random) -> str:
    first, last = rng.choice(_FIRST), rng.choice(_LAST)
    local = rng.choice((f"{first}.{last}", f"{first}{rng.randint(1, 99)}", f"{first[0]}{last}", f"{first}_{last}",
                           f"{first}+{last}"))
    return f"{local}@{rng.choice(_DOMAINS)}"


def _phone(rng: random.Random) -> str:
    exchange = f"{rng.randint(2, 9)}{rng.choice([d for d in range(100) if d % 11 or d == 0]):02d}"
    area, line = rng.choice(_US_AREAS), _digits(rng, 4)
    return rng.choice((
        f"({area}) {exchange}-{line}", f"{area}-{exchange}-{line}", f"{area}.{exchange}.{line}",
        f"+1 {area} {exchange} {line}", f"+1-{area}-{exchange}-{line}", f"1-{area}-{exchange}-{line}",
        f"{area}{exchange}{line}",  # a bare digit run: left alone by the rules (code is full of them)
        f"+44 7{rng.choice('1234579')}{_digits(rng, 2)} {_digits(rng, 6)}",  # UK mobile
        f"+49 30 {rng.randint(2, 9)}{_digits(rng, 7)}",  # Berlin
        f"+33 {rng.choice('67')} {_digits(rng, 2)} {_digits(rng, 2)} {_digits(rng, 2)} {_digits(rng, 2)}",
        f"+91 {rng.choice('6789')}{_digits(rng, 4)} {_digits(rng, 5)}",  # India mobile
    ))


def _ipv4(rng: random.Random) -> str:
    while True:
        address = ipaddress.IPv4Address(rng.randrange(1 << 32))
        if address.is_global:
            return str(address)


def _ipv6(rng: random.Random) -> str:
    groups = [f"{rng.randrange(1 << 16):x}" for _ in range(8)]
    if rng.random() < 0.3:
        groups[:2] = ["2001", "db8"]  # the documentation prefix
    if rng.random() < 0.5:  # a run of zero groups, written compressed (::) as addresses usually are
        start, length = rng.randint(2, 5), rng.randint(1, 3)
        groups[start:start + length] = ["0"] * length
    return ipaddress.IPv6Address(":".join(groups[:8])).compressed


def _luhn_complete(prefix: str, length: int, rng: random.Random) -> str:
    body = prefix + _digits(rng, length - len(prefix) - 1)
    for check in "0123456789":
        if luhn_valid(body + check):
            return body + check
    raise AssertionError("unreachable: one check digit always completes a Luhn number")


def _group_card(number: str, rng: random.Random) -> str:
    separator = rng.choice(("", " ", "-"))
    if not separator:
        return number
    sizes = (4, 6, 5) if len(number) == 15 else (4,) * (len(number) // 4) + ((len(number) % 4,) if len(number) % 4 else ())
    pieces, at = [], 0
    for size in sizes:
        pieces.append(number[at:at + size])
        at += size
    return separator.join(pieces)


def _card(rng: random.Random) -> str:
    prefix, length = rng.choice((("4", 16), ("51", 16), ("55", 16), ("2221", 16), ("34", 15), ("37", 15),
                                 ("6011", 16), ("3530", 16), ("4", 19)))
    return _group_card(_luhn_complete(prefix, length, rng), rng)


_BBAN = {"DE": "d" * 18, "GB": "aaaa" + "d" * 14, "FR": "d" * 23, "NL": "aaaa" + "d" * 10, "ES": "d" * 20,
         "IT": "a" + "d" * 22, "CH": "d" * 17, "BE": "d" * 12, "AT": "d" * 16, "PL": "d" * 24}


def _iban(rng: random.Random, valid: bool = True) -> str:
    country = rng.choice(sorted(_BBAN))
    bban = "".join(rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ") if c == "a" else rng.choice("0123456789")
                   for c in _BBAN[country])
    check = 98 - iban_checksum(f"{country}00{bban}")
    if not valid:
        check = 2 + (check - 2 + rng.randint(1, 96)) % 97  # any other check digits in 2..98 fail mod 97
    compact = f"{country}{check:02d}{bban}"
    assert len(compact) == IBAN_LENGTHS[country]
    return compact if rng.random() < 0.5 else " ".join(compact[i:i + 4] for i in range(0, len(compact), 4))


def _ssn(rng: random.Random) -> str:
    area = rng.choice([a for a in range(1, 900) if a != 666])
    return f"{area:03d}-{rng.randint(1, 99):02d}-{rng.randint(1, 9999):04d}"


_MAKERS = {"EMAIL": _email, "PHONE": _phone, "IP_ADDRESS": lambda rng: (_ipv4 if rng.random() < 0.6 else _ipv6)(rng),
           "CREDIT_CARD": _card, "IBAN": _iban, "US_SSN": _ssn}
_PHRASES = {
    "EMAIL": ("Write to {} for details.", "Contact: {}", "Her address is {} since March.", "cc {} on the reply."),
    "PHONE": ("Call me on {} after six.", "Phone: {}", "The office number is {}.", "Reach him at {} tomorrow."),
    "IP_ADDRESS": ("The request came from {} at night.", "Login from {} was blocked.", "host={} port open."),
    "CREDIT_CARD": ("Card number {} was charged twice.", "Pay with {} please.", "The card {} expires soon."),
    "IBAN": ("Transfer it to {} by Friday.", "IBAN: {}", "Her account {} received the refund."),
    "US_SSN": ("His SSN is {} on the form.", "SSN {} was verified.", "Social security number: {}."),
}


def _decoy(rng: random.Random) -> str:
    number = _luhn_complete("4", 16, rng)
    broken = number[:-1] + str((int(number[-1]) + rng.randint(1, 9)) % 10)  # any other last digit fails Luhn
    return rng.choice((
        f"Order {broken} is on its way.", f"Reference {_iban(rng, valid=False)} is not an account.",
        f"Form id {rng.choice((0, 666, 900 + rng.randint(0, 99))):03d}-{rng.randint(10, 99)}-{rng.randint(1000, 9999)}.",
        f"Released on {rng.randint(1990, 2030)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}.",
        f"It started at {rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d}.",
        f"Upgrade to version {rng.randint(1, 9)}.{rng.randint(0, 20)}.{rng.randint(0, 30)} first.",
        f"ISBN 978-{rng.randint(0, 9)}-{rng.randint(10, 99)}-{_digits(rng, 6)}-{rng.randint(0, 9)}.",
        f"Commit {''.join(rng.choice('0123456789abcdef') for _ in range(12))} fixed it.",
        f"Batch {_digits(rng, 10)} had {rng.randint(2, 999)} items.", f"The total was {rng.randint(1, 99999)}.{_digits(rng, 2)} dollars.",
    ))


def labelled_lines(n: int, seed: int = 0) -> list[LabelledLine]:
    """`n` lines of real prose with identifiers inserted (module docstring); reproducible per seed."""
    if n < 1:
        raise ValueError(f"the labelled set needs at least one line, got {n}")
    rng = random.Random(seed)
    sentences = prose_sentences()
    lines = []
    for _ in range(n):
        parts: list[tuple[str, str | None, str]] = [(rng.choice(sentences), None, "")]
        roll = rng.random()
        inserts = 0 if roll < 0.25 else (2 if roll > 0.8 else 1)
        if roll < 0.25:
            parts.append((_decoy(rng), None, ""))
        for _ in range(inserts):
            kind = rng.choice(PII_TYPES)
            value = _MAKERS[kind](rng)
            parts.insert(rng.randint(0, len(parts)), (rng.choice(_PHRASES[kind]), kind, value))
        text, spans = "", []
        for template, kind, value in parts:
            piece = template if kind is None else template.replace("{}", value)
            if text:
                text += " "
            if kind is not None:
                start = len(text) + template.index("{}")
                spans.append((kind, start, start + len(value)))
            text += piece
        lines.append(LabelledLine(text, tuple(spans)))
    return lines


def _ratio(a: int, b: int) -> float:
    return a / b if b else float("nan")


def score_detection(lines: list[LabelledLine], regions: tuple[str, ...] = ("US",)) -> dict[str, Any]:
    """Recall and precision per type and over all (exact type and span), and the misses and false
    detections (a few of each, for reading)."""
    gold: Counter = Counter()
    found: Counter = Counter()
    hit: Counter = Counter()
    misses, false = [], []
    for line in lines:
        expected = set(line.spans)
        detected = {(f.kind, f.start, f.end) for f in find_pii(line.text, regions)}
        gold.update(kind for kind, _, _ in expected)
        found.update(kind for kind, _, _ in detected)
        hit.update(kind for kind, _, _ in expected & detected)
        misses += [(kind, line.text[s:e]) for kind, s, e in expected - detected]
        false += [(kind, line.text[s:e], line.text) for kind, s, e in detected - expected]
    per_type = {kind: {"gold": gold[kind], "detected": found[kind], "correct": hit[kind],
                       "recall": _ratio(hit[kind], gold[kind]), "precision": _ratio(hit[kind], found[kind])}
                for kind in PII_TYPES}
    total_gold, total_found, total_hit = sum(gold.values()), sum(found.values()), sum(hit.values())
    return {"lines": len(lines), "identifiers": total_gold, "recall": _ratio(total_hit, total_gold),
            "precision": _ratio(total_hit, total_found), "per_type": per_type,
            "misses": [{"type": k, "text": t} for k, t in misses[:20]],
            "false_detections": [{"type": k, "text": t, "line": line} for k, t, line in false[:20]]}


def clean_text_detections(texts: list[tuple[str, str]], regions: tuple[str, ...] = ("US",),
                          examples: int = 12) -> dict[str, Any]:
    """Detections in (name, text) pairs that should hold no identifiers: count per type, per MB of
    UTF-8 text, and the most frequent detected strings per type."""
    counts: Counter = Counter()
    strings: dict[str, Counter] = {kind: Counter() for kind in PII_TYPES}
    n_bytes = 0
    for _, text in texts:
        n_bytes += len(text.encode("utf-8"))
        for finding in find_pii(text, regions):
            counts[finding.kind] += 1
            strings[finding.kind][finding.text] += 1
    megabytes = n_bytes / 1e6
    return {"bytes": n_bytes, "files": len(texts), "detections": sum(counts.values()),
            "per_mb": _ratio(sum(counts.values()), 1) / megabytes if megabytes else float("nan"),
            "per_type": {kind: {"count": counts[kind], "per_mb": counts[kind] / megabytes if megabytes else float("nan"),
                                "top": strings[kind].most_common(examples)} for kind in PII_TYPES}}
