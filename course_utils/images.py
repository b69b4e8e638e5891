"""Decode any image file into the 8-bit RGB picture a backbone expects, or fail naming the file.

Pillow's own ``convert("RGB")`` is right for most files but not for two common ones: 16-bit greyscale
(``I;16``, e.g. microscopy or medical PNGs) is clipped at 255, so almost everything turns white, and a
transparent image (RGBA, or a palette with a transparent colour) exposes whatever RGB values hide
under alpha 0. :func:`to_rgb` scales 16-bit pixels to 0-255 and composites transparency on a background.
"""
from __future__ import annotations

import os

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff")
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")  # "I": 16-bit PNGs in older Pillow versions
_WITH_ALPHA = ("RGBA", "RGBa", "LA", "La", "PA")


def is_image_file(path: str) -> bool:
    """True for files with an image extension that are not hidden (skips ``.DS_Store``, ``._x.jpg``).

    Used in: 01_data_loading.ipynb (through data.image_folder)
    """
    name = os.path.basename(path)
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def to_rgb(image: "PIL.Image.Image", *, background: tuple[int, int, int] = (255, 255, 255)) -> "PIL.Image.Image":  # noqa: F821
    """Any Pillow image as 8-bit RGB with the brightness the file means.

    16-bit greyscale is divided by 257 (65535 becomes 255); transparent pixels are composited on
    ``background`` (white by default, as most viewers show them); palette, greyscale and CMYK go
    through Pillow's conversion.

    Used in: 01_data_loading.ipynb, 02_data_augmentation.ipynb (through load_rgb and CachedImages)
    """
    import numpy as np
    from PIL import Image

    if image.mode in _SIXTEEN_BIT:
        pixels = np.asarray(image).astype(np.float32) / 257.0
        grey = Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8))
        return grey.convert("RGB")
    if image.mode in _WITH_ALPHA or "transparency" in image.info:
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (*background, 255))
        canvas.alpha_composite(rgba)
        return canvas.convert("RGB")
    return image.convert("RGB")


def load_rgb(path: str | os.PathLike, *, draft_size: int | None = None) -> "PIL.Image.Image":  # noqa: F821
    """Open an image file as 8-bit RGB (:func:`to_rgb`).

    Args:
        path: The image file.
        draft_size: If given, a JPEG may be decoded directly at a reduced scale whose shorter side stays
            at least about this size (much faster for large photos that are resized anyway).

    Raises:
        ValueError: The file is truncated or not a readable image; the message names the file.

    Used in: 02_data_augmentation.ipynb; 01_data_loading.ipynb (through image_folder)
    """
    from PIL import Image

    try:
        with Image.open(path) as image:
            if draft_size is not None:
                image.draft("RGB", (draft_size, draft_size))
            return to_rgb(image)
    except (OSError, SyntaxError, ValueError) as err:
        raise ValueError(
            f"Cannot read image {path}: {err}. Delete or replace this file and run again."
        ) from None
