"""Bounded validation and reading of untrusted GGUF files.

``gguf.GGUFReader`` trusts the counts and lengths a file declares: a 49-byte
file that declares an array of 2**63 elements makes it hang or allocate without
limit, and even an honest file costs it about a kilobyte of Python objects per
array element (SmolLM2's 100k vocabulary entries: 4 CPU seconds, 160 MB).
This module therefore reads GGUF files itself, in three checked steps:

1. ``validate_gguf`` walks the header, the metadata key/value table and the
   tensor-info table, checking every declared count and length against the
   bytes actually left in the file *before* reading anything, and the tensor
   table for what a loader relies on (known types, sane shapes, aligned,
   in-bounds, non-overlapping data ranges). Arrays are counted, not stored.
2. ``check_model`` compares the model metadata with the tensor table: block
   count against the blocks present, embedding width, head counts and
   feed-forward width against every tensor's shape, vocabulary size against
   the embedding rows and the tokenizer's token count, and the context length
   against what its rotary tables would cost.
3. ``open_gguf`` then decodes only the tokenizer arrays (whose lengths step 2
   tied to the embedding) and hands out read-only memory-mapped views of the
   tensor data.

Every problem raises ``ValueError("bad GGUF file <path>: <field> ...")`` so the
caller sees which file and which field is wrong. Work and memory are bounded:
every declared item costs at least a known number of file bytes, the number of
metadata entries, tensors and string-array elements walked is capped far above
any real model, and nothing is decoded before the checks pass.

Layout (little-endian; versions 2 and 3 share it, version 1 used 32-bit
counts and lengths and is rejected)::

    magic b"GGUF" | u32 version | u64 tensor_count | u64 kv_count
    kv_count x  { string key | u32 value_type | value }
    tensor_count x { string name | u32 n_dims | n_dims x u64 dim
                     | u32 ggml_type | u64 offset (relative to data start) }
    padding up to a multiple of general.alignment, then the tensor data

    string = u64 length | length bytes of UTF-8
    array  = u32 element_type | u64 count | count elements
"""

from __future__ import annotations

import math
import mmap
import os
import stat
import struct
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType

__all__ = ["GGUFFile", "GGUFSummary", "GGUFTensor", "TensorInfo", "check_model", "context_too_long", "open_gguf",
           "validate_gguf"]

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
ALIGNMENT_KEY = "general.alignment"

HEADER_BYTES = 4 + 4 + 8 + 8  # magic, version, tensor_count, kv_count
# Smallest possible encodings, used to reject counts that cannot fit in the
# bytes left before walking them (so a huge count fails at once, not slowly).
MIN_STRING_BYTES = 8  # u64 length of an empty string
MIN_ARRAY_BYTES = 4 + 8  # element type + count of an empty array
MIN_KV_BYTES = MIN_STRING_BYTES + 4 + 1  # key, value type, 1-byte value
MIN_TENSOR_INFO_BYTES = MIN_STRING_BYTES + 4 + 8 + 4 + 8  # name, n_dims, 1 dim, type, offset

MAX_DIMS = 4  # GGML_MAX_DIMS
MAX_NAME_BYTES = 65_535  # keys and tensor names; llama.cpp allows far less for names
MAX_STRING_VALUE_BYTES = 64 << 20  # a metadata string we keep in memory (chat templates are KBs)
MAX_ARRAY_DEPTH = 8  # arrays of arrays are legal but never deep in practice
# Caps on what has to be walked item by item, so that a file made of millions of tiny items fails
# at once and even one at every cap validates in well under a second. Real models stay far below:
# about 50 keys, at most a few thousand tensors (Llama 3.1 405B: 1138), and vocabularies plus
# merges of at most about half a million strings (Llama 3: 128k tokens + 280k merges).
MAX_KV_PAIRS = 1 << 14
MAX_TENSORS = 1 << 14
MAX_WALKED_STRINGS = 1 << 20  # strings inside metadata arrays, whole file
MAX_NESTED_ARRAYS = 1 << 14  # arrays inside metadata arrays, whole file (real files have none)
INT64_MAX = (1 << 63) - 1

# Fixed-size value types: struct format (little-endian) per GGUFValueType.
_SCALAR_FORMATS: dict[GGUFValueType, str] = {
    GGUFValueType.UINT8: "<B",
    GGUFValueType.INT8: "<b",
    GGUFValueType.UINT16: "<H",
    GGUFValueType.INT16: "<h",
    GGUFValueType.UINT32: "<I",
    GGUFValueType.INT32: "<i",
    GGUFValueType.FLOAT32: "<f",
    GGUFValueType.BOOL: "<B",
    GGUFValueType.UINT64: "<Q",
    GGUFValueType.INT64: "<q",
    GGUFValueType.FLOAT64: "<d",
}
_SCALAR_STRUCTS = {vtype: struct.Struct(fmt) for vtype, fmt in _SCALAR_FORMATS.items()}
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


