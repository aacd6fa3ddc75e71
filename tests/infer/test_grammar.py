"""Structured output on llguidance: the schema suite, regexes, grammars, choices, budgets, errors, the engine."""

from __future__ import annotations

import importlib.util
import json
import random
import re
import sys
from pathlib import Path

import jsonschema
import pytest
import torch

from lmforge.infer import Engine, SamplingParams
from lmforge.infer.grammar import GrammarCompiler, GrammarError, GrammarSpec

ROOT = Path(__file__).resolve().parents[2]


def _load_suite():
    spec = importlib.util.spec_from_file_location("grammar_schemas", ROOT / "bench" / "grammar_schemas.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["grammar_schemas"] = module
    spec.loader.exec_module(module)
    return module.SCHEMAS


SCHEMAS = _load_suite()


@pytest.fixture(scope="module")
def compiler(smollm):
    model, tokenizer = smollm
    return GrammarCompiler.for_tokenizer(tokenizer, model.config.vocab_size)


def random_walk(constraint, tokenizer, rng: random.Random, max_tokens: int, stop_ids=frozenset({0, 2})) -> str:
    """Tokens drawn uniformly from the mask (the end token once complete, with probability 1/2),
    as the engine would draw them: the hardest test of masks and of closing within the budget."""
    ids = []
    for _ in range(max_tokens):
        allowed = constraint.allowed()
        choices = allowed.nonzero().flatten().tolist()
        if constraint.is_complete() and (not choices or rng.random() < 0.5):
            break
        assert choices, f"dead end after {tokenizer.decode(ids)!r}"
        token = rng.choice(choices)
        constraint.advance(token)
        ids.append(token)
    return tokenizer.decode(ids)


def test_the_suite_is_large_and_varied():
    assert len(SCHEMAS) >= 50
    text = json.dumps([s for _, s, _ in SCHEMAS])
    for keyword in ("pattern", "format", "minimum", "maximum", "minLength", "allOf", "prefixItems", "$ref", "anyOf",
                    "oneOf", "enum", "const", "additionalProperties"):
        assert f'"{keyword}"' in text, keyword


@pytest.mark.parametrize("name, schema, prompt", SCHEMAS, ids=[s[0] for s in SCHEMAS])
def test_random_tokens_under_the_mask_always_validate(compiler, smollm, name, schema, prompt):
    """Uniformly random allowed tokens with a budget of 48 tokens still give JSON that parses and
    validates: the masks are right, and the constraint closes the value before the budget ends."""
    tokenizer = smollm[1]
    grammar = compiler.grammar(GrammarSpec.json_schema(schema))
    budget = max(48, (grammar.min_tokens or 0) + 8)
    for seed in range(2):
        text = random_walk(grammar.constraint(budget), tokenizer, random.Random(seed), budget)
        value = json.loads(text)
        jsonschema.validate(value, schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)


def test_unconstrained_budget_walk_stays_valid_until_complete(compiler, smollm):
    tokenizer = smollm[1]
    schema = SCHEMAS[0][1]
    constraint = compiler.grammar(GrammarSpec.json_schema(schema)).constraint(None)
    text = random_walk(constraint, tokenizer, random.Random(5), 400)
    if constraint.is_complete():
        jsonschema.validate(json.loads(text), schema)
    else:  # without a budget a random walk may wander in a string; what came so far is a valid prefix
        assert text.startswith('{"')


@pytest.mark.parametrize("spec, pattern", [
    (GrammarSpec.regex(r"[0-9]{3}-[a-z]{2,4}"), r"[0-9]{3}-[a-z]{2,4}"),
    (GrammarSpec.regex(r"(yes|no), because [a-z ]{1,20}\."), r"(yes|no), because [a-z ]{1,20}\."),
    (GrammarSpec.choice(["Paris", "London", 'say "hi"\n']), r'Paris|London|say "hi"\n'),
    (GrammarSpec.grammar('start: "The answer is " NUM "."\nNUM: /[0-9]{1,4}/'), r"The answer is [0-9]{1,4}\."),
    (GrammarSpec.grammar('root ::= "(" item ("," item)* ")"\nitem ::= [a-c]+'), r"\([a-c]+(,[a-c]+)*\)"),
])
def test_regex_choice_and_grammars(compiler, smollm, spec, pattern):
    tokenizer = smollm[1]
    grammar = compiler.grammar(spec)
    for seed in range(3):
        text = random_walk(grammar.constraint(40), tokenizer, random.Random(seed), 40)
        assert re.fullmatch(pattern, text), text


@pytest.mark.parametrize("spec, message", [
    (GrammarSpec("json_schema", {"type": "banana"}), "banana"),
    (GrammarSpec("json_schema", {"type": "object", "not": {"type": "string"}}), "not"),
    (GrammarSpec("json_schema", {"$ref": "#/$defs/missing"}), "missing"),
    (GrammarSpec("regex", "[0-9"), "regex"),
    (GrammarSpec("grammar", "start: undefined_rule"), "undefined_rule"),
])
def test_bad_specs_are_refused_naming_the_problem(compiler, spec, message):
    with pytest.raises(GrammarError, match=re.escape(message)):
        compiler.grammar(spec)


@pytest.mark.parametrize("kind, source", [("json_schema", ["not a schema"]), ("regex", ""), ("choice", ()),
                                          ("yaml", "x: 1")])
def test_malformed_specs(kind, source):
    with pytest.raises(GrammarError):
        GrammarSpec(kind, source)


def test_budget_closes_json_and_refuses_impossible_budgets(compiler, smollm):
    tokenizer = smollm[1]
    schema = {"type": "object", "properties": {"name": {"type": "string"}, "tags": {"type": "array", "items": {
        "type": "string"}}}, "required": ["name", "tags"], "additionalProperties": False}
    grammar = compiler.grammar(GrammarSpec.json_schema(schema))
    assert 4 <= grammar.min_tokens <= 16  # {"name":"","tags":[]} in a handful of tokens (an estimate from above)
    with pytest.raises(ValueError, match="too small"):
        grammar.check_budget(grammar.min_tokens - 1)
    for budget in (grammar.min_tokens, grammar.min_tokens + 3, 30):
        for seed in range(3):
            text = random_walk(grammar.constraint(budget), tokenizer, random.Random(seed), budget)
            jsonschema.validate(json.loads(text), schema)
            assert len(tokenizer.encode(text)) <= budget + 2  # re-tokenizing may merge or split a little


def test_compiled_grammars_are_cached(compiler):
    a = compiler.grammar(GrammarSpec.json_schema({"type": "object", "properties": {"a": {"type": "integer"}}}))
    b = compiler.grammar(GrammarSpec.json_schema({"properties": {"a": {"type": "integer"}}, "type": "object"}))
    assert a is b


def test_engine_output_is_valid_json_in_a_batch(smollm, compiler):
    """Greedy generation by the real model under two different schemas in one batch."""
    model, tokenizer = smollm
    engine = Engine(model, tokenizer, max_batch_size=2)
    person = SCHEMAS[0][1]
    colour = dict((n, s) for n, s, _ in SCHEMAS)["enum_color"]
    prompts = [engine.chat_prompt([{"role": "user", "content": "Describe a person as JSON."}]),
               engine.chat_prompt([{"role": "user", "content": "Pick a colour as JSON."}])]
    params = SamplingParams(max_new_tokens=40)
    out = engine.generate(prompts, params, constraints=[compiler.grammar(GrammarSpec.json_schema(s)).constraint(40)
                                                        for s in (person, colour)])
    for completion, schema in zip(out, (person, colour)):
        jsonschema.validate(json.loads(completion.text), schema)
    free = engine.generate(prompts[:1], params)[0].text  # the same prompt without the constraint differs
    assert free != out[0].text
    assert torch.is_tensor(compiler.grammar(GrammarSpec.json_schema(person)).constraint().allowed())
