"""The vision-language recipe end to end on a tiny language model: every stage runs, writes a model
folder that loads back, is evaluated, and a second run continues instead of repeating."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from lmforge.core.config import ModelConfig
from lmforge.data.shapes import write_shapes_dataset
from lmforge.eval.vision import evaluate_shapes
from lmforge.io.hf import save_pretrained
from lmforge.io.vision import load_vision_model
from lmforge.model.transformer import Transformer, init_weights
from lmforge.model.vision import VisionConfig
from lmforge.tokenizer.train import train_bpe
from lmforge.train.vlm import StageConfig, VLMRecipe, train_vlm, truncate_layers


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("vlm")
    data = write_shapes_dataset(root / "data", train=12, test=2, heldout=2, image_size=24)
    words = [line for name in ("train-captions.jsonl", "train-qa.jsonl") for line in (data / name).read_text().splitlines()]
    tokenizer = train_bpe(words, vocab_size=400)
    model = Transformer(ModelConfig(vocab_size=tokenizer.vocab_size, dim=32, n_layers=2, n_heads=4, n_kv_heads=2,
                                    ffn_dim=64, max_seq_len=256))
    init_weights(model, seed=0)
    save_pretrained(model, tokenizer, root / "lm")
    return root, data


def recipe(root, data, **changes) -> VLMRecipe:
    return VLMRecipe(data=str(data), out=str(root / "run"), lm=str(root / "lm"),
                     vision=VisionConfig(image_size=24, patch_size=6, dim=32, n_layers=1, n_heads=2, ffn_dim=64, pool=2),
                     encoder=StageConfig(steps=3, lr=1e-3, batch_size=4), stage1=StageConfig(steps=3, batch_size=4),
                     stage2=StageConfig(steps=3, batch_size=4), warmup_steps=1, eval_items=1, max_new_tokens=3, **changes)


def test_recipe_runs_every_stage_and_continues(setup):
    root, data = setup
    said = []
    report = train_vlm(recipe(root, data), evaluate_shapes, say=said.append)
    assert set(report["stages"]) == {"stage1", "stage2", "baseline"}
    for stage in report["stages"].values():
        assert set(stage["splits"]) == {"test", "heldout"}
        assert set(stage["splits"]["heldout"]["qa"]) == {"colour", "shape", "count", "position"}
    assert report["stages"]["baseline"]["with_images"] is False
    saved = json.loads((root / "run" / "report.json").read_text())
    assert saved["stages"].keys() == report["stages"].keys()
    stages = [json.loads(line)["stage"] for line in (root / "run" / "metrics.jsonl").read_text().splitlines()]
    assert {"encoder", "stage1", "stage2", "baseline"} <= set(stages)
    vlm, tokenizer = load_vision_model(root / "run" / "stage2")
    assert vlm.tokens_per_image == 4 and vlm.config.image_token == "<|pad|>"
    again = []
    train_vlm(recipe(root, data, baseline=False), None, say=again.append)
    assert any("resumed from stage2/" in line for line in again) and not any("step" in line for line in again)


def test_truncate_and_recipe_checks(setup):
    root, _ = setup
    model = Transformer(ModelConfig(vocab_size=50, dim=16, n_layers=3, n_heads=2, max_seq_len=32))
    short = truncate_layers(model, 1)
    assert short.config.n_layers == 1 and len(short.model.layers) == 1
    assert truncate_layers(model, 0) is model
    with pytest.raises(ValueError, match="lm_layers must be"):
        VLMRecipe(data="d", out="o", lm_layers=-1)
    with pytest.raises(ValueError, match="stage1: steps must be"):
        VLMRecipe(data="d", out="o", stage1=StageConfig(steps=-1))


def test_recipe_with_a_clip_tower_in_place_of_the_vit(setup, tmp_path):
    from transformers import CLIPVisionConfig, CLIPVisionModel

    root, data = setup
    torch.manual_seed(0)
    CLIPVisionModel(CLIPVisionConfig(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                                     image_size=24, patch_size=6)).save_pretrained(tmp_path / "clip")
    said = []
    run = recipe(root, data, vision_tower=str(tmp_path / "clip"), vision_feature_layer=-2, baseline=False)
    train_vlm(dataclasses.replace(run, out=str(tmp_path / "run"), eval_items=0), None, say=said.append)
    assert any("vision tower" in line and "clip, 2 layers, width 32" in line for line in said)
    assert not any(line.startswith("encoder step") for line in said)  # no encoder pretraining
    stages = {json.loads(line)["stage"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()}
    assert stages == {"stage1", "stage2"}
    vlm, _ = load_vision_model(tmp_path / "run" / "stage2")
    assert type(vlm.encoder).__name__ == "TowerEncoder" and vlm.encoder.feature_layer == -2
    assert vlm.image_features(torch.zeros(1, 3, 24, 24)).shape == (1, 4, 32)