@dataclass(frozen=True)
class TensorInfo:
    """One entry of the tensor-info table, checked against the file."""

    name: str
    shape: tuple[int, ...]  # GGUF order: innermost (row) dimension first
    ggml_type: str  # GGMLQuantizationType name, e.g. "Q4_1"
    offset: int  # relative to GGUFSummary.data_offset
    n_bytes: int

    @property
    def n_elements(self) -> int:
        n = 1
        for dim in self.shape:
            n *= dim
        return n


@dataclass(frozen=True)
class GGUFSummary:
    """What a validated GGUF file declares; array values are only counted."""

    version: int
    tensor_count: int
    kv_count: int
    alignment: int
    data_offset: int  # absolute file offset where tensor data starts
    file_size: int
    scalars: dict[str, object]  # non-array metadata: str, int, float, bool
    array_lengths: dict[str, int]  # array metadata: key -> element count
    tensors: list[TensorInfo]
    # array metadata: key -> (element type, absolute file offset of the first element)
    array_starts: dict[str, tuple[GGUFValueType, int]] = field(default_factory=dict, repr=False)


class _Cursor:
    """Sequential little-endian reads from a memory map that never go past the file's end.

    Every read checks the requested size against the bytes left *before*
    reading, so a hostile length costs nothing.
    """

    def __init__(self, buf: mmap.mmap, size: int, where: str) -> None:
        self.buf = buf
        self.size = size
        self.pos = 0
        self.walked = {"strings": 0, "nested arrays": 0}  # array elements walked one by one so far
        self._where = where

    def fail(self, message: str) -> ValueError:
        return ValueError(f"bad GGUF file {self._where}: {message}")

    @property
    def left(self) -> int:
        return self.size - self.pos

    def need(self, n: int, what: str) -> None:
        if n > self.left:
            raise self.fail(
                f"{what} needs {n} bytes at offset {self.pos}, but only {self.left} bytes are left in the file"
            )

    def read(self, n: int, what: str) -> bytes:
        self.need(n, what)
        data = self.buf[self.pos:self.pos + n]
        self.pos += n
        return data

    def skip(self, n: int, what: str) -> None:
        self.need(n, what)
        self.pos += n

    def u32(self, what: str) -> int:
        self.need(4, what)
        self.pos += 4
        return _U32.unpack_from(self.buf, self.pos - 4)[0]

    def u64(self, what: str) -> int:
        self.need(8, what)
        self.pos += 8
        return _U64.unpack_from(self.buf, self.pos - 8)[0]

    def string_length(self, what: str) -> int:
        n = self.u64(f"{what} length")
        if n > self.left:
            raise self.fail(f"{what} declares a string of {n} bytes, more than the {self.left} bytes left in the file")
        return n

    def name(self, what: str) -> str:
        """A key or tensor name: bounded, non-empty, valid UTF-8."""
        n = self.string_length(what)
        if n == 0:
            raise self.fail(f"{what} is empty")
        if n > MAX_NAME_BYTES:
            raise self.fail(f"{what} is {n} bytes long, more than the {MAX_NAME_BYTES} allowed")
        raw = self.read(n, what)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise self.fail(f"{what} is not valid UTF-8 ({exc.reason} at byte {exc.start}): {raw[:64]!r}") from None

    def walk(self, count: int, kind: str, limit: int, what: str) -> None:
        """Account for `count` array elements (strings or nested arrays) about to be walked one by one."""
        self.walked[kind] += count
        if self.walked[kind] > limit:
            raise self.fail(
                f"{what} brings the {kind} in metadata arrays to {self.walked[kind]}, more than the {limit} "
                "lmforge reads (Llama 3's vocabulary and merges hold 408k strings)"
            )

    def skip_strings(self, count: int, what: str) -> None:
        """Move past `count` strings; one tight loop, as a vocabulary has hundreds of thousands."""
        buf, pos, size, unpack = self.buf, self.pos, self.size, _U64.unpack_from
        for i in range(count):
            if pos + 8 > size:
                self.pos = pos
                self.need(8, f"{what}[{i}] length")
            n = unpack(buf, pos)[0]
            pos += 8
            if n > size - pos:
                self.pos = pos
                raise self.fail(f"{what}[{i}] declares a string of {n} bytes, more than the {size - pos} bytes left in the file")
            pos += n
        self.pos = pos


def _value_type(cur: _Cursor, code: int, what: str) -> GGUFValueType:
    try:
        return GGUFValueType(code)
    except ValueError:
        raise cur.fail(f"{what} has unknown value type {code}") from None


