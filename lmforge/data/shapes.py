"""Generated images of shapes, with captions and questions: offline data for vision-language models.

Each picture holds one to three copies of one shape (circle, square, triangle, diamond) in one
colour and size, inside one quadrant of a white canvas. Its caption names all of it ("two large
red triangles in the top left."); four questions ask for one attribute each (colour, shape,
count, position), answered in one or two words.

Splits differ in combinations, so generalisation is measured: some (colour, shape) pairs appear
only in the held-out split (every colour and every shape is seen in training, but never a red
triangle, say). `test` holds new pictures of the training combinations, `heldout` pictures of the
unseen ones.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from lmforge.core.files import write_folder_atomically

__all__ = ["ATTRIBUTES", "COLOURS", "COUNTS", "HELD_OUT", "POSITIONS", "QUESTIONS", "SHAPES", "SIZES", "SPLITS",
           "Scene", "answer", "caption", "draw_scene", "sample_scene", "scene_attributes", "write_shapes_dataset"]

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40), "green": (40, 160, 60), "blue": (40, 80, 220), "yellow": (225, 195, 30), "purple": (140, 60, 180)}
SHAPES = ("circle", "square", "triangle", "diamond")
COUNTS = ("one", "two", "three")
POSITIONS = ("top left", "top right", "bottom left", "bottom right")
SIZES = ("small", "large")
ATTRIBUTES = ("colour", "shape", "count", "position")
SPLITS = ("train", "test", "heldout")
# One shape per colour that training never shows in that colour (every colour and shape still seen).
HELD_OUT = frozenset((colour, SHAPES[(i + 2) % len(SHAPES)]) for i, colour in enumerate(COLOURS))
QUESTIONS = {
    "colour": "What colour are the shapes?",
    "shape": "What shape are they?",
    "count": "How many shapes are there?",
    "position": "Where are the shapes?",
}
CAPTION_PROMPT = "Describe the picture."


@dataclass(frozen=True)
class Scene:
    colour: str
    shape: str
    count: int
    position: str
    size: str

    def __post_init__(self) -> None:
        if self.colour not in COLOURS or self.shape not in SHAPES or self.position not in POSITIONS or self.size not in SIZES:
            raise ValueError(f"unknown scene attribute in {self}")
        if not 1 <= self.count <= len(COUNTS):
            raise ValueError(f"count must be 1..{len(COUNTS)}, got {self.count}")


def sample_scene(rng: random.Random, split: str) -> Scene:
    """A random scene of `split`: train/test draw (colour, shape) outside HELD_OUT, heldout inside it."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    pairs = sorted(HELD_OUT) if split == "heldout" else [(c, s) for c in COLOURS for s in SHAPES if (c, s) not in HELD_OUT]
    colour, shape = rng.choice(pairs)
    return Scene(colour, shape, rng.randint(1, len(COUNTS)), rng.choice(POSITIONS), rng.choice(SIZES))


