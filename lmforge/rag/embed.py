"""Text embeddings: mean-pooled final hidden states of a transformer, L2-normalised.

Any model lmforge loads (a local Hugging Face folder of a Llama, Mistral, Qwen2 or GPT-2 family
embedding model, a GGUF file, a named model) embeds text the way sentence-transformers' mean
pooling does: the final hidden states (after the last norm) averaged over the text's tokens,
then divided by their length.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from lmforge.model.transformer import Transformer
from lmforge.tokenizer.tokenizer import Tokenizer

__all__ = ["Embedder"]


class Embedder:
    """texts -> [N, D] float32 unit vectors. `max_tokens` truncates long texts."""

    def __init__(self, model: Transformer, tokenizer: Tokenizer, *, max_tokens: int = 512, batch_size: int = 16,
                 normalize: bool = True) -> None:
        if max_tokens < 1 or batch_size < 1:
            raise ValueError("max_tokens and batch_size must be at least 1")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.max_tokens = min(max_tokens, model.config.max_seq_len)
        self.batch_size = batch_size
        self.normalize = normalize

    @property
    def dim(self) -> int:
        return self.model.config.dim

    def token_ids(self, text: str) -> list[int]:
        ids = self.tokenizer.encode(text, add_bos=self.tokenizer.add_bos_token)[: self.max_tokens]
        if not ids:
            ids = [self.tokenizer.bos_id if self.tokenizer.bos_id is not None else 0]
        return ids

    @torch.inference_mode()
    def embed_ids(self, batch: Sequence[Sequence[int]]) -> torch.Tensor:
        device = self.model.lm_head.weight.device
        width = max(len(ids) for ids in batch)
        ids = torch.zeros((len(batch), width), dtype=torch.long, device=device)
        real = torch.zeros((len(batch), width), dtype=torch.bool, device=device)
        for row, item in enumerate(batch):
            ids[row, : len(item)] = torch.tensor(list(item), device=device)
            real[row, : len(item)] = True
        hidden = self.model(ids, padding_mask=real, head=False).float()  # [B, T, D]
        weights = real.unsqueeze(-1).float()
        pooled = (hidden * weights).sum(1) / weights.sum(1)
        return torch.nn.functional.normalize(pooled, dim=-1) if self.normalize else pooled

    def embed(self, texts: Sequence[str]) -> torch.Tensor:
        """[N, D] embeddings, batched by similar lengths."""
        if isinstance(texts, str):
            raise ValueError("embed takes a list of texts")
        encoded = [self.token_ids(t) for t in texts]
        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
        out = torch.zeros((len(encoded), self.dim), dtype=torch.float32)
        for first in range(0, len(order), self.batch_size):
            rows = order[first: first + self.batch_size]
            out[rows] = self.embed_ids([encoded[i] for i in rows]).cpu()
        return out

    def count_tokens(self, texts: Sequence[str]) -> int:
        return sum(len(self.token_ids(t)) for t in texts)
