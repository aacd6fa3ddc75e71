"""Model-as-judge: pairwise comparison with position swapping, and rubric grading.

The one place for judging free-form answers (open-ended evaluation, win rates of aligned models).
Any local model can judge; its verdict is read from log-likelihoods, not parsed from text: the
judge prompt is followed by each possible verdict ("A", "B", "tie" / "1".."5") as the start of
the judge's reply, and the verdicts' probabilities are normalised over those options. So every
item gets a verdict, and a weak judge shows up as disagreement rather than as unparseable text.

Pairwise: each item is judged twice, with the answers in both orders. A verdict that holds in
both orders decides the item; when the two orders disagree the item is a tie. Reported:
win_rate (wins + ties/2 of answer set "a", with a bootstrap 95% interval), wins/ties/losses,
agreement (share of items whose two orders give the same verdict), position_a_rate (share of
non-tie single verdicts that chose whichever answer was shown first: 0.5 is unbiased),
tie_vote_rate and win_prob (the mean probability of "a" winning over both orders).

Rubric: the judge grades each answer from 1 to 5; the score is the expected grade under the
judge's normalised probabilities (and the most likely grade is kept too).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from lmforge.eval.metrics import bootstrap_ci
from lmforge.infer.scoring import score_continuations
from lmforge.model.transformer import Transformer
from lmforge.tokenizer.chat import render_conversation
from lmforge.tokenizer.tokenizer import Tokenizer

__all__ = ["PAIRWISE_PROMPT", "RUBRIC_PROMPT", "Judge", "judge_pairwise", "judge_rubric"]

PAIRWISE_PROMPT = (
    "Compare two answers to the same request and decide which one is better: more helpful, correct, "
    "relevant and clearly written. Do not prefer an answer for its length or its position.\n\n"
    "[Request]\n{question}\n\n[Answer A]\n{first}\n\n[Answer B]\n{second}\n\n"
    "Which answer is better? Reply with one word: A, B, or tie."
)
PAIRWISE_VERDICTS = ("A", "B", "tie")

RUBRIC_PROMPT = (
    "Grade how well the answer responds to the request, from 1 (poor: wrong, off-topic or unhelpful) to "
    "5 (excellent: correct, helpful, relevant and clearly written).\n\n"
    "[Request]\n{question}\n\n[Answer]\n{answer}\n\nReply with one number from 1 to 5."
)
RUBRIC_GRADES = ("1", "2", "3", "4", "5")


@dataclass(frozen=True)
class Judge:
    """A judging model. Prompts go through its chat template when it has one, else as plain text
    followed by "\\nVerdict:"."""

    model: Transformer
    tokenizer: Tokenizer
    name: str = "judge"
    batch_size: int = 16
    max_batch_tokens: int = 8192
    max_answer_chars: int = 3000  # longer answers are cut (with a marker) to keep prompts in context

    def _context(self, text: str) -> tuple[list[int], bool]:
        if self.tokenizer.chat_template:
            ids, _ = render_conversation(self.tokenizer, [{"role": "user", "content": text}], add_generation_prompt=True)
            return ids, True
        bos = [self.tokenizer.bos_id] if self.tokenizer.add_bos_token and self.tokenizer.bos_id is not None else []
        return bos + self.tokenizer.encode(text + "\nVerdict:"), False

    def clip(self, answer: str) -> str:
        return answer if len(answer) <= self.max_answer_chars else answer[: self.max_answer_chars] + " [...]"

    def choose(self, prompts: Sequence[str], options: Sequence[str],
               progress: Callable[[int], None] | None = None) -> list[list[float]]:
        """For each prompt, the judge's probabilities of `options` as its reply, normalised over them."""
        contexts, continuations = [], []
        for text in prompts:
            context, chat = self._context(text)
            contexts.append(context)
            continuations.append([self.tokenizer.encode(option if chat else " " + option) for option in options])
        if all(len(ids) == 1 for row in continuations for ids in row):  # one forward pass per prompt
            logprobs = self._next_token_logprobs(contexts, [[ids[0] for ids in row] for row in continuations], progress)
        else:
            requests = [(context, ids) for context, row in zip(contexts, continuations) for ids in row]
            scores = score_continuations(self.model, requests, batch_size=self.batch_size,
                                         max_batch_tokens=self.max_batch_tokens)
            logprobs = [[s.logprob for s in scores[i * len(options):(i + 1) * len(options)]] for i in range(len(prompts))]
            if progress is not None:
                progress(len(prompts))
        out = []
        for row in logprobs:
            top = max(row)
            weights = [math.exp(lp - top) for lp in row]
            out.append([w / sum(weights) for w in weights])
        return out

    @torch.no_grad()
    def _next_token_logprobs(self, contexts: list[list[int]], tokens: list[list[int]],
                             progress: Callable[[int], None] | None) -> list[list[float]]:
        """log p(token | context) for single-token options, from the last position of each context
        (right-padded batches, longest first)."""
        window = self.model.config.max_seq_len
        contexts = [c[-window:] for c in contexts]
        device = self.model.lm_head.weight.device
        was_training = self.model.training
        self.model.eval()
        out: list[list[float]] = [[] for _ in contexts]
        order = sorted(range(len(contexts)), key=lambda i: -len(contexts[i]))
        try:
            start = 0
            while start < len(order):
                rows = max(1, min(self.batch_size, self.max_batch_tokens // len(contexts[order[start]])))
                batch = order[start:start + rows]
                start += len(batch)
                lengths = torch.tensor([len(contexts[i]) for i in batch], device=device)
                ids = torch.zeros((len(batch), int(lengths.max())), dtype=torch.long, device=device)
                for row, i in enumerate(batch):
                    ids[row, :len(contexts[i])] = torch.tensor(contexts[i], dtype=torch.long)
                mask = torch.arange(ids.shape[1], device=device)[None, :] < lengths[:, None]
                logits = self.model(ids, padding_mask=mask)[torch.arange(len(batch), device=device), lengths - 1]
                logprobs = torch.log_softmax(logits.float(), dim=-1)
                for row, i in enumerate(batch):
                    out[i] = logprobs[row, tokens[i]].tolist()
                if progress is not None:
                    progress(len(batch))
        finally:
            self.model.train(was_training)
        return out


def _check_lengths(*columns: Sequence[str]) -> None:
    lengths = {len(c) for c in columns}
    if len(lengths) != 1 or 0 in lengths:
        raise ValueError(f"judging needs the same positive number of questions and answers, got {[len(c) for c in columns]}")


def judge_pairwise(judge: Judge, questions: Sequence[str], answers_a: Sequence[str], answers_b: Sequence[str], *,
                   ids: Sequence[str] | None = None, progress: Callable[[int], None] | None = None,
                   resamples: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Judge answer set "a" against "b" in both orders (see module docstring). Returns
    {"metrics": {...}, "items": [...]}; item verdicts name the winning set: "a", "b" or "tie"."""
    _check_lengths(questions, answers_a, answers_b)
    ids = list(ids) if ids is not None else [str(i) for i in range(len(questions))]
    prompts = []
    for question, a, b in zip(questions, answers_a, answers_b):
        a, b = judge.clip(a), judge.clip(b)
        prompts.append(PAIRWISE_PROMPT.format(question=question, first=a, second=b))  # a shown first
        prompts.append(PAIRWISE_PROMPT.format(question=question, first=b, second=a))  # b shown first
    probabilities = judge.choose(prompts, PAIRWISE_VERDICTS, progress)
    items, points, agree, first_votes, tie_votes, win_prob = [], [], [], [], [], []
    for i, item_id in enumerate(ids):
        a_first, b_first = probabilities[2 * i], probabilities[2 * i + 1]
        # In terms of the answer sets: position A of the first prompt is a, of the second b.
        verdict_ab = ("a", "b", "tie")[max(range(3), key=lambda j: a_first[j])]
        verdict_ba = ("b", "a", "tie")[max(range(3), key=lambda j: b_first[j])]
        winner = verdict_ab if verdict_ab == verdict_ba else "tie"
        points.append({"a": 1.0, "tie": 0.5, "b": 0.0}[winner])
        agree.append(float(verdict_ab == verdict_ba))
        for verdict, shown_first in ((verdict_ab, "a"), (verdict_ba, "b")):
            if verdict == "tie":
                tie_votes.append(1.0)
            else:
                tie_votes.append(0.0)
                first_votes.append(float(verdict == shown_first))
        win_prob.append(0.5 * (a_first[0] + b_first[1]))
        items.append({"id": item_id, "winner": winner, "verdict_a_first": verdict_ab, "verdict_b_first": verdict_ba,
                      "p_a_first": [round(p, 4) for p in a_first], "p_b_first": [round(p, 4) for p in b_first]})
    n = len(items)
    metrics = {
        "n": n,
        "win_rate": sum(points) / n,
        "win_rate_ci": list(bootstrap_ci(points, resamples=resamples, seed=seed)),
        "wins": sum(p == 1.0 for p in points),
        "ties": sum(p == 0.5 for p in points),
        "losses": sum(p == 0.0 for p in points),
        "agreement": sum(agree) / n,
        "agreement_ci": list(bootstrap_ci(agree, resamples=resamples, seed=seed)),
        "position_a_rate": sum(first_votes) / len(first_votes) if first_votes else float("nan"),
        "tie_vote_rate": sum(tie_votes) / len(tie_votes),
        "win_prob": sum(win_prob) / n,
    }
    return {"metrics": metrics, "items": items}


def judge_rubric(judge: Judge, questions: Sequence[str], answers: Sequence[str], *, ids: Sequence[str] | None = None,
                 progress: Callable[[int], None] | None = None, resamples: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Grade each answer 1..5 (see module docstring). Returns {"metrics", "items"}."""
    _check_lengths(questions, answers)
    ids = list(ids) if ids is not None else [str(i) for i in range(len(questions))]
    prompts = [RUBRIC_PROMPT.format(question=q, answer=judge.clip(a)) for q, a in zip(questions, answers)]
    probabilities = judge.choose(prompts, RUBRIC_GRADES, progress)
    expected = [sum((g + 1) * p for g, p in enumerate(probs)) for probs in probabilities]
    likeliest = [1 + max(range(5), key=lambda g: probs[g]) for probs in probabilities]
    items = [{"id": item_id, "score": round(e, 4), "grade": g, "p": [round(p, 4) for p in probs]}
             for item_id, e, g, probs in zip(ids, expected, likeliest, probabilities)]
    n = len(items)
    metrics = {"n": n, "rubric_score": sum(expected) / n,
               "rubric_score_ci": list(bootstrap_ci(expected, resamples=resamples, seed=seed)),
               "rubric_grade_mean": sum(likeliest) / n}
    return {"metrics": metrics, "items": items}
