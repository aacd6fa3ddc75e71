"""LoRA by wrapping linear layers: identity at init, merge == base + adapter, targets, trainable counts."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lmforge.core.config import ModelConfig
from lmforge.model.lora import (
    LoRALinear,
    adapters_disabled,
    apply_lora,
    count_parameters,
    lora_modules,
    lora_state_dict,
    merge_lora,
    merged_state_dict,
    resolve_targets,
)
from lmforge.model.transformer import Transformer, init_weights

CONFIGS = {
    "llama": ModelConfig(family="llama", vocab_size=96, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=128,
                         max_seq_len=64, tie_embeddings=True),
    "qwen2": ModelConfig(family="llama", vocab_size=96, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=128,
                         max_seq_len=64, tie_embeddings=False, attn_bias=True),
    "gpt2": ModelConfig(family="gpt2", vocab_size=96, dim=64, n_layers=2, n_heads=4, max_seq_len=64, attn_bias=True,
                        mlp_bias=True),
}


def tiny(kind: str = "llama", seed: int = 0) -> Transformer:
    model = Transformer(CONFIGS[kind])
    init_weights(model, seed=seed)
    return model.eval()


def randomize_adapters(model: nn.Module, seed: int = 1) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in lora_modules(model).values():
            module.lora_A.weight.copy_(torch.randn(module.lora_A.weight.shape, generator=generator) * 0.1)
            module.lora_B.weight.copy_(torch.randn(module.lora_B.weight.shape, generator=generator) * 0.1)


@pytest.mark.parametrize("kind", sorted(CONFIGS))
def test_merged_model_gives_the_logits_of_base_plus_adapter(kind):
    model = tiny(kind)
    base_keys = set(model.state_dict())
    apply_lora(model, "all-linear", rank=4, alpha=8.0, dropout=0.1)
    randomize_adapters(model)
    model.eval()  # dropout off: eval-mode logits are the deterministic base + adapter
    ids = torch.randint(0, 96, (2, 12), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        with_adapter = model(ids)
        expected_merged = merged_state_dict(model)
    assert lora_modules(model), "nothing was wrapped"
    merge_lora(model)
    assert not lora_modules(model)
    assert all(type(m) is nn.Linear for n, m in model.named_modules() if n.endswith(("proj", "c_attn", "c_fc")))
    assert set(model.state_dict()) == base_keys  # merged model is a plain model again, same names
    with torch.no_grad():
        merged = model(ids)
    torch.testing.assert_close(merged, with_adapter, atol=1e-4, rtol=0)
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, expected_merged[key], atol=1e-6, rtol=0)
    # The update really changed the model (so the comparison above is not trivially true).
    with torch.no_grad():
        assert (tiny(kind)(ids) - merged).abs().max() > 1e-2


def test_fresh_adapter_is_the_identity_and_only_adapters_get_gradients():
    model = tiny()
    ids = torch.randint(0, 96, (2, 10))
    with torch.no_grad():
        before = model(ids)
    names = apply_lora(model, ["q_proj", "v_proj"], rank=4, alpha=8.0)
    assert names == [f"model.layers.{i}.self_attn.{p}" for i in range(2) for p in ("q_proj", "v_proj")]
    with torch.no_grad():
        torch.testing.assert_close(model(ids), before, atol=0, rtol=0)  # B starts at zero

    trainable, total = count_parameters(model)
    config = CONFIGS["llama"]
    q_out, v_out = config.n_heads * config.head_size, config.kv_heads * config.head_size
    per_layer = 4 * (config.dim + q_out) + 4 * (config.dim + v_out)
    assert trainable == config.n_layers * per_layer
    assert total == config.num_parameters() + trainable

    model.train()
    model(ids).logsumexp(-1).mean().backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    assert with_grad and all(".lora_A." in n or ".lora_B." in n for n in with_grad)
    assert set(lora_state_dict(model)) == {f"{n}.lora_{ab}.weight" for n in names for ab in "AB"}


def test_base_parameters_keep_their_names_and_stay_shared():
    model = tiny()
    embedding = model.model.embed_tokens.weight
    q_weight = model.model.layers[0].self_attn.q_proj.weight
    apply_lora(model, "all-linear", rank=2, alpha=4.0)
    wrapped = model.model.layers[0].self_attn.q_proj
    assert isinstance(wrapped, LoRALinear) and wrapped.weight is q_weight  # adopted, not copied
    assert model.lm_head.weight is embedding and type(model.lm_head) is nn.Linear  # the head is never a target
    keys = set(model.state_dict())
    assert "model.layers.0.self_attn.q_proj.weight" in keys
    assert "model.layers.0.self_attn.q_proj.lora_A.weight" in keys
    assert not any("base_layer" in k for k in keys)


def test_target_selection_and_errors():
    model = tiny()
    assert len(resolve_targets(model, "all-linear")) == 2 * 7
    assert resolve_targets(model, r"model\.layers\.1\.mlp\.(up|down)_proj") == ["model.layers.1.mlp.up_proj",
                                                                                "model.layers.1.mlp.down_proj"]
    assert resolve_targets(model, ["mlp.gate_proj"]) == ["model.layers.0.mlp.gate_proj", "model.layers.1.mlp.gate_proj"]
    with pytest.raises(ValueError, match="qkv_proj.*match no linear layer"):
        resolve_targets(model, ["q_proj", "qkv_proj"])
    with pytest.raises(ValueError, match="select no linear layer"):
        resolve_targets(model, "nothing.*")
    apply_lora(model, ["q_proj"], rank=2, alpha=2.0)
    with pytest.raises(ValueError, match="already applied"):
        apply_lora(model, ["q_proj"], rank=2, alpha=2.0)
    with pytest.raises(ValueError, match="rank"):
        apply_lora(tiny(), ["q_proj"], rank=0, alpha=2.0)
    with pytest.raises(ValueError, match="no LoRA layers"):
        merge_lora(tiny())
    with pytest.raises(ValueError, match="lm_head: its weight is shared with model.embed_tokens"):
        apply_lora(tiny(), ["lm_head"], rank=2, alpha=2.0)  # merging would change the tied embedding too
    untied = tiny("qwen2")
    apply_lora(untied, ["lm_head"], rank=2, alpha=2.0)
    assert list(lora_modules(untied)) == ["lm_head"]


def test_dropout_acts_in_training_only_and_rslora_scaling():
    layer = LoRALinear(nn.Linear(16, 8), rank=4, alpha=8.0, dropout=0.5)
    nn.init.normal_(layer.lora_B.weight)
    x = torch.randn(4, 16)
    layer.eval()
    torch.testing.assert_close(layer(x), layer(x))
    layer.train()
    assert not torch.equal(layer(x), layer(x))
    assert LoRALinear(nn.Linear(16, 8), rank=4, alpha=8.0).scaling == 2.0
    assert LoRALinear(nn.Linear(16, 8), rank=4, alpha=8.0, use_rslora=True).scaling == 4.0


def test_adapters_disabled_gives_the_base_model_and_restores_the_adapters():
    model = tiny("llama")
    ids = torch.randint(0, 96, (2, 10), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        base = model(ids)
    apply_lora(model, "all-linear", rank=4, alpha=8)
    randomize_adapters(model)
    with torch.no_grad():
        adapted = model(ids)
        assert (adapted - base).abs().max() > 1e-3  # the adapters change the output
        with adapters_disabled(model):
            torch.testing.assert_close(model(ids), base, rtol=0, atol=1e-6)
        torch.testing.assert_close(model(ids), adapted, rtol=0, atol=0)
    with pytest.raises(ValueError, match="no LoRA layers"):
        with adapters_disabled(tiny("gpt2")):
            pass
