"""lmforge audit memorization / pii: tables, results files, clear errors for bad canary files."""

from __future__ import annotations

import json
import string

import pytest

from lmforge.cli.main import main
from lmforge.core.config import ModelConfig
from lmforge.data.canaries import Canary, write_canaries
from lmforge.io.hf import save_pretrained
from lmforge.model.transformer import Transformer, init_weights
from lmforge.tokenizer.train import train_tokenizer


@pytest.fixture
def model_folder(tmp_path):
    (tmp_path / "alphabet.txt").write_text(string.printable)
    tokenizer, _ = train_tokenizer([str(tmp_path / "alphabet.txt")], kind="char")
    model = Transformer(ModelConfig(vocab_size=tokenizer.vocab_size, dim=32, n_layers=1, n_heads=2, max_seq_len=64))
    init_weights(model, seed=0)
    save_pretrained(model, tokenizer, tmp_path / "model")
    return tmp_path / "model"


def test_memorization_table_and_json(tmp_path, model_folder, capsys):
    canaries = [Canary("a", "custom", "pin ", "42", "dd", 1), Canary("b", "custom", "pin ", "977", "ddd", 8)]
    write_canaries(canaries, tmp_path / "c.jsonl")
    assert main(["audit", "memorization", "--model", str(model_folder), "--canaries", str(tmp_path / "c.jsonl"),
                 "--device", "cpu", "--json", str(tmp_path / "m.json")]) == 0
    out = capsys.readouterr().out
    assert "| a | custom | 1 |" in out and "| custom | 8 | 1 |" in out
    results = json.loads((tmp_path / "m.json").read_text())
    assert [r["method"] for r in results["canaries"]] == ["exact", "exact"]
    assert all(0 <= r["exposure"] <= r["log2_space"] for r in results["canaries"])


def test_bad_canary_file_is_one_clear_error(tmp_path, model_folder, capsys):
    (tmp_path / "bad.jsonl").write_text('{"id": "x", "prefix": "p", "secret": "12", "format": "d", "repetitions": 1}\n')
    assert main(["audit", "memorization", "--model", str(model_folder), "--canaries", str(tmp_path / "bad.jsonl")]) == 2
    assert "bad.jsonl:1: field 'secret' '12' does not fit its format 'd'" in capsys.readouterr().err
    assert main(["audit", "memorization", "--model", str(tmp_path / "nowhere"), "--canaries", str(tmp_path / "bad.jsonl")]) == 2


def test_pii_audit_reports_recall_precision_and_clean_detections(tmp_path, capsys):
    (tmp_path / "clean.py").write_text("def f(x):\n    return x[1::2] + [0.5, 1.25]  # version 3.12.1\n" * 50
                                       + "# contact: someone@example.org\n")
    assert main(["audit", "pii", "--lines", "300", "--clean", str(tmp_path / "clean.py"),
                 "--json", str(tmp_path / "p.json")]) == 0
    out = capsys.readouterr().out
    assert "| EMAIL |" in out and "per MB" in out
    results = json.loads((tmp_path / "p.json").read_text())
    assert results["labelled"]["lines"] == 300 and results["labelled"]["recall"] > 0.9
    clean = results["clean"][str(tmp_path / "clean.py")]
    assert clean["detections"] == 1 and clean["per_type"]["EMAIL"]["top"] == [["someone@example.org", 1]]
