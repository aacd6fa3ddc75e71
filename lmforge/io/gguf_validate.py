"""Bounded validation of untrusted GGUF files.

``gguf.GGUFReader`` trusts the counts and lengths a file declares: a 49-byte
file that declares an array of 2**63 elements makes it hang or allocate without
limit. ``validate_gguf`` therefore walks the header, the metadata key/value
table and the tensor-info table itself, checking every declared count and length
against the bytes actually left in the file *before* reading anything, and
checking the tensor-info table for what a loader relies on (known types, sane
shapes, aligned, in-bounds, non-overlapping data ranges). Only a file that
passes should be handed to ``GGUFReader`` or memory-mapped.

Every problem raises ``ValueError("bad GGUF file <path>: <field> ...")`` so the
caller sees which file and which field is wrong. Work and memory are bounded
by the file size: every declared item costs at least a known number of file
bytes, and big arrays (tokens, merges) are only skipped over, never stored.

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

import os
import stat
import struct
from dataclasses import dataclass
from typing import BinaryIO

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType

__all__ = ["GGUFSummary", "TensorInfo", "validate_gguf"]

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
MAX_TENSORS = 1 << 20  # far above any real model; bounds the TensorInfo list
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


class _Cursor:
    """Sequential little-endian reads that never go past the file's end.

    Every read checks the requested size against the bytes left *before*
    reading, so a hostile length costs nothing. The position is tracked here
    rather than asked of the OS on each read.
    """

    def __init__(self, f: BinaryIO, size: int, where: str) -> None:
        self._f = f
        self.size = size
        self.pos = 0
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
        data = self._f.read(n)
        if len(data) != n:  # the file shrank under us
            raise self.fail(f"{what}: short read at offset {self.pos}")
        self.pos += n
        return data

    def skip(self, n: int, what: str) -> None:
        self.need(n, what)
        self._f.seek(n, os.SEEK_CUR)
        self.pos += n

    def u32(self, what: str) -> int:
        return _U32.unpack(self.read(4, what))[0]

    def u64(self, what: str) -> int:
        return _U64.unpack(self.read(8, what))[0]

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


def _skip_array(cur: _Cursor, what: str, depth: int = 1) -> int:
    """Check an array's bounds and move past it without storing it; return its length."""
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
        for i in range(count):
            cur.skip(cur.string_length(f"{what}[{i}]"), f"{what}[{i}]")
    elif elem_type == GGUFValueType.ARRAY:
        if count * MIN_ARRAY_BYTES > cur.left:
            raise cur.fail(
                f"{what} declares an array of {count} arrays, "
                f"more than the {cur.left} bytes left in the file could hold"
            )
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
    return count


def _read_metadata(cur: _Cursor, kv_count: int) -> tuple[dict[str, object], dict[str, int]]:
    scalars: dict[str, object] = {}
    array_lengths: dict[str, int] = {}
    for i in range(kv_count):
        key = cur.name(f"metadata key #{i}")
        what = f"metadata key {key!r}"
        if key in scalars or key in array_lengths:
            raise cur.fail(f"duplicate {what}")
        vtype = _value_type(cur, cur.u32(f"{what} value type"), what)
        if vtype == GGUFValueType.ARRAY:
            array_lengths[key] = _skip_array(cur, what)
        else:
            scalars[key] = _read_scalar(cur, vtype, what)
    return scalars, array_lengths


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
        cur = _Cursor(f, size, where)
        if size < HEADER_BYTES:
            raise cur.fail(f"truncated header: file is {size} bytes, a GGUF header needs {HEADER_BYTES}")
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
        if kv_count * MIN_KV_BYTES > cur.left:
            raise cur.fail(
                f"kv_count {kv_count} is absurd: each key/value needs at least {MIN_KV_BYTES} bytes, "
                f"but only {cur.left} bytes are left in the file"
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

        scalars, array_lengths = _read_metadata(cur, kv_count)
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
        file_size=size,
        scalars=scalars,
        array_lengths=array_lengths,
        tensors=tensors,
    )
