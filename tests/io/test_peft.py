"""PEFT-layout adapters: HF `peft` loads ours onto `transformers` models, we load theirs; bad files fail cleanly."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from lmforge.core.config import ModelConfig
from lmforge.io import peft as lmpeft
from lmforge.io.hf import save_pretrained
from lmforge.io.peft import ADAPTER_CONFIG, ADAPTER_WEIGHTS, load_adapter, read_adapter_config, save_adapter
from lmforge.model.lora import apply_lora, lora_modules
from lmforge.model.transformer import Transformer, init_weights

CONFIG = ModelConfig(family="llama", vocab_size=128, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=128,
                     max_seq_len=64, tie_embeddings=True, rope_theta=10000.0, norm_eps=1e-5)


def tiny(seed: int = 0) -> Transformer:
    model = Transformer(CONFIG)
    init_weights(model, seed=seed)
    return model.eval()


def randomize_adapters(model, seed: int = 1) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in lora_modules(model).values():
            for layer in (module.lora_A, module.lora_B):
                layer.weight.copy_(torch.randn(layer.weight.shape, generator=generator) * 0.1)


def hf_model(folder):
    from transformers import AutoModelForCausalLM

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()


IDS = torch.tensor([[1, 5, 9, 77, 3, 100, 42, 8, 15, 16]])


@pytest.mark.parametrize("targets", ["all-linear", ["q_proj", "v_proj"]])
def test_peft_loads_our_adapter_onto_the_transformers_model(tmp_path, targets):
    from peft import PeftModel

    model = tiny()
    save_pretrained(model, None, tmp_path / "base")
    apply_lora(model, targets, rank=4, alpha=12.0, dropout=0.05)
    randomize_adapters(model)
    model.eval()
    save_adapter(model, tmp_path / "adapter", base_model_name_or_path=str(tmp_path / "base"))
    with torch.no_grad():
        ours = model(IDS)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs_model = PeftModel.from_pretrained(hf_model(tmp_path / "base"), tmp_path / "adapter").eval()
    with torch.no_grad():
        theirs = theirs_model(IDS).logits
        base = hf_model(tmp_path / "base")(IDS).logits
    torch.testing.assert_close(theirs, ours, atol=1e-4, rtol=0)
    assert (base - ours).abs().max() > 1e-2  # the adapter matters, so the match is not trivial


def test_adapter_files_use_peft_names_and_config(tmp_path):
    model = tiny()
    apply_lora(model, ["q_proj", "o_proj"], rank=2, alpha=4.0)
    save_adapter(model, tmp_path / "adapter", base_model_name_or_path="smollm2-135m-instruct")
    config = json.loads((tmp_path / "adapter" / ADAPTER_CONFIG).read_text())
    assert config["peft_type"] == "LORA" and config["task_type"] == "CAUSAL_LM"
    assert config["r"] == 2 and config["lora_alpha"] == 4 and config["target_modules"] == ["o_proj", "q_proj"]
    assert config["base_model_name_or_path"] == "smollm2-135m-instruct"
    with safe_open(tmp_path / "adapter" / ADAPTER_WEIGHTS, framework="pt") as handle:
        keys = set(handle.keys())
        assert handle.get_slice("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight").get_shape() == [2, 64]
    assert keys == {f"base_model.model.model.layers.{i}.self_attn.{p}.lora_{ab}.weight"
                    for i in range(2) for p in ("q_proj", "o_proj") for ab in "AB"}


def test_we_load_an_adapter_saved_by_peft(tmp_path):
    from peft import LoraConfig, get_peft_model

    model = tiny()
    save_pretrained(model, None, tmp_path / "base")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        peft_model = get_peft_model(hf_model(tmp_path / "base"),
                                    LoraConfig(r=4, lora_alpha=8, target_modules=["k_proj", "down_proj"], lora_dropout=0.0))
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.1)
    peft_model.save_pretrained(tmp_path / "theirs")
    with torch.no_grad():
        theirs = peft_model.eval()(IDS).logits
    names = load_adapter(model, tmp_path / "theirs")
    assert sorted(n.rsplit(".", 1)[-1] for n in names) == ["down_proj", "down_proj", "k_proj", "k_proj"]
    with torch.no_grad():
        torch.testing.assert_close(model(IDS), theirs, atol=1e-4, rtol=0)


def test_bad_adapters_fail_clearly_and_leave_the_model_untouched(tmp_path):
    model = tiny()
    apply_lora(model, ["q_proj"], rank=4, alpha=8.0)
    save_adapter(model, tmp_path / "good")

    # A tensor of the wrong shape: named, and the target model is not wrapped half-way.
    bad = tmp_path / "bad-shape"
    bad.mkdir()
    (bad / ADAPTER_CONFIG).write_text((tmp_path / "good" / ADAPTER_CONFIG).read_text())
    with safe_open(tmp_path / "good" / ADAPTER_WEIGHTS, framework="pt") as handle:
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}
    key = "base_model.model.model.layers.1.self_attn.q_proj.lora_B.weight"
    tensors[key] = torch.zeros(3, 4)
    save_file(tensors, str(bad / ADAPTER_WEIGHTS))
    target = tiny()
    with pytest.raises(ValueError, match=r"q_proj\.lora_B\.weight.*shape \[3, 4\]"):
        load_adapter(target, bad)
    assert not lora_modules(target)

    # Options we do not implement are refused by name; so are foreign PEFT types and corrupt weights.
    config = json.loads((tmp_path / "good" / ADAPTER_CONFIG).read_text())
    for change, message in (({"use_dora": True}, "use_dora"), ({"peft_type": "IA3"}, "IA3"), ({"r": "8"}, "'r'"),
                            ({"modules_to_save": ["lm_head"]}, "modules_to_save")):
        (bad / ADAPTER_CONFIG).write_text(json.dumps({**config, **change}))
        with pytest.raises(ValueError, match=message):
            read_adapter_config(bad)
    (bad / ADAPTER_CONFIG).write_text(json.dumps(config))
    (bad / ADAPTER_WEIGHTS).write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header")
    with pytest.raises(ValueError, match="safetensors"):
        load_adapter(tiny(), bad)
    (bad / ADAPTER_WEIGHTS).unlink()
    with pytest.raises(FileNotFoundError, match=ADAPTER_WEIGHTS):
        load_adapter(tiny(), bad)


def test_saving_over_an_adapter_is_all_or_nothing(tmp_path, monkeypatch):
    model = tiny()
    apply_lora(model, ["q_proj"], rank=2, alpha=4.0)
    folder = save_adapter(model, tmp_path / "adapter")
    before = (folder / ADAPTER_WEIGHTS).read_bytes()

    def crash(*args, **kwargs):
        (args[1] / ADAPTER_CONFIG).write_text("{half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(lmpeft, "write_adapter", crash)
    with pytest.raises(OSError):
        save_adapter(model, folder)
    assert (folder / ADAPTER_WEIGHTS).read_bytes() == before
    assert json.loads((folder / ADAPTER_CONFIG).read_text())["r"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]  # no temporary folder left behind


@pytest.mark.slow
def test_peft_loads_our_smollm_adapter(tmp_path, smollm, hf_smollm):
    """The same check on the real SmolLM2 model (HF weights from the GGUF, as transformers reads it)."""
    from peft import PeftModel

    model, tokenizer = smollm
    base = Transformer.from_state_dict(model.config, model.state_dict())
    apply_lora(base, "all-linear", rank=8, alpha=16.0)
    randomize_adapters(base)
    base.eval()
    save_adapter(base, tmp_path / "adapter")
    ids = torch.tensor([tokenizer.encode("The capital of France is Paris, and 12 + 30 = 42.")])
    with torch.no_grad():
        ours = base(ids)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import copy

        theirs_model = PeftModel.from_pretrained(copy.deepcopy(hf_smollm), tmp_path / "adapter").eval()
    with torch.no_grad():
        theirs = theirs_model(ids).logits
    torch.testing.assert_close(theirs, ours, atol=2e-3, rtol=0)
