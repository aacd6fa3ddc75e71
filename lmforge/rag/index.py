"""A retrieval index: documents read and chunked with overlap, BM25 (bm25s), optional dense
embeddings fused with BM25 by reciprocal rank fusion, and a calibrated relevance threshold.

    index = build_index(["docs/"], embedder=None)      # .txt .md .jsonl (text field) .pdf
    index.save("runs/index"); index = RagIndex.load("runs/index")
    hits = index.search("Who founded Quentar?", k=5)   # [Hit(chunk, score, bm25, relevance)]
    index.relevant(hits)                               # False: abstain

Relevance: the best BM25 score divided by the query's IDF mass (each query term's inverse
document frequency, unknown terms counted at the largest IDF), so a question whose key words the
documents never mention scores low whatever its length. The threshold is calibrated when the
index is built, on pseudo-questions made from the index's own chunks (a random part of a chunk's
sentence: answerable) and the same with its rarest words swapped for made-up ones (not
answerable); never on anyone's test questions.
"""

from __future__ import annotations

import glob
import json
import math
import random
import re
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import bm25s
import numpy as np
import torch

from lmforge.core.files import write_folder_atomically
from lmforge.rag.embed import Embedder

__all__ = ["Chunk", "Hit", "RagIndex", "build_index", "chunk_text", "read_documents"]

FORMAT_VERSION = 1
# NLTK's English list (bm25s "en_plus"): it holds the question words (who, where, does, have, how)
# that questions carry and documents rarely do; with the 33-word "en" list they counted as unknown
# terms and pushed answerable questions under the threshold (bench/rag.py: 41% of them).
STOPWORDS = "en_plus"
TEXT_SUFFIXES = (".txt", ".md", ".markdown", ".rst")


@dataclass(frozen=True)
class Chunk:
    id: int
    source: str  # file (and line for jsonl)
    text: str


@dataclass(frozen=True)
class Hit:
    chunk: Chunk
    score: float  # the fused score the ranking uses
    bm25: float
    relevance: float  # normalised BM25 of this chunk (compare with the index's threshold)


# ---------------------------------------------------------------------- documents and chunks
def _pdf_text(path: Path) -> str:
    from pypdf import PdfReader

    try:
        reader = PdfReader(str(path))
        return "\n".join(page.extract_text() or "" for page in reader.pages)
    except Exception as exc:  # pypdf raises many kinds for damaged files
        raise ValueError(f"{path}: cannot read the PDF: {exc}") from None


def read_documents(inputs: list[str], text_field: str = "text") -> list[tuple[str, str]]:
    """(source, text) of every document in files, folders (recursively) and globs."""
    paths: list[Path] = []
    for item in inputs:
        matches = sorted(glob.glob(item, recursive=True)) if any(c in item for c in "*?[") else [item]
        if not matches:
            raise ValueError(f"{item}: no such file")
        for match in matches:
            path = Path(match)
            if path.is_dir():
                paths += sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in
                                TEXT_SUFFIXES + (".jsonl", ".pdf"))
            elif path.is_file():
                paths.append(path)
            else:
                raise ValueError(f"{path}: no such file or folder")
    documents = []
    for path in paths:
        suffix = path.suffix.lower()
        if suffix == ".pdf":
            documents.append((str(path), _pdf_text(path)))
        elif suffix == ".jsonl":
            with open(path, encoding="utf-8") as handle:
                for number, line in enumerate(handle, 1):
                    if not line.strip():
                        continue
                    try:
                        record = json.loads(line)
                    except ValueError as exc:
                        raise ValueError(f"{path}:{number}: not valid JSON ({exc})") from None
                    if not isinstance(record, dict) or not isinstance(record.get(text_field), str):
                        raise ValueError(f"{path}:{number}: expected an object with a string {text_field!r} field")
                    documents.append((f"{path}:{number}", record[text_field]))
        elif suffix in TEXT_SUFFIXES:
            try:
                documents.append((str(path), path.read_text(encoding="utf-8")))
            except UnicodeDecodeError:
                raise ValueError(f"{path}: not UTF-8 text") from None
        else:
            raise ValueError(f"{path}: unsupported file type {suffix!r} (txt, md, jsonl, pdf)")
    if not documents:
        raise ValueError("no documents found in " + ", ".join(inputs))
    return documents


