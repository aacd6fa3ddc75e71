"""Captioning and question answering about generated shape pictures (`lmforge.data.shapes`).

For each evaluated split (test: training combinations; heldout: colour-shape pairs never seen in
training) the model answers the first `limit` pictures' questions and writes their captions,
greedily. A question is right when the answer names the true value (exact match after trimming
and lower-casing); a caption is scored per attribute by the value it names. `chance` is the
accuracy of always giving the split's most common answer. A text-only model (`with_images=False`)
gets the same prompts with the pictures removed.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from lmforge.data.readers import jsonl_objects
from lmforge.data.shapes import ATTRIBUTES, Scene, answer, scene_attributes
from lmforge.infer.vision import answer_prompt
from lmforge.model.vision import VisionLanguageModel
from lmforge.tokenizer.tokenizer import Tokenizer

__all__ = ["EVAL_SPLITS", "evaluate_shapes"]

EVAL_SPLITS = ("test", "heldout")


def _text_only(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{**m, "content": "".join(p.get("text", "") for p in m["content"] if p.get("type") == "text").strip()}
            if isinstance(m["content"], list) else m for m in messages]


def _records(data: Path, split: str, kind: str, limit: int) -> list[dict[str, Any]]:
    path = data / f"{split}-{kind}.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; write the data with `lmforge vlm data`")
    per_picture = len(ATTRIBUTES) if kind == "qa" else 1
    out = []
    for _, record in jsonl_objects(path, "a JSON object with 'messages'"):
        if len(out) >= limit * per_picture:
            break
        out.append(record)
    return out


def _rate(marks: list[bool]) -> float | None:
    return round(sum(marks) / len(marks), 4) if marks else None


def _mean(values: dict[str, float | None]) -> float | None:
    known = [v for v in values.values() if v is not None]
    return round(sum(known) / len(known), 4) if known else None


def evaluate_shapes(vlm: VisionLanguageModel, tokenizer: Tokenizer, data: str | Path, *, with_images: bool = True,
                    limit: int = 100, max_new_tokens: int = 16, splits: tuple[str, ...] = EVAL_SPLITS) -> dict[str, Any]:
    """Accuracy per attribute of answers and captions on each split, their chance levels, and a
    summary (the mean over attributes); a few replies are kept as examples."""
    data = Path(data)
    result: dict[str, Any] = {"with_images": with_images, "splits": {}, "summary": {}}
    for split in splits:
        qa_right: dict[str, list[bool]] = {a: [] for a in ATTRIBUTES}
        caption_right: dict[str, list[bool]] = {a: [] for a in ATTRIBUTES}
        truths: dict[str, Counter] = {a: Counter() for a in ATTRIBUTES}
        examples = []
        for kind in ("qa", "captions"):
            for record in _records(data, split, kind, limit):
                prompt = [m for m in record["messages"] if m["role"] != "assistant"]
                if not with_images:
                    prompt = _text_only(prompt)
                reply, _, _ = answer_prompt(vlm, tokenizer, prompt, base_dir=data, max_new_tokens=max_new_tokens)
                scene = Scene(**record["scene"])
                if kind == "qa":
                    attribute = record["kind"]
                    truth = answer(scene, attribute)
                    truths[attribute][truth] += 1
                    qa_right[attribute].append(reply.strip().strip(".").lower() == truth)
                else:
                    named = scene_attributes(reply)
                    for attribute in ATTRIBUTES:
                        caption_right[attribute].append(named[attribute] == answer(scene, attribute))
                if len(examples) < 6:
                    examples.append({"kind": record["kind"], "truth": record["messages"][-1]["content"], "reply": reply})
        qa = {a: _rate(v) for a, v in qa_right.items()}
        caption = {a: _rate(v) for a, v in caption_right.items()}
        chance = {a: round(max(c.values()) / sum(c.values()), 4) if c else None for a, c in truths.items()}
        result["splits"][split] = {"qa": qa, "caption": caption, "chance": chance, "pictures": limit, "examples": examples}
        result["summary"][split] = {"qa": _mean(qa), "caption": _mean(caption), "chance": _mean(chance)}
    return result
