"""lmforge.eval (layer 5): tasks, k-shot prompts, metrics, answer extraction, reports.

    from lmforge.eval import EvalConfig, evaluate, load_task
    results = evaluate(model, tokenizer, load_task("arc_easy"), EvalConfig(shots=(0, 5)))

Imports reach down to infer (scoring, engine), model, tokenizer, io and core; never train.
The lm-evaluation-harness adapter lives in `lmforge.eval.harness` and imports lm_eval lazily.
"""

from lmforge.eval.extract import exact_match, extract_answer, numeric_match
from lmforge.eval.runner import EvalConfig, evaluate, primary_metric
from lmforge.eval.tasks import Doc, PromptFormat, Task, load_task

__all__ = [
    "Doc",
    "EvalConfig",
    "PromptFormat",
    "Task",
    "evaluate",
    "exact_match",
    "extract_answer",
    "load_task",
    "numeric_match",
    "primary_metric",
]
