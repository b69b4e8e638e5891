"""Decode any image file into the 8-bit RGB picture a backbone expects, or fail naming the file.

Pillow's own ``convert("RGB")`` is right for most files but not for two common ones: 16-bit greyscale
(``I;16``, e.g. microscopy or medical PNGs) is clipped at 255, so almost everything turns white, and a
transparent image (RGBA, or a palette with a transparent colour) exposes whatever RGB values hide
under alpha 0. :func:`to_rgb` scales 16-bit pixels to 0-255 and composites transparency on a background,
and reads 32-bit float pixels (scientific TIFFs) as [0, 1] or 0-255. :func:`load_rgb` also turns a phone
photo upright (its EXIF orientation) and names the file when Pillow refuses it (too many pixels, a format
this Pillow cannot decode such as HEIC without a plugin).
"""
from __future__ import annotations

import os

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff", ".avif", ".heic", ".heif")
HEIF_FIX = ("install the plugin (pip install pillow-heif) and call pillow_heif.register_heif_opener() before "
            "loading, or convert the files to JPEG (e.g. macOS Preview: File > Export; or `heif-convert`)")
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")  # "I": 16-bit PNGs in older Pillow versions
_WITH_ALPHA = ("RGBA", "RGBa", "LA", "La", "PA")


def is_image_file(path: str) -> bool:
    """True for files with an image extension that are not hidden (skips ``.DS_Store``, ``._x.jpg``).

    Used in: 01_data_loading.ipynb (through folders.image_folder)
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
    if image.mode == "F":
        return _float_to_rgb(image)
    if image.mode in _WITH_ALPHA or "transparency" in image.info:
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (*background, 255))
        canvas.alpha_composite(rgba)
        return canvas.convert("RGB")
    return image.convert("RGB")


def _float_to_rgb(image: "PIL.Image.Image") -> "PIL.Image.Image":  # noqa: F821
    """32-bit float greyscale: values in [0, 1] are scaled to 0-255, values in [0, 255] kept as they are."""
    import numpy as np
    from PIL import Image

    pixels = np.nan_to_num(np.asarray(image, dtype=np.float32))
    low, high = float(pixels.min()), float(pixels.max())
    if low < 0 or high > 255:
        raise ValueError(f"its float pixels range from {low:g} to {high:g}, neither [0, 1] nor 0-255, so their "
                         "brightness is unknown. Rescale the file to [0, 1] (or 0-255) first")
    scale = 255.0 if high <= 1.0 else 1.0
    return Image.fromarray(np.rint(pixels * scale).astype(np.uint8)).convert("RGB")


def undecodable(paths: list[str]) -> list[str]:
    """The image files among ``paths`` whose format this Pillow has no decoder for (HEIC without a plugin).

    Only extensions of ``IMAGE_EXTENSIONS`` are judged; any other file is left to Pillow to recognise.

    Used in: 01_data_loading.ipynb (through folders.image_folder)
    """
    from PIL import Image

    known = Image.registered_extensions()
    return [path for path in paths
            if os.path.splitext(path)[1].lower() in IMAGE_EXTENSIONS and os.path.splitext(path)[1].lower() not in known]


def load_rgb(path: str | os.PathLike, *, draft_size: int | None = None) -> "PIL.Image.Image":  # noqa: F821
    """Open an image file as 8-bit RGB (:func:`to_rgb`).

    Args:
        path: The image file.
        draft_size: If given, a JPEG may be decoded directly at a reduced scale whose shorter side stays
            at least about this size (much faster for large photos that are resized anyway).

    Raises:
        ValueError: The file is truncated or not a readable image; the message names the file.

    Used in: 02_data_augmentation.ipynb; 01_data_loading.ipynb (through image_folder), 10_deployment_and_scaling.ipynb
    """
    from PIL import Image, ImageOps

    if undecodable([str(path)]):
        raise ValueError(f"Cannot read image {path}: this Pillow has no decoder for "
                         f"{os.path.splitext(path)[1]} files. Fix: {HEIF_FIX}.")
    try:
        with Image.open(path) as image:
            if draft_size is not None:
                image.draft("RGB", (draft_size, draft_size))
            return to_rgb(ImageOps.exif_transpose(image))  # phone photos: stored sideways, shown upright
    except Image.DecompressionBombError as err:
        raise ValueError(
            f"Cannot read image {path}: {err} Pillow refuses images over Image.MAX_IMAGE_PIXELS "
            f"({Image.MAX_IMAGE_PIXELS}) pixels. If you trust the file, raise the limit before loading "
            "(from PIL import Image; Image.MAX_IMAGE_PIXELS = None), or downscale the file."
        ) from None
    except (OSError, SyntaxError, ValueError) as err:
        raise ValueError(
            f"Cannot read image {path}: {err}. Delete or replace this file and run again."
        ) from None
