"""Preference data from the model's own samples: verifiable pairs and the constitutional recipe.

Both sample from the policy itself (on-policy) with the KV-cache engine and let a judge decide:

* `verifiable_pairs`: several sampled answers per question of a generated task (lmforge.data.synthetic);
  `is_correct(item, text)` (a plain function of the task; the CLI passes the evaluation layer's answer
  check) splits them, and each question with both kinds gives pairs correct > incorrect.
* `constitutional_pairs`: the model answers, critiques its answer against a principle drawn from a
  constitution, and revises it; the pair is revision > original when the judge prefers the revision,
  else it is dropped and counted. The judge is a plain function handed in (the CLI builds one from
  the principle's rule, a reward model, or the model itself asked the principle's rubric).

The result is a list of `PreferencePair`s plus counts of what was kept and dropped, ready for
`write_preference_jsonl` and `lmforge dpo`.
"""

from __future__ import annotations

import dataclasses
import random
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from lmforge.data.constitution import Constitution, Principle
from lmforge.data.preference import PreferencePair
from lmforge.data.synthetic import TaskItem
from lmforge.infer.engine import Engine
from lmforge.infer.sampling import SamplingParams
from lmforge.model.transformer import Transformer
from lmforge.tokenizer.chat import render_conversation
from lmforge.tokenizer.tokenizer import Tokenizer

__all__ = ["FeedbackReport", "constitutional_pairs", "sample_answers", "verifiable_pairs"]

Messages = list[dict[str, str]]
ProgressFn = Callable[[int], None]
# prefer(prompts, revisions, answers, principles) -> per item, whether the revision is better
PreferFn = Callable[[Sequence[Messages], Sequence[str], Sequence[str], Sequence[Principle]], list[bool]]


@dataclass
class FeedbackReport:
    """What a pair-making pass did: prompts seen, pairs made, and why the others gave none."""

    prompts: int = 0
    pairs: int = 0
    dropped: Counter = field(default_factory=Counter)  # reason -> prompts
    details: dict[str, float] = field(default_factory=dict)

    def line(self) -> str:
        dropped = ", ".join(f"{n} {reason}" for reason, n in sorted(self.dropped.items())) or "none"
        extra = "".join(f", {k} {v:.3g}" for k, v in self.details.items())
        return f"{self.pairs} pairs from {self.prompts} prompts (dropped: {dropped}{extra})"


def sample_answers(model: Transformer, tokenizer: Tokenizer, conversations: Sequence[Messages], params: SamplingParams,
                   n: int = 1, batch_size: int = 32, seed: int = 0, progress: ProgressFn | None = None) -> list[list[str]]:
    """`n` answers to each conversation (n > 1 needs a temperature), all in one batched generation.
    Sampling draws from a torch generator seeded with `seed` (the caller's random state is left
    alone), so a run is reproducible; `params.seed` is ignored, since one seed for every sequence
    would make the `n` answers identical."""
    if n > 1 and params.greedy:
        raise ValueError("several answers per prompt need sampling (a temperature above 0)")
    prompts = [render_conversation(tokenizer, list(c), add_generation_prompt=True)[0] for c in conversations]
    engine = Engine(model, tokenizer, max_batch_size=max(1, min(batch_size, len(prompts) * n)))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        completions = engine.generate([p for p in prompts for _ in range(n)], dataclasses.replace(params, seed=None),
                                      on_finish=progress)
    return [[c.text for c in completions[i * n:(i + 1) * n]] for i in range(len(prompts))]


