"""`lmforge dpo` and `lmforge rm` on generated verifiable pairs: sampling, pairing, before/after scores with
the paired standard error, and the --make-pairs / --score-task flags."""

from __future__ import annotations

import json
import math

import pytest

import lmforge.cli.dpo as dpo_cli
from lmforge.cli.main import main
from lmforge.core.config import ModelConfig
from lmforge.data.preference import read_preference_jsonl
from lmforge.data.synthetic import make_items
from lmforge.io.hf import save_pretrained
from lmforge.model.transformer import Transformer, init_weights
from lmforge.tokenizer.train import train_bpe


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("dpo_cli")
    items = make_items("reverse", 100)
    tokenizer = train_bpe([f"{i.question} {i.answer}" for i in items] * 2, vocab_size=300)
    config = ModelConfig(family="llama", vocab_size=tokenizer.vocab_size, dim=32, n_layers=2, n_heads=4, n_kv_heads=2,
                         ffn_dim=64, max_seq_len=256, tie_embeddings=True)
    model = Transformer(config)
    init_weights(model, seed=0)
    save_pretrained(model, tokenizer, root / "model")
    return root / "model"


def test_answer_check_is_the_runners_accuracy():
    assert dpo_cli.answer_is_correct('The letter "r" appears 3 times in "strawberry".', "3")
    assert dpo_cli.answer_is_correct("3", "3") and not dpo_cli.answer_is_correct("It appears twice.", "2")
    assert dpo_cli.answer_is_correct('The reversed word is "tenalp".', "tenalp")


def test_paired_change(tmp_path):
    def write(name, values):
        samples = [{"id": str(i), "correct": bool(v), "strict": False} for i, v in enumerate(values)]
        (tmp_path / name).write_text(json.dumps({"runs": [{"samples": samples}]}))
        return tmp_path / name

    before = write("b.json", [1, 0, 0, 1, 0, 1])
    after = write("a.json", [1, 1, 1, 1, 0, 0])
    b, a, stderr, n = dpo_cli.paired_change(before, after)
    diffs = [0, 1, 1, 0, 0, -1]
    mean = sum(diffs) / 6
    assert (b, a, n) == (0.5, 4 / 6, 6)
    assert stderr == pytest.approx(math.sqrt(sum((d - mean) ** 2 for d in diffs) / 5 / 6))


def test_default_pairs_are_sampled_scored_and_trained(tmp_path, tiny, monkeypatch, capsys):
    # The tiny random model never answers right; judge its answers by a deterministic stand-in rule.
    monkeypatch.setattr(dpo_cli, "answer_is_correct", lambda text, gold: len(text) % 2 == 0)
    out = tmp_path / "run"
    common = ["--model", str(tiny), "--task", "reverse", "--prompts", "12", "--samples", "3", "--out", str(out),
              "--threads", "1", "--quiet", "generate.max_new_tokens=6"]
    assert main(["dpo", *common, "--make-pairs"]) == 0
    pairs = read_preference_jsonl(out / "pairs.jsonl").pairs
    assert pairs and all(len(p.chosen[0]["content"]) % 2 == 0 for p in pairs)
    assert not (out / "metrics.jsonl").exists()
    capsys.readouterr()
    assert main(["dpo", *common, "--eval-items", "6", "--max-steps", "2", "--batch-size", "4"]) == 0
    printed = capsys.readouterr().out
    line = next(l for l in printed.splitlines() if l.startswith("held-out reverse, 6 items, accuracy (extracted answer):"))
    assert "(paired standard error" in line or line.endswith("change +0.0% (no item changed)")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["scores_before"]["n"] == 6 and summary["scores_after"] is not None
    assert (out / "eval" / "reverse_before.json").is_file() and (out / "eval" / "reverse_after.json").is_file()

    # Given pairs, a task is scored only when asked for.
    again = tmp_path / "again"
    assert main(["dpo", "--model", str(tiny), "--data", str(out / "pairs.jsonl"), "--out", str(again), "--max-steps", "1",
                 "--quiet", "--threads", "1"]) == 0
    assert json.loads((again / "summary.json").read_text())["scores_before"] is None
    assert main(["dpo", "--model", str(tiny), "--data", str(out / "pairs.jsonl"), "--out", str(again), "--max-steps", "1",
                 "--quiet", "--score-task", "reverse", "--eval-items", "3", "generate.max_new_tokens=4"]) == 0
    assert json.loads((again / "summary.json").read_text())["scores_after"]["n"] == 3


def test_rm_trains_on_default_pairs(tmp_path, tiny, monkeypatch, capsys):
    monkeypatch.setattr(dpo_cli, "answer_is_correct", lambda text, gold: len(text) % 2 == 0)
    out = tmp_path / "rm"
    assert main(["rm", "--model", str(tiny), "--task", "reverse", "--prompts", "12", "--samples", "3", "--out", str(out),
                 "--threads", "1", "--quiet", "--max-steps", "2", "generate.max_new_tokens=6"]) == 0
    assert (out / "pairs.jsonl").is_file() and (out / "reward_model" / "config.json").is_file()
    assert "reward model:" in capsys.readouterr().out  # (too few pairs to hold some out)
