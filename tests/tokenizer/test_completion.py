"""Prompt/completion token splits: chat messages through the template, plain text with EOS, TRL's boundary rule."""

from __future__ import annotations

import pytest

from lmforge.tokenizer.chat import render_conversation
from lmforge.tokenizer.completion import common_prefix_length, encode_completion, encode_pair, encode_prompt

SYSTEM_USER = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Sky colour?"}]


def test_chat_completion_ends_at_the_end_of_turn_token(smollm_tok):
    prompt, completion = encode_completion(smollm_tok, SYSTEM_USER, [{"role": "assistant", "content": "Blue."}])
    assert prompt == encode_prompt(smollm_tok, SYSTEM_USER)
    assert smollm_tok.decode(prompt).endswith("<|im_start|>assistant\n")
    assert smollm_tok.decode(completion) == "Blue.<|im_end|>"  # the newline after the turn is never generated
    whole, mask = render_conversation(smollm_tok, SYSTEM_USER + [{"role": "assistant", "content": "Blue."}])
    assert prompt + completion == whole[:len(prompt) + len(completion)]
    assert mask[len(prompt):len(prompt) + len(completion)] == [1] * len(completion)


def test_text_completion_gets_eos_and_shares_the_prompt(smollm_tok):
    prompt, chosen, rejected = encode_pair(smollm_tok, "The sky is", " blue.", " green.")
    assert prompt == smollm_tok.encode("The sky is")
    assert chosen == smollm_tok.encode(" blue.") + [smollm_tok.eos_id]
    assert rejected[-1] == smollm_tok.eos_id
    # An EOS already written in the text is not doubled.
    _, completion = encode_completion(smollm_tok, "a", " b<|im_end|>")
    assert completion.count(smollm_tok.eos_id) == 1


def test_tokens_merging_across_the_boundary_move_the_split(smollm_tok):
    # "12" + "34" may tokenize differently from "1234": the completion starts where the ids first differ.
    prompt, completion = encode_completion(smollm_tok, "x = 12", "34")
    whole = smollm_tok.encode("x = 1234") + [smollm_tok.eos_id]
    assert prompt + completion == whole
    assert len(prompt) == common_prefix_length(smollm_tok.encode("x = 12"), whole)


def test_mixed_formats_and_empty_completions_are_errors(smollm_tok):
    with pytest.raises(ValueError, match="both be text or both be chat"):
        encode_completion(smollm_tok, "text", [{"role": "assistant", "content": "x"}])
    with pytest.raises(ValueError, match="adds no tokens"):
        encode_pair(smollm_tok, "same<|im_end|>", "", " other")  # the prompt already ends with EOS
