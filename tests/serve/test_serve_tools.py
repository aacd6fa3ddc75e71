"""Tool calling, structured outputs, embeddings and RAG over HTTP: the openai client (plain and
streamed tool calls), LangChain's bind_tools and an agent loop, LlamaIndex's OpenAILike chat and
function agent, all against the live in-process server."""

from __future__ import annotations

import asyncio
import json
import re

import jsonschema
import pytest
from fastapi.testclient import TestClient

from lmforge.infer.tools import CALCULATOR, PYTHON, call_tool, calculate, run_python_tool
from lmforge.infer.tools import ToolCall as Call

MODEL = "smollm2-135m-instruct"
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "minLength": 2},
                                                     "unit": {"enum": ["celsius", "fahrenheit"]}},
                   "required": ["city", "unit"], "additionalProperties": False}}}
CALC = CALCULATOR.spec.openai()
ASK = [{"role": "user", "content": "What is the weather in Paris, in celsius?"}]


def test_required_tool_call_is_valid(client):
    reply = client.chat.completions.create(model=MODEL, messages=ASK, tools=[WEATHER, CALC], tool_choice="required",
                                           max_tokens=60, temperature=0)
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    calls = choice.message.tool_calls
    assert calls and all(c.id.startswith("call_") and c.type == "function" for c in calls)
    schemas = {t["function"]["name"]: t["function"]["parameters"] for t in (WEATHER, CALC)}
    for call in calls:
        jsonschema.validate(json.loads(call.function.arguments), schemas[call.function.name])


def test_named_tool_choice_and_single_call(client):
    reply = client.chat.completions.create(
        model=MODEL, messages=ASK, tools=[WEATHER, CALC], parallel_tool_calls=False, max_tokens=60, temperature=0,
        tool_choice={"type": "function", "function": {"name": "calculator"}})
    calls = reply.choices[0].message.tool_calls
    assert len(calls) == 1 and calls[0].function.name == "calculator"
    assert re.fullmatch(r"[0-9+*/(). -]{1,200}", json.loads(calls[0].function.arguments)["expression"])


def test_tool_choice_none_answers_in_text(client):
    reply = client.chat.completions.create(model=MODEL, messages=ASK, tools=[WEATHER], tool_choice="none",
                                           max_tokens=12, temperature=0)
    assert reply.choices[0].message.tool_calls is None and reply.choices[0].message.content


def test_streamed_tool_calls_match_the_plain_reply(client):
    kwargs = dict(model=MODEL, messages=ASK, tools=[WEATHER], tool_choice="required", max_tokens=60, temperature=0)
    plain = client.chat.completions.create(**kwargs).choices[0].message.tool_calls[0]
    calls: dict[int, dict] = {}
    finish = None
    for chunk in client.chat.completions.create(stream=True, **kwargs):
        delta = chunk.choices[0].delta
        for piece in delta.tool_calls or []:
            entry = calls.setdefault(piece.index, {"name": "", "arguments": "", "id": None})
            if piece.id:
                entry["id"] = piece.id
            if piece.function and piece.function.name:
                entry["name"] += piece.function.name
            if piece.function and piece.function.arguments:
                entry["arguments"] += piece.function.arguments
        finish = chunk.choices[0].finish_reason or finish
    assert finish == "tool_calls"
    assert calls[0]["name"] == plain.function.name and calls[0]["id"].startswith("call_")
    assert json.loads(calls[0]["arguments"]) == json.loads(plain.function.arguments)


def test_tool_results_round_trip(client):
    first = client.chat.completions.create(model=MODEL, messages=ASK, tools=[WEATHER], tool_choice="required",
                                           max_tokens=60, temperature=0).choices[0].message
    messages = ASK + [first.model_dump(exclude_none=True)] + [
        {"role": "tool", "tool_call_id": first.tool_calls[0].id, "content": "21 degrees, sunny"}]
    final = client.chat.completions.create(model=MODEL, messages=messages, tools=[WEATHER], max_tokens=30,
                                           temperature=0, tool_choice="none")
    assert final.choices[0].message.content


def test_structured_outputs_extra_field(client):
    reply = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Pick one."}],
                                           max_tokens=8, extra_body={"structured_outputs": {"choice": ["red", "blue"]}})
    assert reply.choices[0].message.content in ("red", "blue")
    reply = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "A code?"}], max_tokens=12,
                                           extra_body={"structured_outputs": {"regex": "[A-Z]{3}-[0-9]{2}"}})
    assert re.fullmatch(r"[A-Z]{3}-[0-9]{2}", reply.choices[0].message.content)


def test_embeddings_endpoint(client, server):
    result = client.embeddings.create(model=MODEL, input=["the cat sat", "a dog ran"])
    assert len(result.data) == 2 and len(result.data[0].embedding) == 576
    assert result.usage.prompt_tokens > 0
    service = server.app.state.service
    from lmforge.rag.embed import Embedder

    expected = Embedder(service.engine.model, service.tokenizer).embed(["the cat sat"])[0]
    assert max(abs(a - b) for a, b in zip(result.data[0].embedding, expected.tolist())) < 1e-4


