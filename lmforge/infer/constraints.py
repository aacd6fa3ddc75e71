"""JSON constrained decoding: any JSON object, or a value valid under a (subset of) JSON Schema.

How it works
------------
1. `compile_schema` turns a JSON schema into a small graph of nodes (object, array, string,
   number, literal set, union). Unsupported keywords are refused with `SchemaError` (a
   `ValueError` naming the keyword and where it is), before any work is done.
2. A byte-level pushdown automaton walks JSON text against that graph. A parse state is a set of
   stacks (a set, because a union such as `anyOf` or an `enum` can keep several readings alive);
   each stack is a tuple of small immutable frames, so states hash and can be cached.
3. `TokenTable` knows the bytes of every token of a tokenizer, arranged in a trie, computed once
   per tokenizer. The tokens allowed in a state are found by walking the trie with the automaton:
   a byte that kills every stack prunes all tokens beneath it, so structural positions cost a few
   hundred steps. Inside a free string almost every token is allowed, so tokens that are "plain
   string text" (no quote, backslash, control character or partial UTF-8) are precomputed once
   and only the other tokens are walked.
4. The result of a walk is cached per state. With every allowed token it stores the length of the
   shortest text that would still complete the JSON after that token. `JSONConstraint` knows how
   many tokens it may still use and allows only tokens after which a completion still fits, so
   the output closes in time and always parses and validates, whatever `max_tokens` cuts.

The shortest completion is counted in bytes; it is a bound in tokens because every byte of it is
ASCII (or a literal from the schema) and byte-level vocabularies hold a token for every byte.

Supported schema subset: `type` (one or a list), `properties`, `required`, `additionalProperties`
(true / false / a schema for the values of free-form objects), `items`, `minItems`, `maxItems`,
`enum`, `const`, `anyOf` / `oneOf` (both generate one matching branch), local `$ref` into
`$defs` / `definitions` (not recursive), and annotations (`title`, `description`, `default`, ...).
Objects with `properties` are generated with the declared properties only (in any order, each at
most once, all `required` ones present), which is valid whatever `additionalProperties` says.
"""

from __future__ import annotations

import json
import math
import re
import threading
import weakref
from collections import OrderedDict
from typing import Any

import torch

from lmforge.tokenizer.tokenizer import Tokenizer

__all__ = ["Grammar", "JSONConstraint", "SchemaError", "TokenTable", "compile_schema"]


class SchemaError(ValueError):
    """The schema is malformed or uses a feature the constrained decoder does not support."""


# ---------------------------------------------------------------------- compiled schema nodes
class _Obj:
    __slots__ = ("props", "required", "extra", "keys")

    def __init__(self, props: dict[bytes, int], required: frozenset[bytes], extra: int | None) -> None:
        self.props = props  # encoded key (JSON string body, UTF-8) -> value node; empty for free-form
        self.required = required
        self.extra = extra  # value node of free-form keys (objects without `properties`), else None
        self.keys = frozenset(props)


class _Arr:
    __slots__ = ("item", "min", "max")

    def __init__(self, item: int, min_items: int, max_items: int | None) -> None:
        self.item, self.min, self.max = item, min_items, max_items


class _Str:
    __slots__ = ()


class _Num:
    __slots__ = ("integer",)

    def __init__(self, integer: bool) -> None:
        self.integer = integer


class _Lit:
    __slots__ = ("lits", "set")

    def __init__(self, lits: tuple[bytes, ...]) -> None:
        self.lits = lits  # exact encodings the value may take
        self.set = frozenset(lits)


class _Union:
    __slots__ = ("options",)

    def __init__(self, options: tuple[int, ...]) -> None:
        self.options = options


_TYPES = ("object", "array", "string", "number", "integer", "boolean", "null")
_ANNOTATIONS = frozenset({
    "title", "description", "$schema", "$id", "$comment", "default", "examples", "deprecated",
    "readOnly", "writeOnly", "$defs", "definitions",
})
_KEYWORDS = frozenset({
    "type", "properties", "required", "additionalProperties", "items", "minItems", "maxItems",
    "enum", "const", "anyOf", "oneOf", "$ref",
})
_MAX_SCHEMA_CHARS = 100_000
_MAX_NODES = 2_000
_MAX_DEPTH = 32
_MAX_ITEMS = 1_000


def _encode(value: Any) -> bytes:
    try:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode("utf-8")
    except UnicodeEncodeError:
        raise SchemaError(f"{value!r} is not valid Unicode text (an unpaired surrogate)") from None


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "integer" if value.is_integer() else "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    raise SchemaError(f"{value!r} is not a JSON value")


