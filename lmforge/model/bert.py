"""Encoder-only transformer in the BERT layout: a masked-language-model head and a classifier head.

Parameter names are Hugging Face's (`BertForMaskedLM`, `BertForSequenceClassification`):

    bert.embeddings.{word_embeddings, position_embeddings, token_type_embeddings, LayerNorm}
    bert.encoder.layer.N.attention.self.{query, key, value}, attention.output.{dense, LayerNorm}
    bert.encoder.layer.N.intermediate.dense, output.{dense, LayerNorm}
    cls.predictions.transform.{dense, LayerNorm}, cls.predictions.bias   (MLM head; its decoder
                                                                          weight is the word embedding)
    bert.pooler.dense, classifier                                        (sequence classifier)

BERT is the post-norm transformer: LayerNorm after each residual sum, learned absolute positions,
bidirectional attention (every token sees every non-padding token), exact GELU. The activation
table, the attention core and the padding bias are the ones every family shares
(lmforge/model/layers.py).

Shapes: B batch, T tokens, D hidden_size, H heads, V vocabulary, C classes.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lmforge.model.layers import ACTIVATIONS, attend_heads, padding_bias, split_heads


@dataclass(frozen=True)
class BertConfig:
    """The fields of Hugging Face's BertConfig that shape the model (same names; bert-base defaults)."""

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0
    mask_token_id: int | None = None  # lmforge models: the extra id after the tokenizer's vocabulary

    def __post_init__(self) -> None:
        problems = []
        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                     "max_position_embeddings", "type_vocab_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                problems.append(f"{name} must be a positive integer, got {value!r}")
        if not problems and self.hidden_size % self.num_attention_heads:
            problems.append(f"hidden_size ({self.hidden_size}) must be divisible by num_attention_heads ({self.num_attention_heads})")
        if self.hidden_act not in ACTIVATIONS:
            problems.append(f"hidden_act must be one of {', '.join(ACTIVATIONS)}, got {self.hidden_act!r}")
        if problems:
            raise ValueError("invalid BertConfig: " + "; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "BERT config") -> "BertConfig":
        """From our own dict or a Hugging Face config.json (other keys there are ignored)."""
        known = {f.name for f in dataclasses.fields(cls)}
        try:
            return cls(**{k: v for k, v in data.items() if k in known})
        except (TypeError, ValueError) as error:
            raise ValueError(f"{where}: {error}") from None

    def replace(self, **changes: Any) -> "BertConfig":
        return dataclasses.replace(self, **changes)


class BertEmbeddings(nn.Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, ids: torch.Tensor, token_type_ids: torch.Tensor | None) -> torch.Tensor:
        positions = torch.arange(ids.shape[1], device=ids.device)
        types = token_type_ids if token_type_ids is not None else torch.zeros_like(ids)
        x = self.word_embeddings(ids) + self.position_embeddings(positions)[None] + self.token_type_embeddings(types)
        return self.LayerNorm(x)


class BertSelfAttention(nn.Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.n_heads = config.num_attention_heads
        self.query = nn.Linear(config.hidden_size, config.hidden_size)
        self.key = nn.Linear(config.hidden_size, config.hidden_size)
        self.value = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """x [B, T, D] -> [B, T, D]; bias [B, 1, 1, T] hides padded keys (None: every key)."""
        q, k, v = (split_heads(proj(x), self.n_heads) for proj in (self.query, self.key, self.value))  # [B, H, T, Dh]
        return attend_heads(q, k, v, bias)


class BertResidual(nn.Module):
    """dense, then LayerNorm of (that + the residual): BERT's post-norm sub-layer output."""

    def __init__(self, width_in: int, config: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(width_in, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dense(x) + residual)


class BertAttention(nn.Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.self = BertSelfAttention(config)
        self.output = BertResidual(config.hidden_size, config)


class BertIntermediate(nn.Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)
        self.act = ACTIVATIONS[config.hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.dense(x))


class BertLayer(nn.Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.attention = BertAttention(config)
        self.intermediate = BertIntermediate(config)
        self.output = BertResidual(config.intermediate_size, config)

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        x = self.attention.output(self.attention.self(x, bias), x)
        return self.output(self.intermediate(x), x)


class BertEncoder(nn.Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.layer = nn.ModuleList(BertLayer(config) for _ in range(config.num_hidden_layers))


class BertPooler(nn.Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dense(hidden[:, 0]))  # the first ([CLS]) token


class BertModel(nn.Module):
    def __init__(self, config: BertConfig, pooler: bool) -> None:
        super().__init__()
        self.config = config
        self.embeddings = BertEmbeddings(config)
        self.encoder = BertEncoder(config)
        self.pooler = BertPooler(config) if pooler else None

    def forward(self, ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Hidden states [B, T, D]; attention_mask [B, T] (0 = padding) hides padded keys."""
        if ids.shape[1] > self.config.max_position_embeddings:
            raise ValueError(f"{ids.shape[1]} tokens exceed the model's {self.config.max_position_embeddings} positions")
        x = self.embeddings(ids, token_type_ids)
        bias = padding_bias(attention_mask, x)  # [B, 1, 1, T]
        for layer in self.encoder.layer:
            x = layer(x, bias)
        return x


class BertPredictionHead(nn.Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.transform = nn.Module()
        self.transform.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.transform.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.act = ACTIVATIONS[config.hidden_act]
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))

    def forward(self, hidden: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        h = self.transform.LayerNorm(self.act(self.transform.dense(hidden)))
        return F.linear(h, embedding, self.bias)  # decoder tied to the word embeddings


class BertForMaskedLM(nn.Module):
    """ids -> logits [B, T, V] for every position (the MLM objective reads the masked ones)."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.config = config
        self.bert = BertModel(config, pooler=False)
        self.cls = nn.Module()
        self.cls.predictions = BertPredictionHead(config)

    def forward(self, ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        hidden = self.bert(ids, attention_mask, token_type_ids)
        return self.cls.predictions(hidden, self.bert.embeddings.word_embeddings.weight)


class BertForSequenceClassification(nn.Module):
    """ids -> class logits [B, C] from the pooled first token; `labels` name the classes."""

    def __init__(self, config: BertConfig, labels: list[str]) -> None:
        super().__init__()
        if len(labels) < 2:
            raise ValueError("a classifier needs at least two labels")
        self.config = config
        self.labels = list(labels)
        self.bert = BertModel(config, pooler=True)
        self.classifier = nn.Linear(config.hidden_size, len(labels))

    @property
    def num_labels(self) -> int:
        return len(self.labels)

    def forward(self, ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        return self.classifier(self.bert.pooler(self.bert(ids, attention_mask, token_type_ids)))

    @classmethod
    def from_encoder(cls, mlm: BertForMaskedLM, labels: list[str], seed: int | None = None) -> "BertForSequenceClassification":
        """A classifier whose encoder starts from a (pretrained) MLM model's; new pooler and head."""
        model = cls(mlm.config, labels)
        init_bert_weights(model, seed)
        model.bert.load_state_dict(mlm.bert.state_dict(), strict=False)  # all but the pooler
        return model.to(next(mlm.parameters()).device)


def init_bert_weights(model: nn.Module, seed: int | None = None) -> None:
    """BERT's initialisation: weights N(0, 0.02), biases 0, LayerNorms 1."""
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    for name, param in model.named_parameters():
        with torch.no_grad():
            if param.dim() >= 2:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.02)
            else:
                param.fill_(1.0 if "LayerNorm.weight" in name else 0.0)
