"""YAML recipes and their overrides, shared by the training verbs.

A recipe is a YAML mapping (see configs/). Flags and `KEY=VALUE` arguments override it with
dotted keys into the nesting (`optim.lr=3e-3`); values are read as YAML (numbers, true/false, lists).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import yaml

__all__ = ["RUN_FLAGS", "add_run_flags", "apply_overrides", "default_recipe", "read_recipe", "recipe_keys", "recipe_yaml", "set_key", "yaml_problem"]


def yaml_problem(error: yaml.YAMLError | UnicodeDecodeError) -> str:
    """A YAML reading error in one line ("line 2, column 1: expected ',' or ']' ... (while parsing
    a flow sequence)"), where PyYAML's own text spans several lines with a picture of the spot."""
    problem = getattr(error, "problem", None)
    if not problem:
        return " ".join(str(error).split())
    mark, context = getattr(error, "problem_mark", None), getattr(error, "context", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return where + problem + (f" ({context})" if context else "")


def read_recipe(path: str | Path) -> dict[str, Any]:
    """The mapping in a YAML recipe file (empty file: empty mapping)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: invalid YAML ({yaml_problem(error)})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping at the top level")
    return data


def set_key(data: dict[str, Any], key: str, value: Any) -> None:
    """data[a][b] = value for key 'a.b', creating sections as needed."""
    node = data
    *parents, last = key.split(".")
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ValueError(f"{key}: {part!r} is not a section")
        node = child
    node[last] = value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `KEY=VALUE` strings (dotted keys, YAML values) to a nested dict, in order."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ValueError(f"override {item!r} is not KEY=VALUE")
        try:
            set_key(data, key, yaml.safe_load(raw) if raw != "" else "")
        except yaml.YAMLError as error:
            raise ValueError(f"override {item!r}: invalid YAML value ({yaml_problem(error)})") from None
        except ValueError as error:
            raise ValueError(f"override {item!r}: {error}") from None
    return data


def _plain(value: Any) -> Any:
    """Dataclasses, tuples and dicts as the plain dicts and lists YAML writes."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value


def default_recipe(cls: type) -> dict[str, Any]:
    """Every key of the recipe dataclass `cls` with its default (None for keys without one)."""
    values: dict[str, Any] = {}
    for item in dataclasses.fields(cls):
        if item.default is not dataclasses.MISSING:
            values[item.name] = item.default
        elif item.default_factory is not dataclasses.MISSING:
            values[item.name] = item.default_factory()
        else:
            values[item.name] = None
    return _plain(values)


def recipe_keys(cls: type, prefix: str = "") -> list[str]:
    """The dotted keys of a recipe dataclass, nested sections included ("optim.lr")."""
    keys = []
    for name, value in default_recipe(cls).items():
        if isinstance(value, dict):
            keys.extend(f"{prefix}{name}.{sub}" for sub in value)
        else:
            keys.append(prefix + name)
    return keys


class _RecipeDumper(yaml.SafeDumper):
    """Sections as blocks, lists on one line (`betas: [0.9, 0.95]`)."""


_RecipeDumper.add_representer(
    list, lambda dumper, value: dumper.represent_sequence("tag:yaml.org,2002:seq", value, flow_style=True))


def recipe_yaml(recipe: Any, header: str = "") -> str:
    """A recipe (a dict or a config dataclass) as YAML, keys in their declared order, after `header` comments."""
    comments = "".join(f"# {line}\n" if line else "#\n" for line in header.splitlines())
    return comments + yaml.dump(_plain(recipe), Dumper=_RecipeDumper, sort_keys=False, default_flow_style=False,
                                allow_unicode=True)


def add_run_flags(parser: Any, seed_help: str) -> None:
    """The flags every training verb ends with: --device, --dtype, --threads, --seed (what it seeds:
    `seed_help`), --resume, --quiet. The first four are recipe keys of the same name (`RUN_FLAGS`)."""
    parser.add_argument("--device", help="cpu, cuda or auto (default auto)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), help="bfloat16 = autocast (default float32)")
    parser.add_argument("--threads", type=int, help="CPU threads (default: none, PyTorch's own choice)")
    parser.add_argument("--seed", type=int, help=f"seed for {seed_help} (default 0)")
    parser.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in the run folder")
    parser.add_argument("--quiet", action="store_true", help="no progress output")


RUN_FLAGS = {"device": "device", "dtype": "dtype", "threads": "threads", "seed": "seed"}


def recipe_data(args: Any, flags: dict[str, str]) -> dict[str, Any]:
    """A recipe as a dict: the YAML file (--config, when the verb has it), then the flags that were
    given (`flags` maps an argparse name to a dotted key), then KEY=VALUE overrides."""
    config = getattr(args, "config", None)
    data: dict[str, Any] = read_recipe(config) if config else {}
    for flag, key in flags.items():
        value = getattr(args, flag, None)
        if value is not None:
            set_key(data, key, value)
    return apply_overrides(data, list(args.overrides))


def recipe_from_args(args: Any, flags: dict[str, str], default_lr: dict[str, float]) -> dict[str, Any]:
    """The recipe of a training verb (`recipe_data`). A step or time budget alone sets the run's
    length (epochs off unless given), and the learning rate defaults by method (`default_lr`:
    method -> lr; the method defaults to lora); weight decay to 0."""
    data = recipe_data(args, flags)
    if "epochs" not in data and (data.get("max_steps") is not None or data.get("time_budget_s") is not None):
        data["epochs"] = None
    optim = data.setdefault("optim", {})
    if isinstance(optim, dict):
        optim.setdefault("lr", default_lr.get(data.get("method", "lora"), default_lr["lora"]))
        optim.setdefault("weight_decay", 0.0)
    return data
