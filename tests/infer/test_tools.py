"""Tool calling in Python: tool definitions and tool_choice, the call grammar under random tokens,
reading calls back (whole and streamed), the calculator against Python, the sandboxed Python tool's
limits, and the agent loop on the embedded model."""

from __future__ import annotations

import json
import random

import jsonschema
import pytest

from lmforge.core.sandbox import SandboxConfig
from lmforge.infer import Engine, SamplingParams
from lmforge.infer.grammar import GrammarCompiler
from lmforge.infer.tools import (CALCULATOR, CLOSE, OPEN, ToolCall, ToolError, ToolSpec, ToolStream,
                                 calculate, call_tool, chat_many, check_tool_choice, parse_tool_calls, parse_tools,
                                 run_agent, run_python_tool, tool_constraint)
from tests.infer.test_grammar import random_walk  # uniformly random tokens under a constraint's masks

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "minLength": 2, "maxLength": 20},
                                                     "days": {"type": "integer", "minimum": 1, "maximum": 7}},
                   "required": ["city", "days"], "additionalProperties": False}}}
TOOLS = parse_tools([WEATHER, CALCULATOR.spec.openai()])
SCHEMAS = {t.name: dict(t.parameters) for t in TOOLS}


@pytest.fixture(scope="module")
def compiler(smollm):
    model, tokenizer = smollm
    return GrammarCompiler.for_tokenizer(tokenizer, model.config.vocab_size)


def test_parse_tools_reads_openai_definitions():
    weather, calc = TOOLS
    assert (weather.name, weather.description) == ("get_weather", "Current weather in a city")
    assert weather.openai() == WEATHER and calc.name == "calculator"
    bare = parse_tools([{"type": "function", "function": {"name": "ping"}}])[0]
    assert bare.parameters == {"type": "object", "properties": {}} and bare.description == ""


@pytest.mark.parametrize("raw, param, message", [
    ([], "tools", "non-empty array"),
    ({"type": "function"}, "tools", "non-empty array"),
    ([{"type": "retrieval"}], "tools[0]", "type 'function'"),
    ([{"type": "function", "function": "f"}], "tools[0].function", "must be an object"),
    ([{"type": "function", "function": {"name": "has space"}}], "tools[0].function.name", "1 to 64 letters"),
    ([{"type": "function", "function": {"name": "x" * 65}}], "tools[0].function.name", "1 to 64 letters"),
    ([{"type": "function", "function": {"name": "f"}}, {"type": "function", "function": {"name": "f"}}],
     "tools[1].function.name", "defined twice"),
    ([{"type": "function", "function": {"name": "f", "description": 3}}], "tools[0].function.description",
     "must be a string"),
    ([{"type": "function", "function": {"name": "f", "parameters": {"type": "array"}}}], "tools[0].function.parameters",
     "type 'object'"),
    ([{"type": "function", "function": {"name": f"f{i}"}} for i in range(129)], "tools", "at most 128"),
])
def test_bad_tool_definitions_name_the_field(raw, param, message):
    with pytest.raises(ToolError, match=message) as caught:
        parse_tools(raw)
    assert caught.value.param == param


def test_tool_choice_values():
    assert check_tool_choice(None, TOOLS) == "auto"
    assert [check_tool_choice(c, TOOLS) for c in ("none", "auto", "required")] == ["none", "auto", "required"]
    assert check_tool_choice({"type": "function", "function": {"name": "calculator"}}, TOOLS) == "calculator"
    for bad, message in [("always", "got 'always'"), ({"type": "function", "function": {"name": "nope"}}, "'nope'"),
                         ({"name": "calculator"}, "tool_choice must be")]:
        with pytest.raises(ToolError, match=message) as caught:
            check_tool_choice(bad, TOOLS)
        assert caught.value.param == "tool_choice"


@pytest.mark.parametrize("choice, parallel", [("required", True), ("required", False), ("get_weather", True)])
def test_random_tokens_under_the_call_grammar_are_valid_calls(compiler, smollm, choice, parallel):
    """Uniformly random allowed tokens: always <tool_call> + a JSON list + </tool_call>, each item a
    call of a listed tool (the named one only) whose arguments validate; one call when not parallel."""
    tokenizer = smollm[1]
    for seed in range(3):
        constraint = tool_constraint(compiler, tokenizer, TOOLS, choice, parallel, 120)
        text = random_walk(constraint, tokenizer, random.Random(seed), 120)
        assert text.startswith(OPEN) and text.endswith(CLOSE), text
        items = json.loads(text[len(OPEN): -len(CLOSE)])
        assert isinstance(items, list) and items and (parallel or len(items) == 1)
        for item in items:
            assert set(item) == {"name", "arguments"} and item["name"] in SCHEMAS
            assert choice == "required" or item["name"] == choice
            jsonschema.validate(item["arguments"], SCHEMAS[item["name"]])
        content, calls = parse_tool_calls(text, TOOLS)
        assert content == "" and [c.arguments for c in calls] == [i["arguments"] for i in items]


