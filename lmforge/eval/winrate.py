"""Win rates of one model against another, judged by a rule, a reward model or a model; rule compliance.

    answers_a = answer(model_a, tokenizer_a, prompts)
    answers_b = answer(model_b, tokenizer_b, prompts)
    result = win_rate(prompts, answers_a, answers_b, reward_judgement(rm, rm_tokenizer, pad_id))

A judgement is a function `(prompts, first answers, second answers) -> per item the probability that
the first answer is the better one` (1, 0 or 0.5 for a tie from rules and reward models; the judge
model's normalised belief otherwise). `win_rate` shows each pair in a random order (seeded), so a
judge's taste for whichever answer comes first cancels out on average; model judges are in
addition asked in both orders. An item scores 1 when model A's answer wins, 0.5 for a tie, 0 when
it loses; the win rate is the mean, with a bootstrap 95% interval and the normal-approximation
standard error.

The judges:
  rule_judgement(check)       a rule of the answer text (True/False or a number, higher is better)
  reward_judgement(rm, ...)   a reward model's scores (`lmforge.infer.reward`)
  model_judgement(judge, rubric)   a judging model (`lmforge.eval.judge.Judge`) asked which answer
                              follows the rubric better, in both orders

`compliance(answers, checks)` is the share of answers passing every rule, and each rule's share.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from lmforge.eval.judge import Judge
from lmforge.eval.metrics import bootstrap_ci
from lmforge.infer.engine import Engine
from lmforge.infer.reward import score_completions
from lmforge.infer.sampling import SamplingParams
from lmforge.model.heads import ScalarHeadModel
from lmforge.model.transformer import Transformer
from lmforge.tokenizer.chat import render_conversation
from lmforge.tokenizer.tokenizer import Tokenizer

__all__ = ["JUDGE_PROMPT", "Judgement", "answer", "compliance", "model_judgement", "reward_judgement", "rule_judgement",
           "win_rate"]

Messages = list[dict[str, str]]
Judgement = Callable[[Sequence[Messages], Sequence[str], Sequence[str]], list[float]]

JUDGE_PROMPT = (
    "Two responses to the same request are shown. Judge them by this principle only: {rubric}\n\n"
    "[Request]\n{request}\n\n[Response A]\n{first}\n\n[Response B]\n{second}\n\n"
    "Which response follows the principle better? Reply with one letter: A or B."
)


def answer(model: Transformer, tokenizer: Tokenizer, prompts: Sequence[Messages], params: SamplingParams,
           batch_size: int = 16, progress: Callable[[int], None] | None = None) -> list[str]:
    """The model's reply to each chat prompt (through its own chat template)."""
    ids = [render_conversation(tokenizer, list(p), add_generation_prompt=True)[0] for p in prompts]
    engine = Engine(model, tokenizer, max_batch_size=max(1, min(batch_size, len(ids))))
    return [c.text for c in engine.generate(ids, params, on_finish=progress)]


def _compare(first: float, second: float) -> float:
    return 1.0 if first > second else 0.0 if first < second else 0.5


def rule_judgement(check: Callable[[str], Any]) -> Judgement:
    """The answer the rule scores higher wins (a True/False rule: the compliant one); equal is a tie."""
    def judge(prompts: Sequence[Messages], first: Sequence[str], second: Sequence[str]) -> list[float]:
        return [_compare(float(check(a)), float(check(b))) for a, b in zip(first, second)]
    return judge


def reward_judgement(model: ScalarHeadModel, tokenizer: Tokenizer, pad_id: int | None, batch_size: int = 16) -> Judgement:
    """The answer with the higher reward wins."""
    def judge(prompts: Sequence[Messages], first: Sequence[str], second: Sequence[str]) -> list[float]:
        scores = score_completions(model, tokenizer, pad_id, list(prompts) * 2, list(first) + list(second),
                                   batch_size=batch_size)
        n = len(first)
        return [_compare(a, b) for a, b in zip(scores[:n], scores[n:])]
    return judge


def _request_text(prompt: Messages) -> str:
    return "\n".join(m["content"] for m in prompt if m["role"] != "system")


def model_judgement(judge: Judge, rubric: str) -> Judgement:
    """The judge model's probability that the first answer follows `rubric` better: its A/B verdict
    probabilities in both orders, averaged (so its position bias cancels)."""
    def judgement(prompts: Sequence[Messages], first: Sequence[str], second: Sequence[str]) -> list[float]:
        texts = []
        for prompt, a, b in zip(prompts, first, second):
            request, a, b = _request_text(prompt), judge.clip(a), judge.clip(b)
            texts.append(JUDGE_PROMPT.format(rubric=rubric, request=request, first=a, second=b))
            texts.append(JUDGE_PROMPT.format(rubric=rubric, request=request, first=b, second=a))
        verdicts = judge.choose(texts, ("A", "B")) if texts else []
        return [0.5 * (verdicts[2 * i][0] + verdicts[2 * i + 1][1]) for i in range(len(first))]
    return judgement


def win_rate(prompts: Sequence[Messages], answers_a: Sequence[str], answers_b: Sequence[str], judgement: Judgement,
             *, seed: int = 0, resamples: int = 1000) -> dict[str, Any]:
    """Model A's win rate against B (see module docstring): {"metrics": {...}, "items": [...]}."""
    n = len(prompts)
    if not n or len(answers_a) != n or len(answers_b) != n:
        raise ValueError(f"a win rate needs the same positive number of prompts and answers, got "
                         f"{n}, {len(answers_a)}, {len(answers_b)}")
    rng = random.Random(seed)
    a_first = [rng.random() < 0.5 for _ in range(n)]
    first = [a if flip else b for a, b, flip in zip(answers_a, answers_b, a_first)]
    second = [b if flip else a for a, b, flip in zip(answers_a, answers_b, a_first)]
    p_first = judgement(prompts, first, second)
    p_a = [p if flip else 1.0 - p for p, flip in zip(p_first, a_first)]
    points = [1.0 if p > 0.5 else 0.0 if p < 0.5 else 0.5 for p in p_a]
    mean = sum(points) / n
    stderr = math.sqrt(sum((x - mean) ** 2 for x in points) / (n - 1) / n) if n > 1 else float("nan")
    decided = [(pf > 0.5) for pf in p_first if pf != 0.5]
    metrics = {"n": n, "win_rate": mean, "win_rate_ci": list(bootstrap_ci(points, resamples=resamples, seed=seed)),
               "win_rate_stderr": stderr, "wins": points.count(1.0), "ties": points.count(0.5),
               "losses": points.count(0.0), "win_prob": sum(p_a) / n,
               "first_shown_wins": sum(decided) / len(decided) if decided else float("nan")}
    items = [{"a_shown_first": flip, "p_a": round(p, 4), "point": x} for flip, p, x in zip(a_first, p_a, points)]
    return {"metrics": metrics, "items": items}


def compliance(answers: Sequence[str], checks: Mapping[str, Callable[[str], bool]]) -> dict[str, Any]:
    """Share of answers passing every check ("all") and each check, with standard errors."""
    if not answers or not checks:
        raise ValueError("compliance needs answers and at least one rule")

    def rate(passed: list[bool]) -> dict[str, float]:
        p = sum(passed) / len(passed)
        return {"rate": p, "stderr": math.sqrt(p * (1 - p) / len(passed))}

    per_rule = {name: [bool(check(a)) for a in answers] for name, check in checks.items()}
    every = [all(column[i] for column in per_rule.values()) for i in range(len(answers))]
    return {"n": len(answers), "all": rate(every), **{name: rate(column) for name, column in per_rule.items()},
            "passed": every}
