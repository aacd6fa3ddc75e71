"""Prompt and completion -> token ids, split where TRL splits them (preference and RL data).

    prompt_ids, completion_ids = encode_completion(tokenizer, prompt, completion)
    prompt_ids, chosen_ids, rejected_ids = encode_pair(tokenizer, prompt, chosen, rejected)

Plain text: the prompt and prompt+completion are tokenized, the completion ending with the
end-of-sequence token (TRL appends the EOS text to completions). Chat messages: the prompt is
rendered with the generation prompt, prompt+completion as a whole conversation, both through the
one chat-format function (`render_conversation`); scaffolding after the last assistant turn's
end-of-turn token (e.g. a newline) is dropped, since the model never writes it. In both cases the
completion starts where the two token sequences first differ, which is after the prompt unless
tokens merge across the boundary (TRL's rule), so prompt_ids + completion_ids is always exactly
what the model reads.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from lmforge.tokenizer.chat import render_conversation
from lmforge.tokenizer.tokenizer import Tokenizer

__all__ = ["common_prefix_length", "encode_completion", "encode_pair", "encode_prompt"]

Content = str | Sequence[Mapping[str, Any]]


def common_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    return next((i for i in range(n) if a[i] != b[i]), n)


def encode_prompt(tokenizer: Tokenizer, prompt: Content) -> list[int]:
    """Ids of a prompt as the model sees it before answering (chat: with the generation prompt)."""
    if isinstance(prompt, str):
        return tokenizer.encode(prompt, add_bos=tokenizer.add_bos_token)
    return render_conversation(tokenizer, list(prompt), add_generation_prompt=True)[0]


def _whole(tokenizer: Tokenizer, prompt: Content, completion: Content) -> list[int]:
    """Ids of prompt + completion, ending at the completion's end-of-sequence / end-of-turn token."""
    if isinstance(prompt, str) != isinstance(completion, str):
        raise ValueError("prompt and completion must both be text or both be chat messages")
    if isinstance(prompt, str):
        ids = tokenizer.encode(prompt + completion, add_bos=tokenizer.add_bos_token)
        if tokenizer.eos_id is not None and (not ids or ids[-1] != tokenizer.eos_id):
            ids.append(tokenizer.eos_id)
        return ids
    ids, mask = render_conversation(tokenizer, list(prompt) + list(completion))
    last = max((i for i, m in enumerate(mask) if m), default=len(ids) - 1)
    return ids[:last + 1]


def encode_completion(tokenizer: Tokenizer, prompt: Content, completion: Content) -> tuple[list[int], list[int]]:
    """(prompt ids, completion ids); see the module docstring. An empty completion is an error."""
    prompt_ids, whole = encode_prompt(tokenizer, prompt), _whole(tokenizer, prompt, completion)
    split = common_prefix_length(prompt_ids, whole)
    if split == len(whole):
        raise ValueError("the completion adds no tokens to the prompt")
    return whole[:split], whole[split:]


def encode_pair(tokenizer: Tokenizer, prompt: Content, chosen: Content, rejected: Content
                ) -> tuple[list[int], list[int], list[int]]:
    """(prompt ids, chosen ids, rejected ids) with one prompt shared by both completions."""
    prompt_ids = encode_prompt(tokenizer, prompt)
    chosen_whole, rejected_whole = _whole(tokenizer, prompt, chosen), _whole(tokenizer, prompt, rejected)
    split = min(common_prefix_length(prompt_ids, chosen_whole), common_prefix_length(prompt_ids, rejected_whole))
    if split == len(chosen_whole) or split == len(rejected_whole):
        raise ValueError("a completion adds no tokens to the prompt")
    return chosen_whole[:split], chosen_whole[split:], rejected_whole[split:]
