"""Retrieval: reading and chunking, BM25 and fused search, calibrated abstention, embeddings against
transformers, index files, cited answers from the model, and the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lmforge.infer import Engine
from lmforge.rag.answer import ABSTAIN, answer_grammar, ask, ask_many, finish
from lmforge.rag.embed import Embedder
from lmforge.rag.index import RagIndex, build_index, chunk_text, read_documents

ROOT = Path(__file__).resolve().parents[2]
FACTS = [
    "The capital of Zorblia is Quentar, a city on the river Vell.",
    "Mira Voss founded the Glassworks of Tembry in the year 1842.",
    "The Tembry lighthouse is 41 metres tall and built from granite.",
    "Orlak Dunn invented the steam loom of Parvish in 1790.",
    "The national dish of Keldra is smoked eel with barley.",
    "Quentar's university was opened by Queen Isla Marr.",
]


@pytest.fixture(scope="module")
def docs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("docs")
    (folder / "a.md").write_text("# Notes\n" + "\n".join(FACTS[:2]) + "\n", encoding="utf-8")
    (folder / "b.txt").write_text(FACTS[2] + "\n" + FACTS[3] + "\n", encoding="utf-8")
    (folder / "c.jsonl").write_text("\n".join(json.dumps({"text": f}) for f in FACTS[4:]) + "\n", encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def index(docs):
    return build_index([str(docs)], words=12, overlap=2)


def test_chunks_overlap_and_cover_the_text():
    words = [f"w{i}" for i in range(25)]
    chunks = chunk_text(" ".join(words), words=10, overlap=3)
    assert chunks[0].split() == words[:10]
    assert chunks[1].split()[:3] == words[7:10]  # the overlap
    assert set(" ".join(chunks).split()) == set(words)
    with pytest.raises(ValueError, match="overlap"):
        chunk_text("a b", words=5, overlap=5)


def test_reading_formats_and_errors(docs, tmp_path):
    sources = [s for s, _ in read_documents([str(docs)])]
    assert any(s.endswith("a.md") for s in sources) and any(s.endswith("c.jsonl:2") for s in sources)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"nope": 1}\n', encoding="utf-8")
    with pytest.raises(ValueError, match="bad.jsonl:2"):
        read_documents([str(bad)])
    with pytest.raises(ValueError, match="no such file"):
        read_documents([str(tmp_path / "missing.txt")])


def test_pdf_text_is_read(tmp_path):
    from pypdf import PdfWriter
    from pypdf.generic import DecodedStreamObject, DictionaryObject, NameObject

    writer = PdfWriter()
    page = writer.add_blank_page(300, 200)
    font = DictionaryObject({NameObject("/Type"): NameObject("/Font"), NameObject("/Subtype"): NameObject("/Type1"),
                             NameObject("/BaseFont"): NameObject("/Helvetica")})
    page[NameObject("/Resources")] = DictionaryObject({NameObject("/Font"): DictionaryObject(
        {NameObject("/F1"): writer._add_object(font)})})
    stream = DecodedStreamObject()
    stream.set_data(b"BT /F1 12 Tf 20 100 Td (Quentar has 9 bridges.) Tj ET")
    page[NameObject("/Contents")] = writer._add_object(stream)
    path = tmp_path / "doc.pdf"
    with open(path, "wb") as handle:
        writer.write(handle)
    [(source, text)] = read_documents([str(path)])
    assert "9 bridges" in text


def test_bm25_finds_the_fact_and_abstains_on_unknown_names(index):
    hits = index.search("Who founded the Glassworks of Tembry?", k=3)
    assert "Mira Voss" in hits[0].chunk.text
    assert index.relevant(hits)
    assert 0.5 < index.calibration["balanced_accuracy"] <= 1.0
    assert not index.relevant(index.search("Who founded the Brightworks of Zanzibor?", k=3))
    assert index.search("xylophone quasar", k=3) == []


def test_question_words_do_not_count_as_unknown_terms(index):
    """Words that questions carry and documents lack (where, does, have, how) are stop words; a
    made-up name still counts at the largest IDF."""
    assert index.relevance("Where does the lighthouse of Tembry have its granite?") == \
        index.relevance("lighthouse Tembry granite")
    assert index.relevance("How tall is the lighthouse of Tembry?") == index.relevance("tall lighthouse Tembry")
    assert index.relevance("How tall is the lighthouse of Blorvania?") < index.relevance("tall lighthouse Tembry")


def test_calibration_is_the_same_in_every_process(docs):
    """The threshold does not depend on the hash seed (string sets iterate in a different order
    in each process)."""
    code = ("import sys; from lmforge.rag.index import build_index; "
            "print(build_index([sys.argv[1]], words=12, overlap=2).calibration)")
    seen = set()
    for seed in ("1", "2", "3"):
        run = subprocess.run([sys.executable, "-c", code, str(docs)], cwd=ROOT, capture_output=True, text=True,
                             timeout=300, env={**os.environ, "PYTHONHASHSEED": seed})
        assert run.returncode == 0, run.stderr
        seen.add(run.stdout.strip())
    assert len(seen) == 1, seen


def test_index_round_trip(index, tmp_path):
    index.save(tmp_path / "idx")
    loaded = RagIndex.load(tmp_path / "idx")
    assert loaded.threshold == index.threshold and [c.text for c in loaded.chunks] == [c.text for c in index.chunks]
    assert loaded.stopwords == index.stopwords == "en_plus"
    assert [h.chunk.id for h in loaded.search("lighthouse granite")] == [h.chunk.id for h in index.search("lighthouse granite")]
    with pytest.raises(ValueError, match="not a RAG index"):
        RagIndex.load(tmp_path)


def test_embeddings_equal_transformers_mean_pooling(tiny_hf_folder):
    from transformers import AutoModel

    from lmforge.io.registry import load_model

    model, tokenizer = load_model(str(tiny_hf_folder))
    embedder = Embedder(model, tokenizer, batch_size=2)
    texts = ["The capital of Zorblia is Quentar.", "Hi", "A somewhat longer sentence about lighthouses and granite."]
    ours = embedder.embed(texts)
    reference = AutoModel.from_pretrained(str(tiny_hf_folder), dtype=torch.float32).eval()
    for text, vector in zip(texts, ours):
        ids = torch.tensor([embedder.token_ids(text)])
        with torch.no_grad():
            hidden = reference(input_ids=ids).last_hidden_state[0]
        expected = torch.nn.functional.normalize(hidden.mean(0), dim=-1)
        torch.testing.assert_close(vector, expected, atol=1e-4, rtol=1e-4)


def test_dense_retrieval_is_fused_with_bm25(docs, tiny_hf_folder, tmp_path):
    from lmforge.io.registry import load_model

    embedder = Embedder(*load_model(str(tiny_hf_folder)))
    index = build_index([str(docs)], words=12, overlap=2, embedder=embedder, embedder_name=str(tiny_hf_folder))
    assert index.embeddings.shape == (len(index.chunks), embedder.dim)
    index.embedder = embedder
    bm25_only = {h.chunk.id: h.score for h in RagIndex(index.chunks, index.retriever, index.df).search("lighthouse", 6)}
    fused = index.search("lighthouse", 6)
    assert len(fused) == 6  # dense ranking brings in chunks BM25 alone does not score
    assert len(bm25_only) < 6
    index.save(tmp_path / "dense")
    assert RagIndex.load(tmp_path / "dense").embeddings.shape == index.embeddings.shape


def test_cited_answers_from_the_model(smollm, index):
    model, tokenizer = smollm
    engine = Engine(model, tokenizer, max_batch_size=1)
    answer = ask(engine, index, "Who founded the Glassworks of Tembry?", k=3, max_new_tokens=32)
    assert not answer.abstained and answer.citations
    assert answer.text.startswith(f"[{answer.citations[0].number}]")
    assert "Mira Voss" in " ".join(c.chunk.text for c in answer.citations)
    unknown = ask(engine, index, "What is the capital of Blorvania?")
    assert unknown.abstained and unknown.text == ABSTAIN and not unknown.citations
    two = index.search("Tembry", 3)
    assert len(two) >= 2 and [c.number for c in finish("[2][9] x", two).citations] == [2]
    assert "number" in answer_grammar(3).source


def test_ask_many_keeps_the_order_and_skips_the_model_for_abstentions(smollm, index):
    model, tokenizer = smollm
    engine = Engine(model, tokenizer, max_batch_size=2)
    questions = ["What is the capital of Blorvania?", "Who founded the Glassworks of Tembry?",
                 "What is the national dish of Keldra?"]
    answers = ask_many(engine, index, questions, k=3, max_new_tokens=24)
    assert [a.abstained for a in answers] == [True, False, False]
    assert answers[0].text == ABSTAIN and not answers[0].citations
    assert "Mira Voss" in " ".join(c.chunk.text for c in answers[1].citations)
    assert all(1 <= c.number <= len(answers[2].hits) for c in answers[2].citations)
    assert all(a.text.startswith(f"[{a.citations[0].number}]") for a in answers[1:])
    assert ask_many(None, index, questions[:1])[0].abstained  # nothing relevant: no engine needed

def test_answer_grammar_allows_only_listed_citations_first(smollm):
    from lmforge.infer.grammar import GrammarCompiler

    model, tokenizer = smollm
    grammar = GrammarCompiler.for_tokenizer(tokenizer, model.config.vocab_size).grammar(answer_grammar(3))

    def accepted(text: str) -> bool:
        matcher = grammar.matcher()
        return all(matcher.consume(t) for t in tokenizer.encode(text)) and matcher.is_accepting()

    assert accepted("[2] Mira Voss founded it.") and accepted("[1][3] In 1842.")
    assert not accepted("[4] Mira Voss.")  # only the listed passages 1..3
    assert not accepted("Mira Voss [1].")  # citations come first
    assert not accepted("[1][2][3][1] x")  # at most three
    assert not accepted("[1] two\nlines")


def test_abstains_below_the_threshold_without_asking_the_model(index):
    question = "Who founded the Glassworks of Tembry?"
    hits = index.search(question, k=3)
    best = max(h.relevance for h in hits)
    assert best == index.relevance(question) and index.relevant(hits) == (best >= index.threshold)
    strict = RagIndex(index.chunks, index.retriever, index.df, threshold=best + 1e-6)
    answer = ask(None, strict, question, k=3)  # no engine: the model is never reached
    assert answer.abstained and answer.text == ABSTAIN and [h.chunk.id for h in answer.hits] == [h.chunk.id for h in hits]
    loose = RagIndex(index.chunks, index.retriever, index.df, threshold=best)
    assert loose.relevant(hits)


def test_cli_index_and_ask(docs, tmp_path):
    out = tmp_path / "cli-index"
    run = [sys.executable, "-m", "lmforge.cli.main", "rag"]
    made = subprocess.run(run + ["index", str(docs), "--out", str(out), "--chunk-words", "12", "--overlap", "2"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert made.returncode == 0, made.stderr
    assert "indexed" in made.stdout and (out / "index.json").is_file()
    asked = subprocess.run(run + ["ask", str(out), "What is the capital of Blorvania?", "--json", "--threads", "1"],
                           cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert asked.returncode == 0, asked.stderr
    assert json.loads(asked.stdout)["abstained"] is True