def _read_scalar(cur: _Cursor, vtype: GGUFValueType, what: str) -> object:
    """Read one non-array value and return it as a Python object."""
    if vtype == GGUFValueType.STRING:
        n = cur.string_length(what)
        if n > MAX_STRING_VALUE_BYTES:
            raise cur.fail(f"{what} is a string of {n} bytes, more than the {MAX_STRING_VALUE_BYTES} allowed")
        raw = cur.read(n, what)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise cur.fail(f"{what} is not valid UTF-8 ({exc.reason} at byte {exc.start})") from None
    fmt = _SCALAR_STRUCTS[vtype]
    value = fmt.unpack(cur.read(fmt.size, what))[0]
    if vtype == GGUFValueType.BOOL:
        if value not in (0, 1):
            raise cur.fail(f"{what} is a bool stored as {value}, not 0 or 1")
        return bool(value)
    return value


def _skip_array(cur: _Cursor, what: str, depth: int = 1) -> tuple[GGUFValueType, int]:
    """Check an array's bounds and move past it without storing it; return its element type and length."""
    if depth > MAX_ARRAY_DEPTH:
        raise cur.fail(f"{what} nests arrays more than {MAX_ARRAY_DEPTH} deep")
    elem_type = _value_type(cur, cur.u32(f"{what} element type"), f"{what} array element")
    count = cur.u64(f"{what} element count")
    if elem_type == GGUFValueType.STRING:
        # Each string carries its own length, so walk them; each needs >= 8 bytes,
        # which bounds the walk by the file size.
        if count * MIN_STRING_BYTES > cur.left:
            raise cur.fail(
                f"{what} declares an array of {count} strings, "
                f"more than the {cur.left} bytes left in the file could hold"
            )
        cur.walk(count, "strings", MAX_WALKED_STRINGS, what)
        cur.skip_strings(count, what)
    elif elem_type == GGUFValueType.ARRAY:
        if count * MIN_ARRAY_BYTES > cur.left:
            raise cur.fail(
                f"{what} declares an array of {count} arrays, "
                f"more than the {cur.left} bytes left in the file could hold"
            )
        cur.walk(count, "nested arrays", MAX_NESTED_ARRAYS, what)
        for i in range(count):
            _skip_array(cur, f"{what}[{i}]", depth + 1)
    else:
        n_bytes = count * _SCALAR_STRUCTS[elem_type].size
        if n_bytes > cur.left:
            raise cur.fail(
                f"{what} declares an array of {count} elements ({elem_type.name}), "
                f"more than the {cur.left} bytes left in the file"
            )
        cur.skip(n_bytes, what)
    return elem_type, count


def _read_metadata(cur: _Cursor, kv_count: int) -> tuple[dict[str, object], dict[str, int], dict[str, tuple]]:
    scalars: dict[str, object] = {}
    array_lengths: dict[str, int] = {}
    array_starts: dict[str, tuple[GGUFValueType, int]] = {}
    for i in range(kv_count):
        key = cur.name(f"metadata key #{i}")
        what = f"metadata key {key!r}"
        if key in scalars or key in array_lengths:
            raise cur.fail(f"duplicate {what}")
        vtype = _value_type(cur, cur.u32(f"{what} value type"), what)
        if vtype == GGUFValueType.ARRAY:
            start = cur.pos + 4 + 8  # past element type and count
            elem_type, array_lengths[key] = _skip_array(cur, what)
            array_starts[key] = (elem_type, start)
        else:
            scalars[key] = _read_scalar(cur, vtype, what)
    return scalars, array_lengths, array_starts


def _alignment(cur: _Cursor, scalars: dict[str, object], array_lengths: dict[str, int]) -> int:
    if ALIGNMENT_KEY in array_lengths:
        raise cur.fail(f"{ALIGNMENT_KEY} is an array, not an integer")
    value = scalars.get(ALIGNMENT_KEY, DEFAULT_ALIGNMENT)
    if type(value) is not int:  # bool is an int subclass; reject it too
        raise cur.fail(f"{ALIGNMENT_KEY} is {value!r}, not an integer")
    if value <= 0 or value & (value - 1):
        raise cur.fail(f"{ALIGNMENT_KEY} is {value}, not a positive power of two")
    return value


