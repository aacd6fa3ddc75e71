"""`lmforge eval`: benchmark a model (multiple choice, generation, perplexity), k-shot, plain or chat.

    lmforge eval --task arc_easy                          # ARC-Easy validation, 0-shot, log-likelihood
    lmforge eval --task icl --shots 0,1,4,16 --json out/icl.json    # + out/icl.png (accuracy vs shots)
    lmforge eval --task gsm8k --cot --limit 100 --max-new-tokens 192
    lmforge eval --task add --chat --limit 200 --max-new-tokens 16   # a generated task, as fine-tuning scores it
    lmforge eval --task ppl:../shared/data/tinyshakespeare.txt --limit 20000
    lmforge eval --task jsonl:my_task.jsonl --shots 0,3 --chat
    lmforge eval --task humaneval --samples 20 --temperature 0.8 --max-new-tokens 384   # pass@1, pass@10
    lmforge eval --task summarize --shots 1                 # ROUGE; translate: chrF and BLEU
    lmforge eval --task open_ended --chat --judge PATH      # judged against references, both orders
    lmforge eval --model runs/dpo/latest --winrate smollm2-135m-instruct --task prompts:builtin:heldout \
        --winrate-judge rm:runs/rm/reward_model                  # win rate against another model (lmforge.eval.winrate)
    lmforge eval --task arc_easy --json out/arc.json        # + ECE, out/arc_calibration_{reliability,selective}.png
    lmforge eval --task gsm8k --limit 50 --self-consistency 5 --temperature 0.7   # agreement as confidence
    lmforge eval --task redteam --chat --moderation configs/moderation-default.yaml   # refusal / over-refusal
    lmforge eval --task bias                                # counterfactual gender and age pairs, intervals
    lmforge eval --task image-qa --model runs/vlm-shapes/stage2 --data runs/vlm-data   # questions about pictures
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
from lmforge.cli.responsible import (RESPONSIBLE_TASKS, add_eval_flags, calibration_extras, run_responsible,
                                     write_calibration_plots)
from lmforge.core.progress import ProgressDisplay
from lmforge.core.files import write_text_atomically


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "eval", help="evaluate a model on a benchmark (zero/few-shot, chat, chain-of-thought, perplexity)",
        description="Tasks: arc_easy, arc_challenge (multiple choice by log-likelihood), gsm8k (generation, "
                    "numeric answer), icl (in-context-learning probe), add, multiply, count, reverse, convert (the "
                    "generated fine-tuning tasks, held-out questions), humaneval (code run in the sandbox, pass@k), "
                    "summarize (ROUGE), translate (chrF, BLEU), open_ended (judged by a model), ppl:PATH (perplexity "
                    "and bits per byte of a .txt, or a .jsonl with 'text'), jsonl:PATH (your own task: multiple "
                    "choice, generation with a 'metric', code with 'prompt'/'tests'/'entry_point', or judged; see "
                    "lmforge.eval.tasks.jsonl_task), redteam (refusal of harmful requests and over-refusal of "
                    "harmless look-alikes, alone and with --moderation; redteam:FILE.jsonl for your own), bias "
                    "(counterfactual sentence pairs: log-likelihood gaps by gender and age with intervals), image-qa "
                    "(a vision-language model folder answers the questions about the generated shape pictures of "
                    "--data, a folder written by `lmforge vlm data`: accuracy per question kind against the chance "
                    "of always giving the most common answer, on --split test and heldout (default both); --limit "
                    "counts pictures per split; answers are cut at min(--max-new-tokens, 16) tokens).",
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
                             "from the hub cache, downloaded when online; image-qa: the folder `lmforge vlm data` wrote)")
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
    code = parser.add_argument_group("code tasks (humaneval, jsonl code lines)")
    code.add_argument("--samples", type=int, default=1, help="completions per problem (pass@k needs k of them) (default 1)")
    code.add_argument("--temperature", type=float, default=0.0,
                      help="sampling temperature of code completions (and of --self-consistency answers); "
                           "0 = greedy, which allows one sample per problem only (default 0)")
    code.add_argument("--top-p", type=float, default=None, help="nucleus sampling of code completions (default: off)")
    code.add_argument("--pass-k", default="1,10,100", help="the k of pass@k, reported where k <= --samples (default 1,10,100)")
    code.add_argument("--sandbox-timeout", type=float, default=10.0, help="seconds of wall clock per program (default 10)")
    code.add_argument("--workers", type=int, default=None, help="programs run at a time (default: the CPU count)")
    parser.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples of confidence intervals (default 1000)")
    judged = parser.add_argument_group("judged tasks (open_ended, jsonl lines with \"metric\": \"judge\")")
    judged.add_argument("--judge", default=None,
                        help="the judging model: a name, GGUF file, folder or hub id (default: the embedded model)")
    judged.add_argument("--judge-mode", choices=("pairwise", "rubric"), default="pairwise",
                        help="pairwise: against the references (or --baseline), both orders; rubric: a grade 1-5 "
                             "(default pairwise)")
    judged.add_argument("--baseline", default=None,
                        help="pairwise opponent: a model whose answers replace the task's references (default: none)")
    parser.add_argument("--show-prompt", action="store_true", help="print the first item's prompt for each shot count")
    versus = parser.add_argument_group("win rate against another model (--task gives the prompts: any task's questions, "
                                       "or prompts:FILE.jsonl / prompts:builtin:heldout)")
    versus.add_argument("--winrate", metavar="MODEL_B", default=None,
                        help="compare --model's answers with MODEL_B's, in a random order per prompt (default: off)")
    versus.add_argument("--winrate-judge", default="model",
                        help="rm:PATH (a reward model), rule:CONSTITUTION.yaml (its rules) or model[:MODEL] (asked "
                             "--winrate-rubric, both orders) (default model: --model judges)")
    versus.add_argument("--winrate-rubric", default="The response is helpful, correct and clear.",
                        help="what a model judge compares by (default: helpful, correct and clear)")
    add_eval_flags(parser)
    parser.set_defaults(func=run)


def parse_shots(text: str, flag: str = "--shots") -> tuple[int, ...]:
    try:
        shots = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise ValueError(f"{flag} must be integers separated by commas, got {text!r}") from None
    if not shots or any(k < 0 for k in shots):
        raise ValueError(f"{flag} must be non-negative integers, got {text!r}")
    return tuple(dict.fromkeys(shots))


def _judge_and_baseline(args: argparse.Namespace, kind: str, model: Any, tokenizer: Any) -> tuple[Any, Any]:
    """The judge (the embedded model unless --judge) and the --baseline model of a judged task;
    a model named twice is loaded once."""
    if kind != "judged":
        if args.judge or args.baseline:
            raise ValueError("--judge and --baseline apply to judged tasks (open_ended, jsonl with metric judge)")
        return None, None
    from lmforge.core.device import parse_device, parse_dtype
    from lmforge.eval.judge import Judge
    from lmforge.io.registry import DEFAULT_MODEL, load_model

    loaded = {args.model: (model, tokenizer)}

    def get(name: str) -> tuple[Any, Any]:
        if name not in loaded:
            loaded[name] = load_model(name, dtype=parse_dtype(args.dtype), device=parse_device(args.device))
        return loaded[name]

    judge_name = args.judge or DEFAULT_MODEL
    judge = Judge(*get(judge_name), name=judge_name, batch_size=min(args.batch_size, 16),
                  max_batch_tokens=args.max_batch_tokens)
    return judge, (get(args.baseline) if args.baseline else None)


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
        shown = {k: v for k, v in metrics.items() if not k.endswith(("_stderr", "_ci")) and k != "logprob"}
        parts = []
        for key, value in shown.items():
            stderr, interval = metrics.get(f"{key}_stderr"), metrics.get(f"{key}_ci")
            text = _format(value) if not isinstance(value, dict) else " ".join(f"{k}:{v}" for k, v in value.items())
            if isinstance(stderr, float) and not math.isnan(stderr):
                text += f" ± {stderr:.4f}"
            if isinstance(interval, list) and len(interval) == 2 and not any(map(math.isnan, interval)):
                text += f" [{interval[0]:.4f}, {interval[1]:.4f}]"
            parts.append(f"{key}={text}")
        lines.append(f"{results['task']} shots={run['shots']} n={run['n']}: " + ", ".join(parts) + f"  ({run['wall_s']:.1f}s)")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    if args.winrate:
        from lmforge.cli.judging import run_winrate

        return run_winrate(args)
    if args.task.lower() == "image-qa":
        from lmforge.cli.vlm import run_image_qa

        return run_image_qa(args)
    if args.task.partition(":")[0].lower() in RESPONSIBLE_TASKS:
        return run_responsible(args)
    if args.moderation is not None:
        raise ValueError("--moderation applies to --task redteam (and to lmforge serve / chat)")
    from lmforge.cli.costs import eval_cost
    from lmforge.core.cost import TokenCounter
    from lmforge.eval.plot import plot_accuracy_vs_shots
    from lmforge.eval.runner import EvalConfig, evaluate
    from lmforge.eval.tasks import load_task

    shots = parse_shots(args.shots)
    config = EvalConfig(shots=shots, limit=args.limit, chat=args.chat, cot=args.cot, seed=args.seed, system=args.system,
                        batch_size=args.batch_size, max_batch_tokens=args.max_batch_tokens,
                        max_new_tokens=args.max_new_tokens, max_len=args.max_len, stride=args.stride,
                        keep_samples=not args.no_samples, samples=args.samples, temperature=args.temperature,
                        top_p=args.top_p, pass_k=parse_shots(args.pass_k, "--pass-k"),
                        sandbox_timeout_s=args.sandbox_timeout, workers=args.workers, resamples=args.resamples,
                        judge_mode=args.judge_mode)
    task = load_task(args.task, args.data, split=args.split, seed=args.seed)  # data errors before the model loads
    if args.chat and task.kind == "perplexity":
        raise ValueError("--chat does not apply to perplexity tasks")
    started = time.perf_counter()
    model, tokenizer = load_from_args(args)
    judge, baseline = _judge_and_baseline(args, task.kind, model, tokenizer)
    load_s = time.perf_counter() - started
    if args.show_prompt and task.kind != "perplexity":
        from lmforge.eval.prompts import chat_messages, describe_prompt, plain_prompt, select_shots

        for k in shots:
            picked = select_shots(task, 0, k, args.seed)
            text = (describe_prompt(chat_messages(task, task.docs[0], picked, args.cot, args.system)) if args.chat
                    else plain_prompt(task, task.docs[0], picked, args.cot))
            print(f"--- prompt of the first item, {k} shots ---\n{text}\n---", file=sys.stderr)
    with ProgressDisplay(stream=sys.stderr) as progress:  # stderr: a piped stdout gets the results only
        with TokenCounter(model) as counter:
            results = evaluate(model, tokenizer, task, config, progress, judge=judge, baseline=baseline)
            calibration_plots = calibration_extras(args, task, results, model, tokenizer, config, progress)
    results["cost"] = eval_cost(counter, model.config, results["wall_s"])
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
    write_calibration_plots(calibration_plots, [p.with_suffix("") for p in json_paths], results["task"])
    return 0
