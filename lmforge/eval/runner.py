"""Run a task on a model: k-shot prompts -> batched scoring or generation -> metrics and samples.

`evaluate(model, tokenizer, task, EvalConfig(...))` returns a JSON-ready dict:
    {"lmforge_eval": 1, "task": ..., "kind": ..., "config": {...},
     "runs": [{"shots": k, "n": ..., "metrics": {...}, "wall_s": ..., "samples": [...]}, ...],
     "wall_s": ...}
one run per requested number of shots. `task_scorer` wraps a task and a config as the
before/after score of a fine-tuning run.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from dataclasses import dataclass
from typing import Any

from lmforge.core.files import write_text_atomically
from lmforge.core.progress import ProgressDisplay
from lmforge.eval.extract import exact_match, extract_answer, is_number, numeric_match, strict_match
from lmforge.eval.prompts import (
    chat_messages,
    describe_prompt,
    encode_choices,
    plain_prompt,
    prefix_token_id,
    prompt_ids,
    select_shots,
)
from lmforge.eval.tasks import Task
from lmforge.infer.engine import Engine
from lmforge.infer.sampling import SamplingParams
from lmforge.infer.scoring import rolling_windows, score_continuations, score_rolling
from lmforge.model.transformer import Transformer
from lmforge.tokenizer.tokenizer import Tokenizer

__all__ = ["EvalConfig", "evaluate", "primary_metric", "task_scorer"]

RESULTS_VERSION = 1


@dataclass(frozen=True)
class EvalConfig:
    """How to evaluate. Frozen; the CLI builds it from flags."""

    shots: tuple[int, ...] = (0,)
    limit: int | None = None  # first N documents (perplexity: first N tokens)
    chat: bool = False  # prompts through the model's chat template
    cot: bool = False  # chain-of-thought prompting (generation tasks)
    seed: int = 1234  # few-shot selection
    system: str | None = None  # system prompt in chat mode
    batch_size: int = 32  # scoring rows / generation sequences per batch
    max_batch_tokens: int = 8192  # scoring: rows x padded length per batch
    max_new_tokens: int = 256  # generation budget per answer
    max_len: int | None = None  # perplexity window (default: the model context)
    stride: int | None = None  # perplexity: tokens scored per window (default: max_len)
    keep_samples: bool = True  # per-document predictions in the results

    def __post_init__(self) -> None:
        problems = []
        if not self.shots or any(not isinstance(k, int) or k < 0 for k in self.shots):
            problems.append(f"shots must be non-negative integers, got {self.shots!r}")
        if self.limit is not None and self.limit < 1:
            problems.append(f"limit must be positive, got {self.limit}")
        for name in ("batch_size", "max_batch_tokens", "max_new_tokens"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be positive, got {getattr(self, name)}")
        if self.max_len is not None and self.max_len < 2:
            problems.append(f"max_len must be at least 2, got {self.max_len}")
        if self.stride is not None and (self.stride < 1 or (self.max_len is not None and self.stride > self.max_len)):
            problems.append(f"stride must be in [1, max_len], got {self.stride}")
        if problems:
            raise ValueError("invalid eval config: " + "; ".join(problems))


def primary_metric(kind: str, metrics: dict[str, Any]) -> str:
    """The headline metric of a run: acc (multiple choice), accuracy (generation: the extracted
    answer, numbers compared by value and text by exact match, over every document) or bits_per_byte.

    Generation runs also report exact_match (the extracted answer equals the gold text),
    strict_match (the whole reply is the answer, nothing around it) and numeric_match."""
    if kind == "multiple_choice":
        return "acc"
    if kind == "generation":
        return "accuracy"
    return "bits_per_byte"


def _mean_stderr(values: Sequence[float]) -> tuple[float, float]:
    n = len(values)
    if n == 0:
        return float("nan"), float("nan")
    mean = sum(values) / n
    if n < 2:
        return mean, float("nan")
    variance = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(variance / n)


def evaluate(model: Transformer, tokenizer: Tokenizer, task: Task, config: EvalConfig = EvalConfig(),
             progress: ProgressDisplay | None = None) -> dict[str, Any]:
    """Evaluate `task` once per entry of `config.shots`; `progress` shows a bar per pass."""
    progress = progress or ProgressDisplay(enabled=False)
    was_training = model.training  # the engine and the scorer switch to eval mode; put it back after
    try:
        return _evaluate(model, tokenizer, task, config, progress)
    finally:
        model.train(was_training)


def _evaluate(model: Transformer, tokenizer: Tokenizer, task: Task, config: EvalConfig,
              progress: ProgressDisplay) -> dict[str, Any]:
    if config.cot and task.kind != "generation":
        raise ValueError(f"--cot applies to generation tasks; {task.name} is scored by {task.kind.replace('_', ' ')}")
    if task.kind == "perplexity" and config.shots != (0,):
        raise ValueError("perplexity tasks take no shots")
    if task.kind != "perplexity":
        task = task.limited(config.limit)
    started = time.perf_counter()
    runs = []
    for k in config.shots:
        begin = time.perf_counter()
        if task.kind == "multiple_choice":
            run = _multiple_choice(model, tokenizer, task, k, config, progress)
        elif task.kind == "generation":
            run = _generation(model, tokenizer, task, k, config, progress)
        else:
            run = _perplexity(model, tokenizer, task, config, progress)
        run["wall_s"] = round(time.perf_counter() - begin, 3)
        runs.append(run)
    return {
        "lmforge_eval": RESULTS_VERSION,
        "task": task.name,
        "kind": task.kind,
        "description": task.description,
        "source": task.source,
        "chance": task.chance,
        "shots_per_class": task.shots_per_class,
        "primary_metric": primary_metric(task.kind, runs[0]["metrics"]),
        "config": dataclasses.asdict(config),
        "runs": runs,
        "wall_s": round(time.perf_counter() - started, 3),
    }


def task_scorer(task: Task, config: EvalConfig, *, metrics: Sequence[str] = ("accuracy", "strict_match"),
                out_dir: str | Path | None = None,
                model_name: str = "model") -> Callable[[Transformer, Tokenizer, str], dict[str, float]]:
    """`task` under `config` as a function `(model, tokenizer, label) -> {metric: value, "n": docs}`.

    This is how fine-tuning measures a task before and after training through this runner
    (`lmforge.train.finetune.finetune(..., score=task_scorer(...))`; the train layer cannot import
    eval, so the caller hands the scorer down). With `out_dir`, every call also writes its full
    results, samples included, to OUT_DIR/{task}_{label}.json, where `lmforge report` finds them.
    """
    if len(config.shots) != 1:
        raise ValueError(f"a task scorer runs one number of shots, got {config.shots}")

    def score(model: Transformer, tokenizer: Tokenizer, label: str) -> dict[str, float]:
        results = evaluate(model, tokenizer, task, config)
        results["model"] = f"{model_name} ({label})"
        results["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        if out_dir is not None:
            write_text_atomically(Path(out_dir) / f"{task.name}_{label}.json",
                                  json.dumps(results, indent=1, ensure_ascii=False) + "\n")
        run = results["runs"][0]
        unknown = [name for name in metrics if name not in run["metrics"]]
        if unknown:
            raise ValueError(f"{task.name} reports no {', '.join(unknown)} (it has {', '.join(run['metrics'])})")
        return {name: run["metrics"][name] for name in metrics} | {"n": run["n"]}

    return score


# --------------------------------------------------------------------------------------------
def _example_prompt(task: Task, k: int, config: EvalConfig) -> str:
    doc = task.docs[0]
    shots = select_shots(task, 0, k, config.seed)
    if config.chat:
        return describe_prompt(chat_messages(task, doc, shots, config.cot, config.system))
    return plain_prompt(task, doc, shots, config.cot)


def _multiple_choice(model: Transformer, tokenizer: Tokenizer, task: Task, k: int, config: EvalConfig,
                     progress: ProgressDisplay) -> dict[str, Any]:
    requests, spans = [], []
    for index, doc in enumerate(task.docs):
        pairs = encode_choices(tokenizer, task, doc, select_shots(task, index, k, config.seed), chat=config.chat,
                               system=config.system)
        spans.append((len(requests), len(pairs)))
        requests.extend(pairs)
    progress.start(f"{task.name} {k}-shot", len(requests), counted=True)
    scores = score_continuations(model, requests, batch_size=config.batch_size, max_batch_tokens=config.max_batch_tokens,
                                 progress=progress.advance)
    correct, correct_norm, samples = [], [], []
    for doc, (first, count) in zip(task.docs, spans):
        logprobs = [s.logprob for s in scores[first:first + count]]
        lengths = [max(1, len(choice)) for choice in doc.choices]  # characters, as lm-evaluation-harness
        prediction = max(range(count), key=lambda i: logprobs[i])
        prediction_norm = max(range(count), key=lambda i: logprobs[i] / lengths[i])
        correct.append(float(prediction == doc.gold))
        correct_norm.append(float(prediction_norm == doc.gold))
        if config.keep_samples:
            samples.append({"id": doc.id, "gold": doc.gold, "pred": prediction, "pred_norm": prediction_norm,
                            "logprobs": [round(lp, 4) for lp in logprobs]})
    acc, acc_stderr = _mean_stderr(correct)
    acc_norm, acc_norm_stderr = _mean_stderr(correct_norm)
    metrics = {"acc": acc, "acc_stderr": acc_stderr, "acc_norm": acc_norm, "acc_norm_stderr": acc_norm_stderr}
    return {"shots": k, "n": len(task.docs), "metrics": metrics, "requests": len(requests),
            "example_prompt": _example_prompt(task, k, config), "samples": samples}


def _generation(model: Transformer, tokenizer: Tokenizer, task: Task, k: int, config: EvalConfig,
                progress: ProgressDisplay) -> dict[str, Any]:
    budget = model.config.max_seq_len - config.max_new_tokens
    if budget < 1:
        raise ValueError(f"max_new_tokens={config.max_new_tokens} leaves no room for a prompt in the "
                         f"{model.config.max_seq_len}-token context")
    prompts, truncated = [], 0
    for index, doc in enumerate(task.docs):
        ids = prompt_ids(tokenizer, task, doc, select_shots(task, index, k, config.seed), chat=config.chat,
                         cot=config.cot, system=config.system)
        if len(ids) > budget:  # keep the question: drop the oldest shots' tokens
            ids, truncated = ids[-budget:], truncated + 1
        prompts.append(ids)
    # Plain prompts stop where the model starts inventing the next question; chat stops at end of turn.
    params = SamplingParams(max_new_tokens=config.max_new_tokens, stop=() if config.chat else task.prompt.stop)
    engine = Engine(model, tokenizer, max_batch_size=config.batch_size)
    progress.start(f"{task.name} {k}-shot{' CoT' if config.cot else ''}", len(prompts), counted=True)
    completions = engine.generate(prompts, params, on_finish=progress.advance)
    correct, exact, strict, numeric, found, samples = [], [], [], [], [], []
    for doc, completion in zip(task.docs, completions):
        numeric_gold = is_number(doc.answer)
        answer, how = extract_answer(completion.text, numeric=numeric_gold)
        exact.append(float(exact_match(answer, doc.answer)))
        strict.append(float(strict_match(completion.text, doc.answer)))
        if numeric_gold:
            numeric.append(float(numeric_match(answer, doc.answer)))
        correct.append(numeric[-1] if numeric_gold else exact[-1])  # numbers by value, text by exact match
        found.append(float(how == "marker"))
        if config.keep_samples:
            samples.append({"id": doc.id, "gold": doc.answer, "extracted": answer, "how": how,
                            "correct": bool(correct[-1]), "strict": bool(strict[-1]), "output": completion.text,
                            "tokens": completion.completion_tokens, "finish": completion.finish_reason})
    metrics: dict[str, Any] = {}
    metrics["accuracy"], metrics["accuracy_stderr"] = _mean_stderr(correct)
    metrics["exact_match"], metrics["exact_match_stderr"] = _mean_stderr(exact)
    metrics["strict_match"], metrics["strict_match_stderr"] = _mean_stderr(strict)  # the whole reply is the answer
    if numeric:  # over the documents whose answer is a number (numeric_n of them)
        metrics["numeric_match"], metrics["numeric_match_stderr"] = _mean_stderr(numeric)
        metrics["numeric_n"] = len(numeric)
    metrics["answer_marker_rate"] = sum(found) / len(found) if found else float("nan")
    metrics["mean_output_tokens"] = sum(c.completion_tokens for c in completions) / max(1, len(completions))
    return {"shots": k, "n": len(task.docs), "metrics": metrics, "truncated_prompts": truncated,
            "example_prompt": _example_prompt(task, k, config), "samples": samples}


def _perplexity(model: Transformer, tokenizer: Tokenizer, task: Task, config: EvalConfig,
                progress: ProgressDisplay) -> dict[str, Any]:
    prefix = prefix_token_id(tokenizer)
    window = min(config.max_len or model.config.max_seq_len, model.config.max_seq_len)
    documents, n_bytes, n_words = [], 0, 0
    remaining = config.limit
    for doc in task.docs:
        if remaining is not None and remaining <= 0:
            break
        ids, offsets = tokenizer.encode_with_offsets(doc.question)
        if remaining is not None and len(ids) > remaining:
            ids, offsets = ids[:remaining], offsets[:remaining]
        if not ids:
            continue
        end = offsets[-1][1]
        begin = 0 if prefix is not None else offsets[0][1]  # without a prefix the first token is not scored
        scored_text = doc.question[begin:end]
        n_bytes += len(scored_text.encode("utf-8"))
        n_words += len(scored_text.split())
        documents.append(ids)
        if remaining is not None:
            remaining -= len(ids)
    windows = sum(len(rolling_windows(ids, window, config.stride, prefix)) for ids in documents)
    progress.start(f"{task.name} perplexity", windows, counted=True)
    scores = score_rolling(model, documents, prefix_id=prefix, max_len=window, stride=config.stride,
                           batch_size=config.batch_size, max_batch_tokens=config.max_batch_tokens,
                           progress=progress.advance)
    logprob = sum(s.logprob for s in scores)
    tokens = sum(s.n_tokens for s in scores)
    if tokens == 0:
        raise ValueError(f"{task.name}: nothing to score (the text is a single token and the tokenizer has no BOS)")
    metrics = {
        "perplexity": math.exp(-logprob / tokens),
        "nll_per_token": -logprob / tokens,
        "bits_per_byte": -logprob / (n_bytes * math.log(2)) if n_bytes else float("nan"),
        "byte_perplexity": math.exp(-logprob / n_bytes) if n_bytes else float("nan"),
        "word_perplexity": math.exp(-logprob / n_words) if n_words else float("nan"),
        "tokens": tokens,
        "bytes": n_bytes,
        "words": n_words,
        "logprob": logprob,
    }
    return {"shots": 0, "n": len(documents), "metrics": metrics, "window": window,
            "stride": config.stride or window, "windows": windows, "samples": []}
