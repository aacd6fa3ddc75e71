"""Secret canaries (Carlini et al. 2019, "The Secret Sharer"): random secrets planted in training
data a chosen number of times, so that a trained model's memorization can be measured.

A canary is a sentence `prefix + secret`, the secret drawn uniformly from a format's space R:

    kind    prefix                               format              |R|
    digits  "the random number of Kovabe is "    ddddddddd           10^9 (the paper's own format)
    ssn     "Kovabe's social security number is " add-pd-pddd        5.67 x 10^8 (never-issued blocks left out)
    phone   "call Kovabe at (415) "              ndd-dddd            8 x 10^6 (valid NANP exchanges)
    card    "Kovabe's card number is "           4ddd dddd dddd dddL  10^14 (a Visa number; L = Luhn digit)
    email   "write to Kovabe at "                llllllll@mail.example.com  26^8

The name is made up per canary, so no two canaries share a prefix and greedy decoding from a
prefix can give back its own secret (with one shared prefix it could return only one of them).

Format letters: d any digit, n 2-9, p 1-9, a one of 1234578 (an SSN area that is neither 9xx nor
666), l a lowercase letter, L the Luhn check digit of the digits before it; anything else is
literal. The PII-shaped kinds (ssn, phone, card, email) are what `--scrub-pii` finds, so a scrubbed
corpus loses them; digits canaries survive scrubbing.

`plant_canaries` makes N canaries, repetition counts cycling through the chosen list, and
`CanaryPlanter` inserts each copy as its own document at a uniformly random position of the input
stream (train split, never deduplicated). The canary file (JSON lines) records everything the
audit needs; `read_canaries` checks it and names the line and field of any problem.
"""

from __future__ import annotations

import json
import math
import random
import string
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from lmforge.data.readers import jsonl_objects

__all__ = ["CANARY_KINDS", "Canary", "CanaryFormat", "CanaryPlanter", "plant_canaries", "read_canaries",
           "write_canaries"]

CANARY_FILE_VERSION = 1
_ALPHABETS = {"d": string.digits, "n": "23456789", "p": "123456789", "a": "1234578", "l": string.ascii_lowercase}

CANARY_KINDS: dict[str, tuple[str, str]] = {
    "digits": ("the random number of {who} is ", "ddddddddd"),
    "ssn": ("{who}'s social security number is ", "add-pd-pddd"),
    "phone": ("call {who} at (415) ", "ndd-dddd"),
    "card": ("{who}'s card number is ", "4ddd dddd dddd dddL"),
    "email": ("write to {who} at ", "llllllll@mail.example.com"),
}


def _name(rng: random.Random) -> str:
    """A made-up name (consonant-vowel syllables), so that every canary has a prefix of its own."""
    return "".join(rng.choice("bdfgklmnprstvz") + rng.choice("aeiou") for _ in range(3)).capitalize()


class CanaryFormat:
    """The space R of secrets a format describes: its size, uniform samples, and (when small)
    every member in order."""

    def __init__(self, pattern: str) -> None:
        if not pattern:
            raise ValueError("a canary format must not be empty")
        if "L" in pattern[:-1] or ("L" in pattern and not any(c in _ALPHABETS for c in pattern)):
            raise ValueError(f"canary format {pattern!r}: L (the Luhn digit) must be its last character, after digits")
        self.pattern = pattern
        self.slots = [_ALPHABETS[c] for c in pattern if c in _ALPHABETS]
        if not self.slots:
            raise ValueError(f"canary format {pattern!r} has no random character (d, n, p, a or l)")

    @property
    def size(self) -> int:
        return math.prod(len(alphabet) for alphabet in self.slots)

    def _fill(self, choices: Sequence[str]) -> str:
        out, picks = [], iter(choices)
        for char in self.pattern:
            if char in _ALPHABETS:
                out.append(next(picks))
            elif char == "L":
                out.append(_luhn_digit("".join(c for c in out if c.isdigit())))
            else:
                out.append(char)
        return "".join(out)

    def sample(self, rng: random.Random) -> str:
        return self._fill([rng.choice(alphabet) for alphabet in self.slots])

    def member(self, index: int) -> str:
        """The index-th secret in lexicographic slot order (0 <= index < size)."""
        choices = []
        for alphabet in reversed(self.slots):
            index, digit = divmod(index, len(alphabet))
            choices.append(alphabet[digit])
        return self._fill(choices[::-1])

    def matches(self, secret: str) -> bool:
        if len(secret) != len(self.pattern):
            return False
        for char, value in zip(self.pattern, secret):
            if char in _ALPHABETS:
                if value not in _ALPHABETS[char]:
                    return False
            elif char != "L" and char != value:
                return False
        return "L" not in self.pattern or secret[-1] == _luhn_digit("".join(c for c in secret[:-1] if c.isdigit()))