def test_auto_choice_is_free_until_the_opener_then_constrained(compiler, smollm):
    tokenizer = smollm[1]
    assert tool_constraint(compiler, tokenizer, TOOLS, "none", True, 50) is None
    constraint = tool_constraint(compiler, tokenizer, TOOLS, "auto", True, 120)
    for token in tokenizer.encode("Let me check. "):
        assert constraint.allowed() is None  # free text
        constraint.advance(token)
    assert constraint.is_complete()  # a plain text answer may end here
    for token in tokenizer.encode(OPEN):
        constraint.advance(token)
    assert constraint.allowed() is not None and not constraint.is_complete()
    rest = random_walk(constraint, tokenizer, random.Random(0), 120)
    _, calls = parse_tool_calls("Let me check. " + OPEN + rest, TOOLS)
    assert calls and all(c.name in SCHEMAS for c in calls)


def test_parse_tool_calls_reads_in_place_and_falls_back_to_text():
    text = 'Checking. <tool_call>[{"name": "calculator", "arguments": {"expression": "1+1"}}, ' \
           '{"name": "get_weather", "arguments": {"city": "a </tool_call> b", "days": 2}}]</tool_call>'
    content, calls = parse_tool_calls(text, TOOLS)
    assert content == "Checking."
    assert [(c.name, c.arguments) for c in calls] == [("calculator", {"expression": "1+1"}),
                                                      ("get_weather", {"city": "a </tool_call> b", "days": 2})]
    assert all(c.id.startswith("call_") for c in calls) and len({c.id for c in calls}) == 2
    assert json.loads(calls[1].openai()["function"]["arguments"]) == calls[1].arguments
    single = parse_tool_calls('<tool_call>{"name": "calculator", "arguments": {"expression": "2"}}</tool_call>', TOOLS)
    assert single[1][0].arguments == {"expression": "2"}
    for text in ["no call here", "<tool_call>[not json", '<tool_call>[{"name": "rm", "arguments": {}}]</tool_call>',
                 '<tool_call>[{"name": "calculator", "arguments": "1+1"}]</tool_call>', "<tool_call>[]</tool_call>"]:
        assert parse_tool_calls(text, TOOLS) == (text, [])


@pytest.mark.parametrize("seed", range(5))
def test_streamed_text_splits_like_the_whole_reply(seed):
    """Fed in random pieces, the stream shows the content before the call (never a piece of the
    opener) and finishes with the same calls as the whole text."""
    rng = random.Random(seed)
    whole = 'I will use <tools> now: <tool_call>[{"name": "calculator", "arguments": {"expression": "6*7"}}]</tool_call>'
    cuts = sorted(rng.sample(range(1, len(whole)), 12))
    stream, shown = ToolStream(TOOLS), ""
    for a, b in zip([0] + cuts, cuts + [len(whole)]):
        out = stream.feed(whole[a:b])
        assert "<tool_c" not in out
        shown += out
    rest, calls = stream.finish()
    assert (shown + rest).strip() == parse_tool_calls(whole, TOOLS)[0] and rest == ""
    assert [c.arguments for c in calls] == [{"expression": "6*7"}]
    plain = ToolStream(TOOLS)
    shown = plain.feed("a <tool") + plain.feed("kit is handy")
    assert shown + plain.finish()[0] == "a <toolkit is handy" and plain.finish()[1] == []


@pytest.mark.parametrize("seed", range(3))
def test_calculator_agrees_with_python(seed):
    rng = random.Random(seed)
    for _ in range(200):
        a, b, c = rng.randint(-999, 9999), rng.randint(1, 999), rng.randint(1, 99)
        op1, op2 = rng.choice("+-*/%"), rng.choice(["+", "-", "*", "//", "**"])
        expression = f"({a} {op1} {b}) {op2} {c if op2 != '**' else c % 4}"
        expected = eval(expression)  # the reference: Python on the same text
        assert calculate(expression) == pytest.approx(expected, rel=1e-12), expression
    assert calculate("sqrt(16) + 2^3") == 12 and calculate("7 × 6 ÷ 2") == 21


