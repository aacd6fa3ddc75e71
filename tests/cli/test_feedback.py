"""`lmforge feedback`: constitutional pairs written for `lmforge dpo`, rule compliance, bad inputs named."""

from __future__ import annotations

import json

import pytest

from lmforge.cli.main import main
from lmforge.core.config import ModelConfig
from lmforge.data.preference import read_preference_jsonl
from lmforge.io.hf import save_pretrained
from lmforge.model.transformer import Transformer, init_weights
from lmforge.tokenizer.train import train_bpe

CONSTITUTION = """name: tiny
principles:
  - name: short
    critique: Is it too long?
    revision: Rewrite it shorter.
    rubric: The response is short.
    check: {max_words: 4}
"""


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("feedback")
    tokenizer = train_bpe(["Tell me about the sun and the moon. Is it too long? Rewrite it shorter."] * 20, vocab_size=300)
    config = ModelConfig(family="llama", vocab_size=tokenizer.vocab_size, dim=32, n_layers=2, n_heads=4, n_kv_heads=2,
                         ffn_dim=64, max_seq_len=512, tie_embeddings=True)
    model = Transformer(config)
    init_weights(model, seed=0)
    save_pretrained(model, tokenizer, root / "model")
    (root / "c.yaml").write_text(CONSTITUTION)
    (root / "prompts.jsonl").write_text("".join(json.dumps({"prompt": f"Tell me about the {w}."}) + "\n"
                                                for w in ("sun", "moon", "stars", "sea", "sky", "rain") * 2))
    return root


def test_feedback_writes_pairs_a_dpo_run_reads(tmp_path, tiny, capsys):
    out = tmp_path / "pairs.jsonl"
    code = main(["feedback", "--model", str(tiny / "model"), "--prompts", str(tiny / "prompts.jsonl"), "--constitution",
                 str(tiny / "c.yaml"), "--judge", "model", "--max-new-tokens", "8", "--temperature", "1",
                 "--out", str(out), "--quiet", "--threads", "1"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "constitutional pairs (tiny, judge model):" in printed and "from 12 prompts" in printed
    data = read_preference_jsonl(out)
    assert data.pairs and all(p.conversational and p.chosen[0]["role"] == "assistant" for p in data.pairs)


def test_measure_reports_compliance(tmp_path, tiny, capsys):
    report = tmp_path / "report.json"
    assert main(["feedback", "--model", str(tiny / "model"), "--prompts", "builtin:heldout", "--limit", "5",
                 "--constitution", str(tiny / "c.yaml"), "--measure", "--max-new-tokens", "6", "--out", str(report),
                 "--quiet"]) == 0
    assert "rule compliance of" in capsys.readouterr().out
    result = json.loads(report.read_text())
    assert result["n"] == 5 and 0 <= result["all"]["rate"] <= 1 and len(result["answers"]) == 5


@pytest.mark.parametrize("change,message", [
    ({"--prompts": "builtin:nope"}, "unknown prompt set"),
    ({"--judge": "oracle"}, "unknown judge 'oracle'"),
    ({"--constitution": "missing.yaml"}, "missing.yaml not found"),
])
def test_bad_inputs_are_named(tmp_path, tiny, capsys, change, message):
    args = {"--model": str(tiny / "model"), "--prompts": str(tiny / "prompts.jsonl"), "--constitution": str(tiny / "c.yaml"),
            "--out": str(tmp_path / "p.jsonl"), "--max-new-tokens": "4"}
    args.update(change)
    assert main(["feedback", *[x for kv in args.items() for x in kv], "--quiet"]) == 2
    assert message in capsys.readouterr().err
