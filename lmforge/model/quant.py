"""Weight-only quantized layers, swapped in for `nn.Linear` / `nn.Embedding` by module replacement.

Every quantized weight starts as a `GroupQuantized`: exact small integers with a scale (and an
optional zero) per group of `group_size` inputs,

    w[n, k] = values[n, k] * scales[n, k // group_size] + zeros[n, k // group_size]

A tiny packing function per source makes one: `quantize_int8` and `quantize_int4` from float
weights here, and the GGUF block readers in `lmforge.io.gguf` (Q4_0, Q4_1, Q8_0) without any
requantization. Layers then hold it in the layout of PyTorch's own CPU kernels:

- `Int8Linear`: one int8 per weight and one scale per output channel, on
  `torch.ops.aten._weight_int8pack_mm`.
- `Int4Linear`: 4-bit weights with a scale and zero per group, on
  `_weight_int4pack_mm_for_cpu`, which computes w = (q - 8) * scale + zero for q in [0, 15].
  Signed 4-bit values (Q4_0), unsigned values with a minimum (Q4_1) and 8-bit grouped values
  (Q8_0, as two 4-bit planes: v = 16 * hi + lo, each plane with its own scale and zero) all map
  onto that form exactly.
- `QuantEmbedding`: the token lookup, a gather of int8 rows scaled per group.

The kernels are fast with bfloat16 activations (the default `compute_dtype`); with float32 they
are exact but slow. `kernel_support` probes them once per device; where they are missing (another
device, a PyTorch without them, an int4 group size other than 32, 64, 128 or 256) the layers
dequantize on the fly instead.
"""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

MODES = ("none", "int8", "int4")
INT4_KERNEL_GROUPS = (32, 64, 128, 256)  # the group sizes _weight_int4pack_mm_for_cpu takes; others run the fallback


# --------------------------------------------------------------------------------------------
# The neutral representation and the packing functions from float weights
# --------------------------------------------------------------------------------------------
@dataclass
class GroupQuantized:
    """values [N, K] int8 (exact integers), scales [N, K / group_size] float32, zeros like scales or None."""

    values: torch.Tensor
    scales: torch.Tensor
    zeros: torch.Tensor | None
    group_size: int

    def __post_init__(self) -> None:
        N, K = self.values.shape
        if self.values.dtype != torch.int8:
            raise ValueError(f"quantized values must be int8, got {self.values.dtype}")
        if self.group_size <= 0 or K % self.group_size:
            raise ValueError(f"group size {self.group_size} does not divide the input width {K}")
        groups = (N, K // self.group_size)
        if tuple(self.scales.shape) != groups or (self.zeros is not None and tuple(self.zeros.shape) != groups):
            raise ValueError(f"scales/zeros must have shape {groups} for values {tuple(self.values.shape)}")

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.values.shape)

    def dequantize(self) -> torch.Tensor:
        """The float32 weight [N, K] (the same arithmetic as gguf's numpy dequantization)."""
        N, K = self.values.shape
        grouped = self.values.view(N, -1, self.group_size).float() * self.scales.float()[..., None]
        if self.zeros is not None:
            grouped = grouped + self.zeros.float()[..., None]
        return grouped.view(N, K)

    def map_rows(self, fn) -> "GroupQuantized":
        """Apply a row rearrangement `fn` (e.g. undoing llama.cpp's Q/K permutation) to every part."""
        zeros = fn(self.zeros) if self.zeros is not None else None
        return GroupQuantized(fn(self.values).contiguous(), fn(self.scales).contiguous(),
                              zeros.contiguous() if zeros is not None else None, self.group_size)


def _float_matrix(weight: torch.Tensor) -> torch.Tensor:
    """`weight` as float32, refused unless it is a finite [N, K] matrix."""
    if weight.dim() != 2:
        raise ValueError(f"only 2-D weights [out, in] can be quantized, got shape {tuple(weight.shape)}")
    w = weight.detach().float()
    if not torch.isfinite(w).all():
        raise ValueError(f"a weight of shape {tuple(w.shape)} holds NaN or infinite values; it cannot be quantized")
    return w


