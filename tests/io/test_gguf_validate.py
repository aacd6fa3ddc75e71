"""validate_gguf: hostile GGUF files fail fast with a ValueError naming the field."""

from __future__ import annotations

import struct
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType, GGUFWriter

from lmforge.io.gguf_validate import GGUFSummary, TensorInfo, validate_gguf

VT = GGUFValueType
QT = GGMLQuantizationType
F32 = QT.F32.value


# --- raw GGUF builders (little-endian, by hand, so any field can be wrong) ---


def _s(text: str | bytes) -> bytes:
    raw = text.encode() if isinstance(text, str) else text
    return struct.pack("<Q", len(raw)) + raw


def _header(n_tensors: int, n_kv: int, *, version: int = 3, magic: bytes = b"GGUF") -> bytes:
    return magic + struct.pack("<IQQ", version, n_tensors, n_kv)


def _kv(key: str | bytes, vtype: int, payload: bytes) -> bytes:
    return _s(key) + struct.pack("<I", vtype) + payload


def _kv_u32(key: str, value: int) -> bytes:
    return _kv(key, VT.UINT32, struct.pack("<I", value))


def _str_array(items: list[str]) -> bytes:
    return struct.pack("<IQ", VT.STRING, len(items)) + b"".join(_s(x) for x in items)


def _ti(name: str, dims: list[int], ggml_type: int = F32, offset: int = 0) -> bytes:
    return _s(name) + struct.pack(f"<I{len(dims)}QIQ", len(dims), *dims, ggml_type, offset)


def _gguf(kvs: Sequence[bytes] = (), tensors: Sequence[bytes] = (), data: bytes = b"", alignment: int = 32) -> bytes:
    """Assemble header + KVs + tensor infos, pad to `alignment`, append `data`."""
    body = _header(len(tensors), len(kvs)) + b"".join(kvs) + b"".join(tensors)
    return body + b"\0" * (-len(body) % alignment) + data


def _write(tmp_path: Path, raw: bytes, name: str = "bad.gguf") -> Path:
    path = tmp_path / name
    path.write_bytes(raw)
    return path


def _assert_bad(path: Path, match: str) -> str:
    """The acceptance rule: ValueError naming the file and field, raised within a second."""
    start = time.perf_counter()
    with pytest.raises(ValueError, match=match) as info:
        validate_gguf(path)
    elapsed = time.perf_counter() - start
    assert elapsed < 1.0, f"took {elapsed:.2f}s"
    message = str(info.value)
    assert str(path) in message
    return message


# --- a valid tiny file made by the gguf package, to check and to corrupt ---


