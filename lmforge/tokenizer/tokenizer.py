"""`Tokenizer`: the one text <-> ids interface the rest of lmforge uses, and `StreamDecoder`.

It wraps a Hugging Face `tokenizers.Tokenizer` (the fast Rust implementation) and adds what a
model needs beyond the BPE itself: BOS/EOS/PAD ids, the set of ids that end generation, the chat
template and whether the model expects a BOS. Built from GGUF metadata, from a Hugging Face folder
(tokenizer.json + tokenizer_config.json ...) or from a `tokenizers.Tokenizer` directly; saved as a
folder `transformers.AutoTokenizer.from_pretrained` can load.
"""

from __future__ import annotations

import json
import operator
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer as HFTokenizer
from tokenizers import processors

from lmforge.tokenizer.gguf_vocab import gguf_tokenizer_info, tokenizer_from_gguf_metadata
from lmforge.core.files import write_text_atomically

__all__ = ["CHAT_END_TOKENS", "StreamDecoder", "Tokenizer"]

# Tokens that close a turn (or a document) in common chat formats. When one of these is a special
# token of the vocabulary, generation must stop on it even if the file's eos names another one:
# e.g. Llama 3 Instruct states eos=<|end_of_text|> but ends every turn with <|eot_id|>.
CHAT_END_TOKENS: tuple[str, ...] = (
    "<|im_end|>",
    "<|eot_id|>",
    "<|eom_id|>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "<|end|>",
    "<end_of_turn>",
    "<|return|>",
    "<EOT>",
    "<end_of_utterance>",
)

_REPLACEMENT_CHAR = "\ufffd"


