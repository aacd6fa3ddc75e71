"""validate_gguf: hostile GGUF files fail fast with a ValueError naming the field."""

from __future__ import annotations

import json
import os
import re
import struct
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType, GGUFWriter
from tokenizers.pre_tokenizers import ByteLevel

from lmforge.io.gguf_validate import (
    MAX_KV_PAIRS, MAX_NESTED_ARRAYS, MAX_TENSORS, MAX_WALKED_STRINGS, GGUFSummary, TensorInfo, open_gguf, validate_gguf,
)

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


def _assert_bad(path: Path, match: str, check=validate_gguf) -> str:
    """The acceptance rule: ValueError naming the file and field, raised within a second of CPU time."""
    start = time.process_time()
    with pytest.raises(ValueError, match=match) as info:
        check(path)
    elapsed = time.process_time() - start
    assert elapsed < 1.0, f"took {elapsed:.2f}s of CPU"
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
    start = time.process_time()
    summary = validate_gguf(smollm_gguf)
    elapsed = time.process_time() - start
    assert elapsed < 0.5, f"took {elapsed:.2f}s of CPU"
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


# --- caps on what is walked item by item ---


def test_too_many_keys_refused_before_walking(tmp_path: Path) -> None:
    n = MAX_KV_PAIRS + 1
    raw = _header(0, n) + _kv_u32("k", 1) * n
    _assert_bad(_write(tmp_path, raw), match=f"kv_count {n} is absurd.*limit {MAX_KV_PAIRS} keys")


def test_too_many_strings_refused_before_walking(tmp_path: Path) -> None:
    n = MAX_WALKED_STRINGS + 1
    raw = _gguf([_kv("tokenizer.ggml.tokens", VT.ARRAY, struct.pack("<IQ", VT.STRING, n) + _s("") * n)])
    _assert_bad(_write(tmp_path, raw), match=f"'tokenizer.ggml.tokens' brings the strings .* to {n}, more than")


def test_strings_are_counted_over_all_arrays(tmp_path: Path) -> None:
    half = MAX_WALKED_STRINGS // 2 + 1
    array = struct.pack("<IQ", VT.STRING, half) + _s("") * half
    raw = _gguf([_kv("x.a", VT.ARRAY, array), _kv("x.b", VT.ARRAY, array)])
    _assert_bad(_write(tmp_path, raw), match="'x.b' brings the strings")


def test_too_many_nested_arrays_refused(tmp_path: Path) -> None:
    n = MAX_NESTED_ARRAYS + 1
    payload = struct.pack("<IQ", VT.ARRAY, n) + struct.pack("<IQ", VT.UINT8, 0) * n
    _assert_bad(_write(tmp_path, _gguf([_kv("x.nested", VT.ARRAY, payload)])), match="brings the nested arrays")


# --- model metadata against the tensor table (check_model, through open_gguf and load_gguf) ---

DIM, HEADS, KV_HEADS, FFN, LAYERS = 64, 4, 2, 96, 2
TOKENS = list(ByteLevel.alphabet()) + ["Ġt"]  # 256 byte tokens and one merge
LLAMA_META: dict[str, object] = {
    "llama.block_count": LAYERS, "llama.context_length": 128, "llama.embedding_length": DIM,
    "llama.feed_forward_length": FFN, "llama.attention.head_count": HEADS, "llama.attention.head_count_kv": KV_HEADS,
    "llama.rope.freq_base": 10000.0, "llama.attention.layer_norm_rms_epsilon": 1e-5,
    "tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "gpt-2",
}


