"""Image placeholders in the chat format: rendered by render_conversation, widened per image."""

from __future__ import annotations

import pytest

from lmforge.tokenizer.chat import render_conversation
from lmforge.tokenizer.image_chat import choose_image_token, render_image_conversation
from lmforge.tokenizer.train import train_bpe


@pytest.fixture(scope="module")
def tokenizer():
    return train_bpe(["What colour are the shapes? red green blue"] * 20, vocab_size=300)


def test_placeholders_widened_and_masked(tokenizer):
    token, token_id = choose_image_token(tokenizer)
    assert token == "<|pad|>" and token_id == tokenizer.pad_id  # the trained tokenizer's only spare special
    url = "data:image/png;base64,AA=="
    messages = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                             {"type": "text", "text": "What colour?"}]},
                {"role": "assistant", "content": "red"}]
    ids, mask, image_mask, urls = render_image_conversation(tokenizer, messages, image_token=token, tokens_per_image=3)
    assert urls == [url] and len(ids) == len(mask) == len(image_mask)
    assert sum(image_mask) == 3 and all(ids[i] == token_id and mask[i] == 0 for i, m in enumerate(image_mask) if m)
    plain = [{"role": "user", "content": token + "What colour?"}, {"role": "assistant", "content": "red"}]
    ref_ids, ref_mask = render_conversation(tokenizer, plain)
    first = image_mask.index(True)
    assert ids[:first] + ids[first + 2:] == ref_ids and mask[:first] + mask[first + 2:] == ref_mask
    with pytest.raises(ValueError, match="contains the image marker"):
        render_image_conversation(tokenizer, plain, image_token=token, tokens_per_image=3)
    with pytest.raises(ValueError, match="is not one token"):
        choose_image_token(tokenizer, "not a token")
