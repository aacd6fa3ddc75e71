"""The official `openai` client, unchanged, against a live `lmforge serve` on 127.0.0.1."""

from __future__ import annotations

import json

import jsonschema
import pytest

MODEL = "smollm2-135m-instruct"  # the embedded GGUF the live servers serve

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer"},
        "city": {"type": "string", "enum": ["Paris", "London", "Tokyo"]},
        "languages": {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 3},
        "employed": {"type": "boolean"},
    },
    "required": ["name", "age", "city", "languages", "employed"],
    "additionalProperties": False,
}
ASK = [{"role": "user", "content": "What is the capital of France? Answer in one short sentence."}]


def test_models_lists_the_served_model(client):
    assert [m.id for m in client.models.list().data] == [MODEL]
    assert client.models.retrieve(MODEL).id == MODEL


def test_chat_completion(client):
    reply = client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=16, temperature=0)
    choice = reply.choices[0]
    assert "Paris" in choice.message.content
    assert choice.message.role == "assistant"
    assert choice.finish_reason in ("stop", "length")
    assert reply.object == "chat.completion" and reply.model == MODEL
    assert reply.usage.prompt_tokens > 10
    assert 0 < reply.usage.completion_tokens <= 16
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens


def test_chat_stream_matches_the_plain_reply(client):
    plain = client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=12, temperature=0)
    stream = client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=12, temperature=0, stream=True,
                                            stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(pieces) > 1  # really streamed, token by token
    assert "".join(pieces) == plain.choices[0].message.content
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals == [plain.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == plain.usage.completion_tokens
    assert all(c.usage is None for c in chunks[:-1])


def test_completions_plain_stream_and_logprobs(client):
    reply = client.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=6, temperature=0,
                                      logprobs=2)
    choice = reply.choices[0]
    assert "Paris" in choice.text
    assert choice.logprobs.tokens and "".join(choice.logprobs.tokens).startswith(choice.text[:3])
    assert all(lp <= 0 for lp in choice.logprobs.token_logprobs)
    assert all(len(top) == 2 for top in choice.logprobs.top_logprobs)
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model=MODEL, prompt="The capital of France is", max_tokens=6, temperature=0, stream=True))
    assert streamed == choice.text


def test_completions_accepts_token_ids_and_several_prompts(client):
    france_ids = [504, 3575, 282, 4649, 314]  # "The capital of France is"
    reply = client.completions.create(model=MODEL, prompt=[france_ids, "Once upon a time"], max_tokens=4,
                                      temperature=0, n=2)
    assert [c.index for c in reply.choices] == [0, 1, 2, 3]
    assert reply.choices[0].text == reply.choices[1].text  # greedy: both choices of a prompt agree
    by_text = client.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=4, temperature=0)
    assert reply.choices[0].text == by_text.choices[0].text
    assert reply.usage.prompt_tokens == 5 + 4  # each prompt counted once, not once per choice


def test_stop_sequences_and_seeded_sampling(client):
    stopped = client.completions.create(model=MODEL, prompt="1, 2, 3, 4,", max_tokens=16, temperature=0, stop=[" 7"])
    assert stopped.choices[0].finish_reason == "stop" and " 7" not in stopped.choices[0].text
    assert "6" in stopped.choices[0].text
    kwargs = dict(model=MODEL, messages=[{"role": "user", "content": "Write a word."}], max_tokens=8,
                  temperature=1.0, top_p=0.9, seed=1234, presence_penalty=0.5, frequency_penalty=0.5)
    first = client.chat.completions.create(**kwargs).choices[0].message.content
    second = client.chat.completions.create(**kwargs).choices[0].message.content
    assert first == second


def test_n_choices_with_seed_differ(client):
    reply = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Name an animal."}],
                                           max_tokens=6, temperature=1.5, seed=7, n=3)
    assert [c.index for c in reply.choices] == [0, 1, 2]
    assert len({c.message.content for c in reply.choices}) > 1


def test_json_schema_output_validates(client):
    reply = client.chat.completions.create(
        model=MODEL, max_tokens=80, temperature=0,
        messages=[{"role": "user", "content": "Describe a fictional person as JSON."}],
        response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}},
    )
    data = json.loads(reply.choices[0].message.content)
    jsonschema.validate(data, PERSON)


BIO = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "biography": {"type": "string"}, "born": {"type": "integer"}},
    "required": ["name", "biography", "born"],
    "additionalProperties": False,
}


def test_json_schema_holds_when_max_tokens_cuts_it_short(client):
    # 45 tokens are too few for the biography the model wants to write: the constraint closes the JSON in time.
    for temperature in (0, 1.2):
        reply = client.chat.completions.create(
            model=MODEL, max_tokens=45, temperature=temperature, seed=3,
            messages=[{"role": "user", "content": "Write a long, detailed biography of Marie Curie as JSON."}],
            response_format={"type": "json_schema", "json_schema": {"name": "bio", "schema": BIO}},
        )
        jsonschema.validate(json.loads(reply.choices[0].message.content), BIO)
        assert reply.usage.completion_tokens <= 45


def test_json_object_stream_parses(client):
    stream = client.chat.completions.create(
        model=MODEL, max_tokens=30, temperature=0, stream=True, response_format={"type": "json_object"},
        messages=[{"role": "user", "content": "Give me three colors as a JSON object."}],
    )
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert isinstance(json.loads(text), dict)


def test_chat_logprobs(client):
    reply = client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=5, temperature=0, logprobs=True,
                                           top_logprobs=3)
    content = reply.choices[0].logprobs.content
    assert len(content) == reply.usage.completion_tokens
    assert "".join(t.token for t in content) == reply.choices[0].message.content
    for item in content:
        assert len(item.top_logprobs) == 3
        assert item.top_logprobs[0].logprob == pytest.approx(item.logprob)  # greedy picks the top one
        assert bytes(item.bytes).decode("utf-8", "replace") == item.token
