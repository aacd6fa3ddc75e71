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

import torch

from lmforge.core.files import write_text_atomically
from lmforge.core.progress import ProgressDisplay
from lmforge.core.sandbox import SandboxConfig
from lmforge.eval.code import score_code
from lmforge.eval.extract import exact_match, extract_answer, is_number, numeric_match, strict_match
from lmforge.eval.judge import Judge, judge_pairwise, judge_rubric
from lmforge.eval.metrics import SIMILARITY_METRICS, require_metric, similarity_metrics
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
from lmforge.infer.engine import Completion, Engine
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
    # Sampled generation (code: several samples per problem for pass@k) -------------------------
    samples: int = 1  # completions per problem (code tasks)
    temperature: float = 0.0  # 0: greedy
    top_p: float | None = None
    pass_k: tuple[int, ...] = (1, 10, 100)  # reported where k <= samples
    sandbox_timeout_s: float = 10.0  # wall clock per program run
    workers: int | None = None  # programs run at a time (default: the CPU count)
    resamples: int = 1000  # bootstrap resamples of confidence intervals
    judge_mode: str = "pairwise"  # judged tasks: pairwise (against references or a baseline) or rubric

    def __post_init__(self) -> None:
        problems = []
        if self.samples < 1 or self.resamples < 1 or (self.workers is not None and self.workers < 1):
            problems.append("samples, resamples and workers must be positive")
        if self.samples > 1 and self.temperature <= 0:
            problems.append(f"{self.samples} samples per problem need a temperature > 0 (greedy samples are identical)")
        if not 0 <= self.temperature <= 100 or (self.top_p is not None and not 0 < self.top_p <= 1):
            problems.append(f"temperature must be in [0, 100] and top_p in (0, 1], got {self.temperature}, {self.top_p}")
        if not self.pass_k or any(k < 1 for k in self.pass_k) or not self.sandbox_timeout_s > 0:
            problems.append("pass_k must be positive integers and sandbox_timeout_s positive")
        if self.judge_mode not in ("pairwise", "rubric"):
            problems.append(f"judge_mode must be pairwise or rubric, got {self.judge_mode!r}")
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


def primary_metric(kind: str, metrics: dict[str, Any], metric: str = "") -> str:
    """The headline metric of a run: acc (multiple choice), accuracy (generation: the extracted
    answer, numbers compared by value and text by exact match, over every document) or bits_per_byte.

    Generation runs also report exact_match (the extracted answer equals the gold text),
    strict_match (the whole reply is the answer, nothing around it) and numeric_match. A task's
    `metric` overrides: rouge -> rougeL, bleu, chrf, exact -> exact_match, numeric -> numeric_match.
    Code: pass@1; judged: win_rate (pairwise) or rubric_score."""
    if kind == "code":
        return "pass@1"
    if kind == "judged":
        return "rubric_score" if "rubric_score" in metrics else "win_rate"
    if kind == "generation" and metric:
        return {"rouge": "rougeL", "bleu": "bleu", "chrf": "chrf", "exact": "exact_match",
                "numeric": "numeric_match"}[metric]
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
             progress: ProgressDisplay | None = None, *, judge: Judge | None = None,
             baseline: tuple[Transformer, Tokenizer] | None = None) -> dict[str, Any]:
    """Evaluate `task` once per entry of `config.shots`; `progress` shows a bar per pass.
    Judged tasks need a `judge`; their pairwise opponent is `baseline`'s answers when given,
    else the task's reference answers."""
    progress = progress or ProgressDisplay(enabled=False)
    was_training = model.training  # the engine and the scorer switch to eval mode; put it back after
    try:
        return _evaluate(model, tokenizer, task, config, progress, judge, baseline)
    finally:
        model.train(was_training)


