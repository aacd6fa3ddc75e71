"""Images in data and chat messages: decoding, the checks hostile images meet, content parts."""

from __future__ import annotations

import base64
import io
import struct
import zlib

import pytest
import torch
from PIL import Image

from lmforge.data.images import (ImageLimits, decode_image, has_images, image_to_tensor, load_image,
                                 read_image_source, split_image_content)


def png_bytes(size=(8, 6), colour=(200, 10, 30), mode="RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


def data_url(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


def with_header_size(png: bytes, width: int, height: int) -> bytes:
    """The PNG with its IHDR width and height replaced (CRC fixed): a header promising a huge canvas."""
    assert png[12:16] == b"IHDR"
    ihdr = b"IHDR" + struct.pack(">II", width, height) + png[24:29]
    return png[:8] + png[8:12] + ihdr + struct.pack(">I", zlib.crc32(ihdr)) + png[33:]


def test_decode_round_trip_and_tensor():
    image = decode_image(png_bytes((8, 6), (200, 10, 30)))
    assert image.size == (8, 6) and image.mode == "RGB"
    tensor = image_to_tensor(image, 4)
    assert tensor.shape == (3, 4, 4)
    expected = torch.tensor([200, 10, 30]).float() / 127.5 - 1
    assert torch.allclose(tensor[:, 1, 1], expected, atol=1e-6)


def test_transparency_is_flattened_onto_white():
    image = decode_image(png_bytes((2, 2), (0, 0, 0, 0), mode="RGBA"))
    assert image.getpixel((0, 0)) == (255, 255, 255)


def test_truncated_file_is_refused():
    data = png_bytes((64, 64), (1, 2, 3))
    with pytest.raises(ValueError, match="truncated or corrupt|unreadable"):
        decode_image(data[: len(data) // 2], "x.png")


def test_huge_dimensions_refused_before_decoding():
    wide = with_header_size(png_bytes((1, 1)), 9000, 9000)  # under Pillow's own guard, over max_side
    with pytest.raises(ValueError, match="9000x9000 pixels.*refused before decoding"):
        decode_image(wide, "wide.png")
    bomb = with_header_size(png_bytes((1, 1)), 60000, 60000)  # Pillow's guard answers first
    with pytest.raises(ValueError, match="bomb.png: refused as a decompression bomb"):
        decode_image(bomb, "bomb.png")


def test_decompression_bomb_within_a_small_file():
    # 3000 x 3000 of one colour compresses to a few KB; with a 1 Mpx limit it is refused unread.
    data = png_bytes((3000, 3000), (0, 0, 0))
    assert len(data) < 100_000
    with pytest.raises(ValueError, match="decompression bomb"):
        decode_image(data, "small.png", ImageLimits(max_pixels=1_000_000))


def test_wrong_formats_refused():
    with pytest.raises(ValueError, match="accepted format"):
        decode_image(b"hello, not an image", "a.txt")
    tiff = io.BytesIO()
    Image.new("RGB", (4, 4)).save(tiff, format="TIFF")
    with pytest.raises(ValueError, match="accepted format"):
        decode_image(tiff.getvalue(), "a.tiff")
    with pytest.raises(ValueError, match="empty"):
        decode_image(b"", "nothing")
    with pytest.raises(ValueError, match="bytes; the limit"):
        decode_image(png_bytes(), "big", ImageLimits(max_bytes=10))


def test_sources(tmp_path):
    data = png_bytes()
    assert read_image_source(data_url(data)) == data
    (tmp_path / "a.png").write_bytes(data)
    assert load_image("a.png", base_dir=tmp_path).size == (8, 6)
    with pytest.raises(ValueError, match="only data:image"):
        read_image_source(str(tmp_path / "a.png"), allow_paths=False)
    with pytest.raises(ValueError, match="not fetched"):
        read_image_source("https://example.com/a.png")
    with pytest.raises(ValueError, match="not valid base64"):
        read_image_source("data:image/png;base64,@@@@")
    with pytest.raises(ValueError, match="data:image/png;base64"):
        read_image_source("data:text/plain,hello")
    with pytest.raises(ValueError, match="does not exist"):
        read_image_source("missing.png", base_dir=tmp_path)


def test_split_image_content():
    messages = [{"role": "system", "content": "be brief"},
                {"role": "user", "content": [{"type": "text", "text": "What is "},
                                             {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA=="}},
                                             {"type": "text", "text": " this?"}]}]
    assert has_images(messages) and not has_images(messages[:1])
    plain, urls = split_image_content(messages, "<IMG>")
    assert plain[1]["content"] == "What is <IMG> this?" and plain[0] == messages[0]
    assert urls == ["data:image/png;base64,AA=="]
    with pytest.raises(ValueError, match=r"messages\[0\]: the text contains the image marker"):
        split_image_content([{"role": "user", "content": "forged <IMG>"}], "<IMG>")
    with pytest.raises(ValueError, match=r"content\[0\]: expected a text or image_url part"):
        split_image_content([{"role": "user", "content": [{"type": "audio"}]}], "<IMG>")
    with pytest.raises(ValueError, match="needs"):
        split_image_content([{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}], "<IMG>")
