"""RLHF end to end with a rule to check it: a reward model trained on rule-labelled pairs, then PPO.

    python bench/rl_ppo_format.py [--threads 2] [--out runs/ppo-format] [--ppo-steps 60] [--reward-model DIR]

The preferred behaviour is one a rule can check: the reply ends with "The answer is N." (N a
number). The steps, each printed with its figures and time:

1. prompts  generated `add` questions asking for that ending (train split: pairs and PPO; held-out
            split: the scores). Written as prompt JSONL, so step 4 can be re-run as a plain
            `lmforge rl --algo ppo --prompts ...` command (printed).
2. pairs    the model's own greedy reply to each train prompt, paired with the same reply edited to
            follow the rule (its last number restated as "The answer is N."), or, when it already
            follows it, with the reply stripped of that ending: chosen / rejected by the rule alone.
3. reward   `lmforge rm` on the pairs (Bradley-Terry, LoRA): held-out pairwise accuracy.
4. PPO      `lmforge rl --algo ppo` with the reward model as the only reward, beta adapted towards
            --kl-target (half of --kl-bound by default); a rollout past --kl-bound ends the run and undoes
            the update that led there (kl_stop). The held-out prompts are scored before and after, greedy, by the reward model
            and by the rule (the share of replies that follow it): the behaviour, not only the score.

Acceptance: the held-out mean reward and the rule's rate both rise, while the KL to the reference
(objective/kl, per completion) stays below --kl-bound at every step.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lmforge.cli.rl import DEFAULT_FORMAT, build_rewards, heldout_score  # noqa: E402
from lmforge.data.preference import write_preference_jsonl  # noqa: E402
from lmforge.data.synthetic import make_items  # noqa: E402
from lmforge.infer import Engine, SamplingParams  # noqa: E402
from lmforge.io.registry import load_model  # noqa: E402
from lmforge.tokenizer.completion import encode_prompt  # noqa: E402
from lmforge.train.reward import RewardConfig, train_reward_model  # noqa: E402
from lmforge.train.rl import RLConfig, train_rl  # noqa: E402

INSTRUCTION = "Answer the question, then end your reply with \"The answer is N.\" where N is the number."
RULE = re.compile(DEFAULT_FORMAT)
NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def prompt_record(question: str, answer: str) -> dict:
    return {"prompt": [{"role": "system", "content": INSTRUCTION}, {"role": "user", "content": question}],
            "answer": answer}


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def rule_pair(reply: str, answer: str) -> tuple[str, str] | None:
    """(chosen, rejected): the reply with and without the ending the rule asks for."""
    reply = reply.strip()
    if RULE.search(reply):
        stripped = reply[:reply.rfind("The answer is")].strip()
        return (reply, stripped) if stripped else None
    if not reply:
        return None
    numbers = NUMBER.findall(reply)
    number = numbers[-1].replace(",", "").rstrip(".") if numbers else answer
    return f"{reply} The answer is {number}.", reply


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--out", default="runs/ppo-format")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--pair-prompts", type=int, default=400, help="train prompts turned into pairs (default 400)")
    parser.add_argument("--heldout", type=int, default=200, help="held-out prompts scored (default 200)")
    parser.add_argument("--rm-epochs", type=float, default=1.0)
    parser.add_argument("--ppo-steps", type=int, default=60)
    parser.add_argument("--prompts-per-step", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--beta", type=float, default=0.1,
                        help="initial KL coefficient (default 0.1). The KL-regularised objective's optimum, "
                             "pi_ref * exp(r / beta) normalised, is at most (max r - mean r under pi_ref) / beta nats "
                             "from the reference, so beta near (the reward model's score range) / --kl-bound keeps "
                             "even the optimum inside the bound")
    parser.add_argument("--kl-bound", type=float, default=4.0,
                        help="the KL to the reference (nats per completion) no step may exceed (default 4.0)")
    parser.add_argument("--kl-target", type=float, default=None,
                        help="the KL the adaptive beta steers towards (default: half the bound; a controller that "
                             "tracks a value overshoots it about half the time, so the target sits below the bound)")
    parser.add_argument("--kl-horizon", type=int, default=None,
                        help="the controller's horizon in episodes (default 10 steps' worth, so beta can move "
                             "within a short run; Ziegler et al. used 10,000 for runs of millions of episodes)")
    parser.add_argument("--reward-model", default=None,
                        help="an existing reward-model folder: skip steps 2 and 3 (pairs and reward model)")
    args = parser.parse_args()
    kl_target = args.kl_target if args.kl_target is not None else args.kl_bound / 2
    kl_horizon = args.kl_horizon if args.kl_horizon is not None else 10 * args.prompts_per_step
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    started = time.perf_counter()

    # 1. prompts
    train_items, held_items = make_items("add", 2000, "train", seed=0), make_items("add", args.heldout, "heldout", seed=0)
    train_prompts = write_jsonl(out / "prompts_train.jsonl", [prompt_record(i.question, i.answer) for i in train_items])
    held_prompts = write_jsonl(out / "prompts_heldout.jsonl", [prompt_record(i.question, i.answer) for i in held_items])

    if args.reward_model is None:
        reward_model = pairs_and_reward_model(args, out, train_items, started)
    else:
        reward_model = Path(args.reward_model)
        print(f"reward model: {reward_model} (given; steps 2 and 3 skipped)", flush=True)

    # 4. PPO against it, scored on held-out prompts by the reward model and the rule
    reward = f"rm:{reward_model}"
    config = RLConfig.from_dict({
        "model": args.model, "algo": "ppo", "prompts": str(train_prompts), "rewards": [reward],
        "eval_prompts": str(held_prompts), "eval_rewards": [reward, "format"], "eval_items": args.heldout,
        "out_dir": str(out / "ppo"), "prompts_per_step": args.prompts_per_step, "max_new_tokens": args.max_new_tokens,
        "max_steps": args.ppo_steps, "beta": args.beta, "kl_target": kl_target, "kl_horizon": kl_horizon,
        "kl_stop": args.kl_bound,
        "kl_estimator": "k3", "optim": {"lr": args.lr, "weight_decay": 0.0}, "dtype": "bfloat16",
        "threads": args.threads, "log_every": 1})
    command = (f"lmforge rl --algo ppo --prompts {train_prompts} --reward {reward} --eval-prompts {held_prompts} "
               f"--eval-reward {reward} --eval-reward format --eval-items {args.heldout} --prompts-per-step "
               f"{args.prompts_per_step} --max-new-tokens {args.max_new_tokens} --max-steps {args.ppo_steps} --beta "
               f"{args.beta} --kl-target {kl_target} --kl-stop {args.kl_bound} --lr {args.lr} --dtype bfloat16 --threads {args.threads} "
               f"--out {out / 'ppo'} kl_horizon={kl_horizon} kl_estimator=k3")
    print(f"ppo: {command}", flush=True)
    mark = time.perf_counter()
    rewards = build_rewards(config.rewards, config.weights, DEFAULT_FORMAT)
    result = train_rl(config, rewards, show_progress=False, score=heldout_score(config, DEFAULT_FORMAT))
    before, after = result.scores_before, result.scores_after
    kls = [r["objective/kl"] for r in result.history]
    print(f"ppo: {result.steps} steps in {result.train_seconds:.0f}s of training  [{time.perf_counter() - mark:.0f}s]")
    print(f"held-out ({after['n']:.0f} prompts, greedy): reward-model score {before[reward]:.3f} -> {after[reward]:.3f}; "
          f"rule followed {before['format']:.1%} -> {after['format']:.1%}")
    verdict = "within" if max(kls) <= args.kl_bound else "EXCEEDED"
    if result.kl_stopped is not None:
        print(f"kl_stop: a rollout after step {result.steps + 1} measured KL {result.kl_stopped:.3f} > {args.kl_bound}: "
              f"that update was undone and the run ended at step {result.steps}")
    print(f"KL to the reference (objective/kl, nats per completion) of the kept steps: max {max(kls):.3f}, "
          f"last {kls[-1]:.3f}; "
          f"bound {args.kl_bound} {verdict}; controller target {kl_target}, horizon {kl_horizon} episodes; "
          f"final beta {result.history[-1]['objective/kl_coef']:.4f}")
    print(f"total {time.perf_counter() - started:.0f}s; curves: {out / 'ppo' / 'rl.png'}")


def pairs_and_reward_model(args: argparse.Namespace, out: Path, train_items: list, started: float) -> Path:
    """Steps 2 and 3: rule-labelled pairs from the model's own replies, and a reward model on them."""
    # 2. pairs from the model's own greedy replies
    model, tokenizer = load_model(args.model)
    pair_items = train_items[:args.pair_prompts]
    ids = [encode_prompt(tokenizer, prompt_record(i.question, i.answer)["prompt"]) for i in pair_items]
    replies = Engine(model, tokenizer, max_batch_size=32).generate(ids, SamplingParams(max_new_tokens=args.max_new_tokens))
    pairs = []
    for item, reply in zip(pair_items, replies):
        pair = rule_pair(reply.text, item.answer)
        if pair is not None:
            record = prompt_record(item.question, item.answer)
            pairs.append({"prompt": record["prompt"], "chosen": [{"role": "assistant", "content": pair[0]}],
                          "rejected": [{"role": "assistant", "content": pair[1]}]})
    base_rate = sum(bool(RULE.search(r.text.strip())) for r in replies) / len(replies)
    pair_file = out / "pairs.jsonl"
    write_preference_jsonl(pairs, pair_file)
    del model
    print(f"pairs: {len(pairs)} from {len(replies)} greedy replies (the base model follows the rule in "
          f"{base_rate:.1%} of them) -> {pair_file}  [{time.perf_counter() - started:.0f}s]", flush=True)

    # 3. the reward model
    mark = time.perf_counter()
    rm = train_reward_model(RewardConfig.from_dict({
        "model": args.model, "data": str(pair_file), "out_dir": str(out / "rm"), "method": "lora", "epochs": args.rm_epochs,
        "max_length": 256, "batch_size": 8, "threads": args.threads, "dtype": "bfloat16", "eval_every": 0}),
        show_progress=False)
    print(f"reward model: held-out pairwise accuracy {rm.accuracy_before:.1%} -> {rm.accuracy_after:.1%}, "
          f"{rm.steps} steps -> {rm.reward_model}  [{time.perf_counter() - mark:.0f}s]", flush=True)

    return Path(rm.reward_model)

if __name__ == "__main__":
    main()
