"""Bad requests get the right status and OpenAI's error shape, never a 500; the server keeps serving."""

from __future__ import annotations

import json

import httpx
import pytest

MODEL = "smollm2-135m-instruct"  # the embedded GGUF the live servers serve

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
HI = [{"role": "user", "content": "Hi"}]
LONG_PROMPT = "word " * 400


def chat(**fields):
    return {"model": MODEL, "messages": HI, "max_tokens": 4, **fields}


def completion(**fields):
    return {"model": MODEL, "prompt": "Hello", "max_tokens": 4, **fields}


# (name, path, body: dict | raw bytes, content type, status, expected param or None, expected code or None)
CASES = [
    ("malformed JSON", CHAT, b'{"model": "x", "messages": [', "application/json", 400, None, "invalid_json"),
    ("body is an array", CHAT, b"[1, 2, 3]", "application/json", 400, None, "invalid_json"),
    ("body is a string", COMPLETIONS, b'"hello"', "application/json", 400, None, "invalid_json"),
    ("wrong content type", CHAT, json.dumps(chat()).encode(), "text/plain", 400, None, "unsupported_media_type"),
    ("form content type", COMPLETIONS, b"model=x&prompt=y", "application/x-www-form-urlencoded", 400, None,
     "unsupported_media_type"),
    ("NaN literal", CHAT, b'{"model": "%s", "messages": [{"role": "user", "content": "Hi"}], "temperature": NaN}'
     % MODEL.encode(), "application/json", 400, None, "invalid_json"),
    ("Infinity by overflow", CHAT, b'{"model": "%s", "messages": [{"role": "user", "content": "Hi"}], "top_p": 1e999}'
     % MODEL.encode(), "application/json", 400, "top_p", None),
    ("lone surrogate in a message", CHAT, b'{"model": "%s", "messages": [{"role": "user", "content": "\\ud800"}]}'
     % MODEL.encode(), "application/json", 400, None, "invalid_json"),
    ("deeply nested body", CHAT, b"[" * 100_000 + b"]" * 100_000, "application/json", 400, None, "invalid_json"),
    ("unknown model", CHAT, chat(model="gpt-9"), None, 400, "model", "model_not_found"),
    ("missing model", COMPLETIONS, {"prompt": "Hi"}, None, 400, "model", None),
    ("empty messages", CHAT, chat(messages=[]), None, 400, "messages", None),
    ("messages not a list", CHAT, chat(messages="Hi"), None, 400, "messages", None),
    ("unknown role", CHAT, chat(messages=[{"role": "wizard", "content": "Hi"}]), None, 400, "messages[0].role", None),
    ("image content part", CHAT, chat(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]),
     None, 400, "messages[0].content", None),
    ("prompt + max_tokens beyond context", CHAT,
     chat(messages=[{"role": "user", "content": LONG_PROMPT}], max_tokens=8000), None, 400, "messages",
     "context_length_exceeded"),
    ("max_tokens beyond context", COMPLETIONS, completion(max_tokens=10**6), None, 400, "max_tokens", None),
    ("negative max_tokens", CHAT, chat(max_tokens=-5), None, 400, "max_tokens", None),
    ("zero max_completion_tokens", CHAT, chat(max_completion_tokens=0), None, 400, "max_completion_tokens", None),
    ("temperature 1e6", CHAT, chat(temperature=1e6), None, 400, "temperature", None),
    ("temperature as text", CHAT, chat(temperature="hot"), None, 400, "temperature", None),
    ("top_p -1", CHAT, chat(top_p=-1), None, 400, "top_p", None),
    ("n 10^6", CHAT, chat(n=10**6), None, 400, "n", None),
    ("n beyond 64-bit", COMPLETIONS, completion(n=10**40), None, 400, "n", None),
    ("negative n", COMPLETIONS, completion(n=-1), None, 400, "n", None),
    ("presence_penalty 5", CHAT, chat(presence_penalty=5), None, 400, "presence_penalty", None),
    ("top_logprobs 50", CHAT, chat(logprobs=True, top_logprobs=50), None, 400, "top_logprobs", None),
    ("top_logprobs without logprobs", CHAT, chat(top_logprobs=2), None, 400, "top_logprobs", None),
    ("too many stop strings", CHAT, chat(stop=["a", "b", "c", "d", "e"]), None, 400, "stop", None),
    ("token id out of range", COMPLETIONS, completion(prompt=[1, 2, 10**9]), None, 400, "prompt", None),
    ("negative token id", COMPLETIONS, completion(prompt=[[5, -3]]), None, 400, "prompt", None),
    ("invalid JSON schema type", CHAT,
     chat(response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "banana"}}}),
     None, 400, "response_format.json_schema.schema", "invalid_json_schema"),
    ("unsupported schema keyword", CHAT,
     chat(response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {
         "type": "object", "properties": {"a": {"type": "string", "not": {"pattern": "^a+$"}}}}}}),
     None, 400, "response_format.json_schema.schema", "invalid_json_schema"),
    ("unknown response_format", CHAT, chat(response_format={"type": "yaml"}), None, 400, "response_format.type", None),
    ("max_tokens too small for the schema", CHAT,
     chat(max_tokens=3, response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {
         "type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}}}),
     None, 400, "max_tokens", None),
    ("stream_options without stream", CHAT, chat(stream_options={"include_usage": True}), None, 400, "stream_options",
     None),
    ("logit_bias", CHAT, chat(logit_bias={"5": 10}), None, 400, "logit_bias", "unsupported_parameter"),
    ("ignore_eos with JSON output", CHAT, chat(ignore_eos=True, response_format={"type": "json_object"}), None, 400,
     "ignore_eos", None),
    ("tool with an invalid parameters schema", CHAT,
     chat(tools=[{"type": "function", "function": {"name": "f", "parameters": {
         "type": "object", "properties": {"x": {"type": "banana"}}}}}]), None, 400, "tools[0].function.parameters",
     "invalid_tool_schema"),
    ("tools with duplicate names", CHAT,
     chat(tools=[{"type": "function", "function": {"name": "f"}}, {"type": "function", "function": {"name": "f"}}]),
     None, 400, "tools[1].function.name", None),
    ("tool_choice naming an unknown tool", CHAT,
     chat(tools=[{"type": "function", "function": {"name": "f"}}],
          tool_choice={"type": "function", "function": {"name": "g"}}), None, 400, "tool_choice", None),
    ("tool_choice without tools", CHAT, chat(tool_choice="required"), None, 400, "tool_choice", None),
    ("legacy functions", CHAT, chat(functions=[{"name": "f"}]), None, 400, "functions", "unsupported_parameter"),
    ("bad regex in structured_outputs", CHAT, chat(structured_outputs={"regex": "[0-9"}), None, 400,
     "structured_outputs", "invalid_grammar"),
]


def check_shape(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["type"], str) and error["type"]
    return error


@pytest.mark.parametrize("name, path, body, content_type, status, param, code", CASES, ids=[c[0] for c in CASES])
def test_bad_request(server, name, path, body, content_type, status, param, code):
    service = server.app.state.service
    cache_before = service.engine.cache
    if isinstance(body, dict):
        raw, content_type = json.dumps(body).encode(), content_type or "application/json"
    else:
        raw = body
    response = httpx.post(server.url + path, content=raw, headers={"Content-Type": content_type}, timeout=30)
    error = check_shape(response, status)
    assert error["type"] == "invalid_request_error"
    if param is not None:
        assert error["param"] == param
    if code is not None:
        assert error["code"] == code
    assert service.engine.cache is cache_before  # refused before the KV cache was touched


def test_a_normal_request_succeeds_after_the_bad_ones(server, client):
    assert len(CASES) >= 15
    for name, path, body, content_type, *_ in CASES:  # all of them again, back to back
        raw = json.dumps(body).encode() if isinstance(body, dict) else body
        response = httpx.post(server.url + path, content=raw, timeout=30,
                              headers={"Content-Type": content_type or "application/json"})
        assert 400 <= response.status_code < 500, name
    reply = client.chat.completions.create(model=MODEL, messages=HI, max_tokens=4, temperature=0)
    assert reply.choices[0].message.content
    assert server.wait_idle()["running"] == 0


def test_routing_errors_have_the_same_shape(server):
    assert check_shape(httpx.get(server.url + "/v1/nothing", timeout=10), 404)["type"] == "not_found_error"
    check_shape(httpx.get(server.url + CHAT, timeout=10), 405)
    check_shape(httpx.get(server.url + "/v1/models/gpt-9", timeout=10), 404)


def test_oversized_body_is_refused(server):
    body = json.dumps(chat(messages=[{"role": "user", "content": "x" * (5 * 1024 * 1024)}])).encode()
    response = httpx.post(server.url + CHAT, content=body, headers={"Content-Type": "application/json"}, timeout=30)
    assert check_shape(response, 413)["code"] == "request_too_large"


def test_over_capacity_gets_429_and_disconnects_free_their_rows(server):
    capacity = server.wait_idle()["capacity"]
    body = chat(max_tokens=2000, ignore_eos=True, stream=True)
    clients = [httpx.Client(timeout=60) for _ in range(capacity)]
    streams, lines = [], []
    try:
        for c in clients:
            stream = c.stream("POST", server.url + CHAT, json=body)
            response = stream.__enter__()
            streams.append(stream)
            assert response.status_code == 200
            lines.append(response.iter_lines())  # kept: dropping the iterator would close the connection
            assert next(lines[-1]).startswith("data: ")  # generation has started
        assert server.health()["running"] == capacity
        error = check_shape(httpx.post(server.url + CHAT, json=chat(), timeout=30), 429)
        assert error["type"] == "rate_limit_error" and error["code"] == "rate_limit_exceeded"
    finally:
        for stream, c in zip(streams, clients):
            stream.__exit__(None, None, None)
            c.close()
    steps_before = server.app.state.service.scheduler.steps
    # Clients left: their rows are freed long before 2000 tokens (counted in decode steps, not seconds).
    assert server.wait_idle(timeout=120)["running"] == 0
    assert server.app.state.service.scheduler.steps - steps_before < 1000
    assert httpx.post(server.url + CHAT, json=chat(), timeout=60).status_code == 200


def test_non_streaming_client_that_leaves_stops_its_generation(server):
    server.wait_idle()
    steps_before = server.app.state.service.scheduler.steps
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(server.url + CHAT, json=chat(max_tokens=3000, ignore_eos=True), timeout=1.5)
    assert server.wait_idle(timeout=120)["running"] == 0  # generous: a loaded machine must not flake it
    assert server.app.state.service.scheduler.steps - steps_before < 3000
