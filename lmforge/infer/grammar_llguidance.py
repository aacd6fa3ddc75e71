"""The llguidance adapter: GrammarSpec -> llguidance grammar, and its matcher as a `Matcher`.

llguidance (Microsoft's Rust grammar engine, used by llama.cpp and vLLM) computes token masks
with an Earley parser over a lexer; its tokenizer data is built here from our own `tokenizers`
vocabulary (the JSON of `Tokenizer.backend`), never from transformers. JSON is generated compact
(no whitespace between tokens of the JSON text), which keeps a model from padding forever.
"""

from __future__ import annotations

import json
from typing import Any

import llguidance
import torch

from lmforge.infer.grammar import GrammarError, GrammarSpec
from lmforge.tokenizer.tokenizer import Tokenizer

_JSON_OPTIONS = {"whitespace_flexible": False}
_SHIFTS = torch.arange(32, dtype=torch.int32)


def _compile_text(spec: GrammarSpec) -> str:
    """The llguidance grammar (its JSON form) of a spec; unchecked."""
    Matcher = llguidance.LLMatcher
    if spec.kind == "json_schema":
        schema = {} if spec.source is True else spec.source
        if spec.source is False:
            raise GrammarError("the schema `false` accepts no value")
        return Matcher.grammar_from_json_schema(json.dumps(schema), defaults=_JSON_OPTIONS)
    if spec.kind == "json_object":
        return Matcher.grammar_from_json_schema({"type": "object"}, defaults=_JSON_OPTIONS)
    if spec.kind == "regex":
        return Matcher.grammar_from_regex(spec.source)
    if spec.kind == "grammar":
        try:
            return llguidance.grammar_from("grammar", spec.source)  # Lark, or GBNF converted to Lark
        except Exception as exc:  # the GBNF converter raises its own error types
            raise GrammarError(f"invalid grammar: {exc}") from None
    alternatives = " | ".join(json.dumps(choice, ensure_ascii=False) for choice in spec.source)
    return Matcher.grammar_from_lark(f"start: {alternatives}")


class LLGuidanceMatcher:
    """An llguidance matcher behind the `Matcher` protocol."""

    __slots__ = ("inner", "vocab_size", "words", "eos")

    def __init__(self, inner: llguidance.LLMatcher, vocab_size: int, eos: torch.Tensor) -> None:
        self.inner = inner
        self.vocab_size = vocab_size
        self.words = torch.empty((vocab_size + 31) // 32, dtype=torch.int32)
        self.eos = eos

    def mask(self) -> torch.Tensor:
        self.inner.unsafe_compute_mask_ptr(self.words.data_ptr(), self.words.numel() * 4)
        bits = ((self.words.unsqueeze(-1) >> _SHIFTS) & 1).flatten()[: self.vocab_size].bool()
        bits[self.eos] = False  # the engine adds its own end tokens when the output may end
        return bits

    def consume(self, token_id: int) -> bool:
        return self.inner.consume_token(int(token_id))

    def is_accepting(self) -> bool:
        return self.inner.is_accepting()

    def accepts(self, token_id: int) -> bool:
        return self.inner.validate_tokens([int(token_id)]) == 1

    def forced_tokens(self) -> list[int]:
        return list(self.inner.compute_ff_tokens())

    def copy(self) -> LLGuidanceMatcher:
        return LLGuidanceMatcher(self.inner.deep_copy(), self.vocab_size, self.eos)

    def error(self) -> str:
        return self.inner.get_error()


class LLGuidanceBackend:
    """llguidance bound to one tokenizer (building its token data takes about two seconds)."""

    name = "llguidance"

    def __init__(self, tokenizer: Tokenizer, vocab_size: int) -> None:
        self.vocab_size = vocab_size
        eos = sorted(tokenizer.eos_ids) or [tokenizer.eos_id or 0]
        self.tokenizer = llguidance.LLTokenizer(tokenizer.backend.to_str(), n_vocab=vocab_size, eos_token=eos)
        self.eos = torch.tensor(eos, dtype=torch.long)
        self.limits = llguidance.LLParserLimits(verbose_errors=False)

    def compile(self, spec: GrammarSpec) -> str:
        try:
            text = _compile_text(spec)
        except GrammarError:
            raise
        except (ValueError, TypeError) as exc:
            raise GrammarError(f"invalid {spec.kind.replace('_', ' ')}: {exc}") from None
        failed, messages = llguidance.LLMatcher.validate_grammar_with_warnings(text, self.tokenizer, limits=self.limits)
        if failed:
            raise GrammarError(f"invalid or unsupported {spec.kind.replace('_', ' ')}: {_first_line(messages)}")
        return text

    def matcher(self, compiled: Any) -> LLGuidanceMatcher:
        inner = llguidance.LLMatcher(self.tokenizer, compiled, log_level=0, limits=self.limits)
        if inner.is_error():
            raise GrammarError(f"grammar failed to start: {inner.get_error()}")
        return LLGuidanceMatcher(inner, self.vocab_size, self.eos)


def _first_line(messages: list[str]) -> str:
    text = "; ".join(m.strip() for m in messages if m.strip()) or "rejected by llguidance"
    return text if len(text) < 500 else text[:500] + "..."