def _evaluate(model: Transformer, tokenizer: Tokenizer, task: Task, config: EvalConfig,
              progress: ProgressDisplay, judge: Judge | None = None,
              baseline: tuple[Transformer, Tokenizer] | None = None) -> dict[str, Any]:
    if config.cot and task.kind != "generation":
        raise ValueError(f"--cot applies to generation tasks; {task.name} is scored by {task.kind.replace('_', ' ')}")
    if task.kind == "perplexity" and config.shots != (0,):
        raise ValueError("perplexity tasks take no shots")
    require_metric(task.metric)  # a missing rouge-score or sacrebleu fails now, not after generating
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
        elif task.kind == "code":
            run = _code(model, tokenizer, task, k, config, progress)
        elif task.kind == "judged":
            run = _judged(model, tokenizer, task, k, config, progress, judge, baseline)
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
        "primary_metric": primary_metric(task.kind, runs[0]["metrics"], task.metric),
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


def _generation_prompts(model: Transformer, tokenizer: Tokenizer, task: Task, k: int,
                        config: EvalConfig) -> tuple[list[list[int]], int]:
    """Token ids of every document's generation prompt, and how many lost their oldest shots to fit."""
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
    return prompts, truncated


def _generate(model: Transformer, tokenizer: Tokenizer, task: Task, prompts: list[list[int]], config: EvalConfig,
              progress: ProgressDisplay, label: str, sampled: bool = False) -> list[Completion]:
    """Complete every prompt (greedy, or with the config's temperature/top_p when `sampled`)."""
    # Plain prompts stop where the model starts inventing the next question; chat stops at end of turn.
    stop = () if config.chat else task.prompt.stop
    params = SamplingParams(max_new_tokens=config.max_new_tokens, stop=stop,
                            temperature=config.temperature if sampled else 0.0, top_p=config.top_p if sampled else None)
    if sampled:
        torch.manual_seed(config.seed)  # no per-request seed: copies of one prompt must differ
    engine = Engine(model, tokenizer, max_batch_size=config.batch_size)
    progress.start(label, len(prompts), counted=True)
    return engine.generate(prompts, params, on_finish=progress.advance)


def _generation(model: Transformer, tokenizer: Tokenizer, task: Task, k: int, config: EvalConfig,
                progress: ProgressDisplay) -> dict[str, Any]:
    prompts, truncated = _generation_prompts(model, tokenizer, task, k, config)
    completions = _generate(model, tokenizer, task, prompts, config, progress,
                            f"{task.name} {k}-shot{' CoT' if config.cot else ''}")
    if task.metric in SIMILARITY_METRICS:
        return _similarity(task, k, config, completions, truncated)
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


# -- text similarity, code, judged answers (lmforge.eval.metrics / code / judge) -------------------
def _similarity(task: Task, k: int, config: EvalConfig, completions: list[Completion], truncated: int) -> dict[str, Any]:
    """ROUGE, or BLEU and chrF, of the whole (stripped) answers against the references."""
    candidates = [c.text.strip() for c in completions]
    references = [doc.answer for doc in task.docs]
    metrics = similarity_metrics(task.metric, candidates, references, resamples=config.resamples, seed=config.seed)
    metrics["mean_output_tokens"] = sum(c.completion_tokens for c in completions) / max(1, len(completions))
    samples = [{"id": doc.id, "reference": ref, "candidate": cand, "tokens": c.completion_tokens,
                "finish": c.finish_reason} for doc, ref, cand, c in zip(task.docs, references, candidates, completions)]
    return {"shots": k, "n": len(task.docs), "metrics": metrics, "truncated_prompts": truncated,
            "example_prompt": _example_prompt(task, k, config), "samples": samples if config.keep_samples else []}