def _polygon(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    if shape == "square":
        return [(cx - r, cy - r), (cx + r, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
    if shape == "triangle":
        return [(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
    return [(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)]  # diamond


def draw_scene(scene: Scene, rng: random.Random, size: int = 48) -> Image.Image:
    """The scene drawn on a size x size white canvas: the quadrant is split into 2 x 2 cells and the
    shapes take distinct random cells, jittered a little; colours vary slightly per picture."""
    if size < 16:
        raise ValueError(f"image size must be at least 16, got {size}")
    image = Image.new("RGB", (size, size), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    half, cell = size / 2, size / 4
    row, col = POSITIONS.index(scene.position) // 2, POSITIONS.index(scene.position) % 2
    radius = cell * (0.38 if scene.size == "large" else 0.24)
    colour = tuple(max(0, min(255, c + rng.randint(-20, 20))) for c in COLOURS[scene.colour])
    jitter = cell / 2 - radius - 0.5
    for index in rng.sample(range(4), scene.count):
        cx = col * half + (index % 2 + 0.5) * cell + rng.uniform(-jitter, jitter)
        cy = row * half + (index // 2 + 0.5) * cell + rng.uniform(-jitter, jitter)
        if scene.shape == "circle":
            draw.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=colour)
        else:
            draw.polygon(_polygon(scene.shape, cx, cy, radius), fill=colour)
    return image


def caption(scene: Scene) -> str:
    noun = scene.shape + "s" if scene.count > 1 else scene.shape
    return f"{COUNTS[scene.count - 1]} {scene.size} {scene.colour} {noun} in the {scene.position}."


def answer(scene: Scene, attribute: str) -> str:
    if attribute == "colour":
        return scene.colour
    if attribute == "shape":
        return scene.shape
    if attribute == "count":
        return COUNTS[scene.count - 1]
    if attribute == "position":
        return scene.position
    raise ValueError(f"unknown attribute {attribute!r}; choose from {', '.join(ATTRIBUTES)}")


def scene_attributes(text: str) -> dict[str, str | None]:
    """The attribute values a caption or answer names (the first match of each; None when absent),
    for scoring generated captions: "two small blue circles in the top left." -> colour blue, ..."""
    words = text.lower().replace(".", " ").replace(",", " ").split()
    joined = " ".join(words)
    found: dict[str, str | None] = {}
    found["colour"] = next((w for w in words if w in COLOURS), None)
    found["shape"] = next((s for w in words for s in SHAPES if w in (s, s + "s")), None)
    found["count"] = next((w for w in words if w in COUNTS), None)
    found["position"] = next((p for p in POSITIONS if p in joined), None)
    return found


def _user(url: str, text: str) -> dict[str, Any]:
    return {"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": text}]}


def _records(split: str, count: int, rng: random.Random, image_size: int,
             images: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    for index in range(count):
        scene = sample_scene(rng, split)
        name = f"{split}-{index:05d}.png"
        draw_scene(scene, rng, image_size).save(images / name, format="PNG")
        url = f"images/{name}"
        meta = {"scene": asdict(scene), "split": split}
        yield "captions", {"messages": [_user(url, CAPTION_PROMPT), {"role": "assistant", "content": caption(scene)}],
                           "kind": "caption", **meta}
        for attribute in ATTRIBUTES:
            yield "qa", {"messages": [_user(url, QUESTIONS[attribute]),
                                      {"role": "assistant", "content": answer(scene, attribute)}],
                         "kind": attribute, **meta}


def write_shapes_dataset(out: str | os.PathLike, *, train: int = 2000, test: int = 200, heldout: int = 200,
                         seed: int = 0, image_size: int = 48) -> Path:
    """Write OUT/images/*.png and, per split, OUT/{split}-captions.jsonl (one caption per picture) and
    OUT/{split}-qa.jsonl (four questions per picture), chat JSONL whose image urls are relative to
    OUT; plus OUT/info.json. The folder appears whole or not at all."""
    sizes = {"train": train, "test": test, "heldout": heldout}
    if any(n < 0 for n in sizes.values()) or not any(sizes.values()):
        raise ValueError(f"picture counts must be non-negative and not all zero, got {sizes}")

    def write(tmp: Path) -> None:
        (tmp / "images").mkdir(parents=True)
        rng = random.Random(seed)
        for split, count in sizes.items():
            lines: dict[str, list[str]] = {"captions": [], "qa": []}
            for kind, record in _records(split, count, rng, image_size, tmp / "images"):
                lines[kind].append(json.dumps(record) + "\n")
            for kind, text in lines.items():
                (tmp / f"{split}-{kind}.jsonl").write_text("".join(text))
        info = {"pictures": sizes, "seed": seed, "image_size": image_size,
                "held_out_pairs": sorted(map(list, HELD_OUT)), "attributes": list(ATTRIBUTES)}
        (tmp / "info.json").write_text(json.dumps(info, indent=1) + "\n")

    return write_folder_atomically(out, write)
