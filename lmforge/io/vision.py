"""Vision-language model folders: FOLDER/lm (the language model as a Hugging Face folder, LoRA
merged), FOLDER/vision.safetensors (encoder and projector) and FOLDER/vision.json (their shape and
the image placeholder token; for a CLIP/SigLIP tower in the small ViT's place, also the tower's
config and pixel normalisation under "tower"). Written to a temporary folder and renamed: never
half a model."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from lmforge.core.files import write_folder_atomically
from lmforge.io.hf import save_pretrained
from lmforge.model.lora import lora_modules, merged_state_dict
from lmforge.model.transformer import Transformer
from lmforge.model.vision import Projector, VisionConfig, VisionEncoder, VisionLanguageModel
from lmforge.model.vision_tower import TowerEncoder
from lmforge.tokenizer.tokenizer import Tokenizer

__all__ = ["is_vision_folder", "load_vision_model", "save_vision_model"]


def is_vision_folder(path: str | os.PathLike) -> bool:
    return (Path(path) / "vision.json").is_file()


def save_vision_model(folder: str | os.PathLike, vlm: VisionLanguageModel, tokenizer: Tokenizer,
                      meta: dict | None = None) -> Path:
    """Write the model (LoRA layers merged into a copy; `vlm` is left as it is)."""
    lm = vlm.lm
    if lora_modules(lm):
        lm = Transformer.from_state_dict(lm.config, merged_state_dict(lm))

    def write(tmp: Path) -> None:
        save_pretrained(lm, tokenizer, tmp / "lm")
        weights = {f"encoder.{k}": v.detach().contiguous().cpu() for k, v in vlm.encoder.state_dict().items()}
        weights.update({f"projector.{k}": v.detach().contiguous().cpu() for k, v in vlm.projector.state_dict().items()})
        save_file(weights, str(tmp / "vision.safetensors"))
        tower = {"tower": vlm.encoder.describe()} if isinstance(vlm.encoder, TowerEncoder) else {}
        (tmp / "vision.json").write_text(json.dumps({"vision": vlm.config.to_dict(), **tower, **(meta or {})}, indent=1) + "\n")

    return write_folder_atomically(folder, write)


def load_vision_model(folder: str | os.PathLike, dtype: torch.dtype = torch.float32) -> tuple[VisionLanguageModel, Tokenizer]:
    """A saved vision-language model and its tokenizer; a folder that does not match is a ValueError."""
    from lmforge.io.registry import load_model

    folder = Path(folder)
    try:
        info = json.loads((folder / "vision.json").read_text())
        config = VisionConfig.from_dict(info["vision"])
        encoder = TowerEncoder.from_description(info["tower"], config) if "tower" in info else VisionEncoder(config)
    except FileNotFoundError:
        raise ValueError(f"{folder} is not a vision-language model folder (no vision.json)") from None
    except (KeyError, TypeError, ValueError) as error:  # JSONDecodeError is a ValueError
        raise ValueError(f"{folder}/vision.json is not a vision config ({error})") from None
    lm, tokenizer = load_model(folder / "lm", dtype=dtype)
    projector = Projector(config)
    weights = load_file(str(folder / "vision.safetensors"))
    for prefix, module in (("encoder.", encoder), ("projector.", projector)):
        part = {k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)}
        try:
            module.load_state_dict(part)
        except RuntimeError as error:
            raise ValueError(f"{folder}/vision.safetensors does not match vision.json: {error}") from None
    token_ids = tokenizer.encode(config.image_token)
    if len(token_ids) != 1:
        raise ValueError(f"{folder}: image token {config.image_token!r} is not one token of the model's tokenizer")
    vlm = VisionLanguageModel(lm, encoder.to(dtype), projector.to(dtype), token_ids[0]).eval()
    return vlm, tokenizer
