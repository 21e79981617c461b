"""Decoding: any image mode and size -> RGB uint8 arrays of one size, predictably."""

from __future__ import annotations

import glob
import io
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps, features

from fm2edge.errors import Fm2EdgeError

HEIF_SUFFIXES = (".heic", ".heif")  # what phones save photos as: Pillow reads them through pillow-heif's plugin
HEIF_FIX = "pip install 'fm2edge[heif]' (pillow-heif) to read them, or convert them to JPEG"
HEIF_SKIPPED = f"HEIC/HEIF photo ({HEIF_FIX})"  # how a folder's summary counts those it could not read
EXIF_ORIENTATION = 0x0112  # the EXIF tag a camera writes instead of turning the pixels (portrait photos from phones)


def heif_plugin() -> bool:
    """Register pillow-heif's opener with Pillow where it is installed (the ``heif`` extra); whether HEIC/HEIF
    photos can be read."""
    try:
        from pillow_heif import register_heif_opener
    except ImportError:
        return False
    register_heif_opener()
    return True


# what counts as an image file in folders (image-folder datasets, `fm2edge predict` inputs): Pillow's formats, AVIF
# where this Pillow was built with it, HEIC/HEIF with its plugin
IMAGE_SUFFIXES = ((".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
                  + ((".avif",) if "avif" in features.get_supported_modules() else ())
                  + (HEIF_SUFFIXES if heif_plugin() else ()))


def unreadable_kind(path: Path) -> str:
    """Why a file with a suffix outside IMAGE_SUFFIXES is not read: a HEIC/HEIF photo without its plugin (and the
    fix), or not an image at all."""
    return HEIF_SKIPPED if path.suffix.lower() in HEIF_SUFFIXES else "not an image"


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode to RGB.

    Transparent images (RGBA, LA, P with transparency) are composited over white rather than having their alpha
    dropped, which would turn transparent pixels into whatever colour they happen to store (often black).
    16-bit greyscale is scaled to 8 bits instead of clipped.
    """
    if img.mode == "RGB":
        return img
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if img.mode.startswith("I;16"):
        arr = (np.asarray(img, dtype=np.uint16) // 257).astype(np.uint8)
        return Image.fromarray(arr, mode="L").convert("RGB")
    if img.mode in ("I", "F"):
        arr = np.clip(np.asarray(img, dtype=np.float64), 0, 255).astype(np.uint8)
        return Image.fromarray(arr, mode="L").convert("RGB")
    return img.convert("RGB")


def resize_center_crop(img: Image.Image, size: int) -> Image.Image:
    """Resize the shortest edge to ``size`` (bicubic, antialiased) and centre-crop a ``size`` x ``size`` square."""
    w, h = img.size
    if (w, h) == (size, size):
        return img
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    img = img.resize((nw, nh), Image.Resampling.BICUBIC)
    left, top = (nw - size) // 2, (nh - size) // 2
    return img.crop((left, top, left + size, top + size))


def open_image(data: bytes | str | Image.Image) -> Image.Image:
    """Open an image from encoded bytes, a file path, or pass a PIL image through (not yet decoded)."""
    if isinstance(data, Image.Image):
        return data
    if isinstance(data, (bytes, bytearray, memoryview)):
        return Image.open(io.BytesIO(bytes(data)))
    return Image.open(data)


def decode(data: bytes | str | Image.Image, size: tuple[int, int] | None) -> np.ndarray:
    """Decode fully to an HWC uint8 RGB array, resized to ``size`` (square) when the image differs from it.

    Raises ``OSError``/``ValueError`` for corrupt or truncated files; the caller decides to skip or stop.
    """
    # Truncated files must raise, not be padded with grey silently.
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    img = open_image(data)
    if size is not None and img.format == "JPEG":
        # libjpeg decodes at 1/2, 1/4 or 1/8 scale while still covering ``size`` (a 12-megapixel photo stored at
        # 256 px decodes at 1/8): the resize below then starts from fewer pixels, at a fraction of the time
        img.draft("RGB", (size[1], size[0]))
    img.load()
    img = to_rgb(upright(img))
    if size is not None and img.size != (size[1], size[0]):
        img = resize_center_crop(img, size[0])
    return np.asarray(img, dtype=np.uint8)


def orientation(img: Image.Image) -> int:
    """The image's EXIF orientation (1: as stored; 5-8: a quarter turn), read from the header."""
    return img.getexif().get(EXIF_ORIENTATION, 1)


def upright(img: Image.Image) -> Image.Image:
    """The image turned as its EXIF orientation says, as a viewer shows it (and as Hugging Face ``datasets``
    decodes it); unchanged when it has no such tag."""
    return img if orientation(img) == 1 else ImageOps.exif_transpose(img)


def peek_size(data: bytes | str | Image.Image) -> tuple[int, int]:
    """(height, width) from the header alone, without decoding pixels."""
    img = open_image(data)
    w, h = img.size
    return (w, h) if orientation(img) in (5, 6, 7, 8) else (h, w)  # a quarter turn swaps the sides


def find_images(inputs: Iterable[str]) -> list[Path]:
    """Image files from files, folders (recursively) and glob patterns, in a stable order; an input that matches
    nothing is an error naming it."""
    found: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            files = sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file())
        elif p.is_file():
            files = [p]
        else:
            files = sorted(Path(f) for f in glob.glob(item, recursive=True) if Path(f).is_file())
        if not files:
            heif = p.is_dir() and any(f.suffix.lower() in HEIF_SUFFIXES for f in p.rglob("*"))
            raise Fm2EdgeError(f"'{item}' names no image files (looked for {', '.join(IMAGE_SUFFIXES)})"
                               + (f"; it holds HEIC/HEIF photos: {HEIF_FIX}" if heif else ""))
        found.extend(files)
    return found
