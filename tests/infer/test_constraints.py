"""JSON constrained decoding: schema compilation, the byte automaton, token masks, budgets, and the engine."""

from __future__ import annotations

import json
import random

import jsonschema
import pytest
import torch

from lmforge.infer import Engine, SamplingParams
from lmforge.infer.constraints import JSONConstraint, SchemaError, TokenTable, compile_schema

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer"},
        "height": {"type": "number"},
        "city": {"enum": ["Paris", "New York", 'Say "hi"']},
        "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 3},
        "married": {"type": "boolean"},
        "spouse": {"anyOf": [{"type": "string"}, {"type": "null"}]},
    },
    "required": ["name", "age", "city"],
    "additionalProperties": False,
}
NESTED = {  # what pydantic writes for a model with a nested model, an Optional and a list of models
    "$defs": {
        "Address": {"title": "Address", "type": "object", "properties": {
            "street": {"title": "Street", "type": "string"}, "zip": {"title": "Zip", "type": "integer"}},
            "required": ["street", "zip"]},
    },
    "title": "Company", "type": "object",
    "properties": {
        "name": {"title": "Name", "type": "string"},
        "hq": {"$ref": "#/$defs/Address"},
        "offices": {"title": "Offices", "type": "array", "items": {"$ref": "#/$defs/Address"}, "minItems": 1},
        "rating": {"anyOf": [{"type": "number"}, {"type": "null"}], "default": None},
        "kind": {"const": "company"},
    },
    "required": ["name", "hq", "offices", "kind"],
}
SCHEMAS = {
    "person": PERSON,
    "nested": NESTED,
    "scores": {"type": "object", "additionalProperties": {"type": "integer"}},
    "list": {"type": "array", "items": {"type": ["integer", "boolean"]}, "minItems": 2, "maxItems": 4},
    "multi_type": {"type": ["string", "number", "null"]},
    "anything": {},
}


@pytest.fixture(scope="module")
def table(smollm):
    model, tokenizer = smollm
    return TokenTable.for_tokenizer(tokenizer, model.config.vocab_size)


def accepts(grammar, text: str) -> bool:
    state = grammar.automaton.step_state(grammar.initial, text.encode("utf-8"))
    return bool(state) and grammar.is_complete(state)


# ---------------------------------------------------------------------- compilation
@pytest.mark.parametrize("schema, words", [
    ({"type": "string", "pattern": "^a$"}, "'pattern'"),
    ({"type": "string", "format": "email"}, "'format'"),
    ({"type": "integer", "minimum": 0}, "'minimum'"),
    ({"allOf": [{"type": "string"}]}, "'allOf'"),
    ({"type": "banana"}, "unknown type 'banana'"),
    ({"enum": []}, "non-empty"),
    ({"type": "object", "properties": {"a": {"type": "string"}}, "required": ["b"], "additionalProperties": False},
     "required property 'b'"),
    ({"type": "array", "items": [{"type": "string"}]}, "tuple validation"),
    ({"type": "array", "minItems": 3, "maxItems": 1}, "minItems > maxItems"),
    ({"$defs": {"N": {"type": "object", "properties": {"next": {"$ref": "#/$defs/N"}}}}, "$ref": "#/$defs/N"},
     "recursive"),
    ({"$ref": "https://example.com/schema.json"}, "only local references"),
    ({"type": "object", "properties": []}, "properties must be an object"),
    (["not", "a", "schema"], "must be an object"),
    (False, "accepts nothing"),
    ({"enum": ["\ud800"]}, "unpaired surrogate"),
])
def test_unsupported_or_invalid_schemas_are_refused_with_a_reason(schema, words):
    with pytest.raises(SchemaError) as info:
        compile_schema(schema)
    assert words in str(info.value)


def test_schema_size_limits():
    with pytest.raises(SchemaError, match="characters"):
        compile_schema({"enum": ["x" * 200_000]})
    deep: dict = {"type": "string"}
    for _ in range(40):
        deep = {"type": "array", "items": deep}
    with pytest.raises(SchemaError, match="nested"):
        compile_schema(deep)


# ---------------------------------------------------------------------- the automaton on whole texts
VALID = {
    "person": [
        {"name": "Ann", "age": 31, "city": "Paris"},
        {"city": 'Say "hi"', "age": -4, "name": "Zoë \u4e2d\n", "tags": [], "married": False, "spouse": None,
         "height": 1.75e2},
        {"name": "", "age": 0, "city": "New York", "tags": ["a", "b", "c"], "spouse": "Bob", "height": -0.5},
    ],
    "nested": [{"name": "Acme", "hq": {"street": "Main", "zip": 123}, "offices": [{"zip": 1, "street": "x"}],
                "kind": "company", "rating": None}],
    "scores": [{}, {"alice": 3, "bob": -12}],
    "list": [[1, True], [False, 2, 3, 4]],
    "multi_type": ["text", 3.5, None],
    "anything": [{"a": [1, {"b": None}], "c": "d"}, [], "x", 0, True],
}
INVALID = {
    "person": ['{"name":"Ann","age":31}',  # a required property is missing
               '{"name":"Ann","age":31,"city":"Rome"}',  # not in the enum
               '{"name":"Ann","age":31.5,"city":"Paris"}',  # integer
               '{"name":"Ann","age":31,"city":"Paris","extra":1}',  # additionalProperties false
               '{"name":"Ann","name":"Bo","age":1,"city":"Paris"}',  # a key twice
               '{"name":"Ann","age":031,"city":"Paris"}',  # leading zero
               '{"name":"A\nn","age":1,"city":"Paris"}',  # raw newline inside a string
               '{"name":"Ann","age":1,"city":"Paris",}',  # trailing comma
               '{"name":"Ann","age":1,"city":"Paris"} x'],  # text after the value
    "list": ["[1]", "[1,2,3,4,5]", '["a","b"]'],
    "multi_type": ["[]", "true"],
}


