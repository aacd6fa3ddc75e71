"""LoRA adapters in Hugging Face PEFT's layout: `adapter_config.json` + `adapter_model.safetensors`.

Keys are `base_model.model.<module name>.lora_A.weight` / `.lora_B.weight`, where the module name is
the Hugging Face one (our models use HF names), so `peft.PeftModel.from_pretrained(hf_model, folder)`
loads what we save and `load_adapter` loads what PEFT saves.

Adapter folders may come from strangers: the config is size-capped and type-checked, and every
tensor's name and shape is checked against the model from the safetensors header before any
tensor is read.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from lmforge.model.lora import LoRALinear, apply_lora, lora_modules, resolve_targets
from lmforge.core.files import write_folder_atomically

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PREFIX = "base_model.model."
MAX_CONFIG_BYTES = 1 << 20

__all__ = ["ADAPTER_CONFIG", "ADAPTER_WEIGHTS", "adapter_config", "is_adapter_folder", "load_adapter",
           "read_adapter_config", "save_adapter", "write_adapter"]


def is_adapter_folder(path: str | os.PathLike) -> bool:
    path = Path(path)
    return path.is_dir() and (path / ADAPTER_CONFIG).is_file()


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------
def adapter_config(model: nn.Module, base_model_name_or_path: str | None = None) -> dict[str, Any]:
    """PEFT's LoraConfig as a dict, read off the wrapped layers (they must share rank and alpha)."""
    modules = lora_modules(model)
    if not modules:
        raise ValueError("the model has no LoRA layers to save")
    settings = {(m.rank, m.alpha, m.dropout_p, m.use_rslora) for m in modules.values()}
    if len(settings) != 1:
        raise ValueError(f"LoRA layers differ in rank/alpha/dropout ({sorted(settings)}); PEFT's layout needs one setting")
    rank, alpha, dropout, rslora = settings.pop()
    family = getattr(getattr(model, "config", None), "family", "llama")
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model_name_or_path,
        "revision": None,
        "inference_mode": True,
        "r": rank,
        "lora_alpha": alpha if not float(alpha).is_integer() else int(alpha),
        "lora_dropout": dropout,
        "target_modules": sorted({name.rsplit(".", 1)[-1] for name in modules}),
        "exclude_modules": None,
        "fan_in_fan_out": family == "gpt2",  # HF GPT-2 uses Conv1D ([in, out]) base layers
        "bias": "none",
        "use_rslora": rslora,
        "use_dora": False,
        "modules_to_save": None,
        "init_lora_weights": True,
        "layers_to_transform": None,
        "layers_pattern": None,
        "rank_pattern": {},
        "alpha_pattern": {},
        "lora_bias": False,
    }


