"""GGUF metadata -> tokenizers.Tokenizer: parity with transformers and llama.cpp, and validation."""

from __future__ import annotations

from typing import Any

import pytest
from tokenizers import pre_tokenizers

from lmforge.tokenizer import Tokenizer, gguf_tokenizer_info, tokenizer_from_gguf_metadata

SAMPLES = [
    "",
    "Hello, world!",
    "The quick brown fox jumps over the lazy dog.",
    "don't won't I'm you'll we've they'd it's",
    "Café crème brûlée à la française, naïve façade",
    "Ångström Øresund Æsir Straße",
    "日本語のテキストを正しく分割できますか？",
    "中文测试：你好，世界！",
    "한국어 문장입니다.",
    "שלום עולם, זה מבחן",
    "مرحبا بالعالم",
    "Привет, мир! Ёжик",
    "Emoji: 😀😃🎉🚀",
    "👨‍👩‍👧‍👦 family and 🏳️‍🌈 flag and 👍🏽 thumbs",
    "def f(x):\n\treturn x * 2\n",
    "    indented = True\n        deeper()\n",
    "if (a && b) { return c[i] -> d; } // comment",
    "a  b   c    d     e",
    "trailing spaces   ",
    "   leading spaces",
    "line1\nline2\n\nline4\n\n\n",
    "\r\nwindows\r\nnewlines\r\n",
    "tabs\tin\t\tthe\tmiddle",
    "1234567",
    "Pi is 3.14159 and e is 2.71828",
    "Call 555-0123 or +1 (800) 123-4567 by 2024-12-31",
    "x1y22z333 v2.0.1 0x1F 1e-5",
    "<|im_start|>user\nhi<|im_end|>",
    "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>assistant\n",
    "text <|endoftext|> more text",
    "<repo_name>lmforge<file_sep>main.py",
    "HTML: <div class=\"x\">&amp;</div>",
    "Math: ∑ ∫ √ ≤ ≥ ≠ ∞ π",
    "Mixed 混合 text with español and 日本",
    "ZWJ\u200dinside and zero\u200bwidth",
    "!!!???...,,,;;;",
    "@user #hashtag $100 50% ^_^ ~tilde~ `code`",
    " ",
    "\n",
]


@pytest.mark.parametrize("text", SAMPLES, ids=[f"s{i}" for i in range(len(SAMPLES))])
def test_ids_match_transformers(smollm_tok: Tokenizer, hf_tok: Any, text: str) -> None:
    ours = smollm_tok.encode(text)
    assert ours == hf_tok.encode(text, add_special_tokens=False)
    assert smollm_tok.decode(ours) == text


def test_all_samples_as_one_text_match_transformers(smollm_tok: Tokenizer, hf_tok: Any) -> None:
    """Every kind at once (ZWJ emoji, tabs, digit runs, whitespace runs), so the joins between them count too."""
    for separator in ("", "\n", " "):
        joined = separator.join(SAMPLES)
        ours = smollm_tok.encode(joined)
        assert ours == hf_tok.encode(joined, add_special_tokens=False), repr(separator)
        assert smollm_tok.decode(ours) == joined


def test_known_llama_cpp_ids(smollm_tok: Tokenizer) -> None:
    # Reference ids produced by llama.cpp's tokenizer for SmolLM2: " 123" is "Ġ", "1", "2", "3".
    assert smollm_tok.encode("Hello world! 123") == [19556, 905, 17, 216, 33, 34, 35]


def test_digit_split_follows_smollm_not_transformers_gguf(smollm_tok: Tokenizer, hf_tok: Any) -> None:
    """transformers' GGUF loader gives "smollm" plain GPT-2 splitting (no individual-digit step).

    For ASCII digits that changes nothing (the vocabulary has no multi-digit or space+digit
    tokens), but for other numerals after a space it does. We follow SmolLM2's own tokenizer.json
    (Digits(individual_digits=True) then ByteLevel), which is also what llama.cpp does for
    "smollm"; transformers' BPE engine with that pre-tokenizer restored must agree with us.
    """
    text = "Chapter ① and ½ cup, ² squared, ٣٤٥ and 12 345"
    ours = smollm_tok.encode(text)
    assert ours != hf_tok.encode(text, add_special_tokens=False)  # the documented divergence

    reference = smollm_tok.backend.__class__.from_str(hf_tok.backend_tokenizer.to_str())
    reference.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]
    )
    assert ours == reference.encode(text, add_special_tokens=False).ids
    assert smollm_tok.decode(ours) == text


