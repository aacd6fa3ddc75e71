"""Rebuild a Hugging Face `tokenizers.Tokenizer` from GGUF tokenizer metadata.

A GGUF file carries no tokenizer.json: it stores the vocabulary, the BPE merges, a type per token
and a *name* for the pre-tokenizer (`tokenizer.ggml.pre`) whose meaning lives in llama.cpp's
source. We translate that name into the equivalent `tokenizers` pre-tokenizer so that our ids
match what llama.cpp (and the model's original tokenizer.json) produce.

Two vocabulary kinds are supported:
  - byte-level BPE (`tokenizer.ggml.model == "gpt2"`): tokens, merges, a pre-tokenizer name;
  - SentencePiece BPE (`"llama"`: Llama 2, Mistral 7B, TinyLlama): tokens with scores, `<0xNN>`
    byte-fallback tokens, spaces as `▁`. The file has no merges: SentencePiece merges the adjacent
    pair whose joined piece scores highest, so the merges are rebuilt from the scores (every split
    of a piece into two pieces, ranked by the piece's score) and `tokenizers`' BPE with
    byte_fallback reproduces llama.cpp's ids.
The input is a plain mapping of GGUF key -> Python value (arrays as lists), e.g.
`lmforge.io.gguf_validate.open_gguf(path).metadata`. Everything is validated first, so a malformed
file fails with a `ValueError` naming the field.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tokenizers import AddedToken, Regex, decoders, models, normalizers, pre_tokenizers
from tokenizers import Tokenizer as HFTokenizer

__all__ = [
    "GGUFTokenizerInfo",
    "SUPPORTED_PRE_TOKENIZERS",
    "gguf_tokenizer_info",
    "tokenizer_from_gguf_metadata",
]

# llama.cpp's token types (gguf.TokenType).
TOKEN_NORMAL = 1
TOKEN_UNKNOWN = 2
TOKEN_CONTROL = 3
TOKEN_USER_DEFINED = 4
TOKEN_UNUSED = 5
TOKEN_BYTE = 6
_MAX_TOKEN_TYPE = 6  # 0 is "undefined" in llama.cpp; anything above 6 is garbage

# --- pre-tokenizer regexes, as llama.cpp's llama-vocab.cpp applies them -------------------------
# GPT-2's split; `pre_tokenizers.ByteLevel(use_regex=True)` has it built in, so it appears here
# only where it is one step of a longer chain (llama.cpp's "default").
_GPT2_SPLIT = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# Qwen2 differs from Llama 3 only in splitting numbers into single digits.
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_TEKKEN_SPLIT = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"
    r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_GPT4O_SPLIT = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# llama.cpp's fallback for BPE files that name "default": four regexes applied one after another.
_DEFAULT_SPLITS = (r"[\p{P}\$\+<=>\^~\|]+", _GPT2_SPLIT, r"\p{N}+", r"[0-9][0-9][0-9]")


@dataclass(frozen=True)
class _PreSpec:
    """How one llama.cpp pre-tokenizer family splits text before BPE."""

    splits: tuple[str, ...] = ()  # regexes applied in order ("isolated": matches and gaps both kept)
    digits_first: bool = False  # isolate every digit first (StarCoder/SmolLM: `Digits(individual_digits=True)`)
    gpt2_regex: bool = True  # let ByteLevel apply the GPT-2 regex (otherwise `splits` did all the work)
    ignore_merges: bool = False  # a word that is itself a vocab entry is used whole (llama.cpp `ignore_merges`)
    add_bos: bool = False  # llama.cpp's default for `add_bos` when the file has no tokenizer.ggml.add_bos_token


_GPT2 = _PreSpec()
_STARCODER = _PreSpec(digits_first=True)
_LLAMA3 = _PreSpec(splits=(_LLAMA3_SPLIT,), gpt2_regex=False, ignore_merges=True, add_bos=True)
_LLAMA3_REGEX_ONLY = _PreSpec(splits=(_LLAMA3_SPLIT,), gpt2_regex=False)
_QWEN2 = _PreSpec(splits=(_QWEN2_SPLIT,), gpt2_regex=False)
_TEKKEN = _PreSpec(splits=(_TEKKEN_SPLIT,), gpt2_regex=False, ignore_merges=True, add_bos=True)
_GPT4O = _PreSpec(splits=(_GPT4O_SPLIT,), gpt2_regex=False)
_DEFAULT = _PreSpec(splits=_DEFAULT_SPLITS, gpt2_regex=False)
_SENTENCEPIECE = _PreSpec(add_bos=True)  # llama.cpp adds BOS for SentencePiece vocabularies by default

# `tokenizer.ggml.pre` names -> family, following llama.cpp's llama_vocab::load. Names we do not
# list are refused rather than guessed: a wrong split silently changes every id.
_PRE_TOKENIZERS: dict[str, _PreSpec] = {
    "default": _DEFAULT,
    **dict.fromkeys(
        ("gpt-2", "gpt2", "phi-2", "mpt", "olmo", "jais", "jina-es", "jina-de", "jina-v2-es", "jina-v2-de",
         "gigachat", "a.x-4.0", "mellum", "modern-bert", "exaone4", "trillion", "granite-docling"),
        _GPT2,
    ),
    **dict.fromkeys(
        ("starcoder", "smollm", "refact", "command-r", "codeshell", "exaone", "minerva-7b"), _STARCODER
    ),
    **dict.fromkeys(
        ("llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0", "lfm2"), _LLAMA3
    ),
    **dict.fromkeys(("dbrx", "smaug-bpe"), _LLAMA3_REGEX_ONLY),
    **dict.fromkeys(("qwen2", "deepseek-r1-qwen", "megrez", "stablelm2"), _QWEN2),
    "tekken": _TEKKEN,
    **dict.fromkeys(("gpt-4o", "llama4"), _GPT4O),
}
SUPPORTED_PRE_TOKENIZERS: frozenset[str] = frozenset(_PRE_TOKENIZERS)

# Token ids the GGUF names explicitly; all optional.
_ID_KEYS = ("bos", "eos", "unknown", "padding", "eot", "eom", "sep", "cls", "mask")


@dataclass(frozen=True)
class GGUFTokenizerInfo:
    """Special ids and flags a GGUF states about its tokenizer (already validated)."""

    tokens: tuple[str, ...]
    token_types: tuple[int, ...]
    bos_id: int | None
    eos_id: int | None
    eot_id: int | None
    eom_id: int | None
    unk_id: int | None
    pad_id: int | None
    add_bos: bool
    chat_template: str | None
    add_eos: bool = False
    sentencepiece: bool = False  # tokenizer.ggml.model "llama"


def _require_str_list(meta: Mapping[str, Any], key: str) -> list[str]:
    value = meta.get(key)
    if value is None:
        raise ValueError(f"GGUF tokenizer metadata: missing {key}")
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise ValueError(f"GGUF tokenizer metadata: {key} must be an array of strings, got {type(value).__name__}")
    for index, item in enumerate(value):
        if not isinstance(item, str):
            raise ValueError(f"GGUF tokenizer metadata: {key}[{index}] must be a string, got {type(item).__name__}")
    return list(value)


def _optional_id(meta: Mapping[str, Any], key: str, n_tokens: int) -> int | None:
    value = meta.get(key)
    if value is None:
        return None
    # bool is an int subclass; a True "id" is certainly a broken file.
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"GGUF tokenizer metadata: {key} must be an integer, got {value!r}")
    if value == -1 or value == 0xFFFFFFFF:  # llama.cpp's "no such token"
        return None
    if not 0 <= value < n_tokens:
        raise ValueError(f"GGUF tokenizer metadata: {key}={value} is outside the vocabulary (0..{n_tokens - 1})")
    return value


def _optional_bool(meta: Mapping[str, Any], key: str) -> bool | None:
    value = meta.get(key)
    if value is None:
        return None
    if not isinstance(value, bool):
        raise ValueError(f"GGUF tokenizer metadata: {key} must be a boolean, got {value!r}")
    return value


def _check_model(meta: Mapping[str, Any]) -> None:
    model = meta.get("tokenizer.ggml.model")
    if model is None:
        raise ValueError("GGUF tokenizer metadata: missing tokenizer.ggml.model")
    if model in ("gpt2", "llama"):
        return
    raise ValueError(f"GGUF tokenizer metadata: tokenizer.ggml.model={model!r} is not supported "
                     "(supported: 'gpt2' byte-level BPE, 'llama' SentencePiece BPE)")


def _pre_spec(meta: Mapping[str, Any]) -> _PreSpec:
    if meta.get("tokenizer.ggml.model") == "llama":
        return _SENTENCEPIECE  # SentencePiece has no pre-tokenizer name; llama.cpp ignores the key
    pre = meta.get("tokenizer.ggml.pre")
    if pre is None:
        # llama.cpp falls back to "default" (with a loud warning); so do we, rather than refuse old files.
        return _DEFAULT
    if not isinstance(pre, str) or pre not in _PRE_TOKENIZERS:
        raise ValueError(
            f"GGUF tokenizer metadata: unknown tokenizer.ggml.pre={pre!r}; "
            f"supported: {', '.join(sorted(_PRE_TOKENIZERS))}"
        )
    return _PRE_TOKENIZERS[pre]


def _token_types(meta: Mapping[str, Any], n_tokens: int) -> list[int]:
    key = "tokenizer.ggml.token_type"
    value = meta.get(key)
    if value is None:
        return [TOKEN_NORMAL] * n_tokens
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise ValueError(f"GGUF tokenizer metadata: {key} must be an array of integers")
    if len(value) != n_tokens:
        raise ValueError(
            f"GGUF tokenizer metadata: {key} has {len(value)} entries but tokenizer.ggml.tokens has {n_tokens}"
        )
    for index, item in enumerate(value):
        if not isinstance(item, int) or isinstance(item, bool) or not 0 <= item <= _MAX_TOKEN_TYPE:
            raise ValueError(f"GGUF tokenizer metadata: {key}[{index}]={item!r} is not a token type (0..6)")
    return list(value)


def _vocab(tokens: list[str]) -> dict[str, int]:
    vocab: dict[str, int] = {}
    for index, token in enumerate(tokens):
        # Same conventions as llama.cpp: an empty token gets a placeholder name, and for a duplicated
        # string the last id wins when encoding (the other ids still decode through their own entry).
        vocab[token if token else f"[EMPTY_{index}]"] = index
    return vocab


def _merges(meta: Mapping[str, Any], vocab: Mapping[str, int]) -> list[tuple[str, str]]:
    key = "tokenizer.ggml.merges"
    raw = _require_str_list(meta, key)
    merges: list[tuple[str, str]] = []
    for index, merge in enumerate(raw):
        parts = merge.split(" ")
        if len(parts) != 2 or not parts[0] or not parts[1]:
            raise ValueError(f"GGUF tokenizer metadata: {key}[{index}]={merge!r} is not two tokens separated by a space")
        left, right = parts
        # `tokenizers` refuses merges whose parts or result are not tokens; say which one, and where.
        for piece in (left, right, left + right):
            if piece not in vocab:
                raise ValueError(f"GGUF tokenizer metadata: {key}[{index}]={merge!r} uses {piece!r}, not in the vocabulary")
        merges.append((left, right))
    return merges


def _pre_tokenizer(spec: _PreSpec) -> pre_tokenizers.PreTokenizer:
    steps: list[pre_tokenizers.PreTokenizer] = []
    if spec.digits_first:
        steps.append(pre_tokenizers.Digits(individual_digits=True))
    steps.extend(pre_tokenizers.Split(Regex(pattern), behavior="isolated") for pattern in spec.splits)
    steps.append(pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=spec.gpt2_regex))
    return steps[0] if len(steps) == 1 else pre_tokenizers.Sequence(steps)


def gguf_tokenizer_info(meta: Mapping[str, Any]) -> GGUFTokenizerInfo:
    """Validate the tokenizer keys of `meta` and return tokens, types, special ids and flags."""
    _check_model(meta)
    spec = _pre_spec(meta)
    tokens = _require_str_list(meta, "tokenizer.ggml.tokens")
    if not tokens:
        raise ValueError("GGUF tokenizer metadata: tokenizer.ggml.tokens is empty")
    n = len(tokens)
    types = _token_types(meta, n)
    ids = {name: _optional_id(meta, f"tokenizer.ggml.{name}_token_id", n) for name in _ID_KEYS}
    add_bos = _optional_bool(meta, "tokenizer.ggml.add_bos_token")
    add_eos = _optional_bool(meta, "tokenizer.ggml.add_eos_token")
    template = meta.get("tokenizer.chat_template")
    if template is not None and not isinstance(template, str):
        raise ValueError("GGUF tokenizer metadata: tokenizer.chat_template must be a string")
    return GGUFTokenizerInfo(
        tokens=tuple(tokens),
        token_types=tuple(types),
        bos_id=ids["bos"],
        eos_id=ids["eos"],
        eot_id=ids["eot"],
        eom_id=ids["eom"],
        unk_id=ids["unknown"],
        pad_id=ids["padding"],
        add_bos=spec.add_bos if add_bos is None else add_bos,
        chat_template=template or None,
        add_eos=bool(add_eos),
        sentencepiece=meta.get("tokenizer.ggml.model") == "llama",
    )


def tokenizer_from_gguf_metadata(meta: Mapping[str, Any]) -> HFTokenizer:
    """A byte-level BPE `tokenizers.Tokenizer` equivalent to the one the GGUF metadata describes.

    CONTROL tokens become special added tokens and USER_DEFINED ones plain added tokens, so both
    are matched whole in input text (as llama.cpp does) instead of being cut into byte pieces.
    No post-processor is attached: BOS is added by the caller (`lmforge.tokenizer.Tokenizer`).
    """
    info = gguf_tokenizer_info(meta)
    tokens = list(info.tokens)
    vocab = _vocab(tokens)
    if info.sentencepiece:
        tok = _sentencepiece_tokenizer(meta, info, vocab)
    else:
        spec = _pre_spec(meta)
        merges = _merges(meta, vocab)
        # No unk_token: a complete byte-level vocabulary can spell any input, and llama.cpp has no
        # <unk> fallback for BPE either.
        tok = HFTokenizer(models.BPE(vocab=vocab, merges=merges, ignore_merges=spec.ignore_merges))
        tok.pre_tokenizer = _pre_tokenizer(spec)
        tok.decoder = decoders.ByteLevel()

    # Added tokens keep the file's own spelling, which is also their vocab key, so `tokenizers`
    # reuses the existing id instead of growing the vocabulary.
    special = [
        AddedToken(token, special=True, normalized=False)
        for token, kind in zip(tokens, info.token_types)
        if kind in (TOKEN_CONTROL, TOKEN_UNKNOWN) and token
    ]
    user = [
        AddedToken(token, special=False, normalized=False)
        for token, kind in zip(tokens, info.token_types)
        if kind == TOKEN_USER_DEFINED and token
    ]
    if special:
        tok.add_special_tokens(special)
    if user:
        tok.add_tokens(user)
    return tok


# --------------------------------------------------------------------------------------------
# SentencePiece BPE ("llama")
# --------------------------------------------------------------------------------------------
SPACE = "\u2581"  # ▁, SentencePiece's visible space


def _scores(meta: Mapping[str, Any], n_tokens: int) -> list[float]:
    key = "tokenizer.ggml.scores"
    value = meta.get(key)
    if value is None:
        raise ValueError(f"GGUF tokenizer metadata: missing {key} (a SentencePiece vocabulary is ranked by its scores)")
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) != n_tokens:
        raise ValueError(f"GGUF tokenizer metadata: {key} must hold one number per token ({n_tokens})")
    for index, item in enumerate(value):
        if isinstance(item, bool) or not isinstance(item, (int, float)) or item != item:
            raise ValueError(f"GGUF tokenizer metadata: {key}[{index}]={item!r} is not a number")
    return [float(v) for v in value]


def sentencepiece_merges(tokens: Sequence[str], scores: Sequence[float], mergeable: Sequence[bool]) -> list[tuple[str, str]]:
    """BPE merges equivalent to SentencePiece's rule (join the adjacent pair whose result scores
    highest): every split of a mergeable piece into two vocabulary pieces, best-scoring piece first
    (ties: lower id first, then the shorter left part, as SentencePiece's vocabulary order)."""
    ids = {token: index for index, token in enumerate(tokens) if mergeable[index]}
    ranked = []
    for piece, index in ids.items():
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in ids and right in ids:
                ranked.append((-scores[index], index, cut, left, right))
    ranked.sort()
    return [(left, right) for *_, left, right in ranked]


def _sentencepiece_tokenizer(meta: Mapping[str, Any], info: GGUFTokenizerInfo, vocab: dict[str, int]) -> HFTokenizer:
    """BPE with byte fallback over the GGUF's pieces, spaces written as ▁ and one ▁ prepended to the
    text (unless `tokenizer.ggml.add_space_prefix` is false), as Llama 2's tokenizer.json does."""
    tokens = info.tokens
    scores = _scores(meta, len(tokens))
    unknown = [i for i, kind in enumerate(info.token_types) if kind == TOKEN_UNKNOWN]
    unk_id = info.unk_id if info.unk_id is not None else (unknown[0] if unknown else None)
    for byte in range(256):
        if f"<0x{byte:02X}>" not in vocab and unk_id is None:
            raise ValueError(f"GGUF tokenizer metadata: SentencePiece vocabulary lacks the byte token <0x{byte:02X}> "
                             "and has no unknown token to fall back to")
    mergeable = [kind in (TOKEN_NORMAL, TOKEN_USER_DEFINED) for kind in info.token_types]
    merges = sentencepiece_merges(tokens, scores, mergeable)
    model = models.BPE(vocab=vocab, merges=merges, unk_token=tokens[unk_id] if unk_id is not None else None,
                       fuse_unk=True, byte_fallback=True)
    tok = HFTokenizer(model)
    prefix = _optional_bool(meta, "tokenizer.ggml.add_space_prefix")
    prefix = True if prefix is None else prefix
    # llama.cpp writes every space as ▁ and prepends one ▁ to each piece of text (the text, and what
    # follows a special token), even one that starts with a space: Llama 2's own tokenizer.json
    # normalizer. (The Metaspace pre-tokenizer skips the prefix before a leading space, so " a"
    # would lose its space in a round trip.)
    steps_in = [normalizers.Prepend(SPACE)] if prefix else []
    tok.normalizer = normalizers.Sequence(steps_in + [normalizers.Replace(" ", SPACE)])
    steps = [decoders.Replace(SPACE, " "), decoders.ByteFallback(), decoders.Fuse()]
    if prefix:
        steps.append(decoders.Strip(content=" ", left=1, right=0))
    tok.decoder = decoders.Sequence(steps)
    return tok
