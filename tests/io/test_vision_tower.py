"""CLIP and SigLIP vision towers from local folders written by transformers: features equal
transformers' (1e-4, fp32), the tower in a vision-language model folder round trips, and folders
that do not match are refused naming the problem."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import (CLIPConfig, CLIPModel, CLIPVisionConfig, CLIPVisionModel, SiglipConfig, SiglipModel,
                          SiglipVisionConfig, SiglipVisionModel)

from lmforge.core.config import ModelConfig
from lmforge.io.vision import load_vision_model, save_vision_model
from lmforge.io.vision_tower import load_tower_encoder, load_vision_tower
from lmforge.model.transformer import Transformer, init_weights
from lmforge.model.vision import Projector, VisionLanguageModel
from lmforge.tokenizer.train import train_bpe

SHAPE = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4, image_size=24, patch_size=6)
TEXT = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, vocab_size=64,
            bos_token_id=1, eos_token_id=2, pad_token_id=0)


def scrambled(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Every parameter drawn at random (biases, norms and the probe too, which init leaves plain)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            norm_gain = "norm" in name and name.endswith("weight")
            p.copy_(torch.randn(p.shape, generator=generator) * 0.3 + (1.0 if norm_gain else 0.0))
    return model.eval()


def write(folder, kind: str, dual: bool, seed: int = 0):
    torch.manual_seed(seed)
    if kind == "clip":
        vision = CLIPVisionConfig(**SHAPE)
        model = CLIPModel(CLIPConfig(vision_config=vision.to_dict(), text_config=TEXT, projection_dim=8)) if dual \
            else CLIPVisionModel(vision)
    else:
        vision = SiglipVisionConfig(**SHAPE)
        model = SiglipModel(SiglipConfig(vision_config=vision.to_dict(), text_config=TEXT)) if dual \
            else SiglipVisionModel(vision)
    scrambled(model, seed).save_pretrained(folder)
    return model.vision_model if dual else model


@pytest.mark.parametrize("kind,dual", [("clip", False), ("clip", True), ("siglip", False), ("siglip", True)])
def test_features_equal_transformers(tmp_path, kind, dual):
    reference = write(tmp_path / "tower", kind, dual)
    ours = load_vision_tower(tmp_path / "tower")
    pixels = torch.randn(3, 3, 24, 24, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = reference(pixel_values=pixels, output_hidden_states=True)
        got = ours(pixels)
    assert got.last_hidden_state.shape == (3, 16 + (kind == "clip"), 32)
    torch.testing.assert_close(got.last_hidden_state, expected.last_hidden_state, atol=1e-4, rtol=0)
    torch.testing.assert_close(got.pooled, expected.pooler_output, atol=1e-4, rtol=0)
    assert len(got.hidden_states) == len(expected.hidden_states) == 3
    for a, b in zip(got.hidden_states, expected.hidden_states):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=0)
    assert float(expected.last_hidden_state.abs().mean()) > 0.1  # not a trivially small output


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_encoder_normalises_lmforge_images_and_drops_the_class_token(tmp_path, kind):
    reference = write(tmp_path / "tower", kind, dual=False)
    mean, std = [0.4, 0.5, 0.6], [0.2, 0.25, 0.3]
    (tmp_path / "tower" / "preprocessor_config.json").write_text(json.dumps({"image_mean": mean, "image_std": std}))
    encoder = load_tower_encoder(tmp_path / "tower", pool=2, lm_dim=40, image_token="<img>")
    assert encoder.config.grid == 4 and encoder.config.tokens_per_image == 4 and encoder.config.lm_dim == 40
    images = torch.rand(2, 3, 24, 24) * 2 - 1  # lmforge's [-1, 1] scale
    pixels = ((images + 1) / 2 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = reference(pixel_values=pixels, output_hidden_states=True)
        skip = 1 if kind == "clip" else 0
        torch.testing.assert_close(encoder(images), expected.last_hidden_state[:, skip:], atol=1e-4, rtol=0)
        penultimate = load_tower_encoder(tmp_path / "tower", pool=2, lm_dim=40, image_token="<img>", feature_layer=-2)
        torch.testing.assert_close(penultimate(images), expected.hidden_states[-2][:, skip:], atol=1e-4, rtol=0)
        assert Projector(encoder.config)(encoder(images)).shape == (2, 4, 40)
    with pytest.raises(ValueError, match="feature_layer 5 is outside"):
        load_tower_encoder(tmp_path / "tower", pool=2, lm_dim=40, image_token="<img>", feature_layer=5)


def test_a_model_with_a_tower_saves_and_loads(tmp_path):
    write(tmp_path / "tower", "siglip", dual=True)
    tokenizer = train_bpe(["What colour is it? red green blue"] * 20, vocab_size=300)
    lm = Transformer(ModelConfig(vocab_size=tokenizer.vocab_size, dim=32, n_layers=1, n_heads=4, ffn_dim=64,
                                 max_seq_len=64))
    init_weights(lm, seed=0)
    token = tokenizer.decode([5])
    encoder = load_tower_encoder(tmp_path / "tower", pool=2, lm_dim=32, image_token=token, feature_layer=-2)
    vlm = VisionLanguageModel(lm, encoder, Projector(encoder.config), 5).eval()
    folder = save_vision_model(tmp_path / "vlm", vlm, tokenizer)
    again, _ = load_vision_model(folder)
    assert json.loads((folder / "vision.json").read_text())["tower"]["feature_layer"] == -2
    images = torch.rand(1, 3, 24, 24) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(again.image_features(images), vlm.image_features(images))


def test_bad_folders_are_refused_naming_the_problem(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_vision_tower(tmp_path / "nowhere")
    write(tmp_path / "clip", "clip", dual=False)
    config = json.loads((tmp_path / "clip" / "config.json").read_text())

    def variant(name: str, **changes):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps({**config, **changes}))
        (folder / "model.safetensors").write_bytes((tmp_path / "clip" / "model.safetensors").read_bytes())
        return folder

    with pytest.raises(ValueError, match="model_type 'llama' is not a CLIP or SigLIP vision tower"):
        load_vision_tower(variant("llama", model_type="llama"))
    with pytest.raises(ValueError, match=r"tensor embeddings\.patch_embedding\.weight has shape \[32, 3, 6, 6\].*patch_size=8"):
        load_vision_tower(variant("patch", patch_size=8))
    with pytest.raises(ValueError, match=r"lack 1\d tensors .*num_hidden_layers=3"):
        load_vision_tower(variant("deeper", num_hidden_layers=3))
    with pytest.raises(ValueError, match="image_size 25 is not a multiple of patch_size 6"):
        load_vision_tower(variant("odd", image_size=25))
    with pytest.raises(ValueError, match="hidden_act must be one of"):
        load_vision_tower(variant("act", hidden_act="swish"))
    # a SigLIP folder's head is refused by a config that says it has none
    write(tmp_path / "siglip", "siglip", dual=False)
    siglip = json.loads((tmp_path / "siglip" / "config.json").read_text())
    (tmp_path / "siglip" / "config.json").write_text(json.dumps({**siglip, "vision_use_head": False}))
    with pytest.raises(ValueError, match=r"hold 11 tensors .*no place for.*vision_use_head=False.*head\."):
        load_vision_tower(tmp_path / "siglip")
    # no weights at all, or pickled ones only
    empty = variant("empty")
    (empty / "model.safetensors").unlink()
    (empty / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(ValueError, match="no \\*.safetensors weights.*pickled weights are never loaded"):
        load_vision_tower(empty)
    # a CLIPModel folder whose safetensors hold only the text tower
    dual = tmp_path / "dual"
    write(dual, "clip", dual=True)
    weights = load_file(str(dual / "model.safetensors"))
    save_file({k: v for k, v in weights.items() if not k.startswith("vision_model.")}, str(dual / "model.safetensors"))
    with pytest.raises(ValueError, match=r"no vision tower tensors \(vision_model\.\*\)"):
        load_vision_tower(dual)
    (tmp_path / "clip" / "preprocessor_config.json").write_text(json.dumps({"image_mean": [0.5], "image_std": [1, 1, 1]}))
    with pytest.raises(ValueError, match="preprocessor_config.json: image_mean and image_std must hold 3 numbers"):
        load_tower_encoder(tmp_path / "clip", pool=2, lm_dim=8, image_token="x")
