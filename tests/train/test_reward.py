"""Reward models end to end on a small model: Bradley-Terry training, held-out pairwise accuracy, the
sequence-classification folder read by transformers with equal scores, resume, `lmforge rm score`."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from lmforge.cli.main import main
from lmforge.core.config import ModelConfig
from lmforge.data.preference import PreferencePair, write_preference_jsonl
from lmforge.io.hf import load_sequence_classifier, save_pretrained
from lmforge.infer.reward import score_completions
from lmforge.model.transformer import Transformer, init_weights
from lmforge.tokenizer.train import train_bpe
from lmforge.train.reward import RewardConfig, train_reward_model

WORDS = "sun moon star comet river stone cloud rain snow wind tree leaf bird fish frog".split()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A small Llama, and pairs whose preference a reward model can learn and generalise: a reply
    that repeats the requested word beats one naming another word."""
    root = tmp_path_factory.mktemp("rm")
    tokenizer = train_bpe([f"Say {w}. {w}" for w in WORDS] * 20, vocab_size=300)
    config = ModelConfig(family="llama", vocab_size=tokenizer.vocab_size, dim=48, n_layers=2, n_heads=4, n_kv_heads=2,
                         ffn_dim=96, max_seq_len=128, tie_embeddings=True)
    model = Transformer(config)
    init_weights(model, seed=0)
    save_pretrained(model, tokenizer, root / "base")
    pairs = []
    for i, word in enumerate(WORDS):
        for j, other in enumerate(WORDS):
            if i != j:
                pairs.append(PreferencePair(f"Say {word}.", f" {word}", f" {other}"))
    write_preference_jsonl(pairs, root / "pairs.jsonl")
    return root


def config_for(root, out, **changes) -> RewardConfig:
    base = dict(model=str(root / "base"), data=str(root / "pairs.jsonl"), out_dir=str(out), max_steps=120, epochs=None,
                batch_size=8, threads=1, log_every=5, eval_every=60, val_fraction=0.2, plot=False, method="full",
                optim={"lr": 1e-3, "weight_decay": 0.0}, schedule={"warmup_steps": 2}, head_init_std=0.02)
    base.update(changes)
    return RewardConfig.from_dict(base)


def test_reward_model_learns_and_loads_in_transformers_with_equal_scores(tmp_path, setup):
    from transformers import AutoModelForSequenceClassification

    result = train_reward_model(config_for(setup, tmp_path / "rm"), show_progress=False)
    assert result.accuracy_before < 0.6 and result.accuracy_after > 0.8  # held-out pairs (42)
    config = json.loads((result.reward_model / "config.json").read_text())
    assert config["architectures"] == ["LlamaForSequenceClassification"] and config["pad_token_id"] is not None
    reference = AutoModelForSequenceClassification.from_pretrained(result.reward_model, dtype=torch.float32).eval()
    ours, tokenizer, pad = load_sequence_classifier(result.reward_model)
    prompts = ["Say sun.", "Say river.", "Say bird."]
    completions = [" sun", " stone cloud", " bird bird bird"]
    scores = score_completions(ours, tokenizer, pad, prompts, completions, batch_size=3)
    rows = [tokenizer.encode(p + c, add_bos=tokenizer.add_bos_token) + [tokenizer.eos_id] for p, c in zip(prompts, completions)]
    width = max(map(len, rows))
    ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    with torch.no_grad():
        theirs = reference(ids, attention_mask=mask).logits[:, 0]
    assert (theirs - torch.tensor(scores)).abs().max().item() < 1e-4
    assert scores[0] > scores[1]


def test_lora_reward_model_resumes_exactly(tmp_path, setup):
    changes = dict(method="lora", max_steps=6, lora={"rank": 4, "alpha": 8.0, "dropout": 0.0, "targets": ["all-linear"]},
                   optim={"lr": 1e-2})
    straight = train_reward_model(config_for(setup, tmp_path / "a", **changes), show_progress=False)
    config = config_for(setup, tmp_path / "b", save_every=3, **changes)
    train_reward_model(config, show_progress=False)
    shutil.rmtree(tmp_path / "b" / "step_00000006")
    resumed = train_reward_model(config, resume=True, show_progress=False)
    assert resumed.steps == 6
    a, tokenizer, pad = load_sequence_classifier(straight.reward_model)
    b, _, _ = load_sequence_classifier(resumed.reward_model)
    ids = torch.tensor([tokenizer.encode("Say sun. sun") + [tokenizer.eos_id]])
    with torch.no_grad():
        torch.testing.assert_close(b.sequence_scores(ids, pad), a.sequence_scores(ids, pad), atol=1e-5, rtol=0)


def test_cli_trains_and_scores(tmp_path, setup, capsys):
    out = tmp_path / "cli"
    assert main(["rm", "--model", str(setup / "base"), "--data", str(setup / "pairs.jsonl"), "--max-steps", "3",
                 "--out", str(out), "--threads", "1", "--quiet", "--method", "full"]) == 0
    assert "held-out pairwise accuracy" in capsys.readouterr().out
    folder = out / "reward_model"
    assert main(["rm", "score", "--model", str(folder), "--data", str(setup / "pairs.jsonl"), "--out",
                 str(tmp_path / "scored.jsonl")]) == 0
    assert "pairwise accuracy" in capsys.readouterr().out
    scored = [json.loads(line) for line in (tmp_path / "scored.jsonl").read_text().splitlines()]
    assert {"chosen_score", "rejected_score", "prompt"} <= set(scored[0])
    completions = tmp_path / "completions.jsonl"
    completions.write_text(json.dumps({"prompt": "Say sun.", "completion": " sun"}) + "\n")
    assert main(["rm", "score", "--model", str(folder), "--data", str(completions)]) == 0
    assert "1 completions: mean score" in capsys.readouterr().out
    assert main(["rm", "frobnicate"]) == 2
    assert "unknown rm action 'frobnicate'" in capsys.readouterr().err