class CompiledSchema:
    """The node graph of a schema. `root` is the value to generate; node 0 is "any JSON value"."""

    def __init__(self) -> None:
        self.nodes: list[Any] = []
        self.root = -1
        # Node 0: any JSON value; node 1: free-form object of any values; node 2: array of anything.
        any_idx = self._add(None)
        obj = self._add(_Obj({}, frozenset(), any_idx))
        arr = self._add(_Arr(any_idx, 0, None))
        options = (obj, arr, self._add(_Str()), self._add(_Num(False)), self._add(_Lit((b"true", b"false", b"null"))))
        self.nodes[any_idx] = _Union(options)
        self.any, self.free_object, self.free_array = any_idx, obj, arr
        self._minlen: dict[int, int] = {}

    def _add(self, node: Any) -> int:
        if len(self.nodes) >= _MAX_NODES:
            raise SchemaError(f"schema is too large (more than {_MAX_NODES} nodes)")
        self.nodes.append(node)
        return len(self.nodes) - 1

    def minlen(self, idx: int) -> int:
        """Length in bytes of the shortest JSON text this node accepts."""
        if idx in self._minlen:
            return self._minlen[idx]
        self._minlen[idx] = 1 << 30  # guards against cycles (only the "any" graph has them)
        node = self.nodes[idx]
        if isinstance(node, _Obj):
            pairs = [len(k) + 3 + self.minlen(node.props[k]) for k in node.required]
            value = 2 + sum(pairs) + max(0, len(pairs) - 1)
        elif isinstance(node, _Arr):
            value = 2 + node.min * self.minlen(node.item) + max(0, node.min - 1)
        elif isinstance(node, _Str):
            value = 2
        elif isinstance(node, _Num):
            value = 1
        elif isinstance(node, _Lit):
            value = min(len(lit) for lit in node.lits)
        else:
            value = min(self.minlen(o) for o in node.options)
        self._minlen[idx] = value
        return value