def test_langchain_bind_tools_and_agent_loop(server):
    from langchain_core.messages import HumanMessage, ToolMessage
    from langchain_core.tools import tool
    from langchain_openai import ChatOpenAI

    @tool
    def calculator(expression: str) -> str:
        """Evaluate an arithmetic expression."""
        return str(calculate(expression))

    llm = ChatOpenAI(base_url=server.v1, api_key="unused", model=MODEL, temperature=0, max_tokens=60, max_retries=0)
    bound = llm.bind_tools([calculator], tool_choice="calculator")
    messages = [HumanMessage("What is 12 * 7? Use the calculator.")]
    reply = bound.invoke(messages)
    assert reply.tool_calls and reply.tool_calls[0]["name"] == "calculator"
    for _ in range(2):  # the loop an agent runs: call, feed the result back, until a text answer
        messages.append(reply)
        for call in reply.tool_calls:
            try:
                result = calculator.invoke(call["args"])
            except Exception as exc:  # a bad expression is reported to the model, as agents do
                result = f"error: {exc}"
            messages.append(ToolMessage(result, tool_call_id=call["id"]))
        reply = llm.bind_tools([calculator], tool_choice="none").invoke(messages)
        if not reply.tool_calls:
            break
    assert not reply.tool_calls and isinstance(reply.content, str) and reply.content


def test_llamaindex_chat_and_function_agent(server):
    from llama_index.core.agent.workflow import FunctionAgent
    from llama_index.core.llms import ChatMessage
    from llama_index.core.tools import FunctionTool
    from llama_index.llms.openai_like import OpenAILike

    llm = OpenAILike(model=MODEL, api_base=server.v1, api_key="unused", is_chat_model=True,
                     is_function_calling_model=True, max_tokens=40, temperature=0, context_window=8192)
    answer = llm.chat([ChatMessage(role="user", content="Say hello.")])
    assert answer.message.content

    def multiply(a: float, b: float) -> float:
        """Multiply two numbers."""
        return a * b

    tool = FunctionTool.from_defaults(fn=multiply)
    response = llm.chat_with_tools([tool], user_msg="What is 6 times 7?", tool_required=True)
    calls = llm.get_tool_calls_from_response(response, error_on_no_tool_call=True)
    assert calls[0].tool_name == "multiply" and set(calls[0].tool_kwargs) == {"a", "b"}

    agent = FunctionAgent(tools=[tool], llm=llm, system_prompt="Use the tools.")

    async def run():
        return await agent.run(user_msg="What is 6 times 7?", max_iterations=6)

    result = asyncio.run(run())
    assert str(result)


def test_runaway_python_tool_is_stopped_and_the_server_keeps_serving(client):
    looping = call_tool({"python": PYTHON}, Call("call_1", "python", {"code": "while True:\n    pass"}))
    assert looping.startswith("stopped: it ran past")
    hungry = run_python_tool("x = []\nwhile True:\n    x.append(bytearray(10**7))")
    assert hungry.startswith("stopped: it ran out of memory")
    messages = [{"role": "user", "content": "Run a loop."},
                {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function", "function": {
                    "name": "python", "arguments": json.dumps({"code": "while True: pass"})}}]},
                {"role": "tool", "tool_call_id": "call_1", "content": looping}]
    reply = client.chat.completions.create(model=MODEL, messages=messages, tools=[PYTHON.spec.openai()], max_tokens=16,
                                           temperature=0, tool_choice="none")
    assert reply.choices[0].message.content


@pytest.fixture(scope="module")
def rag_app(smollm, tmp_path_factory):
    from lmforge.rag.index import build_index
    from lmforge.serve import ServeConfig, create_app

    folder = tmp_path_factory.mktemp("rag-docs")
    (folder / "facts.txt").write_text("\n".join([
        "The capital of Zorblia is Quentar, a city on the river Vell.",
        "Mira Voss founded the Glassworks of Tembry in the year 1842.",
        "The Tembry lighthouse is 41 metres tall and built from granite.",
        "Orlak Dunn invented the steam loom of Parvish in 1790.",
        "The national dish of Keldra is smoked eel with barley.",
        "Quentar's university was opened by Queen Isla Marr."]) + "\n", encoding="utf-8")
    index = build_index([str(folder)], words=12, overlap=2)
    return create_app(*smollm, ServeConfig(model_id=MODEL, max_concurrency=1), rag_index=index), index


def test_rag_endpoint_cites_or_abstains(rag_app, smollm, server):
    from lmforge.infer import Engine
    from lmforge.rag.answer import ask

    app, index = rag_app
    engine = Engine(*smollm, max_batch_size=1)
    with TestClient(app) as http:
        # each answer is in one chunk only (12-word chunks): the reply must cite that chunk
        for question, fact in [("Who founded the Glassworks of Tembry?", "Mira Voss"),
                               ("How tall is the Tembry lighthouse?", "41 metres")]:
            found = http.post("/v1/rag/ask", json={"question": question, "k": 2}).json()
            assert sum(fact in c.text for c in index.chunks) == 1
            assert not found["abstained"] and found["citations"]
            assert found["answer"].startswith(f"[{found['citations'][0]['number']}]")
            assert any(fact in c["text"] for c in found["citations"]), found
            # greedy by default: the same answer as the Python API
            assert found["answer"] == ask(engine, index, question, k=2).text
        missing = http.post("/v1/rag/ask", json={"question": "What is the capital of Blorvania?"}).json()
        assert missing["abstained"] and missing["answer"] == "not in the documents"
        assert http.post("/v1/rag/ask", json={"question": ""}).status_code == 400
    import httpx

    assert httpx.post(server.v1 + "/rag/ask", json={"question": "x"}, timeout=30).status_code == 404
