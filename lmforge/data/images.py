"""Images for vision-language models: read, check, decode, resize and normalise them, and find them
in chat messages.

Images come from strangers (chat JSONL files, API requests), so every check that can run before
decoding does: the encoded size, the format named in the file's header, the pixel count the header
promises (a "decompression bomb" is a small file declaring a huge canvas). Pillow's own bomb guard
stays on as well. Every problem is a `ValueError` saying what is wrong and where.

Messages may hold images as OpenAI content parts:
    {"role": "user", "content": [{"type": "text", "text": "What is this?"},
                                 {"type": "image_url", "image_url": {"url": "data:image/png;base64,..."}}]}
The url is a `data:` URL (base64) or, where the caller allows it (local files, never API requests),
a path, relative to the file that names it. `split_image_content` turns such messages into plain
string contents with a marker where each image was, plus the list of image sources in order; the
chat format then places the model's image placeholder tokens at the markers.
"""

from __future__ import annotations

import base64
import binascii
import io
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image, UnidentifiedImageError

__all__ = [
    "DEFAULT_LIMITS",
    "FORMATS",
    "ImageLimits",
    "decode_image",
    "has_images",
    "image_to_tensor",
    "load_image",
    "read_image_source",
    "split_image_content",
]

FORMATS = ("PNG", "JPEG", "GIF", "WEBP", "BMP")  # formats Pillow decodes that are accepted
_MAGIC = (b"\x89PNG", b"\xff\xd8", b"GIF8", b"RIFF", b"BM")  # how files of those formats begin


@dataclass(frozen=True)
class ImageLimits:
    """What an accepted image may be: encoded bytes, pixels (width x height) and either side."""

    max_bytes: int = 16 << 20
    max_pixels: int = 4096 * 4096
    max_side: int = 8192

    def __post_init__(self) -> None:
        for name in ("max_bytes", "max_pixels", "max_side"):
            if getattr(self, name) <= 0:
                raise ValueError(f"ImageLimits.{name} must be positive")


DEFAULT_LIMITS = ImageLimits()


