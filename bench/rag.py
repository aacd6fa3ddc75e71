"""Retrieval-augmented answers on a generated corpus of made-up facts: closed book vs RAG.

    python bench/rag.py [--seed 0] [--countries 16] [--batch 8] [--threads 2] [--embedder NAME]

A seeded generator invents countries, towns, people, companies, rivers and minerals with names
built from random syllables (so the model cannot know them), and writes one Markdown article per
country (its capital and dish, its towns with their founding year and mayor, its companies with
their founder and seat, its rivers with their length, the minerals its people discovered) mixed
with filler sentences about the same names. Every fact is one sentence of fewer words than the
chunk overlap, so some chunk holds it whole. The default size gives 16 countries x 14 facts =
224 answerable questions and 48 unanswerable ones.

The corpus is indexed with the project's own `lmforge.rag.index.build_index` (the CLI's defaults:
120-word chunks, 30 words of overlap, BM25; dense vectors fused in with --embedder) and answered
with `lmforge.rag.answer.ask_many` (what `lmforge rag ask` and the server run), greedy.

* closed book: the same question as plain chat (no passages), greedy.
* accuracy: the reply contains the answer's key (the made-up word, the surname, or the number);
  an abstention counts as wrong.
* recall@5: the question's fact sentence is inside one of the 5 chunks retrieved.
* citation precision: of the chunks the answers cite, the share that hold the fact sentence.
* abstention: questions the corpus cannot answer, of two kinds: about names that never occur in it
  ("unknown name"), and about a known name but a property the corpus never states ("unknown
  property"); the share answered "not in the documents". False abstentions on answerable
  questions are counted too.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lmforge.infer import Engine, SamplingParams  # noqa: E402
from lmforge.io.registry import load_model  # noqa: E402
from lmforge.rag.answer import ask_many  # noqa: E402
from lmforge.rag.embed import Embedder  # noqa: E402
from lmforge.rag.index import build_index  # noqa: E402

ONSETS = ["b", "br", "d", "dr", "f", "g", "gr", "k", "kl", "l", "m", "n", "p", "qu", "r", "s", "st", "t", "th",
          "v", "z", "sk", "h"]
VOWELS = ["a", "e", "i", "o", "u", "ae", "ou", "ei"]
CODAS = ["", "n", "r", "l", "s", "th", "x", "nd", "rk", "v", "m"]
FILLER = [
    "{n} is often mentioned in travel guides of the region.",
    "Many visitors describe {n} as quiet and pleasant.",
    "Old maps spell the name {n} in several different ways.",
    "Local songs about {n} are still sung at festivals.",
    "Historians have written many books about {n}.",
    "The climate around {n} is mild for most of the year.",
]


class Names:
    """Unique made-up words from random syllables."""

    def __init__(self, rng: random.Random) -> None:
        self.rng, self.used = rng, set()

    def word(self, syllables: int = 2) -> str:
        while True:
            word = "".join(self.rng.choice(ONSETS) + self.rng.choice(VOWELS) + self.rng.choice(CODAS)
                           for _ in range(syllables)).capitalize()
            if word.lower() not in self.used and len(word) >= 5:
                self.used.add(word.lower())
                return word

    def person(self) -> tuple[str, str]:
        """(full name, surname): the surname is unique, the key an answer must contain."""
        surname = self.word()
        return f"{self.word()} {surname}", surname


@dataclass(frozen=True)
class Question:
    text: str
    key: str | None  # None: the corpus cannot answer it
    fact: str | None  # the sentence that answers it
    kind: str  # what the question asks ("capital", "mayor", ...), "unknown name" or "unknown property"


def corpus(seed: int, countries: int) -> tuple[dict[str, str], list[Question]]:
    """({file name: article}, questions): 14 answerable facts and 3 unanswerable questions per country."""
    rng = random.Random(seed)
    names = Names(rng)
    articles, questions = {}, []

    def fact(kind: str, sentence: str, question: str, key: str, lines: list[str], subject: str) -> None:
        lines.append(sentence)
        if rng.random() < 0.7:
            lines.append(rng.choice(FILLER).format(n=subject))
        questions.append(Question(question, key, sentence, kind))

    for _ in range(countries):
        country = names.word(3)
        lines = [f"# {country}", f"{country} is a small country far from the sea."]
        capital = names.word()
        dish = names.word().lower()
        fact("capital", f"The capital of {country} is {capital}.", f"What is the capital of {country}?",
             capital, lines, country)
        fact("dish", f"The national dish of {country} is {dish} stew.", f"What is the national dish of {country}?",
             dish, lines, country)
        for _town in range(3):
            town = names.word()
            mayor, surname = names.person()
            year = str(rng.randint(1100, 1950))
            lines.append(f"## {town}\n{town} is a town in {country}.")
            fact("founding year", f"{town} was founded in the year {year}.", f"In what year was {town} founded?",
                 year, lines, town)
            fact("mayor", f"The mayor of {town} is {mayor}.", f"Who is the mayor of {town}?", surname, lines, town)
        for _company in range(2):
            company = f"{names.word()} Works"
            founder, surname = names.person()
            seat = names.word()
            lines.append(f"## {company}\n{company} is a company in {country}.")
            fact("founder", f"{company} was founded by {founder}.", f"Who founded {company}?", surname, lines, company)
            fact("headquarters", f"{company} has its headquarters in the town of {seat}.",
                 f"Where does {company} have its headquarters?", seat, lines, company)
        river = names.word()
        length = str(rng.randint(40, 2900))
        fact("river length", f"The river {river} in {country} is {length} kilometres long.",
             f"How long is the river {river}?", length, lines, river)
        scientist, _ = names.person()
        mineral = names.word().lower() + "ite"
        fact("discoverer", f"The mineral {mineral} was discovered by {scientist}.",
             f"Who discovered the mineral {mineral}?", scientist.split()[1], lines, scientist)
        questions.append(Question(f"What is the population of {capital}?", None, None, "unknown property"))
        questions.append(Question(f"Who is the king of {country}?", None, None, "unknown property"))
        articles[f"{country.lower()}.md"] = "\n".join(lines) + "\n"
    for _ in range(countries):  # names that never occur in the corpus
        rng_kind = rng.randrange(4)
        ghost = names.word()
        questions.append(Question([f"What is the capital of {names.word(3)}?", f"Who is the mayor of {ghost}?",
                                   f"Who founded {ghost} Works?", f"How long is the river {ghost}?"][rng_kind],
                                  None, None, "unknown name"))
    return articles, questions


def contains(reply: str, key: str) -> bool:
    return key.lower() in reply.lower()


def holds(chunk_text: str, sentence: str) -> bool:
    return " ".join(sentence.split()) in chunk_text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated corpus (default: 0)")
    parser.add_argument("--countries", type=int, default=16,
                        help="countries (14 answerable questions each, 3 unanswerable; default: 16)")
    parser.add_argument("--batch", type=int, default=8, help="questions generated together (default: 8)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default: 2)")
    parser.add_argument("-k", type=int, default=5, help="chunks retrieved and shown to the model (default: 5)")
    parser.add_argument("--chunk-words", type=int, default=120, help="words per chunk (default: 120)")
    parser.add_argument("--overlap", type=int, default=30, help="words shared by neighbouring chunks (default: 30)")
    parser.add_argument("--max-new-tokens", type=int, default=32, help="tokens per answer (default: 32)")
    parser.add_argument("--embedder", default=None, help="embedding model fused with BM25 (default: none)")
    parser.add_argument("--show", type=int, default=3, help="example questions printed (default: 3)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    articles, questions = corpus(args.seed, args.countries)
    model, tokenizer = load_model("smollm2-135m-instruct")
    engine = Engine(model, tokenizer, max_batch_size=args.batch)
    params = SamplingParams(max_new_tokens=args.max_new_tokens)
    with tempfile.TemporaryDirectory() as folder:
        for name, text in articles.items():
            (Path(folder) / name).write_text(text, encoding="utf-8")
        embedder = None
        if args.embedder:
            embed_model, embed_tokenizer = load_model(args.embedder)
            embedder = Embedder(embed_model, embed_tokenizer)
        start = time.perf_counter()
        index = build_index([folder], words=args.chunk_words, overlap=args.overlap, embedder=embedder,
                            embedder_name=args.embedder)
        index.embedder = embedder
        index_s = time.perf_counter() - start

    answerable = [q for q in questions if q.key is not None]
    start = time.perf_counter()
    closed = engine.generate([engine.chat_prompt([{"role": "user", "content": q.text}]) for q in answerable], params)
    closed_s = time.perf_counter() - start
    start = time.perf_counter()
    answers = ask_many(engine, index, [q.text for q in questions], k=args.k, max_new_tokens=args.max_new_tokens)
    rag_s = time.perf_counter() - start

    closed_right = sum(contains(c.text, q.key) for q, c in zip(answerable, closed))
    by_question = dict(zip([q.text for q in questions], answers))
    rag_right = recalled = false_abstain = cited = cited_right = with_right_cite = 0
    for q in answerable:
        answer = by_question[q.text]
        recalled += any(holds(h.chunk.text, q.fact) for h in answer.hits[:5])
        false_abstain += answer.abstained
        rag_right += not answer.abstained and contains(answer.text, q.key)
        good = [holds(c.chunk.text, q.fact) for c in answer.citations]
        cited, cited_right, with_right_cite = cited + len(good), cited_right + sum(good), with_right_cite + any(good)
    kinds: dict[str, tuple[int, int]] = {}
    for q in questions:
        total, abstained = kinds.get(q.kind, (0, 0))
        kinds[q.kind] = (total + 1, abstained + by_question[q.text].abstained)

    for q, c in list(zip(answerable, closed))[: args.show]:
        print(f"Q: {q.text} (key {q.key!r})\n  closed book: {c.text[:120]!r}\n  RAG: {by_question[q.text].text!r}")
    n = len(answerable)
    pct = lambda k, total=n: f"{k}/{total} ({100 * k / total:.1f}%)" if total else "-"  # noqa: E731
    print(f"\ncorpus: seed {args.seed}, {len(articles)} articles, {len(index.chunks)} chunks "
          f"({args.chunk_words} words, overlap {args.overlap}), {'BM25 + ' + args.embedder if args.embedder else 'BM25'}; "
          f"relevance threshold {index.threshold:.3f} (calibration balanced accuracy "
          f"{index.calibration.get('balanced_accuracy')}); {n} answerable questions, "
          f"{len(questions) - n} unanswerable; SmolLM2-135M-Instruct, greedy, k={args.k}")
    print(f"{'':44}{'closed book':>18}{'RAG':>18}")
    print(f"{'accuracy (answer key in the reply)':44}{pct(closed_right):>18}{pct(rag_right):>18}")
    print(f"{'retrieval recall@5 (fact in the top 5)':44}{'-':>18}{pct(recalled):>18}")
    print(f"{'citation precision (cited chunk has fact)':44}{'-':>18}{pct(cited_right, cited):>18}")
    print(f"{'answers citing a chunk with the fact':44}{'-':>18}{pct(with_right_cite):>18}")
    print(f"{'false abstentions (answerable)':44}{'-':>18}{pct(false_abstain):>18}")
    for kind in ("unknown name", "unknown property"):
        if kind in kinds:
            print(f"{'abstention, ' + kind:44}{'-':>18}{pct(kinds[kind][1], kinds[kind][0]):>18}")
    print(f"{'wall time (s)':44}{closed_s:>18.1f}{rag_s:>18.1f}   (index {index_s:.1f} s)")
    print("abstentions by question kind: " + ", ".join(
        f"{kind} {abstained}/{total}" for kind, (total, abstained) in kinds.items()))


if __name__ == "__main__":
    main()
