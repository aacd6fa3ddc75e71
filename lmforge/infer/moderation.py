"""Moderation: check what goes into a model and what comes out, refuse what a policy forbids.

A `Policy` (built from a YAML file by the CLI, `policy_from_dict`) holds
  rules     categories of regular expressions (case-insensitive, matched anywhere), each for the
            input (the user's messages), the output (the model's reply) or both;
  allow     expressions that clear a text before any rule is tried (the benign look-alikes a rule
            would otherwise catch: "kill the process", "shoot a photo");
  judge     optionally, the model itself (or another) as a classifier with a rubric: the chat
            prompt asks whether the text breaks the rubric, and the probability of "Yes" against
            "No" as the next token is compared with a threshold;
  refusal   the reply given instead, and
  log       a JSON-lines file that receives one record per refusal (time, stage, category, why,
            and the text unless log_text is false).

`Moderator.check(text, stage)` returns a `Verdict`; serve and chat call it on the input before
generating and on the output after, answering with the refusal and finish_reason
"content_filter" as OpenAI's API does.
"""

from __future__ import annotations

import json
import math
import re
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lmforge.infer.scoring import score_continuations
from lmforge.model.transformer import Transformer
from lmforge.tokenizer.chat import render_conversation
from lmforge.tokenizer.tokenizer import Tokenizer

__all__ = ["JudgeCheck", "Moderator", "Policy", "Rule", "Verdict", "policy_from_dict"]

STAGES = ("input", "output")
DEFAULT_REFUSAL = "I can't help with that request."
DEFAULT_RUBRIC = ("The text asks for or gives help to cause serious harm: weapons or explosives, violence against "
                  "people, self-harm, malware or breaking into systems, hard drugs, fraud or theft, hate or "
                  "harassment, or exposing someone's private data.")


@dataclass(frozen=True)
class Rule:
    category: str
    patterns: tuple[str, ...]
    stages: tuple[str, ...] = STAGES


@dataclass(frozen=True)
class JudgeCheck:
    rubric: str = DEFAULT_RUBRIC
    threshold: float = 0.5  # refuse when P(Yes) / (P(Yes) + P(No)) reaches it
    stages: tuple[str, ...] = ("input",)


@dataclass(frozen=True)
class Policy:
    name: str = "policy"
    rules: tuple[Rule, ...] = ()
    allow: tuple[str, ...] = ()
    judge: JudgeCheck | None = None
    refusal: str = DEFAULT_REFUSAL
    log: str | None = None
    log_text: bool = True


@dataclass(frozen=True)
class Verdict:
    flagged: bool
    stage: str = ""
    category: str = ""
    reason: str = ""  # the matched text, or the judge's probability
    score: float | None = None


OK = Verdict(False)


def _strings(value: Any, where: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
        raise ValueError(f"{where} must be a non-empty string or a list of non-empty strings")
    return tuple(value)


def _stages(value: Any, where: str) -> tuple[str, ...]:
    stages = _strings(value, where)
    bad = [s for s in stages if s not in STAGES]
    if bad:
        raise ValueError(f"{where}: unknown stage {bad[0]!r}; use input, output or both")
    return stages


def _compile(pattern: str, where: str) -> None:
    try:
        re.compile(pattern)
    except re.error as error:
        raise ValueError(f"{where}: not a valid regular expression ({error})") from None


def _check_keys(data: Mapping[str, Any], known: set[str], where: str) -> None:
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"{where}: unknown key {unknown[0]!r}; known: {', '.join(sorted(known))}")


def policy_from_dict(data: Any, source: str = "policy") -> Policy:
    """A Policy from parsed YAML; every problem is a ValueError naming `source` and the field."""
    if not isinstance(data, Mapping):
        raise ValueError(f"{source}: a moderation policy must be a mapping with 'rules' and/or 'judge'")
    _check_keys(data, {"name", "rules", "allow", "judge", "refusal", "log", "log_text"}, source)
    rules = []
    raw_rules = data.get("rules", [])
    if not isinstance(raw_rules, list):
        raise ValueError(f"{source}: rules must be a list")
    for index, raw in enumerate(raw_rules):
        where = f"{source}: rules[{index}]"
        if not isinstance(raw, Mapping):
            raise ValueError(f"{where} must be a mapping with category and patterns")
        _check_keys(raw, {"category", "patterns", "stages"}, where)
        if not isinstance(raw.get("category"), str) or not raw["category"]:
            raise ValueError(f"{where}.category must be a non-empty string")
        patterns = _strings(raw.get("patterns"), f"{where}.patterns")
        for number, pattern in enumerate(patterns):
            _compile(pattern, f"{where}.patterns[{number}]")
        rules.append(Rule(raw["category"], patterns, _stages(raw.get("stages", list(STAGES)), f"{where}.stages")))
    allow = _strings(data["allow"], f"{source}: allow") if data.get("allow") is not None else ()
    for number, pattern in enumerate(allow):
        _compile(pattern, f"{source}: allow[{number}]")
    judge = None
    if data.get("judge") is not None:
        raw = data["judge"]
        where = f"{source}: judge"
        if raw is True:
            raw = {}
        if not isinstance(raw, Mapping):
            raise ValueError(f"{where} must be a mapping (rubric, threshold, stages) or true")
        _check_keys(raw, {"rubric", "threshold", "stages"}, where)
        threshold = raw.get("threshold", 0.5)
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 < threshold < 1:
            raise ValueError(f"{where}.threshold must be a number in (0, 1), got {threshold!r}")
        rubric = raw.get("rubric", DEFAULT_RUBRIC)
        if not isinstance(rubric, str) or not rubric.strip():
            raise ValueError(f"{where}.rubric must be a non-empty string")
        judge = JudgeCheck(rubric.strip(), float(threshold), _stages(raw.get("stages", ["input"]), f"{where}.stages"))
    if not rules and judge is None:
        raise ValueError(f"{source}: the policy checks nothing; give 'rules' or a 'judge'")
    refusal = data.get("refusal", DEFAULT_REFUSAL)
    if not isinstance(refusal, str) or not refusal.strip():
        raise ValueError(f"{source}: refusal must be a non-empty string")
    log = data.get("log")
    if log is not None and (not isinstance(log, str) or not log):
        raise ValueError(f"{source}: log must be a file path")
    if not isinstance(data.get("log_text", True), bool):
        raise ValueError(f"{source}: log_text must be true or false")
    name = data.get("name", Path(source).stem)
    if not isinstance(name, str):
        raise ValueError(f"{source}: name must be a string")
    return Policy(name=name, rules=tuple(rules), allow=allow, judge=judge, refusal=refusal, log=log,
                  log_text=data.get("log_text", True))


