"""Live servers on 127.0.0.1 for the serve tests.

`server`: the app in this process (uvicorn in a thread, `live_app`) over the session's already-loaded
SmolLM2, capacity 4. `keyed_server`: `lmforge serve ... --api-key` as a subprocess, the way a user
starts it. `vision_model`: a tiny untrained vision-language model and its tokenizer.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import torch

from lmforge.serve import ServeConfig, create_app

MODEL = "smollm2-135m-instruct"
API_KEY = "test-key-123"
ROOT = Path(__file__).resolve().parents[2]


@dataclass
class LiveServer:
    url: str  # http://127.0.0.1:PORT
    app: object | None = None  # the FastAPI app, for the in-process server
    model: str = MODEL
    api_key: str | None = None

    @property
    def v1(self) -> str:
        return self.url + "/v1"

    def health(self) -> dict:
        return httpx.get(self.url + "/health", timeout=10).json()

    def wait_idle(self, timeout: float = 30) -> dict:
        """Wait until no sequence is running (requests of earlier tests have let go)."""
        deadline = time.monotonic() + timeout
        while True:
            health = self.health()
            if health["running"] == 0 or time.monotonic() > deadline:
                return health
            time.sleep(0.05)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_up(url: str, timeout: float, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}: {process.stderr.read() if process.stderr else ''}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"server at {url} did not come up within {timeout} s")


@contextlib.contextmanager
def live_app(app) -> Iterator[LiveServer]:
    """`app` served by uvicorn in a thread of this process while the block runs."""
    import uvicorn

    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    uv = uvicorn.Server(config)
    thread = threading.Thread(target=uv.run, name="test-uvicorn", daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    wait_until_up(url, 60)
    yield LiveServer(url, app)
    uv.should_exit = True
    thread.join(timeout=30)


@pytest.fixture(scope="session")
def server(smollm):
    model, tokenizer = smollm
    with live_app(create_app(model, tokenizer, ServeConfig(model_id=MODEL, max_concurrency=4))) as live:
        yield live


@pytest.fixture(scope="module")
def vision_model(tmp_path_factory):
    """A tiny untrained vision-language model (ViT, projector, 2-layer LM), saved and loaded back."""
    from lmforge.core.config import ModelConfig
    from lmforge.io.vision import load_vision_model, save_vision_model
    from lmforge.model.transformer import Transformer, init_weights
    from lmforge.model.vision import Projector, VisionConfig, VisionEncoder, VisionLanguageModel
    from lmforge.tokenizer.image_chat import choose_image_token
    from lmforge.tokenizer.train import train_bpe

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


@pytest.fixture(scope="session")
def keyed_server():
    port = free_port()
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop("LMFORGE_API_KEY", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "lmforge.cli.main", "serve", "--model", MODEL, "--port", str(port),
         "--api-key", API_KEY, "--max-concurrency", "2", "--threads", "1", "--log-level", "warning",
         "--compile", "off"],  # these tests are about the key; a cold compilation takes minutes on 2 cores
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(url, 180, process)
        yield LiveServer(url, api_key=API_KEY)
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="session")
def client(server):
    from openai import OpenAI

    return OpenAI(base_url=server.v1, api_key="unused", max_retries=0, timeout=120)
