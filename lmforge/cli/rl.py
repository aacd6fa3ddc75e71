"""`lmforge rl`: reinforcement learning from rewards, GRPO, REINFORCE or PPO (one loop, three settings).

    lmforge rl --algo grpo --task count --reward exact_match                   # a generated task, no downloads
    lmforge rl --config configs/rl-grpo-count.yaml                               # the measured recipe
    lmforge rl --algo ppo --prompts prompts.jsonl --reward rm:runs/rm/reward_model --eval-prompts held.jsonl
    lmforge rl --algo reinforce --prompts p.jsonl --reward my_rewards:brevity --reward format --reward-weights 1 0.5

Rewards (`--reward`, repeatable; `--reward-weights` in the same order):
    exact_match       the whole reply is the record's `answer` (numbers by value)
    answer_match      the final answer extracted from the reply ("#### 42", "The answer is 42", \\boxed{42},
                      else the last number; text answers: after the marker or the first line) matches `answer`
    gsm8k             the GSM8K answer extractor, numbers compared by value
    format            the reply matches --format-pattern (default: ends with "The answer is N")
    rm:FOLDER         a reward model's score (a sequence-classification folder: `lmforge rm`, or transformers')
    module:function   your function reward(prompts, completions, **columns) -> list[float]

Flags override the YAML recipe (`--config`); `KEY=VALUE` overrides (dotted keys) override both.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from lmforge.cli.common import report_error
from lmforge.cli.recipes import RUN_FLAGS, add_run_flags, recipe_from_args

DEFAULT_FORMAT = r"The answer is -?[\d,]*\d(\.\d+)?\.?$"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "rl", help="reinforcement learning from rewards: GRPO, REINFORCE or PPO",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML recipe (see configs/rl-*.yaml) (default: none, the defaults below)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="override config keys, e.g. beta=0.04")
    parser.add_argument("--algo", choices=("grpo", "reinforce", "ppo"), help="default grpo")
    parser.add_argument("--model", help="known name, GGUF file, model folder or Hugging Face repository id "
                        "(default smollm2-135m-instruct)")
    parser.add_argument("--prompts", help="prompt JSONL ({'prompt': text or messages, ...columns}); default: --task")
    parser.add_argument("--task", help="generated task whose train questions are the prompts: add, multiply, count, "
                                       "reverse, convert (default add)")
    parser.add_argument("--train-items", type=int, help="generated training prompts (default 2000)")
    parser.add_argument("--reward", action="append", dest="rewards", metavar="NAME",
                        help="a reward (repeatable; see above; default exact_match)")
    parser.add_argument("--reward-weights", type=float, nargs="+", help="one weight per --reward (default all 1)")
    parser.add_argument("--format-pattern", default=DEFAULT_FORMAT,
                        help=f"regular expression of the `format` reward (default {DEFAULT_FORMAT!r})")
    parser.add_argument("--method", choices=("full", "lora"), help="default lora")
    parser.add_argument("--rank", type=int, help="LoRA rank (default 16)")
    parser.add_argument("--alpha", type=float, help="LoRA alpha (default 32)")
    parser.add_argument("--targets", nargs="+", help="LoRA target layers: all-linear (default) or names like q_proj v_proj")
    parser.add_argument("--group-size", type=int, help="completions per prompt (default grpo/reinforce 8, ppo 1)")
    parser.add_argument("--prompts-per-step", type=int, help="prompts per step (default 4)")
    parser.add_argument("--max-new-tokens", type=int, help="completion length limit (default 32)")
    parser.add_argument("--temperature", type=float, help="sampling temperature (default 1.0)")
    parser.add_argument("--top-p", type=float, help="nucleus sampling (default off)")
    parser.add_argument("--epochs", type=int, help="passes over each rollout batch (default grpo/reinforce 1, ppo 4)")
    parser.add_argument("--mini-batches", type=int, help="optimizer steps per pass (default 1)")
    parser.add_argument("--micro-batch-size", type=int, help="completions per forward/backward (default 8)")
    parser.add_argument("--loss-type", choices=("grpo", "bnpo", "dr_grpo", "dapo"),
                        help="loss normalisation (default grpo and reinforce: dapo, ppo: bnpo)")
    parser.add_argument("--scale-rewards", choices=("group", "batch", "none"),
                        help="divide group advantages by the group's or the batch's std (default grpo: group, else none)")
    parser.add_argument("--clip-range", type=float, help="epsilon of the clipped ratio; 0 = off (default 0.2, reinforce 0)")
    parser.add_argument("--clip-range-high", type=float, help="upper epsilon (DAPO clip-higher; default = --clip-range)")
    parser.add_argument("--beta", type=float, help="KL coefficient to the reference (default grpo/reinforce 0, ppo 0.05)")
    parser.add_argument("--kl-target", type=float, help="PPO: adapt beta so the KL tracks this (default: fixed beta)")
    parser.add_argument("--kl-stop", type=float,
                        help="PPO: end the run when a rollout's KL to the reference (nats per completion) passes this, "
                             "undoing the update that led there (default: no bound)")
    parser.add_argument("--lr", type=float, help="learning rate (default 1e-4 for lora, 1e-5 for full)")
    parser.add_argument("--max-steps", type=int, help="steps (default 100)")
    parser.add_argument("--time-budget", type=float, help="seconds of training (rollouts included, held-out scoring not) (default: none, no time limit)")
    parser.add_argument("--eval-items", type=int, help="held-out items scored (default 200; 0: none)")
    parser.add_argument("--eval-every", type=int, help="steps between held-out scores (default 0: before and after)")
    parser.add_argument("--eval-prompts", help="held-out prompt JSONL scored by the mean reward of greedy completions (default: none)")
    parser.add_argument("--eval-reward", action="append", dest="eval_rewards", metavar="NAME",
                        help="a reward or rule check for --eval-prompts (repeatable; default: the trained rewards)")
    parser.add_argument("--save-every", type=int, help="steps between checkpoints (default 0: at the end)")
    parser.add_argument("--out", help="run folder (default runs/rl)")
    add_run_flags(parser, "generated prompts, prompt order and sampling")
    parser.set_defaults(func=run)


# flag -> dotted config key
_FLAGS = {
    "algo": "algo", "model": "model", "prompts": "prompts", "task": "task", "train_items": "train_items",
    "rewards": "rewards", "reward_weights": "reward_weights", "method": "method", "rank": "lora.rank",
    "alpha": "lora.alpha", "targets": "lora.targets", "group_size": "group_size", "prompts_per_step": "prompts_per_step",
    "max_new_tokens": "max_new_tokens", "temperature": "temperature", "top_p": "top_p", "epochs": "epochs",
    "mini_batches": "mini_batches", "micro_batch_size": "micro_batch_size", "loss_type": "loss_type",
    "scale_rewards": "scale_rewards", "clip_range": "clip_range", "clip_range_high": "clip_range_high", "beta": "beta",
    "kl_target": "kl_target", "kl_stop": "kl_stop", "lr": "optim.lr", "max_steps": "max_steps", "time_budget": "time_budget_s",
    "eval_items": "eval_items", "eval_every": "eval_every", "eval_prompts": "eval_prompts", "eval_rewards": "eval_rewards",
    "save_every": "save_every", "out": "out_dir", **RUN_FLAGS,
}


def build_config(args: argparse.Namespace):
    from lmforge.train.rl import DEFAULT_LR, RLConfig

    data = recipe_from_args(args, _FLAGS, DEFAULT_LR)
    if data.get("time_budget_s") is not None and "max_steps" not in data:
        data["max_steps"] = None  # a time budget alone decides the length, not the 100-step default
    return RLConfig.from_dict(data)


def answer_match(text: str, gold: str) -> bool:
    """The eval runner's accuracy rule: the extracted final answer, numbers by value, text exactly."""
    from lmforge.eval.extract import exact_match, extract_answer, is_number, numeric_match

    numeric = is_number(gold)
    answer, _ = extract_answer(text, numeric=numeric)
    return numeric_match(answer, gold) if numeric else exact_match(answer, gold)


