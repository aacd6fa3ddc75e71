"""`lmforge feedback`: preference pairs from AI feedback, the constitutional recipe; or rule compliance.

    lmforge feedback --model M --prompts prompts.jsonl --constitution configs/constitution-plain.yaml
    lmforge feedback --prompts builtin:train --limit 300 --judge model --out runs/feedback/pairs.jsonl
    lmforge feedback --model runs/dpo/latest --prompts builtin:heldout --limit 200 --measure

For each prompt the model answers, critiques its answer against a principle drawn from the
constitution, and revises it; (revision > answer) is kept when the judge prefers the revision
(`--judge rule`: the principle's rule; `rm:PATH`: a reward model; `model[:MODEL]`: a model asked the
principle's rubric, both orders), else dropped and counted. The pairs file is ready for `lmforge dpo`.
`--measure` only answers the prompts and reports the share of answers that pass the rules.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "feedback", help="AI-feedback preference pairs: answer, critique by a constitution's principle, revise; "
                         "or measure rule compliance")
    parser.add_argument("--model", default="smollm2-135m-instruct",
                        help="the model that answers, critiques and revises (default smollm2-135m-instruct)")
    parser.add_argument("--prompts", default="builtin:train",
                        help="JSONL of {\"prompt\": text or messages}, or builtin:train / builtin:heldout "
                             "(generated open-ended requests) (default builtin:train)")
    parser.add_argument("--limit", type=int, default=None, help="use the first N prompts (default: all; builtin: 200)")
    parser.add_argument("--constitution", default="configs/constitution-plain.yaml",
                        help="YAML constitution (default configs/constitution-plain.yaml)")
    parser.add_argument("--judge", default="rule", help="rule, rm:PATH or model[:MODEL] (default rule)")
    parser.add_argument("--out", default=None,
                        help="preference JSONL to write (default runs/feedback/pairs.jsonl); with --measure, a JSON "
                             "report of every answer (default: none)")
    parser.add_argument("--measure", action="store_true",
                        help="only answer the prompts and report the share that passes the constitution's rules")
    parser.add_argument("--max-new-tokens", type=int, default=128, help="tokens per answer, critique and revision (default 128)")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    parser.add_argument("--batch-size", type=int, default=16, help="sequences generated together (default 16)")
    parser.add_argument("--seed", type=int, default=0, help="principle draws, prompt order and sampling (default 0)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: none, PyTorch's own choice)")
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from lmforge.cli.judging import prefer_function, principle_judgement, read_constitution, read_prompts
    from lmforge.core.progress import ProgressDisplay
    from lmforge.data.preference import write_preference_jsonl
    from lmforge.infer.sampling import SamplingParams
    from lmforge.io.registry import load_model
    from lmforge.train.feedback import constitutional_pairs

    constitution = read_constitution(args.constitution)
    prompts = read_prompts(args.prompts, args.limit, args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    model, tokenizer = load_model(args.model)
    params = SamplingParams(max_new_tokens=args.max_new_tokens, temperature=args.temperature)
    if args.measure:
        return measure(args, model, tokenizer, prompts, constitution, params)
    prefer = prefer_function(principle_judgement(args.judge, model, tokenizer))
    with ProgressDisplay(enabled=not args.quiet) as display:
        display.start(f"answer, critique, revise: {len(prompts)} prompts", total=3 * len(prompts), counted=True)
        pairs, report = constitutional_pairs(model, tokenizer, prompts, constitution, prefer, params=params,
                                             batch_size=args.batch_size, seed=args.seed, progress=display.advance)
    if not pairs:
        raise ValueError(f"no pairs: {report.line()}")
    path = write_preference_jsonl(pairs, args.out or "runs/feedback/pairs.jsonl")
    print(f"constitutional pairs ({constitution.name}, judge {args.judge}): {report.line()}")
    if constitution.checkable:
        passed = [constitution.compliant(p.chosen[0]["content"]) for p in pairs]
        before = [constitution.compliant(p.rejected[0]["content"]) for p in pairs]
        print(f"rule compliance in the kept pairs: answers {sum(before) / len(pairs):.1%}, revisions {sum(passed) / len(pairs):.1%}")
    print(f"pairs: {path}  (train on them: lmforge dpo --model {args.model} --data {path})")
    return 0


def measure(args, model, tokenizer, prompts, constitution, params) -> int:
    """Answers to the prompts and the share that passes every rule (and each), with standard errors."""
    import sys

    from lmforge.core.files import write_text_atomically
    from lmforge.core.progress import ProgressDisplay
    from lmforge.eval.winrate import answer, compliance

    checks = {p.name: p.check for p in constitution.checkable}
    if not checks:
        raise ValueError(f"{args.constitution}: no principle has a rule (check) to measure")
    with ProgressDisplay(enabled=not args.quiet, stream=sys.stderr) as display:
        display.start(f"answers of {args.model}", total=len(prompts), counted=True)
        answers = answer(model, tokenizer, prompts, params, args.batch_size, display.advance)
    result = compliance(answers, checks)
    parts = ", ".join(f"{name} {result[name]['rate']:.1%}" for name in checks)
    print(f"rule compliance of {args.model} on {result['n']} prompts ({args.prompts}): "
          f"{result['all']['rate']:.1%} ± {result['all']['stderr']:.1%} pass every rule ({parts})")
    if args.out:
        report = {"model": args.model, "prompts": args.prompts, "constitution": args.constitution, **result,
                  "answers": [{"prompt": p[-1]["content"], "answer": a, "passed": ok}
                              for p, a, ok in zip(prompts, answers, result["passed"])]}
        write_text_atomically(Path(args.out), json.dumps(report, indent=1, ensure_ascii=False) + "\n")
        print(f"report: {args.out}")
    return 0
