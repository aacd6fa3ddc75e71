"""The report card's rows and kept samples for code, text-similarity and judged evaluations."""

from __future__ import annotations

import json

from lmforge.eval.judge import Judge
from lmforge.eval.report import build_report
from lmforge.eval.runner import EvalConfig, evaluate
from lmforge.eval.tasks import jsonl_task, load_task


def test_capability_rows_and_samples(tiny, tmp_path):
    model, tokenizer = tiny
    (tmp_path / "eval").mkdir()
    code = tmp_path / "code.jsonl"
    code.write_text(json.dumps({"prompt": "def one():\n", "tests": "def check(candidate):\n    assert candidate() == 1\n",
                                "entry_point": "one"}) + "\n")
    runs = {
        "code": evaluate(model, tokenizer, jsonl_task(code), EvalConfig(max_new_tokens=4)),
        "summarize": evaluate(model, tokenizer, load_task("summarize"), EvalConfig(limit=2, max_new_tokens=4)),
        "open_ended": evaluate(model, tokenizer, load_task("open_ended"), EvalConfig(limit=2, max_new_tokens=4),
                               judge=Judge(model, tokenizer, name="tiny")),
    }
    for name, results in runs.items():
        results["model"] = "tiny"
        (tmp_path / "eval" / f"{name}.json").write_text(json.dumps(results))
    report = build_report(tmp_path)
    rows = {line.split(" | ")[0].strip("| "): line for line in report.splitlines() if line.startswith("| ")}
    assert "| pass@1 | 0.0000 |" in rows["code"]  # a 4-token random completion does not pass
    assert "| rougeL |" in rows["summarize"] and "rouge1" in rows["summarize"] and "[" in rows["summarize"]
    assert "| win_rate |" in rows["open_ended"] and "agreement" in rows["open_ended"]
    samples = report.split("## Samples", 1)[1]
    assert "failed (" in samples and "check(one)" in samples and "its stderr:" in samples  # the program that ran
    assert "reference: " + load_task("summarize").docs[0].answer in samples
    assert "verdicts: " in samples and "(candidate shown first)" in samples


def test_cost_records_are_shown_with_their_rates(tmp_path):
    rates = {"watts": 100.0, "usd_per_kwh": 0.15, "usd_per_hour": 0.1}
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "cost.json").write_text(json.dumps({"flops": 3.2e15, "seconds": 120.0, "energy_kwh": 0.0033,
                                                            "usd": 0.0038, "tokens": 1000, "rates": rates}))
    (tmp_path / "arc.json").write_text(json.dumps({"lmforge_eval": 1, "task": "arc_easy", "runs": [],
                                                   "cost": {"flops": 5e12, "seconds": 30.0, "energy_kwh": 0.0008,
                                                            "usd": 0.001, "tokens": 70, "rates": rates}}))
    text = build_report(tmp_path)
    assert "| training run | 3.2e+15 | 1,000 | 2.0 min | 0.0033 kWh | $0.0038 | 100.0 W, $0.15/kWh, $0.1/h |" in text
    assert "| eval arc_easy (arc.json) | 5e+12 | 70 | 30.0 s |" in text