class Tokenizer:
    """Encode/decode text with a `tokenizers.Tokenizer` and know the model's special ids."""

    def __init__(
        self,
        tok: HFTokenizer,
        *,
        bos_id: int | None = None,
        eos_ids: Iterable[int] = (),
        pad_id: int | None = None,
        chat_template: str | None = None,
        add_bos: bool = False,
    ) -> None:
        if not isinstance(tok, HFTokenizer):
            raise ValueError(f"expected a tokenizers.Tokenizer, got {type(tok).__name__}")
        self._tok = tok
        vocab = tok.get_vocab(with_added_tokens=True)
        if not vocab:
            raise ValueError("tokenizer has an empty vocabulary")
        # Max id + 1, not len(vocab): a vocabulary with holes (duplicate strings in a GGUF) still
        # needs an embedding row for every id the model can emit.
        self._vocab_size = max(vocab.values()) + 1
        self._bos_id = self._optional_id(bos_id, "bos_id")
        self._pad_id = self._optional_id(pad_id, "pad_id")
        given = [self._check_id(i, "eos_ids") for i in eos_ids if i is not None]
        self._eos_id = given[0] if given else None
        added = tok.get_added_tokens_decoder()
        chat_ends = [tok.token_to_id(text) for text in CHAT_END_TOKENS]
        extra = [i for i in chat_ends if i is not None and i in added]
        self._eos_ids = frozenset(given + extra)
        if chat_template is not None and not isinstance(chat_template, str):
            raise ValueError(f"chat_template must be a string, got {type(chat_template).__name__}")
        self._chat_template = chat_template or None
        if add_bos and self._bos_id is None:
            raise ValueError("add_bos=True needs a bos_id")
        self._add_bos = bool(add_bos)
        self._special_ids = frozenset(i for i, t in added.items() if t.special)

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_tokenizers(
        cls,
        tok: HFTokenizer,
        *,
        bos_id: int | None = None,
        eos_ids: Iterable[int] = (),
        chat_template: str | None = None,
        add_bos: bool = False,
        pad_id: int | None = None,
    ) -> Tokenizer:
        """Wrap an existing `tokenizers.Tokenizer` (e.g. one just trained)."""
        return cls(tok, bos_id=bos_id, eos_ids=eos_ids, pad_id=pad_id, chat_template=chat_template, add_bos=add_bos)

    @classmethod
    def from_gguf_metadata(cls, meta: Mapping[str, Any]) -> Tokenizer:
        """Build from GGUF metadata (key -> Python value); see `gguf_vocab` for what is supported."""
        tok = tokenizer_from_gguf_metadata(meta)
        info = gguf_tokenizer_info(meta)
        eos = [i for i in (info.eos_id, info.eot_id, info.eom_id) if i is not None]
        return cls(
            tok,
            bos_id=info.bos_id,
            eos_ids=eos,
            pad_id=info.pad_id,
            chat_template=info.chat_template,
            add_bos=info.add_bos and info.bos_id is not None,
        )

    @classmethod
    def from_folder(cls, path: str | os.PathLike[str]) -> Tokenizer:
        """Load a Hugging Face tokenizer folder.

        Reads tokenizer.json (required), tokenizer_config.json (bos/eos/pad tokens, chat_template,
        add_bos_token), chat_template.jinja (newer transformers keep the template there), and
        generation_config.json / config.json for extra `eos_token_id`s.
        """
        folder = Path(path)
        tok_file = folder / "tokenizer.json"
        if not tok_file.is_file():
            raise ValueError(f"no tokenizer.json in {folder}")
        try:
            tok = HFTokenizer.from_file(str(tok_file))
        except Exception as exc:  # tokenizers raises a bare Exception on malformed JSON
            raise ValueError(f"cannot parse {tok_file}: {exc}") from exc
        config = _read_json(folder / "tokenizer_config.json")

        def token_id(key: str) -> int | None:
            text = _token_text(config.get(key), f"tokenizer_config.json {key}")
            if text is None:
                return None
            found = tok.token_to_id(text)
            if found is None:
                raise ValueError(f"tokenizer_config.json {key}={text!r} is not in the vocabulary")
            return found

        bos_id = token_id("bos_token")
        eos: list[int] = []
        primary = token_id("eos_token")
        if primary is not None:
            eos.append(primary)
        for name in ("generation_config.json", "config.json"):
            data = _read_json(folder / name)
            eos.extend(_id_list(data.get("eos_token_id"), f"{name} eos_token_id"))
            if bos_id is None and isinstance(data.get("bos_token_id"), int):
                bos_id = data["bos_token_id"]

        template = _chat_template(config.get("chat_template"))
        jinja_file = folder / "chat_template.jinja"
        if jinja_file.is_file():  # transformers prefers this file when both exist
            template = jinja_file.read_text(encoding="utf-8")

        add_bos = config.get("add_bos_token")
        if add_bos is None:
            # Llama-3 style folders say it only through tokenizer.json's post-processor.
            add_bos = bos_id is not None and _post_processor_adds(tok, bos_id)
        elif not isinstance(add_bos, bool):
            raise ValueError(f"tokenizer_config.json add_bos_token must be a boolean, got {add_bos!r}")
        return cls(
            tok,
            bos_id=bos_id,
            eos_ids=eos,
            pad_id=token_id("pad_token"),
            chat_template=template,
            add_bos=add_bos and bos_id is not None,
        )

    # ------------------------------------------------------------------ properties
    @property
    def backend(self) -> HFTokenizer:
        """The wrapped `tokenizers.Tokenizer`."""
        return self._tok

    @property
    def vocab_size(self) -> int:
        """Number of ids (largest id + 1), the size the model's embedding must have."""
        return self._vocab_size

    @property
    def bos_id(self) -> int | None:
        return self._bos_id

    @property
    def eos_id(self) -> int | None:
        """The primary end-of-sequence id (what the source file calls eos)."""
        return self._eos_id

    @property
    def eos_ids(self) -> frozenset[int]:
        """Every id that ends generation: the eos id plus chat end tokens present in the vocabulary."""
        return self._eos_ids

    @property
    def pad_id(self) -> int | None:
        return self._pad_id

    @property
    def chat_template(self) -> str | None:
        return self._chat_template

    @property
    def add_bos_token(self) -> bool:
        """Whether the model expects BOS before a plain-text prompt (pass as `encode(..., add_bos=)`)."""
        return self._add_bos

    @property
    def special_ids(self) -> frozenset[int]:
        """Ids of special added tokens (dropped by `decode(skip_special=True)`)."""
        return self._special_ids

    def token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        return self._tok.id_to_token(self._check_id(token_id, "token_id"))

    # ------------------------------------------------------------------ encode / decode
    def encode(self, text: str, add_bos: bool = False) -> list[int]:
        """Ids of `text`; special tokens written in the text (e.g. "<|im_end|>") become their ids."""
        return self.encode_with_offsets(text, add_bos=add_bos)[0]

    def encode_with_offsets(self, text: str, add_bos: bool = False) -> tuple[list[int], list[tuple[int, int]]]:
        """Ids and, for each, the (start, end) character span of `text` it came from.

        A token that holds only part of a multi-byte character spans that whole character; a
        prepended BOS gets the empty span (0, 0).
        """
        if not isinstance(text, str):
            raise ValueError(f"encode expects a str, got {type(text).__name__}")
        # The post-processor is bypassed so that BOS is added exactly when asked, whatever the file says.
        enc = self._tok.encode(text, add_special_tokens=False)
        ids: list[int] = list(enc.ids)
        offsets: list[tuple[int, int]] = [(int(a), int(b)) for a, b in enc.offsets]
        if add_bos:
            ids.insert(0, self._require_bos())
            offsets.insert(0, (0, 0))
        return ids, offsets

    def encode_batch(self, texts: Sequence[str], add_bos: bool = False) -> list[list[int]]:
        """`encode` for many texts at once (parallel in the Rust backend)."""
        for index, text in enumerate(texts):
            if not isinstance(text, str):
                raise ValueError(f"encode_batch: texts[{index}] is {type(text).__name__}, not str")
        prefix: list[int] = [self._require_bos()] if add_bos else []
        return [prefix + list(enc.ids) for enc in self._tok.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Iterable[int], skip_special: bool = False) -> str:
        """Text of `ids`; bytes that do not form valid UTF-8 come out as U+FFFD."""
        return self._tok.decode(self._check_ids(ids), skip_special_tokens=skip_special)

    # ------------------------------------------------------------------ saving
    def save(self, folder: str | os.PathLike[str]) -> None:
        """Write tokenizer.json and tokenizer_config.json (loadable by `AutoTokenizer.from_pretrained`)."""
        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        tok = HFTokenizer.from_str(self._tok.to_str())
        if self._add_bos and self._bos_id is not None:
            # transformers' generic fast tokenizer ignores add_bos_token; a post-processor is what
            # makes `AutoTokenizer(...).encode(text)` start with BOS like our `encode(text, add_bos=True)`.
            bos = self._tok.id_to_token(self._bos_id)
            tok.post_processor = processors.TemplateProcessing(
                single=f"{bos}:0 $A:0", pair=f"{bos}:0 $A:0 $B:1", special_tokens=[(bos, self._bos_id)]
            )
        else:
            tok.post_processor = None
        config: dict[str, Any] = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": self._name(self._bos_id),
            "eos_token": self._name(self._eos_id),
            "pad_token": self._name(self._pad_id),
            "add_bos_token": self._add_bos,
            "add_eos_token": False,
            "clean_up_tokenization_spaces": False,
            "chat_template": self._chat_template,
        }
        # Write-then-rename so a crash never leaves a truncated file behind.
        write_text_atomically(out / "tokenizer.json", tok.to_str(pretty=True))
        write_text_atomically(out / "tokenizer_config.json", json.dumps(config, indent=2, ensure_ascii=False) + "\n")

    # ------------------------------------------------------------------ helpers
    def _name(self, token_id: int | None) -> str | None:
        return None if token_id is None else self._tok.id_to_token(token_id)

    def _require_bos(self) -> int:
        if self._bos_id is None:
            raise ValueError("add_bos=True but this tokenizer has no bos token")
        return self._bos_id

    def _optional_id(self, token_id: Any, what: str) -> int | None:
        return None if token_id is None else self._check_id(token_id, what)

    def _check_id(self, token_id: Any, what: str) -> int:
        try:
            value = operator.index(token_id)
        except TypeError:
            raise ValueError(f"{what}: {token_id!r} is not an integer id") from None
        if not 0 <= value < self._vocab_size:
            raise ValueError(f"{what}: id {value} is outside the vocabulary (0..{self._vocab_size - 1})")
        return value

    def _check_ids(self, ids: Iterable[int]) -> list[int]:
        if isinstance(ids, (str, bytes)):
            raise ValueError("decode expects a sequence of integer ids, got a string")
        out: list[int] = []
        for position, token_id in enumerate(ids):
            out.append(self._check_id(token_id, f"ids[{position}]"))
        return out

    def __repr__(self) -> str:
        return (
            f"Tokenizer(vocab_size={self._vocab_size}, bos_id={self._bos_id}, eos_ids={sorted(self._eos_ids)}, "
            f"pad_id={self._pad_id}, add_bos={self._add_bos}, chat_template={'yes' if self._chat_template else 'no'})"
        )


