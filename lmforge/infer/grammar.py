"""Structured output: JSON Schema, regular expressions, context-free grammars and choices.

The engine knows one small protocol, `lmforge.infer.engine.Constraint` (allowed-token mask,
advance by a token, may the output end here). `GrammarConstraint` implements it over a `Matcher`,
the per-sequence state of a grammar library; each library gets one adapter module that turns a
`GrammarSpec` into matchers (today `lmforge.infer.grammar_llguidance`, over llguidance, the
engine behind llama.cpp's and vLLM's structured outputs). Neither the engine nor the server
calls a library directly.

    compiler = GrammarCompiler.for_tokenizer(tokenizer, model.config.vocab_size)
    grammar = compiler.grammar(GrammarSpec.json_schema({"type": "object", ...}))
    engine.generate([prompt], params, constraints=[grammar.constraint(params.max_new_tokens)])

Closing within `max_tokens`: a library matcher knows what may come next, not how long the
shortest valid ending is. `GrammarConstraint` finds an ending itself (`complete_path`: forced
tokens, then closing characters first, from a copy of the matcher) and, once the tokens left come
within `CLOSING_SLACK` of that ending, it forces the ending, so output cut by `max_tokens` still
parses. It is a safeguard with one hole: a single token that commits to more than
`CLOSING_SLACK` extra tokens of mandatory text just before the margin is reached can still run
out (the output then ends with finish_reason "length").
"""

from __future__ import annotations

import json
import random
import threading
import weakref
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from lmforge.tokenizer.tokenizer import Tokenizer

__all__ = ["CLOSING_SLACK", "Grammar", "GrammarCompiler", "GrammarConstraint", "GrammarError", "GrammarSpec",
           "Matcher", "complete_path"]

CLOSING_SLACK = 16  # tokens kept in reserve beyond the shortest ending found
MAX_SPEC_CHARS = 200_000
MAX_CHOICES = 1_000
KINDS = ("json_schema", "json_object", "regex", "grammar", "choice")


class GrammarError(ValueError):
    """A schema, regex or grammar that is malformed or uses something the library does not support."""


@dataclass(frozen=True)
class GrammarSpec:
    """What the output must match. `kind` is one of KINDS; `source` is the schema (dict or bool),
    the regex, the grammar text (Lark, or GBNF/EBNF as llama.cpp writes it) or a tuple of choices."""

    kind: str
    source: Any = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise GrammarError(f"unknown grammar kind {self.kind!r}; expected one of {', '.join(KINDS)}")
        if self.kind == "json_schema" and not isinstance(self.source, (dict, bool)):
            raise GrammarError(f"a JSON schema must be an object (or true), got {type(self.source).__name__}")
        if self.kind in ("regex", "grammar") and (not isinstance(self.source, str) or not self.source.strip()):
            raise GrammarError(f"a {self.kind} must be a non-empty string")
        if self.kind == "choice":
            choices = self.source
            if (not isinstance(choices, tuple) or not choices or len(choices) > MAX_CHOICES
                    or not all(isinstance(c, str) and c for c in choices)):
                raise GrammarError(f"choice must be a list of 1 to {MAX_CHOICES} non-empty strings")
        if len(self.key) > MAX_SPEC_CHARS:
            raise GrammarError(f"the {self.kind} is {len(self.key)} characters long; the limit is {MAX_SPEC_CHARS}")

    @property
    def key(self) -> str:
        """A canonical text of the spec (the compiled-grammar cache key)."""
        try:
            return json.dumps([self.kind, self.source], sort_keys=True, allow_nan=False, ensure_ascii=False)
        except (TypeError, ValueError) as exc:
            raise GrammarError(f"the {self.kind} is not valid JSON data: {exc}") from None

    @classmethod
    def json_schema(cls, schema: Any) -> GrammarSpec:
        return cls("json_schema", schema)

    @classmethod
    def json_object(cls) -> GrammarSpec:
        return cls("json_object")

    @classmethod
    def regex(cls, pattern: str) -> GrammarSpec:
        return cls("regex", pattern)

    @classmethod
    def grammar(cls, text: str) -> GrammarSpec:
        return cls("grammar", text)

    @classmethod
    def choice(cls, choices: Sequence[str]) -> GrammarSpec:
        if isinstance(choices, str) or not isinstance(choices, Sequence):
            raise GrammarError("choice must be a list of strings")
        return cls("choice", tuple(choices))


