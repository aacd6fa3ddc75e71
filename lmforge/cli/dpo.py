"""`lmforge dpo`: preference optimization (DPO, IPO, SimPO, ORPO, KTO), full or LoRA.

    lmforge dpo                                         # verifiable pairs sampled from the model on a task
    lmforge dpo --model MODEL --data pairs.jsonl --loss ipo --beta 0.2
    lmforge dpo --config configs/dpo-count.yaml [--threads 2] [KEY=VALUE ...] [--resume]

Without --data the pairs are made on-policy: the model answers each training question of a generated
task (`--task`) several times, the evaluation layer's answer check sorts the answers, and a correct
answer is preferred to an incorrect one. The run then scores the task's held-out questions before
and after training and prints the change with its paired standard error.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from lmforge.cli.common import report_error
from lmforge.cli.recipes import RUN_FLAGS, add_run_flags, recipe_from_args

LOSSES = ("dpo", "ipo", "simpo", "orpo", "kto")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "dpo", help="preference optimization on chosen/rejected pairs: dpo, ipo, simpo, orpo, kto (full or LoRA)",
        description="Data: TRL's JSONL layouts (prompt/chosen/rejected strings or message lists, implicit prompts, "
                    "unpaired prompt/completion/label for KTO). Without --data, verifiable pairs are sampled from the "
                    "model on a generated task.")
    parser.add_argument("--config", help="YAML recipe (see configs/dpo-*.yaml) (default: none, the defaults below)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="override config keys, e.g. beta=0.2")
    parser.add_argument("--model", help="known name, GGUF file, model folder or Hugging Face repository id "
                        "(default smollm2-135m-instruct)")
    parser.add_argument("--data", help="preference JSONL (default: verifiable pairs generated from --task)")
    parser.add_argument("--val-data", help="held-out preference JSONL (default: 5%% of --data, at most 100)")
    parser.add_argument("--loss", choices=LOSSES, help="dpo (sigmoid), ipo, simpo, orpo, or kto (unpaired) (default dpo)")
    parser.add_argument("--beta", type=float, help="the loss's beta (default 0.1; simpo 2.0)")
    parser.add_argument("--simpo-gamma", type=float, help="SimPO target reward margin (default 0.5)")
    parser.add_argument("--label-smoothing", type=float, help="conservative DPO / SimPO label smoothing (default 0)")
    parser.add_argument("--task", help="generated task for the default pairs: add, multiply, count, reverse, convert "
                        "(default count)")
    parser.add_argument("--prompts", type=int, help="training questions to sample answers for (default 400)")
    parser.add_argument("--samples", type=int, help="sampled answers per question (default 4)")
    parser.add_argument("--eval-items", type=int, help="held-out questions scored before and after (default 200; 0: none)")
    parser.add_argument("--score-task", help="score this generated task before and after training also when --data is "
                        "given (default: --task when the pairs are generated, else none)")
    parser.add_argument("--make-pairs", action="store_true", help="only sample the verifiable pairs into OUT/pairs.jsonl")
    parser.add_argument("--method", choices=("full", "lora"), help="full: every weight; lora: low-rank adapters (default lora)")
    parser.add_argument("--rank", type=int, help="LoRA rank (default 8)")
    parser.add_argument("--alpha", type=float, help="LoRA alpha (default 16)")
    parser.add_argument("--targets", nargs="+", help="LoRA target layers: all-linear or names like q_proj v_proj "
                        "(default all-linear)")
    parser.add_argument("--merge", action="store_true", default=None, help="also save the model with the adapter merged in")
    parser.add_argument("--out", help="run folder (default runs/dpo)")
    parser.add_argument("--lr", type=float, help="peak learning rate (default 5e-5 for lora, 1e-6 for full)")
    parser.add_argument("--epochs", type=float, help="passes over the pairs (default 1; none when --max-steps or "
                        "--time-budget is given)")
    parser.add_argument("--max-steps", type=int, help="optimizer steps (default: none, --epochs decide)")
    parser.add_argument("--time-budget", type=float, help="seconds of training (default: none)")
    parser.add_argument("--batch-size", type=int, help="pairs per micro-batch (default 8)")
    parser.add_argument("--grad-accum", type=int, help="micro-batches per optimizer step (default 1)")
    parser.add_argument("--max-length", type=int, help="tokens of prompt + completion (default 512)")
    parser.add_argument("--eval-every", type=int, help="steps between held-out pair evaluations, 0 = at the end (default 50)")
    parser.add_argument("--save-every", type=int, help="steps between checkpoints, 0 = only at the end (default 0)")
    add_run_flags(parser, "sampling, data order and dropout")
    parser.set_defaults(func=run)


_FLAGS = {
    "model": "model", "data": "data", "val_data": "val_data", "loss": "loss", "beta": "beta",
    "simpo_gamma": "simpo_gamma", "label_smoothing": "label_smoothing", "task": "generate.task",
    "prompts": "generate.prompts", "samples": "generate.samples", "eval_items": "generate.eval_items",
    "score_task": "score_task",
    "method": "method", "rank": "lora.rank", "alpha": "lora.alpha", "targets": "lora.targets", "merge": "merge",
    "out": "out_dir", "lr": "optim.lr", "epochs": "epochs", "max_steps": "max_steps", "time_budget": "time_budget_s",
    "batch_size": "batch_size", "grad_accum": "grad_accum", "max_length": "max_length", "eval_every": "eval_every",
    "save_every": "save_every", **RUN_FLAGS,
}


def build_config(args: argparse.Namespace):
    from lmforge.train.preference import DEFAULT_LR, PreferenceConfig

    return PreferenceConfig.from_dict(recipe_from_args(args, _FLAGS, DEFAULT_LR))


def answer_is_correct(text: str, gold: str) -> bool:
    """The evaluation runner's `accuracy` criterion for one reply: the extracted final answer equals
    the gold answer (numbers by value, text exactly)."""
    from lmforge.eval.extract import exact_match, extract_answer, is_number, numeric_match

    numeric = is_number(gold)
    answer, _ = extract_answer(text, numeric=numeric)
    return numeric_match(answer, gold) if numeric else exact_match(answer, gold)


def make_verifiable_pairs(config, quiet: bool) -> Path:
    """Sample answers from the model on the task's training questions, pair right over wrong, write
    OUT_DIR/pairs.jsonl (atomically) and return its path."""
    import torch

    from lmforge.core.progress import ProgressDisplay
    from lmforge.data.preference import write_preference_jsonl
    from lmforge.data.synthetic import make_items
    from lmforge.infer.sampling import SamplingParams
    from lmforge.io.registry import load_model
    from lmforge.train.feedback import verifiable_pairs

    settings = config.generate
    if config.threads:
        torch.set_num_threads(config.threads)
    model, tokenizer = load_model(config.model, dtype=torch.float32)
    items = make_items(settings.task, settings.prompts, "train", config.seed)
    params = SamplingParams(max_new_tokens=settings.max_new_tokens, temperature=settings.temperature, top_p=settings.top_p)
    with ProgressDisplay(enabled=not quiet) as display:
        display.start(f"sampling {settings.samples} answers to {len(items)} {settings.task} questions",
                      total=len(items) * settings.samples, counted=True)
        pairs, report = verifiable_pairs(model, tokenizer, items, lambda item, text: answer_is_correct(text, item.answer),
                                         samples=settings.samples, params=params, pairs_per_prompt=settings.pairs_per_prompt,
                                         batch_size=config.eval_batch_size * 2, seed=config.seed, progress=display.advance)
        display.message(f"verifiable pairs: {report.line()}")
    if not pairs:
        raise ValueError(f"no pairs: every sampled answer to the {settings.task} questions was "
                         f"{'right' if report.dropped.get('all answers correct') else 'wrong'}; try another task")
    return write_preference_jsonl(pairs, Path(config.out_dir) / "pairs.jsonl")


def task_score(config):
    """Scores of the task's first `eval_items` held-out questions (chat, greedy) through the eval
    runner, as `lmforge eval --task TASK --chat --limit N` gives them; results (with every reply) go
    to OUT_DIR/eval/TASK_{before,after}.json."""
    from lmforge.eval.runner import EvalConfig, task_scorer
    from lmforge.eval.tasks import synthetic_task

    settings = config.generate
    eval_config = EvalConfig(chat=True, max_new_tokens=settings.max_new_tokens, batch_size=config.eval_batch_size * 2)
    return task_scorer(synthetic_task(config.score_task or settings.task, n_docs=settings.eval_items), eval_config,
                       metrics=("accuracy", "exact_match", "strict_match"), out_dir=Path(config.out_dir) / "eval",
                       model_name=config.model)


def paired_change(before: Path, after: Path, key: str = "correct") -> tuple[float, float, float, int]:
    """(before, after, standard error of the paired difference, n) from two eval result files of the
    same items: the items' own before/after differences, so what both runs share cancels out."""
    runs = [json.loads(path.read_text())["runs"][0]["samples"] for path in (before, after)]
    by_id = {s["id"]: s for s in runs[0]}
    diffs, first, second = [], [], []
    for sample in runs[1]:
        old = float(by_id[sample["id"]][key])
        first.append(old)
        second.append(float(sample[key]))
        diffs.append(second[-1] - old)
    n = len(diffs)
    mean = sum(diffs) / n
    spread = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1)) if n > 1 else float("nan")
    return sum(first) / n, sum(second) / n, spread / math.sqrt(n), n