def compile_schema(schema: Any) -> CompiledSchema:
    """Compile a JSON schema (a dict, or `True` for any value); `None` means any JSON object."""
    compiled = CompiledSchema()
    if schema is None:
        compiled.root = compiled.free_object
        return compiled
    try:
        size = len(json.dumps(schema, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise SchemaError(f"schema is not valid JSON: {exc}") from None
    if size > _MAX_SCHEMA_CHARS:
        raise SchemaError(f"schema is {size} characters; the limit is {_MAX_SCHEMA_CHARS}")
    if not isinstance(schema, (dict, bool)):
        raise SchemaError(f"schema must be an object, got {_json_type(schema)}")
    _Compiler(compiled, schema).run()
    if compiled.minlen(compiled.root) >= 1 << 30:
        raise SchemaError("schema accepts no finite value")
    return compiled


class _Compiler:
    def __init__(self, out: CompiledSchema, root: Any) -> None:
        self.out = out
        self.root = root
        self.refs: dict[str, int] = {}
        self.resolving: set[str] = set()

    def run(self) -> None:
        self.out.root = self.node(self.root, "#", 0)

    def node(self, schema: Any, where: str, depth: int) -> int:
        if depth > _MAX_DEPTH:
            raise SchemaError(f"schema is nested more than {_MAX_DEPTH} levels deep at {where}")
        if schema is True or schema == {}:
            return self.out.any
        if schema is False:
            raise SchemaError(f"{where}: the schema `false` accepts nothing")
        if not isinstance(schema, dict):
            raise SchemaError(f"{where}: a schema must be an object or a boolean, got {_json_type(schema)}")
        for key in schema:
            if key not in _KEYWORDS and key not in _ANNOTATIONS:
                raise SchemaError(f"{where}: JSON schema keyword {key!r} is not supported by constrained decoding "
                                  f"(supported: {', '.join(sorted(_KEYWORDS))})")
        active = [k for k in schema if k in _KEYWORDS]
        if "$ref" in schema:
            if active != ["$ref"]:
                raise SchemaError(f"{where}: $ref next to other keywords is not supported")
            return self.ref(schema["$ref"], where, depth)
        for combinator in ("anyOf", "oneOf"):
            if combinator in schema:
                if active != [combinator]:
                    raise SchemaError(f"{where}: {combinator} next to other keywords is not supported")
                options = schema[combinator]
                if not isinstance(options, list) or not options:
                    raise SchemaError(f"{where}.{combinator} must be a non-empty array of schemas")
                return self.out._add(_Union(tuple(self.node(o, f"{where}.{combinator}[{i}]", depth + 1)
                                                  for i, o in enumerate(options))))
        types = self.types(schema, where)
        if "const" in schema or "enum" in schema:
            return self.literals(schema, types, where)
        if types is None:
            if "properties" in schema or "additionalProperties" in schema or "required" in schema:
                types = ["object"]
            elif "items" in schema or "minItems" in schema or "maxItems" in schema:
                types = ["array"]
            else:
                return self.out.any
        nodes = [self.typed(t, schema, where, depth) for t in types]
        return nodes[0] if len(nodes) == 1 else self.out._add(_Union(tuple(nodes)))

    def types(self, schema: dict, where: str) -> list[str] | None:
        if "type" not in schema:
            return None
        value = schema["type"]
        types = [value] if isinstance(value, str) else value
        if not isinstance(types, list) or not types or not all(isinstance(t, str) for t in types):
            raise SchemaError(f"{where}.type must be a type name or a non-empty array of type names")
        for t in types:
            if t not in _TYPES:
                raise SchemaError(f"{where}.type: unknown type {t!r} (expected one of {', '.join(_TYPES)})")
        if len(set(types)) != len(types):
            raise SchemaError(f"{where}.type lists a type twice")
        return types

    def literals(self, schema: dict, types: list[str] | None, where: str) -> int:
        extra = [k for k in schema if k in _KEYWORDS and k not in ("type", "enum", "const")]
        if extra:
            raise SchemaError(f"{where}: {extra[0]} next to enum/const is not supported")
        if "const" in schema and "enum" in schema:
            raise SchemaError(f"{where}: use either enum or const, not both")
        values = [schema["const"]] if "const" in schema else schema["enum"]
        if not isinstance(values, list) or not values:
            raise SchemaError(f"{where}.enum must be a non-empty array")

        def fits(value: Any) -> bool:
            kind = _json_type(value)
            return types is None or kind in types or (kind == "integer" and "number" in types)

        lits = tuple(dict.fromkeys(_encode(v) for v in values if fits(v)))
        if not lits:
            raise SchemaError(f"{where}: no enum/const value has the declared type")
        return self.out._add(_Lit(lits))

    def typed(self, kind: str, schema: dict, where: str, depth: int) -> int:
        for key, kinds in (("properties", "object"), ("required", "object"), ("additionalProperties", "object"),
                           ("items", "array"), ("minItems", "array"), ("maxItems", "array")):
            if key in schema and kinds not in (self.types(schema, where) or [kind]):
                raise SchemaError(f"{where}: {key} needs type {kinds!r}")
        if kind == "string":
            return self.out._add(_Str())
        if kind in ("number", "integer"):
            return self.out._add(_Num(kind == "integer"))
        if kind == "boolean":
            return self.out._add(_Lit((b"true", b"false")))
        if kind == "null":
            return self.out._add(_Lit((b"null",)))
        if kind == "array":
            return self.array(schema, where, depth)
        return self.object(schema, where, depth)

    def array(self, schema: dict, where: str, depth: int) -> int:
        items = schema.get("items", True)
        if isinstance(items, list):
            raise SchemaError(f"{where}.items: tuple validation (an array of schemas) is not supported")
        item = self.node(items, f"{where}.items", depth + 1)
        low, high = schema.get("minItems", 0), schema.get("maxItems")
        for name, value in (("minItems", low), ("maxItems", high)):
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= _MAX_ITEMS):
                raise SchemaError(f"{where}.{name} must be an integer in [0, {_MAX_ITEMS}]")
        if high is not None and low > high:
            raise SchemaError(f"{where}: minItems > maxItems")
        return self.out._add(_Arr(item, low, high))

    def object(self, schema: dict, where: str, depth: int) -> int:
        props = schema.get("properties", {})
        if not isinstance(props, dict):
            raise SchemaError(f"{where}.properties must be an object")
        required = schema.get("required", [])
        if not isinstance(required, list) or not all(isinstance(r, str) for r in required) or len(set(required)) != len(required):
            raise SchemaError(f"{where}.required must be an array of distinct strings")
        extra = schema.get("additionalProperties", True)
        if not isinstance(extra, (bool, dict)):
            raise SchemaError(f"{where}.additionalProperties must be a boolean or a schema")
        compiled: dict[bytes, int] = {}
        for name, sub in props.items():
            compiled[_encode(name)[1:-1]] = self.node(sub, f"{where}.properties.{name}", depth + 1)
        extra_node = None if extra is False else self.node(extra, f"{where}.additionalProperties", depth + 1)
        for name in required:
            key = _encode(name)[1:-1]
            if key not in compiled:
                if extra_node is None:
                    raise SchemaError(f"{where}: required property {name!r} is not in properties and "
                                      "additionalProperties is false")
                compiled[key] = extra_node
        if compiled:  # declared properties only
            return self.out._add(_Obj(compiled, frozenset(_encode(r)[1:-1] for r in required), None))
        return self.out._add(_Obj({}, frozenset(), extra_node))  # free-form keys (or `{}` only)

    def ref(self, ref: Any, where: str, depth: int) -> int:
        if not isinstance(ref, str):
            raise SchemaError(f"{where}.$ref must be a string")
        if ref in self.refs:
            return self.refs[ref]
        match = re.fullmatch(r"#/(\$defs|definitions)/([^/]+)", ref)
        if not match:
            raise SchemaError(f"{where}.$ref {ref!r}: only local references to #/$defs/NAME or #/definitions/NAME "
                              "are supported")
        name = match.group(2).replace("~1", "/").replace("~0", "~")
        table = self.root.get(match.group(1)) if isinstance(self.root, dict) else None
        if not isinstance(table, dict) or name not in table:
            raise SchemaError(f"{where}.$ref {ref!r} points to nothing")
        if ref in self.resolving:
            raise SchemaError(f"{where}.$ref {ref!r}: recursive schemas are not supported")
        self.resolving.add(ref)
        try:
            idx = self.node(table[name], ref, depth + 1)
        finally:
            self.resolving.discard(ref)
        self.refs[ref] = idx
        return idx


# ---------------------------------------------------------------------- the byte-level automaton
# Frames (tuples; the first field is the kind):
#   VAL  (0, node, ws)                      expecting a value of `node` after `ws` whitespace bytes
#   OBJ  (1, node, seen, phase, key, ws)    inside an object; `seen` = encoded keys already written
#   ARR  (2, node, count, phase, ws)        inside an array holding `count` values
#   STR  (3, phase, n, lo, hi)              inside a free string
#   NUM  (4, integer, phase, digits)        inside a number
#   LIT  (5, node, prefix)                  inside one of a literal set (enum, const, true, ...)
# While a child value is on top, its parent frame already sits in its "after the value" phase.
VAL, OBJ, ARR, STR, NUM, LIT = range(6)
O_OPEN, O_KEY, O_COLON, O_NEXT, O_COMMA = range(5)
A_OPEN, A_NEXT, A_COMMA = range(3)
S_BODY, S_ESC, S_HEX, S_UTF8 = range(4)
N_MINUS, N_ZERO, N_INT, N_DOT, N_FRAC, N_E, N_ESIGN, N_EXP = range(8)
_N_ENDABLE = frozenset({N_ZERO, N_INT, N_FRAC, N_EXP})
_STR_BODY = (STR, S_BODY, 0, 0, 0)
_STR_ESC = (STR, S_ESC, 0, 0, 0)
_WS = frozenset(b" \n\r\t")
_DIGITS = frozenset(b"0123456789")
_HEX = frozenset(b"0123456789abcdefABCDEF")
_ESCAPES = frozenset(b'"\\/bfnrt')
_QUOTE, _BACKSLASH, _COLON, _COMMA = 0x22, 0x5C, 0x3A, 0x2C
_LBRACE, _RBRACE, _LBRACKET, _RBRACKET, _MINUS = 0x7B, 0x7D, 0x5B, 0x5D, 0x2D
MAX_WS = 16  # whitespace bytes allowed in a row between tokens of JSON (enough for pretty printing)
MAX_DIGITS = 16  # per part of a number, so a number cannot run on forever
MAX_EXP_DIGITS = 3
MAX_NESTING = 24  # depth of free-form (schema-less) nesting
MAX_STACKS = 64  # readings kept alive at once


def _utf8_lead(b: int) -> tuple[int, int, int] | None:
    """(continuation bytes, low, high bound of the next byte) for a UTF-8 lead byte (RFC 3629)."""
    if 0xC2 <= b <= 0xDF:
        return 1, 0x80, 0xBF
    if b == 0xE0:
        return 2, 0xA0, 0xBF
    if 0xE1 <= b <= 0xEC or 0xEE <= b <= 0xEF:
        return 2, 0x80, 0xBF
    if b == 0xED:
        return 2, 0x80, 0x9F
    if b == 0xF0:
        return 3, 0x90, 0xBF
    if 0xF1 <= b <= 0xF3:
        return 3, 0x80, 0xBF
    if b == 0xF4:
        return 3, 0x80, 0x8F
    return None


_UTF8_LEAD = {b: (STR, S_UTF8) + lead for b in range(256) if (lead := _utf8_lead(b))}

State = frozenset  # of stacks (tuples of frames)


class _Automaton:
    """Steps and completion costs over a compiled schema. Pure functions of (stack, byte)."""

    def __init__(self, schema: CompiledSchema) -> None:
        self.schema = schema
        self.nodes = schema.nodes
        self.initial: State = frozenset({((VAL, schema.root, 0),)})
        self._frame_costs: dict[tuple, int] = {}

    # -- stepping -------------------------------------------------------------------------------
    def step(self, stack: tuple, b: int) -> list[tuple]:
        """Every stack that `stack` becomes after the byte `b` (none: the byte is not allowed)."""
        if not stack:
            return []
        top = stack[-1]
        kind = top[0]
        rest = stack[:-1]
        if kind == STR:
            phase = top[1]
            if phase == S_BODY:
                if b == _QUOTE:
                    return [rest]
                if b == _BACKSLASH:
                    return [rest + (_STR_ESC,)]
                if 0x20 <= b < 0x80:
                    return [stack]
                lead = _UTF8_LEAD.get(b)
                return [rest + (lead,)] if lead else []
            if phase == S_ESC:
                if b in _ESCAPES:
                    return [rest + (_STR_BODY,)]
                return [rest + ((STR, S_HEX, 4, 0, 0),)] if b == 0x75 else []
            if phase == S_HEX:
                if b not in _HEX:
                    return []
                return [rest + ((_STR_BODY if top[2] == 1 else (STR, S_HEX, top[2] - 1, 0, 0)),)]
            if not top[3] <= b <= top[4]:  # S_UTF8
                return []
            return [rest + ((_STR_BODY if top[2] == 1 else (STR, S_UTF8, top[2] - 1, 0x80, 0xBF)),)]
        if kind == VAL:
            if b in _WS:
                return [rest + ((VAL, top[1], top[2] + 1),)] if top[2] < MAX_WS else []
            return self.start(top[1], b, rest)
        if kind == OBJ:
            return self._step_object(top, rest, b)
        if kind == ARR:
            return self._step_array(top, rest, b)
        if kind == NUM:
            out = self._step_number(top, rest, b)
            if top[2] in _N_ENDABLE:  # the number may also have ended: the byte belongs to the parent
                out += self.step(rest, b)
            return out
        # LIT
        node = self.nodes[top[1]]
        prefix = top[2] + bytes((b,))
        out = [rest + ((LIT, top[1], prefix),)] if any(lit.startswith(prefix) for lit in node.lits) else []
        if top[2] in node.set:
            out += self.step(rest, b)
        return out

    def start(self, idx: int, b: int, rest: tuple) -> list[tuple]:
        """Stacks after `b`, the first byte of a value of node `idx`; `rest` is below it."""
        node = self.nodes[idx]
        if isinstance(node, _Union):
            out: list[tuple] = []
            for option in node.options:
                out += self.start(option, b, rest)
            return out
        if isinstance(node, _Str):
            return [rest + (_STR_BODY,)] if b == _QUOTE else []
        if isinstance(node, _Num):
            if b == _MINUS:
                return [rest + ((NUM, node.integer, N_MINUS, 0),)]
            if b in _DIGITS:
                return [rest + ((NUM, node.integer, N_ZERO if b == 0x30 else N_INT, 1),)]
            return []
        if isinstance(node, _Lit):
            first = bytes((b,))
            return [rest + ((LIT, idx, first),)] if any(lit.startswith(first) for lit in node.lits) else []
        nested = len(rest) >= MAX_NESTING and idx in (self.schema.free_object, self.schema.free_array)
        if isinstance(node, _Obj):
            return [rest + ((OBJ, idx, frozenset(), O_OPEN, None, 0),)] if b == _LBRACE and not nested else []
        return [rest + ((ARR, idx, 0, A_OPEN, 0),)] if b == _LBRACKET and not nested else []

    def _step_object(self, top: tuple, rest: tuple, b: int) -> list[tuple]:
        _, idx, seen, phase, key, ws = top
        node: _Obj = self.nodes[idx]
        if phase == O_KEY:
            if b == _QUOTE:
                return [rest + ((OBJ, idx, seen, O_COLON, key, 0),)] if key in node.keys and key not in seen else []
            prefix = key + bytes((b,))
            if any(k.startswith(prefix) and k not in seen for k in node.keys):
                return [rest + ((OBJ, idx, seen, O_KEY, prefix, 0),)]
            return []
        if b in _WS:
            return [rest + ((OBJ, idx, seen, phase, key, ws + 1),)] if ws < MAX_WS else []
        if phase == O_OPEN or phase == O_COMMA:
            if b == _QUOTE:
                if node.extra is not None:  # free-form key: a string, then the colon
                    return [rest + ((OBJ, idx, seen, O_COLON, None, 0), _STR_BODY)]
                if node.keys - seen:
                    return [rest + ((OBJ, idx, seen, O_KEY, b"", 0),)]
                return []
            if b == _RBRACE and phase == O_OPEN and node.required <= seen:
                return [rest]
            return []
        if phase == O_COLON:
            if b != _COLON:
                return []
            if node.extra is not None:
                return [rest + ((OBJ, idx, seen, O_NEXT, None, 0), (VAL, node.extra, 0))]
            return [rest + ((OBJ, idx, seen | {key}, O_NEXT, None, 0), (VAL, node.props[key], 0))]
        # O_NEXT
        if b == _COMMA and (node.extra is not None or node.keys - seen):
            return [rest + ((OBJ, idx, seen, O_COMMA, None, 0),)]
        if b == _RBRACE and node.required <= seen:
            return [rest]
        return []

    def _step_array(self, top: tuple, rest: tuple, b: int) -> list[tuple]:
        _, idx, count, phase, ws = top
        node: _Arr = self.nodes[idx]
        if b in _WS:
            return [rest + ((ARR, idx, count, phase, ws + 1),)] if ws < MAX_WS else []
        if phase == A_NEXT:
            if b == _COMMA and (node.max is None or count < node.max):
                return [rest + ((ARR, idx, count, A_COMMA, 0),)]
            return [rest] if b == _RBRACKET and count >= node.min else []
        if phase == A_OPEN and b == _RBRACKET:
            return [rest] if node.min == 0 else []
        if node.max is not None and count >= node.max:
            return []
        return self.start(node.item, b, rest + ((ARR, idx, count + 1, A_NEXT, 0),))

    @staticmethod
    def _step_number(top: tuple, rest: tuple, b: int) -> list[tuple]:
        _, integer, phase, digits = top
        if b in _DIGITS:
            if phase == N_MINUS:
                return [rest + ((NUM, integer, N_ZERO if b == 0x30 else N_INT, 1),)]
            if phase == N_INT and digits < MAX_DIGITS:
                return [rest + ((NUM, integer, N_INT, digits + 1),)]
            if phase == N_DOT or (phase == N_FRAC and digits < MAX_DIGITS):
                return [rest + ((NUM, integer, N_FRAC, digits + 1 if phase == N_FRAC else 1),)]
            if phase in (N_E, N_ESIGN) or (phase == N_EXP and digits < MAX_EXP_DIGITS):
                return [rest + ((NUM, integer, N_EXP, digits + 1 if phase == N_EXP else 1),)]
            return []
        if integer:
            return []
        if b == 0x2E and phase in (N_ZERO, N_INT):
            return [rest + ((NUM, integer, N_DOT, 0),)]
        if b in (0x65, 0x45) and phase in (N_ZERO, N_INT, N_FRAC):
            return [rest + ((NUM, integer, N_E, 0),)]
        if b in (0x2B, _MINUS) and phase == N_E:
            return [rest + ((NUM, integer, N_ESIGN, 0),)]
        return []

    def step_state(self, state: State, data: bytes) -> State:
        stacks = list(state)
        for b in data:
            nxt: list[tuple] = []
            for stack in stacks:
                nxt += self.step(stack, b)
            if not nxt:
                return frozenset()
            stacks = nxt if len(nxt) == 1 else list(set(nxt))
        return self.prune(stacks)

    def prune(self, stacks: list[tuple]) -> State:
        if len(stacks) > MAX_STACKS:  # keep the readings that can finish soonest (still sound)
            stacks = sorted(stacks, key=self.cost)[:MAX_STACKS]
        return frozenset(stacks)

    # -- completion ----------------------------------------------------------------------------
    def endable(self, frame: tuple) -> bool:
        if frame[0] == NUM:
            return frame[2] in _N_ENDABLE
        return frame[0] == LIT and frame[2] in self.nodes[frame[1]].set

    def complete(self, state: State) -> bool:
        """True when the text so far is a whole JSON value (the output may end here)."""
        return any(all(self.endable(f) for f in stack) for stack in state)

    def cost(self, stack: tuple) -> int:
        """Bytes of the shortest text that completes `stack` into a whole value."""
        total = 0
        costs = self._frame_costs
        for frame in stack:
            c = costs.get(frame)
            if c is None:
                if len(costs) > 200_000:
                    costs.clear()
                c = costs[frame] = self._frame_cost(frame)
            total += c
        return total

    def state_cost(self, state: State) -> int:
        return min((self.cost(s) for s in state), default=1 << 30)

    def _frame_cost(self, frame: tuple) -> int:
        kind = frame[0]
        minlen = self.schema.minlen
        if kind == VAL:
            return minlen(frame[1])
        if kind == STR:
            return {S_BODY: 1, S_ESC: 2}.get(frame[1], frame[2] + 1)
        if kind == NUM:
            return 0 if frame[2] in _N_ENDABLE else 1
        if kind == LIT:
            return min(len(lit) - len(frame[2]) for lit in self.nodes[frame[1]].lits if lit.startswith(frame[2]))
        if kind == ARR:
            _, idx, count, phase, _ws = frame
            node: _Arr = self.nodes[idx]
            item = minlen(node.item)
            if phase == A_OPEN:
                return 1 + node.min * item + max(0, node.min - 1)
            if phase == A_NEXT:
                return 1 + max(0, node.min - count) * (item + 1)
            need = max(1, node.min - count)  # after a comma at least one more value
            return 1 + need * item + need - 1
        _, idx, seen, phase, key, _ws = frame
        node: _Obj = self.nodes[idx]
        if node.extra is not None:  # free-form
            pair = 3 + minlen(node.extra)  # "":v
            return {O_OPEN: 1, O_NEXT: 1, O_COMMA: pair + 1, O_COLON: 1 + minlen(node.extra) + 1}[phase]

        def pair(k: bytes) -> int:
            return len(k) + 3 + minlen(node.props[k])

        def after_value(done: frozenset) -> int:  # O_NEXT: ", pair" for each missing one, then "}"
            return 1 + sum(pair(k) + 1 for k in node.required - done)

        missing = node.required - seen
        if phase == O_NEXT:
            return after_value(seen)
        if phase == O_OPEN:
            return 1 + sum(pair(k) for k in missing) + max(0, len(missing) - 1)
        if phase == O_COMMA:
            if missing:
                return 1 + sum(pair(k) for k in missing) + len(missing) - 1
            return 1 + min(pair(k) for k in node.keys - seen)
        if phase == O_COLON:
            return 1 + minlen(node.props[key]) + after_value(seen | {key})
        return min(len(k) - len(key) + 2 + minlen(node.props[k]) + after_value(seen | {k})  # O_KEY
                   for k in node.keys - seen if k.startswith(key))


# ---------------------------------------------------------------------- tokens as bytes
def _bytes_to_unicode() -> dict[str, int]:
    """GPT-2's byte-level alphabet, inverted: printable stand-in character -> byte."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars, n = {}, 0
    for b in range(256):
        if b in printable:
            chars[chr(b)] = b
        else:
            chars[chr(256 + n)] = b
            n += 1
    return chars


def token_bytes(tokenizer: Tokenizer) -> list[bytes | None]:
    """The bytes each token id stands for; None for special tokens and unknown ids."""
    backend = tokenizer.backend
    decoder = json.loads(backend.to_str()).get("decoder") or {}
    decoders = decoder.get("decoders", [decoder]) if decoder.get("type") == "Sequence" else [decoder]
    byte_level = any(d.get("type") == "ByteLevel" for d in decoders if isinstance(d, dict))
    alphabet = _bytes_to_unicode()
    out: list[bytes | None] = []
    for idx in range(tokenizer.vocab_size):
        piece = backend.id_to_token(idx)
        if piece is None or idx in tokenizer.special_ids:
            out.append(None)
        elif byte_level:
            try:
                out.append(bytes(alphabet[c] for c in piece))
            except KeyError:  # an added (non-special) token written as plain text
                out.append(piece.encode("utf-8"))
        elif re.fullmatch(r"<0x[0-9A-Fa-f]{2}>", piece):  # SentencePiece byte fallback
            out.append(bytes((int(piece[3:5], 16),)))
        else:
            out.append(piece.replace("\u2581", " ").encode("utf-8"))
    return [b if b else None for b in out]


def _plain_string_text(data: bytes) -> bool:
    """Text that may sit anywhere inside a JSON string: no quote, backslash, control or broken UTF-8."""
    if any(b < 0x20 or b in (_QUOTE, _BACKSLASH) for b in data):
        return False
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


class _Trie:
    __slots__ = ("children", "ids")

    def __init__(self) -> None:
        self.children: dict[int, _Trie] = {}
        self.ids: list[int] = []

    def insert(self, data: bytes, idx: int) -> None:
        node = self
        for b in data:
            child = node.children.get(b)
            if child is None:
                child = node.children[b] = _Trie()
            node = child
        node.ids.append(idx)


class TokenTable:
    """Per-tokenizer data for constrained decoding: token bytes, tries, and compiled grammars."""

    _tables: "weakref.WeakKeyDictionary[Tokenizer, dict[int, TokenTable]]" = weakref.WeakKeyDictionary()
    _lock = threading.Lock()

    def __init__(self, tokenizer: Tokenizer, vocab_size: int | None = None) -> None:
        self.vocab_size = max(vocab_size or 0, tokenizer.vocab_size)  # the model's (may be padded)
        self.bytes = token_bytes(tokenizer)
        self.full = _Trie()
        self.nonplain = _Trie()  # tokens that are not plain string text
        plain = torch.zeros(self.vocab_size, dtype=torch.bool)
        for idx, data in enumerate(self.bytes):
            if data is None:
                continue
            self.full.insert(data, idx)
            if _plain_string_text(data):
                plain[idx] = True
            else:
                self.nonplain.insert(data, idx)
        self.plain_mask = plain
        self._grammars: OrderedDict[str, Grammar] = OrderedDict()
        self._grammar_lock = threading.Lock()

    @classmethod
    def for_tokenizer(cls, tokenizer: Tokenizer, vocab_size: int | None = None) -> TokenTable:
        """The shared table of `tokenizer` (built on first use, about a second)."""
        with cls._lock:
            per = cls._tables.setdefault(tokenizer, {})
            key = max(vocab_size or 0, tokenizer.vocab_size)
            if key not in per:
                per[key] = cls(tokenizer, vocab_size)
            return per[key]

    def grammar(self, schema: Any = None) -> Grammar:
        """A grammar for `schema` (None: any JSON object); identical schemas share one (and its cache)."""
        key = json.dumps(schema, sort_keys=True, allow_nan=False) if schema is not None else "null"
        with self._grammar_lock:
            found = self._grammars.get(key)
            if found is not None:
                self._grammars.move_to_end(key)
                return found
        grammar = Grammar(compile_schema(schema), self)
        with self._grammar_lock:
            self._grammars[key] = grammar
            while len(self._grammars) > 32:
                self._grammars.popitem(last=False)
        return grammar


class _Entry:
    """What a walk found for one state: allowed tokens with their completion costs."""

    __slots__ = ("plain_cost", "ids", "costs", "max_cost")

    def __init__(self, plain_cost: int | None, ids: list[int], costs: list[int]) -> None:
        self.plain_cost = plain_cost  # not None: all plain string tokens are allowed at this cost
        self.ids = torch.tensor(ids, dtype=torch.long)
        self.costs = torch.tensor(costs, dtype=torch.int32)
        self.max_cost = max(costs, default=0)


class Grammar:
    """A compiled schema bound to a token table; computes (and caches) allowed-token masks."""

    def __init__(self, schema: CompiledSchema, table: TokenTable) -> None:
        self.table = table
        self.automaton = _Automaton(schema)
        self.initial = self.automaton.initial
        self._cache: OrderedDict[State, _Entry] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def min_tokens(self) -> int:
        """Tokens the shortest valid output needs at most (a request's max_tokens must allow it)."""
        return self.automaton.state_cost(self.initial)

    def constraint(self, max_tokens: int | None = None) -> JSONConstraint:
        return JSONConstraint(self, max_tokens)

    def is_complete(self, state: State) -> bool:
        return self.automaton.complete(state)

    def advance(self, state: State, token_id: int) -> State:
        data = self.table.bytes[token_id] if 0 <= token_id < len(self.table.bytes) else None
        if data is None:
            raise ValueError(f"token {token_id} is not allowed here (a special or unknown token)")
        if _is_plain_state(state) and self.table.plain_mask[token_id]:
            return state
        new = self.automaton.step_state(state, data)
        if not new:
            raise ValueError(f"token {token_id} ({data!r}) is not allowed by the JSON grammar here")
        return new

    def mask(self, state: State, budget: int | None = None) -> torch.Tensor:
        """[V] bool: tokens allowed now, after which a completion fits in `budget` more tokens."""
        entry = self._entry(state)
        limit = math.inf if budget is None else budget
        if entry.plain_cost is not None and entry.plain_cost <= limit:
            mask = self.table.plain_mask.clone()
        else:
            mask = torch.zeros(self.table.vocab_size, dtype=torch.bool)
        if entry.max_cost <= limit:
            mask[entry.ids] = True
        else:
            mask[entry.ids[entry.costs <= limit]] = True
        return mask

    def _entry(self, state: State) -> _Entry:
        with self._lock:
            entry = self._cache.get(state)
            if entry is not None:
                self._cache.move_to_end(state)
                return entry
        entry = self._walk(state)
        with self._lock:
            self._cache[state] = entry
            while len(self._cache) > 4096:
                self._cache.popitem(last=False)
        return entry

    def _walk(self, state: State) -> _Entry:
        automaton = self.automaton
        plain = _is_plain_state(state)
        ids: list[int] = []
        costs: list[int] = []
        stack = [((self.table.nonplain if plain else self.table.full), list(state))]
        while stack:
            node, stacks = stack.pop()
            for b, child in node.children.items():
                nxt: list[tuple] = []
                for s in stacks:
                    nxt += automaton.step(s, b)
                if not nxt:
                    continue
                if len(nxt) > 1:
                    nxt = list(set(nxt))
                if child.ids:
                    cost = min(automaton.cost(s) for s in nxt)
                    ids += child.ids
                    costs += [cost] * len(child.ids)
                if child.children:
                    if len(nxt) > MAX_STACKS:
                        nxt = list(automaton.prune(nxt))
                    stack.append((child, nxt))
        return _Entry(automaton.state_cost(state) if plain else None, ids, costs)


def _is_plain_state(state: State) -> bool:
    return bool(state) and all(s and s[-1] == _STR_BODY for s in state)


class JSONConstraint:
    """The engine's `Constraint` for one sequence: JSON text that completes within `max_tokens`."""

    def __init__(self, grammar: Grammar, max_tokens: int | None = None) -> None:
        if max_tokens is not None and max_tokens < grammar.min_tokens:
            raise ValueError(f"max_tokens={max_tokens} is too small for this JSON format: the shortest valid "
                             f"output needs {grammar.min_tokens} tokens")
        self.grammar = grammar
        self.state = grammar.initial
        self.max_tokens = max_tokens
        self.used = 0

    def allowed(self) -> torch.Tensor:
        budget = None if self.max_tokens is None else self.max_tokens - self.used - 1
        return self.grammar.mask(self.state, budget)

    def advance(self, token_id: int) -> None:
        self.state = self.grammar.advance(self.state, token_id)
        self.used += 1

    def is_complete(self) -> bool:
        return self.grammar.is_complete(self.state)
