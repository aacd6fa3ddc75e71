"""Retrieval-augmented generation: document indexes (BM25, dense, fused), cited answers, abstention."""
