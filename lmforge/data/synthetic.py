"""Verifiable instruction tasks: generated chat data with exact answers.

Fine-tuning needs data and a measurable effect without downloads. Each task draws questions from
a seeded random generator and knows the one right answer:

    add        multi-digit addition              "What is 4821 + 379?"                     -> "5200"
    multiply   two-digit by one/two-digit        "What is 47 * 8?"                         -> "376"
    count      letters in a word                 "How many times does the letter "r" ..."  -> "3"
    reverse    reverse a word                    "Reverse the word "planet"."              -> "tenalp"
    convert    unit conversion to whole numbers  "Convert 7 km to m."                      -> "7000"

Train and held-out items never share a question: the split is decided by a hash of the question
text, so the held-out set is the same whichever sizes or seeds are asked for.

Generators only: `lmforge eval --task add` (`lmforge.eval.tasks.synthetic_task`) turns the held-out
items into a benchmark scored by the eval runner, which is also how fine-tuning scores them.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass

__all__ = ["INSTRUCTION", "TASKS", "TaskItem", "make_items", "task_names"]

INSTRUCTION = "Answer with only the final answer."
HELDOUT_PERCENT = 20  # share of the question space reserved for held-out items


@dataclass(frozen=True)
class TaskItem:
    task: str
    question: str
    answer: str

    def prompt_messages(self) -> list[dict[str, str]]:
        """The conversation up to the answer (what a model is asked at evaluation).

        The instruction is the system message: it replaces a template's (often long) default one,
        which keeps every training conversation short."""
        return [{"role": "system", "content": INSTRUCTION}, {"role": "user", "content": self.question}]

    def messages(self) -> list[dict[str, str]]:
        """The full training conversation."""
        return self.prompt_messages() + [{"role": "assistant", "content": self.answer}]

    def record(self) -> dict:
        """A chat-JSONL record (`messages` plus the task and answer for scoring)."""
        return {"messages": self.messages(), "task": self.task, "answer": self.answer}


# --------------------------------------------------------------------------------------------
# Generators: rng -> (question, answer)
# --------------------------------------------------------------------------------------------
WORDS = tuple(dict.fromkeys("""
apple banana cherry orange grape lemon mango melon peach pear plum berry strawberry raspberry
table chair window door garden flower forest river mountain ocean island desert valley meadow
planet rocket galaxy comet meteor orbit station engine machine battery circuit signal network
doctor teacher farmer baker painter writer singer dancer pilot sailor hunter builder driver
yellow purple silver golden crimson scarlet emerald violet bronze copper marble crystal velvet
coffee butter pepper cookie muffin noodle pickle cheese yogurt bread pasta salad waffle pretzel
rabbit turtle monkey parrot dolphin penguin giraffe elephant tiger lizard beetle spider falcon
hammer ladder bucket basket pillow blanket candle mirror button pencil marker wallet helmet
letter number summer winter autumn spring morning evening shadow thunder rainbow blizzard breeze
castle bridge tunnel harbor market temple palace tower village street avenue highway cottage
puzzle riddle secret mystery treasure journey voyage adventure legend history science library
kitchen bedroom bathroom balcony cellar attic hallway garage office school museum theater
happiness kindness courage balance freedom harmony patience silence success victory wisdom
telephone computer keyboard printer monitor speaker camera battery charger cable router
tomato potato carrot onion garlic spinach cabbage lettuce pumpkin cucumber broccoli celery
mississippi committee assessment parallel occurrence accommodate embarrass necessary possess
bookkeeper balloon coffee address success tennessee massachusetts barrel hippopotamus
""".split()))

_UNITS = (  # (from, to, factor)
    ("km", "m", 1000), ("m", "cm", 100), ("cm", "mm", 10), ("kg", "g", 1000), ("L", "mL", 1000),
    ("hours", "minutes", 60), ("minutes", "seconds", 60), ("days", "hours", 24), ("weeks", "days", 7),
    ("feet", "inches", 12), ("yards", "feet", 3), ("dollars", "cents", 100),
)


def _add(rng: random.Random) -> tuple[str, str]:
    a = rng.randint(100, 9999)
    b = rng.randint(10, 999) if rng.random() < 0.5 else rng.randint(100, 9999)
    if rng.random() < 0.5:
        a, b = b, a
    return f"What is {a} + {b}?", str(a + b)


def _multiply(rng: random.Random) -> tuple[str, str]:
    a = rng.randint(12, 99)
    b = rng.randint(3, 9) if rng.random() < 0.5 else rng.randint(11, 99)
    return f"What is {a} * {b}?", str(a * b)


_CONSONANTS = "bcdfghjklmnprstvwz"
_VOWELS = "aeiou"


def _word(rng: random.Random) -> str:
    """A real word half the time, else a pronounceable made-up one (so the question space is large)."""
    if rng.random() < 0.5:
        return rng.choice(WORDS)
    syllables = "".join(rng.choice(_CONSONANTS) + rng.choice(_VOWELS) for _ in range(rng.randint(2, 3)))
    return syllables + (rng.choice(_CONSONANTS) if rng.random() < 0.5 else "")


def _count(rng: random.Random) -> tuple[str, str]:
    word = _word(rng)
    letter = rng.choice(word) if rng.random() < 0.85 else rng.choice("abcdefghijklmnopqrstuvwxyz")
    return f'How many times does the letter "{letter}" appear in the word "{word}"?', str(word.count(letter))


def _reverse(rng: random.Random) -> tuple[str, str]:
    word = _word(rng)
    return f'Reverse the word "{word}".', word[::-1]


def _convert(rng: random.Random) -> tuple[str, str]:
    source, target, factor = rng.choice(_UNITS)
    value = rng.randint(2, 299)
    return f"Convert {value} {source} to {target}.", str(value * factor)


TASKS: dict[str, Callable[[random.Random], tuple[str, str]]] = {
    "add": _add,
    "multiply": _multiply,
    "count": _count,
    "reverse": _reverse,
    "convert": _convert,
}


def task_names() -> list[str]:
    return sorted(TASKS)


def _is_heldout(question: str) -> bool:
    digest = hashlib.sha256(question.encode("utf-8")).digest()
    return int.from_bytes(digest[:4], "little") % 100 < HELDOUT_PERCENT


def _items(task: str, split: str, seed: int) -> Iterator[TaskItem]:
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose from {', '.join(task_names())}")
    if split not in ("train", "heldout"):
        raise ValueError(f"split must be 'train' or 'heldout', got {split!r}")
    rng = random.Random(f"{task}:{split}:{seed}")
    generate, want_heldout = TASKS[task], split == "heldout"
    seen: set[str] = set()
    misses = 0
    while misses < 10_000:  # the question space of a task is finite (count, reverse)
        question, answer = generate(rng)
        if question in seen or _is_heldout(question) != want_heldout:
            misses += 1
            continue
        misses = 0
        seen.add(question)
        yield TaskItem(task, question, answer)


def make_items(task: str, n: int, split: str = "train", seed: int = 0) -> list[TaskItem]:
    """`n` distinct items of `task` from the train or held-out part of its question space."""
    if n < 0:
        raise ValueError("n must be >= 0")
    items = []
    for item in _items(task, split, seed):
        if len(items) >= n:
            break
        items.append(item)
    if len(items) < n:
        raise ValueError(f"task {task!r} has only {len(items)} distinct {split} questions, {n} were asked for")
    return items
