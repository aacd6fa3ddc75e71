"""`lmforge finetune`: supervised fine-tuning (full or LoRA) on chat JSONL or a generated task.

    lmforge finetune --task add --method lora --max-steps 150            # default data, no downloads
    lmforge finetune --model MODEL --data chats.jsonl --method full --epochs 2
    lmforge finetune --config configs/finetune-lora-add.yaml lora.rank=16 --resume

Flags override the YAML recipe (`--config`), and `KEY=VALUE` overrides (dotted keys, as in
`lmforge pretrain`) override both.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from lmforge.cli.common import report_error
from lmforge.cli.recipes import RUN_FLAGS, add_run_flags, recipe_from_args


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("finetune", help="fine-tune a model on chat data (full or LoRA)")
    parser.add_argument("--config", help="YAML recipe (see configs/finetune-*.yaml) (default: none, the defaults below)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="override config keys, e.g. lora.rank=16")
    parser.add_argument("--model", help="known name, GGUF file, model folder or Hugging Face repository id "
                        "(default smollm2-135m-instruct)")
    parser.add_argument("--data", help="chat JSONL ({'messages': [...]} per line); default: a generated --task")
    parser.add_argument("--val-data", help="held-out chat JSONL for the validation loss "
                        "(default: none, 5%% of --data, at most 200 conversations)")
    parser.add_argument("--task", help="generated task when --data is absent: add, multiply, count, reverse, convert "
                        "(default add)")
    parser.add_argument("--train-items", type=int, help="generated training conversations (default 2000)")
    parser.add_argument("--eval-items", type=int,
                        help="held-out task items scored by the eval runner before and after training (default 200; 0: none)")
    parser.add_argument("--method", choices=("full", "lora"), help="full: every weight; lora: low-rank adapters (default lora)")
    parser.add_argument("--rank", type=int, help="LoRA rank (default 8)")
    parser.add_argument("--alpha", type=float, help="LoRA alpha (default 16)")
    parser.add_argument("--dropout", type=float, help="LoRA dropout (default 0.05)")
    parser.add_argument("--targets", nargs="+", help="LoRA target layers: all-linear or names like q_proj v_proj (default all-linear)")
    parser.add_argument("--merge", action="store_true", default=None, help="also save the model with the adapter merged in")
    parser.add_argument("--out", help="run folder (default runs/finetune)")
    parser.add_argument("--lr", type=float, help="peak learning rate (default 2e-4 for lora, 2e-5 for full)")
    parser.add_argument("--epochs", type=float,
                        help="passes over the data (default 1; none when --max-steps or --time-budget is given)")
    parser.add_argument("--max-steps", type=int, help="optimizer steps (default: none, --epochs decide)")
    parser.add_argument("--time-budget", type=float, help="seconds of training (default: none, no time limit)")
    parser.add_argument("--batch-size", type=int, help="rows per micro-batch (default 8)")
    parser.add_argument("--grad-accum", type=int, help="micro-batches per optimizer step (default 1)")
    parser.add_argument("--seq-len", type=int, help="tokens per packed row (default 512)")
    parser.add_argument("--no-pack", dest="pack", action="store_false", default=None,
                        help="one conversation per row (default: short conversations packed into rows)")
    parser.add_argument("--eval-every", type=int, help="steps between validation-loss passes, 0 = only at the end (default 50)")
    parser.add_argument("--save-every", type=int, help="steps between checkpoints, 0 = only at the end (default 0)")
    add_run_flags(parser, "generated data, data order, initialisation and dropout")
    parser.set_defaults(func=run)


# flag -> dotted config key
_FLAGS = {
    "model": "model", "data": "data", "val_data": "val_data", "task": "task", "train_items": "train_items",
    "eval_items": "eval_items", "method": "method", "rank": "lora.rank", "alpha": "lora.alpha", "dropout": "lora.dropout",
    "targets": "lora.targets", "merge": "merge", "out": "out_dir", "lr": "optim.lr", "epochs": "epochs",
    "max_steps": "max_steps", "time_budget": "time_budget_s", "batch_size": "batch_size", "grad_accum": "grad_accum",
    "seq_len": "seq_len", "eval_every": "eval_every", "save_every": "save_every", "pack": "pack",
    **RUN_FLAGS,
}


def build_config(args: argparse.Namespace):
    from lmforge.train.finetune import DEFAULT_LR, FinetuneConfig

    return FinetuneConfig.from_dict(recipe_from_args(args, _FLAGS, DEFAULT_LR))


def task_score(config):
    """The before/after score of a run on a generated task, through the eval runner: the task's
    first `eval_items` held-out questions in chat mode with the task's instruction as the system
    message, greedy, as `lmforge eval --task TASK --chat --limit N --max-new-tokens M` scores them.
    Full results go to OUT_DIR/eval/TASK_{before,after}.json. None when there is nothing to score."""
    from lmforge.eval.runner import EvalConfig, task_scorer
    from lmforge.eval.tasks import synthetic_task

    if config.data is not None or config.eval_items == 0:
        return None
    eval_config = EvalConfig(chat=True, max_new_tokens=config.max_new_tokens, batch_size=config.eval_batch_size)
    return task_scorer(synthetic_task(config.task, n_docs=config.eval_items), eval_config,
                       out_dir=Path(config.out_dir) / "eval", model_name=config.model)


def _percent(scores: dict[str, float] | None, name: str) -> str:
    return "n/a" if scores is None else f"{scores[name]:.1%}"


def run(args: argparse.Namespace) -> int:
    from lmforge.io.checkpoint import CheckpointError
    from lmforge.train.finetune import finetune
    from lmforge.train.step import NonFiniteLossError

    config = build_config(args)
    try:
        result = finetune(config, resume=args.resume, show_progress=not args.quiet, score=task_score(config))
    except (NonFiniteLossError, CheckpointError) as error:
        report_error(error, args)
        return 1
    if not args.quiet and not result.stopped_by:
        before, after = result.scores_before, result.scores_after
        if after is not None:
            print(f"held-out {config.task} ({after['n']:.0f} items): accuracy {_percent(before, 'accuracy')} -> "
                  f"{_percent(after, 'accuracy')}, strict match (the whole reply is the answer) "
                  f"{_percent(before, 'strict_match')} -> {_percent(after, 'strict_match')} "
                  f"({result.steps} steps, {result.train_seconds:.0f}s of training)")
        print(f"run folder: {result.out_dir}  (checkpoint {result.checkpoint})")
        if result.adapter:
            print(f"try: lmforge export --model {config.model} --adapter {result.adapter} --to gguf --out model.gguf")
    return 0