def _read_tensor_info(cur: _Cursor, index: int) -> tuple[str, tuple[int, ...], GGMLQuantizationType, int]:
    name = cur.name(f"tensor name #{index}")
    what = f"tensor {name!r}"
    n_dims = cur.u32(f"{what} n_dims")
    if not 1 <= n_dims <= MAX_DIMS:
        raise cur.fail(f"{what} n_dims is {n_dims}, expected 1 to {MAX_DIMS} dimensions")
    dims = struct.unpack(f"<{n_dims}Q", cur.read(8 * n_dims, f"{what} dims"))
    n_elements = 1
    for axis, dim in enumerate(dims):
        if dim == 0:
            raise cur.fail(f"{what} dims {list(dims)} has a zero-size dimension {axis}")
        n_elements *= dim
        if n_elements > INT64_MAX:
            raise cur.fail(f"{what} dims {list(dims)} hold more than 2**63-1 elements")
    code = cur.u32(f"{what} ggml type")
    try:
        ggml_type = GGMLQuantizationType(code)
    except ValueError:
        raise cur.fail(f"{what} has unknown ggml type {code}") from None
    if ggml_type not in GGML_QUANT_SIZES:
        raise cur.fail(f"{what} has ggml type {ggml_type.name} with no known block size")
    block_size = GGML_QUANT_SIZES[ggml_type][0]
    # ggml quantizes row by row, so the row length (dims[0]) must hold whole
    # blocks; that also makes the element count a multiple of the block size.
    if dims[0] % block_size:
        raise cur.fail(
            f"{what} dims {list(dims)}: row length {dims[0]} (of {n_elements} elements) "
            f"is not a multiple of the {ggml_type.name} block size {block_size}"
        )
    offset = cur.u64(f"{what} data offset")
    return name, dims, ggml_type, offset


def _check_tensors(
    cur: _Cursor,
    raw: list[tuple[str, tuple[int, ...], GGMLQuantizationType, int]],
    alignment: int,
    data_offset: int,
) -> list[TensorInfo]:
    tensors: list[TensorInfo] = []
    for name, dims, ggml_type, offset in raw:
        what = f"tensor {name!r}"
        if offset % alignment:
            raise cur.fail(f"{what} data offset {offset} is not a multiple of {ALIGNMENT_KEY} {alignment}")
        block_size, type_size = GGML_QUANT_SIZES[ggml_type]
        n_elements = 1
        for dim in dims:
            n_elements *= dim
        n_bytes = n_elements // block_size * type_size
        end = data_offset + offset + n_bytes
        if end > cur.size:
            raise cur.fail(
                f"{what} data (offset {offset}, {n_bytes} bytes, from file offset {data_offset + offset}) "
                f"ends at {end}, past the end of the file ({cur.size} bytes)"
            )
        tensors.append(TensorInfo(name, dims, ggml_type.name, offset, n_bytes))
    # Sorted by start, each range must begin at or after the previous one ends.
    by_offset = sorted(tensors, key=lambda t: t.offset)
    for prev, nxt in zip(by_offset, by_offset[1:]):
        if nxt.offset < prev.offset + prev.n_bytes:
            raise cur.fail(
                f"tensor {nxt.name!r} data offset {nxt.offset} overlaps tensor {prev.name!r} "
                f"data [{prev.offset}, {prev.offset + prev.n_bytes})"
            )
    return tensors


def _open_regular_file(path: str | os.PathLike[str]) -> tuple[BinaryIO, int]:
    """Open ``path`` only if it is a regular file (a FIFO or device could block forever)."""
    where = os.fspath(path)
    try:
        st = os.stat(where)
    except FileNotFoundError:
        raise FileNotFoundError(f"GGUF file not found: {where}") from None
    if not stat.S_ISREG(st.st_mode):
        kind = "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file"
        raise ValueError(f"bad GGUF file {where}: path is {kind}")
    f = open(where, "rb")
    # Measure the size on the open handle, in case the path changed since stat.
    return f, os.fstat(f.fileno()).st_size


def validate_gguf(path: str | os.PathLike[str]) -> GGUFSummary:
    """Check a GGUF file's structure without trusting it; return what it declares.

    Raises ``FileNotFoundError`` if ``path`` does not exist and ``ValueError``
    (naming the file and the offending field) for anything malformed. Runs in
    time and memory bounded by the header size; tensor data is never read.
    """
    where = os.fspath(path)
    f, size = _open_regular_file(path)
    with f:
        if size < HEADER_BYTES:
            raise ValueError(f"bad GGUF file {where}: truncated header: file is {size} bytes, "
                             f"a GGUF header needs {HEADER_BYTES}")
        with mmap.mmap(f.fileno(), size, access=mmap.ACCESS_READ) as buf:
            return _validate(_Cursor(buf, size, where))


