"""LangChain's ChatOpenAI, unchanged, against the live server."""

from __future__ import annotations

from langchain_openai import ChatOpenAI
from pydantic import BaseModel

MODEL = "smollm2-135m-instruct"  # the embedded GGUF the live servers serve


def chat_model(server, **kwargs) -> ChatOpenAI:
    return ChatOpenAI(model=MODEL, base_url=server.v1, api_key="unused", temperature=0, max_retries=0, **kwargs)


def test_invoke_and_stream(server):
    llm = chat_model(server, max_tokens=16)
    answer = llm.invoke("What is the capital of France? Answer in one short sentence.")
    assert "Paris" in answer.content
    chunks = list(llm.stream("What is the capital of France? Answer in one short sentence."))
    assert len([c for c in chunks if c.content]) > 1
    assert "".join(c.content for c in chunks) == answer.content


class City(BaseModel):
    name: str
    country: str
    population: int


def test_structured_output_with_a_pydantic_model(server):
    llm = chat_model(server, max_tokens=60).with_structured_output(City, method="json_schema")
    city = llm.invoke("Describe the city of Paris.")
    assert isinstance(city, City)
