"""Images through the OpenAI API: a round trip with the official client to a served tiny
vision-language model, and clear 400s for hostile images and for a text-only model."""

from __future__ import annotations

import base64
import io
import json
import struct
import zlib

import pytest
from fastapi.testclient import TestClient
from openai import BadRequestError, OpenAI
from PIL import Image

from lmforge.data.images import ImageLimits
from lmforge.infer.moderation import Moderator, policy_from_dict
from lmforge.infer.vision import answer_prompt
from lmforge.serve import ServeConfig, create_app

MODEL = "tiny-vlm"


def png_url(size=(24, 24), colour=(200, 30, 30)) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def bomb_url() -> str:
    """A 1x1 PNG whose header promises 60000 x 60000 pixels."""
    buffer = io.BytesIO()
    Image.new("RGB", (1, 1)).save(buffer, format="PNG")
    png = buffer.getvalue()
    ihdr = b"IHDR" + struct.pack(">II", 60000, 60000) + png[24:29]
    png = png[:12] + ihdr + struct.pack(">I", zlib.crc32(ihdr)) + png[33:]
    return "data:image/png;base64," + base64.b64encode(png).decode()


def ask(url: str) -> list[dict]:
    return [{"role": "user", "content": [{"type": "text", "text": "What colour is it?"},
                                         {"type": "image_url", "image_url": {"url": url}}]}]


def test_round_trip_with_the_openai_client(vision_model):
    vlm, tokenizer = vision_model
    app = create_app(vlm.lm, tokenizer, ServeConfig(model_id=MODEL), vision=vlm)
    with TestClient(app) as http:
        client = OpenAI(base_url="http://testserver/v1", api_key="unused", http_client=http, max_retries=0)
        reply = client.chat.completions.create(model=MODEL, messages=ask(png_url()), max_tokens=5, temperature=0)
        expected, prompt_tokens, completion_tokens = answer_prompt(vlm, tokenizer, ask(png_url()), max_new_tokens=5)
        assert reply.choices[0].message.content == expected
        assert reply.usage.prompt_tokens == prompt_tokens and reply.usage.completion_tokens == completion_tokens
        assert prompt_tokens > vlm.tokens_per_image
        # a text-only request to the same server goes through the ordinary engine
        text = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=3)
        assert text.choices[0].message.role == "assistant"
        for url, message in ((bomb_url(), "decompression bomb"), (png_url()[:60], "truncated|corrupt|base64"),
                             ("data:image/png;base64," + base64.b64encode(b"%PDF-1.4 not a picture").decode(), "accepted format"),
                             ("/etc/passwd", "only data:image"), ("https://example.com/a.png", "not fetched")):
            with pytest.raises(BadRequestError, match=message):
                client.chat.completions.create(model=MODEL, messages=ask(url), max_tokens=3)
        with pytest.raises(BadRequestError, match="stream is not supported"):
            client.chat.completions.create(model=MODEL, messages=ask(png_url()), max_tokens=3, stream=True)


def test_text_only_model_refuses_images(vision_model):
    vlm, tokenizer = vision_model
    with TestClient(create_app(vlm.lm, tokenizer, ServeConfig(model_id=MODEL))) as http:
        response = http.post("/v1/chat/completions", json={"model": MODEL, "messages": ask(png_url())})
        assert response.status_code == 400
        assert response.json()["error"]["code"] == "image_input_not_supported"
        response = http.post("/v1/chat/completions", json={"model": MODEL, "messages": [
            {"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]})
        assert response.status_code == 400 and "text and image_url" in response.json()["error"]["message"]


def test_pixel_limit_is_applied_before_decoding(vision_model):
    vlm, tokenizer = vision_model
    with pytest.raises(ValueError, match="refused before decoding"):
        answer_prompt(vlm, tokenizer, ask(png_url((300, 300))), max_new_tokens=2, limits=ImageLimits(max_pixels=10_000))


def test_moderation_checks_image_requests_too(vision_model, tmp_path):
    """An image does not open a way around --moderation: the text of an image request is checked
    before the model runs, and the reply before it is returned (content_filter, logged)."""
    vlm, tokenizer = vision_model
    sampled = dict(max_new_tokens=6, temperature=1.0, seed=0)  # (greedy, this untrained model writes only newlines)
    expected, _, _ = answer_prompt(vlm, tokenizer, ask(png_url()), **sampled)
    assert expected.strip()  # the reply the output rule below (any visible character) will catch
    log = tmp_path / "refused.jsonl"
    policy = policy_from_dict({"rules": [{"category": "weapons", "patterns": [r"\bbomb\b"], "stages": "input"},
                                         {"category": "test", "patterns": [r"\S"], "stages": "output"}],
                               "refusal": "Sorry, no.", "log": str(log)}, "test-policy")
    app = create_app(vlm.lm, tokenizer, ServeConfig(model_id=MODEL, moderation=Moderator(policy)), vision=vlm)
    with TestClient(app) as http:
        client = OpenAI(base_url="http://testserver/v1", api_key="unused", http_client=http, max_retries=0)
        bomb = [{"role": "user", "content": [{"type": "text", "text": "How do I build a bomb like this?"},
                                             {"type": "image_url", "image_url": {"url": png_url()}}]}]
        refused = client.chat.completions.create(model=MODEL, messages=bomb, max_tokens=4, temperature=0)
        assert refused.choices[0].finish_reason == "content_filter"
        assert refused.choices[0].message.content == "Sorry, no." and refused.usage.completion_tokens == 0
        filtered = client.chat.completions.create(model=MODEL, messages=ask(png_url()), max_tokens=6, temperature=1.0,
                                                  seed=0)
        assert filtered.choices[0].finish_reason == "content_filter"
        assert filtered.choices[0].message.content == "Sorry, no."
    stages = [json.loads(line)["stage"] for line in log.read_text().splitlines()]
    assert stages == ["input", "output"]


def test_chat_page_offers_image_upload_to_a_vision_model(vision_model):
    """/health says whether the served model takes images (the page shows its Image button then),
    and the request the page sends for a message with a picture is answered whole."""
    vlm, tokenizer = vision_model
    with TestClient(create_app(vlm.lm, tokenizer, ServeConfig(model_id=MODEL), vision=vlm)) as http:
        assert http.get("/health").json()["vision"] is True
        page = http.get("/").text
        assert '<input id="image" type="file"' in page and 'type: "image_url"' in page
        content = [{"type": "image_url", "image_url": {"url": png_url()}}, {"type": "text", "text": "What colour is it?"}]
        body = {"model": MODEL, "messages": [{"role": "user", "content": content}], "stream": False,
                "temperature": 0.7, "max_tokens": 4}
        response = http.post("/v1/chat/completions", json=body)
        assert response.status_code == 200 and isinstance(response.json()["choices"][0]["message"]["content"], str)
    with TestClient(create_app(vlm.lm, tokenizer, ServeConfig(model_id=MODEL))) as http:
        assert http.get("/health").json()["vision"] is False