def test_special_and_added_tokens(smollm_meta: dict[str, Any]) -> None:
    tok = tokenizer_from_gguf_metadata(smollm_meta)
    added = tok.get_added_tokens_decoder()
    control = [i for i, t in enumerate(smollm_meta["tokenizer.ggml.token_type"]) if t == 3]
    assert sorted(added) == control
    assert all(added[i].special for i in control)
    assert tok.get_vocab_size(with_added_tokens=True) == len(smollm_meta["tokenizer.ggml.tokens"])


def test_info(smollm_meta: dict[str, Any]) -> None:
    info = gguf_tokenizer_info(smollm_meta)
    assert (info.bos_id, info.eos_id, info.unk_id, info.pad_id, info.add_bos) == (1, 2, 0, 2, False)
    assert info.chat_template is not None and "<|im_start|>" in info.chat_template


# ---------------------------------------------------------------------- pre-tokenizer families
def _byte_vocab_meta(pre: str, extra_tokens: tuple[str, ...] = (), merges: tuple[str, ...] = ()) -> dict[str, Any]:
    """A tiny byte-level vocabulary: the 256 byte symbols, plus extras and their merges."""
    tokens = sorted(pre_tokenizers.ByteLevel.alphabet()) + list(extra_tokens)
    return {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": pre,
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": [1] * len(tokens),
        "tokenizer.ggml.merges": list(merges),
    }


def _pieces(pre: str, text: str) -> list[str]:
    tok = tokenizer_from_gguf_metadata(_byte_vocab_meta(pre))
    assert tok.pre_tokenizer is not None
    return [piece for piece, _ in tok.pre_tokenizer.pre_tokenize_str(text)]


@pytest.mark.parametrize(
    ("pre", "expected"),
    [
        ("gpt-2", ["Ġ1234567", "Ġab"]),
        ("smollm", ["Ġ", "1", "2", "3", "4", "5", "6", "7", "Ġab"]),
        ("starcoder", ["Ġ", "1", "2", "3", "4", "5", "6", "7", "Ġab"]),
        ("llama-bpe", ["Ġ", "123", "456", "7", "Ġab"]),
        ("qwen2", ["Ġ", "1", "2", "3", "4", "5", "6", "7", "Ġab"]),
    ],
)
def test_pre_tokenizer_families(pre: str, expected: list[str]) -> None:
    assert _pieces(pre, " 1234567 ab") == expected


def test_llama3_keeps_newline_runs_and_contractions() -> None:
    assert _pieces("llama3", "I'M here\n\n\nok") == ["I", "'M", "Ġhere", "ĊĊĊ", "ok"]


def test_llama3_ignore_merges_uses_whole_word() -> None:
    # "ab" is a token but no merge builds it: llama.cpp's ignore_merges (Llama 3) still emits it whole.
    meta = _byte_vocab_meta("llama-bpe", extra_tokens=("ab",))
    assert tokenizer_from_gguf_metadata(meta).encode("ab").tokens == ["ab"]
    meta["tokenizer.ggml.pre"] = "gpt-2"
    assert tokenizer_from_gguf_metadata(meta).encode("ab").tokens == ["a", "b"]


def test_user_defined_tokens_are_matched_whole() -> None:
    meta = _byte_vocab_meta("gpt-2", extra_tokens=("<think>",))
    meta["tokenizer.ggml.token_type"][-1] = 4
    tok = Tokenizer.from_gguf_metadata(meta)
    ids = tok.encode("x<think>y")
    assert ids[1] == len(meta["tokenizer.ggml.tokens"]) - 1 and len(ids) == 3
    assert tok.decode(ids) == "x<think>y"
    assert tok.special_ids == frozenset()


# ---------------------------------------------------------------------- validation
def _broken(meta: dict[str, Any], key: str, value: Any) -> dict[str, Any]:
    out = dict(meta)
    if value is _MISSING:
        out.pop(key, None)
    else:
        out[key] = value
    return out


_MISSING = object()


