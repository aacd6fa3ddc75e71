"""The embedded SmolLM2 on the fast path: its Q4_1 blocks and Q8_0 embedding as stored (int4 kernels)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def smollm_int4(smollm_gguf):
    from lmforge.io.gguf import load_gguf_model

    return load_gguf_model(smollm_gguf, quant="auto")