def quantize_int8(weight: torch.Tensor) -> GroupQuantized:
    """Symmetric int8, one scale per output channel (a single group spanning the whole row)."""
    w = _float_matrix(weight)
    scales = (w.abs().amax(dim=1, keepdim=True) / 127).clamp(min=1e-12)  # [N, 1]
    values = torch.round(w / scales).clamp(-127, 127).to(torch.int8)
    return GroupQuantized(values, scales, None, w.shape[1])


def quantize_int4(weight: torch.Tensor, group_size: int = 32) -> GroupQuantized:
    """Asymmetric 4-bit per group: scale = (max - min) / 15, zero = min, values in [0, 15]."""
    w = _float_matrix(weight)
    N, K = w.shape
    if group_size <= 0 or K % group_size:
        raise ValueError(f"int4 group size {group_size} does not divide the input width {K}")
    grouped = w.view(N, -1, group_size)
    low, high = grouped.amin(dim=-1), grouped.amax(dim=-1)  # [N, G]
    scales = ((high - low) / 15).clamp(min=1e-12)
    values = torch.round((grouped - low[..., None]) / scales[..., None]).clamp(0, 15)
    return GroupQuantized(values.to(torch.int8).view(N, K), scales, low, group_size)


# --------------------------------------------------------------------------------------------
# Kernel capability probe
# --------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def kernel_support(device_type: str = "cpu") -> frozenset[str]:
    """Which packed kernels work here ({"int8", "int4"} on a recent CPU PyTorch), checked by
    running each once on a small problem against the plain computation."""
    if device_type != "cpu":
        return frozenset()
    found = set()
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(3, 64, generator=generator).to(torch.bfloat16)
    try:
        values = torch.randint(-127, 128, (32, 64), generator=generator, dtype=torch.int8)
        scales = torch.rand(32, generator=generator).to(torch.bfloat16)
        got = torch.ops.aten._weight_int8pack_mm(x, values, scales).float()
        want = (x.float() @ values.float().T) * scales.float()
        if torch.allclose(got, want, rtol=2e-2, atol=2e-2 * want.abs().max().item()):
            found.add("int8")
    except (AttributeError, RuntimeError, NotImplementedError):
        pass
    try:
        q = torch.randint(0, 16, (32, 64), generator=generator, dtype=torch.int32)
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1)
        sz = torch.rand(2, 32, 2, generator=generator).to(torch.bfloat16)
        got = torch.ops.aten._weight_int4pack_mm_for_cpu(x, packed, 32, sz).float()
        scale = sz[..., 0].float().repeat_interleave(32, 0).T
        zero = sz[..., 1].float().repeat_interleave(32, 0).T
        want = x.float() @ ((q.float() - 8) * scale + zero).T
        if torch.allclose(got, want, rtol=2e-2, atol=2e-2 * want.abs().max().item()):
            found.add("int4")
    except (AttributeError, RuntimeError, NotImplementedError):
        pass
    return frozenset(found)


# --------------------------------------------------------------------------------------------
# Layers
# --------------------------------------------------------------------------------------------
class _QuantLinearBase(nn.Module):
    """Shared plumbing: flatten to [M, K] in the compute dtype, add the bias, restore shape and dtype."""

    in_features: int
    out_features: int

    def __init__(self, in_features: int, out_features: int, bias: torch.Tensor | None,
                 compute_dtype: torch.dtype) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.compute_dtype = compute_dtype
        self.bias = nn.Parameter(bias.detach().clone(), requires_grad=False) if bias is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_features:
            raise ValueError(f"input of width {x.shape[-1]} for a quantized layer of {self.in_features} inputs "
                             f"(input shape {tuple(x.shape)})")
        flat = x.reshape(-1, self.in_features).to(self.compute_dtype)
        y = self._matmul(flat)
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return y.view(*x.shape[:-1], self.out_features).to(x.dtype)

    def _matmul(self, x: torch.Tensor) -> torch.Tensor:  # [M, K] -> [M, N]
        raise NotImplementedError

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"compute_dtype={self.compute_dtype}, kernel={self.kernel}")


