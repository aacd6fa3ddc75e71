"""Personal identifiers in text: found by rules with checksums, replaced by typed placeholders.

    scrubber = PiiScrubber()
    clean = scrubber("write to ada@example.org or call +44 20 7946 0958")
    # 'write to <EMAIL> or call <PHONE>'; scrubber.counts == {"EMAIL": 1, "PHONE": 1}

What is found, and how a candidate is confirmed:
  EMAIL        local@domain.tld (a dotted domain ending in 2-24 letters)
  PHONE        a number written with a leading + or with separators (spaces, dots, dashes,
               parentheses), confirmed by `phonenumbers` (Google's libphonenumber metadata): a +
               number must have a possible length for its country code; a number without a + is
               read as a number of `regions` (default US/NANP) and must be a valid number there,
               its digits grouped as that country writes them ((415) 555-0134, 415-555-0134).
               Bare digit runs are not phone numbers here: code and tables are full of them.
  IP_ADDRESS   IPv4 dotted quads and IPv6 addresses (full or compressed, with at least three
               groups: `1::2` is far more often a slice than an address), parsed by `ipaddress`
  CREDIT_CARD  13-19 digits, grouped by one kind of separator or none, with a card network's
               prefix (Visa, Mastercard, Amex, Discover, JCB, Diners, UnionPay, Maestro) and a valid
               Luhn check digit
  IBAN         country code, two check digits and the account, compact or in groups of four,
               the country's IBAN length, and the ISO 13616 mod-97 checksum equal to 1
  US_SSN       ddd-dd-dddd with the Social Security Administration's never-issued blocks excluded
               (area 000, 666, 900-999; group 00; serial 0000)

Why rules and not a library such as Microsoft Presidio: Presidio's analyzer needs a spaCy
language model that is downloaded from outside the package registries (not possible offline) and
runs a neural pipeline over every text (slow on a corpus); its pattern recognizers for these types
are regular expressions with the same checksums. `phonenumbers`, the library Presidio itself uses
for phone numbers, ships its metadata in the package and is used here.

Overlaps are resolved by the order above being reversed in strength: a span claimed by a more
specific type (EMAIL, IBAN, CREDIT_CARD, US_SSN, IP_ADDRESS, then PHONE) is not claimed again.
"""

from __future__ import annotations

import bisect
import ipaddress
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["PII_TYPES", "PiiFinding", "PiiScrubber", "find_pii", "iban_valid", "luhn_valid", "placeholder",
           "scrub_pii"]

PII_TYPES = ("EMAIL", "IBAN", "CREDIT_CARD", "US_SSN", "IP_ADDRESS", "PHONE")  # claim order


def placeholder(kind: str) -> str:
    """The text that replaces an identifier of `kind`, e.g. <EMAIL>."""
    return f"<{kind}>"


@dataclass(frozen=True)
class PiiFinding:
    kind: str
    start: int
    end: int
    text: str


# --------------------------------------------------------------------------------------------
# checksums
# --------------------------------------------------------------------------------------------
def luhn_valid(digits: str) -> bool:
    """The Luhn (mod 10) check of a card number: every second digit from the right doubled."""
    if not digits.isdigit() or len(digits) < 2:
        return False
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = int(char)
        if position % 2:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return total % 10 == 0


# IBAN length per country (ISO 13616 registry).
IBAN_LENGTHS = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22, "BI": 27, "BR": 29,
    "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DJ": 27, "DK": 18, "DO": 28, "EE": 20, "EG": 29,
    "ES": 24, "FI": 18, "FK": 18, "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27, "GT": 28,
    "HR": 21, "HU": 28, "IE": 22, "IL": 23, "IQ": 23, "IS": 26, "IT": 27, "JO": 30, "KW": 30, "KZ": 20, "LB": 28,
    "LC": 32, "LI": 21, "LT": 20, "LU": 20, "LV": 21, "LY": 25, "MC": 27, "MD": 24, "ME": 22, "MK": 19, "MN": 20,
    "MR": 27, "MT": 31, "MU": 30, "NI": 28, "NL": 18, "NO": 15, "OM": 23, "PK": 24, "PL": 28, "PS": 29, "PT": 25,
    "QA": 29, "RO": 24, "RS": 22, "RU": 33, "SA": 24, "SC": 31, "SD": 18, "SE": 24, "SI": 19, "SK": 24, "SM": 27,
    "SO": 23, "ST": 25, "SV": 28, "TL": 23, "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20, "YE": 30,
}


