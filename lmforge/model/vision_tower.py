"""Hugging Face CLIP and SigLIP vision towers, and the adapter that puts one where the small ViT
(`lmforge.model.vision.VisionEncoder`) stands in a vision-language model.

Both towers are pre-norm ViTs with LayerNorm, biased q/k/v/out projections and a two-layer MLP,
under transformers' parameter names (so a folder's tensors load without renaming):

    CLIP     patches (conv, no bias) + class token, learned positions -> pre_layrnorm -> layers
             (quick_gelu MLP); last_hidden_state = the last layer's output (class token first);
             pooled = post_layernorm(class token)
    SigLIP   patches (conv with bias), learned positions, no class token -> layers (tanh GELU);
             last_hidden_state = post_layernorm(last layer); pooled = attention pooling with a
             learned probe (`head`, when vision_use_head)

No block of lmforge's decoders has this arithmetic (Llama blocks: RMSNorm, SwiGLU, rotary; the
fused families: one q/k/v projection and a GELU fixed per family), so the layer is written here
once for both towers, over `lmforge.model.layers`' attention core and activation table. `TowerEncoder` maps lmforge's image tensors ([-1, 1], `image_to_tensor`) to
the tower's pixel normalisation and returns patch features (no class token) for the `Projector`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import nn

from lmforge.model.layers import ACTIVATIONS as LAYER_ACTIVATIONS, attend_heads, split_heads
from lmforge.model.vision import VisionConfig

__all__ = ["TOWER_KINDS", "TowerConfig", "TowerEncoder", "TowerOutput", "VisionTower"]

TOWER_KINDS = ("clip", "siglip")
ACTIVATIONS = {**LAYER_ACTIVATIONS,
               "quick_gelu": lambda x: x * torch.sigmoid(1.702 * x),  # CLIP
               "gelu_pytorch_tanh": LAYER_ACTIVATIONS["gelu_new"]}  # SigLIP: the tanh approximation


@dataclass(frozen=True)
class TowerConfig:
    """A vision tower's shape, named as in transformers' CLIPVisionConfig / SiglipVisionConfig."""

    kind: str  # "clip" or "siglip"
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    image_size: int
    patch_size: int
    hidden_act: str
    layer_norm_eps: float
    num_channels: int = 3
    vision_use_head: bool = False  # SigLIP's attention-pooling head

    def __post_init__(self) -> None:
        problems = []
        if self.kind not in TOWER_KINDS:
            problems.append(f"kind must be one of {', '.join(TOWER_KINDS)}, got {self.kind!r}")
        for name in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "image_size",
                     "patch_size", "num_channels"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                problems.append(f"{name} must be a positive integer, got {value!r}")
        if self.hidden_act not in ACTIVATIONS:
            problems.append(f"hidden_act must be one of {', '.join(ACTIVATIONS)}, got {self.hidden_act!r}")
        if not isinstance(self.layer_norm_eps, (int, float)) or isinstance(self.layer_norm_eps, bool) \
                or not 0 < self.layer_norm_eps < 1:
            problems.append(f"layer_norm_eps must be a small positive number, got {self.layer_norm_eps!r}")
        if not isinstance(self.vision_use_head, bool):
            problems.append(f"vision_use_head must be true or false, got {self.vision_use_head!r}")
        elif self.vision_use_head and self.kind == "clip":
            problems.append("vision_use_head is a SigLIP setting; CLIP pools its class token")
        if not problems:
            if self.image_size % self.patch_size:
                problems.append(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
            if self.hidden_size % self.num_attention_heads:
                problems.append(f"hidden_size {self.hidden_size} is not a multiple of num_attention_heads "
                                f"{self.num_attention_heads}")
        if problems:
            raise ValueError("invalid vision tower config: " + "; ".join(problems))

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    @property
    def class_token(self) -> bool:
        return self.kind == "clip"


class TowerOutput(NamedTuple):
    last_hidden_state: torch.Tensor  # [N, T, d]; CLIP's T counts the class token first
    pooled: torch.Tensor | None  # [N, d]; None for a SigLIP tower without its head
    hidden_states: tuple[torch.Tensor, ...]  # the encoder's input, then each layer's output (transformers' order)


class TowerAttention(nn.Module):
    def __init__(self, config: TowerConfig) -> None:
        super().__init__()
        d = config.hidden_size
        self.n_heads = config.num_attention_heads
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (nn.Linear(d, d) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = (split_heads(proj(x), self.n_heads) for proj in (self.q_proj, self.k_proj, self.v_proj))
        return self.out_proj(attend_heads(q, k, v, None))  # bidirectional, scale Dh^-0.5


class TowerMLP(nn.Module):
    def __init__(self, config: TowerConfig) -> None:
        super().__init__()
        self.act = ACTIVATIONS[config.hidden_act]
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class TowerLayer(nn.Module):
    """x + attn(layer_norm1(x)), then + mlp(layer_norm2(.))."""

    def __init__(self, config: TowerConfig) -> None:
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.self_attn = TowerAttention(config)
        self.layer_norm2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = TowerMLP(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class TowerEmbeddings(nn.Module):
    def __init__(self, config: TowerConfig) -> None:
        super().__init__()
        d, P = config.hidden_size, config.patch_size
        self.patch_embedding = nn.Conv2d(config.num_channels, d, kernel_size=P, stride=P, bias=not config.class_token)
        if config.class_token:
            self.class_embedding = nn.Parameter(torch.zeros(d))
        self.position_embedding = nn.Embedding(config.grid ** 2 + int(config.class_token), d)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.patch_embedding(pixels.to(self.patch_embedding.weight.dtype)).flatten(2).transpose(1, 2)  # [N, G*G, d]
        if hasattr(self, "class_embedding"):
            x = torch.cat((self.class_embedding.expand(x.shape[0], 1, -1), x), dim=1)
        return x + self.position_embedding.weight[None]


class TowerEncoderLayers(nn.Module):
    def __init__(self, config: TowerConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(TowerLayer(config) for _ in range(config.num_hidden_layers))


class AttentionPoolingHead(nn.Module):
    """SigLIP's pooled output: a learned probe attends over the patches, then a residual MLP."""

    def __init__(self, config: TowerConfig) -> None:
        super().__init__()
        self.probe = nn.Parameter(torch.zeros(1, 1, config.hidden_size))
        self.attention = nn.MultiheadAttention(config.hidden_size, config.num_attention_heads, batch_first=True)
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = TowerMLP(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probe = self.probe.expand(x.shape[0], -1, -1)
        pooled = self.attention(probe, x, x, need_weights=False)[0]  # [N, 1, d]
        pooled = pooled + self.mlp(self.layernorm(pooled))
        return pooled[:, 0]


class VisionTower(nn.Module):
    """pixel values [N, C, S, S] (the tower's own normalisation) -> `TowerOutput`."""

    def __init__(self, config: TowerConfig) -> None:
        super().__init__()
        self.config = config
        d, eps = config.hidden_size, config.layer_norm_eps
        self.embeddings = TowerEmbeddings(config)
        if config.class_token:
            self.pre_layrnorm = nn.LayerNorm(d, eps=eps)  # (transformers' spelling)
        self.encoder = TowerEncoderLayers(config)
        self.post_layernorm = nn.LayerNorm(d, eps=eps)
        if config.vision_use_head:
            self.head = AttentionPoolingHead(config)

    def forward(self, pixels: torch.Tensor, layers: int | None = None) -> TowerOutput:
        """`layers`: run only the first N layers (hidden_states then ends there; last_hidden_state
        and pooled still describe the last layer run)."""
        c, S = self.config, self.config.image_size
        if pixels.dim() != 4 or tuple(pixels.shape[1:]) != (c.num_channels, S, S):
            raise ValueError(f"pixel values must be [N, {c.num_channels}, {S}, {S}], got {tuple(pixels.shape)}")
        x = self.embeddings(pixels)
        if c.class_token:
            x = self.pre_layrnorm(x)
        states = [x]
        for layer in self.encoder.layers[:layers]:
            x = layer(x)
            states.append(x)
        if c.class_token:
            return TowerOutput(x, self.post_layernorm(x[:, 0]), tuple(states))
        x = self.post_layernorm(x)
        return TowerOutput(x, self.head(x) if c.vision_use_head else None, tuple(states))


class TowerEncoder(nn.Module):
    """A vision tower in the small ViT's place: images [N, 3, S, S] scaled to [-1, 1] -> patch
    features [N, G*G, d] for the `Projector` (the class token dropped).

    `feature_layer` -1 takes the tower's last_hidden_state (SigLIP's after post_layernorm); other
    values index transformers' hidden_states (0: the embeddings, k: after layer k, -2: the
    penultimate layer, which LLaVA uses). `mean`/`std` are the tower's pixel normalisation
    (its preprocessor_config.json's image_mean / image_std)."""

    def __init__(self, tower: VisionTower, config: VisionConfig, mean: tuple[float, ...], std: tuple[float, ...],
                 feature_layer: int = -1) -> None:
        super().__init__()
        tc = tower.config
        if (config.image_size, config.patch_size, config.dim) != (tc.image_size, tc.patch_size, tc.hidden_size):
            raise ValueError(f"the vision config (image_size {config.image_size}, patch_size {config.patch_size}, dim "
                             f"{config.dim}) does not describe the tower (image_size {tc.image_size}, patch_size "
                             f"{tc.patch_size}, hidden_size {tc.hidden_size})")
        if tc.num_channels != 3:
            raise ValueError(f"the tower takes {tc.num_channels} channels; images are RGB (3)")
        if len(mean) != 3 or len(std) != 3 or any(not s > 0 for s in std):
            raise ValueError(f"image mean and std must be 3 numbers each, std positive; got {list(mean)}, {list(std)}")
        if not -tc.num_hidden_layers - 1 <= feature_layer <= tc.num_hidden_layers:
            raise ValueError(f"feature_layer {feature_layer} is outside the tower's hidden states "
                             f"(-{tc.num_hidden_layers + 1} to {tc.num_hidden_layers})")
        self.tower, self.config = tower, config
        self.mean, self.std, self.feature_layer = tuple(map(float, mean)), tuple(map(float, std)), feature_layer
        self.register_buffer("pixel_mean", torch.tensor(self.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(self.std).view(1, 3, 1, 1), persistent=False)

    @classmethod
    def of(cls, tower: VisionTower, *, pool: int, lm_dim: int, image_token: str, mean: tuple[float, ...],
           std: tuple[float, ...], feature_layer: int = -1) -> "TowerEncoder":
        """The adapter with the VisionConfig the projector and the image pipeline read off the tower."""
        tc = tower.config
        config = VisionConfig(image_size=tc.image_size, patch_size=tc.patch_size, dim=tc.hidden_size,
                              n_layers=tc.num_hidden_layers, n_heads=tc.num_attention_heads,
                              ffn_dim=tc.intermediate_size, pool=pool, lm_dim=lm_dim, image_token=image_token)
        return cls(tower, config, mean, std, feature_layer)

    def describe(self) -> dict[str, Any]:
        """What rebuilds this adapter (with a VisionConfig): see `from_description`."""
        return {"config": dataclasses.asdict(self.tower.config), "image_mean": list(self.mean), "image_std": list(self.std),
                "feature_layer": self.feature_layer}

    @classmethod
    def from_description(cls, data: dict[str, Any], config: VisionConfig) -> "TowerEncoder":
        try:
            tower = VisionTower(TowerConfig(**data["config"]))
            return cls(tower, config, tuple(data["image_mean"]), tuple(data["image_std"]), int(data["feature_layer"]))
        except (KeyError, TypeError) as error:
            raise ValueError(f"not a vision tower description ({error!r})") from None

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        size = self.config.image_size
        if images.dim() != 4 or tuple(images.shape[1:]) != (3, size, size):
            raise ValueError(f"images must be [N, 3, {size}, {size}], got {tuple(images.shape)}")
        pixels = ((images.float() + 1.0) / 2.0 - self.pixel_mean) / self.pixel_std
        n_layers = self.tower.config.num_hidden_layers
        if self.feature_layer == -1:
            features = self.tower(pixels).last_hidden_state
        else:
            index = self.feature_layer % (n_layers + 1)  # the hidden state's index counting from 0
            features = self.tower(pixels, layers=index).hidden_states[index]
        return features[:, 1:] if self.tower.config.class_token else features