def write_adapter(model: nn.Module, folder: str | os.PathLike, base_model_name_or_path: str | None = None) -> None:
    """Write the two adapter files into an existing folder (no atomicity; see `save_adapter`)."""
    folder = Path(folder)
    config = adapter_config(model, base_model_name_or_path)
    modules = lora_modules(model)
    names = set(modules)
    # A fully qualified name only when a suffix would also pick layers we did not wrap.
    all_linear = {n for n, m in model.named_modules() if isinstance(m, (nn.Linear, LoRALinear))}
    if {n for n in all_linear if n.rsplit(".", 1)[-1] in config["target_modules"]} != names:
        config["target_modules"] = sorted(names)
    tensors = {}
    for name, module in modules.items():
        tensors[f"{PREFIX}{name}.lora_A.weight"] = module.lora_A.weight.detach().contiguous().cpu()
        tensors[f"{PREFIX}{name}.lora_B.weight"] = module.lora_B.weight.detach().contiguous().cpu()
    (folder / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    save_file(tensors, str(folder / ADAPTER_WEIGHTS), metadata={"format": "pt"})


def save_adapter(model: nn.Module, folder: str | os.PathLike, base_model_name_or_path: str | None = None) -> Path:
    """Write a PEFT adapter folder atomically (built aside, then renamed over `folder`)."""
    return write_folder_atomically(folder, lambda tmp: write_adapter(model, tmp, base_model_name_or_path))


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------
def read_adapter_config(folder: str | os.PathLike) -> dict[str, Any]:
    """Read and check adapter_config.json; refuse PEFT features this loader does not implement."""
    path = Path(folder) / ADAPTER_CONFIG
    if not path.is_file():
        raise FileNotFoundError(f"{folder} has no {ADAPTER_CONFIG} (not a PEFT adapter folder)")
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise ValueError(f"{path}: implausibly large")
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(config, dict):
        raise ValueError(f"{path}: expected a JSON object")

    def field(key: str, kinds: tuple[type, ...], default: Any = None) -> Any:
        value = config.get(key, default)
        if not isinstance(value, kinds) or isinstance(value, bool) and bool not in kinds:
            raise ValueError(f"{path}: field {key!r} has the wrong type ({value!r})")
        return value

    if config.get("peft_type") != "LORA":
        raise ValueError(f"{path}: peft_type {config.get('peft_type')!r} is not supported (only LORA)")
    rank = field("r", (int,))
    if rank <= 0 or rank > 65536:
        raise ValueError(f"{path}: field 'r' must be a positive rank, got {rank}")
    field("lora_alpha", (int, float), 8)
    dropout = field("lora_dropout", (int, float), 0.0)
    if not 0 <= dropout < 1:
        raise ValueError(f"{path}: field 'lora_dropout' must be in [0, 1), got {dropout}")
    targets = config.get("target_modules")
    if not (isinstance(targets, str) or (isinstance(targets, list) and targets and all(isinstance(t, str) for t in targets))):
        raise ValueError(f"{path}: field 'target_modules' must be a string or a list of module names")
    field("use_rslora", (bool,), False)
    unsupported = {
        "use_dora": config.get("use_dora") not in (None, False),
        "bias": config.get("bias", "none") != "none",
        "modules_to_save": bool(config.get("modules_to_save")),
        "rank_pattern": bool(config.get("rank_pattern")),
        "alpha_pattern": bool(config.get("alpha_pattern")),
        "layers_to_transform": config.get("layers_to_transform") is not None,
        "lora_bias": config.get("lora_bias") not in (None, False),
        "exclude_modules": bool(config.get("exclude_modules")),
        "target_parameters": bool(config.get("target_parameters")),
    }
    bad = [key for key, flag in unsupported.items() if flag]
    if bad:
        raise ValueError(f"{path}: PEFT option(s) {', '.join(bad)} are not supported by lmforge's LoRA loader")
    return config


def load_adapter(model: nn.Module, folder: str | os.PathLike) -> list[str]:
    """Wrap `model`'s target layers as the adapter says and load its weights; return wrapped names.

    Everything is checked (config, tensor names, shapes from the safetensors header) before the
    model is touched, so a bad adapter leaves the model as it was.
    """
    folder = Path(folder)
    config = read_adapter_config(folder)
    weights = folder / ADAPTER_WEIGHTS
    if not weights.is_file():
        pickled = folder / "adapter_model.bin"
        hint = " (adapter_model.bin is pickled and never loaded; convert it to safetensors)" if pickled.exists() else ""
        raise FileNotFoundError(f"{folder} has no {ADAPTER_WEIGHTS}{hint}")
    targets = config["target_modules"]
    if isinstance(targets, list):  # PEFT lists leaf names, or full names where that is needed
        targets = [t.removeprefix(PREFIX) for t in targets]
    rank = config["r"]
    names = resolve_targets(model, targets)
    expected: dict[str, tuple[int, int]] = {}
    for name in names:
        layer = model.get_submodule(name)
        expected[f"{PREFIX}{name}.lora_A.weight"] = (rank, layer.in_features)
        expected[f"{PREFIX}{name}.lora_B.weight"] = (layer.out_features, rank)
    try:
        with safe_open(weights, framework="pt") as handle:
            keys = set(handle.keys())
            missing, unexpected = sorted(set(expected) - keys), sorted(keys - set(expected))
            if missing or unexpected:
                raise ValueError(f"{weights}: adapter tensors do not match the model: "
                                 f"missing {missing[:3]}, unexpected {unexpected[:3]}")
            for key, shape in expected.items():
                found = tuple(handle.get_slice(key).get_shape())
                if found != shape:
                    raise ValueError(f"{weights}: tensor {key!r} has shape {list(found)}, the model needs {list(shape)}")
            tensors = {key: handle.get_tensor(key) for key in expected}
    except (ValueError, FileNotFoundError):
        raise
    except Exception as error:  # safetensors raises its own SafetensorError for a corrupt header
        if type(error).__name__ == "SafetensorError" or isinstance(error, OSError):
            raise ValueError(f"{weights}: not a readable safetensors file ({error})") from None
        raise
    apply_lora(model, targets, rank=rank, alpha=float(config.get("lora_alpha", 8)),
               dropout=float(config.get("lora_dropout", 0.0)), use_rslora=bool(config.get("use_rslora", False)))
    modules = lora_modules(model)
    with torch.no_grad():
        for name in names:
            for part in ("lora_A", "lora_B"):
                param = getattr(modules[name], part).weight
                param.copy_(tensors[f"{PREFIX}{name}.{part}.weight"].to(param.dtype))
    return names
