"""Fixtures for the tokenizer tests: SmolLM2's GGUF tokenizer metadata, ours and Hugging Face's."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import pytest

from lmforge.tokenizer import Tokenizer


@pytest.fixture(scope="session")
def smollm_meta(smollm_gguf: Path) -> dict[str, Any]:
    """The GGUF's tokenizer.* metadata as plain Python values (arrays as lists)."""
    import gguf

    reader = gguf.GGUFReader(smollm_gguf)
    return {key: field.contents() for key, field in reader.fields.items() if key.startswith("tokenizer.")}


@pytest.fixture(scope="session")
def smollm_tok(smollm_meta: dict[str, Any]) -> Tokenizer:
    return Tokenizer.from_gguf_metadata(smollm_meta)


@pytest.fixture(scope="session")
def hf_tok(smollm_gguf: Path) -> Any:
    """transformers' own tokenizer for the same GGUF (loaded once: it takes a few seconds)."""
    from transformers import AutoTokenizer

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return AutoTokenizer.from_pretrained(smollm_gguf.parent, gguf_file=smollm_gguf.name)
