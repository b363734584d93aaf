"""Image files as imgpipe reads them, uint8 (C, H, W): any format PIL reads, 8-bit, transparency laid on a
background colour, the channel count and size asked for. One reader for fetch, predict and the served
model, so the three cannot disagree about preprocessing. A photo is turned upright as its EXIF orientation
says (a phone stores a portrait as a landscape with a rotation tag). A JPEG is decoded at the smallest DCT scale
that still covers the size asked for (benchmarks/photo_decode.py). Depends on numpy and PIL only: the logged
model carries this file.
"""

import os
import re

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from imgpipe.errors import ImgpipeError

ORIENTATION = 0x0112  # the EXIF tag: 1 upright; 2-8 mirrored and/or turned

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


def _to_8bit(image: Image.Image) -> Image.Image:
    """16-bit and float grayscale scaled to 0..255 (PIL's own convert('L') clips them instead); a transparent
    value (a PNG's tRNS key) becomes an alpha channel, matched before scaling merges it with its neighbours."""
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        array = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode != "F" else max(float(array.max()), 1.0)
        gray = Image.fromarray(np.clip(np.rint(array * 255 / top), 0, 255).astype(np.uint8), "L")
        if "transparency" in image.info:
            alpha = Image.fromarray(np.where(array == image.info["transparency"], 0, 255).astype(np.uint8), "L")
            return Image.merge("LA", (gray, alpha))
        return gray
    key = image.info.get("transparency")
    if image.mode == "RGB" and isinstance(key, tuple) and max(key) > 255:
        # A 16-bit RGB PNG: PIL keeps each pixel's high byte but its tRNS key whole, which then matches no pixel.
        image.info["transparency"] = tuple(value >> 8 for value in key)
    return image


def conform(image: Image.Image, channels: int, size: tuple[int, int] | None, background: tuple[int, int, int]) -> np.ndarray:
    """An image as prepare reads it, uint8 (C, H, W): 8-bit, transparency laid on the background colour,
    `channels` channels, resized to size (H, W). What a fetched, predicted or served image goes through."""
    image = _to_8bit(image)
    # A tRNS key (one colour fully transparent) in a grayscale, RGB or palette PNG counts as alpha: optimizers
    # (optipng, oxipng) store a logo's on-or-off transparency so.
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (*background, 255))
        image = Image.alpha_composite(canvas, rgba)
    image = image.convert("L" if channels == 1 else "RGB")
    if size is not None and image.size != (size[1], size[0]):
        image = image.resize((size[1], size[0]), Image.Resampling.BILINEAR)
    array = np.asarray(image, dtype=np.uint8)
    return array[None] if channels == 1 else array.transpose(2, 0, 1)


UNREADABLE = (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError)


def unreadable(name, error: Exception, in_memory: bool = False) -> ImgpipeError:
    """One line naming the file, for any of UNREADABLE; the advice is for a file in a folder, unless the
    image came in memory (a request's), where PIL's text would name a buffer object."""
    if isinstance(error, Image.DecompressionBombError):  # PIL's refusal, above 2 * Image.MAX_IMAGE_PIXELS
        pixels = re.search(r"\((\d+) pixels\)", str(error))
        count = f"{int(pixels[1]):,} pixels, " if pixels else ""
        return ImgpipeError(f"{name}: too many pixels ({count}more than {2 * (Image.MAX_IMAGE_PIXELS or 0):,}, "
                            f"PIL's guard against decompression bombs){'' if in_memory else '; shrink or remove it'}")
    if in_memory:
        reason = re.sub(r"\s*<[^>]* object at 0x[0-9a-f]+>", "", " ".join(str(error).split()))
        return ImgpipeError(f"{name}: not a readable image file ({reason})")
    return ImgpipeError(f"{name}: not a readable image ({error}); remove or replace it")


def turned(image: Image.Image) -> bool:
    """Whether the EXIF orientation is a quarter turn: the upright image's height and width are the file's swapped."""
    return image.getexif().get(ORIENTATION, 1) in (5, 6, 7, 8)


def upright_size(image: Image.Image) -> tuple[int, int]:
    """(height, width) of the image as decode returns it, from the header alone."""
    return (image.width, image.height) if turned(image) else (image.height, image.width)


def draft(image: Image.Image, size: tuple[int, int] | None) -> None:
    """Before load(): have a JPEG decoded at the smallest scale (1/2, 1/4, 1/8) whose both sides still
    cover size (H, W); conform then resizes it as any image. Scale only, in the file's own mode: colour
    is converted in conform, one way for every format (draft("L") would take a colour JPEG's luma
    instead, a grey level or so apart). PIL ignores it for other formats; no size, no change."""
    if size is not None:
        image.draft(image.mode, (size[1], size[0]))


def decode(path, channels: int, size: tuple[int, int] | None, background: tuple[int, int, int], name: str | None = None,
           *, reduced: bool = True, max_pixels: int | None = None) -> np.ndarray:
    """One image file (a path, or a file object called `name` in errors) as uint8 (C, H, W): what fetch,
    predict and the served model read files with. reduced=False decodes a JPEG at full size before
    resizing (the slower path before draft, kept to compare against). max_pixels: a stricter limit than
    PIL's, checked on the header before any pixel is decoded. Raises ImgpipeError naming the file if it
    is corrupt or too large to open."""
    in_memory = not isinstance(path, (str, os.PathLike))
    try:
        with Image.open(path) as image:
            if max_pixels is not None and image.width * image.height > max_pixels:
                raise ImgpipeError(f"{name or path}: too many pixels ({image.width}x{image.height}, more than {max_pixels:,})")
            if reduced:
                draft(image, size if size is None or not turned(image) else (size[1], size[0]))
            image.load()
            return conform(ImageOps.exif_transpose(image), channels, size, background)
    except UNREADABLE as error:
        raise unreadable(name or path, error, in_memory) from None
