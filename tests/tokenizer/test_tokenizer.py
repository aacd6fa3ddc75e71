"""Tokenizer wrapper: ids, special ids, folders (ours <-> transformers) and StreamDecoder."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import pytest
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers

from lmforge.tokenizer import StreamDecoder, Tokenizer

TEXTS = [
    "Hello, world!",
    "日本語 and emoji 👨‍👩‍👧‍👦 🎉",
    "def f(x):\n\treturn 1234567\n",
    "<|im_start|>user\nhi<|im_end|>\n",
    "",
]


def test_special_ids(smollm_tok: Tokenizer) -> None:
    assert smollm_tok.vocab_size == 49152
    assert smollm_tok.bos_id == 1
    assert smollm_tok.eos_id == 2
    assert smollm_tok.pad_id == 2
    # eos (<|im_end|>) plus the chat/document end tokens the vocabulary has as special tokens.
    assert smollm_tok.eos_ids == frozenset({smollm_tok.token_to_id("<|im_end|>"), smollm_tok.token_to_id("<|endoftext|>")})
    assert smollm_tok.add_bos_token is False
    assert smollm_tok.chat_template is not None
    assert smollm_tok.id_to_token(1) == "<|im_start|>"
    assert smollm_tok.token_to_id("no-such-token-xyz") is None


def test_encode_decode(smollm_tok: Tokenizer) -> None:
    ids = smollm_tok.encode("<|im_start|>user\nhi<|im_end|>")
    assert ids[0] == 1 and ids[-1] == 2
    assert smollm_tok.encode("hi", add_bos=True)[0] == 1
    assert smollm_tok.decode(ids, skip_special=True) == "user\nhi"
    for text in TEXTS:
        assert smollm_tok.decode(smollm_tok.encode(text)) == text
    assert smollm_tok.encode_batch(TEXTS) == [smollm_tok.encode(t) for t in TEXTS]


def test_offsets_are_character_spans(smollm_tok: Tokenizer) -> None:
    text = "a😀 b é"
    ids, offsets = smollm_tok.encode_with_offsets(text)
    assert len(ids) == len(offsets)
    # Pieces of the emoji all point at that one character.
    assert {text[a:b] for a, b in offsets} >= {"a", "😀", " b", " é"}


def test_bad_input(smollm_tok: Tokenizer) -> None:
    with pytest.raises(ValueError, match="str"):
        smollm_tok.encode(b"bytes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"ids\[1\]"):
        smollm_tok.decode([1, 10**9])
    with pytest.raises(ValueError, match=r"ids\[0\]"):
        smollm_tok.decode([-1])
    with pytest.raises(ValueError, match="integer"):
        smollm_tok.decode(["a"])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="bos"):
        Tokenizer.from_tokenizers(smollm_tok.backend).encode("x", add_bos=True)
    with pytest.raises(ValueError, match="eos_ids"):
        Tokenizer.from_tokenizers(smollm_tok.backend, eos_ids=[10**9])


def _load_hf(folder: Path) -> Any:
    from transformers import AutoTokenizer

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return AutoTokenizer.from_pretrained(folder)


def test_save_loads_in_transformers_and_back(smollm_tok: Tokenizer, tmp_path: Path) -> None:
    smollm_tok.save(tmp_path)
    hf = _load_hf(tmp_path)
    for text in TEXTS:
        assert hf.encode(text, add_special_tokens=False) == smollm_tok.encode(text)
        assert hf.encode(text) == smollm_tok.encode(text)  # add_bos_token is False
    assert hf.chat_template == smollm_tok.chat_template
    assert (hf.bos_token, hf.eos_token, hf.pad_token) == ("<|im_start|>", "<|im_end|>", "<|im_end|>")

    back = Tokenizer.from_folder(tmp_path)
    assert (back.bos_id, back.eos_id, back.eos_ids, back.pad_id) == (1, 2, smollm_tok.eos_ids, 2)
    assert back.chat_template == smollm_tok.chat_template and back.add_bos_token is False
    assert back.encode(TEXTS[1]) == smollm_tok.encode(TEXTS[1])


def test_save_with_bos(smollm_tok: Tokenizer, tmp_path: Path) -> None:
    tok = Tokenizer.from_tokenizers(smollm_tok.backend, bos_id=1, eos_ids=[2], add_bos=True, chat_template=None)
    tok.save(tmp_path)
    hf = _load_hf(tmp_path)
    assert hf.encode("hi there") == tok.encode("hi there", add_bos=True)
    assert hf.encode("hi there", add_special_tokens=False) == tok.encode("hi there")
    back = Tokenizer.from_folder(tmp_path)
    assert back.add_bos_token is True and back.chat_template is None
    assert back.encode("hi there") == tok.encode("hi there")  # our encode adds BOS only when asked


def _tiny() -> HFTokenizer:
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {ch: i for i, ch in enumerate(alphabet)}
    vocab.update({"<s>": 256, "</s>": 257, "<|eot_id|>": 258})
    tok = HFTokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(["<s>", "</s>", "<|eot_id|>"])
    return tok


def test_from_folder_hf_variants(tmp_path: Path) -> None:
    _tiny().save(str(tmp_path / "tokenizer.json"))
    config = {
        "bos_token": {"content": "<s>", "lstrip": False},
        "eos_token": "</s>",
        "chat_template": [{"name": "default", "template": "{{ messages }}"}, {"name": "tool_use", "template": "x"}],
    }
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [257, 258]}))
    tok = Tokenizer.from_folder(tmp_path)
    assert tok.bos_id == 256 and tok.eos_id == 257 and tok.eos_ids == frozenset({257, 258})
    assert tok.chat_template == "{{ messages }}" and tok.add_bos_token is False and tok.pad_id is None

    (tmp_path / "chat_template.jinja").write_text("{{ 'jinja file wins' }}")
    assert Tokenizer.from_folder(tmp_path).chat_template == "{{ 'jinja file wins' }}"

    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<not-a-token>"}))
    with pytest.raises(ValueError, match="eos_token"):
        Tokenizer.from_folder(tmp_path)
    (tmp_path / "tokenizer_config.json").write_text("{not json")
    with pytest.raises(ValueError, match="tokenizer_config.json"):
        Tokenizer.from_folder(tmp_path)
    with pytest.raises(ValueError, match="tokenizer.json"):
        Tokenizer.from_folder(tmp_path / "missing")


# ---------------------------------------------------------------------- StreamDecoder
@pytest.mark.parametrize(
    "text",
    [
        "👨‍👩‍👧‍👦 family 🏳️‍🌈 flag 👍🏽",
        "日本語のテキストを一つずつ。中文，한국어",
        "mixed ascii, café, 😀 and <|im_end|> special",
    ],
)
def test_stream_decoder_never_splits_characters(smollm_tok: Tokenizer, text: str) -> None:
    ids = smollm_tok.encode(text)
    stream = StreamDecoder(smollm_tok)
    deltas = [stream.push(i) for i in ids] + [stream.flush()]
    assert all("\ufffd" not in d for d in deltas)
    assert "".join(deltas) == smollm_tok.decode(ids) == text
    # Multi-byte characters really were spread over several tokens (the case under test).
    assert sum(1 for d in deltas if d == "") > 1


def test_stream_decoder_skip_special_and_incomplete_tail(smollm_tok: Tokenizer) -> None:
    ids = smollm_tok.encode("<|im_start|>assistant\nhi 😀<|im_end|>")
    stream = StreamDecoder(smollm_tok, skip_special=True)
    out = "".join(stream.push(i) for i in ids) + stream.flush()
    assert out == smollm_tok.decode(ids, skip_special=True) == "assistant\nhi 😀"

    # Cut the emoji short: nothing is emitted for it until flush, which gives what decode gives.
    emoji = smollm_tok.encode("😀")
    assert len(emoji) > 1
    stream = StreamDecoder(smollm_tok)
    partial = [stream.push(i) for i in smollm_tok.encode("ok ") + emoji[:-1]]
    assert "".join(partial) == "ok "
    tail = stream.flush()
    assert "ok " + tail == smollm_tok.decode(smollm_tok.encode("ok ") + emoji[:-1])
    assert stream.flush() == ""