def _validate(cur: _Cursor) -> GGUFSummary:
    magic = cur.read(4, "magic")
    if magic != GGUF_MAGIC:
        raise cur.fail(f"magic is {magic!r}, expected {GGUF_MAGIC!r}")
    version = cur.u32("version")
    if version not in SUPPORTED_VERSIONS:
        if version and version & 0xFFFF == 0:  # how GGUFReader spots a byte-swapped header
            raise cur.fail(f"version {version:#x} looks byte-swapped: big-endian GGUF files are not supported")
        extra = " (version 1 used 32-bit counts and is not supported)" if version == 1 else ""
        raise cur.fail(f"unsupported version {version}, expected one of {SUPPORTED_VERSIONS}{extra}")
    tensor_count = cur.u64("tensor_count")
    kv_count = cur.u64("kv_count")
    if kv_count > MAX_KV_PAIRS or kv_count * MIN_KV_BYTES > cur.left:
        raise cur.fail(
            f"kv_count {kv_count} is absurd: each key/value needs at least {MIN_KV_BYTES} bytes, "
            f"{cur.left} bytes are left in the file (limit {MAX_KV_PAIRS} keys)"
        )
    if tensor_count > MAX_TENSORS or tensor_count * MIN_TENSOR_INFO_BYTES > cur.left:
        raise cur.fail(
            f"tensor_count {tensor_count} is absurd: each tensor info needs at least "
            f"{MIN_TENSOR_INFO_BYTES} bytes, {cur.left} bytes are left in the file (limit {MAX_TENSORS} tensors)"
        )
    if kv_count * MIN_KV_BYTES + tensor_count * MIN_TENSOR_INFO_BYTES > cur.left:
        raise cur.fail(
            f"kv_count {kv_count} and tensor_count {tensor_count} together need more than "
            f"the {cur.left} bytes left in the file"
        )

    scalars, array_lengths, array_starts = _read_metadata(cur, kv_count)
    alignment = _alignment(cur, scalars, array_lengths)

    raw_tensors = []
    seen: set[str] = set()
    for i in range(tensor_count):
        info = _read_tensor_info(cur, i)
        if info[0] in seen:
            raise cur.fail(f"duplicate tensor name {info[0]!r}")
        seen.add(info[0])
        raw_tensors.append(info)

    # The data section starts at the first aligned offset after the infos.
    data_offset = -(-cur.pos // alignment) * alignment
    tensors = _check_tensors(cur, raw_tensors, alignment, data_offset)

    return GGUFSummary(
        version=version,
        tensor_count=tensor_count,
        kv_count=kv_count,
        alignment=alignment,
        data_offset=data_offset,
        file_size=cur.size,
        scalars=scalars,
        array_lengths=array_lengths,
        tensors=tensors,
        array_starts=array_starts,
    )


# --------------------------------------------------------------------------------------------
# Model metadata against the tensor table
# --------------------------------------------------------------------------------------------
LLAMA_ARCHITECTURES = ("llama", "mistral", "qwen2")
FUSED_ARCHITECTURES = ("falcon", "mpt", "bloom")  # one fused q/k/v tensor per block, LayerNorms
ARCHITECTURES = (*LLAMA_ARCHITECTURES, "gpt2", *FUSED_ARCHITECTURES)
TOKEN_ARRAYS = ("tokenizer.ggml.token_type", "tokenizer.ggml.scores")  # one entry per token
# The rotary tables (context_length x head size values, built with the model) may not outgrow
# the weights in the file, except for this allowance, which every real model stays under.
ROPE_ALLOWANCE = 1 << 22


def context_too_long(context: int, head_size: int, weights: int) -> bool:
    """Whether rotary tables for `context` positions would outgrow a model of `weights` weights."""
    return context * head_size > max(weights, ROPE_ALLOWANCE)


def _describe(layers: set[int]) -> str:
    if not layers:
        return "no blocks"
    ordered = sorted(layers)
    if ordered == list(range(ordered[0], ordered[-1] + 1)):
        return f"blocks {ordered[0]} to {ordered[-1]} ({len(ordered)} blocks)"
    shown = ", ".join(map(str, ordered[:8])) + (", ..." if len(ordered) > 8 else "")
    return f"blocks {shown} ({len(ordered)} blocks)"


def check_model(summary: GGUFSummary, where: str) -> None:
    """Refuse a file whose model metadata contradicts its tensor table, before anything is built.

    Checks the architecture, the block count against the blocks present, every tensor's shape
    against the widths and head counts the metadata declares (and no tensor is missing or foreign),
    the vocabulary size and tokenizer arrays against the embedding rows, and the context length.
    """

    def fail(message: str) -> ValueError:
        return ValueError(f"bad GGUF file {where}: {message}")

    meta = summary.scalars
    arch = meta.get("general.architecture")
    if arch not in ARCHITECTURES:
        raise fail(f"general.architecture {arch!r} is not supported (supported: {', '.join(sorted(ARCHITECTURES))})")

    def integer(key: str, default: int | None = None) -> int:
        full = f"{arch}.{key}"
        if full in summary.array_lengths:
            raise fail(f"{full} is an array (one value per layer), which lmforge does not support")
        value = meta.get(full, default)
        if value is None:
            raise fail(f"missing metadata {full}")
        if type(value) is not int or value <= 0:
            raise fail(f"{full} is {value!r}, expected a positive integer")
        return value

    def number(key: str, default: float | None = None) -> None:
        full = f"{arch}.{key}"
        value = meta.get(full, default)
        if value is None:
            raise fail(f"missing metadata {full}")
        if type(value) not in (int, float) or not math.isfinite(value) or value <= 0:
            raise fail(f"{full} is {value!r}, expected a positive number")

    n_layers, dim = integer("block_count"), integer("embedding_length")
    n_heads, ffn, context = integer("attention.head_count"), integer("feed_forward_length"), integer("context_length")
    heads, ffn_key = f"{arch}.attention.head_count", f"{arch}.feed_forward_length"
    width = f"{arch}.embedding_length"
    tensors = {t.name: t for t in summary.tensors}

    layers = set()
    for name in tensors:
        parts = name.split(".")
        if len(parts) > 2 and parts[0] == "blk" and parts[1].isdigit():
            layers.add(int(parts[1]))
    if len(layers) != n_layers or max(layers, default=-1) != n_layers - 1:  # i.e. layers != {0, ..., n - 1}
        raise fail(f"{arch}.block_count is {n_layers} but the tensor table has {_describe(layers)}")

    embedding = tensors.get("token_embd.weight")
    if embedding is None or len(embedding.shape) != 2:
        raise fail("tensor 'token_embd.weight' is missing or not a matrix")
    if embedding.shape[0] != dim:
        raise fail(f"{width} is {dim} but token_embd.weight rows hold {embedding.shape[0]} values")
    vocab = embedding.shape[1]
    declared = meta.get(f"{arch}.vocab_size")
    if declared is not None and declared != vocab:
        raise fail(f"{arch}.vocab_size is {declared!r} but token_embd.weight has {vocab} rows (one per token)")
    n_tokens = summary.array_lengths.get("tokenizer.ggml.tokens")
    if n_tokens is not None and n_tokens != vocab:
        raise fail(f"tokenizer.ggml.tokens has {n_tokens} entries but token_embd.weight has {vocab} rows (one per token)")
    for key in TOKEN_ARRAYS:
        if key in summary.array_lengths and summary.array_lengths[key] != vocab:
            raise fail(f"{key} has {summary.array_lengths[key]} entries but the vocabulary has {vocab} tokens")

    # Expected shape of every tensor, GGUF order (row length first); each size names its source.
    D, V, F = (dim, width), (vocab, "the vocabulary (token_embd.weight rows)"), (ffn, ffn_key)
    top: dict[str, tuple] = {"token_embd.weight": (D, V), "output_norm.weight": (D,)}
    optional = {"output.weight": (D, V)}
    if arch in FUSED_ARCHITECTURES:
        block = _fused_block_shapes(summary, arch, D, F, integer, number, fail)
        if arch != "mpt":  # MPT's LayerNorms have no bias
            top["output_norm.bias"] = (D,)
        if arch == "bloom":
            top.update({"token_embd_norm.weight": (D,), "token_embd_norm.bias": (D,)})
        if arch == "falcon" and "blk.0.attn_norm_2.weight" in tensors:  # Falcon-40B: ln_attn beside ln_mlp
            block.update({"attn_norm_2.weight": (D,), "attn_norm_2.bias": (D,)})
    elif arch == "gpt2":
        if dim % n_heads:
            raise fail(f"{width} {dim} is not divisible by {heads} {n_heads}")
        top.update({"position_embd.weight": (D, (context, f"{arch}.context_length")), "output_norm.bias": (D,)})
        Q3 = (3 * dim, f"3 x {width}")
        block = {"attn_norm.weight": (D,), "attn_norm.bias": (D,), "attn_qkv.weight": (D, Q3), "attn_qkv.bias": (Q3,),
                 "attn_output.weight": (D, D), "attn_output.bias": (D,), "ffn_norm.weight": (D,), "ffn_norm.bias": (D,),
                 "ffn_up.weight": (D, F), "ffn_up.bias": (F,), "ffn_down.weight": (F, D), "ffn_down.bias": (D,)}
    else:
        kv_heads = integer("attention.head_count_kv", n_heads)
        kv_key = f"{arch}.attention.head_count_kv"
        if n_heads % kv_heads:
            raise fail(f"{heads} {n_heads} is not a multiple of {kv_key} {kv_heads}")
        if f"{arch}.attention.key_length" in meta:
            head_size = integer("attention.key_length")
            size_source = f"{arch}.attention.key_length"
        elif dim % n_heads:
            raise fail(f"{width} {dim} is not divisible by {heads} {n_heads} (and no {arch}.attention.key_length)")
        else:
            head_size = dim // n_heads
            size_source = f"{width} / {heads}"
        if integer("attention.value_length", head_size) != head_size:
            raise fail(f"{arch}.attention.value_length differs from the head size {head_size}: not supported")
        if integer("rope.dimension_count", head_size) != head_size:
            raise fail(f"{arch}.rope.dimension_count {meta[f'{arch}.rope.dimension_count']} differs from the head "
                       f"size {head_size}: partial rotary embeddings are not supported")
        if head_size % 2:
            raise fail(f"head size {head_size} is odd: rotary embeddings need an even head size")
        number("attention.layer_norm_rms_epsilon")
        number("rope.freq_base", 10000.0)
        weights = sum(t.n_elements for t in summary.tensors)
        if context_too_long(context, head_size, weights):
            raise fail(f"{arch}.context_length {context} is absurd for this model: its rotary tables ({context} "
                       f"positions x head size {head_size}) would outgrow all {weights} weights in the file")
        Q = (n_heads * head_size, f"{heads} x head size {head_size} ({size_source})")
        KV = (kv_heads * head_size, f"{kv_key} x head size {head_size} ({size_source})")
        block = {"attn_norm.weight": (D,), "attn_q.weight": (D, Q), "attn_k.weight": (D, KV), "attn_v.weight": (D, KV),
                 "attn_output.weight": (Q, D), "ffn_norm.weight": (D,), "ffn_gate.weight": (D, F),
                 "ffn_up.weight": (D, F), "ffn_down.weight": (F, D)}
        if arch == "qwen2":
            block.update({"attn_q.bias": (Q,), "attn_k.bias": (KV,), "attn_v.bias": (KV,)})
    if arch == "gpt2":
        number("attention.layer_norm_epsilon")
    if arch in FUSED_ARCHITECTURES and ("position_embd.weight" in tensors or "blk.0.attn_q_norm.weight" in tensors):
        raise fail(f"{arch} with learned positions or q/k norms (tensor position_embd or attn_q_norm) is not supported")

    expected = {**top, **{f"blk.{i}.{suffix}": shape for i in range(n_layers) for suffix, shape in block.items()}}
    for name, info in tensors.items():
        shape = expected.get(name, optional.get(name))
        if shape is None:
            if name.startswith("rope_freqs"):
                raise fail(f"tensor {name!r}: scaled rotary frequencies are not supported")
            raise fail(f"tensor {name!r} is not part of a {arch} model")
        if len(info.shape) != len(shape):
            raise fail(f"tensor {name!r} has {len(info.shape)} dimensions {list(info.shape)}, expected {len(shape)}")
        for axis, (got, (size, source)) in enumerate(zip(info.shape, shape)):
            if got != size:
                raise fail(f"tensor {name!r} has shape {list(info.shape)} (GGUF order): dimension {axis} is {got}, "
                           f"but {source} gives {size}")
    missing = [name for name in expected if name not in tensors]
    if missing:
        raise fail(f"tensor {missing[0]!r} is missing" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))