def gsm8k_match(text: str, gold: str) -> bool:
    from lmforge.eval.extract import extract_answer, numeric_match

    return numeric_match(extract_answer(text, numeric=True)[0], gold)


def build_reward(name: str, format_pattern: str, device: str = "cpu"):
    """The function a reward name stands for (see the module docstring)."""
    from lmforge.eval.extract import strict_match
    from lmforge.train.rewards import answer_reward, format_reward, load_callable, reward_model_reward

    if name == "exact_match":
        return answer_reward(strict_match)
    if name == "answer_match":
        return answer_reward(answer_match)
    if name == "gsm8k":
        return answer_reward(gsm8k_match)
    if name == "format":
        return format_reward(format_pattern)
    if name.startswith("rm:"):
        folder = Path(name[3:])
        if not folder.is_dir():
            raise FileNotFoundError(f"reward model folder {folder} does not exist")
        return reward_model_reward(folder, device="cpu" if device == "auto" else device)
    if ":" in name:
        return load_callable(name)
    raise ValueError(f"unknown reward {name!r}: use exact_match, answer_match, gsm8k, format, rm:FOLDER or module:function")


def build_rewards(names, weights, format_pattern: str, device: str = "cpu"):
    from lmforge.train.rewards import Reward

    cache: dict[str, Any] = {}
    rewards = []
    for name, weight in zip(names, weights):
        if name not in cache:
            cache[name] = build_reward(name, format_pattern, device)
        rewards.append(Reward(name, cache[name], weight))
    return rewards


