"""lmforge eval --task redteam / bias, calibration of multiple-choice results, --moderation errors."""

from __future__ import annotations

import json

import pytest
import torch

from lmforge.cli.main import main
from lmforge.core.config import ModelConfig
from lmforge.io.hf import save_pretrained
from lmforge.model.transformer import Transformer, init_weights


@pytest.fixture(scope="module")
def tiny_folder(smollm, tmp_path_factory):
    """A random 1-layer model with SmolLM2's tokenizer (and chat template), saved as a model folder."""
    _, tokenizer = smollm
    model = Transformer(ModelConfig(vocab_size=tokenizer.vocab_size, dim=32, n_layers=1, n_heads=2, max_seq_len=512))
    init_weights(model, seed=3)
    folder = tmp_path_factory.mktemp("tiny") / "model"
    save_pretrained(model, tokenizer, folder)
    return folder


def test_redteam_with_and_without_moderation(tiny_folder, tmp_path, capsys):
    policy = tmp_path / "policy.yaml"
    policy.write_text("rules:\n  - category: weapons\n    patterns: ['\\bbomb\\b']\nlog: " + str(tmp_path / "log.jsonl") + "\n")
    assert main(["eval", "--model", str(tiny_folder), "--task", "redteam", "--limit", "20", "--max-new-tokens", "4",
                 "--moderation", str(policy), "--json", str(tmp_path / "rt.json")]) == 0
    out = capsys.readouterr().out
    assert "| model alone |" in out and "| with moderation (policy) |" in out
    results = json.loads((tmp_path / "rt.json").read_text())
    assert results["n"] == 20 and results["moderated"]["refusal_rate"] >= results["alone"]["refusal_rate"]
    assert len((tmp_path / "log.jsonl").read_text().splitlines()) == results["moderated"]["filtered_by_stage"]["input"] > 0


def test_bad_policy_file_fails_before_the_model_loads(tmp_path, capsys):
    policy = tmp_path / "bad.yaml"
    policy.write_text("rules:\n  - category: x\n    patterns: ['(open']\n")
    assert main(["eval", "--model", "no-such-model", "--task", "redteam", "--moderation", str(policy)]) == 2
    assert "bad.yaml: rules[0].patterns[0]: not a valid regular expression" in capsys.readouterr().err
    policy.write_text("rules: [unclosed\n")
    assert main(["chat", "--model", "no-such-model", "--prompt", "hi", "--moderation", str(policy)]) == 2
    assert "bad.yaml: not valid YAML" in capsys.readouterr().err
    assert main(["eval", "--task", "arc_easy", "--moderation", str(policy)]) == 2


def test_bias_table(tiny_folder, tmp_path, capsys):
    assert main(["eval", "--model", str(tiny_folder), "--task", "bias", "--json", str(tmp_path / "bias.json")]) == 0
    out = capsys.readouterr().out
    assert "| nurse |" in out and "significant:" in out
    results = json.loads((tmp_path / "bias.json").read_text())
    assert set(results["axes"]) == {"gender_occupation", "gender_attribute", "age"} and results["pairs"] == len(results["samples"])


def test_multiple_choice_calibration_and_cost(tiny_folder, shared_data, tmp_path, capsys):
    assert main(["eval", "--model", str(tiny_folder), "--task", "arc_easy", "--data", str(shared_data), "--limit", "12",
                 "--json", str(tmp_path / "arc.json")]) == 0
    assert "calibration 0-shot: ECE" in capsys.readouterr().out
    results = json.loads((tmp_path / "arc.json").read_text())
    report = results["calibration"]["0"]
    assert report["n"] == 12 and 0 <= report["ece"] <= 1 and sum(b["count"] for b in report["bins"]) == 12
    assert (tmp_path / "arc_calibration_reliability.png").is_file() and (tmp_path / "arc_calibration_selective.png").is_file()
    assert results["cost"]["flops"] > 0 and results["cost"]["tokens"] > 0


def test_self_consistency_on_a_generation_task(tiny_folder, tmp_path, capsys):
    torch.manual_seed(0)
    assert main(["eval", "--model", str(tiny_folder), "--task", "add", "--limit", "3", "--max-new-tokens", "4",
                 "--self-consistency", "3", "--json", str(tmp_path / "add.json")]) == 0
    assert "self-consistency (3 samples)" in capsys.readouterr().out
    report = json.loads((tmp_path / "add.json").read_text())["self_consistency"]
    assert len(report["items"]) == 3 and all(1 / 3 - 1e-9 <= i["agreement"] <= 1 for i in report["items"])
    assert main(["eval", "--model", str(tiny_folder), "--task", "arc_easy", "--self-consistency", "2"]) == 2


def test_chat_with_moderation(tiny_folder, tmp_path, capsys):
    policy = tmp_path / "policy.yaml"
    policy.write_text("refusal: Not that.\nrules:\n  - {category: weapons, patterns: ['\\bbomb\\b'], stages: [input]}\n"
                      "  - {category: everything, patterns: ['Paris'], stages: [output]}\nlog: " + str(tmp_path / "l.jsonl") + "\n")
    assert main(["chat", "--model", str(tiny_folder), "--prompt", "How do I build a bomb?", "--max-new-tokens", "4",
                 "--moderation", str(policy)]) == 0
    assert capsys.readouterr().out.strip() == "Not that."
    assert main(["chat", "--prompt", "What is the capital of France? Answer in one word.", "--max-new-tokens", "8",
                 "--moderation", str(policy)]) == 0  # the embedded model answers Paris
    out = capsys.readouterr().out.strip()
    stages = [json.loads(line)["stage"] for line in (tmp_path / "l.jsonl").read_text().splitlines()]
    assert out == "Not that." and stages == ["input", "output"]  # the reply refused after generating
