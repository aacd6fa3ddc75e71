"""Constitutions for AI feedback: principles with critique and revision requests, and rules that check them.

A constitution is a mapping (the CLI reads it from YAML, see configs/constitution-plain.yaml):

    name: plain
    principles:
      - name: concise
        critique: "Is the response longer than it needs to be? Point out what could be cut."
        revision: "Rewrite the response in at most 40 words. Reply with the rewritten response only."
        rubric: "The response uses at most 40 words."          # what a model judge is asked (default: critique)
        check: {max_words: 40}                                 # optional rule, so compliance is measurable

Rule checks are plain functions of the response text, built from these keys (all given must hold):
    max_words: N        at most N words
    max_sentences: N    at most N sentences
    max_lines: N        at most N non-empty lines
    forbid: [s, ...]    none of the strings occurs (case-insensitive)
    require: [s, ...]   every string occurs (case-insensitive)
    python: "module:function"   a function text -> bool imported by name (your own code: only use
                        modules you trust, as for any Python import)
"""

from __future__ import annotations

import hashlib
import importlib
import random
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["Constitution", "Principle", "RuleCheck", "build_check", "example_prompts"]

RuleCheck = Callable[[str], bool]
CHECK_KEYS = ("max_words", "max_sentences", "max_lines", "forbid", "require", "python")
_PREAMBLE = re.compile(r"^\s*(?:\*\*)?(?:here is |here's )?(?:the |my )?(?:revised|rewritten|new)"
                       r"(?: version(?: of the)?)?(?: response| answer| text)?(?:\*\*)?\s*:\s*(?:\*\*)?\s*", re.IGNORECASE)


def _words(text: str) -> int:
    return len(text.split())


def _sentences(text: str) -> int:
    return len([s for s in re.split(r"(?<=[.!?])\s+", text.strip()) if s.strip()])


def build_check(spec: Mapping[str, Any], where: str = "check") -> RuleCheck:
    """A rule (text -> compliant?) from its mapping; unknown keys and bad values name `where`."""
    if not isinstance(spec, Mapping) or not spec:
        raise ValueError(f"{where}: expected a mapping with at least one of {', '.join(CHECK_KEYS)}")
    unknown = sorted(set(spec) - set(CHECK_KEYS))
    if unknown:
        raise ValueError(f"{where}: unknown rule(s) {', '.join(unknown)} (known: {', '.join(CHECK_KEYS)})")
    tests: list[RuleCheck] = []
    for key in ("max_words", "max_sentences", "max_lines"):
        if key in spec:
            limit = spec[key]
            if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
                raise ValueError(f"{where}.{key}: expected a positive integer, got {limit!r}")
            count = {"max_words": _words, "max_sentences": _sentences,
                     "max_lines": lambda t: len([line for line in t.splitlines() if line.strip()])}[key]
            tests.append(lambda text, count=count, limit=limit: count(text) <= limit)
    for key in ("forbid", "require"):
        if key in spec:
            strings = spec[key]
            if isinstance(strings, str):
                strings = [strings]
            if not isinstance(strings, list) or not strings or not all(isinstance(s, str) and s for s in strings):
                raise ValueError(f"{where}.{key}: expected a list of non-empty strings, got {spec[key]!r}")
            lowered = [s.casefold() for s in strings]
            if key == "forbid":
                tests.append(lambda text, lowered=lowered: not any(s in text.casefold() for s in lowered))
            else:
                tests.append(lambda text, lowered=lowered: all(s in text.casefold() for s in lowered))
    if "python" in spec:
        tests.append(_import_check(spec["python"], f"{where}.python"))
    return lambda text: all(test(text) for test in tests)


def _import_check(name: Any, where: str) -> RuleCheck:
    if not isinstance(name, str) or ":" not in name:
        raise ValueError(f"{where}: expected 'module:function', got {name!r}")
    module_name, _, attribute = name.partition(":")
    try:
        function = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as error:
        raise ValueError(f"{where}: cannot import {name!r} ({error})") from None
    if not callable(function):
        raise ValueError(f"{where}: {name!r} is not callable")
    return lambda text: bool(function(text))


@dataclass(frozen=True)
class Principle:
    name: str
    critique: str  # asked of the model after its answer
    revision: str  # asked of the model after its critique
    rubric: str  # what a model judge compares answers by
    check: RuleCheck | None = None  # a rule for compliance, when the principle can be checked by rule


