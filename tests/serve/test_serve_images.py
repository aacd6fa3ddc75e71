"""Images through the OpenAI API: a round trip with the official client to a served tiny
vision-language model, and clear 400s for hostile images and for a text-only model."""

from __future__ import annotations

import base64
import io
import json
import struct
import zlib

import pytest
import torch
from fastapi.testclient import TestClient
from openai import BadRequestError, OpenAI
from PIL import Image

from lmforge.core.config import ModelConfig
from lmforge.data.images import ImageLimits
from lmforge.infer.moderation import Moderator, policy_from_dict
from lmforge.infer.vision import answer_prompt
from lmforge.io.vision import load_vision_model, save_vision_model
from lmforge.model.transformer import Transformer, init_weights
from lmforge.model.vision import Projector, VisionConfig, VisionEncoder, VisionLanguageModel
from lmforge.serve import ServeConfig, create_app
from lmforge.tokenizer.image_chat import choose_image_token
from lmforge.tokenizer.train import train_bpe

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


@pytest.fixture(scope="module")
def vision_model(tmp_path_factory):
    tokenizer = train_bpe(["What colour is it? red green blue"] * 20, vocab_size=300)
    torch.manual_seed(0)
    lm = Transformer(ModelConfig(vocab_size=tokenizer.vocab_size, dim=32, n_layers=2, n_heads=4, n_kv_heads=2,
                                 ffn_dim=64, max_seq_len=128))
    init_weights(lm, seed=0)
    token, token_id = choose_image_token(tokenizer)
    config = VisionConfig(image_size=24, patch_size=6, dim=32, n_layers=1, n_heads=2, ffn_dim=64, lm_dim=32, image_token=token)
    folder = save_vision_model(tmp_path_factory.mktemp("vlm") / "model",
                               VisionLanguageModel(lm, VisionEncoder(config), Projector(config), token_id), tokenizer)
    return load_vision_model(folder)


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
