"""`lmforge rag index DOCS --out INDEX` and `lmforge rag ask INDEX "question"`."""

from __future__ import annotations

import argparse
import json

from lmforge.cli.common import add_model_flags, load_from_args


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("rag", help="retrieval-augmented answers: index documents, ask questions with citations")
    verbs = parser.add_subparsers(dest="rag_verb", required=True, metavar="{index,ask}")

    index = verbs.add_parser("index", help="chunk and index documents (txt, md, jsonl, pdf)")
    index.add_argument("docs", nargs="+", help="files, folders (read recursively) or globs")
    index.add_argument("--out", required=True, help="index folder to write (replaced atomically)")
    index.add_argument("--chunk-words", type=int, default=120, help="words per chunk (default 120)")
    index.add_argument("--overlap", type=int, default=30, help="words shared by neighbouring chunks (default 30)")
    index.add_argument("--text-field", default="text", help="field of jsonl records holding the text (default text)")
    index.add_argument("--embedder", default=None,
                       help="a local embedding model (Hugging Face folder, GGUF or named model) for dense retrieval "
                            "fused with BM25 (default: none, BM25 only)")
    index.add_argument("--threads", type=int, default=None, help="CPU threads for the embedder (default: PyTorch's)")
    index.set_defaults(func=run_index)

    ask = verbs.add_parser("ask", help="answer a question from an index, citing the chunks used")
    ask.add_argument("index", help="index folder written by `lmforge rag index`")
    ask.add_argument("question", help="the question")
    ask.add_argument("-k", type=int, default=5, help="chunks retrieved (default 5)")
    ask.add_argument("--max-new-tokens", type=int, default=64, help="most tokens of the answer (default 64)")
    ask.add_argument("--json", action="store_true", help="print the answer, citations and retrieval as JSON (default: off)")
    add_model_flags(ask)
    ask.set_defaults(func=run_ask)


def _embedder(name: str, threads: int | None):
    import torch

    from lmforge.io.registry import load_model
    from lmforge.rag.embed import Embedder

    if threads:
        torch.set_num_threads(threads)
    model, tokenizer = load_model(name)
    return Embedder(model, tokenizer)


def run_index(args: argparse.Namespace) -> int:
    from lmforge.rag.index import build_index

    embedder = _embedder(args.embedder, args.threads) if args.embedder else None
    index = build_index(args.docs, words=args.chunk_words, overlap=args.overlap, embedder=embedder,
                        embedder_name=args.embedder, text_field=args.text_field)
    index.save(args.out)
    print(f"indexed {len(index.chunks)} chunks into {args.out} (relevance threshold {index.threshold:.3f}, "
          f"calibration balanced accuracy {index.calibration.get('balanced_accuracy')})")
    return 0


def run_ask(args: argparse.Namespace) -> int:
    from lmforge.infer.engine import Engine
    from lmforge.rag.answer import ask
    from lmforge.rag.index import RagIndex

    if args.k < 1:
        raise ValueError(f"-k must be at least 1, got {args.k}")
    index = RagIndex.load(args.index)
    if index.embedder_name:
        index.embedder = _embedder(index.embedder_name, args.threads)
    model, tokenizer = load_from_args(args)
    answer = ask(Engine(model, tokenizer, max_batch_size=1), index, args.question, k=args.k,
                 max_new_tokens=args.max_new_tokens)
    if args.json:
        print(json.dumps(answer.to_dict(), ensure_ascii=False, indent=2))
        return 0
    print(answer.text)
    for citation in answer.citations:
        print(f"[{citation.number}] {citation.chunk.source}: {citation.chunk.text[:200]}")
    return 0
