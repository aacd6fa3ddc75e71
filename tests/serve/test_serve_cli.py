"""`lmforge serve` as a user starts it (a subprocess), with --api-key: 401 on every inference route."""

from __future__ import annotations

import httpx
import pytest

from lmforge.cli.main import build_parser

MODEL = "smollm2-135m-instruct"  # the embedded GGUF the live servers serve

ROUTES = [("GET", "/v1/models"), ("GET", f"/v1/models/{MODEL}"), ("POST", "/v1/chat/completions"),
          ("POST", "/v1/completions")]
BODY = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "prompt": "Hi", "max_tokens": 3}


def test_serve_binds_loopback_by_default(monkeypatch):
    monkeypatch.delenv("LMFORGE_API_KEY", raising=False)
    args = build_parser().parse_args(["serve"])
    assert args.host == "127.0.0.1" and args.max_concurrency == 8 and args.api_key is None


@pytest.mark.parametrize("method, path", ROUTES)
@pytest.mark.parametrize("header", [None, "Bearer wrong-key", "Basic {key}", "Bearer"])
def test_inference_routes_need_the_key(keyed_server, method, path, header):
    headers = {"Authorization": header.format(key=keyed_server.api_key)} if header else {}
    response = httpx.request(method, keyed_server.url + path, json=BODY, headers=headers, timeout=30)
    assert response.status_code == 401
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["code"] == "invalid_api_key"


def test_key_is_checked_before_the_body(keyed_server):
    response = httpx.post(keyed_server.url + "/v1/chat/completions", content=b"{not json",
                          headers={"Content-Type": "application/json"}, timeout=30)
    assert response.status_code == 401


def test_with_the_key_the_openai_client_works(keyed_server):
    from openai import AuthenticationError, OpenAI

    good = OpenAI(base_url=keyed_server.v1, api_key=keyed_server.api_key, max_retries=0, timeout=120)
    reply = good.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=3,
                                         temperature=0)
    assert reply.choices[0].message.content and reply.usage.completion_tokens <= 3
    with pytest.raises(AuthenticationError):
        OpenAI(base_url=keyed_server.v1, api_key="nope", max_retries=0).models.list()
    assert httpx.get(keyed_server.url + "/health", timeout=10).json()["auth"] is True  # open: no key needed
    page = httpx.get(keyed_server.url + "/", timeout=10)
    assert page.status_code == 200 and "lmforge chat" in page.text


def test_cors_origin_flag(smollm):
    from fastapi.testclient import TestClient

    from lmforge.serve import ServeConfig, create_app

    args = build_parser().parse_args(["serve", "--cors-origin", "http://app.example", "--max-concurrency", "1"])
    config = ServeConfig(model_id=MODEL, max_concurrency=args.max_concurrency, cors_origins=tuple(args.cors_origin))
    preflight = {"Origin": "http://app.example", "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization,content-type"}
    with TestClient(create_app(*smollm, config)) as client:
        allowed = client.options("/v1/chat/completions", headers=preflight)
        assert allowed.status_code == 200
        assert allowed.headers["access-control-allow-origin"] == "http://app.example"
        other = client.options("/v1/chat/completions", headers={**preflight, "Origin": "http://evil.example"})
        assert "access-control-allow-origin" not in other.headers
    with TestClient(create_app(*smollm, ServeConfig(model_id=MODEL, max_concurrency=1))) as client:
        response = client.get("/health", headers={"Origin": "http://app.example"})
        assert "access-control-allow-origin" not in response.headers  # no --cors-origin: no cross-origin access
