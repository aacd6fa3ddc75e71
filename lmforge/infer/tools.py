"""Tool calling: OpenAI-style tool definitions, grammar-constrained calls, an agent loop, built-in tools.

The calling convention is SmolLM2's: the model answers a turn with

    <tool_call>[{"name": "calculator", "arguments": {"expression": "2*21"}}]</tool_call>

(a JSON list, several calls at once when parallel calls are allowed). The tools are described in
the system message (`lmforge.tokenizer.chat.render_conversation(..., tools=...)`), earlier calls
are rendered in the same form and results come back as `tool` messages. Once the model starts a
call, the rest of it is constrained by a grammar built from the tools' JSON Schemas, so the
arguments always parse and validate:

* `tool_choice="auto"`: free text until the model writes `<tool_call>`, then the grammar;
* `"required"` or a named function: the grammar from the first token;
* `"none"`: no constraint (the tools are still described).

    from lmforge.infer.tools import CALCULATOR, chat, run_agent
    reply = chat(engine, messages, [CALCULATOR.spec], SamplingParams(max_new_tokens=128), tool_choice="required")
    reply.tool_calls[0].arguments          # {'expression': '2*21'}
    final = run_agent(engine, messages, [CALCULATOR], SamplingParams(max_new_tokens=128))

The layer sits above the engine: the engine only sees prompts and a `Constraint`.
"""

from __future__ import annotations

import ast
import json
import math
import operator
import re
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from lmforge.core.sandbox import SandboxConfig, run_python
from lmforge.infer.engine import Completion, Engine
from lmforge.infer.grammar import GrammarCompiler, GrammarConstraint, GrammarError, GrammarSpec
from lmforge.infer.sampling import SamplingParams
from lmforge.tokenizer.chat import render_conversation
from lmforge.tokenizer.tokenizer import Tokenizer

__all__ = ["CALCULATOR", "OPEN", "CLOSE", "PYTHON", "Tool", "ToolCall", "ToolError", "ToolReply", "ToolSpec",
           "ToolStream", "calculate", "chat", "chat_many", "parse_tool_calls", "parse_tools", "run_agent",
           "run_agents", "tool_constraint"]

OPEN, CLOSE = "<tool_call>", "</tool_call>"
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
MAX_TOOLS = 128


class ToolError(ValueError):
    """A bad tool definition or tool_choice; `param` names the field (OpenAI's error `param`)."""

    def __init__(self, message: str, param: str = "tools") -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class ToolSpec:
    """One function the model may call: OpenAI's {"type": "function", "function": {...}}."""

    name: str
    description: str = ""
    parameters: Mapping[str, Any] = field(default_factory=lambda: {"type": "object", "properties": {}})

    def openai(self) -> dict[str, Any]:
        return {"type": "function", "function": {"name": self.name, "description": self.description,
                                                 "parameters": dict(self.parameters)}}


def parse_tools(raw: Any) -> list[ToolSpec]:
    """OpenAI `tools` -> ToolSpecs; ToolError naming the field for anything malformed."""
    if not isinstance(raw, list) or not raw:
        raise ToolError("tools must be a non-empty array of tool objects")
    if len(raw) > MAX_TOOLS:
        raise ToolError(f"at most {MAX_TOOLS} tools are accepted")
    specs, names = [], set()
    for i, tool in enumerate(raw):
        where = f"tools[{i}]"
        if not isinstance(tool, dict) or tool.get("type", "function") != "function":
            raise ToolError(f"{where} must be an object with type 'function'", where)
        fn = tool.get("function")
        if not isinstance(fn, dict):
            raise ToolError(f"{where}.function must be an object", f"{where}.function")
        name = fn.get("name")
        if not isinstance(name, str) or not _NAME.match(name):
            raise ToolError(f"{where}.function.name must be 1 to 64 letters, digits, '_' or '-', got {name!r}",
                            f"{where}.function.name")
        if name in names:
            raise ToolError(f"{where}.function.name {name!r} is defined twice; tool names must be unique",
                            f"{where}.function.name")
        names.add(name)
        description = fn.get("description", "")
        if not isinstance(description, str):
            raise ToolError(f"{where}.function.description must be a string", f"{where}.function.description")
        parameters = fn.get("parameters", {"type": "object", "properties": {}})
        if not isinstance(parameters, dict) or parameters.get("type", "object") != "object":
            raise ToolError(f"{where}.function.parameters must be a JSON Schema of type 'object'",
                            f"{where}.function.parameters")
        specs.append(ToolSpec(name, description, parameters))
    return specs


