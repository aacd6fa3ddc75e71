"""Structured output: the schema suite through the model, and per-token mask time, old engine vs new.

    python bench/grammar.py [--limit N] [--max-tokens 64] [--batch 8] [--clock wall|cpu]

1. SmolLM2 generates (greedy, batched) one answer per schema of bench/grammar_schemas.py under the
   llguidance-backed constraint; every output is parsed and validated with jsonschema (formats
   checked too).
2. The same token sequences are replayed through the constraints, timing each `allowed()` call
   (the mask the engine asks for before every token): the new engine on every schema, the former
   hand-written engine (read from the git history, commit OLD_ENGINE_COMMIT) on the schemas it
   could compile. Medians and 99th percentiles, and their ratio, on the shared schemas.
   `--clock cpu` times with the process's CPU time instead of the wall clock: on a shared machine
   the wall clock's 99th percentile measures the scheduler, not the mask.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jsonschema
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from grammar_schemas import SCHEMAS  # noqa: E402

from lmforge.infer import Engine, SamplingParams  # noqa: E402
from lmforge.infer.grammar import GrammarCompiler, GrammarSpec  # noqa: E402
from lmforge.io.registry import load_model  # noqa: E402

OLD_ENGINE_COMMIT = "88adc396802f9a35314084f67b9cd47ab3649f2a"  # the last commit with lmforge/infer/constraints.py


def old_engine():
    """The former engine's module, from the git history (None outside a git checkout)."""
    try:
        source = subprocess.run(["git", "show", f"{OLD_ENGINE_COMMIT}:lmforge/infer/constraints.py"], cwd=ROOT,
                                capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    path = Path(tempfile.mkdtemp()) / "old_constraints.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("old_constraints", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def time_masks(constraint, ids: list[int], clock=time.perf_counter) -> list[float]:
    """Seconds of each allowed() call along `ids` (stops early if the engine refuses a token)."""
    times = []
    for token in ids:
        start = clock()
        mask = constraint.allowed()
        times.append(clock() - start)
        if mask is not None and not bool(mask[token]):
            break
        constraint.advance(token)
    return times


def quantiles(values: list[float]) -> tuple[float, float]:
    ordered = sorted(values)
    return statistics.median(ordered) * 1e3, ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=int, default=None, help="schemas to run (default: all)")
    parser.add_argument("--max-tokens", type=int, default=64, help="budget per answer (default: 64)")
    parser.add_argument("--batch", type=int, default=8, help="answers generated together (default: 8)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default: 2)")
    parser.add_argument("--clock", default="wall", choices=sorted(CLOCKS),
                        help="mask timer: wall time, or the process's CPU time (steadier on a shared machine; "
                             "default: wall)")
    args = parser.parse_args()
    clock = CLOCKS[args.clock]
    torch.set_num_threads(args.threads)
    model, tokenizer = load_model("smollm2-135m-instruct")
    engine = Engine(model, tokenizer, max_batch_size=args.batch)
    suite = SCHEMAS[: args.limit]
    start = time.perf_counter()
    compiler = GrammarCompiler.for_tokenizer(tokenizer, model.config.vocab_size)
    print(f"llguidance tokenizer data: {time.perf_counter() - start:.2f} s")
    grammars = [compiler.grammar(GrammarSpec.json_schema(schema)) for _, schema, _ in suite]
    prompts = [engine.chat_prompt([{"role": "system", "content": "Answer in JSON."}, {"role": "user", "content": p}])
               for _, _, p in suite]
    budget = [max(args.max_tokens, (g.min_tokens or 0) + 8) for g in grammars]
    outputs = []
    for first in range(0, len(suite), args.batch):
        part = range(first, min(first + args.batch, len(suite)))
        params = SamplingParams(max_new_tokens=max(budget[i] for i in part))
        outputs += engine.generate([prompts[i] for i in part], params,
                                   constraints=[grammars[i].constraint(budget[i]) for i in part])
    valid = 0
    for (name, schema, _), out in zip(suite, outputs):
        try:
            jsonschema.validate(json.loads(out.text), schema,
                                format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)
            valid += 1
        except (ValueError, jsonschema.ValidationError) as exc:
            print(f"INVALID {name}: {out.text!r} ({type(exc).__name__})")
    print(f"schemas: {len(suite)}, outputs that parse and validate: {valid}/{len(suite)}")

    old = old_engine()
    table = old.TokenTable.for_tokenizer(tokenizer, model.config.vocab_size) if old is not None else None
    new_all, new_shared, old_shared, shared = [], [], [], 0
    for (name, schema, _), grammar, out, limit in zip(suite, grammars, outputs, budget):
        new_times = time_masks(grammar.constraint(limit), out.token_ids, clock)
        new_all += new_times
        if table is None:
            continue
        try:
            old_constraint = table.grammar(schema).constraint(limit)
        except ValueError:  # a schema the old engine refused (pattern, format, bounds, allOf, ...)
            continue
        old_times = time_masks(old_constraint, out.token_ids, clock)
        if len(old_times) == len(new_times):
            shared += 1
            new_shared += new_times
            old_shared += old_times
    p50, p99 = quantiles(new_all)
    print(f"mask time ({args.clock} clock)")
    print(f"new engine (llguidance), all {len(suite)} schemas, {len(new_all)} tokens: "
          f"mask p50 {p50:.3f} ms, p99 {p99:.3f} ms")
    if shared:
        n50, n99 = quantiles(new_shared)
        o50, o99 = quantiles(old_shared)
        print(f"on the {shared} schemas both engines compile ({len(new_shared)} tokens):")
        print(f"  old engine: mask p50 {o50:.3f} ms, p99 {o99:.3f} ms")
        print(f"  new engine: mask p50 {n50:.3f} ms, p99 {n99:.3f} ms")
        print(f"  new/old: p50 {n50 / o50:.2f}x, p99 {n99 / o99:.2f}x")
    elif old is None:
        print("old engine: not available (no git history)")


if __name__ == "__main__":
    main()