def decode_image(data: bytes, where: str = "image", limits: ImageLimits = DEFAULT_LIMITS) -> Image.Image:
    """Encoded bytes -> an RGB image, or a ValueError naming `where` and the problem.

    The checks, in order: the byte size; the header names an accepted format; the header's width
    and height within the limits (before any pixel is decoded); the full decode (truncated or
    corrupt data fails here). Animated images give their first frame; transparency is flattened
    onto white.
    """
    if not isinstance(data, (bytes, bytearray)):
        raise ValueError(f"{where}: image data must be bytes, got {type(data).__name__}")
    if not data:
        raise ValueError(f"{where}: the image is empty")
    if len(data) > limits.max_bytes:
        raise ValueError(f"{where}: the image is {len(data)} bytes; the limit is {limits.max_bytes}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(bytes(data)), formats=FORMATS)
    except UnidentifiedImageError:
        if bytes(data[:4]) in _MAGIC or bytes(data[:2]) in _MAGIC:
            raise ValueError(f"{where}: the image data is truncated or corrupt (its header is unreadable)") from None
        raise ValueError(f"{where}: not an image in an accepted format ({', '.join(FORMATS)})") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ValueError(f"{where}: refused as a decompression bomb ({error})") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise ValueError(f"{where}: unreadable image header ({error})") from None
    width, height = image.size
    if width <= 0 or height <= 0:
        raise ValueError(f"{where}: the image has no pixels ({width}x{height})")
    if width > limits.max_side or height > limits.max_side or width * height > limits.max_pixels:
        raise ValueError(f"{where}: the image is {width}x{height} pixels; the limits are {limits.max_side} per side "
                         f"and {limits.max_pixels} in all (refused before decoding, as a possible decompression bomb)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image.seek(0)
            image.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ValueError(f"{where}: refused as a decompression bomb ({error})") from None
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise ValueError(f"{where}: the image data is truncated or corrupt ({error})") from None
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        flat = Image.new("RGB", rgba.size, (255, 255, 255))
        flat.paste(rgba, mask=rgba.getchannel("A"))
        return flat
    return image.convert("RGB")


def read_image_source(source: str, where: str = "image", *, base_dir: str | os.PathLike | None = None,
                      allow_paths: bool = True, limits: ImageLimits = DEFAULT_LIMITS) -> bytes:
    """The encoded bytes an image url names: a base64 `data:image/...` URL, or (with `allow_paths`)
    a local file, relative to `base_dir` when not absolute. Remote URLs are refused: nothing is
    downloaded."""
    if not isinstance(source, str) or not source:
        raise ValueError(f"{where}: the image url must be a non-empty string")
    if source.startswith("data:"):
        header, comma, payload = source.partition(",")
        if not comma or not header.endswith(";base64") or not header[5:].startswith("image/"):
            raise ValueError(f"{where}: a data URL must look like data:image/png;base64,<data>")
        if len(payload) > limits.max_bytes * 4 // 3 + 4:
            raise ValueError(f"{where}: the image is over {limits.max_bytes} bytes; that is the limit")
        try:
            return base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError(f"{where}: the data URL is not valid base64") from None
    if source.startswith(("http://", "https://")):
        raise ValueError(f"{where}: remote image URLs are not fetched (no network); send the image as a data: URL")
    if not allow_paths:
        raise ValueError(f"{where}: only data:image/...;base64 URLs are accepted here, not file paths")
    path = Path(source.removeprefix("file://"))
    if not path.is_absolute() and base_dir is not None:
        path = Path(base_dir) / path
    if not path.is_file():
        raise ValueError(f"{where}: image file {path} does not exist")
    size = path.stat().st_size
    if size > limits.max_bytes:
        raise ValueError(f"{where}: image file {path} is {size} bytes; the limit is {limits.max_bytes}")
    return path.read_bytes()


def load_image(source: str, where: str = "image", *, base_dir: str | os.PathLike | None = None,
               allow_paths: bool = True, limits: ImageLimits = DEFAULT_LIMITS) -> Image.Image:
    """`read_image_source` then `decode_image`."""
    data = read_image_source(source, where, base_dir=base_dir, allow_paths=allow_paths, limits=limits)
    return decode_image(data, where, limits)


def image_to_tensor(image: Image.Image, size: int) -> torch.Tensor:
    """An RGB image resized to size x size (bicubic) -> float tensor [3, size, size] scaled to [-1, 1]."""
    if size <= 0:
        raise ValueError(f"image size must be positive, got {size}")
    resized = image.convert("RGB").resize((size, size), Image.Resampling.BICUBIC)
    pixels = torch.frombuffer(bytearray(resized.tobytes()), dtype=torch.uint8).view(size, size, 3)
    return pixels.permute(2, 0, 1).float().div(127.5).sub(1.0)


def _image_url(part: dict, where: str) -> str:
    value = part.get("image_url")
    url = value.get("url") if isinstance(value, dict) else value
    if not isinstance(url, str) or not url:
        raise ValueError(f"{where}: an image_url part needs {{\"image_url\": {{\"url\": \"data:... or a path\"}}}}")
    return url


def has_images(messages: Sequence[Any]) -> bool:
    """Whether any message holds an image content part."""
    return any(isinstance(m, dict) and isinstance(m.get("content"), list)
               and any(isinstance(p, dict) and p.get("type") == "image_url" for p in m["content"])
               for m in messages)


def split_image_content(messages: Sequence[Any], marker: str, where: str = "messages") -> tuple[list[dict[str, Any]], list[str]]:
    """Messages whose content may be a list of text and image_url parts -> (the messages with string
    content, `marker` standing where each image was, the image urls in order).

    String contents pass through unchanged (a marker already in the text is refused, so the
    number of images cannot be forged by typing it).
    """
    if not isinstance(messages, (list, tuple)):
        raise ValueError(f"{where} must be a list, got {type(messages).__name__}")
    out: list[dict[str, Any]] = []
    urls: list[str] = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise ValueError(f"{where}[{i}] must be an object, got {type(message).__name__}")
        content = message.get("content")
        pieces: list[str] = []
        if isinstance(content, list):
            for j, part in enumerate(content):
                at = f"{where}[{i}].content[{j}]"
                kind = part.get("type") if isinstance(part, dict) else None
                if kind in ("text", "input_text") and isinstance(part.get("text"), str):
                    pieces.append(part["text"])
                elif kind == "image_url":
                    urls.append(_image_url(part, at))
                    pieces.append(marker)
                else:
                    raise ValueError(f"{at}: expected a text or image_url part, got {kind or type(part).__name__!r}")
            if any(marker in p for p in pieces if p != marker):
                raise ValueError(f"{where}[{i}]: the text contains the image marker {marker!r}")
            text = "".join(pieces)
        else:
            if isinstance(content, str) and marker in content:
                raise ValueError(f"{where}[{i}]: the text contains the image marker {marker!r}")
            text = content
        out.append({**message, "content": text})
    return out, urls
