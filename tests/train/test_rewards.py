"""Reward functions: combination with weights, the checks that stop a step, built-in rewards."""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest
import torch

from lmforge.core.config import ModelConfig
from lmforge.io.hf import save_sequence_classifier
from lmforge.model.heads import ScalarHeadModel
from lmforge.model.transformer import Transformer, init_weights
from lmforge.tokenizer.train import train_bpe
from lmforge.train.rewards import (Reward, RewardError, answer_reward, completion_text, format_reward, load_callable,
                                   reward_model_reward, score_completions)

PROMPTS = ["What is 2 + 2?", "What is 3 + 3?", "Spell cat."]
COMPLETIONS = ["4", "The answer is 6.", "c-a-t"]


def length_reward(prompts, completions):
    return [float(len(c)) for c in completions]


def test_weighted_sum_and_metrics_under_trl_names():
    columns = {"answer": ["4", "6", "cat"]}
    rewards = [Reward("exact", answer_reward(lambda text, gold: text.strip() == gold)),
               Reward("format", format_reward(r"The answer is -?\d+\.?$"), weight=0.5),
               Reward("length", length_reward, weight=-0.1)]
    scores = score_completions(rewards, PROMPTS, COMPLETIONS, columns)
    assert scores.by_name["exact"].tolist() == [1.0, 0.0, 0.0]
    assert scores.by_name["format"].tolist() == [0.0, 1.0, 0.0]
    assert scores.by_name["length"].tolist() == [1.0, 16.0, 5.0]
    assert scores.total.tolist() == pytest.approx([1 - 0.1, 0.5 - 1.6, -0.5])
    metrics = scores.metrics()
    assert metrics["reward"] == pytest.approx(float(scores.total.mean()))
    assert metrics["rewards/exact/mean"] == pytest.approx(1 / 3)
    assert metrics["rewards/length/std"] == pytest.approx(float(np.std([1, 16, 5], ddof=1)))
    assert set(metrics) >= {"reward", "reward_std", "rewards/format/mean"}


def test_columns_reach_the_functions_that_ask_for_them():
    seen = {}

    def named(prompts, completions, answer):
        seen["named"] = answer
        return [0.0] * len(completions)

    def catch_all(prompts, completions, **kwargs):
        seen["all"] = sorted(kwargs)
        return np.zeros(len(completions))  # numpy numbers are numbers

    score_completions([Reward("a", named), Reward("b", catch_all), Reward("c", length_reward)],
                      PROMPTS, COMPLETIONS, {"answer": ["1", "2", "3"], "level": [1, 2, 3]})
    assert seen == {"named": ["1", "2", "3"], "all": ["answer", "level"]}
    chat = [[{"role": "assistant", "content": "hello"}]]
    assert completion_text(chat[0]) == "hello" and completion_text("x") == "x"
    assert score_completions([Reward("f", format_reward("^hel"))], ["p"], chat).total.tolist() == [1.0]


@pytest.mark.parametrize("bad,message", [
    (lambda p, c: 1 / 0, r"reward function 'bad' raised ZeroDivisionError"),
    (lambda p, c: [1.0, math.nan, 0.0], r"reward function 'bad' returned nan for completion 1"),
    (lambda p, c: [1.0, 2.0], r"reward function 'bad' returned 2 values for 3 completions"),
    (lambda p, c: [1.0, None, 0.0], r"reward function 'bad' returned None for completion 1"),
    (lambda p, c: [1.0, "1", 0.0], r"reward function 'bad' returned '1' for completion 1"),
    (lambda p, c: 3.0, r"reward function 'bad' returned float, not a list of 3 numbers"),
    (lambda p, c: [1.0, math.inf, 0.0], r"reward function 'bad' returned inf"),
])
def test_a_bad_reward_function_is_named(bad, message):
    with pytest.raises(RewardError, match=message):
        score_completions([Reward("good", length_reward), Reward("bad", bad)], PROMPTS, COMPLETIONS)


def test_bad_specs_are_clear_errors(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="not a valid regular expression"):
        format_reward("(")
    with pytest.raises(ValueError, match="module:function"):
        load_callable("no_colon")
    with pytest.raises(ValueError, match="cannot import"):
        load_callable("surely_not_a_module_xyz:f")
    (tmp_path / "my_rewards.py").write_text("def brevity(prompts, completions):\n"
                                            "    return [-len(c) for c in completions]\nvalue = 3\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert load_callable("my_rewards:brevity")(["p"], ["abc"]) == [-3]
    with pytest.raises(ValueError, match="has no 'missing'"):
        load_callable("my_rewards:missing")
    with pytest.raises(ValueError, match="not callable"):
        load_callable("my_rewards:value")
    sys.modules.pop("my_rewards", None)
    with pytest.raises(RewardError, match="reward function .exact. raised ValueError: the prompts have no .answer. field"):
        score_completions([Reward("exact", answer_reward(str.__eq__))], ["p"], ["x"])
    with pytest.raises(ValueError, match="two rewards are named"):
        score_completions([Reward("x", length_reward), Reward("x", length_reward)], ["p"], ["x"])


def test_reward_model_scores_equal_transformers(tmp_path):
    """A reward-model folder (sequence-classification layout) scores prompt + completion as
    transformers' AutoModelForSequenceClassification does on the same tokens."""
    from transformers import AutoModelForSequenceClassification

    from lmforge.tokenizer.completion import encode_completion

    tokenizer = train_bpe(["What is two plus two? Four. The answer is 4. Cats and dogs."] * 20, vocab_size=300)
    config = ModelConfig(family="llama", vocab_size=tokenizer.vocab_size, dim=32, n_layers=2, n_heads=4, n_kv_heads=2,
                         ffn_dim=64, max_seq_len=128, tie_embeddings=True)
    base = Transformer(config)
    init_weights(base, seed=3)
    head = ScalarHeadModel(base, init_std=0.5)
    pad = tokenizer.pad_id if tokenizer.pad_id is not None else tokenizer.eos_id
    save_sequence_classifier(head, tokenizer, tmp_path / "rm", pad_id=pad)

    prompts = [[{"role": "user", "content": "What is two plus two?"}]] * 3
    completions = [[{"role": "assistant", "content": text}] for text in ("Four.", "The answer is 4.", "Cats")]
    ours = reward_model_reward(tmp_path / "rm", batch_size=2)(prompts, completions)

    reference = AutoModelForSequenceClassification.from_pretrained(tmp_path / "rm", dtype=torch.float32).eval()
    for prompt, completion, score in zip(prompts, completions, ours):
        prompt_ids, completion_ids = encode_completion(tokenizer, prompt, completion)
        with torch.no_grad():
            expected = reference(torch.tensor([prompt_ids + completion_ids])).logits[0, 0]
        assert score == pytest.approx(float(expected), abs=1e-4)
    assert len(set(round(s, 5) for s in ours)) == 3  # the completions are told apart