def check_tool_choice(choice: Any, tools: Sequence[ToolSpec]) -> str:
    """'none', 'auto', 'required' or the name of the one function to call."""
    if choice is None:
        return "auto"
    if isinstance(choice, str):
        if choice not in ("none", "auto", "required"):
            raise ToolError(f"tool_choice must be none, auto, required or a function, got {choice!r}", "tool_choice")
        return choice
    if isinstance(choice, dict) and choice.get("type") == "function" and isinstance(choice.get("function"), dict):
        name = choice["function"].get("name")
        if name not in {t.name for t in tools}:
            raise ToolError(f"tool_choice names the function {name!r}, which is not among the tools", "tool_choice")
        return name
    raise ToolError('tool_choice must be "none", "auto", "required" or {"type": "function", "function": {"name": ...}}',
                    "tool_choice")


# ---------------------------------------------------------------------- the call grammar
def calls_schema(tools: Sequence[ToolSpec], only: str | None = None, parallel: bool = True) -> dict[str, Any]:
    """JSON Schema of the list inside <tool_call>: calls of the tools (or of `only`)."""
    options = [{"type": "object", "properties": {"name": {"const": t.name}, "arguments": dict(t.parameters)},
                "required": ["name", "arguments"], "additionalProperties": False}
               for t in tools if only is None or t.name == only]
    schema: dict[str, Any] = {"type": "array", "items": options[0] if len(options) == 1 else {"anyOf": options},
                              "minItems": 1}
    if not parallel:
        schema["maxItems"] = 1
    return schema


def calls_grammar(tools: Sequence[ToolSpec], only: str | None = None, parallel: bool = True,
                  opener: bool = True) -> GrammarSpec:
    """A Lark grammar: [<tool_call>] JSON-list-of-calls </tool_call>."""
    schema = dict(calls_schema(tools, only, parallel), **{"x-guidance": {"whitespace_flexible": False}})
    head = json.dumps(OPEN) + " " if opener else ""
    return GrammarSpec.grammar(f"start: {head}calls {json.dumps(CLOSE)}\ncalls: %json {json.dumps(schema)}")


def check_tool_schemas(compiler: GrammarCompiler, tools: Sequence[ToolSpec]) -> None:
    """Compile every tool's parameters alone, so a bad schema is named by its tool."""
    for i, tool in enumerate(tools):
        try:
            compiler.grammar(GrammarSpec.json_schema(dict(tool.parameters)))
        except GrammarError as exc:
            raise ToolError(f"tools[{i}] ({tool.name}): invalid parameters schema: {exc}",
                            f"tools[{i}].function.parameters") from None


class AutoToolConstraint:
    """tool_choice="auto": no constraint until the text ends with <tool_call>; then the call grammar.
    A call that the grammar cannot continue (the trigger in the middle of a token the grammar
    refuses) leaves the output unconstrained; `parse_tool_calls` then treats it as text."""

    def __init__(self, tokenizer: Tokenizer, grammar: Any, max_tokens: int | None) -> None:
        self.tokenizer = tokenizer
        self.grammar = grammar  # the call grammar without the opener
        self.max_tokens = max_tokens
        self.ids: list[int] = []
        self.inner: GrammarConstraint | None = None
        self.gave_up = False

    def allowed(self):
        return self.inner.allowed() if self.inner is not None else None

    def advance(self, token_id: int) -> None:
        if self.inner is not None:
            self.inner.advance(token_id)
            return
        self.ids.append(token_id)
        if self.gave_up:
            return
        tail = self.tokenizer.decode(self.ids[-8:])
        at = tail.find(OPEN)
        if at < 0:
            return
        rest = tail[at + len(OPEN):]
        left = None if self.max_tokens is None else max(1, self.max_tokens - len(self.ids))
        inner = self.grammar.constraint(left)
        try:
            for token in self.tokenizer.encode(rest) if rest else []:
                inner.advance(token)
        except ValueError:
            self.gave_up = True
            return
        self.inner = inner

    def is_complete(self) -> bool:
        return self.inner.is_complete() if self.inner is not None else True


