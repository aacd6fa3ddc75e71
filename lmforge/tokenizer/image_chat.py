"""Conversations with images -> (ids, loss mask, image mask, image urls).

The chat format stays `render_conversation`'s: images are first replaced by the placeholder
token's text (one token of the vocabulary that the tokenizer keeps whole, e.g. an unused special
token), the conversation is rendered as usual, and each placeholder is then widened to the number
of tokens one image takes. The image mask marks those positions; the model puts projected image
features there (`lmforge.model.vision.VisionLanguageModel`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from lmforge.data.images import split_image_content
from lmforge.tokenizer.chat import ChatTemplate, render_conversation
from lmforge.tokenizer.tokenizer import Tokenizer

__all__ = ["choose_image_token", "render_image_conversation"]


def choose_image_token(tokenizer: Tokenizer, preferred: str | None = None) -> tuple[str, int]:
    """(text, id) of the image placeholder: `preferred` when given, else the first special token
    that is not BOS, an end-of-turn token or named in the chat template (SmolLM2: <repo_name>),
    else the padding token. It must encode as exactly one token."""
    template = tokenizer.chat_template or ""
    if preferred:
        candidates = [preferred]
    else:
        busy = {tokenizer.bos_id, *tokenizer.eos_ids}
        names = [tokenizer.id_to_token(i) for i in sorted(tokenizer.special_ids) if i not in busy]
        candidates = [n for n in names if n and n not in template and tokenizer.token_to_id(n) != tokenizer.pad_id]
        if tokenizer.pad_id is not None and tokenizer.pad_id not in busy:
            candidates.append(tokenizer.id_to_token(tokenizer.pad_id))
    for text in candidates:
        ids = tokenizer.encode(text)
        if text and len(ids) == 1:
            return text, ids[0]
    if preferred:
        raise ValueError(f"image token {preferred!r} is not one token of this tokenizer")
    raise ValueError("this tokenizer has no spare special token to stand for images; name one with image_token")


def render_image_conversation(tokenizer: Tokenizer, messages: Sequence[Mapping[str, Any]], *, image_token: str,
                              tokens_per_image: int, add_generation_prompt: bool = False,
                              template: ChatTemplate | None = None) -> tuple[list[int], list[int], list[bool], list[str]]:
    """(ids, loss mask, image mask, image urls) of a conversation whose messages may hold
    image_url content parts; each image becomes `tokens_per_image` placeholder ids (loss 0)."""
    if tokens_per_image <= 0:
        raise ValueError(f"tokens_per_image must be positive, got {tokens_per_image}")
    placeholder = tokenizer.encode(image_token)
    if len(placeholder) != 1:
        raise ValueError(f"image token {image_token!r} is not one token of this tokenizer")
    plain, urls = split_image_content(list(messages), image_token)
    ids, mask = render_conversation(tokenizer, plain, add_generation_prompt, template=template)
    found = sum(1 for i in ids if i == placeholder[0])
    if found != len(urls):
        raise ValueError(f"the rendered chat holds {found} image placeholders for {len(urls)} images "
                         "(the chat template dropped or repeated a message)")
    out_ids: list[int] = []
    out_mask: list[int] = []
    image_mask: list[bool] = []
    for token, weight in zip(ids, mask):
        if token == placeholder[0]:
            out_ids.extend([token] * tokens_per_image)
            out_mask.extend([0] * tokens_per_image)
            image_mask.extend([True] * tokens_per_image)
        else:
            out_ids.append(token)
            out_mask.append(weight)
            image_mask.append(False)
    return out_ids, out_mask, image_mask, urls
