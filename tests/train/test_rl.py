"""The RL loop on a tiny model: GRPO, REINFORCE and PPO learn, log TRL's names, resume exactly,
save on SIGTERM, and stop on a bad reward with the last checkpoint intact."""

from __future__ import annotations

import json
import os
import signal

import pytest
import torch

from lmforge.io.checkpoint import latest_checkpoint, load_train_state
from lmforge.io.hf import load_pretrained
from lmforge.train.rewards import Reward, RewardError, completion_text
from lmforge.train.rl import ALGO_DEFAULTS, RLConfig, reward_scorer, train_rl
from lmforge.data.prompts import PromptRecord


def ones(prompts, completions):
    """How often the digit 1 appears in a completion, over 4 (a reward a tiny model can learn)."""
    return [completion_text(c).count("1") / 4 for c in completions]


def config_for(model, out, **changes) -> RLConfig:
    base = dict(model=str(model), task="add", train_items=64, out_dir=str(out), rewards=["ones"], prompts_per_step=4,
                max_new_tokens=8, max_steps=4, threads=1, eval_items=0, optim={"lr": 3e-2}, log_every=1, seed=1,
                plot=False)
    base.update(changes)
    return RLConfig.from_dict(base)


def records(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_algorithms_are_presets_of_one_config():
    for algo, preset in ALGO_DEFAULTS.items():
        config = RLConfig(algo=algo)
        assert {k: getattr(config, k) for k in preset} == preset
    assert RLConfig(algo="reinforce").clip_range == 0.0  # no clipping, no KL, plain group-mean baseline
    assert RLConfig(algo="grpo", clip_range=0.28, beta=0.04).beta == 0.04
    with pytest.raises(ValueError, match="group_size must be >= 2"):
        RLConfig(algo="grpo", group_size=1)
    with pytest.raises(ValueError, match="reward_weights"):
        RLConfig(rewards=("a", "b"), reward_weights=(1.0,))
    with pytest.raises(ValueError, match="scale_rewards: must be one of"):
        RLConfig.from_dict({"scale_rewards": "max"})


@pytest.mark.parametrize("algo,method,changes", [
    ("grpo", "full", {}),
    ("reinforce", "full", {}),
    ("ppo", "full", {"prompts_per_step": 16, "beta": 0.0, "optim": {"lr": 1e-2}}),
])
def test_each_algorithm_raises_the_reward(tiny_chat_model, tmp_path, algo, method, changes):
    config = config_for(tiny_chat_model, tmp_path / algo, algo=algo, method=method, max_steps=20, **changes)
    result = train_rl(config, [Reward("ones", ones)], show_progress=False)
    rewards = [r["reward"] for r in result.history]
    assert sum(rewards[-4:]) / 4 > sum(rewards[:4]) / 4 + 0.1, rewards  # it learns what the reward asks for
    logged = records(tmp_path / algo)
    names = {"reward", "reward_std", "rewards/ones/mean", "entropy", "kl", "completions/mean_length",
             "completions/clipped_ratio", "clip_ratio/region_mean", "clip_ratio/low_mean", "clip_ratio/high_max"}
    if algo == "ppo":
        names |= {"objective/kl", "objective/scores", "objective/rlhf_reward", "policy/approxkl_avg",
                  "policy/clipfrac_avg", "loss/value_avg", "val/ratio"}
    else:
        names |= {"frac_reward_zero_std"}
    seen = set().union(*logged)
    assert names <= seen, names - seen
    kl = "objective/kl" if algo == "ppo" else "kl"  # (PPO's "kl" is measured during its 4 passes)
    assert logged[0][kl] == pytest.approx(0.0, abs=1e-6) and logged[-1][kl] > 0  # it drifts from the reference
    if algo == "reinforce":
        assert all(r["clip_ratio/region_mean"] == 0 for r in logged)  # clipping is off
    summary = json.loads((tmp_path / algo / "summary.json").read_text())
    assert summary["steps"] == 20 and summary["algo"] == algo
    assert (result.adapter is not None) == (method == "lora")


def test_resume_is_exact_and_sigterm_saves(tiny_chat_model, tmp_path):
    """A run stopped by SIGTERM at step 2 and resumed ends exactly where an uninterrupted one does
    (LoRA adapter, value head, metrics), PPO with an adaptive KL coefficient included."""
    common = dict(algo="ppo", method="lora", prompts_per_step=4, max_steps=4, kl_target=0.01, epochs=2,
                  mini_batches=2, micro_batch_size=3, deterministic=True)
    straight = train_rl(config_for(tiny_chat_model, tmp_path / "a", **common), [Reward("ones", ones)],
                        show_progress=False)

    calls = {"n": 0}

    def ones_then_stop(prompts, completions):
        calls["n"] += 1
        if calls["n"] == 2:
            os.kill(os.getpid(), signal.SIGTERM)  # as a scheduler would: save at the end of this step
        return ones(prompts, completions)

    stopped = train_rl(config_for(tiny_chat_model, tmp_path / "b", **common), [Reward("ones", ones_then_stop)],
                       show_progress=False)
    assert stopped.stopped_by == "SIGTERM" and stopped.steps == 2
    assert latest_checkpoint(tmp_path / "b").name.endswith("2")
    resumed = train_rl(config_for(tiny_chat_model, tmp_path / "b", **common), [Reward("ones", ones)], resume=True,
                       show_progress=False)
    assert resumed.steps == 4 and resumed.stopped_by is None
    a, b = load_train_state(straight.checkpoint), load_train_state(resumed.checkpoint)
    for name, value in a["lora"].items():
        assert torch.equal(value, b["lora"][name]), name
    assert torch.equal(a["value_head"], b["value_head"]) and a["kl_coef"] == b["kl_coef"] != 0.05
    steps_a = {r["step"]: r for r in records(tmp_path / "a") if "reward" in r}
    steps_b = {r["step"]: r for r in records(tmp_path / "b") if "reward" in r}
    assert sorted(steps_b) == [1, 2, 3, 4]
    for step in (3, 4):
        assert steps_a[step]["reward"] == steps_b[step]["reward"] and steps_a[step]["loss"] == steps_b[step]["loss"]


def test_skipping_zero_advantage_completions_changes_nothing_but_the_work(tiny_chat_model, tmp_path):
    """Completions whose group all got the same reward have a zero gradient (beta 0): the update
    skips their forward and backward and still reaches the same weights."""

    def coarse(prompts, completions):  # many groups tie, so many advantages are exactly 0
        return [float("1" in completion_text(c)) for c in completions]

    runs = {}
    for skip in (True, False):
        config = config_for(tiny_chat_model, tmp_path / str(skip), method="full", max_steps=3, group_size=3,
                            micro_batch_size=2, skip_zero_advantage=skip, rewards=["coarse"])
        runs[skip] = train_rl(config, [Reward("coarse", coarse)], show_progress=False)
    skipped, full = runs[True].history, runs[False].history
    assert [r["reward"] for r in skipped] == [r["reward"] for r in full]  # the same completions
    assert min(r["active_ratio"] for r in skipped) < 1 and all(r["active_ratio"] == 1 for r in full)
    a, b = load_pretrained(runs[True].checkpoint)[0], load_pretrained(runs[False].checkpoint)[0]
    base = load_pretrained(tiny_chat_model)[0].state_dict()
    moved = max(float((x - base[name]).abs().max()) for name, x in a.state_dict().items())
    assert moved > 1e-2  # training did move the weights; the two runs agree far more closely (summation order)
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.allclose(x, y, atol=1e-5), (name, (x - y).abs().max())


def test_kl_stop_undoes_the_update_that_left_the_bound(tiny_chat_model, tmp_path):
    """PPO with kl_stop: the first rollout whose KL passes the bound ends the run, the update that
    produced that policy is undone, and the weights kept are those of a run that stopped one step
    earlier; nothing past the bound is trained on."""
    common = dict(algo="ppo", method="lora", prompts_per_step=4, beta=0.0, deterministic=True)
    free = train_rl(config_for(tiny_chat_model, tmp_path / "free", max_steps=6, **common), [Reward("ones", ones)],
                    show_progress=False)
    kls = [r["objective/kl"] for r in free.history]  # kls[s - 1]: the rollout of step s, after s - 1 updates
    crossing = next(s for s in range(3, 7) if kls[s - 1] > max(kls[:s - 1]))
    bound = (max(kls[:crossing - 1]) + kls[crossing - 1]) / 2
    bounded = train_rl(config_for(tiny_chat_model, tmp_path / "bounded", max_steps=6, kl_stop=bound, **common),
                       [Reward("ones", ones)], show_progress=False)
    assert bounded.kl_stopped == pytest.approx(kls[crossing - 1], rel=1e-5)
    assert bounded.steps == crossing - 2  # step crossing - 1's update made the policy that left the bound
    assert all(r["objective/kl"] <= bound for r in bounded.history)
    summary = json.loads((tmp_path / "bounded" / "summary.json").read_text())
    assert summary["steps"] == crossing - 2 and summary["kl_stop"]["undone_step"] == crossing - 1
    assert any(r.get("kl_stop/undone_step") == crossing - 1 for r in records(tmp_path / "bounded"))
    shorter = train_rl(config_for(tiny_chat_model, tmp_path / "shorter", max_steps=crossing - 2, **common),
                       [Reward("ones", ones)], show_progress=False)
    a, b = load_train_state(bounded.checkpoint), load_train_state(shorter.checkpoint)
    for name, value in b["lora"].items():
        assert torch.equal(a["lora"][name], value), name
    assert torch.equal(a["value_head"], b["value_head"])
    with pytest.raises(ValueError, match="kl_stop must be > 0 and needs algo ppo"):
        RLConfig(algo="grpo", kl_stop=1.0)


def test_a_failing_reward_stops_the_run_and_keeps_the_last_checkpoint(tiny_chat_model, tmp_path):
    calls = {"n": 0}

    def flaky(prompts, completions):
        calls["n"] += 1
        return [float("nan")] * len(completions) if calls["n"] == 3 else ones(prompts, completions)

    config = config_for(tiny_chat_model, tmp_path / "run", method="full", save_every=2, max_steps=6, rewards=["flaky"])
    with pytest.raises(RewardError, match=r"reward function 'flaky' returned nan for completion 0"):
        train_rl(config, [Reward("flaky", flaky)], show_progress=False)
    checkpoint = latest_checkpoint(tmp_path / "run")
    assert checkpoint.name.endswith("2") and load_train_state(checkpoint)["step"] == 2
    model, _ = load_pretrained(checkpoint)  # a complete model
    assert model.config.vocab_size > 0
    assert max(r["step"] for r in records(tmp_path / "run")) == 2  # nothing was trained on the bad step


def test_heldout_reward_score_and_plot(tiny_chat_model, tmp_path):
    heldout = [PromptRecord(({"role": "user", "content": f"Say {i}."},)) for i in range(5)]
    scorer = reward_scorer(heldout, [Reward("ones", ones)], max_new_tokens=6)
    config = config_for(tiny_chat_model, tmp_path / "run", method="lora", max_steps=2, eval_every=1, plot=True)
    result = train_rl(config, [Reward("ones", ones)], show_progress=False, score=scorer)
    assert set(result.scores_before) == {"reward", "ones", "clipped_ratio", "n"} and result.scores_before["n"] == 5
    evals = [r for r in records(tmp_path / "run") if "eval/reward" in r]
    assert [r["step"] for r in evals] == [0, 1, 2]  # before, and every step (the last one reused at the end)
    assert result.scores_after["reward"] == evals[-1]["eval/reward"]
    assert (tmp_path / "run" / "rl.png").stat().st_size > 0
    assert (result.adapter / "adapter_config.json").is_file()  # a LoRA run ends with its PEFT adapter