def tool_constraint(compiler: GrammarCompiler, tokenizer: Tokenizer, tools: Sequence[ToolSpec], choice: str,
                    parallel: bool, max_tokens: int | None):
    """The engine constraint for one reply (None for tool_choice none)."""
    if choice == "none":
        return None
    if choice == "auto":
        return AutoToolConstraint(tokenizer, compiler.grammar(calls_grammar(tools, None, parallel, opener=False)),
                                  max_tokens)
    only = None if choice == "required" else choice
    return compiler.grammar(calls_grammar(tools, only, parallel)).constraint(max_tokens)


# ---------------------------------------------------------------------- reading calls back
@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    arguments: dict[str, Any]

    @property
    def arguments_json(self) -> str:
        return json.dumps(self.arguments, ensure_ascii=False)

    def openai(self) -> dict[str, Any]:
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments_json}}


def new_call_id() -> str:
    return "call_" + uuid.uuid4().hex[:24]


def parse_tool_calls(text: str, tools: Sequence[ToolSpec] = ()) -> tuple[str, list[ToolCall]]:
    """(content before the call, calls) of a reply; a reply without a well-formed call is all content."""
    at = text.find(OPEN)
    if at < 0:
        return text, []
    try:  # decoded in place: a string argument may itself contain "</tool_call>"
        items, _ = json.JSONDecoder().raw_decode(text, at + len(OPEN))
    except ValueError:
        return text, []
    if isinstance(items, dict):
        items = [items]
    names = {t.name for t in tools}
    calls = []
    for item in items if isinstance(items, list) else []:
        if not (isinstance(item, dict) and isinstance(item.get("name"), str) and isinstance(item.get("arguments", {}), dict)):
            return text, []
        if names and item["name"] not in names:
            return text, []
        calls.append(ToolCall(new_call_id(), item["name"], item.get("arguments", {})))
    if not calls:
        return text, []
    return text[:at].strip(), calls


class ToolStream:
    """Splits streamed text into content and tool calls: content passes through (holding back what
    could be the start of <tool_call>); from the opener on, the text is kept until the end, when
    `finish` returns the calls (or the held text as content, if it was no well-formed call)."""

    def __init__(self, tools: Sequence[ToolSpec] = ()) -> None:
        self.tools = tools
        self.text = ""
        self.sent = 0
        self.calling = False

    def feed(self, delta: str) -> str:
        """Content safe to show now."""
        self.text += delta
        if self.calling:
            return ""
        at = self.text.find(OPEN, self.sent)
        if at >= 0:
            self.calling = True
            out, self.sent = self.text[self.sent:at], at
            return out
        hold = next((k for k in range(min(len(OPEN) - 1, len(self.text) - self.sent), 0, -1)
                     if self.text.endswith(OPEN[:k])), 0)
        end = len(self.text) - hold
        out, self.sent = self.text[self.sent:end], max(self.sent, end)
        return out

    def finish(self) -> tuple[str, list[ToolCall]]:
        """(remaining content, calls) once the reply is complete."""
        rest = self.text[self.sent:]
        if not self.calling:
            return rest, []
        _, calls = parse_tool_calls(rest, self.tools)
        return ("", calls) if calls else (rest, [])


# ---------------------------------------------------------------------- Python API
@dataclass
class ToolReply:
    content: str
    tool_calls: list[ToolCall]
    finish_reason: str  # "tool_calls", "stop" or "length"
    completion: Completion

    def message(self) -> dict[str, Any]:
        """The assistant message to append to the conversation."""
        message: dict[str, Any] = {"role": "assistant", "content": self.content}
        if self.tool_calls:
            message["tool_calls"] = [call.openai() for call in self.tool_calls]
        return message


def chat(engine: Engine, messages: list[dict], tools: Sequence[ToolSpec], params: SamplingParams, *,
         tool_choice: Any = "auto", parallel_tool_calls: bool = True) -> ToolReply:
    """One assistant turn that may call tools (see the module docstring for tool_choice)."""
    return chat_many(engine, [messages], tools, params, tool_choice=tool_choice,
                     parallel_tool_calls=parallel_tool_calls)[0]


