"""Generated shape pictures: scenes drawn as described, captions parsed back, splits by combination."""

from __future__ import annotations

import json
import random
from collections import Counter

import pytest

from lmforge.data.images import load_image, split_image_content
from lmforge.data.shapes import (ATTRIBUTES, COLOURS, HELD_OUT, SHAPES, Scene, answer, caption, draw_scene, sample_scene,
                                 scene_attributes, write_shapes_dataset)


def test_splits_differ_in_combinations():
    rng = random.Random(0)
    train = {(s.colour, s.shape) for s in (sample_scene(rng, "train") for _ in range(400))}
    heldout = {(s.colour, s.shape) for s in (sample_scene(rng, "heldout") for _ in range(100))}
    assert heldout == set(HELD_OUT) and not train & heldout
    assert {c for c, _ in train} == set(COLOURS) and {s for _, s in train} == set(SHAPES)  # each value seen
    with pytest.raises(ValueError, match="split must be one of"):
        sample_scene(rng, "dev")


def test_drawing_matches_the_scene():
    scene = Scene("blue", "square", 2, "bottom right", "large")
    image = draw_scene(scene, random.Random(1), 48)
    pixels = [image.getpixel((x, y)) for x in range(48) for y in range(48)]
    coloured = [(x, y) for x in range(48) for y in range(48) if image.getpixel((x, y)) != (255, 255, 255)]
    assert coloured and all(x >= 24 and y >= 24 for x, y in coloured)  # all in the bottom-right quadrant
    blue = Counter(p for p in pixels if p != (255, 255, 255)).most_common(1)[0][0]
    assert blue[2] > 150 and blue[0] < 100
    # two separate blobs: count connected components of coloured pixels
    left = set(coloured)
    blobs = 0
    while left:
        blobs += 1
        stack = [left.pop()]
        while stack:
            x, y = stack.pop()
            for n in ((x + 1, y), (x - 1, y), (x, y + 1), (x, y - 1)):
                if n in left:
                    left.remove(n)
                    stack.append(n)
    assert blobs == 2


def test_caption_and_answers_parse_back():
    scene = Scene("red", "triangle", 3, "top left", "small")
    text = caption(scene)
    assert text == "three small red triangles in the top left."
    assert scene_attributes(text) == {"colour": "red", "shape": "triangle", "count": "three", "position": "top left"}
    assert caption(Scene("green", "circle", 1, "bottom right", "large")) == "one large green circle in the bottom right."
    assert [answer(scene, a) for a in ATTRIBUTES] == ["red", "triangle", "three", "top left"]
    assert scene_attributes("no idea") == {"colour": None, "shape": None, "count": None, "position": None}


def test_dataset_files(tmp_path):
    out = write_shapes_dataset(tmp_path / "shapes", train=6, test=2, heldout=3, seed=3, image_size=32)
    assert json.loads((out / "info.json").read_text())["pictures"] == {"train": 6, "test": 2, "heldout": 3}
    qa = [json.loads(line) for line in (out / "heldout-qa.jsonl").read_text().splitlines()]
    captions = [json.loads(line) for line in (out / "train-captions.jsonl").read_text().splitlines()]
    assert len(qa) == 3 * len(ATTRIBUTES) and len(captions) == 6
    for record in qa:
        assert (record["scene"]["colour"], record["scene"]["shape"]) in HELD_OUT
        scene = Scene(**record["scene"])
        assert record["messages"][1]["content"] == answer(scene, record["kind"])
        _, urls = split_image_content(record["messages"], "<img>")
        assert load_image(urls[0], base_dir=out).size == (32, 32)
    again = write_shapes_dataset(tmp_path / "again", train=6, test=2, heldout=3, seed=3, image_size=32)
    assert (again / "train-qa.jsonl").read_text() == (out / "train-qa.jsonl").read_text()  # seeded
