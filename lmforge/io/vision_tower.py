"""CLIP and SigLIP vision towers from a local Hugging Face folder (config.json + *.safetensors).

Accepted folders: CLIPVisionModel (model_type clip_vision_model), CLIPModel (clip: its
vision_config and vision_model.* tensors; the text tower is not read), SiglipVisionModel
(siglip_vision_model) and SiglipModel (siglip). Fields missing from config.json take transformers'
defaults. The pixel normalisation comes from preprocessor_config.json (image_mean, image_std)
when the folder has one, else the model type's default (CLIP's, or 0.5 / 0.5 for SigLIP). Nothing
is downloaded. A folder that does not match (no weights, another model type, tensors missing,
left over or of the wrong shape) is a ValueError naming the problem.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from lmforge.io.hf import read_config, read_safetensors
from lmforge.model.vision_tower import TowerConfig, TowerEncoder, VisionTower

__all__ = ["TOWER_MODEL_TYPES", "load_tower_encoder", "load_vision_tower", "tower_config_from_hf"]

# model_type -> (kind, the sub-config holding the vision tower, or None when it is the whole config)
TOWER_MODEL_TYPES = {"clip_vision_model": ("clip", None), "clip": ("clip", "vision_config"),
                     "siglip_vision_model": ("siglip", None), "siglip": ("siglip", "vision_config")}
# transformers' CLIPVisionConfig / SiglipVisionConfig defaults (older folders store only what differs)
_DEFAULTS = {
    "clip": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, image_size=224,
                 patch_size=32, hidden_act="quick_gelu", layer_norm_eps=1e-5, num_channels=3),
    "siglip": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, image_size=224,
                   patch_size=16, hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6, num_channels=3,
                   vision_use_head=True),
}
_NORMALISATION = {"clip": ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
                  "siglip": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))}
_FIELDS = ("hidden_size", "intermediate_size", "num_attention_heads", "image_size", "patch_size", "num_channels")


def tower_config_from_hf(data: dict[str, Any], where: str = "config.json") -> TowerConfig:
    """The TowerConfig of a CLIP/SigLIP config.json (a vision model's, or a dual model's)."""
    model_type = data.get("model_type")
    if model_type not in TOWER_MODEL_TYPES:
        raise ValueError(f"{where}: model_type {model_type!r} is not a CLIP or SigLIP vision tower "
                         f"(expected one of {', '.join(TOWER_MODEL_TYPES)})")
    kind, section = TOWER_MODEL_TYPES[model_type]
    if section is not None:
        data = data.get(section) if data.get(section) is not None else {}
        if not isinstance(data, dict):
            raise ValueError(f"{where}: {section} must be an object")
        where = f"{where} {section}"
    values = {name: data.get(name, default) for name, default in _DEFAULTS[kind].items()}
    for name in ("image_size", "patch_size"):
        value = values[name]
        if isinstance(value, (list, tuple)) and len(value) == 2 and value[0] == value[1]:
            values[name] = value[0]  # a square given as [S, S]
    try:
        return TowerConfig(kind=kind, **values)
    except ValueError as error:
        raise ValueError(f"{where}: {str(error).removeprefix('invalid vision tower config: ')}") from None


def _normalisation(folder: Path, kind: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    path = folder / "preprocessor_config.json"
    if not path.is_file():
        return _NORMALISATION[kind]
    try:
        data = json.loads(path.read_text())
        mean, std = data.get("image_mean", _NORMALISATION[kind][0]), data.get("image_std", _NORMALISATION[kind][1])
        mean, std = tuple(float(v) for v in mean), tuple(float(v) for v in std)
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError, TypeError, ValueError) as error:
        raise ValueError(f"{path}: image_mean and image_std must be lists of numbers ({error})") from None
    if len(mean) != 3 or len(std) != 3 or not all(s > 0 for s in std):
        raise ValueError(f"{path}: image_mean and image_std must hold 3 numbers each, std positive; "
                         f"got {list(mean)} and {list(std)}")
    return mean, std


def load_vision_tower(folder: str | os.PathLike, dtype: torch.dtype = torch.float32) -> VisionTower:
    """The vision tower of a local CLIP/SigLIP folder, in `dtype`, in eval mode."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"vision tower folder {folder} does not exist")
    where = str(folder / "config.json")
    raw = read_config(folder)
    config = tower_config_from_hf(raw, where)
    dual = TOWER_MODEL_TYPES[raw["model_type"]][1] is not None
    try:
        tensors = read_safetensors(folder, keep=(lambda k: k.startswith("vision_model.")) if dual else None)
    except FileNotFoundError as error:
        raise ValueError(f"vision tower folder: {error}") from None
    tensors = {k.removeprefix("vision_model."): v for k, v in tensors.items()}
    tensors.pop("embeddings.position_ids", None)  # a buffer older transformers stored
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in VisionTower(config).state_dict().items()}
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if not tensors:
        raise ValueError(f"{folder}: the safetensors hold no vision tower tensors"
                         + (" (vision_model.*)" if dual else ""))
    if missing:
        raise ValueError(f"{folder}: the weights lack {len(missing)} tensors that {where} asks for "
                         f"(num_hidden_layers={config.num_hidden_layers}, "
                         f"vision_use_head={config.vision_use_head}), e.g. {', '.join(missing[:3])}")
    if unexpected:
        raise ValueError(f"{folder}: the weights hold {len(unexpected)} tensors a {config.kind} tower with this "
                         f"config.json has no place for (num_hidden_layers={config.num_hidden_layers}, "
                         f"vision_use_head={config.vision_use_head}), e.g. {', '.join(unexpected[:3])}")
    for key, shape in expected.items():
        if tuple(tensors[key].shape) != shape:
            fields = ", ".join(f"{name}={getattr(config, name)}" for name in _FIELDS)
            raise ValueError(f"{folder}: tensor {key} has shape {list(tensors[key].shape)}, but {where} "
                             f"({fields}) gives {list(shape)}")
    tower = VisionTower(config)
    tower.load_state_dict({k: v.to(dtype) for k, v in tensors.items()})
    return tower.to(dtype).eval()


def load_tower_encoder(folder: str | os.PathLike, *, pool: int, lm_dim: int, image_token: str,
                       feature_layer: int = -1, dtype: torch.dtype = torch.float32) -> TowerEncoder:
    """A tower from `folder` wrapped to stand where the small ViT does (see `TowerEncoder`)."""
    tower = load_vision_tower(folder, dtype)
    mean, std = _normalisation(Path(folder), tower.config.kind)
    return TowerEncoder.of(tower, pool=pool, lm_dim=lm_dim, image_token=image_token, mean=mean, std=std,
                           feature_layer=feature_layer).eval()