def _code(model: Transformer, tokenizer: Tokenizer, task: Task, k: int, config: EvalConfig,
          progress: ProgressDisplay) -> dict[str, Any]:
    """`config.samples` completions per problem, each run against the problem's tests in the sandbox.

    Plain prompts lose their trailing whitespace, and the program is that prompt + the completion.
    HumanEval prompts end with a newline after the docstring; byte-level BPE vocabularies (SmolLM2's,
    GPT-2's) write a newline and the next line's indentation as one token ("\\n   "), so a prompt ending
    in a lone "\\n" token asks the model to go on from a state its training text never had, and it
    starts a new top-level statement instead of the body (bigcode-evaluation-harness strips the
    prompt for the same reason). Chat prompts keep the question as it is."""
    if not config.chat:
        task = dataclasses.replace(task, docs=tuple(dataclasses.replace(d, question=d.question.rstrip())
                                                    for d in task.docs))
    prompts, truncated = _generation_prompts(model, tokenizer, task, k, config)
    n = config.samples
    completions = _generate(model, tokenizer, task, [ids for ids in prompts for _ in range(n)], config, progress,
                            f"{task.name}: {n} completion{'s' * (n > 1)} per problem", sampled=True)
    texts = [[c.text for c in completions[i * n:(i + 1) * n]] for i in range(len(prompts))]
    problems = [{"task_id": d.id, "prompt": d.question, "test": d.tests, "entry_point": d.entry_point} for d in task.docs]
    progress.start(f"{task.name}: running the programs", len(completions), counted=True)
    scored = score_code(problems, texts, chat=config.chat, ks=config.pass_k,
                        sandbox=SandboxConfig(timeout_s=config.sandbox_timeout_s), workers=config.workers,
                        on_finish=progress.advance, keep_samples=config.keep_samples, resamples=config.resamples,
                        seed=config.seed)
    metrics = scored["metrics"]
    metrics["mean_output_tokens"] = sum(c.completion_tokens for c in completions) / max(1, len(completions))
    return {"shots": k, "n": len(task.docs), "metrics": metrics, "truncated_prompts": truncated,
            "sampling": {"samples": n, "temperature": config.temperature, "top_p": config.top_p},
            "sandbox": scored["isolation"], "example_prompt": _example_prompt(task, k, config),
            "samples": scored["samples"]}


def _judged(model: Transformer, tokenizer: Tokenizer, task: Task, k: int, config: EvalConfig,
            progress: ProgressDisplay, judge: Judge | None,
            baseline: tuple[Transformer, Tokenizer] | None) -> dict[str, Any]:
    """Free-form answers, judged pairwise (both orders) against references or a baseline, or by rubric."""
    if judge is None:
        raise ValueError(f"{task.name} is judged by a model: give one (lmforge eval --judge MODEL)")
    pairwise = config.judge_mode == "pairwise"
    if pairwise and baseline is None and not all(doc.answer for doc in task.docs):
        raise ValueError(f"pairwise judging of {task.name} needs reference answers on every item or a baseline "
                         "model (--baseline MODEL); or grade each answer alone with --judge-mode rubric")
    prompts, truncated = _generation_prompts(model, tokenizer, task, k, config)
    answers = [c.text.strip() for c in _generate(model, tokenizer, task, prompts, config, progress,
                                                 f"{task.name}: answers")]
    questions, ids = [doc.question for doc in task.docs], [doc.id for doc in task.docs]
    opponent, opponents = "", []
    if pairwise:
        if baseline is not None:
            base_model, base_tokenizer = baseline
            base_prompts, _ = _generation_prompts(base_model, base_tokenizer, task, k, config)
            opponents = [c.text.strip() for c in _generate(base_model, base_tokenizer, task, base_prompts, config,
                                                           progress, f"{task.name}: baseline answers")]
            opponent = "baseline"
        else:
            opponents, opponent = [doc.answer for doc in task.docs], "reference"
        progress.start(f"{task.name}: judging both orders", 2 * len(answers), counted=True)
        judged = judge_pairwise(judge, questions, answers, opponents, ids=ids, progress=progress.advance,
                                resamples=config.resamples, seed=config.seed)
    else:
        progress.start(f"{task.name}: grading", len(answers), counted=True)
        judged = judge_rubric(judge, questions, answers, ids=ids, progress=progress.advance,
                              resamples=config.resamples, seed=config.seed)
    samples = []
    for i, item in enumerate(judged["items"]):
        entry = {"question": questions[i], "candidate": answers[i], **item}
        if pairwise:
            entry[opponent] = opponents[i]
        samples.append(entry)
    return {"shots": k, "n": len(task.docs), "metrics": judged["metrics"], "truncated_prompts": truncated,
            "judge": {"model": judge.name, "mode": config.judge_mode, "opponent": opponent or None},
            "example_prompt": _example_prompt(task, k, config), "samples": samples if config.keep_samples else []}


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
