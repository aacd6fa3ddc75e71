"""The building blocks the families share (model/layers.py), against hand computations."""

from __future__ import annotations

import torch

from lmforge.model import bert, t5, transformer, vision
from lmforge.model.layers import RMSNorm, attend_heads, padding_bias, split_heads


def test_attend_heads_is_softmax_attention_with_a_bias_or_a_mask():
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 3, 4, 5), torch.randn(2, 3, 6, 5), torch.randn(2, 3, 6, 5)
    bias = torch.randn(1, 3, 4, 6)
    for scale in (None, 1.0):
        s = 5 ** -0.5 if scale is None else scale
        expected = torch.softmax(q @ k.transpose(-1, -2) * s + bias, -1) @ v  # [B, H, T, Dh]
        got = attend_heads(q, k, v, bias, scale=scale)
        assert got.shape == (2, 4, 15)
        assert torch.allclose(got, expected.transpose(1, 2).reshape(2, 4, 15), atol=1e-5)
    keep = torch.tensor([[1, 1, 1, 0, 0, 1], [1, 1, 1, 1, 1, 1]])
    as_bias = attend_heads(q, k, v, padding_bias(keep, torch.zeros(2, 6, 1)))
    as_mask = attend_heads(q, k, v, keep.bool()[:, None, None, :])
    alone = attend_heads(q[:1], k[:1, :, [0, 1, 2, 5]], v[:1, :, [0, 1, 2, 5]], None)
    assert torch.allclose(as_bias, as_mask, atol=1e-6) and torch.allclose(as_bias[:1], alone, atol=1e-6)
    assert padding_bias(None, torch.zeros(1, 3, 2)) is None


def test_split_heads_and_rms_norm():
    x = torch.arange(24.0).view(1, 2, 12)
    heads = split_heads(x, 3)
    assert heads.shape == (1, 3, 2, 4) and heads[0, 1, 1].tolist() == [16.0, 17.0, 18.0, 19.0]
    norm = RMSNorm(12, 1e-6)
    with torch.no_grad():
        norm.weight.copy_(torch.linspace(0.5, 2, 12))
    expected = x / torch.sqrt((x ** 2).mean(-1, keepdim=True) + 1e-6) * norm.weight
    assert torch.allclose(norm(x), expected, atol=1e-5)


def test_the_families_use_one_norm_and_one_activation_table():
    assert transformer.RMSNorm is t5.RMSNorm is vision.RMSNorm is RMSNorm
    assert t5.ACTIVATIONS is bert.ACTIVATIONS
