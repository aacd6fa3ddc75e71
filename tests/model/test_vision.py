"""The ViT encoder, the projector and image-token splicing: shapes, bidirectional attention,
and the spliced forward against Hugging Face's Llama fed the same input embeddings."""

from __future__ import annotations

import pytest
import torch

from lmforge.core.config import ModelConfig
from lmforge.model.transformer import Transformer, init_weights
from lmforge.model.vision import Projector, VisionConfig, VisionEncoder, VisionLanguageModel, rotary_2d

VISION = VisionConfig(image_size=24, patch_size=6, dim=32, n_layers=2, n_heads=2, ffn_dim=64, pool=2, lm_dim=48)


def tiny_vlm(seed: int = 0) -> VisionLanguageModel:
    torch.manual_seed(seed)
    lm = Transformer(ModelConfig(family="llama", vocab_size=64, dim=48, n_layers=2, n_heads=4, n_kv_heads=2,
                                 ffn_dim=96, max_seq_len=64))
    init_weights(lm, seed=seed)
    return VisionLanguageModel(lm.eval(), VisionEncoder(VISION), Projector(VISION), image_token_id=5).eval()


def test_config_checks():
    assert VISION.grid == 4 and VISION.tokens_per_image == 4
    with pytest.raises(ValueError, match="not a multiple of patch_size"):
        VisionConfig(image_size=25, patch_size=6)
    with pytest.raises(ValueError, match="does not divide into pool"):
        VisionConfig(image_size=30, patch_size=6, pool=2)
    with pytest.raises(ValueError, match="unknown vision config fields: colour"):
        VisionConfig.from_dict({"colour": 1})
    assert VisionConfig.from_dict(VISION.to_dict()) == VISION


def test_encoder_and_projector_shapes_and_bidirectional_attention():
    encoder, projector = VisionEncoder(VISION).eval(), Projector(VISION)
    images = torch.randn(3, 3, 24, 24)
    features = encoder(images)
    assert features.shape == (3, 16, 32)
    assert projector(features).shape == (3, 4, 48)
    # bidirectional: changing the last patch changes the first patch's features
    changed = images.clone()
    changed[:, :, 18:, 18:] += 1.0
    assert not torch.allclose(encoder(changed)[:, 0], features[:, 0])
    with pytest.raises(ValueError, match=r"images must be \[N, 3, 24, 24\]"):
        encoder(torch.randn(1, 3, 20, 20))


def test_rotary_2d_turns_with_rows_and_columns():
    cos, sin = rotary_2d(3, 8, 100.0)
    assert cos.shape == (9, 8)
    # position (row 1, col 2) = index 5: first frequency pair (inv_freq 1) -> angle 1 (row) and 2 (col)
    assert torch.allclose(cos[5, [0, 2]], torch.tensor([1.0, 2.0]).cos())
    assert torch.allclose(cos[:, :4], cos[:, 4:]) and torch.allclose(sin[:, :4], sin[:, 4:])


def test_splice_places_features_and_checks_counts():
    vlm = tiny_vlm()
    ids = torch.tensor([[1, 5, 5, 5, 5, 7, 8, 9], [1, 2, 3, 5, 5, 5, 5, 9]])
    mask = ids == 5
    images = torch.randn(2, 3, 24, 24)
    features = vlm.image_features(images)
    seen = {}
    handle = vlm.lm.embedding.register_forward_hook(lambda m, a, out: seen.setdefault("x", out))
    with vlm.spliced(mask, features):
        vlm.lm(ids)
    handle.remove()
    spliced = seen["x"]  # the hook registered first sees the plain embedding...
    with vlm.spliced(mask, features):
        out = vlm.lm.embedding(ids)
    assert torch.equal(out[0, 1:5], features[0]) and torch.equal(out[1, 3:7], features[1])
    assert torch.equal(out[~mask], spliced[~mask])
    with pytest.raises(ValueError, match="holds 8 image placeholder tokens; the images give 4 features"):
        vlm(ids, mask, images[:1])
    with pytest.raises(ValueError, match="come together"):
        vlm(ids, mask, None)


def test_spliced_forward_matches_transformers_inputs_embeds(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    vlm = tiny_vlm(1)
    c = vlm.lm.config
    hf = LlamaForCausalLM(LlamaConfig(vocab_size=c.vocab_size, hidden_size=c.dim, intermediate_size=c.hidden_dim,
                                      num_hidden_layers=c.n_layers, num_attention_heads=c.n_heads,
                                      num_key_value_heads=c.kv_heads, max_position_embeddings=c.max_seq_len,
                                      rms_norm_eps=c.norm_eps, rope_theta=c.rope_theta, tie_word_embeddings=True))
    missing, unexpected = hf.load_state_dict(vlm.lm.state_dict(), strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}
    hf.eval()
    ids = torch.tensor([[1, 2, 5, 5, 5, 5, 7, 8, 9, 3]])
    images = torch.randn(1, 3, 24, 24)
    with torch.no_grad():
        ours = vlm(ids, ids == 5, images)
        embeds = hf.model.embed_tokens(ids)
        embeds[0, 2:6] = vlm.image_features(images)[0]
        theirs = hf(inputs_embeds=embeds).logits
    assert torch.allclose(ours, theirs, atol=1e-4), (ours - theirs).abs().max()


def test_generate_with_cache_equals_full_forward():
    vlm = tiny_vlm(2)
    ids = [1, 2, 5, 5, 5, 5, 7]
    mask = [i == 5 for i in ids]
    images = torch.randn(1, 3, 24, 24)
    new = vlm.generate(ids, mask, images, max_new_tokens=6)
    assert len(new) == 6
    sequence = list(ids)
    with torch.no_grad():
        for _ in range(6):
            full = torch.tensor([sequence])
            logits = vlm(full, torch.tensor([mask + [False] * (len(sequence) - len(ids))]), images)
            sequence.append(int(logits[0, -1].argmax()))
    assert sequence[len(ids):] == new
    stop = new[2]
    assert vlm.generate(ids, mask, images, max_new_tokens=6, stop_ids=[stop]) == new[:new.index(stop)]
