"""Reward-model scoring: batches of unequal lengths score as each sequence alone, chat and text prompts."""

from __future__ import annotations

import pytest
import torch

from lmforge.core.config import ModelConfig
from lmforge.infer.reward import score_completions, score_ids
from lmforge.model.heads import ScalarHeadModel
from lmforge.model.transformer import Transformer, init_weights
from lmforge.tokenizer.completion import encode_completion
from lmforge.tokenizer.train import train_bpe


@pytest.fixture(scope="module")
def reward_model():
    tokenizer = train_bpe(["Say sun. The sun is a star. Say moon. The moon is not."] * 20, vocab_size=280)
    config = ModelConfig(family="llama", vocab_size=tokenizer.vocab_size, dim=32, n_layers=2, n_heads=4, n_kv_heads=2,
                         ffn_dim=64, max_seq_len=64, tie_embeddings=True)
    base = Transformer(config)
    init_weights(base, seed=3)
    return ScalarHeadModel(base, init_std=0.3).eval(), tokenizer


def test_batched_scores_equal_scores_alone(reward_model):
    model, tokenizer = reward_model
    pad = tokenizer.pad_id
    sequences = [tokenizer.encode("Say sun. The sun is a star."), tokenizer.encode("Say moon."),
                 tokenizer.encode("The moon is not a star. Say sun.")]
    batched = score_ids(model, sequences, pad, batch_size=3)
    alone = [score_ids(model, [s], pad)[0] for s in sequences]
    torch.testing.assert_close(torch.tensor(batched), torch.tensor(alone), atol=1e-5, rtol=0)
    assert len(set(batched)) == 3 and model.training is False


def test_completions_are_tokenized_as_in_training(reward_model):
    model, tokenizer = reward_model
    chat = [{"role": "user", "content": "Say sun."}]
    scores = score_completions(model, tokenizer, tokenizer.pad_id, ["Say sun.", chat, chat],
                               [" The sun.", "The sun.", [{"role": "assistant", "content": "The sun."}]])
    assert scores[1] == pytest.approx(scores[2], abs=1e-6)  # a text reply to a chat prompt is the assistant turn
    prompt, completion = encode_completion(tokenizer, "Say sun.", " The sun.")
    assert scores[0] == pytest.approx(score_ids(model, [prompt + completion], tokenizer.pad_id)[0], abs=1e-6)
    long = score_completions(model, tokenizer, tokenizer.pad_id, ["Say sun. " * 30], [" The sun."], max_length=16)
    assert len(long) == 1  # the end is kept, where the score is read
    with pytest.raises(ValueError, match="2 prompts but 1 completions"):
        score_completions(model, tokenizer, tokenizer.pad_id, ["a", "b"], ["c"])
