"""The chat format: sandboxed Jinja chat templates and conversation -> (ids, loss mask).

This module is the single owner of how a conversation becomes text and tokens. Serving renders
prompts with `ChatTemplate.render(..., add_generation_prompt=True)`; SFT uses
`render_conversation`, whose mask is 1 exactly on what the model must learn to write: assistant
message contents and the token that closes each assistant turn.

Chat templates come from model files, i.e. from strangers. They are compiled in Jinja's
`ImmutableSandboxedEnvironment` with the same options Hugging Face uses (so templates render
identically), but stricter: touching an unsafe attribute fails at once instead of yielding an
undefined value, and string/list repetition and powers are size-capped.
"""

from __future__ import annotations

import bisect
import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from functools import lru_cache
from typing import Any

import jinja2
from jinja2 import nodes
from jinja2.ext import Extension
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError

from lmforge.data.chat import check_messages
from lmforge.tokenizer.tokenizer import Tokenizer

__all__ = [
    "DEFAULT_CHAT_TEMPLATE",
    "ROLES",
    "ChatTemplate",
    "render_conversation",
    "tool_messages",
    "validate_messages",
]

ROLES: frozenset[str] = frozenset({"system", "user", "assistant", "tool"})

# ChatML, for tokenizers that ship without a template (e.g. one we trained ourselves).
DEFAULT_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_MAX_TEMPLATE_CHARS = 1_000_000
_MAX_REPEAT_ITEMS = 1_000_000  # cap on 'x' * n and [..] * n inside a template
_MAX_POWER_EXPONENT = 1_000


class _SafeChatSandbox(ImmutableSandboxedEnvironment):
    """Immutable sandbox that refuses (rather than hides) unsafe access and caps blow-ups."""

    intercepted_binops = frozenset({"*", "**"})

    def unsafe_undefined(self, obj: Any, attribute: str) -> jinja2.Undefined:
        # The stock sandbox returns an Undefined, which prints as "" and only fails when used
        # further; a template that reaches for internals at all is hostile, so fail right here.
        raise SecurityError(f"access to attribute {attribute!r} of {type(obj).__name__!r} object is unsafe")

    def call_binop(self, context: jinja2.runtime.Context, operator_name: str, left: Any, right: Any) -> Any:
        if operator_name == "*":
            for seq, count in ((left, right), (right, left)):
                if isinstance(seq, (str, list, tuple)) and isinstance(count, int):
                    if len(seq) * max(count, 0) > _MAX_REPEAT_ITEMS:
                        raise SecurityError("repetition result too large")
        elif operator_name == "**":
            if isinstance(right, (int, float)) and abs(right) > _MAX_POWER_EXPONENT:
                raise SecurityError("exponent too large")
        return super().call_binop(context, operator_name, left, right)


class _GenerationTag(Extension):
    """Accept Hugging Face's `{% generation %}...{% endgeneration %}` markers; render their body as is.

    (Our mask is computed from character spans, so the markers carry no extra information.)
    """

    tags = {"generation"}

    def parse(self, parser: Any) -> nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return nodes.Scope(body).set_lineno(lineno)


def _raise_exception(message: str) -> None:
    raise jinja2.TemplateError(message)