def chat_many(engine: Engine, conversations: Sequence[list[dict]], tools: Sequence[ToolSpec], params: SamplingParams,
              *, tool_choice: Any = "auto", parallel_tool_calls: bool = True) -> list[ToolReply]:
    """`chat` for several conversations, generated together (up to the engine's batch size)."""
    choice = check_tool_choice(tool_choice, tools)
    compiler = GrammarCompiler.for_tokenizer(engine.tokenizer, engine.vocab_size)
    check_tool_schemas(compiler, tools)
    described = [t.openai() for t in tools]
    prompts = [render_conversation(engine.tokenizer, messages, add_generation_prompt=True, tools=described)[0]
               for messages in conversations]
    constraints = [tool_constraint(compiler, engine.tokenizer, tools, choice, parallel_tool_calls, params.max_new_tokens)
                   for _ in prompts]
    replies = []
    for completion in engine.generate(prompts, params, constraints=constraints):
        content, calls = parse_tool_calls(completion.text, tools) if choice != "none" else (completion.text, [])
        replies.append(ToolReply(content, calls, "tool_calls" if calls else completion.finish_reason, completion))
    return replies


@dataclass(frozen=True)
class Tool:
    """A tool with its implementation: `function(**arguments) -> str`."""

    spec: ToolSpec
    function: Callable[..., str]


def call_tool(tools: Mapping[str, Tool], call: ToolCall) -> str:
    """Run one call; failures become the text the model reads back (never an exception)."""
    tool = tools.get(call.name)
    if tool is None:
        return f"error: there is no tool named {call.name!r}"
    try:
        return str(tool.function(**call.arguments))
    except Exception as exc:  # the model reads the failure and may try again
        return f"error: {type(exc).__name__}: {exc}"


def run_agent(engine: Engine, messages: list[dict], tools: Sequence[Tool], params: SamplingParams, *,
              max_rounds: int = 4, first_choice: Any = "auto",
              on_event: Callable[[str, Any], None] | None = None) -> tuple[ToolReply, list[dict]]:
    """Call tools until the model answers in text (or `max_rounds` turns with calls have passed:
    the turn after them runs with tool_choice none). The first turn runs with `first_choice`, the
    others with "auto". Returns the final reply and the whole conversation. `on_event(kind, value)`
    sees each "reply" (the ToolReply of every turn), "call" (a ToolCall) and "result" (its text)."""
    event = None if on_event is None else (lambda _, kind, value: on_event(kind, value))
    return run_agents(engine, [messages], tools, params, max_rounds=max_rounds, first_choice=first_choice,
                      on_event=event)[0]


def run_agents(engine: Engine, conversations: Sequence[list[dict]], tools: Sequence[Tool], params: SamplingParams, *,
               max_rounds: int = 4, first_choice: Any = "auto",
               on_event: Callable[[int, str, Any], None] | None = None) -> list[tuple[ToolReply, list[dict]]]:
    """`run_agent` for several conversations: each round's turns are generated together;
    `on_event(i, kind, value)` names the conversation."""
    by_name = {t.spec.name: t for t in tools}
    specs = [t.spec for t in tools]
    ongoing = [list(messages) for messages in conversations]
    finals: list[ToolReply | None] = [None] * len(ongoing)
    waiting = list(range(len(ongoing)))
    choice = first_choice
    for round_ in range(max_rounds + 1):
        replies = chat_many(engine, [ongoing[i] for i in waiting], specs, params,
                            tool_choice=choice if round_ < max_rounds else "none")
        calling = []
        for i, reply in zip(waiting, replies):
            ongoing[i].append(reply.message())
            if on_event:
                on_event(i, "reply", reply)
            if not reply.tool_calls:
                finals[i] = reply
                continue
            calling.append(i)
            for call in reply.tool_calls:
                if on_event:
                    on_event(i, "call", call)
                result = call_tool(by_name, call)
                if on_event:
                    on_event(i, "result", result)
                ongoing[i].append({"role": "tool", "tool_call_id": call.id, "name": call.name, "content": result})
        waiting, choice = calling, "auto"
        if not waiting:
            break
    return [(final, conversation) for final, conversation in zip(finals, ongoing)]  # the last round calls nothing


def stream_tool_events(deltas: Iterator[str], tools: Sequence[ToolSpec]) -> Iterator[tuple[str, Any]]:
    """("content", text) pieces as they come, then ("tool_calls", [ToolCall]) if the reply called tools."""
    splitter = ToolStream(tools)
    for delta in deltas:
        out = splitter.feed(delta)
        if out:
            yield "content", out
    rest, calls = splitter.finish()
    if rest:
        yield "content", rest
    if calls:
        yield "tool_calls", calls


