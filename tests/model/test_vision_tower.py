"""The CLIP/SigLIP tower's config checks and shapes (parity with transformers: tests/io/test_vision_tower.py)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from lmforge.model.vision import VisionConfig
from lmforge.model.vision_tower import TowerConfig, TowerEncoder, VisionTower

CLIP = TowerConfig(kind="clip", hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                   image_size=12, patch_size=4, hidden_act="quick_gelu", layer_norm_eps=1e-5)


def test_config_checks():
    assert CLIP.grid == 3
    with pytest.raises(ValueError, match="kind must be one of clip, siglip"):
        dataclasses.replace(CLIP, kind="dino")
    with pytest.raises(ValueError, match="vision_use_head is a SigLIP setting"):
        dataclasses.replace(CLIP, vision_use_head=True)
    with pytest.raises(ValueError, match="hidden_size 16 is not a multiple of num_attention_heads 3"):
        dataclasses.replace(CLIP, num_attention_heads=3)


def test_shapes_class_token_and_early_exit():
    tower = VisionTower(CLIP).eval()
    pixels = torch.randn(2, 3, 12, 12)
    out = tower(pixels)
    assert out.last_hidden_state.shape == (2, 10, 16) and out.pooled.shape == (2, 16) and len(out.hidden_states) == 3
    early = tower(pixels, layers=1)
    assert len(early.hidden_states) == 2 and torch.equal(early.hidden_states[1], out.hidden_states[1])
    with pytest.raises(ValueError, match=r"pixel values must be \[N, 3, 12, 12\]"):
        tower(torch.randn(1, 3, 8, 8))
    siglip = VisionTower(dataclasses.replace(CLIP, kind="siglip", hidden_act="gelu_pytorch_tanh"))
    assert siglip(pixels).last_hidden_state.shape == (2, 9, 16) and siglip(pixels).pooled is None


def test_encoder_checks_its_vision_config():
    tower = VisionTower(CLIP)
    encoder = TowerEncoder.of(tower, pool=3, lm_dim=8, image_token="<i>", mean=(0.5,) * 3, std=(0.5,) * 3)
    assert encoder.config.tokens_per_image == 1 and encoder(torch.zeros(1, 3, 12, 12)).shape == (1, 9, 16)
    assert TowerEncoder.from_description(encoder.describe(), encoder.config).describe() == encoder.describe()
    with pytest.raises(ValueError, match="not a vision tower description"):
        TowerEncoder.from_description({**encoder.describe(), "config": {"depth": 2}}, encoder.config)
    with pytest.raises(ValueError, match="does not describe the tower"):
        TowerEncoder(tower, VisionConfig(image_size=24, patch_size=4, dim=16, n_heads=2, pool=2), (0.5,) * 3, (0.5,) * 3)
    with pytest.raises(ValueError, match="std positive"):
        TowerEncoder.of(tower, pool=3, lm_dim=8, image_token="<i>", mean=(0.5,) * 3, std=(0.5, 0.0, 0.5))
