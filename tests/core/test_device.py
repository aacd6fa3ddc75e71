"""Device and dtype names: what users type after --device and --dtype."""

from __future__ import annotations

import pytest
import torch

from lmforge.core.device import parse_device, parse_dtype


def test_known_devices_and_auto():
    assert parse_device("cpu") == torch.device("cpu")
    assert parse_device("auto") == parse_device(None) == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert parse_device(torch.device("cpu")) == torch.device("cpu")


@pytest.mark.parametrize("name", ["tpu", "gpu0", "cuda:x", ""])
def test_an_unknown_device_is_a_value_error_naming_it(name):
    with pytest.raises(ValueError, match=f"unknown device {name!r}; use cpu, cuda, cuda:N or auto"):
        parse_device(name)


def test_cuda_without_a_cuda_device_is_refused_up_front(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for name in ("cuda", "cuda:1"):
        with pytest.raises(ValueError, match=f"device {name!r}: no CUDA device is available here"):
            parse_device(name)


def test_dtypes_by_name():
    assert parse_dtype("bf16") is torch.bfloat16 and parse_dtype("Float32") is torch.float32
    with pytest.raises(ValueError, match="unknown dtype 'float99'; choose one of bf16, bfloat16"):
        parse_dtype("float99")