@pytest.mark.parametrize("name", SCHEMAS)
def test_automaton_accepts_valid_documents_compact_and_pretty(table, name):
    grammar = table.grammar(SCHEMAS[name])
    for doc in VALID[name]:
        jsonschema.validate(doc, SCHEMAS[name])  # the fixtures themselves are right
        for text in (json.dumps(doc), json.dumps(doc, ensure_ascii=False, indent=2)):
            assert accepts(grammar, text), text


@pytest.mark.parametrize("name", INVALID)
def test_automaton_rejects_invalid_documents(table, name):
    grammar = table.grammar(SCHEMAS[name])
    for text in INVALID[name]:
        assert not accepts(grammar, text), text


def test_invalid_utf8_is_rejected_inside_strings(table):
    grammar = table.grammar({"type": "string"})
    for bad in (b'"\xff"', b'"\xc3"', b'"\xed\xa0\x80"', b'"\xe2\x82"'):
        state = grammar.automaton.step_state(grammar.initial, bad)
        assert not (state and grammar.is_complete(state)), bad
    assert grammar.is_complete(grammar.automaton.step_state(grammar.initial, '"é€😀"'.encode()))


# ---------------------------------------------------------------------- token masks and budgets
def random_walk(grammar, table, budget: int, rng: random.Random, eos: int) -> tuple[str, int]:
    """Sample uniformly among allowed tokens (EOS allowed once complete), as a sampler would."""
    constraint = grammar.constraint(budget)
    out = b""
    for used in range(budget):
        mask = constraint.allowed()
        if constraint.is_complete():
            mask[eos] = True
        allowed = mask.nonzero().flatten().tolist()
        assert allowed, f"dead end after {out!r}"
        token = rng.choice(allowed)
        if token == eos:
            return out.decode("utf-8"), used
        constraint.advance(token)
        out += table.bytes[token]
    assert constraint.is_complete(), f"budget of {budget} tokens ran out before the JSON closed: {out!r}"
    return out.decode("utf-8"), budget


@pytest.mark.parametrize("name", SCHEMAS)
def test_random_token_walks_always_produce_valid_json_within_the_budget(table, smollm, name):
    eos = min(smollm[1].eos_ids)
    schema = SCHEMAS[name]
    grammar = table.grammar(schema)
    rng = random.Random(name)
    for walk in range(3):
        budget = grammar.min_tokens + rng.choice([0, 5, 30])
        text, used = random_walk(grammar, table, budget, rng, eos)
        jsonschema.validate(json.loads(text), schema)
        assert used <= budget


def test_json_object_mode_walks(table, smollm):
    grammar = table.grammar(None)
    rng = random.Random(0)
    for budget in (2, 3, 12, 40):
        text, _ = random_walk(grammar, table, budget, rng, min(smollm[1].eos_ids))
        assert isinstance(json.loads(text), dict)


def test_masks_inside_a_string_and_after_completion(table, smollm):
    tokenizer = smollm[1]
    grammar = table.grammar({"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]})
    constraint = grammar.constraint(100)
    for token in tokenizer.encode('{"a": "Hello'):
        assert constraint.allowed()[token], tokenizer.decode([token])
        constraint.advance(token)
    mask = constraint.allowed()
    assert mask[tokenizer.encode(" world")[0]] and mask[tokenizer.encode('"}')[0]]
    assert not mask[tokenizer.encode("\n")[0]]  # a raw newline may not sit in a JSON string
    assert not any(mask[i] for i in tokenizer.special_ids)
    for token in tokenizer.encode('"}'):
        constraint.advance(token)
    assert constraint.is_complete() and not constraint.allowed().any()  # only the end token may follow
    with pytest.raises(ValueError):
        constraint.advance(tokenizer.encode("x")[0])


def test_budget_forces_the_json_closed(table, smollm):
    tokenizer = smollm[1]
    grammar = table.grammar({"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]})
    assert grammar.min_tokens == len('{"a":""}')
    with pytest.raises(ValueError, match="too small"):
        JSONConstraint(grammar, grammar.min_tokens - 1)
    constraint = grammar.constraint(10)
    for token in tokenizer.encode('{"a":"'):
        constraint.advance(token)
    # Tokens used so far + 2 ('"' and '}') must fit: with 10 - used - 1 left after the next token,
    # only tokens that keep a completion within reach remain.
    left = 10 - constraint.used - 1
    mask = constraint.allowed()
    for token in torch.nonzero(mask).flatten().tolist():
        data = table.bytes[token]
        state = grammar.advance(constraint.state, token)
        assert grammar.automaton.state_cost(state) <= left, data


# ---------------------------------------------------------------------- with the real model
def test_engine_generates_schema_valid_json(smollm):
    model, tokenizer = smollm
    engine = Engine(model, tokenizer, max_batch_size=2)
    table = TokenTable.for_tokenizer(tokenizer, model.config.vocab_size)
    prompt = engine.chat_prompt([{"role": "user", "content": "Give me a person as JSON: name, age and city."}])
    params = SamplingParams(max_new_tokens=48)
    completions = engine.generate([prompt, prompt], params,
                                  constraints=[table.grammar(PERSON).constraint(48), table.grammar(None).constraint(48)])
    person = json.loads(completions[0].text)
    jsonschema.validate(person, PERSON)
    assert isinstance(json.loads(completions[1].text), dict)
    assert all(c.completion_tokens <= 48 for c in completions)