@pytest.mark.parametrize("expression, message", [
    ("", "empty"), ("__import__('os')", "not allowed"), ("(1).real", "not allowed"), ("9 ** 9 ** 9", "too large"),
    ("1 / 0", "division by zero"), ("2 +", "not an arithmetic"), ("1" * 501, "longer than 500"),
    ("open('x')", "not allowed"),
])
def test_calculator_refuses_anything_else(expression, message):
    with pytest.raises(ValueError, match=message):
        calculate(expression)


def test_call_tool_reports_failures_as_text():
    tools = {"calculator": CALCULATOR}
    assert call_tool(tools, ToolCall("c1", "calculator", {"expression": "4821 * 317"})) == "1528257"
    assert call_tool(tools, ToolCall("c2", "calculator", {"expression": "1/0"})).startswith("error: ValueError")
    assert call_tool(tools, ToolCall("c3", "calculator", {"x": "1"})).startswith("error: TypeError")
    assert call_tool(tools, ToolCall("c4", "shell", {})) == "error: there is no tool named 'shell'"


def test_python_tool_output_and_limits(tmp_path):
    assert run_python_tool("print(sum(range(10)))") == "45"
    assert run_python_tool("x = 1").startswith("(no output")
    quick = SandboxConfig(timeout_s=1.5, memory_mb=128, output_chars=4000)
    looping = run_python_tool("print('hi', flush=True)\nwhile True:\n    pass", quick)
    # the wall-clock deadline or the CPU limit (both 1.5 s), whichever the machine's load makes come first
    assert looping.startswith(("stopped: it ran past the 1.5 s time limit", "stopped: it used up its CPU time")), looping
    hungry = run_python_tool("x = []\nwhile True:\n    x.append(bytearray(10**7))", quick)
    assert hungry.startswith("stopped: it ran out of memory (limit 128 MB)")
    secret = tmp_path / "secret.txt"
    secret.write_text("keep me")
    peek = run_python_tool(f"print(open({str(secret)!r}).read())", quick)
    assert peek.startswith("stopped: it tried something not allowed") and "keep me" not in peek


def test_agent_calls_the_calculator_then_answers(smollm):
    model, tokenizer = smollm
    engine = Engine(model, tokenizer, max_batch_size=2)
    events = []
    final, conversation = run_agent(engine, [{"role": "user", "content": "What is 4821 * 317?"}], [CALCULATOR],
                                    SamplingParams(max_new_tokens=60), max_rounds=1, first_choice="required",
                                    on_event=lambda kind, value: events.append((kind, value)))
    kinds = [k for k, _ in events]
    assert kinds[:3] == ["reply", "call", "result"] and kinds[-1] == "reply"
    call, result = events[1][1], events[2][1]
    assert result == str(calculate(call.arguments["expression"]))
    assert [m["role"] for m in conversation] == ["user", "assistant", "tool", "assistant"]
    assert conversation[2] == {"role": "tool", "tool_call_id": call.id, "name": "calculator", "content": result}
    assert not final.tool_calls and final.content == conversation[-1]["content"]


def test_chat_many_choices(smollm):
    model, tokenizer = smollm
    engine = Engine(model, tokenizer, max_batch_size=2)
    ask = [[{"role": "user", "content": "Weather in Oslo for 3 days?"}]] * 2
    params = SamplingParams(max_new_tokens=50)
    named = chat_many(engine, ask, TOOLS, params, tool_choice={"type": "function", "function": {"name": "get_weather"}},
                      parallel_tool_calls=False)
    for reply in named:
        assert reply.finish_reason == "tool_calls" and [c.name for c in reply.tool_calls] == ["get_weather"]
        jsonschema.validate(reply.tool_calls[0].arguments, SCHEMAS["get_weather"])
        assert reply.message()["tool_calls"][0]["function"]["name"] == "get_weather"
    plain = chat_many(engine, ask[:1], TOOLS, SamplingParams(max_new_tokens=8), tool_choice="none")[0]
    assert plain.tool_calls == [] and plain.finish_reason in ("stop", "length") and "tool_calls" not in plain.message()
    bad = [ToolSpec("f", "", {"type": "object", "properties": {"x": {"type": "banana"}}})]
    with pytest.raises(ToolError, match="invalid parameters schema") as caught:
        chat_many(engine, ask[:1], bad, params)
    assert caught.value.param == "tools[0].function.parameters"
