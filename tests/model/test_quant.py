"""Quantized layers against their dequantized references; the module swap; in-place refresh."""

from __future__ import annotations

import copy

import gguf
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lmforge.core.config import ModelConfig
from lmforge.io.gguf import read_blocks
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


@pytest.mark.parametrize("group_size", [32, 64, 128])
def test_int4_from_float_weights_matches_its_dequantized_weight(group_size):
    g = torch.Generator().manual_seed(2)
    w, bias, x = torch.randn(40, 256, generator=g), torch.randn(40, generator=g), torch.randn(2, 3, 256, generator=g)
    q = quantize_int4(w, group_size)
    assert q.scales.shape == (40, 256 // group_size) and q.zeros is not None
    reference = F.linear(x, q.dequantize(), bias)
    exact = Int4Linear(q, bias, compute_dtype=torch.float32)
    assert exact.kernel and exact.planes == 1 and exact.group_size == group_size
    torch.testing.assert_close(exact(x), reference, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(exact.dequantize(), q.dequantize(), rtol=1e-6, atol=1e-6)
    fast = Int4Linear(q, bias)
    torch.testing.assert_close(fast(x), reference, rtol=0.02, atol=0.02 * float(reference.abs().max()))


@pytest.mark.parametrize("group_size", [16, 48])
def test_group_sizes_the_int4_kernel_does_not_take_run_the_plain_path(group_size):
    w, x = torch.randn(40, 96), torch.randn(5, 96)
    q = quantize_int4(w, group_size)
    layer = Int4Linear(q, None, compute_dtype=torch.float32)
    assert not layer.kernel  # the kernel takes groups of 32, 64, 128 or 256 only
    torch.testing.assert_close(layer(x), F.linear(x, q.dequantize()), rtol=1e-5, atol=1e-5)
    # A model whose width the default group does not divide (48 -> groups of 16) still runs.
    config = ModelConfig(vocab_size=96, dim=48, n_layers=1, n_heads=4, n_kv_heads=2, ffn_dim=96, max_seq_len=32)
    model = Transformer(config)
    init_weights(model, seed=0)
    twin = quantize_model(model.eval(), "int4", compute_dtype=torch.float32)
    assert twin.model.layers[0].self_attn.qkv_proj.group_size == 16  # q, k and v fused into one layer
    with torch.no_grad():
        logits = twin(torch.tensor([[1, 2, 3]]))
    assert logits.shape == (1, 3, 96) and torch.isfinite(logits).all()


@pytest.mark.parametrize("type_name", ["Q4_0", "Q4_1", "Q8_0"])
def test_gguf_blocks_in_the_layers_compute_with_ggufs_dequantization(type_name):
    """Blocks written by the gguf package, read by lmforge, run in the layers: gguf's own
    dequantized weights are the reference (exact with float32 activations)."""
    rng = np.random.default_rng(3)
    N, K = 40, 96  # N not a multiple of the kernel's 16-row tiles, three blocks per row
    kind = gguf.GGMLQuantizationType[type_name]
    data = gguf.quants.quantize((0.05 * rng.standard_normal((N, K))).astype(np.float32), kind)
    weight = torch.from_numpy(np.asarray(gguf.quants.dequantize(data, kind), dtype=np.float32).reshape(N, K))
    q = read_blocks(type_name, data, (N, K))
    assert torch.equal(q.dequantize(), weight)
    bias, x = torch.from_numpy(rng.standard_normal(N).astype(np.float32)), torch.randn(4, K)
    reference = F.linear(x, weight, bias)
    exact = Int4Linear(q, bias, compute_dtype=torch.float32)
    assert exact.kernel and exact.planes == (2 if type_name == "Q8_0" else 1)
    torch.testing.assert_close(exact(x), reference, rtol=1e-5, atol=1e-5)
    fast = Int4Linear(q, bias)
    torch.testing.assert_close(fast(x), reference, rtol=0.02, atol=0.02 * float(reference.abs().max()))
    ids = torch.tensor([[0, 17, 39], [5, 5, 1]])
    assert torch.equal(QuantEmbedding(q)(ids), weight[ids])
    as_int8 = Int8Linear(q, None, torch.float32)  # requantized per channel: within half an int8 step
    assert ((as_int8.dequantize() - weight).abs() <= as_int8.scales[:, None] / 2 + 1e-6).all()


def test_bad_inputs_are_refused_naming_the_problem():
    with pytest.raises(ValueError, match="group size 0 does not divide the input width 96"):
        quantize_int4(torch.randn(4, 96), 0)
    with pytest.raises(ValueError, match=r"only 2-D weights \[out, in\] can be quantized, got shape \(8,\)"):
        quantize_int8(torch.randn(8))
    with pytest.raises(ValueError, match="holds NaN or infinite values"):
        quantize_int4(torch.tensor([[1.0, float("nan")] * 16]), 32)
    with pytest.raises(ValueError, match="holds NaN or infinite values"):
        quantize_int8(torch.tensor([[1.0, float("inf")]]))
    with pytest.raises(ValueError, match="quantized values must be int8, got torch.float32"):
        GroupQuantized(torch.zeros(4, 32), torch.ones(4, 1), None, 32)
    with pytest.raises(ValueError, match="group size 32 does not divide the input width 40"):
        GroupQuantized(torch.zeros(4, 40, dtype=torch.int8), torch.ones(4, 1), None, 32)
    with pytest.raises(ValueError, match=r"scales/zeros must have shape \(4, 2\) for values \(4, 64\)"):
        GroupQuantized(torch.zeros(4, 64, dtype=torch.int8), torch.ones(4, 2), torch.ones(4, 1), 32)
    w = torch.randn(40, 96)
    for layer in (Int8Linear(quantize_int8(w)), Int4Linear(quantize_int4(w))):
        with pytest.raises(ValueError, match=r"input of width 48 for a quantized layer of 96 inputs \(input shape \(2, 48\)\)"):
            layer(torch.randn(2, 48))
    for bad in (0, -1, 2.5):
        with pytest.raises(ValueError, match="group_size must be a positive number of inputs"):
            quantize_model(small_model(), "int4", group_size=bad)


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


@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_projections_reading_one_input_become_one_layer(mode):
    config = ModelConfig(vocab_size=96, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=128, max_seq_len=64,
                         attn_bias=True, mlp_bias=True)
    model = Transformer(config)
    init_weights(model, seed=0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_()
    twin = quantize_model(model.eval(), mode, compute_dtype=torch.float32)
    attention, mlp = twin.model.layers[0].self_attn, twin.model.layers[0].mlp
    assert set(attention._modules) == {"qkv_proj", "o_proj"} and set(mlp._modules) == {"gate_up_proj", "down_proj"}
    # The fused layer computes what the separate layers would, side by side.
    source = model.model.layers[0].self_attn
    separate = [quantize_model(nn.Sequential(getattr(source, part)), mode, compute_dtype=torch.float32)[0]
                for part in ("q_proj", "k_proj", "v_proj")]
    x = torch.randn(3, 64)
    with torch.no_grad():
        torch.testing.assert_close(attention.qkv_proj(x), torch.cat([layer(x) for layer in separate], dim=-1),
                                   rtol=1e-5, atol=1e-5)
    # Refreshing from the float model reaches the fused weights and biases.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1)
    refresh_quantized(twin, model)
    expected = torch.cat([source.q_proj.bias, source.k_proj.bias, source.v_proj.bias])
    assert torch.equal(attention.qkv_proj.bias, expected)
    for (name, a), (_, b) in zip(twin.state_dict().items(), quantize_model(model, mode, compute_dtype=torch.float32)
                                 .state_dict().items()):
        assert torch.equal(a, b), name


def test_projections_of_different_kinds_stay_separate():
    model = small_model()
    attention = "model.layers.0.self_attn"
    weight = model.get_submodule(f"{attention}.q_proj").weight.detach()
    signed = quantize_int4(weight, 32)  # rewritten as Q4_0 holds it: codes in [-8, 7], no zero
    signed = GroupQuantized(signed.values - 8, signed.scales, None, 32)
    packed = {f"{attention}.q_proj": signed,
              f"{attention}.k_proj": quantize_int4(model.get_submodule(f"{attention}.k_proj").weight, 32)}
    twin = quantize_model(model, "int4", packed=packed, keep_float=True)
    layers = twin.get_submodule(attention)._modules
    assert "qkv_proj" not in layers and isinstance(layers["q_proj"], Int4Linear)
    assert isinstance(layers["v_proj"], nn.Linear)  # left in float: nothing to fuse with
    with torch.no_grad():
        assert torch.isfinite(twin(torch.tensor([[1, 2, 3]]))).all()