def verifiable_pairs(model: Transformer, tokenizer: Tokenizer, items: Sequence[TaskItem],
                     is_correct: Callable[[TaskItem, str], bool], *, samples: int = 4,
                     params: SamplingParams = SamplingParams(max_new_tokens=48, temperature=1.0, seed=0),
                     pairs_per_prompt: int = 1, batch_size: int = 32, seed: int = 0,
                     progress: ProgressFn | None = None) -> tuple[list[PreferencePair], FeedbackReport]:
    """On-policy pairs from generated task questions: for each question, `samples` sampled answers
    judged by `is_correct`; up to `pairs_per_prompt` pairs of a correct and an incorrect answer
    (distinct texts, drawn at random with `seed`). Questions whose answers are all right or all wrong
    give no pair and are counted."""
    answers = sample_answers(model, tokenizer, [item.prompt_messages() for item in items], params, samples,
                             batch_size, seed, progress)
    rng = random.Random(seed)
    pairs, report = [], FeedbackReport(prompts=len(items))
    solved = 0
    for item, texts in zip(items, answers):
        unique = list(dict.fromkeys(t for t in texts if t.strip()))
        right = [t for t in unique if is_correct(item, t)]
        wrong = [t for t in unique if t not in right]
        solved += sum(is_correct(item, t) for t in texts)
        if not right or not wrong:
            report.dropped["all answers correct" if right else "no correct answer"] += 1
            continue
        combos = [(r, w) for r in right for w in wrong]
        for chosen, rejected in rng.sample(combos, min(pairs_per_prompt, len(combos))):
            pairs.append(PreferencePair(tuple(item.prompt_messages()), ({"role": "assistant", "content": chosen},),
                                        ({"role": "assistant", "content": rejected},), f"task:{item.task}", len(pairs) + 1))
    report.pairs = len(pairs)
    report.details["sample accuracy"] = solved / max(1, len(items) * samples)
    return pairs, report


def constitutional_pairs(model: Transformer, tokenizer: Tokenizer, prompts: Sequence[Messages],
                         constitution: Constitution, prefer: PreferFn, *,
                         params: SamplingParams = SamplingParams(max_new_tokens=96, temperature=0.0),
                         batch_size: int = 32, seed: int = 0, progress: ProgressFn | None = None
                         ) -> tuple[list[PreferencePair], FeedbackReport]:
    """The constitutional recipe (Bai et al., 2022): answer, critique against a drawn principle,
    revise; keep (revision > original) where `prefer` judges the revision better under that principle."""
    rng = random.Random(seed)
    drawn: list[Principle] = [constitution.draw(rng) for _ in prompts]
    answers = [a[0] for a in sample_answers(model, tokenizer, prompts, params, 1, batch_size, seed, progress)]
    critique_chats = [list(p) + [{"role": "assistant", "content": a}, {"role": "user", "content": pr.critique}]
                      for p, a, pr in zip(prompts, answers, drawn)]
    critiques = [c[0] for c in sample_answers(model, tokenizer, critique_chats, params, 1, batch_size, seed + 1, progress)]
    revision_chats = [chat + [{"role": "assistant", "content": c}, {"role": "user", "content": pr.revision}]
                      for chat, c, pr in zip(critique_chats, critiques, drawn)]
    revisions = [r[0] for r in sample_answers(model, tokenizer, revision_chats, params, 1, batch_size, seed + 2, progress)]
    revisions = [constitution.clean_revision(r) for r in revisions]
    candidates = [i for i, (a, r) in enumerate(zip(answers, revisions)) if r.strip() and r.strip() != a.strip()]
    verdicts = dict(zip(candidates, prefer([prompts[i] for i in candidates], [revisions[i] for i in candidates],
                                           [answers[i] for i in candidates], [drawn[i] for i in candidates])
                        if candidates else []))
    pairs, report = [], FeedbackReport(prompts=len(prompts))
    for index, (prompt, answer, revision, principle) in enumerate(zip(prompts, answers, revisions, drawn)):
        if not revision.strip():
            report.dropped["empty revision"] += 1
        elif revision.strip() == answer.strip():
            report.dropped["revision identical to the answer"] += 1
        elif not verdicts[index]:
            report.dropped["judge did not prefer the revision"] += 1
        else:
            pairs.append(PreferencePair(tuple(prompt), ({"role": "assistant", "content": revision},),
                                        ({"role": "assistant", "content": answer},), f"constitution:{principle.name}",
                                        len(pairs) + 1))
    report.pairs = len(pairs)
    return pairs, report
