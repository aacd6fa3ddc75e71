"""YAML recipes and their overrides, shared by the training verbs.

A recipe is a YAML mapping (see configs/). Flags and `KEY=VALUE` arguments override it with
dotted keys into the nesting (`optim.lr=3e-3`); values are read as YAML (numbers, true/false, lists).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

__all__ = ["apply_overrides", "read_recipe", "set_key"]


def read_recipe(path: str | Path) -> dict[str, Any]:
    """The mapping in a YAML recipe file (empty file: empty mapping)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: invalid YAML ({error})") from None
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
            raise ValueError(f"override {item!r}: invalid YAML value ({error})") from None
        except ValueError as error:
            raise ValueError(f"override {item!r}: {error}") from None
    return data
