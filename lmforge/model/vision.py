"""Vision + language, LLaVA-style: a small ViT, a projector into the language model's embedding
space, and a wrapper that splices projected image features in at image placeholder tokens.

    image [3, S, S] --patch embedding (conv, stride P)--> [G*G, d]   G = S / P
        --ViT blocks (lmforge's Llama blocks, bidirectional attention, 2D rotary positions)--> [G*G, d]
        --average pool (pool x pool patches)--> [(G/pool)^2, d]
        --projector (Linear, GELU, Linear)--> [N, D]   N = tokens per image, D = the LM's width

A conversation carries N placeholder tokens per image (the chat format puts them where the image
was, `lmforge.tokenizer.image_chat`); `VisionLanguageModel` replaces the placeholders' embeddings
with the projected features and runs the language model on the result. The splice works through a
forward hook on the LM's embedding layer, so every `Transformer.forward` option (KV cache, padding,
`head=False`) works unchanged and no family-specific code is repeated here.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lmforge.core.config import ModelConfig
from lmforge.model.layers import RMSNorm
from lmforge.model.transformer import AttentionInputs, LlamaBlock, Transformer, run_blocks

__all__ = ["Projector", "VisionConfig", "VisionEncoder", "VisionLanguageModel", "rotary_2d"]


@dataclass(frozen=True)
class VisionConfig:
    """Shape of the image encoder and projector; `lm_dim` is the language model's width and
    `image_token` the placeholder token's text (one token of the LM's tokenizer)."""

    image_size: int = 48
    patch_size: int = 6
    dim: int = 128
    n_layers: int = 4
    n_heads: int = 4
    ffn_dim: int = 256
    pool: int = 2
    lm_dim: int = 576
    image_token: str = ""
    rope_theta: float = 100.0

    def __post_init__(self) -> None:
        problems = []
        for name in ("image_size", "patch_size", "dim", "n_layers", "n_heads", "ffn_dim", "pool", "lm_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                problems.append(f"{name} must be a positive integer, got {value!r}")
        if not problems:
            if self.image_size % self.patch_size:
                problems.append(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
            elif self.grid % self.pool:
                problems.append(f"the patch grid ({self.grid} x {self.grid}) does not divide into pool {self.pool}")
            if self.dim % self.n_heads or (self.dim // self.n_heads) % 4:
                problems.append(f"dim {self.dim} / n_heads {self.n_heads} must be a multiple of 4 (2D rotary)")
        if problems:
            raise ValueError("invalid vision config: " + "; ".join(problems))

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    @property
    def tokens_per_image(self) -> int:
        return (self.grid // self.pool) ** 2

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "VisionConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown vision config fields: {', '.join(unknown)}")
        return cls(**data)

    def block_config(self) -> ModelConfig:
        """The Llama-block shape the encoder's layers use (vocabulary and context unused)."""
        return ModelConfig(family="llama", vocab_size=1, dim=self.dim, n_layers=self.n_layers, n_heads=self.n_heads,
                           ffn_dim=self.ffn_dim, max_seq_len=self.grid * self.grid, norm_eps=1e-6)