def heldout_score(config, format_pattern: str):
    """The held-out score: for a generated task, the eval runner on its held-out questions (chat,
    greedy, as `lmforge eval --task TASK --chat --limit N` scores them; full results in OUT/eval/);
    with --eval-prompts, the mean of each eval reward over greedy completions. None: nothing to score."""
    if config.eval_items == 0:
        return None
    if config.eval_prompts is not None:
        from lmforge.data.prompts import read_prompt_jsonl
        from lmforge.train.rl import reward_scorer

        names = config.eval_rewards or config.rewards
        weights = config.weights if not config.eval_rewards else (1.0,) * len(names)
        rewards = build_rewards(names, weights, format_pattern, config.device)
        return reward_scorer(read_prompt_jsonl(config.eval_prompts, limit=config.eval_items), rewards,
                             max_new_tokens=config.max_new_tokens)
    if config.prompts is not None:
        return None
    from lmforge.eval.runner import EvalConfig, task_scorer
    from lmforge.eval.tasks import synthetic_task

    return task_scorer(synthetic_task(config.task, n_docs=config.eval_items),
                       EvalConfig(chat=True, max_new_tokens=config.max_new_tokens, batch_size=32),
                       out_dir=Path(config.out_dir) / "eval", model_name=config.model)


def _figures(scores: dict[str, float] | None) -> str:
    if scores is None:
        return "n/a"
    return ", ".join(f"{k} {v:.3f}" for k, v in scores.items() if k != "n")


def run(args: argparse.Namespace) -> int:
    from lmforge.io.checkpoint import CheckpointError
    from lmforge.train.rewards import RewardError
    from lmforge.train.rl import train_rl
    from lmforge.train.step import NonFiniteLossError

    config = build_config(args)
    rewards = build_rewards(config.rewards, config.weights, args.format_pattern, config.device)
    score = heldout_score(config, args.format_pattern)
    try:
        result = train_rl(config, rewards, resume=args.resume, show_progress=not args.quiet, score=score)
    except (RewardError, NonFiniteLossError, CheckpointError) as error:
        report_error(error, args, suffix="; the last checkpoint is unchanged")
        return 1
    if not args.quiet and not result.stopped_by:
        last = result.history[-1] if result.history else {}
        kl = last.get("kl", last.get("objective/kl"))
        print(f"{config.algo}: {result.steps} steps in {result.train_seconds:.0f}s of training; last step reward "
              f"{last.get('reward', float('nan')):.3f}" + (f", KL {kl:.4f}" if kl is not None else ""))
        if result.scores_after is not None:
            print(f"held-out ({result.scores_after.get('n', 0):.0f} items): before {_figures(result.scores_before)}; "
                  f"after {_figures(result.scores_after)}")
        print(f"run folder: {result.out_dir}  (checkpoint {result.checkpoint}, plot {result.out_dir / 'rl.png'})")
    return 0