class StreamDecoder:
    """Turn ids arriving one at a time into text deltas, never emitting half a character.

    A byte-level token can end in the middle of a UTF-8 sequence (an emoji is often 2-4 tokens).
    We decode a small window of recent ids and hold the delta back while it ends in U+FFFD, the
    mark of an incomplete character. Concatenated deltas (plus `flush()`) equal `decode(all ids)`.
    The window starts one emitted step back so decoders that treat the first token specially
    (e.g. SentencePiece's leading-space strip) see the same context as a full decode.
    """

    def __init__(self, tokenizer: Tokenizer, skip_special: bool = False) -> None:
        self._tokenizer = tokenizer
        self._skip_special = skip_special
        self._ids: list[int] = []
        self._prefix = 0  # window start
        self._read = 0  # ids before this are already emitted

    def push(self, token_id: int) -> str:
        """Add one id; return the newly completed text (possibly "")."""
        self._ids.append(self._tokenizer._check_id(token_id, "token_id"))
        return self._advance(final=False)

    def flush(self) -> str:
        """Emit whatever is held back (an incomplete character comes out as U+FFFD)."""
        return self._advance(final=True)

    def reset(self) -> None:
        self._ids.clear()
        self._prefix = self._read = 0

    def _advance(self, final: bool) -> str:
        if self._read == len(self._ids):
            return ""
        window = self._ids[self._prefix :]
        before = self._tokenizer.decode(self._ids[self._prefix : self._read], self._skip_special)
        text = self._tokenizer.decode(window, self._skip_special)
        if not final and (len(text) <= len(before) or text.endswith(_REPLACEMENT_CHAR)):
            return ""
        delta = text[len(before) :]
        self._prefix, self._read = self._read, len(self._ids)
        # Drop ids that can never matter again so a long generation stays O(window).
        if self._prefix > 0:
            del self._ids[: self._prefix]
            self._read -= self._prefix
            self._prefix = 0
        return delta