class Int8Linear(_QuantLinearBase):
    """y = (x @ q^T) * scale + bias with q int8 [N, K] and one scale per output channel."""

    def __init__(self, quantized: GroupQuantized, bias: torch.Tensor | None = None,
                 compute_dtype: torch.dtype = torch.bfloat16) -> None:
        N, K = quantized.shape
        if quantized.group_size != K or quantized.zeros is not None:
            quantized = quantize_int8(quantized.dequantize())  # per-channel symmetric is what the kernel reads
        super().__init__(K, N, bias, compute_dtype)
        self.kernel = "int8" in kernel_support(quantized.values.device.type)
        self.register_buffer("weight", quantized.values.contiguous())
        self.register_buffer("scales", quantized.scales[:, 0].to(compute_dtype).contiguous())

    def _matmul(self, x: torch.Tensor) -> torch.Tensor:
        if self.kernel:
            return torch.ops.aten._weight_int8pack_mm(x, self.weight, self.scales)
        return F.linear(x, self.weight.to(x.dtype)) * self.scales

    def dequantize(self) -> torch.Tensor:
        return self.weight.float() * self.scales.float()[:, None]


def _nibble_planes(q: GroupQuantized) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Express q as planes (codes in [0, 15], scale, zero) with w = sum over planes of (code - 8) * scale + zero."""
    values, scales = q.values.to(torch.int32), q.scales.float()
    zeros = q.zeros.float() if q.zeros is not None else torch.zeros_like(scales)
    low, high = int(values.min()), int(values.max())
    if 0 <= low and high <= 15:  # unsigned 4-bit (Q4_1, quantize_int4): zero shifts by 8 steps
        return [(values, scales, zeros + 8 * scales)]
    if -8 <= low and high <= 7:  # signed 4-bit (Q4_0)
        return [(values + 8, scales, zeros)]
    # 8-bit (Q8_0): v = 16 * hi + lo with hi in [-8, 7] and lo in [0, 15]
    hi, lo = values >> 4, values & 15
    return [(hi + 8, 16 * scales, torch.zeros_like(scales)), (lo, scales, zeros + 8 * scales)]


class Int4Linear(_QuantLinearBase):
    """Group-wise 4-bit weights on PyTorch's int4 CPU kernel (one plane, or two for 8-bit groups).

    Two planes are stored side by side along the input dimension and the input is repeated to
    match, so one kernel call computes x @ (16 * hi * s)^T + x @ (lo * s + z)^T.
    """

    def __init__(self, quantized: GroupQuantized, bias: torch.Tensor | None = None,
                 compute_dtype: torch.dtype = torch.bfloat16) -> None:
        N, K = quantized.shape
        super().__init__(K, N, bias, compute_dtype)
        planes = _nibble_planes(quantized)
        self.planes, self.group_size = len(planes), quantized.group_size
        codes = torch.cat([p[0] for p in planes], dim=1)  # [N, planes * K]
        scales = torch.cat([p[1] for p in planes], dim=1)  # [N, planes * G]
        zeros = torch.cat([p[2] for p in planes], dim=1)
        self.padded_out = -N % 16  # the kernel packs rows in tiles of 16
        self.kernel = ("int4" in kernel_support(quantized.values.device.type)
                       and quantized.group_size in INT4_KERNEL_GROUPS)
        if self.kernel:
            codes = F.pad(codes, (0, 0, 0, self.padded_out))
            scales, zeros = F.pad(scales, (0, 0, 0, self.padded_out)), F.pad(zeros, (0, 0, 0, self.padded_out))
            weight = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes.contiguous(), 1)
        else:
            weight = codes.to(torch.uint8)
        self.register_buffer("weight", weight)
        # [groups, N, 2] as the kernel wants it: scale then zero.
        self.register_buffer("scales_and_zeros", torch.stack((scales, zeros), dim=-1).transpose(0, 1)
                             .to(compute_dtype).contiguous())

    def _matmul(self, x: torch.Tensor) -> torch.Tensor:
        if self.planes > 1:
            x = x.repeat(1, self.planes)
        if self.kernel:
            y = torch.ops.aten._weight_int4pack_mm_for_cpu(x, self.weight, self.group_size, self.scales_and_zeros)
            return y[:, :self.out_features] if self.padded_out else y
        return F.linear(x, self._plane_weight(x.dtype))

    def _plane_weight(self, dtype: torch.dtype) -> torch.Tensor:  # fallback: [N, planes * K]
        scale, zero = self.scales_and_zeros.to(dtype).transpose(0, 1).unbind(-1)  # [N, G] each
        codes = self.weight.to(dtype).view(self.out_features, -1, self.group_size)
        return ((codes - 8) * scale[..., None] + zero[..., None]).view(self.out_features, -1)

    def dequantize(self) -> torch.Tensor:
        """The float32 weight [N, K] this layer computes with (for checks)."""
        eye = torch.eye(self.in_features, dtype=self.compute_dtype, device=self.weight.device)
        return self._matmul(eye).float().T.contiguous()


class QuantEmbedding(nn.Module):
    """Token lookup from int8 rows with a scale (and zero) per group: exact for any GroupQuantized."""

    def __init__(self, quantized: GroupQuantized, out_dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.num_embeddings, self.embedding_dim = quantized.shape
        self.group_size, self.out_dtype = quantized.group_size, out_dtype
        self.register_buffer("weight", quantized.values.contiguous())
        self.register_buffer("scales", quantized.scales.float().contiguous())
        self.register_buffer("zeros", quantized.zeros.float().contiguous() if quantized.zeros is not None else None)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        rows = self.weight[ids].view(*ids.shape, -1, self.group_size).float() * self.scales[ids][..., None]
        if self.zeros is not None:
            rows = rows + self.zeros[ids][..., None]
        return rows.view(*ids.shape, self.embedding_dim).to(self.out_dtype)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, group_size={self.group_size}"


QUANT_LAYERS = (Int8Linear, Int4Linear, QuantEmbedding)


def quantized_linear(quantized: GroupQuantized, mode: str, bias: torch.Tensor | None = None,
                     compute_dtype: torch.dtype = torch.bfloat16) -> nn.Module:
    """The layer for `mode` ("int8" or "int4") holding `quantized`."""
    if mode == "int8":
        return Int8Linear(quantized, bias, compute_dtype)
    if mode == "int4":
        return Int4Linear(quantized, bias, compute_dtype)
    raise ValueError(f"unknown quantization mode {mode!r}; choose one of {', '.join(MODES)}")


# --------------------------------------------------------------------------------------------
# Module swap
# --------------------------------------------------------------------------------------------
def is_quantized(model: nn.Module) -> bool:
    return any(isinstance(m, QUANT_LAYERS) for m in model.modules())


def quantize_model(model: nn.Module, mode: str, *, group_size: int = 32,
                   compute_dtype: torch.dtype = torch.bfloat16,
                   packed: dict[str, GroupQuantized] | None = None, keep_float: bool = False,
                   inplace: bool = False, activation_dtype: torch.dtype | None = None) -> nn.Module:
    """Replace every `nn.Linear` (and every `nn.Embedding`) by its quantized twin.

    `mode` "int8" (per-channel int8) or "int4" (group-wise 4-bit, `group_size` inputs per group).
    `packed` maps module names to weights already quantized (GGUF blocks): they are used as they
    are, in the int4 kernel's layout whatever their width (exact), instead of quantizing a float
    weight; with `keep_float` only those modules are replaced. A tied embedding and head share one
    quantization: the head's matmul and the lookup both read it. Without `inplace` the original
    model is untouched and the twin shares no tensor with it: a cheap way to get a fast inference
    copy of a model in training (only the small non-linear parameters are copied). Embedding
    lookups return `activation_dtype` (default: the float embedding's dtype).
    """
    if mode not in ("int8", "int4"):
        raise ValueError(f"unknown quantization mode {mode!r}; choose int8 or int4")
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size <= 0:
        raise ValueError(f"group_size must be a positive number of inputs, got {group_size!r}")
    from lmforge.model.lora import LoRALinear

    if any(isinstance(m, LoRALinear) for m in model.modules()):
        raise ValueError("the model has LoRA adapters; merge them first (lmforge.model.lora.merge_lora)")
    if not inplace:
        # Share the large weights with the original while copying (they are only read), copy the rest.
        memo = {id(m.weight): m.weight for m in model.modules() if isinstance(m, (nn.Linear, nn.Embedding))}
        model = copy.deepcopy(model, memo)
    modules = dict(model.named_modules())
    packed = dict(packed or {})
    unknown = sorted(set(packed) - set(modules))
    if unknown:
        raise ValueError(f"packed weights for modules the model does not have: {unknown[:4]}")
    # Keyed by the weight Parameter, so tied modules find the same quantization.
    by_weight: dict[int, tuple[GroupQuantized, bool]] = {id(modules[n].weight): (q, True) for n, q in packed.items()}

    def quantized_weight(weight: torch.Tensor) -> tuple[GroupQuantized, bool] | None:
        if id(weight) not in by_weight:
            if keep_float:
                return None
            if weight.device.type == "meta":
                raise ValueError("a layer has no weights to quantize (meta tensor)")
            if mode == "int8":
                q = quantize_int8(weight)
            else:
                q = quantize_int4(weight, _group_for(weight.shape[1], group_size))
            by_weight[id(weight)] = (q, False)
        return by_weight[id(weight)]

    replacements: dict[str, nn.Module | None] = {}  # None: the layer went into a fused one
    chosen: dict[str, tuple[GroupQuantized, str]] = {}
    for name, module in modules.items():
        if isinstance(module, nn.Linear) and (found := quantized_weight(module.weight)) is not None:
            q, from_file = found
            chosen[name] = (q, "int4" if from_file else mode)
    for name, module in modules.items():
        for fused_name, parts in getattr(module, "FUSED_PROJECTIONS", {}).items():
            fused = _fuse(chosen, [modules[f"{name}.{part}"] for part in parts], [f"{name}.{part}" for part in parts],
                          compute_dtype)
            if fused is not None:
                replacements[f"{name}.{fused_name}"] = fused
                replacements.update({f"{name}.{part}": None for part in parts})
    for name, (q, layer_mode) in chosen.items():
        if name not in replacements:
            replacements[name] = quantized_linear(q, layer_mode, modules[name].bias, compute_dtype)
    for name, module in modules.items():
        if not isinstance(module, nn.Embedding):
            continue
        tied_head = next((replacements.get(n) for n, m in modules.items()
                          if isinstance(m, nn.Linear) and m.weight is module.weight), None)
        if isinstance(tied_head, Int8Linear):  # the lookup reads the head's own int8 table
            lookup = GroupQuantized(tied_head.weight, tied_head.scales.float()[:, None], None, tied_head.in_features)
        elif (found := quantized_weight(module.weight)) is not None:
            lookup = found[0]
        else:
            continue
        replacements[name] = QuantEmbedding(lookup, activation_dtype or module.weight.dtype)
    for name, module in replacements.items():
        parent_name, _, leaf = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        if module is None:
            delattr(parent, leaf)
        else:
            setattr(parent, leaf, module)
    return model


def _fuse(chosen: dict[str, tuple[GroupQuantized, str]], layers: list[nn.Linear], names: list[str],
          compute_dtype: torch.dtype) -> nn.Module | None:
    """One quantized layer computing `layers` side by side (their outputs concatenated), or None
    when they cannot share one: a layer left in float, different modes, group sizes or kinds of
    values (4-bit codes and 8-bit ones take different kernels), a bias on some but not all."""
    if not all(name in chosen for name in names):
        return None
    parts = [chosen[name][0] for name in names]
    modes = {chosen[name][1] for name in names}
    biases = [layer.bias for layer in layers]
    if (len(modes) != 1 or len({q.group_size for q in parts}) != 1 or len({q.zeros is None for q in parts}) != 1
            or len({len(_nibble_planes(q)) for q in parts}) != 1 or len({b is None for b in biases}) != 1):
        return None
    zeros = torch.cat([q.zeros for q in parts]) if parts[0].zeros is not None else None
    joined = GroupQuantized(torch.cat([q.values for q in parts]), torch.cat([q.scales for q in parts]), zeros,
                            parts[0].group_size)
    bias = torch.cat([b.detach() for b in biases]) if biases[0] is not None else None
    layer = quantized_linear(joined, modes.pop(), bias, compute_dtype)
    if isinstance(layer, Int4Linear) and layer.planes != len(_nibble_planes(parts[0])):
        return None  # the joined values span a wider range than each part (Q4_0 next to Q4_1)
    return layer


def _group_for(width: int, group_size: int) -> int:
    """`group_size` when it divides `width`, else the largest power of two below it that does."""
    size = group_size
    while size > 1 and width % size:
        size //= 2
    return size


def weight_bytes(model: nn.Module) -> int:
    """Bytes of parameters and buffers held by the model (tied tensors counted once)."""
    seen, total = set(), 0
    for tensor in [*model.parameters(), *model.buffers()]:
        key = (tensor.data_ptr(), tensor.dtype, tensor.numel())
        if key not in seen and tensor.device.type != "meta":
            seen.add(key)
            total += tensor.numel() * tensor.element_size()
    return total


@torch.no_grad()
def refresh_quantized(twin: nn.Module, source: nn.Module) -> None:
    """Copy `source`'s current weights into `twin` (made by `quantize_model(source, mode)`),
    requantizing in place: same tensors and shapes, so an engine (or a compiled step) built on the
    twin keeps working. For training loops that sample from the model they train."""
    sources = dict(source.named_modules())
    for name, module in twin.named_modules():
        if not isinstance(module, QUANT_LAYERS):
            continue
        if isinstance(module, QuantEmbedding) and any(isinstance(m, Int8Linear) and m.weight is module.weight
                                                      for m in twin.modules()):
            continue  # it reads the head's table, refreshed with the head
        if name in sources:
            weight = sources[name].weight
        else:  # a fused layer (see quantize_model): its parts side by side
            parent, _, leaf = name.rpartition(".")
            parts = [sources[f"{parent}.{part}" if parent else part]
                     for part in getattr(twin.get_submodule(parent), "FUSED_PROJECTIONS", {}).get(leaf, ())]
            if not parts:
                raise ValueError(f"{name}: the source model has no such layer (was the twin made from another model?)")
            weight = torch.cat([part.weight for part in parts])
            if module.bias is not None:
                module.bias.copy_(torch.cat([part.bias for part in parts]))
        if isinstance(module, QuantEmbedding):
            q = quantize_int8(weight) if module.zeros is None else quantize_int4(weight, module.group_size)
            fresh = QuantEmbedding(q, module.out_dtype)
        elif isinstance(module, Int8Linear):
            fresh = Int8Linear(quantize_int8(weight), None, module.compute_dtype)
        else:
            fresh = Int4Linear(quantize_int4(weight, module.group_size), None, module.compute_dtype)
        for key, tensor in fresh.named_buffers():
            target = module.get_buffer(key)
            if target.shape != tensor.shape:
                raise ValueError(f"{name}: {key} has shape {tuple(target.shape)} in the twin, {tuple(tensor.shape)} "
                                 "from the source (was the twin made from another model or a GGUF file?)")
            target.copy_(tensor)
    params = dict(source.named_parameters())
    for name, tensor in twin.named_parameters():  # norms, biases and any layer left in float
        if name in params and params[name].shape == tensor.shape:
            tensor.copy_(params[name])