def iban_checksum(compact: str) -> int:
    """ISO 13616 mod 97 of an IBAN (country and check digits moved to the end, letters as 10-35)."""
    rearranged = compact[4:] + compact[:4]
    return int("".join(str(int(char, 36)) for char in rearranged)) % 97


def iban_valid(text: str) -> bool:
    """An IBAN (spaces allowed) with its country's length and a mod-97 checksum of 1."""
    compact = text.replace(" ", "").upper()
    if not re.fullmatch(r"[A-Z]{2}\d{2}[A-Z0-9]+", compact):
        return False
    return IBAN_LENGTHS.get(compact[:2]) == len(compact) and iban_checksum(compact) == 1


def _card_network(digits: str) -> bool:
    """A known card network's prefix and length (IIN ranges)."""
    n, two, three, four, six = len(digits), int(digits[:2]), int(digits[:3]), int(digits[:4]), int(digits[:6])
    if digits[0] == "4":
        return n in (13, 16, 19)  # Visa
    if 51 <= two <= 55 or 222100 <= six <= 272099:
        return n == 16  # Mastercard
    if two in (34, 37):
        return n == 15  # American Express
    if four == 6011 or two == 65 or 644 <= three <= 649 or 622126 <= six <= 622925:
        return 16 <= n <= 19  # Discover
    if 3528 <= four <= 3589:
        return 16 <= n <= 19  # JCB
    if 300 <= three <= 305 or two in (36, 38, 39) or four == 3095:
        return 14 <= n <= 19  # Diners Club
    if two == 62:
        return 16 <= n <= 19  # UnionPay
    if four in (5018, 5020, 5038, 5893, 6304, 6759, 6761, 6762, 6763):
        return 12 <= n <= 19  # Maestro
    return False


def ssn_valid(text: str) -> bool:
    area, group, serial = text.split("-")
    return area not in ("000", "666") and not area.startswith("9") and group != "00" and serial != "0000"


# --------------------------------------------------------------------------------------------
# candidates
# --------------------------------------------------------------------------------------------
_EMAIL = re.compile(r"(?<![\w.%+-])[A-Za-z0-9][A-Za-z0-9._%+-]{0,63}@"
                    r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,24}(?![\w@-])")
_IBAN = re.compile(r"(?<![A-Za-z0-9])[A-Z]{2}\d{2}(?: ?[A-Z0-9]){10,32}")
_CARD = re.compile(r"(?<![\w.-])\d(?:[ -]?\d){11,18}(?![\w-]|\.\d)")
_SSN = re.compile(r"(?<![\w-])\d{3}-\d{2}-\d{4}(?![\w-])")
_IPV4 = re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?![\w]|\.\d)")
_IPV6 = re.compile(r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:[0-9A-Fa-f]{1,4}|(?:\d{1,3}\.){3}\d{1,3})?(?![\w:]|\.\d)")
# A + number, or digit groups joined by separators (optionally with a bracketed area code).
_PHONE = re.compile(r"(?<![\w+.-])(?:\+\d{1,3}[ .-]?(?:\(\d{1,4}\)[ .-]?)?\d{1,8}(?:[ .-]\d{1,8}){0,5}"
                    r"|\(\d{2,4}\)[ .-]?\d{2,5}(?:[ .-]\d{2,5}){1,3}"
                    r"|\d{1,5}(?:[ .-]\d{2,5}){2,4})(?![\w]|[.-]\d)")
_DECIMAL = re.compile(r"\+?\d+\.\d+")  # +35236450.6 is a number, not a phone


def _emails(text: str) -> Iterable[tuple[int, int]]:
    for match in _EMAIL.finditer(text):
        yield match.span()


def _ibans(text: str) -> Iterable[tuple[int, int]]:
    for match in _IBAN.finditer(text):
        length = IBAN_LENGTHS.get(match.group()[:2])
        if length is None:
            continue
        # The pattern may run on into a following capitalised word: keep exactly `length` characters.
        seen, end = 0, match.start()
        for offset, char in enumerate(match.group()):
            if char != " ":
                seen += 1
                if seen == length:
                    end = match.start() + offset + 1
                    break
        if seen == length and not (end < len(text) and text[end].isalnum()) and iban_valid(text[match.start():end]):
            yield match.start(), end


def _cards(text: str) -> Iterable[tuple[int, int]]:
    for match in _CARD.finditer(text):
        raw = match.group()
        separators = set(re.sub(r"\d", "", raw))
        if len(separators) > 1:
            continue
        digits = re.sub(r"\D", "", raw)
        if 13 <= len(digits) <= 19 and _card_network(digits) and luhn_valid(digits):
            yield match.span()


