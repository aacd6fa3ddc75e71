"""Retrieval-augmented answers with numbered citations, or an abstention.

    answer = ask(engine, index, "Who founded Quentar?")
    answer.text        # 'Mira Voss founded Quentar [1].'
    answer.citations   # [Citation(number=1, chunk=...)]

The retrieved chunks are numbered [1]..[k] in the prompt; the reply is constrained by a grammar to
start with one to three citations of listed numbers ("[2] " or "[1][3] ") followed by the answer
on one line, so every answer names the passages it rests on. (Citations come first because a
grammar can then let the answer end wherever the model ends it.) When retrieval finds nothing relevant (the index's calibrated
threshold, see lmforge.rag.index) the model is not asked at all and the answer is
"not in the documents".
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from lmforge.infer.engine import Engine
from lmforge.infer.grammar import GrammarCompiler, GrammarSpec
from lmforge.infer.sampling import SamplingParams
from lmforge.rag.index import Chunk, Hit, RagIndex

__all__ = ["ABSTAIN", "Answer", "Citation", "answer_grammar", "ask", "ask_many", "build_messages", "finish"]

ABSTAIN = "not in the documents"
SYSTEM = ("Answer the question using only the numbered passages. Start with the number of the passage that "
          "supports your answer in square brackets, then give a short answer, like: [2] Paris is the capital of France.")


@dataclass(frozen=True)
class Citation:
    number: int
    chunk: Chunk


@dataclass(frozen=True)
class Answer:
    text: str
    citations: list[Citation]
    hits: list[Hit]
    abstained: bool

    def to_dict(self) -> dict:
        return {"answer": self.text, "abstained": self.abstained,
                "citations": [{"number": c.number, "source": c.chunk.source, "chunk": c.chunk.id, "text": c.chunk.text}
                              for c in self.citations],
                "retrieved": [{"source": h.chunk.source, "chunk": h.chunk.id, "score": round(h.score, 6),
                               "relevance": round(h.relevance, 4)} for h in self.hits]}


def build_messages(question: str, hits: list[Hit]) -> list[dict]:
    passages = "\n".join(f"[{n}] {hit.chunk.text}" for n, hit in enumerate(hits, 1))
    return [{"role": "system", "content": SYSTEM},
            {"role": "user", "content": f"Passages:\n{passages}\n\nQuestion: {question}"}]


def answer_grammar(count: int) -> GrammarSpec:
    """One to three citations of 1..count, a space, then an answer of 1 to 300 characters on one line."""
    numbers = " | ".join(json.dumps(str(n)) for n in range(1, count + 1))
    return GrammarSpec.grammar(
        'start: cite cite? cite? " " TEXT\n'
        'cite: "[" number "]"\n'
        f"number: {numbers}\n"
        r"TEXT: /[^\n\[\]]{1,300}/")


def finish(text: str, hits: list[Hit]) -> Answer:
    """The answer and its citations (numbers outside 1..len(hits) are dropped)."""
    numbers = [int(n) for n in re.findall(r"\[(\d+)\]", re.match(r"(\[\d+\])*", text.strip()).group(0))]
    cited = []
    for n in dict.fromkeys(numbers):
        if 1 <= n <= len(hits):
            cited.append(Citation(n, hits[n - 1].chunk))
    return Answer(text.strip(), cited, hits, False)


def abstain(hits: list[Hit]) -> Answer:
    return Answer(ABSTAIN, [], hits, True)


def ask(engine: Engine, index: RagIndex, question: str, *, k: int = 5, max_new_tokens: int = 64) -> Answer:
    return ask_many(engine, index, [question], k=k, max_new_tokens=max_new_tokens)[0]


def ask_many(engine: Engine, index: RagIndex, questions: list[str], *, k: int = 5,
             max_new_tokens: int = 64) -> list[Answer]:
    """`ask` for several questions; the ones retrieval finds relevant are answered in one batched generate."""
    hits = [index.search(question, k) for question in questions]
    answers: list[Answer | None] = [None if index.relevant(h) else abstain(h) for h in hits]
    todo = [i for i, answer in enumerate(answers) if answer is None]
    if todo:
        compiler = GrammarCompiler.for_tokenizer(engine.tokenizer, engine.vocab_size)
        prompts = [engine.chat_prompt(build_messages(questions[i], hits[i])) for i in todo]
        constraints = [compiler.grammar(answer_grammar(len(hits[i]))).constraint(max_new_tokens) for i in todo]
        completions = engine.generate(prompts, SamplingParams(max_new_tokens=max_new_tokens), constraints=constraints)
        for i, completion in zip(todo, completions):
            answers[i] = finish(completion.text, hits[i])
    return answers
