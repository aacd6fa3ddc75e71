"""`lmforge compare` from the command line: bad input is one clear line; a tiny run writes the report."""

from __future__ import annotations

import json

import pytest

from lmforge.cli.main import main
from tests.train import conftest as train_fixtures

tiny_data = train_fixtures.tiny_data  # the tiny prepared corpus fixture


def test_bad_settings_are_one_line_errors(tmp_path, capsys):
    assert main(["compare", "--data", str(tmp_path / "nowhere"), "--bert-time", "-1"]) == 2
    assert "--bert-time" in capsys.readouterr().err
    assert main(["compare", "--data", str(tmp_path), "--dim", "30", "--heads", "4"]) == 2
    assert "divisible" in capsys.readouterr().err
    assert main(["compare", "--data", str(tmp_path / "nowhere")]) == 2
    assert "prepare" in capsys.readouterr().err


@pytest.mark.slow
def test_a_tiny_comparison_writes_the_report(tiny_data, tmp_path, capsys):
    out = tmp_path / "compare"
    assert main(["compare", "--data", str(tiny_data), "--out", str(out), "--seq-len", "64", "--batch-size", "4",
                 "--dim", "32", "--layers", "2", "--heads", "2", "--decoder-time", "3", "--eval-every-s", "1",
                 "--eval-tokens", "1024", "--bert-time", "1", "--threads", "1", "--quiet"]) == 0
    report = (out / "report.md").read_text()
    for heading in ("Loss along the context", "Long-range recall probe", "Decode cost per token", "Samples", "BERT"):
        assert heading in report
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["summary"]) == {"decoder", "lstm", "t5"}
    assert summary["summary"]["lstm"]["flops"] <= summary["summary"]["decoder"]["flops"] * 1.01
    assert len(summary["per_position_loss"]["decoder"]) == 64
    assert all((out / f"{name}.png").is_file() for name in ("loss_vs_flops", "loss_per_position", "decode_cost"))
