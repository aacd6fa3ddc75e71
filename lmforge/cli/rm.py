"""`lmforge rm`: train a reward model on preference pairs, or score completions with one.

    lmforge rm --model MODEL --data pairs.jsonl                 # Bradley-Terry; held-out pairwise accuracy
    lmforge rm                                                  # verifiable pairs sampled from the model on a task
    lmforge rm --config RECIPE.yaml lora.rank=16               # KEY=VALUE overrides (`lmforge rm train ...` is the same)
    lmforge rm score --model runs/rm/reward_model --data file.jsonl [--out scored.jsonl]

The trained model is saved in Hugging Face's sequence-classification layout (OUT/reward_model:
score.weight, num_labels 1, pad token set), which transformers.AutoModelForSequenceClassification
loads. `score` reads TRL records: {"prompt", "completion"} (one score each) or preference pairs
(scores of both, and the pairwise accuracy).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from lmforge.cli.common import report_error
from lmforge.cli.recipes import RUN_FLAGS, add_run_flags, recipe_from_args


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "rm", help="train a reward model on preference pairs (`lmforge rm`), or score completions (`lmforge rm score`)",
        description="ACTION is train (the default) or score.")
    parser.add_argument("action", nargs="?", default="train", metavar="ACTION", help="train or score (default train)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="override config keys (train), e.g. lora.rank=16")
    parser.add_argument("--config", help="YAML recipe (default: none, the defaults below)")
    parser.add_argument("--model", help="train: the base model (default smollm2-135m-instruct); score: a reward-model "
                        "folder (sequence-classification layout)")
    parser.add_argument("--data", help="train: preference JSONL (default: verifiable pairs generated from --task); "
                        "score: prompt/completion or preference JSONL")
    parser.add_argument("--val-data", help="held-out preference JSONL (default: 10%% of --data, at most 200 pairs)")
    parser.add_argument("--task", help="generated task for the default pairs (default count)")
    parser.add_argument("--prompts", type=int, help="training questions to sample answers for (default 400)")
    parser.add_argument("--samples", type=int, help="sampled answers per question (default 4)")
    parser.add_argument("--method", choices=("full", "lora"), help="full, or LoRA on the backbone; the head always "
                        "trains (default lora)")
    parser.add_argument("--rank", type=int, help="LoRA rank (default 8)")
    parser.add_argument("--out", help="train: run folder (default runs/rm); score: scored JSONL (default: print a summary only)")
    parser.add_argument("--lr", type=float, help="peak learning rate (default 2e-4 for lora, 1e-5 for full)")
    parser.add_argument("--epochs", type=float, help="passes over the pairs (default 1; none with --max-steps/--time-budget)")
    parser.add_argument("--max-steps", type=int, help="optimizer steps (default: none)")
    parser.add_argument("--time-budget", type=float, help="seconds of training (default: none)")
    parser.add_argument("--batch-size", type=int, help="pairs per micro-batch; score: sequences per batch (default 8)")
    parser.add_argument("--max-length", type=int, help="tokens of prompt + completion (default 512)")
    parser.add_argument("--eval-every", type=int, help="steps between held-out evaluations, 0 = at the end (default 50)")
    parser.add_argument("--save-every", type=int, help="steps between checkpoints, 0 = only at the end (default 0)")
    add_run_flags(parser, "the sampled pairs, the held-out split, data order, the head and dropout")
    parser.set_defaults(func=run)


_FLAGS = {
    "model": "model", "data": "data", "val_data": "val_data", "task": "generate.task", "prompts": "generate.prompts",
    "samples": "generate.samples", "method": "method", "rank": "lora.rank", "out": "out_dir", "lr": "optim.lr",
    "epochs": "epochs", "max_steps": "max_steps", "time_budget": "time_budget_s", "batch_size": "batch_size",
    "max_length": "max_length", "eval_every": "eval_every", "save_every": "save_every", **RUN_FLAGS,
}


def build_config(args: argparse.Namespace):
    from lmforge.train.reward import DEFAULT_LR, RewardConfig

    return RewardConfig.from_dict(recipe_from_args(args, _FLAGS, DEFAULT_LR))


def run(args: argparse.Namespace) -> int:
    if args.action not in ("train", "score"):
        if "=" not in args.action:
            raise ValueError(f"unknown rm action {args.action!r}: use train or score")
        args.overrides.insert(0, args.action)  # `lmforge rm key=value`: an override of the default action
        args.action = "train"
    return score(args) if args.action == "score" else train(args)


def train(args: argparse.Namespace) -> int:
    from lmforge.cli.dpo import make_verifiable_pairs
    from lmforge.io.checkpoint import CheckpointError
    from lmforge.train.reward import train_reward_model
    from lmforge.train.step import NonFiniteLossError

    config = build_config(args)
    if config.data is None:
        pairs_file = Path(config.out_dir) / "pairs.jsonl"
        if not (args.resume and pairs_file.is_file()):
            pairs_file = make_verifiable_pairs(config, args.quiet)
        config = config.replace(data=str(pairs_file))
    try:
        result = train_reward_model(config, resume=args.resume, show_progress=not args.quiet)
    except (NonFiniteLossError, CheckpointError) as error:
        report_error(error, args)
        return 1
    if not result.stopped_by:
        last = result.evals[-1] if result.evals else {}
        if "eval_accuracy" in last:
            before = "n/a" if result.accuracy_before is None else f"{result.accuracy_before:.1%}"
            print(f"held-out pairwise accuracy: {before} (untrained head) -> {last['eval_accuracy']:.1%} "
                  f"(± {last['eval_accuracy_stderr']:.1%}, {last['eval_pairs']} pairs)")
        print(f"reward model: {result.reward_model}  ({result.steps} steps, {result.train_seconds:.0f}s of training)")
    return 0


def score(args: argparse.Namespace) -> int:
    import torch

    from lmforge.core.files import write_text_atomically
    from lmforge.data.preference import read_preference_jsonl
    from lmforge.infer.reward import score_completions
    from lmforge.io.hf import load_sequence_classifier
    from lmforge.io.registry import resolve_model

    if not args.model or not args.data:
        raise ValueError("rm score needs --model (a reward-model folder) and --data (a JSONL file)")
    if args.threads:
        torch.set_num_threads(args.threads)
    model, tokenizer, pad_id = load_sequence_classifier(resolve_model(args.model))
    if tokenizer is None:
        raise FileNotFoundError(f"{args.model} has no tokenizer.json; lmforge needs the tokenizer beside the weights")
    data = read_preference_jsonl(args.data, require_label=False)
    batch = args.batch_size or 8
    if data.pairs:
        prompts = [p.prompt for p in data.pairs] * 2
        completions = [p.chosen for p in data.pairs] + [p.rejected for p in data.pairs]
    else:
        prompts, completions = [e.prompt for e in data.unpaired], [e.completion for e in data.unpaired]
    scores = score_completions(model, tokenizer, pad_id, prompts, completions, batch_size=batch, max_length=args.max_length)
    records = []
    if data.pairs:
        n = len(data.pairs)
        wins = [1.0 if c > r else 0.5 if c == r else 0.0 for c, r in zip(scores[:n], scores[n:])]
        records = [p.record() | {"chosen_score": c, "rejected_score": r} for p, c, r in zip(data.pairs, scores[:n], scores[n:])]
        print(f"{n} pairs: pairwise accuracy {sum(wins) / n:.1%}, mean margin {sum(scores[:n]) / n - sum(scores[n:]) / n:.4f}")
    else:
        records = [e.record() | {"score": s} for e, s in zip(data.unpaired, scores)]
        print(f"{len(scores)} completions: mean score {sum(scores) / len(scores):.4f}, "
              f"min {min(scores):.4f}, max {max(scores):.4f}")
    if data.skipped:
        print(f"skipped: {data.describe_skipped()}")
    if args.out:
        write_text_atomically(args.out, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
        print(f"scores: {args.out}")
    return 0