def rotary_2d(grid: int, head_size: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin [G*G, Dh] for rotary positions over a G x G grid: a quarter of the frequencies
    turn with the row, a quarter with the column; repeated in the half-split layout that
    `apply_rotary` expects (dim i pairs with dim i + Dh/2)."""
    quarter = head_size // 4
    inv_freq = 1.0 / (theta ** (torch.arange(quarter, dtype=torch.float64) / quarter))  # [Dh/4]
    rows, cols = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
    angles = torch.cat((rows.reshape(-1, 1) * inv_freq, cols.reshape(-1, 1) * inv_freq), dim=-1)  # [G*G, Dh/2]
    angles = torch.cat((angles, angles), dim=-1)  # [G*G, Dh]
    return angles.cos().float(), angles.sin().float()


class VisionEncoder(nn.Module):
    """images [N, 3, S, S] -> patch features [N, G*G, d]."""

    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        self.config = config
        blocks = config.block_config()
        self.patch_embed = nn.Conv2d(3, config.dim, kernel_size=config.patch_size, stride=config.patch_size)
        self.layers = nn.ModuleList(LlamaBlock(blocks, i) for i in range(config.n_layers))
        self.norm = RMSNorm(config.dim, 1e-6)
        cos, sin = rotary_2d(config.grid, blocks.head_size, config.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        size = self.config.image_size
        if images.dim() != 4 or tuple(images.shape[1:]) != (3, size, size):
            raise ValueError(f"images must be [N, 3, {size}, {size}], got {tuple(images.shape)}")
        x = self.patch_embed(images.to(self.patch_embed.weight.dtype)).flatten(2).transpose(1, 2)  # [N, G*G, d]
        N, T, _ = x.shape
        positions = torch.arange(T, device=x.device).expand(N, T)
        everything = torch.ones(1, 1, T, T, dtype=torch.bool, device=x.device)  # bidirectional
        inputs = AttentionInputs(starts=[0] * N, positions=positions, uniform=True, end=T, mask=everything, cache=None)
        inputs.cos = self.rope_cos[None].to(x.dtype).expand(N, T, -1)
        inputs.sin = self.rope_sin[None].to(x.dtype).expand(N, T, -1)
        return self.norm(run_blocks(self.layers, x, inputs))


class Projector(nn.Module):
    """Patch features [N, G*G, d] -> image tokens [N, (G/pool)^2, D]: average-pool neighbouring
    patches, then a two-layer GELU MLP (LLaVA-1.5's projector)."""

    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        self.grid, self.pool = config.grid, config.pool
        self.linear_1 = nn.Linear(config.dim, config.lm_dim)
        self.linear_2 = nn.Linear(config.lm_dim, config.lm_dim)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        N, T, d = features.shape
        grid = features.transpose(1, 2).reshape(N, d, self.grid, self.grid)
        pooled = F.avg_pool2d(grid, self.pool).flatten(2).transpose(1, 2)  # [N, tokens, d]
        return self.linear_2(F.gelu(self.linear_1(pooled)))


class VisionLanguageModel(nn.Module):
    """A language model that sees images: placeholder embeddings replaced by projected features."""

    def __init__(self, lm: Transformer, encoder: VisionEncoder, projector: Projector, image_token_id: int) -> None:
        super().__init__()
        config = encoder.config
        if config.lm_dim != lm.config.dim:
            raise ValueError(f"the projector outputs width {config.lm_dim}; the language model's is {lm.config.dim}")
        if not 0 <= image_token_id < lm.config.vocab_size:
            raise ValueError(f"image token id {image_token_id} is outside the vocabulary of {lm.config.vocab_size}")
        self.lm, self.encoder, self.projector = lm, encoder, projector
        self.config = config
        self.image_token_id = image_token_id

    @property
    def tokens_per_image(self) -> int:
        return self.config.tokens_per_image

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """images [N, 3, S, S] -> [N, tokens_per_image, D]."""
        return self.projector(self.encoder(images))

    @contextlib.contextmanager
    def spliced(self, image_mask: torch.Tensor | None, features: torch.Tensor | None) -> Iterator[None]:
        """Within this block, the LM's embedding layer returns `features` (flattened in order) at the
        True positions of `image_mask` [B, T]; the count must match exactly. Only calls from this
        thread are spliced, so other threads may run the same LM meanwhile."""
        if image_mask is None or features is None:
            if (image_mask is not None and bool(image_mask.any())) or features is not None:
                raise ValueError("image placeholders and image features come together")
            yield
            return
        flat = features.reshape(-1, features.shape[-1])
        placed = int(image_mask.sum())
        if placed != flat.shape[0]:
            raise ValueError(f"the text holds {placed} image placeholder tokens; the images give {flat.shape[0]} "
                             f"features ({self.tokens_per_image} per image)")

        owner = threading.get_ident()

        def splice(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
            if threading.get_ident() != owner:  # another thread (a server's engine) using the same LM
                return None
            if output.shape[:2] != image_mask.shape:
                raise ValueError(f"image mask {tuple(image_mask.shape)} does not match the ids {tuple(output.shape[:2])}")
            return output.masked_scatter(image_mask[..., None].to(output.device), flat.to(output.dtype))

        handle = self.lm.embedding.register_forward_hook(splice)
        try:
            yield
        finally:
            handle.remove()

    def forward(self, ids: torch.Tensor, image_mask: torch.Tensor | None = None, images: torch.Tensor | None = None,
                **lm_kwargs) -> torch.Tensor:
        """The LM's output for `ids` [B, T] with images [N, 3, S, S] at the True positions of
        `image_mask` [B, T] (tokens_per_image per image, images in reading order)."""
        features = self.image_features(images) if images is not None and images.shape[0] else None
        with self.spliced(image_mask, features):
            return self.lm(ids, **lm_kwargs)

    @torch.no_grad()
    def generate(self, ids: Sequence[int], image_mask: Sequence[bool], images: torch.Tensor | None, *,
                 max_new_tokens: int, stop_ids: Sequence[int] = (), temperature: float = 0.0, top_p: float = 1.0,
                 generator: torch.Generator | None = None) -> list[int]:
        """New token ids after one prompt (greedy when temperature is 0; else nucleus sampling),
        stopping at any of `stop_ids` (not returned) or after max_new_tokens."""
        if max_new_tokens <= 0:
            return []
        device = self.lm.lm_head.weight.device
        prompt = torch.tensor([list(ids)], dtype=torch.long, device=device)
        mask = torch.tensor([list(image_mask)], dtype=torch.bool, device=device)
        total = prompt.shape[1] + max_new_tokens
        if total > self.lm.config.max_seq_len:
            raise ValueError(f"prompt of {prompt.shape[1]} tokens plus {max_new_tokens} new ones exceeds the "
                             f"context of {self.lm.config.max_seq_len}")
        cache = self.lm.new_cache(1, total)
        logits = self(prompt, mask if mask.any() else None, images, cache=cache, last_only=True)
        out: list[int] = []
        stops = set(stop_ids)
        position = prompt.shape[1]
        while True:
            token = _pick(logits[0, -1].float(), temperature, top_p, generator)
            if token in stops:
                break
            out.append(token)
            if len(out) >= max_new_tokens:
                break
            step = torch.tensor([[token]], dtype=torch.long, device=device)
            logits = self.lm(step, cache=cache, starts=[position])
            position += 1
        return out


def _pick(logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator | None) -> int:
    if temperature <= 0:
        return int(logits.argmax())
    probs = torch.softmax(logits / temperature, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = probs.sort(descending=True)
        keep = sorted_probs.cumsum(0) - sorted_probs < top_p
        probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_probs[keep])
    return int(torch.multinomial(probs, 1, generator=generator))
