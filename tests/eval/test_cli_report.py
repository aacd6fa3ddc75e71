"""`lmforge eval` and `lmforge report` end to end (model loading replaced by the session fixture)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from lmforge.cli import eval as eval_cli
from lmforge.cli.main import main
from lmforge.eval.report import build_report, safetensors_parameters


@pytest.fixture()
def use_fixture_model(monkeypatch, smollm):
    monkeypatch.setattr(eval_cli, "load_from_args", lambda args: smollm)


def test_eval_cli_writes_json_and_accuracy_vs_shots_plot(use_fixture_model, tmp_path, capsys):
    task = tmp_path / "colours.jsonl"
    rows = [{"question": f"What colour is {thing}?", "choices": ["green", "yellow", "blue"], "answer": gold}
            for thing, gold in (("grass", 0), ("a banana", 1), ("the sky", 2), ("a lemon", 1))]
    rows += [{"question": "What colour is snow?", "choices": ["white", "black"], "answer": 0, "split": "train"}]
    task.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out" / "colours.json"
    run_dir = tmp_path / "run"
    code = main(["eval", "--task", f"jsonl:{task}", "--shots", "0,1", "--json", str(out), "--run-dir", str(run_dir),
                 "--seed", "3"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "colours shots=0 n=4: acc=" in printed and "colours shots=1 n=4" in printed
    results = json.loads(out.read_text())
    assert results["lmforge_eval"] == 1 and results["task"] == "colours" and results["model"] == "smollm2-135m-instruct"
    assert [r["shots"] for r in results["runs"]] == [0, 1]
    for run in results["runs"]:  # accuracy is what the logged choice scores give, item by item
        samples = run["samples"]
        assert [s["gold"] for s in samples] == [0, 1, 2, 1]
        best = [max(range(len(s["logprobs"])), key=s["logprobs"].__getitem__) for s in samples]
        assert [s["pred"] for s in samples] == best
        assert run["metrics"]["acc"] == sum(p == s["gold"] for p, s in zip(best, samples)) / 4
    png = out.with_suffix(".png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (run_dir / "eval" / "colours.json").is_file() and (run_dir / "eval" / "colours.png").is_file()

    assert main(["report", str(run_dir)]) == 0
    report = (run_dir / "report.md").read_text()
    assert "## Evaluation" in report and "| colours | smollm2-135m-instruct | plain | 1 | 4 | acc |" in report
    assert "![eval/colours.png](eval/colours.png)" in report


def test_eval_cli_errors_are_one_clear_line(tmp_path, capsys):
    assert main(["eval", "--task", "arc_easy", "--data", str(tmp_path)]) == 2
    assert str(tmp_path / "arc" / "ARC-Easy-validation.jsonl") in capsys.readouterr().err
    assert main(["eval", "--task", "icl", "--shots", "1,x"]) == 2
    assert "--shots" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_report_gathers_a_run_folder(tmp_path):
    run = tmp_path / "run"
    (run / "tokenizer").mkdir(parents=True)
    (run / "tokenizer" / "tokenizer_report.json").write_text(json.dumps(
        {"kind": "bpe", "vocab_size": 4096, "documents": 1, "bytes": 1_000_000, "bytes_per_token": 3.61}))
    (run / "data").mkdir()
    (run / "data" / "meta.json").write_text(json.dumps({"seconds": 12.5, "splits": {
        "train": {"tokens": 270_000, "bytes": 990_000, "documents": 1},
        "val": {"tokens": 30_000, "bytes": 110_000, "documents": 1}}}))
    records = [{"step": s, "tokens": s * 1000, "time_s": s * 0.5, "train_loss": 5.0 - s / 100, "tokens_per_s": 2000.0}
               for s in range(1, 101)]
    records += [{"step": 50, "tokens": 50_000, "time_s": 25.0, "val_loss": 4.6, "val_bpb": 1.9},
                {"step": 100, "tokens": 100_000, "time_s": 50.0, "val_loss": 4.2, "val_bpb": 1.7}]
    (run / "pretrain").mkdir()
    (run / "pretrain" / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records) + '{"step": 10')
    checkpoint = run / "pretrain" / "step_00000100"
    checkpoint.mkdir()
    save_file({"a": torch.zeros(10, 20), "b": torch.zeros(5)}, str(checkpoint / "model.safetensors"))
    (checkpoint / "meta.json").write_text(json.dumps({"step": 100, "val_loss": 4.2}))
    (run / "eval").mkdir()
    (run / "eval" / "arc.json").write_text(json.dumps({
        "lmforge_eval": 1, "task": "arc_easy", "model": "ckpt", "primary_metric": "acc", "config": {"chat": False},
        "runs": [{"shots": 0, "n": 570, "metrics": {"acc": 0.5, "acc_stderr": 0.02, "acc_norm": 0.45}, "wall_s": 100.0}],
        "wall_s": 100.0}))
    (run / "arc_copy.json").write_text((run / "eval" / "arc.json").read_text())  # --json and --run-dir: one result
    (run / "eval" / "unrelated.json").write_text("[1, 2, 3]")

    assert safetensors_parameters(checkpoint / "model.safetensors") == 205
    text = build_report(run, usd_per_hour=3.6)
    assert "| tokenizer/tokenizer_report.json | bpe | 4,096 | 1,000,000 | 3.6100 |" in text
    assert "| data | train | 1 | 270,000 | 990,000 | 3.6667 |" in text
    assert "| pretrain | 100 | 100,000 | 50.0 s | 4.0200 | 4.2000 | 1.7000 | 2,000.0 |" in text
    assert "| pretrain/step_00000100 | 205 | 100 | 4.2000 |" in text
    assert text.count("| arc_easy | ckpt | plain | 0 | 570 | acc | 0.5000 | 0.0200 | acc_norm 0.4500 | 1.7 min |") == 1
    # 12.5 s data + 50 s training + 100 s eval = 162.5 s at $3.6/h = $0.1625
    assert "**2.7 min**" in text and "$0.1625" in text
    assert "6 × 205 parameters × 100,000 tokens" in text