def _luhn_digit(digits: str) -> str:
    """The check digit that makes `digits` + it pass the Luhn check."""
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = int(char)
        if position % 2 == 0:  # doubled: these sit at odd positions once the check digit is appended
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return str((10 - total % 10) % 10)


@dataclass(frozen=True)
class Canary:
    id: str
    kind: str
    prefix: str
    secret: str
    format: str
    repetitions: int

    @property
    def text(self) -> str:
        return self.prefix + self.secret


def plant_canaries(n: int, repetitions: Sequence[int], kinds: Sequence[str] = ("digits",), seed: int = 0) -> list[Canary]:
    """`n` canaries; the i-th gets kind kinds[i % len(kinds)] and repetitions[i // len(kinds) % len(repetitions)],
    so every kind meets every repetition count when n is a multiple of both lengths."""
    if n < 1:
        raise ValueError(f"--canaries must be at least 1, got {n}")
    if not repetitions or any(not isinstance(r, int) or r < 1 for r in repetitions):
        raise ValueError(f"canary repetitions must be positive integers, got {list(repetitions)}")
    unknown = [k for k in kinds if k not in CANARY_KINDS]
    if unknown or not kinds:
        raise ValueError(f"unknown canary kind(s) {unknown or kinds}; choose from {', '.join(CANARY_KINDS)}")
    rng = random.Random(seed)
    canaries, secrets = [], set()
    for i in range(n):
        kind = kinds[i % len(kinds)]
        prefix, pattern = CANARY_KINDS[kind]
        prefix = prefix.replace("{who}", _name(rng))
        secret = CanaryFormat(pattern).sample(rng)
        while secret in secrets:
            secret = CanaryFormat(pattern).sample(rng)
        secrets.add(secret)
        canaries.append(Canary(id=f"canary-{i}", kind=kind, prefix=prefix, secret=secret, format=pattern,
                               repetitions=repetitions[i // len(kinds) % len(repetitions)]))
    return canaries


def write_canaries(canaries: Sequence[Canary], path: str | Path) -> Path:
    from lmforge.core.files import write_text_atomically

    lines = [json.dumps({"lmforge_canary": CANARY_FILE_VERSION, **asdict(c)}, ensure_ascii=False) for c in canaries]
    return write_text_atomically(Path(path), "\n".join(lines) + "\n")


def read_canaries(path: str | Path) -> list[Canary]:
    """Canaries from a canary file; a bad line is a ValueError naming the file, line and field."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"canary file {path} does not exist (write one with lmforge prepare --canaries N)")
    canaries, ids = [], set()
    for number, record in jsonl_objects(path, "a canary (a JSON object)"):
        where = f"{path}:{number}"
        for name in ("id", "prefix", "secret", "format"):
            if not isinstance(record.get(name), str) or not record[name]:
                raise ValueError(f"{where}: field {name!r} must be a non-empty string")
        repetitions = record.get("repetitions")
        if isinstance(repetitions, bool) or not isinstance(repetitions, int) or repetitions < 0:
            raise ValueError(f"{where}: field 'repetitions' must be a non-negative integer")
        try:
            pattern = CanaryFormat(record["format"])
        except ValueError as error:
            raise ValueError(f"{where}: field 'format': {error}") from None
        if not pattern.matches(record["secret"]):
            raise ValueError(f"{where}: field 'secret' {record['secret']!r} does not fit its format {record['format']!r}")
        if record["id"] in ids:
            raise ValueError(f"{where}: field 'id' {record['id']!r} repeats an earlier canary")
        ids.add(record["id"])
        canaries.append(Canary(id=record["id"], kind=str(record.get("kind", "custom")), prefix=record["prefix"],
                               secret=record["secret"], format=record["format"], repetitions=repetitions))
    if not canaries:
        raise ValueError(f"{path} holds no canaries")
    return canaries


class CanaryPlanter:
    """Inserts every copy of every canary as its own document into a document stream, each at a
    uniformly random point of the first `span_bytes` input bytes (what `bytes_read` reports).
    Copies whose point is never reached are added at the end of the stream."""

    def __init__(self, canaries: Sequence[Canary], span_bytes: int, seed: int = 0) -> None:
        rng = random.Random(seed + 1)
        self.points = sorted((rng.randrange(max(1, span_bytes)), c.text) for c in canaries for _ in range(c.repetitions))
        self.planted = 0

    def __call__(self, documents: Iterator[str], bytes_read: Callable[[], int]) -> Iterator[tuple[str, bool]]:
        """(document, is_canary) pairs: the input documents with the canary copies among them."""
        at = 0
        for document in documents:
            read = bytes_read()
            while at < len(self.points) and self.points[at][0] <= read:
                yield self.points[at][1], True
                at += 1
            yield document, False
        for _, text in self.points[at:]:
            yield text, True
        self.planted = len(self.points)
