"""A generated text-classification task: which topic a sentence is about.

Each sentence is built from a template and 2-3 content words of one topic; in half the
three-word sentences one word comes from another topic, so the label is the majority, not any
single keyword:

    "yesterday the teacher was close to a harbor and a pilot"  -> people   (harbor is a distractor)

Items are seeded; the held-out split keeps its own sentences (decided by a hash of the text) and
uses templates the train split never sees, so held-out accuracy measures more than memory.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass

TOPICS: dict[str, tuple[str, ...]] = {
    "food": ("apple", "banana", "cherry", "bread", "cheese", "pasta", "salad", "noodle", "butter", "yogurt", "muffin",
             "pepper", "tomato", "potato", "carrot", "onion", "garlic", "cookie", "waffle", "pickle"),
    "animal": ("rabbit", "turtle", "monkey", "parrot", "dolphin", "penguin", "giraffe", "elephant", "tiger", "lizard",
               "beetle", "spider", "falcon", "horse", "zebra", "otter", "badger", "camel", "eagle", "salmon"),
    "place": ("castle", "bridge", "tunnel", "harbor", "market", "temple", "palace", "tower", "village", "museum",
              "theater", "library", "garden", "forest", "island", "desert", "valley", "meadow", "station", "cottage"),
    "people": ("doctor", "teacher", "farmer", "baker", "painter", "writer", "singer", "dancer", "pilot", "sailor",
               "hunter", "builder", "driver", "nurse", "lawyer", "chef", "judge", "miner", "tailor", "barber"),
}
TRAIN_TEMPLATES = (
    "the {a} and the {b} were there",
    "we talked about the {a} and the {b} today",
    "she saw a {a} next to the {b}",
    "yesterday the {a} was close to a {b} and a {c}",
    "nobody expected the {a} or the {b}",
    "a story about a {a}, a {b} and a {c}",
)
HELDOUT_TEMPLATES = (
    "my friend only wanted the {a} and the {b}",
    "in the picture there is a {a} beside a {b} and a {c}",
)
HELDOUT_PERCENT = 20


@dataclass(frozen=True)
class LabelledText:
    text: str
    label: str


def labels() -> list[str]:
    return sorted(TOPICS)


def _sentence(rng: random.Random, templates: tuple[str, ...]) -> LabelledText:
    label = rng.choice(labels())
    words = rng.sample(TOPICS[label], 3)
    template = rng.choice(templates)
    if "{c}" in template and rng.random() < 0.5:  # one of three words from another topic: the majority decides
        other = rng.choice([t for t in labels() if t != label])
        words[rng.randrange(3)] = rng.choice(TOPICS[other])
    return LabelledText(template.format(a=words[0], b=words[1], c=words[2]), label)


def _heldout(text: str) -> bool:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little") % 100 < HELDOUT_PERCENT


def make_topic_items(n: int, split: str = "train", seed: int = 0) -> list[LabelledText]:
    """`n` distinct labelled sentences of the train or held-out split."""
    if split not in ("train", "heldout"):
        raise ValueError(f"split must be 'train' or 'heldout', got {split!r}")
    if n < 0:
        raise ValueError("n must be >= 0")
    rng = random.Random(f"topics:{split}:{seed}")
    templates = HELDOUT_TEMPLATES if split == "heldout" else TRAIN_TEMPLATES
    items: dict[str, LabelledText] = {}
    misses = 0
    while len(items) < n:
        item = _sentence(rng, templates)
        if item.text in items or _heldout(item.text) != (split == "heldout"):
            misses += 1
            if misses > 100_000:
                raise ValueError(f"only {len(items)} distinct {split} sentences could be generated, {n} were asked for")
            continue
        items[item.text] = item
    return list(items.values())