# ---------------------------------------------------------------------- built-in tools
_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
           ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow}
_UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg}
_FUNCTIONS = {"sqrt": math.sqrt, "abs": abs, "round": round, "min": min, "max": max, "log": math.log,
              "exp": math.exp, "sin": math.sin, "cos": math.cos, "tan": math.tan, "floor": math.floor,
              "ceil": math.ceil}
_CONSTANTS = {"pi": math.pi, "e": math.e}
MAX_EXPRESSION_CHARS = 500


def calculate(expression: str) -> int | float:
    """Evaluate arithmetic (+ - * / // % ** and parentheses, numbers, pi, e, sqrt, log, ...) by
    walking its syntax tree; anything else (names, attributes, calls of other functions) is
    refused with ValueError, and huge powers are refused before they are computed."""
    if not isinstance(expression, str) or not expression.strip():
        raise ValueError("the expression is empty")
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise ValueError(f"the expression is longer than {MAX_EXPRESSION_CHARS} characters")
    text = expression.replace("^", "**").replace("×", "*").replace("÷", "/").strip()
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError:
        raise ValueError(f"not an arithmetic expression: {expression!r}") from None

    def value(node: ast.AST) -> int | float:
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
            left, right = value(node.left), value(node.right)
            if isinstance(node.op, ast.Pow) and (abs(right) > 1000 or (abs(left) > 1 and abs(right) * math.log2(abs(left) + 1) > 4096)):
                raise ValueError("the power is too large")
            if isinstance(node.op, (ast.Div, ast.FloorDiv, ast.Mod)) and right == 0:
                raise ValueError("division by zero")
            return _BINARY[type(node.op)](left, right)
        if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
            return _UNARY[type(node.op)](value(node.operand))
        if isinstance(node, ast.Name) and node.id in _CONSTANTS:
            return _CONSTANTS[node.id]
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _FUNCTIONS
                and not node.keywords and len(node.args) <= 2):
            return _FUNCTIONS[node.func.id](*[value(a) for a in node.args])
        raise ValueError(f"not allowed in an arithmetic expression: {ast.unparse(node)!r}")

    result = value(tree.body)
    if isinstance(result, complex):
        raise ValueError("the result is not a real number")
    if isinstance(result, float) and result.is_integer() and abs(result) < 2**53:
        return int(result)
    return result


def _calculator(expression: str) -> str:
    result = calculate(expression)
    return repr(round(result, 10)) if isinstance(result, float) else str(result)


PYTHON_LIMITS = SandboxConfig(timeout_s=5.0, memory_mb=256, file_size_mb=1, output_chars=4000)


def run_python_tool(code: str, config: SandboxConfig = PYTHON_LIMITS) -> str:
    """Run code in lmforge's sandbox (no files outside its folder, no network, time and memory
    limits); the report is what the model reads: its output, or how it was stopped."""
    result = run_python(code, config)
    if result.status == "completed":
        return result.stdout.strip() or "(no output; print the value you want to see)"
    reasons = {"timeout": f"stopped: it ran past the {config.timeout_s:g} s time limit",
               "cpu_limit": "stopped: it used up its CPU time",
               "memory": f"stopped: it ran out of memory (limit {config.memory_mb} MB)",
               "denied": "stopped: it tried something not allowed (files, network, processes)"}
    reason = reasons.get(result.status, f"failed ({result.status})")
    tail = (result.stderr.strip().splitlines() or [""])[-1]
    return f"{reason}" + (f": {tail}" if tail else "") + (f"\noutput: {result.stdout.strip()}" if result.stdout.strip() else "")


CALCULATOR = Tool(ToolSpec(
    "calculator", "Evaluate an arithmetic expression such as (17 + 5) * 3 and return the number.",
    {"type": "object", "properties": {"expression": {"type": "string", "description": "the arithmetic expression",
                                                      "pattern": r"^[0-9+*/(). -]{1,200}$"}},
     "required": ["expression"], "additionalProperties": False}), _calculator)

PYTHON = Tool(ToolSpec(
    "python", "Run a short Python program in a sandbox and return what it prints.",
    {"type": "object", "properties": {"code": {"type": "string", "description": "the Python program", "minLength": 1}},
     "required": ["code"], "additionalProperties": False}), run_python_tool)

BUILTIN_TOOLS = {"calculator": CALCULATOR, "python": PYTHON}