def run(args: argparse.Namespace) -> int:
    from lmforge.io.checkpoint import CheckpointError
    from lmforge.train.preference import train_preference
    from lmforge.train.step import NonFiniteLossError

    config = build_config(args)
    if config.data is None:
        pairs_file = Path(config.out_dir) / "pairs.jsonl"
        if not (args.resume and pairs_file.is_file()):
            pairs_file = make_verifiable_pairs(config, args.quiet)
        config = config.replace(data=str(pairs_file), score_task=config.score_task or config.generate.task)
    if args.make_pairs:
        print(f"pairs: {config.data}")
        return 0
    score = task_score(config) if config.score_task and config.generate.eval_items else None
    try:
        result = train_preference(config, resume=args.resume, show_progress=not args.quiet, score=score)
    except (NonFiniteLossError, CheckpointError) as error:
        report_error(error, args)
        return 1
    if result.stopped_by:
        return 0
    evals = result.evals[-1] if result.evals else {}
    if "eval_rewards/accuracies" in evals:
        print(f"held-out pairs: reward accuracy {evals['eval_rewards/accuracies']:.1%}, "
              f"margin {evals['eval_rewards/margins']:.3f}")
    folder = Path(config.out_dir) / "eval"
    task = config.score_task
    if result.scores_after is not None and (folder / f"{task}_before.json").is_file():
        for key, name in (("correct", "accuracy (extracted answer)"), ("strict", "strict match (whole reply)")):
            before, after, stderr, n = paired_change(folder / f"{task}_before.json", folder / f"{task}_after.json", key)
            spread = (f"paired standard error {stderr:.1%}, z = {(after - before) / stderr:.1f}" if stderr
                      else "no item changed")
            print(f"held-out {task}, {n} items, {name}: {before:.1%} -> {after:.1%}, change {after - before:+.1%} "
                  f"({spread})")
    print(f"{result.steps} steps, {result.train_seconds:.0f}s of training; run folder: {result.out_dir}")
    return 0
