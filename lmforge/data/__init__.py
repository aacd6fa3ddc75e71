"""Layer 1: text in, token shards out.

readers   documents from .txt/.jsonl/.parquet files, folders, globs and `builtin:stdlib`
builtin   the offline default corpus (the running Python's standard library sources)
clean     newline normalisation and exact-duplicate removal
shards    streaming uint16/uint32 shard writer, memory-mapped `TokenData` reader
prepare   the streaming pipeline behind `lmforge prepare` (dedup, boundary tokens, train/val split)
loader    `TrainLoader` (resumable: its state is three integers) and full-coverage `eval_batches`
"""
