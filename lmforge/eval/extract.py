"""Final-answer extraction from generated text, and answer comparison.

Generated answers (with or without chain-of-thought) are searched, in order, for
  1. "#### 42"                        (the GSM8K reference format)
  2. "The answer is 42" / "answer: 42" (the format our chain-of-thought shots and instructions ask for;
                                       the last such phrase wins)
  3. "\\boxed{42}"                     (LaTeX habit of maths-tuned models)
  4. the last number in the text      (fallback)
For a non-numeric gold answer the text after the marker (up to the end of the sentence), failing
that the last quoted span ('The reversed word is "tenalp".'), failing that the first line is taken.
`strict_match` asks more: the whole reply is the answer (what "Answer with only the final answer"
requests).
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

__all__ = [
    "exact_match",
    "extract_answer",
    "gsm8k_reference_answer",
    "is_number",
    "normalize_number",
    "normalize_text",
    "numeric_match",
    "strict_match",
]

_NUMBER = r"-?\d(?:[\d,]*\d)?(?:\.\d+)?|-?\.\d+"
_NUMBER_RE = re.compile(_NUMBER)
_GAP = r"[^\d\n-]{0,12}?"  # e.g. ": $", " **", " approximately " (short, no digits, one line)
_HASHES = re.compile(r"####\s*" + _GAP + r"(" + _NUMBER + r")")
_ANSWER_IS = re.compile(r"(?:answer\s+is|answer\s*:)\s*" + _GAP + r"(" + _NUMBER + r")", re.IGNORECASE)
_BOXED = re.compile(r"\\boxed\{\s*\$?\s*(" + _NUMBER + r")")
_TEXT_MARKER = re.compile(r"(?:####|answer\s+is|answer\s*:)\s*:?\s*([^\n]+)", re.IGNORECASE)
# "x", “x”, `x`, and 'x' where the quotes are not apostrophes inside words (it's, don't)
_QUOTED = re.compile(r'"([^"\n]+)"|“([^”\n]+)”|`([^`\n]+)`|(?<!\w)\'([^\'\n]+)\'(?!\w)')


def normalize_number(text: str) -> str | None:
    """Canonical form of a number written as text: '$1,250.00' -> '1250', '-3.50' -> '-3.5'; None if not a number."""
    cleaned = text.strip().replace(",", "").replace("$", "").replace(" ", "").rstrip(".")
    if not cleaned:
        return None
    try:
        value = Decimal(cleaned)
    except InvalidOperation:
        return None
    if not value.is_finite() or abs(value.adjusted()) > 100:  # "1e5000" would print 5,000 digits
        return None
    if value == value.to_integral_value():
        return str(int(value))
    return format(value.normalize(), "f")


def is_number(text: str) -> bool:
    return normalize_number(text) is not None


def normalize_text(text: str) -> str:
    """Case-folded, whitespace-collapsed, without surrounding quotes, markdown stars or a final period."""
    text = " ".join(text.split()).strip().strip("*\"'`").strip()
    return text.rstrip(".").strip().casefold()


def gsm8k_reference_answer(solution: str) -> str | None:
    """The number after '#### ' in a GSM8K reference solution, normalised ('1,000' -> '1000')."""
    if "####" not in solution:
        return None
    tail = solution.rsplit("####", 1)[1].strip()
    return normalize_number(tail) or (tail or None)


def extract_answer(text: str, numeric: bool = True) -> tuple[str | None, str]:
    """(answer, how) from generated text; how is 'marker' (an explicit answer phrase), 'last_number',
    'quoted', 'first_line' or 'none'."""
    if numeric:
        for pattern in (_HASHES, _ANSWER_IS, _BOXED):
            found = pattern.findall(text)
            if found:
                return found[-1], "marker"
        numbers = _NUMBER_RE.findall(text)
        if numbers:
            return numbers[-1], "last_number"
        return None, "none"
    found = _TEXT_MARKER.findall(text)
    if found:
        answer = re.split(r"(?<=[^\d])\.(?:\s|$)", found[-1].strip() + " ")[0].strip()
        return answer, "marker"
    quoted = _QUOTED.findall(text)
    if quoted:
        return next(part for part in quoted[-1] if part), "quoted"
    lines = [line.strip() for line in text.strip().split("\n") if line.strip()]
    return (lines[0], "first_line") if lines else (None, "none")


def numeric_match(prediction: str | None, gold: str) -> bool:
    """Both parse as numbers and are equal ('1,000.0' matches '1000')."""
    if prediction is None:
        return False
    predicted, expected = normalize_number(prediction), normalize_number(gold)
    return predicted is not None and predicted == expected


def exact_match(prediction: str | None, gold: str) -> bool:
    """Equal after `normalize_text` (case, spacing, quotes and a final period do not count)."""
    return prediction is not None and normalize_text(prediction) == normalize_text(gold)


def strict_match(output: str, gold: str) -> bool:
    """The whole output is the answer: equal after `normalize_text`, or, for a numeric gold answer,
    the output is that number ('5,200.' matches '5200'; 'The answer is 5200.' does not)."""
    return exact_match(output, gold) or (is_number(gold) and numeric_match(output, gold))
