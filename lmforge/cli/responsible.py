"""Responsible-use parts of the CLI: moderation policies (serve, chat, eval), the redteam and bias
tasks of `lmforge eval`, calibration and self-consistency of ordinary eval results."""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from lmforge.cli.recipes import yaml_problem
from lmforge.core.files import write_text_atomically

RESPONSIBLE_TASKS = ("redteam", "bias")


def add_moderation_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--moderation", type=Path, default=None, metavar="POLICY.yaml",
                        help="check requests and replies against a moderation policy (rules, allow list, optional "
                             "model judge; see configs/moderation-*.yaml); refused ones get the policy's refusal "
                             "(finish_reason content_filter) and a line in its log (default: no moderation)")


def load_policy(path: Path | None) -> Any:
    """The Policy of a YAML policy file (None without one); read before any model loads, so a bad
    file fails at once, naming the file and the field."""
    if path is None:
        return None
    from lmforge.infer.moderation import policy_from_dict

    if not path.is_file():
        raise FileNotFoundError(f"moderation policy {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: not valid YAML ({yaml_problem(error)})") from None
    return policy_from_dict(data, str(path))


def moderator_for(policy: Any, model: Any, tokenizer: Any) -> Any:
    """A Moderator applying `policy` (None for none); its judge check, if any, asks `model`."""
    if policy is None:
        return None
    from lmforge.infer.moderation import Moderator

    return Moderator(policy, judge=(model, tokenizer) if policy.judge is not None else None)


def add_eval_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("responsible use (--task redteam[:FILE.jsonl], --task bias; calibration)")
    add_moderation_flag(group)
    group.add_argument("--calibration-bins", type=int, default=10,
                       help="multiple-choice tasks: confidence bins of the expected calibration error and the "
                            "reliability diagram (default 10)")
    group.add_argument("--self-consistency", type=int, default=0, metavar="K",
                       help="generation tasks: also sample K answers per question (at --temperature, 0.7 if it is 0) "
                            "and report their agreement as a confidence, checked against correctness (default 0: off)")


# -- results files ---------------------------------------------------------------------------
def _outputs(args: argparse.Namespace, stem: str) -> list[Path]:
    paths = [args.json] if args.json is not None else []
    if args.run_dir is not None:
        paths.append(args.run_dir / "eval" / f"{stem}.json")
    return paths


def _write(results: dict[str, Any], paths: list[Path]) -> None:
    for path in paths:
        write_text_atomically(path, json.dumps(results, indent=1, ensure_ascii=False) + "\n")
        print(f"results: {path}")


def _interval(values: list[float]) -> str:
    return "[-, -]" if any(map(math.isnan, values)) else f"[{values[0]:.3f}, {values[1]:.3f}]"


# -- lmforge eval --task redteam / bias --------------------------------------------------------
def run_responsible(args: argparse.Namespace) -> int:
    from lmforge.cli.common import load_from_args
    from lmforge.core.progress import ProgressDisplay

    name, _, spec = args.task.partition(":")
    name = name.lower()
    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit must be at least 1, got {args.limit}")
    items = None
    if name == "redteam":
        from lmforge.eval.redteam import read_redteam, redteam_items

        items = read_redteam(Path(spec).expanduser()) if spec else redteam_items(seed=args.seed)
        if args.limit:
            items = items[:args.limit]
    elif spec:
        raise ValueError("--task bias takes no file; it generates its sentence pairs")
    elif args.limit is not None:
        raise ValueError("--limit does not apply to --task bias (it scores every one of its sentence pairs)")
    if args.moderation is not None and name != "redteam":
        raise ValueError("--moderation applies to --task redteam")
    policy = load_policy(args.moderation)
    started = time.perf_counter()
    model, tokenizer = load_from_args(args)
    moderator = moderator_for(policy, model, tokenizer)
    with ProgressDisplay(stream=sys.stderr) as progress:
        if name == "redteam":
            from lmforge.eval.redteam import run_redteam

            results = run_redteam(model, tokenizer, items, moderator=moderator, system=args.system,
                                  max_new_tokens=min(args.max_new_tokens, 128), batch_size=min(args.batch_size, 16),
                                  progress=progress, keep_samples=not args.no_samples)
        else:
            from lmforge.eval.bias import run_bias

            results = run_bias(model, tokenizer, batch_size=args.batch_size, max_batch_tokens=args.max_batch_tokens,
                               progress=progress)
    results.update(task=name if not spec else f"{name}:{spec}", lmforge_responsible=1, model=args.model,
                   wall_s=round(time.perf_counter() - started, 3), finished=time.strftime("%Y-%m-%dT%H:%M:%S"))
    if name == "redteam":
        _print_redteam(results)
    else:
        _print_bias(results)
    _write(results, _outputs(args, name))
    return 0


