"""Quantized layers against their dequantized references; the module swap; in-place refresh."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lmforge.core.config import ModelConfig
from lmforge.model.lora import apply_lora
from lmforge.model.quant import (GroupQuantized, Int4Linear, Int8Linear, QuantEmbedding, kernel_support,
                                 quantize_int4, quantize_int8, quantize_model, refresh_quantized, weight_bytes)
from lmforge.model.transformer import Transformer, init_weights


def test_the_cpu_kernels_are_found():
    assert kernel_support("cpu") == {"int8", "int4"}  # PyTorch 2.13's CPU build has both
    assert kernel_support("meta") == frozenset()


def test_quantizers_stay_within_half_a_step():
    w = torch.randn(48, 96)
    q8 = quantize_int8(w)
    assert q8.values.dtype == torch.int8 and q8.values.abs().max() <= 127 and q8.zeros is None
    assert ((q8.dequantize() - w).abs() <= q8.scales / 2 + 1e-6).all()
    q4 = quantize_int4(w, 32)
    assert q4.values.min() >= 0 and q4.values.max() <= 15 and q4.scales.shape == (48, 3)
    step = q4.scales.repeat_interleave(32, dim=1)
    assert ((q4.dequantize() - w).abs() <= step / 2 + 1e-6).all()
    with pytest.raises(ValueError, match="group size 32 does not divide the input width 40"):
        quantize_int4(torch.randn(4, 40), 32)


def formats() -> dict[str, GroupQuantized]:
    """One of each kind the layers take: unsigned 4-bit with minima (Q4_1), signed 4-bit (Q4_0),
    8-bit groups (Q8_0), from random integers and scales."""
    g = torch.Generator().manual_seed(1)
    N, K = 40, 96  # N not a multiple of the kernel's 16-row tiles
    scales = torch.rand(N, K // 32, generator=g) * 0.02 + 0.001
    return {
        "unsigned4": GroupQuantized(torch.randint(0, 16, (N, K), generator=g, dtype=torch.int8), scales,
                                    torch.randn(N, K // 32, generator=g) * 0.05, 32),
        "signed4": GroupQuantized(torch.randint(-8, 8, (N, K), generator=g, dtype=torch.int8), scales, None, 32),
        "int8groups": GroupQuantized(torch.randint(-128, 128, (N, K), generator=g, dtype=torch.int8), scales, None, 32),
    }


@pytest.mark.parametrize("kind", ["unsigned4", "signed4", "int8groups"])
def test_int4_layer_matches_its_dequantized_weight(kind):
    q = formats()[kind]
    bias = torch.randn(q.shape[0])
    x = torch.randn(2, 3, q.shape[1])
    reference = F.linear(x, q.dequantize(), bias)
    exact = Int4Linear(q, bias, compute_dtype=torch.float32)
    assert exact.kernel and exact.planes == (2 if kind == "int8groups" else 1)
    torch.testing.assert_close(exact(x), reference, rtol=1e-5, atol=1e-5)  # float32: no requantization
    torch.testing.assert_close(exact.dequantize(), q.dequantize(), rtol=1e-6, atol=1e-6)
    fast = Int4Linear(q, bias)  # bfloat16 activations and scales
    assert fast(x).dtype == torch.float32
    torch.testing.assert_close(fast(x), reference, rtol=0.02, atol=0.02 * float(reference.abs().max()))


def test_int8_layer_matches_its_dequantized_weight():
    w, bias, x = torch.randn(40, 64), torch.randn(40), torch.randn(5, 64)
    q = quantize_int8(w)
    reference = F.linear(x, q.dequantize(), bias)
    torch.testing.assert_close(Int8Linear(q, bias, torch.float32)(x), reference, rtol=1e-5, atol=1e-4)
    fast = Int8Linear(q, bias)
    torch.testing.assert_close(fast(x), reference, rtol=0.02, atol=0.02 * float(reference.abs().max()))
    # A grouped weight is brought to the per-channel form the kernel reads (within one int8 step).
    grouped = formats()["int8groups"]
    layer = Int8Linear(grouped, None, torch.float32)
    assert (layer.dequantize() - grouped.dequantize()).abs().max() <= layer.scales.max() / 2 + 1e-6


def test_fallback_without_kernels_computes_the_same(monkeypatch):
    q = formats()["unsigned4"]
    x = torch.randn(4, q.shape[1])
    with_kernel = Int4Linear(q, None, torch.float32)
    monkeypatch.setattr(Int4Linear, "__init__", Int4Linear.__init__)  # same class, kernels reported missing:
    monkeypatch.setattr("lmforge.model.quant.kernel_support", lambda device_type="cpu": frozenset())
    plain4, plain8 = Int4Linear(q, None, torch.float32), Int8Linear(quantize_int8(q.dequantize()), None, torch.float32)
    assert not plain4.kernel and not plain8.kernel
    torch.testing.assert_close(plain4(x), with_kernel(x), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(plain8(x), F.linear(x, plain8.dequantize()), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("kind", ["unsigned4", "signed4", "int8groups"])
def test_embedding_lookup_is_exact(kind):
    q = formats()[kind]
    ids = torch.tensor([[0, 7, 39], [3, 3, 12]])
    table = QuantEmbedding(q)
    assert torch.equal(table(ids), q.dequantize()[ids])


def small_model(tie: bool = True) -> Transformer:
    config = ModelConfig(vocab_size=96, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=128,
                         max_seq_len=64, tie_embeddings=tie)
    model = Transformer(config)
    init_weights(model, seed=0)
    return model.eval()


@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_module_swap_quantizes_every_layer_and_leaves_the_original(mode):
    model = small_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    twin = quantize_model(model, mode)
    kinds = {type(m) for m in twin.modules()}
    assert nn.Linear not in kinds and nn.Embedding not in kinds
    assert (Int8Linear if mode == "int8" else Int4Linear) in kinds and QuantEmbedding in kinds
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # original untouched
    assert not {p.data_ptr() for p in twin.parameters()} & {p.data_ptr() for p in model.parameters()}
    if mode == "int8":  # the tied lookup reads the head's own int8 table
        assert twin.embedding.weight is twin.lm_head.weight
    assert weight_bytes(twin) < weight_bytes(model) / 2
    # Against the float model holding the same quantized weights, dequantized.
    dequantized = copy.deepcopy(model)
    with torch.no_grad():
        for module in dequantized.modules():
            if isinstance(module, nn.Linear):
                q = quantize_int8(module.weight) if mode == "int8" else quantize_int4(module.weight, 32)
                module.weight.copy_(q.dequantize())
    exact = quantize_model(model, mode, compute_dtype=torch.float32)
    ids = torch.tensor([[1, 5, 9, 33, 2]])
    with torch.no_grad():
        reference = dequantized(ids)
        torch.testing.assert_close(exact(ids), reference, rtol=1e-4, atol=1e-4)
        assert (twin(ids) - reference).abs().max() < 0.02 * reference.abs().max()  # bfloat16 activations


def test_quantize_refuses_lora_models_and_unknown_modes():
    model = small_model()
    with pytest.raises(ValueError, match="unknown quantization mode 'int3'"):
        quantize_model(model, "int3")
    apply_lora(model, ["q_proj"], rank=2, alpha=4)
    with pytest.raises(ValueError, match="LoRA adapters; merge them first"):
        quantize_model(model, "int8")


@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_refresh_requantizes_in_place(mode):
    model = small_model(tie=False)
    twin = quantize_model(model, mode)
    buffers = {name: tensor for name, tensor in twin.named_buffers()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    refresh_quantized(twin, model)
    assert all(tensor is buffers[name] for name, tensor in twin.named_buffers())  # same tensors, new values
    fresh = quantize_model(model, mode)
    for (name, a), (_, b) in zip(twin.state_dict().items(), fresh.state_dict().items()):
        assert torch.equal(a, b), name
