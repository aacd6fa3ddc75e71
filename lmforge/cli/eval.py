"""`lmforge eval`: benchmark a model (multiple choice, generation, perplexity), k-shot, plain or chat.

    lmforge eval --task arc_easy                          # ARC-Easy validation, 0-shot, log-likelihood
    lmforge eval --task icl --shots 0,1,4,16 --json out/icl.json    # + out/icl.png (accuracy vs shots)
    lmforge eval --task gsm8k --cot --limit 100 --max-new-tokens 192
    lmforge eval --task add --chat --limit 200 --max-new-tokens 16   # a generated task, as fine-tuning scores it
    lmforge eval --task ppl:../shared/data/tinyshakespeare.txt --limit 20000
    lmforge eval --task jsonl:my_task.jsonl --shots 0,3 --chat
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

from lmforge.cli.common import add_model_flags, load_from_args
from lmforge.core.progress import ProgressDisplay
from lmforge.core.files import write_text_atomically


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "eval", help="evaluate a model on a benchmark (zero/few-shot, chat, chain-of-thought, perplexity)",
        description="Tasks: arc_easy, arc_challenge (multiple choice by log-likelihood), gsm8k (generation, "
                    "numeric answer), icl (in-context-learning probe), add, multiply, count, reverse, convert (the "
                    "generated fine-tuning tasks, held-out questions), ppl:PATH (perplexity and bits per byte "
                    "of a .txt, or a .jsonl with 'text'), jsonl:PATH (your own task, see lmforge.eval.tasks.jsonl_task).",
    )
    add_model_flags(parser)
    parser.add_argument("--task", required=True, help="task name or ppl:PATH / jsonl:PATH")
    parser.add_argument("--shots", default="0", help="number of few-shot examples; a list like 0,1,4,16 runs each")
    parser.add_argument("--limit", type=int, default=None,
                        help="evaluate the first N items (perplexity: the first N tokens) (default: all)")
    parser.add_argument("--chat", action="store_true", help="build prompts with the model's chat template")
    parser.add_argument("--cot", action="store_true", help="chain-of-thought prompting (generation tasks)")
    parser.add_argument("--system", default=None, help="system prompt (with --chat) (default: none; generated tasks: their instruction)")
    parser.add_argument("--seed", type=int, default=1234, help="few-shot selection seed (default 1234)")
    parser.add_argument("--data", type=Path, default=None,
                        help="a folder of jsonl files: arc/ARC-Easy-validation.jsonl, arc/ARC-Challenge-test.jsonl, "
                             "gsm8k/test.jsonl ... (default: the Hugging Face datasets allenai/ai2_arc and openai/gsm8k "
                             "from the hub cache, downloaded when online)")
    parser.add_argument("--split", default=None, help="data split to evaluate (default validation for ARC, test for GSM8K)")
    parser.add_argument("--batch-size", type=int, default=32, help="rows per scoring batch / sequences per generation batch")
    parser.add_argument("--max-batch-tokens", type=int, default=8192, help="scoring: rows x padded length per batch")
    parser.add_argument("--max-new-tokens", type=int, default=256, help="generation budget per answer")
    parser.add_argument("--max-len", type=int, default=None, help="perplexity window (default: the model context)")
    parser.add_argument("--stride", type=int, default=None, help="perplexity: tokens scored per window (default: window)")
    parser.add_argument("--json", type=Path, default=None, help="write the results (with per-item samples) here (default: not written)")
    parser.add_argument("--plot", type=Path, default=None,
                        help="PNG of accuracy against shots (default: next to --json / in --run-dir when several shots)")
    parser.add_argument("--run-dir", type=Path, default=None,
                        help="a run folder: results go to RUN_DIR/eval/TASK.json (+ .png) for `lmforge report` (default: none)")
    parser.add_argument("--no-samples", action="store_true", help="leave per-item samples out of the results")
    parser.add_argument("--show-prompt", action="store_true", help="print the first item's prompt for each shot count")
    parser.set_defaults(func=run)


def parse_shots(text: str) -> tuple[int, ...]:
    try:
        shots = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise ValueError(f"--shots must be integers separated by commas, got {text!r}") from None
    if not shots or any(k < 0 for k in shots):
        raise ValueError(f"--shots must be non-negative integers, got {text!r}")
    return tuple(dict.fromkeys(shots))


def _format(value: Any) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        return f"{value:.4f}"
    return str(value)


def _table(results: dict[str, Any]) -> str:
    lines = []
    for run in results["runs"]:
        metrics = run["metrics"]
        shown = {k: v for k, v in metrics.items() if not k.endswith("_stderr") and k != "logprob"}
        parts = []
        for key, value in shown.items():
            stderr = metrics.get(f"{key}_stderr")
            text = _format(value)
            if isinstance(stderr, float) and not math.isnan(stderr):
                text += f" ± {stderr:.4f}"
            parts.append(f"{key}={text}")
        lines.append(f"{results['task']} shots={run['shots']} n={run['n']}: " + ", ".join(parts) + f"  ({run['wall_s']:.1f}s)")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from lmforge.eval.plot import plot_accuracy_vs_shots
    from lmforge.eval.runner import EvalConfig, evaluate
    from lmforge.eval.tasks import load_task

    shots = parse_shots(args.shots)
    config = EvalConfig(shots=shots, limit=args.limit, chat=args.chat, cot=args.cot, seed=args.seed, system=args.system,
                        batch_size=args.batch_size, max_batch_tokens=args.max_batch_tokens,
                        max_new_tokens=args.max_new_tokens, max_len=args.max_len, stride=args.stride,
                        keep_samples=not args.no_samples)
    task = load_task(args.task, args.data, split=args.split, seed=args.seed)  # data errors before the model loads
    if args.chat and task.kind == "perplexity":
        raise ValueError("--chat does not apply to perplexity tasks")
    started = time.perf_counter()
    model, tokenizer = load_from_args(args)
    load_s = time.perf_counter() - started
    if args.show_prompt and task.kind != "perplexity":
        from lmforge.eval.prompts import chat_messages, describe_prompt, plain_prompt, select_shots

        for k in shots:
            picked = select_shots(task, 0, k, args.seed)
            text = (describe_prompt(chat_messages(task, task.docs[0], picked, args.cot, args.system)) if args.chat
                    else plain_prompt(task, task.docs[0], picked, args.cot))
            print(f"--- prompt of the first item, {k} shots ---\n{text}\n---", file=sys.stderr)
    with ProgressDisplay(stream=sys.stderr) as progress:  # stderr: a piped stdout gets the results only
        results = evaluate(model, tokenizer, task, config, progress)
    results["model"] = args.model
    results["dtype"] = args.dtype
    results["device"] = str(model.lm_head.weight.device)
    results["parameters"] = sum(p.numel() for p in model.parameters())
    results["model_load_s"] = round(load_s, 3)
    results["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    print(_table(results))

    json_paths: list[Path] = []
    png_paths: list[Path] = [args.plot] if args.plot is not None else []
    several = len(shots) > 1
    if args.json is not None:
        json_paths.append(args.json)
        if several and args.plot is None:
            png_paths.append(args.json.with_suffix(".png"))
    if args.run_dir is not None:
        stem = args.run_dir / "eval" / (results["task"] + ("_chat" if args.chat else "") + ("_cot" if args.cot else ""))
        json_paths.append(stem.with_suffix(".json"))
        if several:
            png_paths.append(stem.with_suffix(".png"))
    for path in json_paths:
        write_text_atomically(path, json.dumps(results, indent=1, ensure_ascii=False) + "\n")
        print(f"results: {path}")
    if task.kind != "perplexity":
        for path in dict.fromkeys(png_paths):
            plot_accuracy_vs_shots(results, path)
            print(f"plot: {path}")
    return 0