@dataclass
class _Counts:
    checked: dict[str, int] = field(default_factory=lambda: {s: 0 for s in STAGES})
    refused: dict[str, int] = field(default_factory=lambda: {s: 0 for s in STAGES})


class Moderator:
    """Applies a Policy; `judge` is (model, tokenizer) when the policy has a judge check.
    Thread-safe: the server calls it from several worker threads."""

    def __init__(self, policy: Policy, judge: tuple[Transformer, Tokenizer] | None = None) -> None:
        if policy.judge is not None and judge is None:
            raise ValueError(f"policy {policy.name!r} has a judge check: give the judging model")
        self.policy = policy
        self.judge = judge
        self._rules = [(rule, [re.compile(p, re.IGNORECASE) for p in rule.patterns]) for rule in policy.rules]
        self._allow = [re.compile(p, re.IGNORECASE) for p in policy.allow]
        self._lock = threading.Lock()
        self.counts = _Counts()

    @property
    def refusal(self) -> str:
        return self.policy.refusal

    def applies_to(self, stage: str) -> bool:
        return any(stage in rule.stages for rule in self.policy.rules) or (
            self.policy.judge is not None and stage in self.policy.judge.stages)

    def check(self, text: str, stage: str) -> Verdict:
        """Rules first (after the allow list), then the judge; logs and counts a refusal."""
        if stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
        verdict = self._verdict(text, stage)
        with self._lock:
            self.counts.checked[stage] += 1
            if verdict.flagged:
                self.counts.refused[stage] += 1
                self._log(verdict, text)
        return verdict

    def _verdict(self, text: str, stage: str) -> Verdict:
        if not text.strip():
            return OK
        cleared = text
        for pattern in self._allow:  # allowed phrases are blanked out before the rules look
            cleared = pattern.sub(" ", cleared)
        for rule, patterns in self._rules:
            if stage in rule.stages:
                for pattern in patterns:
                    match = pattern.search(cleared)
                    if match:
                        return Verdict(True, stage, rule.category, f"matched {match.group()!r}")
        judge = self.policy.judge
        if judge is not None and stage in judge.stages:
            probability = self.judge_probability(text, stage)
            if probability >= judge.threshold:
                return Verdict(True, stage, "judge", f"P(violates rubric) = {probability:.3f}", probability)
        return OK

    def judge_probability(self, text: str, stage: str) -> float:
        """P(Yes) / (P(Yes) + P(No)) of the judging model asked whether `text` breaks the rubric."""
        assert self.judge is not None and self.policy.judge is not None
        model, tokenizer = self.judge
        what = "request sent to an assistant" if stage == "input" else "reply written by an assistant"
        question = (f"Rubric: {self.policy.judge.rubric}\n\nHere is a {what}:\n<<<\n{text[:4000]}\n>>>\n\n"
                    "Does it break the rubric? Answer with Yes or No only.")
        context, _ = render_conversation(tokenizer, [{"role": "user", "content": question}], add_generation_prompt=True)
        options = [tokenizer.encode(word) for word in ("Yes", "No")]
        with torch.inference_mode():
            yes, no = score_continuations(model, [(context, options[0]), (context, options[1])], batch_size=2)
        top = max(yes.logprob, no.logprob)
        p_yes, p_no = math.exp(yes.logprob - top), math.exp(no.logprob - top)
        return p_yes / (p_yes + p_no)

    def _log(self, verdict: Verdict, text: str) -> None:
        if self.policy.log is None:
            return
        record = {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "policy": self.policy.name, "stage": verdict.stage,
                  "category": verdict.category, "reason": verdict.reason}
        if self.policy.log_text:
            record["text"] = text[:2000]
        path = Path(self.policy.log)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as handle:  # one line per write: whole records, appended
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")


def user_text(messages: list[dict[str, Any]]) -> str:
    """The text of a conversation's user messages (what an input check reads)."""
    parts = []
    for message in messages:
        if message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, str):
                parts.append(content)
            elif isinstance(content, list):  # OpenAI content parts
                parts += [p.get("text", "") for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)]
    return "\n".join(parts)
