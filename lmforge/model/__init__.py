"""Layer 3: transformer modules. Works on token ids, never on text."""

from lmforge.model.transformer import KVCache, Transformer, init_weights

__all__ = ["KVCache", "Transformer", "init_weights"]
