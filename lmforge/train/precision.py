"""Mixed precision for training forwards."""

from __future__ import annotations

import contextlib
from typing import Any

import torch


class autocast:  # noqa: N801 - used like torch.autocast
    """bf16 autocast on CPU or GPU (weights and optimizer stay float32); float32 is a no-op.

    On CPU, PyTorch's fused (flash) attention kernel is about 2x slower in bf16 than in fp32, and
    slower than the plain math path, so bf16 on CPU also selects the math attention backend.
    Reusable: enter it around every forward.
    """

    def __init__(self, device: torch.device, dtype: str) -> None:
        self.device, self.enabled = device, dtype not in ("float32", "fp32")
        self._stack: contextlib.ExitStack | None = None

    def __enter__(self) -> None:
        self._stack = contextlib.ExitStack()
        if self.enabled:
            self._stack.enter_context(torch.autocast(device_type=self.device.type, dtype=torch.bfloat16))
            if self.device.type == "cpu":
                from torch.nn.attention import SDPBackend, sdpa_kernel

                self._stack.enter_context(sdpa_kernel([SDPBackend.MATH]))

    def __exit__(self, *exc: Any) -> None:
        assert self._stack is not None
        self._stack.close()
