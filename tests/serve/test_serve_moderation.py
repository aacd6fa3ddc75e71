"""The server's moderation hook (content_filter refusals, whole-reply output checks, the log),
usage timing and GET /metrics."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from lmforge.infer.moderation import Moderator, policy_from_dict
from lmforge.serve import ServeConfig, create_app

MODEL = "smollm2-135m-instruct"


@pytest.fixture(scope="module")
def moderated(smollm, tmp_path_factory):
    log = tmp_path_factory.mktemp("moderation") / "refused.jsonl"
    policy = policy_from_dict({"rules": [{"category": "weapons", "patterns": [r"\bbomb\b"], "stages": "input"},
                                         {"category": "geography", "patterns": [r"\bParis\b"], "stages": "output"}],
                               "refusal": "Sorry, no.", "log": str(log)}, "test-policy")
    model, tokenizer = smollm
    app = create_app(model, tokenizer, ServeConfig(model_id=MODEL, max_concurrency=2, moderation=Moderator(policy)))
    with TestClient(app) as client:
        yield client, log


def _chat(client, text, **extra):
    return client.post("/v1/chat/completions", json={"model": MODEL, "messages": [{"role": "user", "content": text}],
                                                     "max_tokens": 12, "temperature": 0, **extra})


def test_refused_input_never_reaches_the_model(moderated):
    client, log = moderated
    reply = _chat(client, "How do I build a bomb?").json()
    assert reply["choices"][0]["finish_reason"] == "content_filter"
    assert reply["choices"][0]["message"]["content"] == "Sorry, no."
    assert reply["usage"]["completion_tokens"] == 0 and reply["usage"]["prompt_tokens"] > 0
    record = json.loads(log.read_text().splitlines()[-1])
    assert record["stage"] == "input" and record["category"] == "weapons" and "bomb" in record["text"]
    streamed = _chat(client, "How do I build a bomb?", stream=True, stream_options={"include_usage": True})
    chunks = [json.loads(line[6:]) for line in streamed.text.splitlines() if line.startswith("data: {")]
    assert chunks[0]["object"] == "chat.completion.chunk" and chunks[0]["choices"][0]["delta"]["content"] == "Sorry, no."
    assert chunks[1]["choices"][0]["finish_reason"] == "content_filter" and chunks[-1]["usage"]["completion_tokens"] == 0
    assert streamed.text.rstrip().endswith("data: [DONE]")
    completion = client.post("/v1/completions", json={"model": MODEL, "prompt": "a bomb is", "max_tokens": 4}).json()
    assert completion["choices"][0]["finish_reason"] == "content_filter" and completion["choices"][0]["text"] == "Sorry, no."


def test_output_checked_whole_and_replaced(moderated):
    client, log = moderated
    reply = _chat(client, "What is the capital of France? Answer in one word.").json()
    assert reply["choices"][0]["finish_reason"] == "content_filter"  # the model says Paris
    assert reply["choices"][0]["message"]["content"] == "Sorry, no."
    assert reply["usage"]["completion_tokens"] > 0 and reply["usage"]["time_s"] > 0
    assert json.loads(log.read_text().splitlines()[-1])["stage"] == "output"
    streamed = _chat(client, "What is the capital of France? Answer in one word.", stream=True)
    chunks = [json.loads(line[6:]) for line in streamed.text.splitlines() if line.startswith("data: {")]
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == "Sorry, no."
    fine = _chat(client, "Say hello.").json()
    assert fine["choices"][0]["finish_reason"] in ("stop", "length") and fine["choices"][0]["message"]["content"]
    assert fine["usage"]["completion_tokens_per_s"] > 0


def test_metrics_in_prometheus_text_format(moderated):
    client, _ = moderated
    _chat(client, "Say hello.")
    response = client.get("/metrics")
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    text = response.text
    families = {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE")}
    assert {"lmforge_requests_total", "lmforge_prompt_tokens_total", "lmforge_completion_tokens_total",
            "lmforge_request_seconds", "lmforge_moderation_refusals_total", "lmforge_running_sequences"} <= families
    assert 'lmforge_requests_total{endpoint="chat",finish_reason="content_filter"}' in text
    samples = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line and not line.startswith("#")}
    count = samples['lmforge_request_seconds_count{endpoint="chat"}']
    assert samples['lmforge_request_seconds_bucket{endpoint="chat",le="+Inf"}'] == count
    buckets = [v for k, v in samples.items() if k.startswith('lmforge_request_seconds_bucket{endpoint="chat"')]
    assert buckets == sorted(buckets)  # cumulative
    assert samples['lmforge_moderation_refusals_total{stage="input"}'] >= 1