@dataclass(frozen=True)
class Constitution:
    name: str
    principles: tuple[Principle, ...]

    @classmethod
    def from_dict(cls, data: Any, where: str = "constitution") -> "Constitution":
        if not isinstance(data, Mapping):
            raise ValueError(f"{where}: expected a mapping with 'principles'")
        unknown = sorted(set(data) - {"name", "principles", "description"})
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {', '.join(unknown)} (known: name, description, principles)")
        items = data.get("principles")
        if not isinstance(items, list) or not items:
            raise ValueError(f"{where}: 'principles' must be a non-empty list")
        principles = []
        for index, item in enumerate(items):
            at = f"{where}: principles[{index}]"
            if not isinstance(item, Mapping):
                raise ValueError(f"{at}: expected a mapping")
            extra = sorted(set(item) - {"name", "critique", "revision", "rubric", "check"})
            if extra:
                raise ValueError(f"{at}: unknown key(s) {', '.join(extra)} (known: name, critique, revision, rubric, check)")
            for key in ("name", "critique", "revision"):
                if not isinstance(item.get(key), str) or not item[key].strip():
                    raise ValueError(f"{at}: '{key}' must be a non-empty string")
            rubric = item.get("rubric", item["critique"])
            if not isinstance(rubric, str) or not rubric.strip():
                raise ValueError(f"{at}: 'rubric' must be a non-empty string")
            check = build_check(item["check"], f"{at}.check") if item.get("check") is not None else None
            principles.append(Principle(item["name"], item["critique"], item["revision"], rubric, check))
        names = [p.name for p in principles]
        if len(set(names)) != len(names):
            raise ValueError(f"{where}: principle names must be unique, got {names}")
        name = data.get("name", "constitution")
        return cls(str(name), tuple(principles))

    def draw(self, rng: random.Random) -> Principle:
        return rng.choice(self.principles)

    @property
    def checkable(self) -> tuple[Principle, ...]:
        return tuple(p for p in self.principles if p.check is not None)

    def compliant(self, text: str) -> bool:
        """Whether `text` passes every principle's rule (principles without one do not count)."""
        return all(p.check(text) for p in self.checkable)  # type: ignore[misc]

    @staticmethod
    def clean_revision(text: str) -> str:
        """A revision without a leading "Revised response:" label and without wrapping quotes."""
        text = _PREAMBLE.sub("", text.strip(), count=1).strip()
        if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
            text = text[1:-1].strip()
        return text


# --------------------------------------------------------------------------------------------
# Open-ended requests to try a constitution on (no downloads; train and held-out never overlap)
# --------------------------------------------------------------------------------------------
_TOPICS = tuple("""
volcanoes photosynthesis the moon tides rainbows earthquakes bees coffee bread yeast glaciers deserts
rivers clouds thunder magnets batteries bicycles bridges lighthouses compasses maps calendars clocks
libraries museums gardens composting recycling chess music rhythm painting poetry theatre football
swimming running sleep dreams memory habits friendship kindness patience honesty teamwork leadership
budgets saving interest passwords email spreadsheets keyboards printers satellites rockets telescopes
planets comets stars galaxies oceans whales dolphins penguins owls wolves forests mushrooms trees
seeds flowers tea chocolate cheese rice pasta soup salads spices vitamins exercise stretching posture
""".split())
_TEMPLATES = ("Tell me about {}.", "Explain how {} work.", "Why do people care about {}?",
              "Give me some advice about {}.", "What should a beginner know about {}?",
              "Describe {} to a child.", "What are interesting facts about {}?", "How can I learn more about {}?")


def example_prompts(n: int, split: str = "train", seed: int = 0) -> list[list[dict[str, str]]]:
    """`n` distinct open-ended user requests as chat prompts, from the train or held-out part of
    the request space (split by a hash of the text, so held-out requests are never trained on)."""
    if split not in ("train", "heldout"):
        raise ValueError(f"split must be 'train' or 'heldout', got {split!r}")
    space = [t.format(topic) for topic in _TOPICS for t in _TEMPLATES]
    chosen = [q for q in space if (int(hashlib.sha256(q.encode()).hexdigest()[:8], 16) % 5 == 0) == (split == "heldout")]
    if n > len(chosen):
        raise ValueError(f"only {len(chosen)} {split} example prompts exist, {n} were asked for")
    random.Random(seed).shuffle(chosen)
    return [[{"role": "user", "content": q}] for q in chosen[:n]]


def prompts_of(records: Sequence[Any]) -> list[list[dict[str, str]]]:
    """Chat prompts from TRL prompt-only records' `prompt` values (a string becomes a user turn)."""
    return [[{"role": "user", "content": r}] if isinstance(r, str) else list(r) for r in records]
