"""What `lmforge feedback` and `lmforge eval --winrate` share: prompt sets, constitutions (YAML read
here, in the CLI layer), judges named on the command line, and the win-rate run.

Judge names:
    rule            the constitution's rules (`lmforge feedback`; in `eval --winrate` give rule:CONSTITUTION.yaml)
    rm:PATH         a reward model folder (sequence-classification layout, e.g. from `lmforge rm`)
    model[:MODEL]   a model asked which answer follows the principle's rubric better, in both orders
                    (default: the model being trained / evaluated)
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lmforge.cli.recipes import read_recipe

PROMPT_SETS = ("builtin:train", "builtin:heldout")


def read_constitution(path: str | Path):
    from lmforge.data.constitution import Constitution

    return Constitution.from_dict(read_recipe(path), str(path))


def read_prompts(spec: str, limit: int | None, seed: int = 0) -> list[list[dict[str, str]]]:
    """Chat prompts from `builtin:train` / `builtin:heldout` (generated open-ended requests, disjoint
    splits) or a JSONL file in TRL's prompt-only layout ({"prompt": text or messages})."""
    from lmforge.data.constitution import example_prompts
    from lmforge.data.prompts import read_prompt_jsonl

    if limit is not None and limit < 1:
        raise ValueError(f"--limit must be at least 1, got {limit}")
    if spec in PROMPT_SETS:
        return example_prompts(limit or 200, spec.split(":")[1], seed)
    if spec.startswith("builtin:"):
        raise ValueError(f"unknown prompt set {spec!r}; choose {' or '.join(PROMPT_SETS)}, or give a JSONL file")
    return [[{"role": "user", "content": r.prompt}] if isinstance(r.prompt, str) else [dict(m) for m in r.prompt]
            for r in read_prompt_jsonl(spec, limit)]


def load_judge_model(spec: str, model: Any, tokenizer: Any):
    """The model a `model[:MODEL]` judge uses: the given one, or MODEL loaded."""
    from lmforge.eval.judge import Judge
    from lmforge.io.registry import load_model

    name = spec.partition(":")[2]
    if name:
        model, tokenizer = load_model(name)
    return Judge(model, tokenizer, name=name or "self")


def principle_judgement(spec: str, model: Any, tokenizer: Any):
    """A function (principle) -> Judgement for the judge named by `spec` (rule, rm:PATH, model[:MODEL])."""
    from lmforge.eval.winrate import model_judgement, reward_judgement, rule_judgement
    from lmforge.io.hf import load_sequence_classifier
    from lmforge.io.registry import resolve_model

    if spec == "rule":
        def by_rule(principle):
            if principle.check is None:
                raise ValueError(f"principle {principle.name!r} has no rule (check); judge it with --judge model or rm:PATH")
            return rule_judgement(principle.check)
        return by_rule
    if spec.startswith("rm:"):
        rm, rm_tokenizer, pad_id = load_sequence_classifier(resolve_model(spec[3:]))
        if rm_tokenizer is None:
            raise FileNotFoundError(f"{spec[3:]} has no tokenizer.json beside the reward model")
        judgement = reward_judgement(rm, rm_tokenizer, pad_id)
        return lambda principle: judgement
    if spec == "model" or spec.startswith("model:"):
        judge = load_judge_model(spec, model, tokenizer)
        return lambda principle: model_judgement(judge, principle.rubric)
    raise ValueError(f"unknown judge {spec!r}: use rule, rm:PATH or model[:MODEL]")


def prefer_function(judgement_for):
    """feedback's `prefer(prompts, revisions, answers, principles)`: each principle's items judged
    together; the revision is preferred when the judge finds it better (probability above 0.5)."""
    def prefer(prompts: Sequence[Any], revisions: Sequence[str], answers: Sequence[str], principles: Sequence[Any]) -> list[bool]:
        out = [False] * len(revisions)
        for name in dict.fromkeys(p.name for p in principles):
            index = [i for i, p in enumerate(principles) if p.name == name]
            judgement = judgement_for(principles[index[0]])
            verdicts = judgement([prompts[i] for i in index], [revisions[i] for i in index], [answers[i] for i in index])
            for i, p in zip(index, verdicts):
                out[i] = p > 0.5
        return out
    return prefer