# ---------------------------------------------------------------------- folder helpers
def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot parse {path.name}: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{path.name} must hold a JSON object, got {type(data).__name__}")
    return data


def _token_text(value: Any, where: str) -> str | None:
    """A special token as tokenizer_config.json writes it: a string or {"content": ...}."""
    if value is None:
        return None
    if isinstance(value, Mapping):
        value = value.get("content")
    if not isinstance(value, str):
        raise ValueError(f"{where} must be a string or an object with 'content', got {value!r}")
    return value


def _id_list(value: Any, where: str) -> list[int]:
    if value is None:
        return []
    items = value if isinstance(value, list) else [value]
    for item in items:
        if not isinstance(item, int) or isinstance(item, bool):
            raise ValueError(f"{where} must be an integer or a list of integers, got {value!r}")
    return list(items)


def _chat_template(value: Any) -> str | None:
    """tokenizer_config.json's chat_template: a string, or a list of named templates."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, list):
        named = {t.get("name"): t.get("template") for t in value if isinstance(t, Mapping)}
        chosen = named.get("default")
        if isinstance(chosen, str):
            return chosen
    raise ValueError("tokenizer_config.json chat_template must be a string or a list with a 'default' entry")


def _post_processor_adds(tok: HFTokenizer, bos_id: int) -> bool:
    """Whether tokenizer.json's post-processor puts `bos_id` in front of a single sequence."""
    spec = json.loads(tok.to_str()).get("post_processor")
    stack = [spec]
    while stack:
        node = stack.pop()
        if not isinstance(node, dict):
            continue
        if node.get("type") == "Sequence":
            stack.extend(node.get("processors") or [])
        elif node.get("type") == "TemplateProcessing":
            single = node.get("single") or []
            first = single[0].get("SpecialToken") if single and isinstance(single[0], dict) else None
            if first:
                ids = (node.get("special_tokens") or {}).get(first.get("id"), {}).get("ids") or []
                return bos_id in ids
    return False