def _tiny(tmp_path: Path, *, alignment: int | None = None) -> Path:
    path = tmp_path / "tiny.gguf"
    w = GGUFWriter(str(path), "llama")
    if alignment is not None:
        w.add_custom_alignment(alignment)
    w.add_uint32("llama.block_count", 2)
    w.add_float32("llama.rope.freq_base", 10000.0)
    w.add_bool("tokenizer.ggml.add_bos_token", True)
    w.add_string("general.name", "tiny ünïcode")
    w.add_int64("test.int64", -5)
    w.add_array("tokenizer.ggml.tokens", ["<s>", "</s>", "a", "bc"])
    w.add_array("tokenizer.ggml.scores", [0.0, 0.5, 1.0, 1.5])
    w.add_tensor("a.weight", np.arange(12, dtype=np.float32).reshape(3, 4))
    w.add_tensor("b.bias", np.ones(8, dtype=np.float16))
    # 2 rows of 32 Q8_0 values = 2 blocks of 34 bytes, given as raw bytes.
    w.add_tensor("c.weight", np.zeros((2, 34), dtype=np.uint8), raw_dtype=QT.Q8_0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def _tensor_info_pos(raw: bytes, name: str) -> int:
    """Offset of the u32 n_dims that follows tensor `name`'s name string."""
    needle = _s(name)
    pos = raw.index(needle)
    return pos + len(needle)


def _patch(path: Path, pos: int, fmt: str, *values: int) -> Path:
    raw = bytearray(path.read_bytes())
    struct.pack_into(fmt, raw, pos, *values)
    path.write_bytes(bytes(raw))
    return path


# --- files that are fine ---


def test_tiny_writer_file_validates_and_matches_reader(tmp_path: Path) -> None:
    path = _tiny(tmp_path)
    summary = validate_gguf(path)
    assert isinstance(summary, GGUFSummary)
    assert summary.version == 3
    assert summary.alignment == 32
    assert summary.file_size == path.stat().st_size
    assert summary.kv_count == 8  # 7 added + general.architecture
    assert summary.scalars == {
        "general.architecture": "llama",
        "llama.block_count": 2,
        "llama.rope.freq_base": 10000.0,
        "tokenizer.ggml.add_bos_token": True,
        "general.name": "tiny ünïcode",
        "test.int64": -5,
    }
    assert summary.array_lengths == {"tokenizer.ggml.tokens": 4, "tokenizer.ggml.scores": 4}
    assert summary.tensors == [
        TensorInfo("a.weight", (4, 3), "F32", 0, 48),
        TensorInfo("b.bias", (8,), "F16", 64, 16),
        TensorInfo("c.weight", (32, 2), "Q8_0", 96, 68),
    ]
    # Agrees with the gguf package's own reader once the file is known safe.
    reader = GGUFReader(path)
    assert reader.data_offset == summary.data_offset
    for ours, theirs in zip(summary.tensors, reader.tensors, strict=True):
        assert ours.name == theirs.name
        assert ours.shape == tuple(int(d) for d in theirs.shape)
        assert ours.n_bytes == theirs.n_bytes
        assert summary.data_offset + ours.offset == theirs.data_offset


def test_custom_alignment_and_version_2_accepted(tmp_path: Path) -> None:
    path = _tiny(tmp_path, alignment=64)
    summary = validate_gguf(_patch(path, 4, "<I", 2))
    assert summary.version == 2
    assert summary.alignment == 64
    assert summary.data_offset % 64 == 0
    assert all(t.offset % 64 == 0 for t in summary.tensors)


def test_nested_arrays_are_counted_not_stored(tmp_path: Path) -> None:
    inner = struct.pack("<IQ", VT.UINT8, 3) + b"abc"
    nested = struct.pack("<IQ", VT.ARRAY, 2) + inner + inner
    summary = validate_gguf(_write(tmp_path, _gguf([_kv("x.nested", VT.ARRAY, nested)])))
    assert summary.array_lengths == {"x.nested": 2}
    assert summary.tensors == []


def test_smollm2_validates_fast(smollm_gguf: Path) -> None:
    start = time.perf_counter()
    summary = validate_gguf(smollm_gguf)
    elapsed = time.perf_counter() - start
    assert elapsed < 0.5, f"took {elapsed:.2f}s"
    assert summary.tensor_count == len(summary.tensors) == 272
    assert summary.kv_count == len(summary.scalars) + len(summary.array_lengths) == 33
    assert summary.scalars["general.architecture"] == "llama"
    assert summary.scalars["llama.block_count"] == 30
    assert summary.scalars["llama.embedding_length"] == 576
    assert summary.scalars["tokenizer.ggml.model"] == "gpt2"
    assert summary.array_lengths["tokenizer.ggml.tokens"] == 49152
    assert summary.array_lengths["tokenizer.ggml.merges"] == 48900
    assert summary.alignment == 32
    assert summary.tensors[0] == TensorInfo("token_embd.weight", (576, 49152), "Q8_0", 0, 30081024)
    last = max(summary.tensors, key=lambda t: t.offset)
    assert summary.data_offset + last.offset + last.n_bytes <= summary.file_size


# --- paths that are not GGUF files ---


def test_missing_file_names_path(tmp_path: Path) -> None:
    path = tmp_path / "nope.gguf"
    with pytest.raises(FileNotFoundError, match="nope.gguf"):
        validate_gguf(path)


def test_directory_names_path(tmp_path: Path) -> None:
    _assert_bad(tmp_path, match="directory")


# --- malformed files: header ---


def test_bad_magic(tmp_path: Path) -> None:
    raw = _header(0, 0, magic=b"GGML")
    _assert_bad(_write(tmp_path, raw), match="magic")


@pytest.mark.parametrize("version", [0, 1, 4, 3 << 24], ids=["v0", "v1", "v4", "byteswapped"])
def test_unsupported_version(tmp_path: Path, version: int) -> None:
    _assert_bad(_write(tmp_path, _header(0, 0, version=version)), match="version")


def test_truncated_header(tmp_path: Path) -> None:
    _assert_bad(_write(tmp_path, _header(0, 0)[:20]), match="truncated header")


def test_absurd_kv_count(tmp_path: Path) -> None:
    raw = _header(0, 2**64 - 1) + _kv_u32("a.b", 1)
    _assert_bad(_write(tmp_path, raw), match="kv_count 18446744073709551615")


def test_absurd_tensor_count(tmp_path: Path) -> None:
    raw = _header(2**40, 0) + _ti("w", [4])
    _assert_bad(_write(tmp_path, raw), match="tensor_count 1099511627776")


# --- malformed files: metadata ---


@pytest.mark.parametrize("count", [2**63, 2**63 - 1])
def test_hostile_huge_uint8_array(tmp_path: Path, count: int) -> None:
    """The file that makes GGUFReader 0.19 hang: one KV, an ARRAY of UINT8 with 2**63 elements."""
    raw = _header(0, 1) + _kv("t", VT.ARRAY, struct.pack("<IQ", VT.UINT8, count))
    assert len(raw) == 49  # the smallest such file: 24 header + 9 key + 4 type + 12 array head
    message = _assert_bad(_write(tmp_path, raw), match="metadata key 't'")
    assert f"array of {count} elements" in message


def test_hostile_huge_token_array_named(tmp_path: Path) -> None:
    raw = _header(0, 1) + _kv("tokenizer.ggml.tokens", VT.ARRAY, struct.pack("<IQ", VT.INT32, 2**62))
    _assert_bad(_write(tmp_path, raw), match="'tokenizer.ggml.tokens' declares an array of 4611686018427387904")


def test_key_length_past_eof(tmp_path: Path) -> None:
    raw = _header(0, 1) + struct.pack("<Q", 2**63) + b"abc" + b"\0" * 16
    _assert_bad(_write(tmp_path, raw), match="metadata key #0")


def test_key_not_utf8(tmp_path: Path) -> None:
    raw = _gguf([_kv(b"general.\xff\xfe", VT.UINT32, struct.pack("<I", 1))])
    _assert_bad(_write(tmp_path, raw), match="metadata key #0 is not valid UTF-8")


def test_string_value_length_past_eof(tmp_path: Path) -> None:
    raw = _gguf([_kv("general.name", VT.STRING, struct.pack("<Q", 10**12) + b"tiny")])
    _assert_bad(_write(tmp_path, raw), match="metadata key 'general.name' declares a string of 1000000000000 bytes")


def test_string_array_count_past_eof(tmp_path: Path) -> None:
    payload = struct.pack("<IQ", VT.STRING, 2**63 - 1) + _s("a")
    raw = _gguf([_kv("tokenizer.ggml.merges", VT.ARRAY, payload)])
    _assert_bad(_write(tmp_path, raw), match="'tokenizer.ggml.merges' declares an array of 9223372036854775807 strings")


def test_string_array_element_past_eof(tmp_path: Path) -> None:
    # Count fits, but the second string's own length runs past the end.
    payload = struct.pack("<IQ", VT.STRING, 3) + _s("ok") + struct.pack("<Q", 2**40) + _s("x")
    raw = _gguf([_kv("tokenizer.ggml.tokens", VT.ARRAY, payload)])
    _assert_bad(_write(tmp_path, raw), match=r"'tokenizer.ggml.tokens'\[1\] declares a string of 1099511627776 bytes")


def test_nested_array_past_eof(tmp_path: Path) -> None:
    inner_bad = struct.pack("<IQ", VT.FLOAT64, 2**61)
    payload = struct.pack("<IQ", VT.ARRAY, 2) + struct.pack("<IQ", VT.UINT8, 0) + inner_bad
    raw = _gguf([_kv("x.nested", VT.ARRAY, payload)])
    _assert_bad(_write(tmp_path, raw), match=r"'x.nested'\[1\] declares an array of 2305843009213693952")


def test_nested_array_count_absurd(tmp_path: Path) -> None:
    payload = struct.pack("<IQ", VT.ARRAY, 2**50)
    _assert_bad(_write(tmp_path, _gguf([_kv("x.nested", VT.ARRAY, payload)])), match="'x.nested' declares an array of")


def test_nested_array_too_deep(tmp_path: Path) -> None:
    payload = struct.pack("<IQ", VT.ARRAY, 1) * 20 + struct.pack("<IQ", VT.UINT8, 0)
    _assert_bad(_write(tmp_path, _gguf([_kv("x.deep", VT.ARRAY, payload)])), match="'x.deep.*nests arrays")


def test_unknown_value_type(tmp_path: Path) -> None:
    raw = _gguf([_kv("general.weird", 13, b"\0" * 8)])
    _assert_bad(_write(tmp_path, raw), match="'general.weird' has unknown value type 13")


def test_unknown_array_element_type(tmp_path: Path) -> None:
    raw = _gguf([_kv("general.weird", VT.ARRAY, struct.pack("<IQ", 99, 1) + b"\0" * 8)])
    _assert_bad(_write(tmp_path, raw), match="'general.weird' array element has unknown value type 99")


def test_bool_not_0_or_1(tmp_path: Path) -> None:
    raw = _gguf([_kv("tokenizer.ggml.add_bos_token", VT.BOOL, b"\x07")])
    _assert_bad(_write(tmp_path, raw), match="'tokenizer.ggml.add_bos_token' is a bool stored as 7")


def test_duplicate_key(tmp_path: Path) -> None:
    raw = _gguf([_kv_u32("llama.block_count", 2), _kv_u32("llama.block_count", 3)])
    _assert_bad(_write(tmp_path, raw), match="duplicate metadata key 'llama.block_count'")


@pytest.mark.parametrize("alignment", [0, 3, 48])
def test_alignment_not_power_of_two(tmp_path: Path, alignment: int) -> None:
    raw = _gguf([_kv_u32("general.alignment", alignment)], [_ti("w", [4])], b"\0" * 16)
    _assert_bad(_write(tmp_path, raw), match=f"general.alignment is {alignment}, not a positive power of two")


def test_alignment_wrong_type(tmp_path: Path) -> None:
    raw = _gguf([_kv("general.alignment", VT.STRING, _s("32"))])
    _assert_bad(_write(tmp_path, raw), match="general.alignment is '32', not an integer")


# --- malformed files: tensor infos (raw, and corrupted GGUFWriter output) ---


@pytest.mark.parametrize("n_dims", [0, 5])
def test_tensor_bad_n_dims(tmp_path: Path, n_dims: int) -> None:
    raw = _gguf(tensors=[_ti("w", [4] * n_dims)], data=b"\0" * 4096)
    _assert_bad(_write(tmp_path, raw), match=f"tensor 'w' n_dims is {n_dims}")


def test_tensor_n_dims_corrupted_in_writer_file(tmp_path: Path) -> None:
    path = _tiny(tmp_path)
    pos = _tensor_info_pos(path.read_bytes(), "b.bias")
    _assert_bad(_patch(path, pos, "<I", 0xFFFFFFFF), match="tensor 'b.bias' n_dims is 4294967295")


def test_tensor_zero_dim(tmp_path: Path) -> None:
    raw = _gguf(tensors=[_ti("w", [4, 0])], data=b"\0" * 64)
    _assert_bad(_write(tmp_path, raw), match=r"tensor 'w' dims \[4, 0\] has a zero-size dimension")


def test_tensor_element_count_overflows_int64(tmp_path: Path) -> None:
    raw = _gguf(tensors=[_ti("w", [2**32, 2**32])], data=b"\0" * 64)
    _assert_bad(_write(tmp_path, raw), match=r"tensor 'w' dims .* more than 2\*\*63-1 elements")


def test_tensor_absurd_shape_past_eof(tmp_path: Path) -> None:
    raw = _gguf(tensors=[_ti("w", [2**20, 2**20, 2**10])], data=b"\0" * 64)
    _assert_bad(_write(tmp_path, raw), match="tensor 'w' data .* past the end of the file")


def test_tensor_unknown_ggml_type(tmp_path: Path) -> None:
    path = _tiny(tmp_path)
    pos = _tensor_info_pos(path.read_bytes(), "a.weight") + 4 + 2 * 8  # past n_dims and 2 dims
    _assert_bad(_patch(path, pos, "<I", 4), match="tensor 'a.weight' has unknown ggml type 4")


def test_tensor_row_not_multiple_of_block_size(tmp_path: Path) -> None:
    raw = _gguf(tensors=[_ti("w", [48, 2], QT.Q4_0.value)], data=b"\0" * 64)
    _assert_bad(_write(tmp_path, raw), match="tensor 'w' .* not a multiple of the Q4_0 block size 32")


def test_tensor_offset_not_aligned(tmp_path: Path) -> None:
    path = _tiny(tmp_path)
    pos = _tensor_info_pos(path.read_bytes(), "b.bias") + 4 + 8 + 4  # n_dims, 1 dim, type
    message = "tensor 'b.bias' data offset 65 is not a multiple of general.alignment 32"
    _assert_bad(_patch(path, pos, "<Q", 65), match=message)


def test_tensor_data_past_eof(tmp_path: Path) -> None:
    path = _tiny(tmp_path)
    pos = _tensor_info_pos(path.read_bytes(), "c.weight") + 4 + 2 * 8 + 4
    _assert_bad(_patch(path, pos, "<Q", 2**60), match="tensor 'c.weight' data .* past the end of the file")


def test_truncated_writer_file_data_past_eof(tmp_path: Path) -> None:
    path = _tiny(tmp_path)
    path.write_bytes(path.read_bytes()[:-40])  # the writer pads the last tensor by 28
    _assert_bad(path, match="tensor 'c.weight' data .* past the end of the file")


def test_truncated_inside_tensor_infos(tmp_path: Path) -> None:
    path = _tiny(tmp_path)
    raw = path.read_bytes()
    path.write_bytes(raw[: _tensor_info_pos(raw, "b.bias") + 6])
    _assert_bad(path, match="tensor 'b.bias' dims needs 8 bytes")


def test_overlapping_tensor_data(tmp_path: Path) -> None:
    path = _tiny(tmp_path)
    pos = _tensor_info_pos(path.read_bytes(), "b.bias") + 4 + 8 + 4
    _assert_bad(_patch(path, pos, "<Q", 32), match="tensor 'b.bias' data offset 32 overlaps tensor 'a.weight'")


def test_duplicate_tensor_name(tmp_path: Path) -> None:
    raw = _gguf(tensors=[_ti("w", [4]), _ti("w", [4], offset=32)], data=b"\0" * 64)
    _assert_bad(_write(tmp_path, raw), match="duplicate tensor name 'w'")


def test_tensor_name_not_utf8(tmp_path: Path) -> None:
    raw = _header(1, 0) + _s(b"\xc3\x28") + struct.pack("<IQIQ", 1, 4, F32, 0) + b"\0" * 64
    _assert_bad(_write(tmp_path, raw), match="tensor name #0 is not valid UTF-8")
