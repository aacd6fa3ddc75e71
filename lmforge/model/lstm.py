"""A recurrent language model: token embedding -> stacked LSTM -> tied output head.

The baseline transformers replaced: one step per token, a fixed-size state (h, c) carried along
the sequence instead of attention over every earlier token. The embedding width equals the LSTM
width so the output head can share the embedding matrix (Press & Wolf 2017). Names follow the
decoder's layout (`model.embed_tokens`, `lm_head`) so the optimizer treats the embedding alike.

Shapes: B batch, T tokens, D dim, L layers, V vocabulary.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

State = tuple[torch.Tensor, torch.Tensor]  # (h, c), each [L, B, D]


@dataclass(frozen=True)
class LSTMConfig:
    vocab_size: int = 4096
    dim: int = 256
    n_layers: int = 2
    dropout: float = 0.0  # between LSTM layers, training only

    def __post_init__(self) -> None:
        for name in ("vocab_size", "dim", "n_layers"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"invalid LSTMConfig: {name} must be a positive integer, got {value!r}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"invalid LSTMConfig: dropout must be in [0, 1), got {self.dropout!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "LSTM config") -> "LSTMConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        try:
            return cls(**{k: v for k, v in data.items() if k in known})
        except (TypeError, ValueError) as error:
            raise ValueError(f"{where}: {error}") from None

    def num_parameters(self) -> int:
        """Embedding (shared with the head) plus, per layer, 4 gates of input and recurrent weights and two biases."""
        per_layer = 4 * (2 * self.dim * self.dim + 2 * self.dim)
        return self.vocab_size * self.dim + self.n_layers * per_layer

    def training_flops_per_token(self) -> int:
        """Forward + backward (3 forwards) of one token: 2 FLOPs per weight it meets, the 4 gates'
        input and recurrent matrices of every layer and the output head (the lookup is free)."""
        return 3 * 2 * (self.n_layers * 8 * self.dim * self.dim + self.vocab_size * self.dim)


class LSTMBackbone(nn.Module):
    def __init__(self, config: LSTMConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.dim)
        self.lstm = nn.LSTM(config.dim, config.dim, num_layers=config.n_layers, batch_first=True,
                            dropout=config.dropout if config.n_layers > 1 else 0.0)


class LSTMLanguageModel(nn.Module):
    """ids [B, T] (and the state after the previous tokens) -> next-token logits [B, T, V] and the new state."""

    def __init__(self, config: LSTMConfig) -> None:
        super().__init__()
        self.config = config
        self.model = LSTMBackbone(config)
        self.lm_head = nn.Linear(config.dim, config.vocab_size, bias=False)
        self.lm_head.weight = self.model.embed_tokens.weight

    def forward(self, ids: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        hidden, state = self.model.lstm(self.model.embed_tokens(ids), state)
        return self.lm_head(hidden), state

    @staticmethod
    def detach_state(state: State) -> State:
        """The state without its graph: truncated backpropagation through time stops here."""
        return state[0].detach(), state[1].detach()

    @torch.no_grad()
    def generate(self, ids: torch.Tensor, max_new_tokens: int, *, temperature: float = 0.0,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """[B, n] new tokens after the prompt ids [B, T]: greedy at temperature 0, else sampled.
        The prompt is read once; each new token costs one step whatever the length so far."""
        logits, state = self(ids)
        out = []
        for _ in range(max_new_tokens):
            last = logits[:, -1].float()
            if temperature > 0:
                token = torch.multinomial(torch.softmax(last / temperature, -1), 1, generator=generator)
            else:
                token = last.argmax(-1, keepdim=True)
            out.append(token)
            logits, state = self(token, state)
        return torch.cat(out, dim=1)


def init_lstm_weights(model: LSTMLanguageModel, seed: int | None = None) -> None:
    """Embedding N(0, 0.02)... scaled to the decoder's init; LSTM weights U(-1/sqrt(D), 1/sqrt(D))
    (PyTorch's default) with the forget-gate bias at 1 so early training keeps its memory."""
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    bound = model.config.dim ** -0.5
    D = model.config.dim
    with torch.no_grad():
        model.model.embed_tokens.weight.copy_(torch.randn(model.model.embed_tokens.weight.shape, generator=generator) * 0.02)
        for name, param in model.model.lstm.named_parameters():
            param.copy_(torch.rand(param.shape, generator=generator) * 2 * bound - bound)
            if name.startswith("bias_ih"):
                param[D:2 * D].fill_(1.0)  # gates are ordered input, forget, cell, output
            elif name.startswith("bias_hh"):
                param[D:2 * D].zero_()