class Matcher(Protocol):
    """The per-sequence state of a grammar library (what an adapter provides)."""

    def mask(self) -> torch.Tensor:  # [V] bool: tokens allowed next (end tokens not included)
        ...

    def consume(self, token_id: int) -> bool:  # False: the token is not allowed here
        ...

    def is_accepting(self) -> bool:  # the output may end here
        ...

    def forced_tokens(self) -> list[int]:  # tokens that must come next, whatever is chosen
        ...

    def accepts(self, token_id: int) -> bool:  # may this token come next (without computing a mask)?
        ...

    def copy(self) -> Matcher:
        ...


class Backend(Protocol):
    """A grammar library bound to one tokenizer (what an adapter provides)."""

    name: str

    def compile(self, spec: GrammarSpec) -> Any:  # raises GrammarError
        ...

    def matcher(self, compiled: Any) -> Matcher:
        ...


# ---------------------------------------------------------------------- the shortest ending
_DIGITS_AND_MORE = ("0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "n", "@", ".", ",", ":", "-", "{", "[", "a",
                    "t", "f", "e", " ")
_ORDERS = (('"', "}", "]") + _DIGITS_AND_MORE,  # strings closed first
           ("]", "}", '"') + _DIGITS_AND_MORE)  # containers closed first
_ASCII = tuple(chr(c) for c in range(32, 127))


def preference_orders(tokenizer: Tokenizer) -> tuple[torch.Tensor, ...]:
    """Single-character token ids in the order they are tried when searching for an ending (two
    orders: closers and digits first, then every other printable ASCII character)."""
    orders = []
    for order in _ORDERS:
        ids = []
        for char in dict.fromkeys(order + _ASCII):
            encoded = tokenizer.encode(char)
            if len(encoded) == 1:
                ids.append(encoded[0])
        orders.append(torch.tensor(ids, dtype=torch.long))
    return tuple(orders)


def complete_path(matcher: Matcher, limit: int, orders: Sequence[torch.Tensor], attempts: int = 2) -> list[int] | None:
    """Tokens that take `matcher` (left untouched) to an accepting state, at most `limit` of them,
    or None when none is found; the shortest of a few greedy walks. Forced tokens are taken as they
    come; at a choice, the first allowed token of a preference order (closing characters, digits...)
    not yet taken twice (closing characters: not 4 times in a row) is taken, else the smallest
    allowed id, so a walk moves on instead of circling. When no order reaches an end, `attempts` more walks choose at random among the
    allowed single characters (seeded: the result is repeatable)."""
    rng = random.Random(0)
    closers = set(orders[0][:3].tolist())
    best: list[int] | None = None
    for attempt in range(len(orders) + attempts):
        if attempt >= len(orders) and best is not None:
            break
        m = matcher.copy()
        path: list[int] = []
        used: dict[int, int] = {}
        run = 0  # how many times the last token was taken in a row

        def fresh(token: int) -> bool:  # closers may come again and again, but not 4 times in a row
            if token in closers:
                return not (path and path[-1] == token and run >= 3)
            return used.get(token, 0) < 2
        while len(path) <= limit and (best is None or len(path) < len(best)):
            if m.is_accepting():
                if best is None or len(path) < len(best):
                    best = path
                break
            forced = m.forced_tokens()
            if forced:
                ok = True
                for token in forced:
                    ok = m.consume(token)
                    path.append(token)
                    if not ok:
                        break
                if not ok:
                    break
                continue
            token = None
            if attempt < len(orders):  # a preferred token that fits, checked without a full mask
                token = next((int(t) for t in orders[attempt] if fresh(int(t)) and m.accepts(int(t))), None)
            else:
                fitting = [int(t) for t in orders[0] if m.accepts(int(t))]
                token = rng.choice(fitting) if fitting else None
            if token is None:
                candidates = m.mask().nonzero().flatten()
                if candidates.numel() == 0:
                    break
                token = int(candidates[0] if attempt < len(orders) else candidates[rng.randrange(candidates.numel())])
            used[token] = used.get(token, 0) + 1
            run = run + 1 if path and path[-1] == token else 1
            if not m.consume(token):
                break
            path.append(token)
        if best is not None and len(best) <= 1:
            break
    return best


# ---------------------------------------------------------------------- grammars and constraints
class Grammar:
    """A compiled spec bound to one tokenizer; makes a `GrammarConstraint` per sequence."""

    def __init__(self, spec: GrammarSpec, backend: Backend, compiled: Any, vocab_size: int, preference: tuple[torch.Tensor, ...]) -> None:
        self.spec = spec
        self.backend = backend
        self.compiled = compiled
        self.vocab_size = vocab_size
        self.preference = preference
        path = complete_path(backend.matcher(compiled), 4096, preference)
        # Tokens of the shortest ending found from the start (an upper bound of the true minimum);
        # None when the search found none.
        self.min_tokens: int | None = None if path is None else len(path)

    def check_budget(self, max_tokens: int) -> None:
        """Refuse a budget too small for any JSON output (for JSON the search finds the shortest
        closing in practice; for regexes and grammars it is only a bound, so nothing is refused)."""
        if self.spec.kind.startswith("json") and self.min_tokens is not None and max_tokens < self.min_tokens:
            raise ValueError(f"max_tokens={max_tokens} is too small for this JSON format: its shortest valid output "
                             f"needs {self.min_tokens} tokens")

    def matcher(self) -> Matcher:
        return self.backend.matcher(self.compiled)

    def constraint(self, max_tokens: int | None = None) -> GrammarConstraint:
        return GrammarConstraint(self, max_tokens)


class GrammarConstraint:
    """The engine's `Constraint` for one sequence: output that matches the grammar and, when
    `max_tokens` is given, ends within it (see the module docstring for the one exception)."""

    CHECK_EVERY = 8  # tokens between searches for an ending while far from the budget

    def __init__(self, grammar: Grammar, max_tokens: int | None = None) -> None:
        self.grammar = grammar
        self.matcher = grammar.matcher()
        self.max_tokens = max_tokens
        self.used = 0
        self.ending = grammar.min_tokens  # length of the last ending found (None: none known)
        self.closing: list[int] | None = None  # the ending being forced, once the budget demands it

    def allowed(self) -> torch.Tensor:
        if self.closing is None and self.max_tokens is not None:
            self._check_budget()
        if self.closing is not None:
            mask = torch.zeros(self.grammar.vocab_size, dtype=torch.bool)
            if self.closing:
                mask[self.closing[0]] = True
            return mask  # empty once complete: only the end token (added by the engine) remains
        return self.matcher.mask()

    def _check_budget(self) -> None:
        left = self.max_tokens - self.used  # tokens that may still be generated, this one included
        near = self.ending is not None and left <= self.ending + 2 * CLOSING_SLACK
        if not near and self.used % self.CHECK_EVERY:
            return
        path = complete_path(self.matcher, left, self.grammar.preference)
        self.ending = None if path is None else len(path)
        if path is not None and left < len(path) + CLOSING_SLACK:
            self.closing = path

    def advance(self, token_id: int) -> None:
        if not self.matcher.consume(token_id):
            raise ValueError(f"token {token_id} is not allowed by the {self.grammar.spec.kind} here")
        self.used += 1
        if self.closing:
            if self.closing[0] == token_id:
                self.closing.pop(0)
            else:  # cannot happen through the engine (the mask allowed only closing[0]); search again
                self.closing = None

    def is_complete(self) -> bool:
        return self.matcher.is_accepting()


class GrammarCompiler:
    """Compiled grammars of one tokenizer (one per model vocabulary size), cached by spec."""

    _compilers: "weakref.WeakKeyDictionary[Tokenizer, dict[int, GrammarCompiler]]" = weakref.WeakKeyDictionary()
    _lock = threading.Lock()
    CACHE_SIZE = 64

    def __init__(self, tokenizer: Tokenizer, vocab_size: int | None = None, backend: Backend | None = None) -> None:
        self.vocab_size = max(vocab_size or 0, tokenizer.vocab_size)
        if backend is None:
            from lmforge.infer.grammar_llguidance import LLGuidanceBackend

            backend = LLGuidanceBackend(tokenizer, self.vocab_size)
        self.backend = backend
        self.preference = preference_orders(tokenizer)
        self._grammars: OrderedDict[str, Grammar] = OrderedDict()
        self._cache_lock = threading.Lock()

    @classmethod
    def for_tokenizer(cls, tokenizer: Tokenizer, vocab_size: int | None = None) -> GrammarCompiler:
        """The shared compiler of `tokenizer` (built on first use: about two seconds)."""
        with cls._lock:
            per = cls._compilers.setdefault(tokenizer, {})
            key = max(vocab_size or 0, tokenizer.vocab_size)
            if key not in per:
                per[key] = cls(tokenizer, vocab_size)
            return per[key]

    def grammar(self, spec: GrammarSpec) -> Grammar:
        """The compiled grammar of `spec`; raises GrammarError naming what is wrong with it."""
        key = spec.key
        with self._cache_lock:
            found = self._grammars.get(key)
            if found is not None:
                self._grammars.move_to_end(key)
                return found
        grammar = Grammar(spec, self.backend, self.backend.compile(spec), self.vocab_size, self.preference)
        with self._cache_lock:
            self._grammars[key] = grammar
            while len(self._grammars) > self.CACHE_SIZE:
                self._grammars.popitem(last=False)
        return grammar