def _ssns(text: str) -> Iterable[tuple[int, int]]:
    for match in _SSN.finditer(text):
        if ssn_valid(match.group()):
            yield match.span()


def _ips(text: str) -> Iterable[tuple[int, int]]:
    for match in _IPV4.finditer(text):
        try:
            ipaddress.IPv4Address(match.group())
        except ValueError:
            continue
        yield match.span()
    for match in _IPV6.finditer(text):
        candidate = match.group()
        if sum(1 for group in candidate.split(":") if group) < 3:
            continue
        try:
            ipaddress.IPv6Address(candidate)
        except ValueError:
            continue
        yield match.span()


class _Phones:
    def __init__(self, regions: tuple[str, ...]) -> None:
        import phonenumbers

        self.phonenumbers = phonenumbers
        self.regions = regions

    def __call__(self, text: str) -> Iterable[tuple[int, int]]:
        for match in _PHONE.finditer(text):
            candidate = match.group()
            digits = sum(char.isdigit() for char in candidate)
            if not 7 <= digits <= 15 or _DECIMAL.fullmatch(candidate):
                continue
            if candidate.startswith("+"):
                # An international number: the + and the country code are signal enough; the
                # length must be possible for that country.
                number = self._parse(candidate, None)
                if number is not None and self.phonenumbers.is_possible_number(number):
                    yield match.span()
                continue
            for region in self.regions:
                # A national number: valid in the region and grouped as the region writes it
                # (libphonenumber's national format), so digit tables and grouped ids are left alone.
                number = self._parse(candidate, region)
                if number is None or not self.phonenumbers.is_valid_number(number):
                    continue
                national = _groups(self.phonenumbers.format_number(number, self.phonenumbers.PhoneNumberFormat.NATIONAL))
                if _groups(candidate) in (national, [len(str(number.country_code))] + national):  # 1-415-...
                    yield match.span()
                    break

    def _parse(self, candidate: str, region: str | None):
        try:
            return self.phonenumbers.parse(candidate, region)
        except self.phonenumbers.NumberParseException:
            return None


def _groups(text: str) -> list[int]:
    return [len(group) for group in re.findall(r"\d+", text)]


def find_pii(text: str, regions: tuple[str, ...] = ("US",), types: Iterable[str] = PII_TYPES) -> list[PiiFinding]:
    """Every identifier in `text`, in order of position, no two overlapping (see the module docstring)."""
    wanted = set(types)
    unknown = wanted - set(PII_TYPES)
    if unknown:
        raise ValueError(f"unknown PII type(s) {', '.join(sorted(unknown))}; known: {', '.join(PII_TYPES)}")
    detectors = {"EMAIL": _emails, "IBAN": _ibans, "CREDIT_CARD": _cards, "US_SSN": _ssns, "IP_ADDRESS": _ips,
                 "PHONE": _Phones(regions) if "PHONE" in wanted else None}
    starts: list[int] = []  # claimed spans, sorted and disjoint
    ends: list[int] = []
    found: list[PiiFinding] = []
    for kind in PII_TYPES:
        if kind not in wanted:
            continue
        for start, end in detectors[kind](text):
            at = bisect.bisect_right(starts, start)
            if (at > 0 and ends[at - 1] > start) or (at < len(starts) and starts[at] < end):
                continue
            starts.insert(at, start)
            ends.insert(at, end)
            found.append(PiiFinding(kind, start, end, text[start:end]))
    return sorted(found, key=lambda f: f.start)


def scrub_pii(text: str, regions: tuple[str, ...] = ("US",)) -> tuple[str, Counter]:
    """`text` with every identifier replaced by its placeholder, and the count per type."""
    findings = find_pii(text, regions)
    counts: Counter = Counter(f.kind for f in findings)
    if not findings:
        return text, counts
    pieces, last = [], 0
    for finding in findings:
        pieces += [text[last:finding.start], placeholder(finding.kind)]
        last = finding.end
    pieces.append(text[last:])
    return "".join(pieces), counts


class PiiScrubber:
    """A callable text -> scrubbed text that keeps the running count per type (`counts`)."""

    def __init__(self, regions: tuple[str, ...] = ("US",)) -> None:
        self.regions = tuple(regions)
        self.counts: Counter = Counter()

    def __call__(self, text: str) -> str:
        scrubbed, counts = scrub_pii(text, self.regions)
        self.counts.update(counts)
        return scrubbed