def _tojson(value: Any, indent: int | None = None, separators: Any = None, sort_keys: bool = False) -> str:
    # Jinja's built-in tojson HTML-escapes <, > and &; chat templates expect plain JSON, unescaped
    # non-ASCII included (this is what transformers does).
    if separators is not None:
        separators = tuple(separators)
    return json.dumps(value, ensure_ascii=False, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


@lru_cache(maxsize=1)
def _environment() -> _SafeChatSandbox:
    env = _SafeChatSandbox(
        trim_blocks=True,
        lstrip_blocks=True,
        extensions=["jinja2.ext.loopcontrols", _GenerationTag],
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env


@lru_cache(maxsize=64)
def _compile(source: str) -> jinja2.Template:
    # Cached: SFT renders the same template for every example.
    env = _environment()
    try:
        return env.from_string(source)
    except jinja2.TemplateSyntaxError as exc:
        raise ValueError(f"chat template syntax error at line {exc.lineno}: {exc.message}") from exc
    except SecurityError as exc:
        raise ValueError(f"unsafe chat template: {exc}") from exc


def validate_messages(messages: Any) -> list[dict[str, Any]]:
    """Check a conversation; return shallow copies of its messages.

    Each message is a dict with `role` in {system, user, assistant, tool} and string `content`;
    other keys (name, tool_calls, ...) are passed through to the template.
    """
    return check_messages(messages, sorted(ROLES))


class ChatTemplate:
    """A compiled, sandboxed chat template."""

    def __init__(self, source: str) -> None:
        if not isinstance(source, str) or not source.strip():
            raise ValueError("chat template must be a non-empty string")
        if len(source) > _MAX_TEMPLATE_CHARS:
            raise ValueError(f"chat template is {len(source)} characters; the limit is {_MAX_TEMPLATE_CHARS}")
        self._source = source
        self._template = _compile(source)

    @classmethod
    def default(cls) -> ChatTemplate:
        """The ChatML template."""
        return cls(DEFAULT_CHAT_TEMPLATE)

    @classmethod
    def for_tokenizer(cls, tokenizer: Tokenizer) -> ChatTemplate:
        """The tokenizer's own template, or ChatML when it has none."""
        return cls(tokenizer.chat_template or DEFAULT_CHAT_TEMPLATE)

    @property
    def source(self) -> str:
        return self._source

    def render(self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = False, **extra: Any) -> str:
        """Render `messages`; `extra` becomes template variables (bos_token, tools, ...)."""
        return self._render(validate_messages(messages), add_generation_prompt, extra)

    def _render(self, messages: list[dict[str, Any]], add_generation_prompt: bool, extra: Mapping[str, Any]) -> str:
        try:
            return self._template.render(messages=messages, add_generation_prompt=add_generation_prompt, **extra)
        except SecurityError as exc:
            raise ValueError(f"unsafe chat template: {exc}") from exc
        except jinja2.TemplateError as exc:  # includes raise_exception(...) and undefined-variable errors
            raise ValueError(f"chat template failed: {exc}") from exc
        except (TypeError, KeyError, IndexError, AttributeError, ZeroDivisionError, OverflowError, RecursionError) as exc:
            raise ValueError(f"chat template failed: {type(exc).__name__}: {exc}") from exc

    def __repr__(self) -> str:
        return f"ChatTemplate({len(self._source)} chars)"


# ---------------------------------------------------------------------- tools in the conversation
# For templates that know nothing of tools (SmolLM2's), tools are described the way SmolLM2 was
# taught to call them: a <tools> list in the system message, calls as <tool_call>[...]</tool_call>.
_TOOLS_PREAMBLE = (
    "You can call functions. The functions you may call are listed below as JSON:\n<tools>{tools}</tools>\n\n"
    "To call functions, answer with only a JSON list of calls between <tool_call> and </tool_call>, like this:\n"
    '<tool_call>[{{"name": "function_name", "arguments": {{"argument": "value"}}}}]</tool_call>\n'
    "Function results come back in messages from the tool. When no call is needed, answer normally."
)


def _template_knows_tools(template: ChatTemplate) -> bool:
    from jinja2 import meta

    return "tools" in meta.find_undeclared_variables(_environment().parse(template.source))


def _call_items(calls: Any) -> list[dict[str, Any]]:
    """OpenAI tool calls (arguments as JSON text or objects) -> [{"name", "arguments": object}]."""
    items = []
    for call in calls:
        fn = call.get("function", call) if isinstance(call, Mapping) else {}
        arguments = fn.get("arguments", {})
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments) if arguments.strip() else {}
            except ValueError:
                raise ValueError(f"tool call arguments are not valid JSON: {arguments[:80]!r}") from None
        items.append({"name": fn.get("name"), "arguments": arguments})
    return items


def tool_messages(messages: Sequence[Mapping[str, Any]], tools: Sequence[Mapping[str, Any]] | None,
                  template: ChatTemplate) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Messages (and template variables) with tools, calls and results in the template's terms.

    A template that reads `tools` (Hugging Face's convention) gets them as a variable and the
    messages as they are (assistant `tool_calls` with arguments as objects). Any other template
    gets plain messages: the tools described in the system message, each assistant call written
    as <tool_call>[...]</tool_call> after its content, and `tool` messages as they are.
    """
    out = [dict(m) for m in messages]
    if _template_knows_tools(template):
        for message in out:
            if message.get("tool_calls"):
                message["content"] = message.get("content") or ""
                message["tool_calls"] = [{"type": "function", "function": item}
                                         for item in _call_items(message["tool_calls"])]
        return out, ({"tools": [dict(t) for t in tools]} if tools else {})
    for message in out:
        if message.get("tool_calls"):
            content = message.get("content") or ""
            message["content"] = (content + "\n" if content else "") + (
                "<tool_call>" + json.dumps(_call_items(message.pop("tool_calls")), ensure_ascii=False) + "</tool_call>")
    if tools:
        listed = [dict(t.get("function", t)) for t in tools]  # {"name", "description", "parameters"}
        described = _TOOLS_PREAMBLE.format(tools=json.dumps(listed, ensure_ascii=False))
        if out and out[0].get("role") == "system":
            out[0]["content"] = f"{out[0]['content']}\n\n{described}"
        else:
            out.insert(0, {"role": "system", "content": described})
    return out, {}


# ---------------------------------------------------------------------- conversation -> ids, mask
def _special_token_vars(tokenizer: Tokenizer) -> dict[str, str]:
    """bos_token / eos_token / pad_token strings, as transformers passes them to templates."""
    out: dict[str, str] = {}
    for name, token_id in (("bos_token", tokenizer.bos_id), ("eos_token", tokenizer.eos_id), ("pad_token", tokenizer.pad_id)):
        if token_id is not None:
            text = tokenizer.id_to_token(token_id)
            if text is not None:
                out[name] = text
    return out


def _marker(index: int, text: str) -> str:
    # Private-use characters: never produced by a template, unaffected by trim/strip filters.
    marker = f"\ue000lmforge-content-{index}\ue001"
    while marker in text:
        marker += "\ue002"
    return marker


def _content_span(
    template: ChatTemplate,
    messages: list[dict[str, Any]],
    index: int,
    rendered: str,
    add_generation_prompt: bool,
    extra: Mapping[str, Any],
) -> tuple[int, int] | None:
    """Character span of what the template emitted for `messages[index]['content']` in `rendered`.

    Re-render with the content swapped for a unique marker: the text before and after the marker
    is the scaffolding around the content, whatever the template's shape. The span between that
    prefix and suffix in the real rendering is the content as the template wrote it (verbatim, or
    trimmed / with reasoning removed, if the template does that). Falls back to matching
    incrementally rendered prefixes for templates whose scaffolding depends on the content.
    """
    marker = _marker(index, rendered)
    probe = [dict(m) for m in messages]
    probe[index]["content"] = marker
    try:
        marked = template._render(probe, add_generation_prompt, extra)
    except ValueError:
        marked = ""
    if marked.count(marker) == 1:
        start = marked.index(marker)
        prefix, suffix = marked[:start], marked[start + len(marker) :]
        if (
            len(prefix) + len(suffix) <= len(rendered)
            and rendered.startswith(prefix)
            and rendered.endswith(suffix)
        ):
            return start, len(rendered) - len(suffix)
    # Fallback: the conversation up to this message plus the generation prompt is a prefix, and
    # the content follows it verbatim.
    content = messages[index]["content"]
    for with_prompt in (True, False):
        try:
            head = template._render(messages[:index], with_prompt, extra)
        except ValueError:
            continue
        if rendered.startswith(head):
            start = rendered.find(content, len(head))
            if start >= 0 and (start == len(head) or rendered[len(head) : start].isspace()):
                return start, start + len(content)
    return None


def render_conversation(
    tokenizer: Tokenizer,
    messages: Sequence[Mapping[str, Any]],
    add_generation_prompt: bool = False,
    *,
    template: ChatTemplate | None = None,
    tools: Sequence[Mapping[str, Any]] | None = None,
) -> tuple[list[int], list[int]]:
    """Token ids of the rendered conversation and a 0/1 loss mask of the same length.

    The mask is 1 on every token overlapping an assistant message's content and on the tokens
    from the end of that content through the first end-of-turn token (an id in
    `tokenizer.eos_ids`, e.g. <|im_end|>) before the next message starts; 0 on everything else
    (system/user/tool turns, role headers, the generation prompt). The template decides about BOS
    (as in transformers): nothing is added beyond what it renders. `tools` (OpenAI tool
    definitions) and assistant `tool_calls` are rendered by `tool_messages`.
    """
    chat = template or ChatTemplate.for_tokenizer(tokenizer)
    extra = _special_token_vars(tokenizer)
    if tools or any(isinstance(m, Mapping) and m.get("tool_calls") for m in messages or ()):
        messages, tool_vars = tool_messages(messages, tools, chat)
        extra.update(tool_vars)
    checked = validate_messages(messages)
    rendered = chat._render(checked, add_generation_prompt, extra)
    ids, offsets = tokenizer.encode_with_offsets(rendered)
    starts = [a for a, _ in offsets]
    ends = [b for _, b in offsets]
    mask = [0] * len(ids)

    spans: dict[int, tuple[int, int] | None] = {}

    def span(i: int) -> tuple[int, int] | None:
        if i not in spans:
            spans[i] = _content_span(chat, checked, i, rendered, add_generation_prompt, extra)
        return spans[i]

    for i, message in enumerate(checked):
        if message["role"] != "assistant":
            continue
        located = span(i)
        if located is None:
            raise ValueError(
                f"messages[{i}]: cannot locate the assistant content in the rendered chat template, "
                "so no loss mask can be built"
            )
        start, end = located
        # Token spans are sorted, so bisect to the first token ending after `start` and mark
        # every token overlapping [start, end) (a token sharing a multi-byte char included).
        k = bisect.bisect_right(ends, start)
        while k < len(ids) and starts[k] < end:
            mask[k] = 1
            k += 1
        # The closing token: scan from the first token after the content up to where the next
        # message's content begins (never into the next turn's own end token).
        following = span(i + 1) if i + 1 < len(checked) else None
        limit = following[0] if following is not None else len(rendered)
        first = bisect.bisect_left(starts, end)
        for k in range(first, len(ids)):
            if offsets[k][0] >= limit:
                break
            if ids[k] in tokenizer.eos_ids:
                for j in range(first, k + 1):
                    mask[j] = 1
                break
    return ids, mask
