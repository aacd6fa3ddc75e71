"""Captioning and question answering about generated shape pictures (`lmforge.data.shapes`).

For each evaluated split (test: training combinations; heldout: colour-shape pairs never seen in
training) the model answers the first `limit` pictures' questions and writes their captions,
greedily. A question is right when the answer names the true value (exact match after trimming
and lower-casing); a caption is scored per attribute by the value it names. `chance` is the
accuracy of always giving the split's most common answer. A text-only model (`with_images=False`)
gets the same prompts with the pictures removed.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

from lmforge.data.readers import jsonl_objects
from lmforge.data.shapes import ATTRIBUTES, Scene, answer, scene_attributes
from lmforge.eval.runner import RESULTS_VERSION
from lmforge.infer.vision import answer_prompt
from lmforge.model.vision import VisionLanguageModel
from lmforge.tokenizer.tokenizer import Tokenizer

__all__ = ["EVAL_SPLITS", "IMAGE_QA_TASK", "evaluate_shapes", "image_qa_results"]

EVAL_SPLITS = ("test", "heldout")


def _text_only(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{**m, "content": "".join(p.get("text", "") for p in m["content"] if p.get("type") == "text").strip()}
            if isinstance(m["content"], list) else m for m in messages]


def _records(data: Path, split: str, kind: str, limit: int | None) -> list[dict[str, Any]]:
    path = data / f"{split}-{kind}.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; write the data with `lmforge vlm data`")
    per_picture = len(ATTRIBUTES) if kind == "qa" else 1
    out = []
    for _, record in jsonl_objects(path, "a JSON object with 'messages'"):
        if limit is not None and len(out) >= limit * per_picture:
            break
        out.append(record)
    return out


def _rate(marks: list[bool]) -> float | None:
    return round(sum(marks) / len(marks), 4) if marks else None


def _mean(values: dict[str, float | None]) -> float | None:
    known = [v for v in values.values() if v is not None]
    return round(sum(known) / len(known), 4) if known else None


def evaluate_shapes(vlm: VisionLanguageModel, tokenizer: Tokenizer, data: str | Path, *, with_images: bool = True,
                    limit: int | None = 100, max_new_tokens: int = 16, splits: tuple[str, ...] = EVAL_SPLITS,
                    kinds: tuple[str, ...] = ("qa", "captions")) -> dict[str, Any]:
    """Accuracy per attribute of answers and captions on each split (the first `limit` pictures,
    None: all), their chance levels, the number of answers scored per attribute (`n`), and a
    summary (the mean over attributes); a few replies are kept as examples. `kinds` may leave out
    "qa" or "captions" (an attribute with nothing scored gets None)."""
    unknown = sorted(set(kinds) - {"qa", "captions"})
    if unknown or not kinds:
        raise ValueError(f"kinds must be qa and/or captions, got {list(kinds)}")
    data = Path(data)
    result: dict[str, Any] = {"with_images": with_images, "splits": {}, "summary": {}}
    for split in splits:
        qa_right: dict[str, list[bool]] = {a: [] for a in ATTRIBUTES}
        caption_right: dict[str, list[bool]] = {a: [] for a in ATTRIBUTES}
        truths: dict[str, Counter] = {a: Counter() for a in ATTRIBUTES}
        examples = []
        for kind in kinds:
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
        n = {a: len(v) for a, v in qa_right.items()}
        pictures = max([*n.values(), *(len(v) for v in caption_right.values())])
        result["splits"][split] = {"qa": qa, "caption": caption, "chance": chance, "n": n, "pictures": pictures,
                                   "examples": examples}
        result["summary"][split] = {"qa": _mean(qa), "caption": _mean(caption), "chance": _mean(chance)}
    return result


IMAGE_QA_TASK = "image-qa"


def image_qa_results(vlm: VisionLanguageModel, tokenizer: Tokenizer, data: str | Path, *, limit: int | None = None,
                     max_new_tokens: int = 16, splits: tuple[str, ...] = EVAL_SPLITS) -> dict[str, Any]:
    """The `image-qa` task of `lmforge eval`: `evaluate_shapes` on the questions alone, as a results
    file in `lmforge.eval.runner`'s shape (one run per split; metrics acc, the mean over question
    kinds, and acc_KIND / chance_KIND per kind), which `lmforge report` lists."""
    started = time.perf_counter()
    runs = []
    for split in splits:
        begin = time.perf_counter()
        scored = evaluate_shapes(vlm, tokenizer, data, limit=limit, max_new_tokens=max_new_tokens, splits=(split,),
                                 kinds=("qa",))
        result, summary = scored["splits"][split], scored["summary"][split]
        metrics: dict[str, Any] = {"acc": summary["qa"], "chance": summary["chance"]}
        for attribute in ATTRIBUTES:
            metrics[f"acc_{attribute}"] = result["qa"][attribute]
            metrics[f"chance_{attribute}"] = result["chance"][attribute]
        runs.append({"shots": 0, "split": split, "n": sum(result["n"].values()), "n_per_kind": result["n"],
                     "pictures": result["pictures"], "metrics": metrics, "samples": result["examples"],
                     "wall_s": round(time.perf_counter() - begin, 3)})
    return {"lmforge_eval": RESULTS_VERSION, "task": IMAGE_QA_TASK, "kind": "image_qa",
            "description": "questions about generated shape pictures (colour, shape, count, position), answered "
                           "greedily; right when the answer is the true value",
            "source": str(data), "chance": None, "primary_metric": "acc",
            "config": {"chat": True, "limit": limit, "max_new_tokens": max_new_tokens, "splits": list(splits)},
            "runs": runs, "wall_s": round(time.perf_counter() - started, 3)}
