"""Scaling sweeps: family rule, FLOP and parameter counts, plan checks, cooldown branches, resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from lmforge.model.transformer import Transformer
from lmforge.train.config import PretrainConfig
from lmforge.train.pretrain import pretrain
from lmforge.train.scaling import (FamilyRule, SweepConfig, flops_per_token, load_runs, parameter_counts, plan_holdout,
                                   plan_sweep, run_planned, run_sweep)

TINY_RULE = {"aspect": 16, "head_dim": 8, "ffn_multiple": 16}


def sweep_config(data: Path, out: Path, **changes) -> SweepConfig:
    """2 depths x 3 token budgets of tiny models: a whole sweep takes seconds."""
    config = {
        "data": str(data), "out_dir": str(out), "depths": [1, 2], "budgets": {"tokens": [3000, 6000, 12000]},
        "family": TINY_RULE,
        "base": {"seq_len": 32, "batch_size": 4, "threads": 1, "deterministic": True,
                 "optim": {"name": "adamw", "lr": 0.003}, "schedule": {"warmup_steps": 5},
                 "eval_every": 25, "eval_tokens": 2048, "save_every": 20, "log_every": 1, "sample_prompts": [],
                 "plot": False},
        "holdout": {"depth": 3, "tokens": 3000},
    }
    config.update(changes)
    return SweepConfig.from_dict(config)


# --------------------------------------------------------------------------------------------
# counting
# --------------------------------------------------------------------------------------------
def test_flops_and_parameters_match_a_hand_count():
    model = FamilyRule(**TINY_RULE).model(2, vocab_size=10, seq_len=6)
    # depth 2 -> width 16*2 = 32, 32/8 = 4 heads, MLP 8/3*32 = 85.3 -> nearest multiple of 16 = 80
    assert (model.dim, model.n_layers, model.n_heads, model.hidden_dim) == (32, 2, 4, 80)
    # Multiply-adds per token in one forward pass, by hand:
    projections = 32 * 32 * 3 + 32 * 32  # q, k, v from the width, o back to it
    mlp = 3 * 32 * 80  # SwiGLU: gate, up, down
    attention = 6 * 32 + 6 * 32  # q.k against 6 keys (the full 6 x 6 square), then 6 values mixed
    head = 32 * 10
    forward_flops = 2 * (2 * (projections + mlp + attention) + head)  # 2 FLOPs per multiply-add
    assert forward_flops == 49_280
    assert flops_per_token(model, 6) == 3 * forward_flops  # backward = 2 x forward
    # Parameters: attention 4*32*32 + q/k norms 2*8, MLP 3*32*80, two norms of 32, per layer; a final norm.
    non_embedding = 2 * (4 * 32 * 32 + 2 * 8 + 3 * 32 * 80 + 2 * 32) + 32
    assert parameter_counts(model) == (non_embedding + 2 * 10 * 32, non_embedding) == (24_384, 23_744)
    built = Transformer(model)
    assert sum(p.numel() for p in built.parameters()) == 24_384
    assert sum(p.numel() for name, p in built.named_parameters() if "embed_tokens" not in name and "lm_head" not in name) == 23_744


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_flops_match_torch_flop_counter(family):
    """Independent reference: torch's FlopCounterMode over a real forward + backward (attention
    through the math kernel, whose matrix products the counter sees)."""
    rule = FamilyRule(family=family, aspect=32, head_dim=16, ffn_ratio=4 if family == "gpt2" else 8 / 3)
    model_config = rule.model(2, vocab_size=50, seq_len=24)
    model = Transformer(model_config)
    ids = torch.randint(0, 50, (3, 24))
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(ids).float().sum().backward()
    assert counter.get_total_flops() == flops_per_token(model_config, 24) * ids.numel()


def test_family_rule_rejects_sizes_it_cannot_build():
    with pytest.raises(ValueError, match=r"depth 3: width 48\*3 = 144 is not a multiple of head_dim 64"):
        FamilyRule(aspect=48, head_dim=64).model(3, 100, 32)
    with pytest.raises(ValueError, match="depth must be a positive integer"):
        FamilyRule().model(0, 100, 32)
    with pytest.raises(ValueError, match="rotary embeddings need an even head size"):
        FamilyRule(aspect=9, head_dim=9).model(2, 100, 32)


# --------------------------------------------------------------------------------------------
# plans: every bad config fails before anything trains
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("changes, message", [
    ({"family": {"aspect": 48, "head_dim": 64}}, "is not a multiple of head_dim 64, so the family rule cannot build it"),
    ({"budgets": {"tokens": [100, 6000, 12000]}}, "100 tokens, below one optimizer step of 128 tokens"),
    ({"budgets": {"flops": [1e5, 1e9, 2e9]}}, "d1/c1e05: the budget of 1e.05 flops is 3 tokens, below one optimizer step"),
    ({"budgets": {"tokens": [6000, 12000]}}, "the grid has 4 runs .2 depths x 2 budgets.: fewer than the 5 parameters"),
    ({"depths": [2], "budgets": {"tokens": [3000, 6000, 12000, 24000, 48000]}}, "at least 2 depths and 2 budgets"),
    ({"budgets": {"tokens": [640, 6000, 12000]}}, "gives 5 steps: too few for 5 warmup steps and a cooldown of 1"),
    ({"budgets": {"tokens": [3000], "flops": [1e9]}}, "exactly one of flops or tokens"),
    ({"base": {"max_steps": 10}}, "base: max_steps are set by the sweep"),
    ({"base": {"optim": {"nam": "adamw"}}}, r"base: unknown config key\(s\): optim.nam"),
    ({"rules": {"per_depth": {2: {"model": {"dim": 8}}}}}, "rules.per_depth.2: model cannot be overridden per depth"),
])
def test_bad_configs_are_rejected_before_training(tiny_data, tmp_path, changes, message):
    out = tmp_path / "sweep"
    with pytest.raises(ValueError, match=message):
        run_sweep(sweep_config(tiny_data, out, **changes), pretrain, show_progress=False, log=lambda _: None)
    assert not out.exists()  # nothing was created, nothing trained


def test_plan_scales_learning_rate_batch_and_warmup_with_width(tiny_data, tmp_path):
    config = sweep_config(tiny_data, tmp_path, rules={"reference_width": 16, "lr_exponent": -1.0, "batch_exponent": 1.0,
                                                     "warmup_exponent": 1.0, "per_depth": {2: {"optim": {"lr": 0.5}}}})
    plans = {plan.name: plan for plan in plan_sweep(config)}
    assert sorted(plans) == ["d1/t1.2e04", "d1/t3e03", "d1/t6e03", "d2/t1.2e04", "d2/t3e03", "d2/t6e03"]
    small, large = plans["d1/t3e03"].config, plans["d2/t3e03"].config
    assert small.optim.lr == 0.003 and small.batch_size == 4 and small.schedule.warmup_steps == 5  # width 16 = reference
    assert large.optim.lr == 0.5  # the per-depth override wins over the rule
    assert large.batch_size == 8 and large.schedule.warmup_steps == 10  # width 32: x2
    assert large.optim.muon_lr == pytest.approx(0.02 / 2)
    plan = plans["d2/t1.2e04"]  # 12000 tokens / (8 x 32) = 46.9 -> 47 steps, cooldown round(0.2 x 47) = 9
    assert (plan.steps, plan.tokens, plan.cooldown_start) == (47, 47 * 256, 38)
    assert plan.config.schedule.name == "wsd" and plan.config.schedule.decay_frac == pytest.approx(9 / 47)
    record = plan.record()
    assert record["flops"] == flops_per_token(plan.model, 32) * plan.tokens
    assert record["flops_6nd"] == 6 * record["params_non_embedding"] * plan.tokens
    holdout = plan_holdout(sweep_config(tiny_data, tmp_path))  # depth 3, 3000 tokens: 23 steps of 128, the last 5 cool down
    assert holdout.name == "holdout/d3-t3e03" and holdout.model.n_layers == 3
    assert (holdout.steps, holdout.cooldown_start) == (23, 18)


def test_flop_budgets_give_each_size_the_same_compute(tiny_data, tmp_path):
    plans = plan_sweep(sweep_config(tiny_data, tmp_path, budgets={"flops": [2e9, 4e9, 8e9]}))
    for plan in plans:
        assert plan.budget_kind == "flops"
        assert abs(plan.flops_per_token * plan.tokens / plan.budget - 1) <= plan.flops_per_token * plan.step_tokens / plan.budget
    assert plans[0].tokens > plans[3].tokens  # same budget, the smaller model sees more tokens


# --------------------------------------------------------------------------------------------
# running
# --------------------------------------------------------------------------------------------
def _final_val_loss(folder: Path) -> float:
    records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    return [r["val_loss"] for r in records if "val_loss" in r][-1]


def _train_losses(folder: Path, after: int) -> dict[int, float]:
    records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["train_loss"] for r in records if "train_loss" in r and r["step"] > after}


def test_cooldown_branch_is_the_run_trained_from_scratch(tiny_data, tmp_path):
    config = sweep_config(tiny_data, tmp_path / "sweep")
    plan = next(p for p in plan_sweep(config) if p.name == "d2/t6e03")
    record = run_planned(plan, pretrain, branch=True, show_progress=False)
    branch = Path(plan.config.out_dir)
    assert (tmp_path / "sweep/d2/trunk" / f"step_{plan.cooldown_start:08d}").is_dir()  # the trunk stopped at the cooldown
    trunk_losses = _train_losses(tmp_path / "sweep/d2/trunk", 0)
    assert max(trunk_losses) == plan.cooldown_start
    assert {s: v for s, v in _train_losses(branch, 0).items() if s <= plan.cooldown_start} == trunk_losses  # its start
    scratch = plan.config.replace(out_dir=str(tmp_path / "scratch"))
    pretrain(scratch, show_progress=False)
    assert record["val_loss"] == pytest.approx(_final_val_loss(tmp_path / "scratch"), rel=1e-6)
    assert _train_losses(branch, 0) == pytest.approx(_train_losses(tmp_path / "scratch", 0), rel=1e-6)
    saved = json.loads((branch / "result.json").read_text())
    assert saved["steps"] == plan.steps and saved["branched"] and saved["train_seconds"] > 0


class Interrupted(Exception):
    pass


def test_interrupted_sweep_resumes_without_retraining_finished_runs(tiny_data, tmp_path):
    config = sweep_config(tiny_data, tmp_path / "sweep")
    target = "d2/t1.2e04"  # the larger size trains first; this is its last run: 94 steps of 128 tokens, from step 75

    def interrupting(run_config: PretrainConfig, **kwargs):
        if run_config.out_dir.endswith(target):
            def stop(record):
                if record["step"] >= 75:
                    raise Interrupted  # a crash mid-run (at the eval of step 81), after the checkpoint at step 80
            kwargs["on_eval"] = stop
        return pretrain(run_config, **kwargs)

    config = config.replace(base={**config.base, "eval_every": 9})
    with pytest.raises(Interrupted):
        run_sweep(config, interrupting, show_progress=False, log=lambda _: None)
    finished = sorted(p.parent.relative_to(tmp_path / "sweep").as_posix() for p in (tmp_path / "sweep").glob("d*/*/result.json"))
    assert finished == ["d2/t3e03", "d2/t6e03"]
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "sweep").rglob("*") if p.is_file() and target not in str(p)}
    assert (tmp_path / "sweep" / target / "step_00000080").is_dir()

    report = run_sweep(config, pretrain, show_progress=False, log=lambda _: None)
    assert report.trained == [target, "d1/t3e03", "d1/t6e03", "d1/t1.2e04"] and sorted(report.skipped) == finished
    changed = [p for p, stamp in stamps.items() if p.stat().st_mtime_ns != stamp and p.name not in ("runs.json", "sweep_config.json")]
    assert changed == []  # finished runs and the trunks were not touched
    resumed_steps = _train_losses(tmp_path / "sweep" / target, 0)
    assert sorted(resumed_steps) == list(range(1, 95))  # one clean curve: the steps after 80 trained once more
    plan = next(p for p in plan_sweep(config) if p.name == target)
    pretrain(plan.config.replace(out_dir=str(tmp_path / "scratch")), show_progress=False)
    assert _final_val_loss(tmp_path / "sweep" / target) == pytest.approx(_final_val_loss(tmp_path / "scratch"), rel=1e-6)
    runs = load_runs(tmp_path / "sweep")
    assert len(runs["runs"]) == 6 and runs["planned"] == 6 and runs["budget_kind"] == "tokens"
    assert {r["name"] for r in runs["runs"]} == set(finished) | set(report.trained)
    assert all(r["val_loss"] > 0 and r["flops"] > r["flops_6nd"] > 0 for r in runs["runs"])
    assert [row["depth"] for row in runs["family"][:3]] == [1, 2, 3]
    # a third call has nothing left to do
    again = run_sweep(config, pretrain, show_progress=False, log=lambda _: None)
    assert again.trained == [] and len(again.skipped) == 6


def test_a_changed_plan_does_not_reuse_a_finished_run(tiny_data, tmp_path):
    config = sweep_config(tiny_data, tmp_path / "sweep")
    plan = plan_sweep(config)[0]
    run_planned(plan, pretrain, branch=True, show_progress=False)
    changed = config.replace(base={**config.base, "batch_size": 2})
    with pytest.raises(ValueError, match="holds a finished run that differs from this sweep's plan .steps, step_tokens"):
        run_sweep(changed, pretrain, show_progress=False, log=lambda _: None)


@pytest.mark.slow  # spawns two Python processes that each import torch
def test_sizes_train_side_by_side_with_jobs(tiny_data, tmp_path):
    config = sweep_config(tiny_data, tmp_path / "sweep", depths=[1, 2], budgets={"tokens": [3000, 4500, 6000]})
    report = run_sweep(config, pretrain, jobs=2, show_progress=False)
    assert sorted(report.trained) == sorted(p.name for p in plan_sweep(config)) and not report.stopped_by
    runs = {r["name"]: r for r in load_runs(tmp_path / "sweep")["runs"]}
    assert len(runs) == 6
    plan = next(p for p in plan_sweep(config) if p.name == "d2/t4.5e03")
    pretrain(plan.config.replace(out_dir=str(tmp_path / "scratch")), show_progress=False)
    assert runs["d2/t4.5e03"]["val_loss"] == pytest.approx(_final_val_loss(tmp_path / "scratch"), rel=1e-6)


# --------------------------------------------------------------------------------------------
# the commands, end to end
# --------------------------------------------------------------------------------------------
def test_scale_commands_sweep_fit_predict_and_report(tiny_data, tmp_path, capsys):
    import yaml

    from lmforge.cli.main import main
    from lmforge.eval.report import build_report

    config = sweep_config(tiny_data, tmp_path / "sweep", budgets={"tokens": [3000, 4500, 6000]}).to_dict()
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({**config, "base": {**config["base"], "deterministic": False, "save_every": 0}}))

    assert main(["scale", "sweep", "--config", str(path), "--dry-run", "depths=[1,2,3]"]) == 0
    printed = capsys.readouterr().out
    assert "9 runs" in printed and "d3/t6e03" in printed and not (tmp_path / "sweep").exists()
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**config, "family": {"aspect": 48, "head_dim": 64}}))
    assert main(["scale", "sweep", "--config", str(bad)]) == 2
    assert "cannot build it" in capsys.readouterr().err and not (tmp_path / "sweep").exists()

    assert main(["scale", "sweep", "--config", str(path), "--quiet"]) == 0
    assert "6 run(s) trained, 0 already done" in capsys.readouterr().out
    assert main(["scale", "sweep", "--config", str(path), "--quiet"]) == 0
    assert "0 run(s) trained, 6 already done" in capsys.readouterr().out

    assert main(["scale", "fit", str(tmp_path / "sweep"), "--bootstrap", "20", "--flops", "1e12"]) == 0
    printed = capsys.readouterr().out
    assert "over 6 runs, N = non_embedding parameters" in printed and "C=1e+12: N_opt=" in printed
    fit = json.loads((tmp_path / "sweep/fit.json").read_text())
    assert fit["bootstrap"] == 20 and len(fit["fit_runs"]) == 6 and fit["optimal"][0]["flops"] == 1e12

    assert main(["scale", "predict", "--config", str(path)]) == 0  # the holdout section: depth 3, 3000 tokens
    assert "holdout/d3-t3e03: depth 3" in capsys.readouterr().out
    assert not (tmp_path / "sweep/holdout").exists()  # predicted, not trained
    assert main(["scale", "predict", "--config", str(path), "--run", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "observed final loss:" in printed and "of the prediction" in printed
    predictions = json.loads((tmp_path / "sweep/predictions.json").read_text())
    assert len(predictions) == 1 and predictions[0]["observed"] > 0 and predictions[0]["low"] < predictions[0]["high"]
    assert (tmp_path / "sweep/holdout/d3-t3e03/result.json").is_file()
    summary = (tmp_path / "sweep/scaling.md").read_text()
    assert "| holdout/d3-t3e03 |" in summary
    assert main(["scale", "predict", "--config", str(path), "--depth", "1", "--tokens", "3000"]) == 2
    assert "holdout/d1-t3e03 has the size and tokens of d1/t3e03, a run in the fit" in capsys.readouterr().err
    recipe = plan_holdout(SweepConfig.from_dict(config), depth=3, tokens=6000).config  # a plain pretraining recipe
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump({**recipe.to_dict(), "out_dir": str(tmp_path / "mine")}))
    assert main(["scale", "predict", "--recipe", str(tmp_path / "recipe.yaml"), "--fit", str(tmp_path / "sweep/fit.json")]) == 0
    assert "mine: depth 3, N=" in capsys.readouterr().out
    assert {p["name"] for p in json.loads((tmp_path / "sweep/predictions.json").read_text())} == {"holdout/d3-t3e03", "mine"}
    assert "## Scaling laws: sweep" in build_report(tmp_path / "sweep")
