"""Model invariants: cached and uncached forward agree, masks behave, shapes and counts."""

from __future__ import annotations

import pytest
import torch

from lmforge.core.config import ModelConfig
from lmforge.model import Transformer, init_weights


@pytest.fixture(params=["llama", "gpt2"])
def model(request):
    config = ModelConfig(family=request.param, vocab_size=97, dim=64, n_layers=2, n_heads=4,
                         n_kv_heads=2 if request.param == "llama" else None, max_seq_len=64)
    m = Transformer(config)
    init_weights(m, seed=0)
    return m.eval()


def test_parameter_count_matches_config(model):
    assert sum(p.numel() for p in model.parameters()) == model.config.num_parameters()


def test_prefill_plus_decode_equals_full_forward(model):
    ids = torch.randint(0, 97, (2, 12))
    with torch.no_grad():
        full = model(ids)
        cache = model.new_cache(2, 32)
        parts = [model(ids[:, :5], cache=cache, starts=[0, 0])]
        for t in range(5, 12):
            parts.append(model(ids[:, t:t + 1], cache=cache, starts=[t, t]))
    assert (torch.cat(parts, 1) - full).abs().max() < 1e-5


def test_rows_at_different_lengths_decode_together(model):
    ids = torch.randint(0, 97, (2, 10))
    with torch.no_grad():
        full = model(ids)
        cache = model.new_cache(3, 32)
        model(ids[:1, :7], cache=cache, starts=[0], first_row=0)
        model(ids[1:, :4], cache=cache, starts=[0], first_row=1)
        step = model(torch.stack([ids[0, 7:8], ids[1, 4:5]]), cache=cache, starts=[7, 4])
        two = model(torch.stack([ids[0, 8:10], ids[1, 5:7]]), cache=cache, starts=[8, 5])
    assert (step[0, 0] - full[0, 7]).abs().max() < 1e-5
    assert (step[1, 0] - full[1, 4]).abs().max() < 1e-5
    assert (two[0] - full[0, 8:10]).abs().max() < 1e-5
    assert (two[1] - full[1, 5:7]).abs().max() < 1e-5


def test_move_row_keeps_sequences_intact(model):
    ids = torch.randint(0, 97, (2, 8))
    with torch.no_grad():
        full = model(ids[1:])
        cache = model.new_cache(2, 16)
        model(ids[:1, :6], cache=cache, starts=[0], first_row=0)
        model(ids[1:, :6], cache=cache, starts=[0], first_row=1)
        cache.move_row(1, 0)  # row 0 finished; row 1 takes its place
        out = model(ids[1:, 6:7], cache=cache, starts=[6], first_row=0)
    assert (out[0, 0] - full[0, 6]).abs().max() < 1e-5


def test_right_padding_mask_ignores_padding(model):
    ids = torch.randint(0, 97, (2, 9))
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[1, 5:] = False
    with torch.no_grad():
        padded = model(ids, padding_mask=mask)
        alone = model(ids[1:, :5])
    assert (padded[1, :5] - alone[0]).abs().max() < 1e-5


def test_context_limits_are_enforced(model):
    with pytest.raises(ValueError, match="exceeds the model context"):
        model(torch.zeros(1, 65, dtype=torch.long))
    cache = model.new_cache(1, 8)
    with pytest.raises(ValueError, match="KV cache length"):
        model(torch.zeros(1, 9, dtype=torch.long), cache=cache, starts=[0])


def test_invalid_configs_are_rejected():
    with pytest.raises(ValueError, match="multiple of n_kv_heads"):
        ModelConfig(n_heads=8, n_kv_heads=3)
    with pytest.raises(ValueError, match="family"):
        ModelConfig(family="bert")
    with pytest.raises(ValueError, match="unknown ModelConfig field"):
        ModelConfig.from_dict({"dim": 8, "wat": 1})


def test_bf16_forward_is_close_to_fp32(model):
    ids = torch.randint(0, 97, (1, 10))
    with torch.no_grad():
        ref = model(ids)
        low = model.to(torch.bfloat16)(ids).float()
    assert (low - ref).abs().max() < 0.1


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_packed_documents_compute_what_they_compute_alone(family):
    config = ModelConfig(family=family, vocab_size=97, dim=32, n_layers=2, n_heads=4,
                         n_kv_heads=2 if family == "llama" else 4, ffn_dim=64, max_seq_len=64)
    model = Transformer(config)
    init_weights(model, seed=0)
    model.eval()
    lengths = [5, 3, 6]
    ids = torch.randint(0, 97, (1, sum(lengths)))
    segments = torch.tensor([[k for k, n in enumerate(lengths, start=1) for _ in range(n)]])
    with torch.no_grad():
        packed = model(ids, segment_ids=segments)[0]
        start = 0
        for n in lengths:
            alone = model(ids[:, start:start + n])[0]
            assert (packed[start:start + n] - alone).abs().max() < 1e-5
            start += n
        unmasked = model(ids)[0]
    assert (unmasked[5:8] - packed[5:8]).abs().max() > 1e-3  # without segments the documents do mix
    with pytest.raises(ValueError, match="segment_ids"):
        model(ids, segment_ids=segments[:, :-1])