@pytest.mark.parametrize(
    ("key", "value", "field"),
    [
        ("tokenizer.ggml.model", "llama", "tokenizer.ggml.scores"),  # SentencePiece needs its scores
        ("tokenizer.ggml.model", "bert", "tokenizer.ggml.model"),
        ("tokenizer.ggml.model", _MISSING, "tokenizer.ggml.model"),
        ("tokenizer.ggml.pre", "no-such-pre", "tokenizer.ggml.pre"),
        ("tokenizer.ggml.tokens", _MISSING, "tokenizer.ggml.tokens"),
        ("tokenizer.ggml.tokens", "abc", "tokenizer.ggml.tokens"),
        ("tokenizer.ggml.tokens", [], "tokenizer.ggml.tokens"),
        ("tokenizer.ggml.token_type", [1, 1, 1], "tokenizer.ggml.token_type"),
        ("tokenizer.ggml.bos_token_id", 10**6, "tokenizer.ggml.bos_token_id"),
        ("tokenizer.ggml.eos_token_id", "2", "tokenizer.ggml.eos_token_id"),
        ("tokenizer.ggml.padding_token_id", -5, "tokenizer.ggml.padding_token_id"),
        ("tokenizer.ggml.add_bos_token", "yes", "tokenizer.ggml.add_bos_token"),
        ("tokenizer.ggml.merges", _MISSING, "tokenizer.ggml.merges"),
        ("tokenizer.ggml.merges", ["Ġ t", "nospace"], "tokenizer.ggml.merges[1]"),
        ("tokenizer.ggml.merges", ["Ġ t", "a b c"], "tokenizer.ggml.merges[1]"),
        ("tokenizer.ggml.merges", ["Ġ t", "zzzq xxxq"], "tokenizer.ggml.merges[1]"),
        ("tokenizer.ggml.merges", [1, 2], "tokenizer.ggml.merges[0]"),
        ("tokenizer.chat_template", 42, "tokenizer.chat_template"),
    ],
)
def test_malformed_metadata_names_field(smollm_meta: dict[str, Any], key: str, value: Any, field: str) -> None:
    with pytest.raises(ValueError, match=field.replace(".", r"\.").replace("[", r"\[").replace("]", r"\]")):
        Tokenizer.from_gguf_metadata(_broken(smollm_meta, key, value))


def test_bad_token_type_values(smollm_meta: dict[str, Any]) -> None:
    types = list(smollm_meta["tokenizer.ggml.token_type"])
    types[7] = 42
    with pytest.raises(ValueError, match=r"tokenizer\.ggml\.token_type\[7\]"):
        tokenizer_from_gguf_metadata(_broken(smollm_meta, "tokenizer.ggml.token_type", types))


def test_non_string_token(smollm_meta: dict[str, Any]) -> None:
    tokens = list(smollm_meta["tokenizer.ggml.tokens"])
    tokens[5] = b"bytes"
    with pytest.raises(ValueError, match=r"tokenizer\.ggml\.tokens\[5\]"):
        tokenizer_from_gguf_metadata(_broken(smollm_meta, "tokenizer.ggml.tokens", tokens))


# ---------------------------------------------------------------------- SentencePiece ("llama")
def test_sentencepiece_merges_follow_the_scores() -> None:
    from lmforge.tokenizer.gguf_vocab import sentencepiece_merges

    tokens = ["<s>", "a", "b", "c", "ab", "bc", "abc"]
    scores = [0.0, -1.0, -2.0, -3.0, -5.0, -4.0, -6.0]
    mergeable = [False] + [True] * 6
    # "bc" outscores "ab"; "abc" splits two ways, shorter left part first.
    assert sentencepiece_merges(tokens, scores, mergeable) == [("b", "c"), ("a", "b"), ("a", "bc"), ("ab", "c")]


def test_sentencepiece_vocabulary_from_metadata() -> None:
    pieces = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + ["\u2581", "h", "i", "\u2581h", "\u2581hi"]
    meta = {"tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": pieces,
            "tokenizer.ggml.scores": [0.0] * 259 + [-1.0, -2.0, -3.0, -4.0, -5.0],
            "tokenizer.ggml.token_type": [2, 3, 3] + [6] * 256 + [1] * 5,
            "tokenizer.ggml.bos_token_id": 1, "tokenizer.ggml.eos_token_id": 2, "tokenizer.ggml.unknown_token_id": 0}
    tok = Tokenizer.from_gguf_metadata(meta)
    assert tok.add_bos_token  # llama.cpp's default for SentencePiece vocabularies
    ids = tok.encode("hi hh!")
    assert [tok.id_to_token(i) for i in ids] == ["\u2581hi", "\u2581h", "h", "<0x21>"]  # "!" only as a byte
    assert tok.decode(ids) == "hi hh!"
    no_prefix = Tokenizer.from_gguf_metadata({**meta, "tokenizer.ggml.add_space_prefix": False})
    assert [no_prefix.id_to_token(i) for i in no_prefix.encode("hi")] == ["h", "i"]
    missing_bytes = {**meta, "tokenizer.ggml.tokens": pieces[:3] + [f"x{i}" for i in range(256)] + pieces[259:],
                     "tokenizer.ggml.unknown_token_id": None, "tokenizer.ggml.token_type": [3, 3, 3] + [1] * 261}
    with pytest.raises(ValueError, match="byte token <0x00>"):
        Tokenizer.from_gguf_metadata(missing_bytes)
