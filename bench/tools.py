"""Tool calling on arithmetic the model cannot do in its head: calls valid, answers right, with and without tools.

    python bench/tools.py [--n 100] [--seed 0] [--batch 8] [--threads 2]

Generated requests (seeded): products of a 3-4 digit and a 3 digit number, sums and differences
of 5-6 digit numbers, parenthesised mixes, exact divisions and short word problems.

* With tools: `lmforge.infer.tools.run_agents` with the calculator, tool_choice "required" for the
  first turn (the call), then a final answer turn (tool_choice "none"), greedy.
  A call is valid when the raw text of the turn is `<tool_call>` + a JSON list + `</tool_call>`,
  parsed here with `json` (not with lmforge's reader), and every item names the calculator and
  its arguments validate against the tool's JSON Schema (`jsonschema`).
* Without tools: the same questions as plain chat (no tools described), greedy.

An answer is right when the number is among the numbers in the reply (commas dropped); "last"
counts replies whose last number is the result. The table also gives how often the expression
the model wrote evaluates to the result (it copied the numbers and operations right).
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
import time
from pathlib import Path

import jsonschema
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lmforge.infer import Engine, SamplingParams  # noqa: E402
from lmforge.infer.tools import CALCULATOR, CLOSE, OPEN, calculate, run_agents  # noqa: E402
from lmforge.io.registry import load_model  # noqa: E402

NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def requests(n: int, seed: int) -> list[tuple[str, int]]:
    """(question, integer answer) pairs; every answer needs more than mental arithmetic."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        kind = i % 5
        if kind == 0:
            a, b = rng.randint(120, 9999), rng.randint(120, 999)
            out.append((f"What is {a} * {b}?", a * b))
        elif kind == 1:
            a, b, c = rng.randint(10_000, 999_999), rng.randint(10_000, 999_999), rng.randint(1_000, 99_999)
            out.append((f"What is {a} + {b} - {c}?", a + b - c))
        elif kind == 2:
            a, b, c = rng.randint(100, 9_999), rng.randint(100, 9_999), rng.randint(12, 99)
            out.append((f"Compute ({a} + {b}) * {c}.", (a + b) * c))
        elif kind == 3:
            q, r = rng.randint(13, 97), rng.randint(120, 999)
            out.append((f"What is {q * r} divided by {q}?", r))
        else:
            boxes, each = rng.randint(120, 999), rng.randint(13, 97)
            thing = rng.choice(["apples", "bolts", "books", "tickets", "cups"])
            out.append((f"A crate holds {each} {thing}. How many {thing} are in {boxes} crates?", boxes * each))
    return out


def numbers(text: str) -> list[float]:
    return [float(m.replace(",", "")) for m in NUMBER.findall(text) if m.replace(",", "").strip("-")]


def right(text: str, truth: int) -> tuple[bool, bool]:
    """(the result is among the reply's numbers, the reply's last number is the result)."""
    found = numbers(text)
    return truth in found, bool(found) and found[-1] == truth


def valid_call(text: str, schema: dict) -> bool:
    """The raw turn is exactly <tool_call>[...]</tool_call> with calls of the calculator whose
    arguments validate against its schema."""
    text = text.strip()
    if not (text.startswith(OPEN) and text.endswith(CLOSE)):
        return False
    try:
        items = json.loads(text[len(OPEN): -len(CLOSE)])
    except ValueError:
        return False
    if not isinstance(items, list) or not items:
        return False
    for item in items:
        if not isinstance(item, dict) or set(item) != {"name", "arguments"} or item["name"] != "calculator":
            return False
        try:
            jsonschema.validate(item["arguments"], schema)
        except jsonschema.ValidationError:
            return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100, help="requests (default: 100)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated requests (default: 0)")
    parser.add_argument("--batch", type=int, default=8, help="conversations generated together (default: 8)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default: 2)")
    parser.add_argument("--max-new-tokens", type=int, default=80, help="tokens per turn (default: 80)")
    parser.add_argument("--show", type=int, default=3, help="example conversations printed (default: 3)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, tokenizer = load_model("smollm2-135m-instruct")
    engine = Engine(model, tokenizer, max_batch_size=args.batch)
    params = SamplingParams(max_new_tokens=args.max_new_tokens)
    asked = requests(args.n, args.seed)
    conversations = [[{"role": "user", "content": q}] for q, _ in asked]

    start = time.perf_counter()
    turns: dict[int, list] = {}

    def record(i: int, kind: str, value) -> None:
        if kind == "reply":
            turns.setdefault(i, []).append(value)

    results = run_agents(engine, conversations, [CALCULATOR], params, max_rounds=1, first_choice="required",
                         on_event=record)
    with_tools_s = time.perf_counter() - start
    start = time.perf_counter()
    plain = engine.generate([engine.chat_prompt(c) for c in conversations], params)
    without_s = time.perf_counter() - start

    schema = dict(CALCULATOR.spec.parameters)
    valid = exact_calls = 0
    tools_any = tools_last = plain_any = plain_last = 0
    for i, ((question, truth), (final, _), bare) in enumerate(zip(asked, results, plain)):
        call_turn = turns[i][0]
        valid += valid_call(call_turn.completion.text, schema)
        try:
            exact_calls += any(calculate(c.arguments["expression"]) == truth for c in call_turn.tool_calls)
        except ValueError:
            pass
        hit_any, hit_last = right(final.content, truth)
        tools_any, tools_last = tools_any + hit_any, tools_last + hit_last
        hit_any, hit_last = right(bare.text, truth)
        plain_any, plain_last = plain_any + hit_any, plain_last + hit_last
        if i < args.show:
            print(f"Q: {question} (= {truth})\n  call:  {call_turn.completion.text}\n  final: {final.content!r}\n"
                  f"  plain: {bare.text[:160]!r}")

    n = len(asked)
    pct = lambda k: f"{k}/{n} ({100 * k / n:.1f}%)"  # noqa: E731
    print(f"\n{n} requests, seed {args.seed}, greedy, SmolLM2-135M-Instruct")
    print(f"{'':36}{'with tools':>22}{'without tools':>22}")
    print(f"{'valid calls (parse + schema)':36}{pct(valid):>22}{'-':>22}")
    print(f"{'call expression evaluates to result':36}{pct(exact_calls):>22}{'-':>22}")
    print(f"{'answer contains the result':36}{pct(tools_any):>22}{pct(plain_any):>22}")
    print(f"{'answer ends with the result':36}{pct(tools_last):>22}{pct(plain_last):>22}")
    print(f"{'wall time (s)':36}{with_tools_s:>22.1f}{without_s:>22.1f}")


if __name__ == "__main__":
    main()