def _llama_shapes(vocab: int = len(TOKENS), layers: int = LAYERS) -> dict[str, tuple[int, ...]]:
    """numpy shapes (rows, row length) of a consistent tiny llama."""
    head = DIM // HEADS
    shapes: dict[str, tuple[int, ...]] = {"token_embd.weight": (vocab, DIM), "output_norm.weight": (DIM,)}
    for i in range(layers):
        shapes.update({
            f"blk.{i}.attn_norm.weight": (DIM,), f"blk.{i}.attn_q.weight": (HEADS * head, DIM),
            f"blk.{i}.attn_k.weight": (KV_HEADS * head, DIM), f"blk.{i}.attn_v.weight": (KV_HEADS * head, DIM),
            f"blk.{i}.attn_output.weight": (DIM, HEADS * head), f"blk.{i}.ffn_norm.weight": (DIM,),
            f"blk.{i}.ffn_gate.weight": (FFN, DIM), f"blk.{i}.ffn_up.weight": (FFN, DIM),
            f"blk.{i}.ffn_down.weight": (DIM, FFN),
        })
    return shapes


def _llama(tmp_path: Path, meta: dict | None = None, shapes: dict | None = None, tokens: list[str] = TOKENS,
           token_types: list[int] | None = None, arch: str = "llama", name: str = "model.gguf") -> Path:
    """A tiny llama GGUF made by the gguf package; `meta`/`shapes` entries replace (None: drop) the defaults."""
    fields = {**LLAMA_META, **(meta or {})}
    tensors = {**_llama_shapes(len(TOKENS)), **(shapes or {})}
    path = tmp_path / name
    w = GGUFWriter(str(path), arch)
    for key, value in fields.items():
        key = key.replace("llama.", f"{arch}.", 1)
        if value is None:
            continue
        if isinstance(value, str):
            w.add_string(key, value)
        elif isinstance(value, float):
            w.add_float32(key, value)
        else:
            w.add_uint64(key, value) if value >= 2**32 else w.add_uint32(key, value)
    w.add_array("tokenizer.ggml.tokens", tokens)
    w.add_array("tokenizer.ggml.token_type", [1] * len(tokens) if token_types is None else token_types)
    w.add_array("tokenizer.ggml.merges", ["Ġ t"])
    rng = np.random.default_rng(0)
    for tensor, shape in tensors.items():
        if shape is not None:
            w.add_tensor(tensor, (0.1 * rng.standard_normal(shape)).astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def _refused(path: Path, match: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """Refused by open_gguf, and by load_gguf before a single tensor is dequantized or a module built."""
    import gguf

    from lmforge.io import gguf as loader

    message = _assert_bad(path, match, check=open_gguf)

    def built(*args, **kwargs):
        raise AssertionError("a tensor was dequantized or a module built before the file was refused")

    monkeypatch.setattr(gguf.quants, "dequantize", built)
    monkeypatch.setattr(loader.Transformer, "from_state_dict", built)
    _assert_bad(path, match, check=loader.load_gguf_model)
    return message


def test_consistent_llama_opens_like_gguf_reader(tmp_path: Path) -> None:
    path = _llama(tmp_path)
    opened = open_gguf(path)
    reader = GGUFReader(path)
    assert opened.metadata["tokenizer.ggml.tokens"] == reader.fields["tokenizer.ggml.tokens"].contents() == TOKENS
    assert opened.metadata["tokenizer.ggml.token_type"] == [1] * len(TOKENS)
    assert opened.metadata["tokenizer.ggml.merges"] == ["Ġ t"]
    assert opened.metadata["llama.embedding_length"] == DIM and opened.metadata["general.architecture"] == "llama"
    assert [t.name for t in opened.tensors] == [t.name for t in reader.tensors]
    for ours, theirs in zip(opened.tensors, reader.tensors):
        assert ours.tensor_type == theirs.tensor_type and ours.data_offset == theirs.data_offset
        assert ours.data.dtype == theirs.data.dtype and np.array_equal(ours.data, theirs.data)
        assert not ours.data.flags.writeable  # views of the file, never copies


def test_smollm2_opens_fast(smollm_gguf: Path) -> None:
    """The real file (its logits against transformers are in test_gguf.py); GGUFReader needs 4 s of CPU for it."""
    start = time.process_time()
    opened = open_gguf(smollm_gguf)
    elapsed = time.process_time() - start
    assert elapsed < 0.5, f"took {elapsed:.2f}s of CPU"
    tokens, merges = opened.metadata["tokenizer.ggml.tokens"], opened.metadata["tokenizer.ggml.merges"]
    assert (len(tokens), tokens[:3], tokens[-1]) == (49152, ["<|endoftext|>", "<|im_start|>", "<|im_end|>"], "ectable")
    assert (len(merges), merges[:2]) == (48900, ["Ġ t", "Ġ a"])
    assert set(opened.metadata["tokenizer.ggml.token_type"]) == {1, 3}
    assert "general.languages" not in opened.metadata  # arrays a loader does not need stay in the file
    embedding = opened.tensors[0]
    assert (embedding.name, embedding.tensor_type.name, embedding.data.shape) == ("token_embd.weight", "Q8_0", (49152, 612))


@pytest.mark.parametrize(
    ("meta", "shapes", "match"),
    [
        ({"llama.block_count": 3}, None, r"llama.block_count is 3 but the tensor table has blocks 0 to 1 \(2 blocks\)"),
        ({"llama.block_count": 10**9}, None, "llama.block_count is 1000000000 but"),
        ({"llama.block_count": 1}, None, "llama.block_count is 1 but the tensor table has blocks 0 to 1"),
        ({"llama.embedding_length": 48}, None, "llama.embedding_length is 48 but token_embd.weight rows hold 64"),
        ({"llama.attention.head_count": 8}, None,
         r"'blk.0.attn_k.weight' .* dimension 1 is 32, but llama.attention.head_count_kv x head size 8 "
         r"\(llama.embedding_length / llama.attention.head_count\) gives 16"),
        ({"llama.attention.head_count": 6}, None, "llama.embedding_length 64 is not divisible by llama.attention.head_count 6"),
        ({"llama.attention.head_count_kv": 4}, None, "'blk.0.attn_k.weight' .* llama.attention.head_count_kv x head size"),
        ({"llama.attention.head_count_kv": 3}, None, "head_count 4 is not a multiple of llama.attention.head_count_kv 3"),
        ({"llama.attention.head_count_kv": 0}, None, "llama.attention.head_count_kv is 0, expected a positive integer"),
        ({"llama.attention.key_length": 32}, None, r"'blk.0.attn_q.weight' .* head size 32 \(llama.attention.key_length\)"),
        ({"llama.rope.dimension_count": 8}, None, "partial rotary embeddings are not supported"),
        ({"llama.feed_forward_length": 128}, None, "'blk.0.ffn_gate.weight' .* but llama.feed_forward_length gives 128"),
        ({"llama.vocab_size": 32000}, None, r"llama.vocab_size is 32000 but token_embd.weight has 257 rows"),
        ({"llama.context_length": 2**40}, None, "llama.context_length 1099511627776 is absurd for this model"),
        ({"llama.embedding_length": "64"}, None, "llama.embedding_length is '64', expected a positive integer"),
        ({"llama.attention.layer_norm_rms_epsilon": None}, None, "missing metadata llama.attention.layer_norm_rms_epsilon"),
        ({"llama.rope.freq_base": float("nan")}, None, "llama.rope.freq_base is nan, expected a positive number"),
        (None, {"token_embd.weight": (300, DIM)}, "tokenizer.ggml.tokens has 257 entries but token_embd.weight has 300 rows"),
        (None, {"blk.1.ffn_down.weight": (DIM, 64)}, r"'blk.1.ffn_down.weight' .* dimension 0 is 64, but llama.feed_forward_length gives 96"),
        (None, {"output.weight": (257, 32)}, r"'output.weight' .* dimension 0 is 32, but llama.embedding_length gives 64"),
        (None, {"blk.0.ffn_up.weight": None}, "tensor 'blk.0.ffn_up.weight' is missing"),
        (None, {"blk.0.attn_q.bias": (DIM,)}, "tensor 'blk.0.attn_q.bias' is not part of a llama model"),
        (None, {"rope_freqs.weight": (DIM // HEADS // 2,)}, "scaled rotary frequencies are not supported"),
        (None, {"blk.0.attn_norm.weight": (2, DIM)}, r"'blk.0.attn_norm.weight' has 2 dimensions \[64, 2\], expected 1"),
        (None, {"token_embd.weight": None}, "tensor 'token_embd.weight' is missing"),
    ],
)
def test_metadata_contradicting_tensors_is_refused_before_loading(tmp_path, monkeypatch, meta, shapes, match) -> None:
    _refused(_llama(tmp_path, meta, shapes), match, monkeypatch)


def test_tokenizer_arrays_must_match_the_vocabulary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _llama(tmp_path, tokens=TOKENS + ["extra"], token_types=[1] * len(TOKENS),
                  shapes={"token_embd.weight": (len(TOKENS) + 1, DIM)})
    _refused(path, "tokenizer.ggml.token_type has 257 entries but the vocabulary has 258 tokens", monkeypatch)


def test_unsupported_architecture_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _refused(_llama(tmp_path, arch="bert"), "general.architecture 'bert' is not supported", monkeypatch)


def test_gpt2_position_table_must_match_context_length(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from lmforge.core.config import ModelConfig
    from lmforge.io.gguf_writer import save_gguf
    from lmforge.model.transformer import Transformer
    from lmforge.tokenizer.tokenizer import Tokenizer

    meta = {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "gpt-2", "tokenizer.ggml.tokens": TOKENS,
            "tokenizer.ggml.merges": ["Ġ t"]}
    tokenizer = Tokenizer.from_gguf_metadata(meta)
    config = ModelConfig(family="gpt2", vocab_size=len(TOKENS), dim=32, n_layers=1, n_heads=2, max_seq_len=16)
    path = save_gguf(Transformer(config), tokenizer, tmp_path / "gpt2.gguf", qtype="f32", pre="gpt-2")
    open_gguf(path)  # consistent as written
    raw = bytearray(path.read_bytes())
    key = _s("gpt2.context_length")
    struct.pack_into("<I", raw, raw.index(key) + len(key) + 4, 17)
    path.write_bytes(bytes(raw))
    _refused(path, r"'position_embd.weight' .* dimension 1 is 16, but gpt2.context_length gives 17", monkeypatch)


# --- the worst hostile files: CPU time and peak memory, measured in a fresh process ---

# load_gguf refuses through open_gguf (see _refused); measuring open_gguf alone spares importing torch.
_MEASURE = """
import json, resource, sys, time
from lmforge.io.gguf_validate import open_gguf

results = {}
for path in json.loads(sys.argv[1]):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.process_time()
    try:
        open_gguf(path)
        error = None
    except ValueError as exc:
        error = str(exc)
    cpu = time.process_time() - start
    grew = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    results[path] = {"cpu": cpu, "grew_kib": grew, "error": error}
print(json.dumps(results))
"""


def _worst_cases(tmp_path: Path) -> dict[str, tuple[Path, str | None]]:
    """name -> (file, expected error or None)."""
    strings = struct.pack("<IQ", VT.STRING, MAX_WALKED_STRINGS) + _s("") * MAX_WALKED_STRINGS
    nested = struct.pack("<IQ", VT.ARRAY, MAX_NESTED_ARRAYS) + struct.pack("<IQ", VT.UINT8, 0) * MAX_NESTED_ARRAYS
    keys = [_kv_u32(f"k.{i}", 1) for i in range(MAX_KV_PAIRS - 2)]
    infos = [_ti(f"t.{i}", [8], offset=32 * i) for i in range(MAX_TENSORS)]
    every_cap = _gguf([*keys, _kv("x.s", VT.ARRAY, strings), _kv("x.n", VT.ARRAY, nested)], infos,
                      b"\0" * (32 * MAX_TENSORS))
    huge_vocab_claim = _header(0, 1) + _kv("tokenizer.ggml.tokens", VT.ARRAY, struct.pack("<IQ", VT.STRING, 2**62))
    cases = {
        "49-byte file declaring 2**63 elements": (_header(0, 1) + _kv("t", VT.ARRAY, struct.pack("<IQ", VT.UINT8, 2**63)),
                                                  "array of 9223372036854775808 elements"),
        "string of 10**12 bytes declared": (_gguf([_kv("general.name", VT.STRING, struct.pack("<Q", 10**12))]),
                                            "declares a string of 1000000000000 bytes"),
        "2**62 tokens declared": (huge_vocab_claim, "array of 4611686018427387904 strings"),
        "every cap reached at once": (every_cap, "general.architecture None is not supported"),
    }
    out = {name: (_write(tmp_path, raw, f"case{i}.gguf"), match) for i, (name, (raw, match)) in enumerate(cases.items())}
    out["context_length 2**40"] = (_llama(tmp_path, {"llama.context_length": 2**40}, name="ctx.gguf"),
                                   "context_length 1099511627776 is absurd")
    out["block_count 10**9"] = (_llama(tmp_path, {"llama.block_count": 10**9}, name="blocks.gguf"),
                                "block_count is 1000000000")
    # A consistent model whose feed-forward tensors claim 3 x 256 MiB, stored sparsely: opening
    # maps the data without reading it (loading would then take what those tensors need).
    big = tmp_path / "big.gguf"
    shapes = {name: shape for name, shape in _llama_shapes(layers=1).items()}
    shapes.update({"blk.0.ffn_gate.weight": (1 << 20, DIM), "blk.0.ffn_up.weight": (1 << 20, DIM),
                   "blk.0.ffn_down.weight": (DIM, 1 << 20)})
    w = GGUFWriter(str(big), "llama")
    for key, value in {**LLAMA_META, "llama.block_count": 1, "llama.feed_forward_length": 1 << 20}.items():
        w.add_string(key, value) if isinstance(value, str) else (
            w.add_float32(key, value) if isinstance(value, float) else w.add_uint32(key, value))
    w.add_array("tokenizer.ggml.tokens", TOKENS)
    w.add_array("tokenizer.ggml.merges", ["Ġ t"])
    for name, shape in shapes.items():
        w.add_tensor_info(name, shape, np.dtype(np.float32), int(np.prod(shape)) * 4)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    w.close()
    end = big.stat().st_size + 32 + sum(-(-int(np.prod(shape)) * 4 // 32) * 32 for shape in shapes.values())
    with open(big, "r+b") as handle:
        handle.truncate(end)  # sparse: the data reads as zeros and takes no disk space
    out["3 x 256 MiB of tensors (sparse file)"] = (big, None)
    return out


def test_worst_hostile_files_cost_under_a_cpu_second_and_little_memory(tmp_path: Path) -> None:
    cases = _worst_cases(tmp_path)
    plan = [str(path) for path, _ in cases.values()]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", _MEASURE, json.dumps(plan)], capture_output=True, text=True,
                          env=env, cwd=Path(__file__).resolve().parents[2], timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads(done.stdout)
    for name, (path, match) in cases.items():
        result = results[str(path)]
        if match is None:
            assert result["error"] is None, f"{name}: {result['error']}"
        else:
            assert result["error"] is not None and re.search(match, result["error"]), f"{name}: {result['error']}"
            assert str(path) in result["error"]
        assert result["cpu"] < 1.0, f"{name}: {result['cpu']:.2f} s of CPU"
        # Peak memory growth over the whole run (the high-water mark never goes down): a few MiB.
        assert result["grew_kib"] < 48 * 1024, f"{name}: peak memory grew by {result['grew_kib']} KiB"