def run_winrate(args: argparse.Namespace) -> int:
    """`lmforge eval --winrate MODEL_B`: --model's win rate against MODEL_B on --task's prompts."""
    import torch

    from lmforge.core.files import write_text_atomically
    from lmforge.core.progress import ProgressDisplay
    from lmforge.data.constitution import Principle
    from lmforge.eval.winrate import answer, win_rate
    from lmforge.infer.sampling import SamplingParams
    from lmforge.io.registry import load_model

    prompts = winrate_prompts(args)
    spec = args.winrate_judge
    rubric = args.winrate_rubric
    if spec.startswith("rule:"):
        constitution = read_constitution(spec[5:])
        if not constitution.checkable:
            raise ValueError(f"{spec[5:]}: no principle has a rule (check) to judge by")
        principle = Principle("rules", rubric, rubric, rubric, constitution.compliant)
        spec = "rule"
    else:
        principle = Principle("rubric", rubric, rubric, rubric)
    if args.threads:
        torch.set_num_threads(args.threads)
    model_a, tokenizer_a = load_model(args.model)
    model_b, tokenizer_b = load_model(args.winrate)
    judgement = principle_judgement(spec, model_a, tokenizer_a)(principle)
    params = SamplingParams(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                            seed=args.seed if args.temperature else None)
    with ProgressDisplay(stream=sys.stderr) as progress:
        progress.start(f"answers of {args.model}", total=len(prompts), counted=True)
        answers_a = answer(model_a, tokenizer_a, prompts, params, args.batch_size, progress.advance)
        progress.start(f"answers of {args.winrate}", total=len(prompts), counted=True)
        answers_b = answer(model_b, tokenizer_b, prompts, params, args.batch_size, progress.advance)
    result = win_rate(prompts, answers_a, answers_b, judgement, seed=args.seed, resamples=args.resamples)
    m = result["metrics"]
    print(f"win rate of {args.model} against {args.winrate} on {m['n']} prompts ({args.task}), judge {args.winrate_judge}: "
          f"{m['win_rate']:.1%} (95% CI {m['win_rate_ci'][0]:.1%}-{m['win_rate_ci'][1]:.1%}, ± {m['win_rate_stderr']:.1%}); "
          f"{m['wins']} wins, {m['ties']} ties, {m['losses']} losses; order randomised "
          f"(the answer shown first won {m['first_shown_wins']:.0%} of decided items)")
    if args.json is not None:
        for item, prompt, a, b in zip(result["items"], prompts, answers_a, answers_b):
            item.update(prompt=prompt[-1]["content"], answer_a=a, answer_b=b)
        report = {"model": args.model, "opponent": args.winrate, "judge": args.winrate_judge, "prompts": args.task, **result}
        write_text_atomically(args.json, json.dumps(report, indent=1, ensure_ascii=False) + "\n")
        print(f"results: {args.json}")
    return 0


def winrate_prompts(args: argparse.Namespace) -> list[list[dict[str, str]]]:
    """--task as the prompt source: prompts:SPEC (builtin:train/heldout or a prompt JSONL), or any
    eval task, whose documents' questions become the prompts (with the task's system message)."""
    if args.task.startswith("prompts:"):
        return read_prompts(args.task[len("prompts:"):], args.limit, args.seed)
    from lmforge.eval.tasks import load_task

    task = load_task(args.task, args.data, split=args.split, seed=args.seed).limited(args.limit)
    system = args.system or getattr(task, "system", None)
    head = [{"role": "system", "content": system}] if system else []
    return [head + [{"role": "user", "content": doc.question}] for doc in task.docs]
