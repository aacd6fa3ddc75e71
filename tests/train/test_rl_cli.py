"""`lmforge rl`: flags and recipes into a config, reward names into functions, figures printed,
errors as one clear line."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from lmforge.cli.main import build_parser, main
from lmforge.cli.rl import build_config, build_reward

ROOT = Path(__file__).resolve().parents[2]

REWARDS_MODULE = '''
def ones(prompts, completions, answer):
    assert len(answer) == len(completions)  # the task's answers arrive as a column
    return [c[0]["content"].count("1") / 4 for c in completions]

def broken(prompts, completions):
    raise KeyError("oops")
'''


@pytest.fixture
def rewards_module(tmp_path, monkeypatch):
    (tmp_path / "rl_test_rewards.py").write_text(REWARDS_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "rl_test_rewards"
    sys.modules.pop("rl_test_rewards", None)


def test_help_names_the_algorithms_rewards_and_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["rl", "--help"])
    text = capsys.readouterr().out
    for needle in ("grpo", "reinforce", "ppo", "exact_match", "answer_match", "gsm8k", "rm:FOLDER", "module:function",
                   "--scale-rewards", "--loss-type", "default 0.2", "--kl-target", "--eval-prompts"):
        assert needle in text, needle


@pytest.mark.parametrize("recipe", sorted((ROOT / "configs").glob("rl-*.yaml")))
def test_shipped_recipes_load(recipe):
    args = build_parser().parse_args(["rl", "--config", str(recipe)])
    config = build_config(args)
    assert config.algo in ("grpo", "reinforce", "ppo") and config.rewards


def test_flags_override_the_recipe(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("algo: reinforce\ntask: count\nmax_steps: 5\noptim: {lr: 1.0e-3}\n")
    args = build_parser().parse_args(["rl", "beta=0.04", "--config", str(recipe), "--lr", "2e-4", "--group-size", "6",
                                      "--reward", "exact_match", "--reward", "format", "--reward-weights", "1", "0.5"])
    config = build_config(args)
    assert (config.algo, config.task, config.max_steps, config.group_size, config.beta) == ("reinforce", "count", 5, 6, 0.04)
    assert config.optim.lr == 2e-4 and config.rewards == ("exact_match", "format") and config.weights == (1.0, 0.5)
    assert config.clip_range == 0.0 and config.loss_type == "dapo"  # the reinforce preset
    budget = build_config(build_parser().parse_args(["rl", "--time-budget", "60"]))
    assert budget.max_steps is None and budget.time_budget_s == 60


def test_reward_names_resolve(tmp_path, rewards_module):
    exact, answer, gsm8k = (build_reward(n, "x") for n in ("exact_match", "answer_match", "gsm8k"))
    texts = ["5200", "The answer is 5,200.", "5200 apples"]
    assert exact(["p"] * 3, texts, answer=["5200"] * 3) == [1.0, 0.0, 0.0]
    assert answer(["p"] * 3, texts, answer=["5200"] * 3) == [1.0, 1.0, 1.0]
    assert gsm8k(["p"], ["so #### 72"], answer=["72"]) == [1.0]
    assert build_reward("format", r"The answer is \d+\.?$")(["p", "p"], ["The answer is 4.", "4"]) == [1.0, 0.0]
    assert build_reward(f"{rewards_module}:broken", "x") is not None
    with pytest.raises(ValueError, match="unknown reward 'nope'"):
        build_reward("nope", "x")
    with pytest.raises(FileNotFoundError, match="reward model folder"):
        build_reward(f"rm:{tmp_path / 'missing'}", "x")


def test_a_run_prints_its_figures(tiny_chat_model, tmp_path, capsys, rewards_module):
    out = tmp_path / "run"
    code = main(["rl", "--model", str(tiny_chat_model), "--task", "add", "--train-items", "32",
                 "--reward", f"{rewards_module}:ones", "--max-steps", "2", "--prompts-per-step", "2", "--group-size", "3",
                 "--max-new-tokens", "6", "--eval-items", "4", "--threads", "1", "--out", str(out), "--quiet"])
    assert code == 0
    assert (out / "eval" / "add_before.json").is_file() and (out / "eval" / "add_after.json").is_file()  # eval runner
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 2 and set(summary["scores_after"]) == {"accuracy", "strict_match", "n"}
    code = main(["rl", "--model", str(tiny_chat_model), "--task", "add", "--train-items", "32", "--reward",
                 f"{rewards_module}:ones", "--max-steps", "3", "--prompts-per-step", "2", "--group-size", "3",
                 "--max-new-tokens", "6", "--eval-items", "0", "--threads", "1", "--out", str(tmp_path / "loud")])
    printed = capsys.readouterr().out
    assert code == 0 and "grpo: 3 steps in" in printed and "last step reward" in printed and "rl.png" in printed


def test_errors_are_one_line(tiny_chat_model, tmp_path, capsys, rewards_module):
    code = main(["rl", "--model", str(tiny_chat_model), "--reward", f"{rewards_module}:broken", "--max-steps", "2",
                 "--prompts-per-step", "2", "--group-size", "2", "--max-new-tokens", "4", "--eval-items", "0",
                 "--threads", "1", "--out", str(tmp_path / "run"), "--quiet"])
    error = capsys.readouterr().err
    assert code == 1 and "reward function 'rl_test_rewards:broken' raised KeyError: 'oops'" in error
    assert "last checkpoint is unchanged" in error
    assert main(["rl", "--reward", "nope", "--out", str(tmp_path / "x")]) == 2
    assert "unknown reward 'nope'" in capsys.readouterr().err
    assert main(["rl", "--algo", "grpo", "--group-size", "1", "--out", str(tmp_path / "x")]) == 2
    assert "group_size must be >= 2" in capsys.readouterr().err