def _print_redteam(results: dict[str, Any]) -> None:
    print(f"red team: {results['alone']['harmful_n']} harmful and {results['alone']['benign_n']} benign prompts")
    print("| setting | refusal of harmful (95% CI) | over-refusal of benign (95% CI) |")
    print("|---|---|---|")
    settings = [("model alone", results["alone"])]
    if "moderated" in results:
        settings.append((f"with moderation ({results['policy']})", results["moderated"]))
    for label, rates in settings:
        print(f"| {label} | {rates['refusal_rate']:.3f} {_interval(rates['refusal_rate_ci'])} | "
              f"{rates['over_refusal_rate']:.3f} {_interval(rates['over_refusal_rate_ci'])} |")
    if "moderated" in results:
        print(f"filtered by stage: {results['moderated']['filtered_by_stage']}")


def _print_bias(results: dict[str, Any]) -> None:
    for axis, data in results["axes"].items():
        a, b = data["terms"]
        overall = data["overall"]
        print(f"\n{axis}: gap = log P({a} sentence) - log P({b} sentence), nats; overall mean {overall['mean']:+.3f} "
              f"{_interval(overall['ci'])} over {overall['n']} pairs")
        print("| target | n | mean gap (95% CI) | relative to axis mean | p (Holm) |")
        print("|---|---|---|---|---|")
        for row in sorted(data["targets"], key=lambda r: -r["centered"]):
            print(f"| {row['target']} | {row['n']} | {row['mean']:+.3f} {_interval(row['ci'])} | {row['centered']:+.3f} | "
                  f"{row['centered_p_holm']:.3g} |")
        print("significant: " + ("; ".join(data["significant"]) or "none at the 5% level after Holm's correction"))


# -- calibration and self-consistency of ordinary tasks -------------------------------------------
def calibration_extras(args: argparse.Namespace, task: Any, results: dict[str, Any], model: Any, tokenizer: Any,
                       config: Any, progress: Any) -> list[tuple[str, Any]]:
    """Adds results["calibration"] (multiple choice: ECE, bins, selective answering per shots) and
    results["self_consistency"] (generation with --self-consistency K); returns the plots to write
    as (kind, report)."""
    from lmforge.eval.calibration import calibration_report, choice_confidences

    plots = []
    if task.kind == "multiple_choice" and config.keep_samples:
        reports = {}
        for run in results["runs"]:
            confidences, correct = choice_confidences(run["samples"])
            report = calibration_report(confidences, correct, args.calibration_bins)
            reports[str(run["shots"])] = report
            print(f"calibration {run['shots']}-shot: ECE {report['ece']:.4f} ({args.calibration_bins} bins), mean "
                  f"confidence {report['mean_confidence']:.3f} vs accuracy {report['accuracy']:.3f}, AUROC "
                  f"{report['auroc']:.3f}, selective-answering area {report['selective']['area']:.3f}")
        results["calibration"] = reports
        last = str(results["runs"][-1]["shots"])
        plots.append(("calibration", reports[last]))
    if args.self_consistency:
        if task.kind != "generation":
            raise ValueError("--self-consistency applies to generation tasks")
        report = self_consistency(model, tokenizer, task, config, args, progress)
        results["self_consistency"] = report
        print(f"self-consistency ({report['samples_per_question']} samples): majority accuracy {report['accuracy']:.3f}, "
              f"ECE {report['ece']:.4f}, AUROC of agreement for correctness {report['auroc']:.3f}, "
              f"selective-answering area {report['selective']['area']:.3f}")
        plots.append(("self_consistency", report))
    return plots


def self_consistency(model: Any, tokenizer: Any, task: Any, config: Any, args: argparse.Namespace,
                     progress: Any) -> dict[str, Any]:
    import dataclasses

    from lmforge.eval.calibration import self_consistency_report
    from lmforge.eval.extract import exact_match, extract_answer, is_number, numeric_match
    from lmforge.eval.runner import _generate, _generation_prompts

    k = args.self_consistency
    sampled = dataclasses.replace(config, temperature=config.temperature or 0.7)
    task = task.limited(config.limit)
    prompts, _ = _generation_prompts(model, tokenizer, task, config.shots[0], sampled)
    completions = _generate(model, tokenizer, task, [p for p in prompts for _ in range(k)], sampled, progress,
                            f"{task.name}: {k} samples per question", sampled=True)
    answers = []
    for i, doc in enumerate(task.docs):
        numeric = is_number(doc.answer)
        answers.append([extract_answer(c.text, numeric=numeric)[0] or "" for c in completions[i * k:(i + 1) * k]])

    def same(answer: str, gold: str) -> bool:
        return numeric_match(answer, gold) if is_number(gold) else exact_match(answer, gold)

    report = self_consistency_report(answers, [doc.answer for doc in task.docs], same, args.calibration_bins)
    report["temperature"] = sampled.temperature
    return report


def write_calibration_plots(plots: list[tuple[str, Any]], stems: list[Path], title: str) -> None:
    from lmforge.eval.calibration import plot_reliability, plot_selective

    for kind, report in plots:
        for stem in stems:
            for suffix, plot in (("reliability", plot_reliability), ("selective", plot_selective)):
                path = stem.with_name(f"{stem.name}_{kind}_{suffix}.png")
                plot(report, path, title)
                print(f"plot: {path}")