def chunk_text(text: str, words: int = 120, overlap: int = 30) -> list[str]:
    """Windows of `words` words, each starting `words - overlap` words after the previous one."""
    if words < 1 or not 0 <= overlap < words:
        raise ValueError(f"chunk size {words} and overlap {overlap}: need 0 <= overlap < size")
    tokens = text.split()
    if not tokens:
        return []
    step = words - overlap
    return [" ".join(tokens[i: i + words]) for i in range(0, max(1, len(tokens) - overlap), step)]


def _terms(texts: list[str], stopwords: str = STOPWORDS) -> list[list[str]]:
    return bm25s.tokenize(texts, stopwords=stopwords, return_ids=False, show_progress=False)


# ---------------------------------------------------------------------- the index
class RagIndex:
    def __init__(self, chunks: list[Chunk], retriever: bm25s.BM25, df: dict[str, int], *,
                 embeddings: torch.Tensor | None = None, embedder_name: str | None = None,
                 threshold: float = 0.0, calibration: dict[str, Any] | None = None,
                 stopwords: str = STOPWORDS) -> None:
        self.chunks = chunks
        self.stopwords = stopwords  # of the index's terms; queries drop the same words
        self.retriever = retriever
        self.df = df
        self.embeddings = embeddings
        self.embedder_name = embedder_name
        self.threshold = threshold
        self.calibration = calibration or {}
        self.embedder: Embedder | None = None  # set by the caller to search densely

    # -- scores --------------------------------------------------------------------------------
    def idf(self, term: str) -> float:
        n = len(self.chunks)
        df = self.df.get(term, 0)
        return math.log(1 + (n - df + 0.5) / (df + 0.5))

    def bm25(self, query: str, k: int) -> tuple[list[int], list[float], float]:
        """Chunk ids and BM25 scores of the best `k`, and the query's IDF mass."""
        terms = _terms([query], self.stopwords)[0]
        mass = sum(self.idf(t) for t in terms)
        known = [t for t in terms if t in self.df]
        if not known:
            return [], [], mass
        ids, scores = self.retriever.retrieve([known], k=min(k, len(self.chunks)), show_progress=False)
        pairs = [(int(i), float(s)) for i, s in zip(ids[0], scores[0]) if s > 0]
        return [i for i, _ in pairs], [s for _, s in pairs], mass

    def search(self, query: str, k: int = 5, pool: int = 50) -> list[Hit]:
        """The best `k` chunks: BM25, fused by reciprocal rank (k=60) with dense similarity when
        the index has embeddings and `self.embedder` is set."""
        ids, scores, mass = self.bm25(query, pool)
        bm25 = dict(zip(ids, scores))
        fused = {i: 1 / (60 + rank + 1) for rank, i in enumerate(ids)}
        if self.embeddings is not None and self.embedder is not None:
            similarity = self.embeddings @ self.embedder.embed([query])[0]
            for rank, i in enumerate(torch.topk(similarity, min(pool, len(self.chunks))).indices.tolist()):
                fused[i] = fused.get(i, 0.0) + 1 / (60 + rank + 1)
        ranked = sorted(fused, key=lambda i: -fused[i])[:k]
        return [Hit(self.chunks[i], fused[i], bm25.get(i, 0.0), bm25.get(i, 0.0) / mass if mass else 0.0)
                for i in ranked]

    def relevance(self, query: str) -> float:
        ids, scores, mass = self.bm25(query, 1)
        return scores[0] / mass if scores and mass else 0.0

    def relevant(self, hits: list[Hit]) -> bool:
        return bool(hits) and max(h.relevance for h in hits) >= self.threshold

    # -- calibration ---------------------------------------------------------------------------
    def calibrate(self, samples: int = 200, seed: int = 0) -> None:
        """Set the threshold between pseudo-questions the chunks answer (a few words of one of their
        sentences plus a word from elsewhere, as a question's own words would be) and the same with
        their rarest words replaced by made-up ones (the threshold with the best balanced accuracy)."""
        rng = random.Random(seed)
        vocabulary = sorted(self.df)
        positives, negatives = [], []
        for _ in range(samples):
            chunk = rng.choice(self.chunks)
            sentences = [s for s in re.split(r"(?<=[.!?])\s+", chunk.text) if len(s.split()) >= 4] or [chunk.text]
            words = rng.choice(sentences).split()
            start = rng.randrange(max(1, len(words) - 8))
            query = " ".join(words[start: start + rng.randint(3, 8)] + [rng.choice(vocabulary)])  # one unmatched word
            positives.append(self.relevance(query))
            terms = _terms([query], self.stopwords)[0]
            # ties broken by the term itself: set order changes with the process's hash seed
            rare = sorted(set(terms), key=lambda t: (-self.idf(t), t))[: max(1, len(set(terms)) // 2)]
            swapped = " ".join(_made_up(rng) if re.sub(r"\W", "", w.lower()) in rare else w for w in query.split())
            negatives.append(self.relevance(swapped))
        cuts = sorted(set(positives + negatives))
        best, best_cut = -1.0, 0.0
        for low, high in zip(cuts, cuts[1:]):
            cut = (low + high) / 2
            accuracy = (sum(p >= cut for p in positives) / len(positives) + sum(n < cut for n in negatives) / len(negatives)) / 2
            if accuracy > best:
                best, best_cut = accuracy, cut
        self.threshold = best_cut
        self.calibration = {"samples": samples, "seed": seed, "balanced_accuracy": round(best, 4),
                            "threshold": round(best_cut, 4)}

    # -- files ---------------------------------------------------------------------------------
    def save(self, folder: str | Path) -> None:
        def write(tmp: Path) -> None:
            self.retriever.save(str(tmp / "bm25"))
            with open(tmp / "chunks.jsonl", "w", encoding="utf-8") as handle:
                for chunk in self.chunks:
                    handle.write(json.dumps(asdict(chunk), ensure_ascii=False) + "\n")
            meta = {"format": FORMAT_VERSION, "chunks": len(self.chunks), "threshold": self.threshold,
                    "calibration": self.calibration, "embedder": self.embedder_name, "df": self.df,
                    "stopwords": self.stopwords}
            (tmp / "index.json").write_text(json.dumps(meta, ensure_ascii=False), encoding="utf-8")
            if self.embeddings is not None:
                np.save(tmp / "embeddings.npy", self.embeddings.numpy().astype(np.float32))

        write_folder_atomically(Path(folder), write)

    @classmethod
    def load(cls, folder: str | Path) -> RagIndex:
        folder = Path(folder)
        meta_path = folder / "index.json"
        if not meta_path.is_file():
            raise ValueError(f"{folder}: not a RAG index (no index.json; build one with lmforge rag index)")
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if meta.get("format") != FORMAT_VERSION:
            raise ValueError(f"{meta_path}: unknown index format {meta.get('format')!r}")
        chunks = []
        with open(folder / "chunks.jsonl", encoding="utf-8") as handle:
            for line in handle:
                chunks.append(Chunk(**json.loads(line)))
        if len(chunks) != meta.get("chunks"):
            raise ValueError(f"{folder}: chunks.jsonl holds {len(chunks)} chunks, index.json says {meta.get('chunks')}")
        retriever = bm25s.BM25.load(str(folder / "bm25"))
        embeddings = None
        if (folder / "embeddings.npy").is_file():
            embeddings = torch.from_numpy(np.load(folder / "embeddings.npy", allow_pickle=False))
            if embeddings.shape[0] != len(chunks):
                raise ValueError(f"{folder}: embeddings.npy has {embeddings.shape[0]} rows for {len(chunks)} chunks")
        return cls(chunks, retriever, meta["df"], embeddings=embeddings, embedder_name=meta.get("embedder"),
                   threshold=float(meta["threshold"]), calibration=meta.get("calibration"),
                   stopwords=meta.get("stopwords", "en"))  # "en": indexes written before the field


def _made_up(rng: random.Random) -> str:
    return "".join(rng.choice("bcdfgklmnprstvz") + rng.choice("aeiou") for _ in range(3))


def build_index(inputs: list[str], *, words: int = 120, overlap: int = 30, embedder: Embedder | None = None,
                embedder_name: str | None = None, text_field: str = "text") -> RagIndex:
    """Read, chunk, index (BM25, and dense vectors with `embedder`) and calibrate."""
    chunks = []
    for source, text in read_documents(inputs, text_field):
        for piece in chunk_text(text, words, overlap):
            chunks.append(Chunk(len(chunks), source, piece))
    if not chunks:
        raise ValueError("the documents hold no text")
    terms = _terms([c.text for c in chunks])
    df = Counter(t for doc in terms for t in set(doc))
    retriever = bm25s.BM25()
    retriever.index(bm25s.tokenize([c.text for c in chunks], stopwords=STOPWORDS, show_progress=False),
                    show_progress=False)
    embeddings = embedder.embed([c.text for c in chunks]) if embedder is not None else None
    index = RagIndex(chunks, retriever, dict(df), embeddings=embeddings, embedder_name=embedder_name)
    index.calibrate()
    return index
