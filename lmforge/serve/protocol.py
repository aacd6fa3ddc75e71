"""OpenAI request parsing and validation, and the response / stream-chunk shapes.

Everything here is pure: bytes or dicts in, frozen dataclasses or dicts out. A request is fully
checked (types, ranges, sizes) before the server tokenizes or allocates anything for it; each
problem becomes an `APIError` naming the offending parameter.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from lmforge.serve.errors import APIError, invalid

MAX_BODY_BYTES = 4 * 1024 * 1024
MAX_MESSAGES = 1024
MAX_PROMPTS = 64
MAX_N = 16
MAX_STOP = 4
MAX_STOP_CHARS = 256
MAX_TOP_LOGPROBS = 20
CHAT_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant", "tool": "tool"}


# ---------------------------------------------------------------------- body -> JSON object
def too_large() -> APIError:
    return APIError(413, f"request body is larger than {MAX_BODY_BYTES} bytes", code="request_too_large")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def parse_json_body(raw: bytes, content_type: str | None) -> dict[str, Any]:
    """The request body as a JSON object; NaN/Infinity, other JSON values and bad types -> 400."""
    media = (content_type or "").split(";")[0].strip().lower()
    if media != "application/json":
        raise invalid(f"Content-Type must be application/json, got {content_type or 'nothing'!r}", code="unsupported_media_type")
    if len(raw) > MAX_BODY_BYTES:
        raise too_large()
    try:
        data = json.loads(raw, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, bad UTF-8, NaN, huge integers, deep nesting
        reason = "nesting too deep" if isinstance(exc, RecursionError) else str(exc)
        raise invalid(f"request body is not valid JSON: {reason}", code="invalid_json") from None
    if not isinstance(data, dict):
        raise invalid(f"request body must be a JSON object, got {_kind(data)}", code="invalid_json")
    if b"\\u" in raw:  # a \uD800-style escape can smuggle in a lone surrogate, which is not text
        try:
            json.dumps(data, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise invalid("request body contains an unpaired UTF-16 surrogate escape", code="invalid_json") from None
    return data


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "an array",
            dict: "an object"}.get(type(value), type(value).__name__)


# ---------------------------------------------------------------------- field readers
def _int(body: Mapping, name: str, lo: int, hi: int, default: int | None = None) -> int | None:
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, int) or isinstance(value, bool):
        raise invalid(f"{name} must be an integer, got {_kind(value)}", name)
    if not lo <= value <= hi:
        raise invalid(f"{name} must be between {lo} and {hi}, got {value}", name)
    return value


def _number(body: Mapping, name: str, lo: float, hi: float, default: float | None = None) -> float | None:
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise invalid(f"{name} must be a number, got {_kind(value)}", name)
    if not math.isfinite(value) or not lo <= value <= hi:
        raise invalid(f"{name} must be between {lo} and {hi}, got {value}", name)
    return float(value)


def _bool(body: Mapping, name: str, default: bool = False) -> bool:
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise invalid(f"{name} must be a boolean, got {_kind(value)}", name)
    return value


def _object(body: Mapping, name: str) -> Mapping | None:
    value = body.get(name)
    if value is not None and not isinstance(value, dict):
        raise invalid(f"{name} must be an object, got {_kind(value)}", name)
    return value


# ---------------------------------------------------------------------- parsed requests
@dataclass(frozen=True)
class Sampling:
    """The generation knobs shared by both endpoints (OpenAI names, already range-checked)."""

    max_tokens: int | None
    temperature: float
    top_p: float | None
    top_k: int | None
    min_p: float | None
    repetition_penalty: float
    presence_penalty: float
    frequency_penalty: float
    seed: int | None
    stop: tuple[str, ...]
    ignore_eos: bool
    n: int
    stream: bool
    include_usage: bool
    logprobs: int | None  # top alternatives per token, or None for no log-probabilities


@dataclass(frozen=True)
class ResponseFormat:
    type: str  # "json_object", "json_schema", "regex", "grammar" or "choice"
    schema: Any = None  # the JSON schema of "json_schema", the regex or grammar text, the tuple of choices
    name: str | None = None
    param: str = "response_format"  # where it came from (for errors)


@dataclass(frozen=True)
class Tools:
    """`tools`, `tool_choice` and `parallel_tool_calls`, as sent (checked by lmforge.infer.tools)."""

    tools: Any
    choice: Any
    parallel: bool


@dataclass(frozen=True)
class ChatRequest:
    model: str
    messages: tuple[dict[str, Any], ...]
    sampling: Sampling
    response_format: ResponseFormat | None
    tools: Tools | None = None


@dataclass(frozen=True)
class CompletionRequest:
    model: str
    prompts: tuple[str | tuple[int, ...], ...]
    sampling: Sampling
    echo: bool


def _model(body: Mapping) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise invalid("model is required (a string naming the model, see GET /v1/models)", "model")
    return model


def _sampling(body: Mapping, max_tokens_cap: int, logprobs: int | None) -> Sampling:
    max_tokens = _int(body, "max_completion_tokens", 1, max_tokens_cap)
    if max_tokens is None:
        max_tokens = _int(body, "max_tokens", 1, max_tokens_cap)
    top_p = _number(body, "top_p", 0.0, 1.0)
    temperature = _number(body, "temperature", 0.0, 2.0, 1.0)
    if top_p == 0.0:  # nucleus of one token: greedy
        top_p, temperature = None, 0.0
    stop = body.get("stop")
    if stop is None:
        stop = ()
    elif isinstance(stop, str):
        stop = (stop,)
    elif isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        stop = tuple(stop)
    else:
        raise invalid("stop must be a string or an array of strings", "stop")
    if len(stop) > MAX_STOP or any(not s or len(s) > MAX_STOP_CHARS for s in stop):
        raise invalid(f"stop takes at most {MAX_STOP} non-empty strings of at most {MAX_STOP_CHARS} characters", "stop")
    seed = _int(body, "seed", -(2**63), 2**63 - 1)
    stream = _bool(body, "stream")
    options = _object(body, "stream_options")
    include_usage = False
    if options is not None:
        if not stream:
            raise invalid("stream_options is only allowed when stream is true", "stream_options")
        include_usage = _bool(options, "include_usage")
    bias = body.get("logit_bias")
    if bias not in (None, {}):
        raise invalid("logit_bias is not supported by this server", "logit_bias", code="unsupported_parameter")
    return Sampling(
        max_tokens=max_tokens,
        temperature=temperature,
        top_p=top_p,
        top_k=_int(body, "top_k", 1, 1 << 20),
        min_p=_number(body, "min_p", 0.0, 1.0),
        repetition_penalty=_number(body, "repetition_penalty", 0.01, 10.0, 1.0),
        presence_penalty=_number(body, "presence_penalty", -2.0, 2.0, 0.0),
        frequency_penalty=_number(body, "frequency_penalty", -2.0, 2.0, 0.0),
        seed=None if seed is None else seed % 2**63,
        stop=stop,
        ignore_eos=_bool(body, "ignore_eos"),
        n=_int(body, "n", 1, MAX_N, 1),
        stream=stream,
        include_usage=include_usage,
        logprobs=logprobs,
    )


def _content(message: Mapping, index: int) -> str | list[dict[str, Any]]:
    content = message.get("content")
    where = f"messages[{index}].content"
    if content is None:
        if message.get("role") == "assistant":
            return ""
        raise invalid(f"{where} is required", where)
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts: text, and images for a vision-language model
        pieces, parts = [], []
        for j, part in enumerate(content):
            if isinstance(part, dict) and part.get("type") == "image_url":
                image = part.get("image_url")
                url = image.get("url") if isinstance(image, dict) else None
                if not isinstance(url, str) or not url:
                    raise invalid(f"{where}[{j}]: an image_url part needs image_url.url (a data:image/...;base64 URL)", where)
                parts.append({"type": "image_url", "image_url": {"url": url}})
                continue
            if not isinstance(part, dict) or part.get("type") not in ("text", "input_text") or not isinstance(part.get("text"), str):
                kind = part.get("type") if isinstance(part, dict) else _kind(part)
                raise invalid(f"{where}[{j}]: only text and image_url content parts are supported, got {kind!r}", where)
            pieces.append(part["text"])
            parts.append({"type": "text", "text": part["text"]})
        # Text-only parts are joined; with an image the parts stay a list (see serve.vision).
        return parts if any(p["type"] == "image_url" for p in parts) else "".join(pieces)
    raise invalid(f"{where} must be a string or an array of content parts, got {_kind(content)}", where)


def _messages(body: Mapping) -> tuple[dict[str, str], ...]:
    messages = body.get("messages")
    if not isinstance(messages, list):
        raise invalid("messages must be an array of message objects", "messages")
    if not messages:
        raise invalid("messages must not be empty", "messages")
    if len(messages) > MAX_MESSAGES:
        raise invalid(f"at most {MAX_MESSAGES} messages are accepted", "messages")
    out = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise invalid(f"messages[{i}] must be an object, got {_kind(message)}", f"messages[{i}]")
        role = message.get("role")
        if role not in CHAT_ROLES:
            raise invalid(f"messages[{i}].role must be one of {', '.join(CHAT_ROLES)}, got {role!r}", f"messages[{i}].role")
        item: dict[str, Any] = {"role": CHAT_ROLES[role], "content": _content(message, i)}
        if message.get("tool_calls"):
            item["tool_calls"] = _tool_calls(message["tool_calls"], i)
        for key in ("tool_call_id", "name"):
            if isinstance(message.get(key), str):
                item[key] = message[key]
        out.append(item)
    return tuple(out)


def _tool_calls(calls: Any, index: int) -> list[dict[str, Any]]:
    where = f"messages[{index}].tool_calls"
    if not isinstance(calls, list):
        raise invalid(f"{where} must be an array", where)
    out = []
    for j, call in enumerate(calls):
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not isinstance(fn.get("arguments", ""), str):
            raise invalid(f"{where}[{j}] must be {{id, type: function, function: {{name, arguments: JSON text}}}}", where)
        try:
            arguments = json.loads(fn.get("arguments") or "{}")
        except ValueError:
            raise invalid(f"{where}[{j}].function.arguments is not valid JSON", where) from None
        out.append({"id": str(call.get("id", "")), "type": "function",
                    "function": {"name": fn["name"], "arguments": arguments}})
    return out


_STRUCTURED = {"json": "json_schema", "regex": "regex", "grammar": "grammar", "choice": "choice"}
_GUIDED = {"guided_json": "json", "guided_regex": "regex", "guided_grammar": "grammar", "guided_choice": "choice"}


def _structured_outputs(body: Mapping) -> ResponseFormat | None:
    """vLLM's extra field: structured_outputs {json | regex | grammar | choice | json_object}
    (or the older guided_json, guided_regex, guided_grammar, guided_choice fields)."""
    spec = _object(body, "structured_outputs")
    where = "structured_outputs"
    if spec is None:
        spec = {key: body[old] for old, key in _GUIDED.items() if body.get(old) is not None}
        where = next((old for old in _GUIDED if body.get(old) is not None), where)
        if not spec:
            return None
    given = [k for k in (*_STRUCTURED, "json_object") if spec.get(k) not in (None, False)]
    if len(given) != 1:
        raise invalid("structured_outputs takes exactly one of json, regex, grammar, choice, json_object", where)
    key = given[0]
    value = spec[key]
    if key == "json_object":
        return ResponseFormat("json_object", param=where)
    if key == "json":
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except ValueError:
                raise invalid("structured_outputs.json is not valid JSON", where, code="invalid_json_schema") from None
        if not isinstance(value, (dict, bool)):
            raise invalid("structured_outputs.json must be a JSON schema object", where, code="invalid_json_schema")
    elif key == "choice":
        if not isinstance(value, list) or not value or not all(isinstance(c, str) and c for c in value):
            raise invalid("structured_outputs.choice must be a non-empty array of non-empty strings", where)
        value = tuple(value)
    elif not isinstance(value, str) or not value.strip():
        raise invalid(f"structured_outputs.{key} must be a non-empty string", where)
    return ResponseFormat(_STRUCTURED[key], value, param=where)


def _tools(body: Mapping) -> Tools | None:
    if body.get("functions") or body.get("function_call"):
        raise invalid("functions and function_call are deprecated; send tools and tool_choice", "functions",
                      code="unsupported_parameter")
    tools, choice = body.get("tools"), body.get("tool_choice")
    if tools is None or tools == []:
        if choice not in (None, "none"):
            raise invalid("tool_choice needs tools", "tool_choice")
        return None
    return Tools(tools, choice, _bool(body, "parallel_tool_calls", True))


def _response_format(body: Mapping) -> ResponseFormat | None:
    fmt = _object(body, "response_format")
    if fmt is None:
        return None
    kind = fmt.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return ResponseFormat("json_object")
    if kind == "json_schema":
        spec = fmt.get("json_schema")
        if not isinstance(spec, dict):
            raise invalid("response_format.json_schema must be an object with a schema", "response_format.json_schema")
        name = spec.get("name")
        if name is not None and not isinstance(name, str):
            raise invalid("response_format.json_schema.name must be a string", "response_format.json_schema.name")
        schema = spec.get("schema", {})
        if not isinstance(schema, (dict, bool)):
            raise invalid("response_format.json_schema.schema must be a JSON schema object",
                          "response_format.json_schema.schema", code="invalid_json_schema")
        return ResponseFormat("json_schema", schema, name)
    raise invalid(f"response_format.type must be text, json_object or json_schema, got {kind!r}", "response_format.type")


def parse_chat(body: Mapping, max_tokens_cap: int) -> ChatRequest:
    want = _bool(body, "logprobs")
    top = _int(body, "top_logprobs", 0, MAX_TOP_LOGPROBS)
    if top is not None and not want:
        raise invalid("top_logprobs needs logprobs to be true", "top_logprobs")
    sampling = _sampling(body, max_tokens_cap, (top or 0) if want else None)
    response_format = _response_format(body)
    structured = _structured_outputs(body)
    if response_format is not None and structured is not None:
        raise invalid("send either response_format or structured_outputs, not both", structured.param)
    response_format = response_format or structured
    tools = _tools(body)
    if tools is not None and response_format is not None and tools.choice != "none":
        raise invalid("tools cannot be combined with a structured response format", "response_format")
    if (response_format is not None or tools is not None) and sampling.ignore_eos:  # constrained output must end
        raise invalid("ignore_eos cannot be combined with a response_format, structured_outputs or tools", "ignore_eos")
    return ChatRequest(model=_model(body), messages=_messages(body), sampling=sampling,
                       response_format=response_format, tools=tools)


def _prompts(body: Mapping, vocab_size: int) -> tuple[str | tuple[int, ...], ...]:
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        return (prompt,)
    if not isinstance(prompt, list) or not prompt:
        raise invalid("prompt must be a string, an array of strings, an array of token ids or an array of those", "prompt")

    def ids(values: list, where: str) -> tuple[int, ...]:
        for value in values:
            if not isinstance(value, int) or isinstance(value, bool):
                raise invalid(f"{where} must hold integer token ids, got {_kind(value)}", "prompt")
            if not 0 <= value < vocab_size:
                raise invalid(f"{where}: token id {value} is outside the vocabulary [0, {vocab_size})", "prompt")
        return tuple(values)

    if all(isinstance(p, int) and not isinstance(p, bool) for p in prompt):
        return (ids(prompt, "prompt"),)
    if len(prompt) > MAX_PROMPTS:
        raise invalid(f"at most {MAX_PROMPTS} prompts are accepted per request", "prompt")
    out: list[str | tuple[int, ...]] = []
    for i, item in enumerate(prompt):
        if isinstance(item, str):
            out.append(item)
        elif isinstance(item, list) and item:
            out.append(ids(item, f"prompt[{i}]"))
        else:
            raise invalid(f"prompt[{i}] must be a string or a non-empty array of token ids", "prompt")
    return tuple(out)


def parse_completion(body: Mapping, max_tokens_cap: int, vocab_size: int) -> CompletionRequest:
    if body.get("suffix") not in (None, ""):
        raise invalid("suffix is not supported by this server", "suffix", code="unsupported_parameter")
    n = body.get("n", 1)
    if body.get("best_of") not in (None, n):
        raise invalid("best_of other than n is not supported by this server", "best_of", code="unsupported_parameter")
    logprobs = _int(body, "logprobs", 0, MAX_TOP_LOGPROBS)
    echo = _bool(body, "echo")
    if echo and logprobs is not None:
        raise invalid("echo together with logprobs is not supported by this server", "echo", code="unsupported_parameter")
    sampling = _sampling(body, max_tokens_cap, logprobs)
    prompts = _prompts(body, vocab_size)
    if len(prompts) * sampling.n > MAX_N:
        raise invalid(f"prompts x n may be at most {MAX_N}, got {len(prompts)} x {sampling.n}", "n")
    return CompletionRequest(model=_model(body), prompts=prompts, sampling=sampling, echo=echo)


# ---------------------------------------------------------------------- responses
def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def chat_logprobs(entries: list[dict[str, Any]]) -> dict[str, Any]:
    """entries: [{"token", "logprob", "bytes", "top": [(token, logprob, bytes)]}] -> OpenAI chat logprobs."""
    return {"content": [{"token": e["token"], "logprob": e["logprob"], "bytes": e["bytes"],
                         "top_logprobs": [{"token": t, "logprob": lp, "bytes": b} for t, lp, b in e["top"]]}
                        for e in entries], "refusal": None}


def completion_logprobs(entries: list[dict[str, Any]], text_start: int = 0) -> dict[str, Any]:
    offsets, position = [], text_start
    for e in entries:
        offsets.append(position)
        position += len(e["token"])
    return {"tokens": [e["token"] for e in entries], "token_logprobs": [e["logprob"] for e in entries],
            "top_logprobs": [{t: lp for t, lp, _ in e["top"]} for e in entries], "text_offset": offsets}


# ---------------------------------------------------------------------- embeddings and RAG
MAX_EMBEDDING_INPUTS = 256
MAX_EMBEDDING_CHARS = 100_000


def parse_embedding_input(body: Mapping) -> list[str]:
    """`input` of /v1/embeddings: a string or an array of strings (token-id inputs are refused)."""
    value = body.get("input")
    texts = [value] if isinstance(value, str) else value
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
        raise invalid("input must be a string or a non-empty array of strings", "input")
    if len(texts) > MAX_EMBEDDING_INPUTS:
        raise invalid(f"at most {MAX_EMBEDDING_INPUTS} inputs are accepted per request", "input")
    if any(len(t) > MAX_EMBEDDING_CHARS for t in texts):
        raise invalid(f"each input may hold at most {MAX_EMBEDDING_CHARS} characters", "input")
    fmt = body.get("encoding_format")
    if fmt not in (None, "float", "base64"):
        raise invalid("encoding_format must be float or base64", "encoding_format")
    if body.get("dimensions") is not None:
        raise invalid("dimensions is not supported by this server", "dimensions", code="unsupported_parameter")
    return texts


def embedding_response(vectors: list[list[float]], model: str, tokens: int, encoding: str) -> dict[str, Any]:
    import base64
    import struct

    def encode(vector: list[float]) -> Any:
        if encoding == "base64":
            return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")
        return vector

    return {"object": "list", "model": model,
            "data": [{"object": "embedding", "index": i, "embedding": encode(v)} for i, v in enumerate(vectors)],
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}


def parse_rag_question(body: Mapping) -> tuple[str, int]:
    question = body.get("question")
    if not isinstance(question, str) or not question.strip():
        raise invalid("question must be a non-empty string", "question")
    if len(question) > MAX_EMBEDDING_CHARS:
        raise invalid(f"question may hold at most {MAX_EMBEDDING_CHARS} characters", "question")
    return question, _int(body, "k", 1, 20, 5)