def _fused_block_shapes(summary: GGUFSummary, arch: str, D: tuple, F: tuple, integer, number, fail) -> dict[str, tuple]:
    """Expected block tensors of Falcon, MPT and BLOOM files as llama.cpp's converter writes them:
    attn_qkv holds all queries, then all keys, then all values; BLOOM has biases everywhere, MPT
    none, Falcon only on its norms."""
    dim, heads_key, width = D[0], f"{arch}.attention.head_count", D[1]
    n_heads = integer("attention.head_count")
    if dim % n_heads:
        raise fail(f"{width} {dim} is not divisible by {heads_key} {n_heads}")
    kv_heads = integer("attention.head_count_kv", n_heads)
    if n_heads % kv_heads or (arch != "falcon" and kv_heads != n_heads):
        raise fail(f"{arch}.attention.head_count_kv {kv_heads} does not fit {heads_key} {n_heads}")
    number("attention.layer_norm_epsilon")
    if arch == "mpt" and summary.scalars.get("mpt.attention.clamp_kqv"):
        raise fail("mpt.attention.clamp_kqv is not supported")
    context, weights = integer("context_length"), sum(t.n_elements for t in summary.tensors)
    if arch == "falcon" and context_too_long(context, dim // n_heads, weights):  # rotary tables
        raise fail(f"{arch}.context_length {context} is absurd for this model: its rotary tables would outgrow "
                   f"all {weights} weights in the file")
    qkv = ((n_heads + 2 * kv_heads) * (dim // n_heads), f"({heads_key} + 2 x head_count_kv) x head size")
    block = {"attn_norm.weight": (D,), "attn_qkv.weight": (D, qkv), "attn_output.weight": (D, D),
             "ffn_up.weight": (D, F), "ffn_down.weight": (F, D)}
    if arch != "falcon":
        block["ffn_norm.weight"] = (D,)
    if arch != "mpt":
        block.update({name.replace(".weight", ".bias"): shape for name, shape in block.items() if name.endswith("norm.weight")})
    if arch == "bloom":
        block.update({"attn_qkv.bias": (qkv,), "attn_output.bias": (D,), "ffn_up.bias": (F,), "ffn_down.bias": (D,)})
    return block


# --------------------------------------------------------------------------------------------
# Opening a checked file
# --------------------------------------------------------------------------------------------
# Arrays a loader needs (the tokenizer's); other arrays are counted and checked, never decoded.
DECODED_ARRAYS = ("tokenizer.ggml.tokens", "tokenizer.ggml.token_type", "tokenizer.ggml.scores", "tokenizer.ggml.merges")
_NUMPY_TYPES = {
    GGUFValueType.UINT8: "<u1", GGUFValueType.INT8: "<i1", GGUFValueType.UINT16: "<u2", GGUFValueType.INT16: "<i2",
    GGUFValueType.UINT32: "<u4", GGUFValueType.INT32: "<i4", GGUFValueType.FLOAT32: "<f4", GGUFValueType.BOOL: "<u1",
    GGUFValueType.UINT64: "<u8", GGUFValueType.INT64: "<i8", GGUFValueType.FLOAT64: "<f8",
}
# How gguf.GGUFReader lays tensor data out: these types as their numpy type, the rest as raw bytes.
_PLAIN_TENSOR_TYPES = {"F32": "<f4", "F16": "<f2", "F64": "<f8", "I8": "<i1", "I16": "<i2", "I32": "<i4", "I64": "<i8"}


@dataclass(frozen=True)
class GGUFTensor:
    """One tensor of an opened file, with the attributes of `gguf.ReaderTensor` that loaders use."""

    name: str
    tensor_type: GGMLQuantizationType
    shape: tuple[int, ...]  # GGUF order: row length first
    n_elements: int
    n_bytes: int
    data_offset: int  # absolute file offset
    # Read-only view of the file: plain types as [rows..., row] numbers, quantized ones as
    # [rows..., row bytes] uint8, as `gguf.quants.dequantize` takes them.
    data: np.ndarray


@dataclass(frozen=True)
class GGUFFile:
    """A validated GGUF file whose metadata agrees with its tensors."""

    summary: GGUFSummary
    metadata: dict[str, Any]  # scalars, plus the tokenizer arrays as lists
    tensors: list[GGUFTensor]


def _decode_array(buf: mmap.mmap, elem_type: GGUFValueType, start: int, count: int, what: str, fail) -> list:
    if elem_type == GGUFValueType.STRING:
        out, pos, unpack = [], start, _U64.unpack_from
        for i in range(count):  # lengths were checked by validate_gguf
            n = unpack(buf, pos)[0]
            try:
                out.append(buf[pos + 8:pos + 8 + n].decode("utf-8"))
            except UnicodeDecodeError as exc:
                raise fail(f"{what}[{i}] is not valid UTF-8 ({exc.reason} at byte {exc.start})") from None
            pos += 8 + n
        return out
    if elem_type not in _NUMPY_TYPES:
        raise fail(f"{what} is an array of {elem_type.name}, expected strings or numbers")
    values = np.frombuffer(buf, dtype=_NUMPY_TYPES[elem_type], count=count, offset=start)
    return values.astype(bool).tolist() if elem_type == GGUFValueType.BOOL else values.tolist()


def open_gguf(path: str | os.PathLike[str]) -> GGUFFile:
    """Validate `path`, check its model metadata against its tensors, then open it.

    Only after both checks pass are the tokenizer arrays decoded and the file memory-mapped;
    tensor data stays in the file until a loader reads it.
    """
    where = os.fspath(path)
    summary = validate_gguf(path)
    check_model(summary, where)

    def fail(message: str) -> ValueError:
        return ValueError(f"bad GGUF file {where}: {message}")

    data = np.memmap(where, dtype=np.uint8, mode="r")
    if data.size != summary.file_size:
        raise fail(f"the file changed size while being opened ({summary.file_size} -> {data.size} bytes)")
    metadata: dict[str, Any] = dict(summary.scalars)
    buf = data.base if isinstance(data.base, mmap.mmap) else memoryview(data)
    for key in DECODED_ARRAYS:
        if key in summary.array_starts:
            elem_type, start = summary.array_starts[key]
            metadata[key] = _decode_array(buf, elem_type, start, summary.array_lengths[key], f"metadata key {key!r}", fail)

    tensors = []
    for info in summary.tensors:
        kind = GGMLQuantizationType[info.ggml_type]
        start = summary.data_offset + info.offset
        rows = tuple(reversed(info.shape))
        raw = data[start:start + info.n_bytes]
        if info.ggml_type in _PLAIN_TENSOR_TYPES:
            view = raw.view(_PLAIN_TENSOR_TYPES[info.ggml_type]).reshape(rows)
        else:
            block_size, type_size = GGML_QUANT_SIZES[kind]
            view = raw.reshape(*rows[:-1], rows[-1] // block_size * type_size)
        tensors.append(GGUFTensor(info.name, kind, info.shape, info.n_elements, info.n_bytes, start, view))
    return GGUFFile(summary, metadata, tensors)
