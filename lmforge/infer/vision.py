"""Answering about pictures: a conversation with image_url parts -> the reply of a
vision-language model (greedy or sampled), for `lmforge chat --image`, the API and evaluation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from lmforge.data.images import ImageLimits, DEFAULT_LIMITS, image_to_tensor, load_image
from lmforge.model.vision import VisionLanguageModel
from lmforge.tokenizer.image_chat import render_image_conversation
from lmforge.tokenizer.tokenizer import Tokenizer

__all__ = ["answer_prompt"]


def answer_prompt(vlm: VisionLanguageModel, tokenizer: Tokenizer, messages: list[dict[str, Any]], *,
                  base_dir: Path | None = None, allow_paths: bool = True, max_new_tokens: int = 16,
                  temperature: float = 0.0, top_p: float = 1.0, seed: int | None = None,
                  limits: ImageLimits = DEFAULT_LIMITS) -> tuple[str, int, int]:
    """(reply text, prompt tokens, completion tokens) for a conversation whose messages may hold
    image_url parts (paths relative to `base_dir` when `allow_paths`)."""
    ids, _, image_mask, urls = render_image_conversation(tokenizer, messages, image_token=vlm.config.image_token,
                                                         tokens_per_image=vlm.tokens_per_image, add_generation_prompt=True)
    size = vlm.config.image_size
    images = torch.stack([image_to_tensor(load_image(u, f"image {i + 1}", base_dir=base_dir, allow_paths=allow_paths,
                                                      limits=limits), size)
                          for i, u in enumerate(urls)]) if urls else None
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    new = vlm.generate(ids, image_mask, images, max_new_tokens=max_new_tokens, stop_ids=sorted(tokenizer.eos_ids),
                       temperature=temperature, top_p=top_p, generator=generator)
    return tokenizer.decode(new, skip_special=True), len(ids), len(new)
