"""Photos as every viewer shows them: the project's one image reader and the rules for a set of photos.

Every image the project reads (photos, masks) goes through :func:`read_image`, in
preprocessing, fitting, single-view fitting, overlays and exports, so landmarks, masks and K
all refer to one pixel grid: the **upright** one. Phones store a portrait photo sideways
and tag it with EXIF Orientation 6 or 8; a viewer rotates it for display, and so do we. PIL
decodes because it reports truncated files (OpenCV would return a grey-filled image).

A set of photos (a scene, a single-view folder) must give each photo its own stem, since
outputs are named by it (``masks/<stem>.png``, ``<savefolder>/<stem>/``); see
:func:`check_unique_stems`.
"""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from fitting.atomic import atomic_path

__all__ = ["IMAGE_SUFFIXES", "read_image", "exif_orientation", "image_size", "write_upright_copy",
           "check_unique_stems", "same_camera_shape"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
ORIENTATION_TAG = 0x0112
MIN_SIDE = 16
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def _orientation(im: Image.Image) -> int:
    o = im.getexif().get(ORIENTATION_TAG, 1)
    return o if o in range(1, 9) else 1  # out-of-range values are ignored by viewers too


def exif_orientation(path) -> int:
    """The EXIF orientation (1..8; 1 = stored upright, 6 = a phone portrait) from the header."""
    with Image.open(path) as im:
        return _orientation(im)


def image_size(path) -> tuple[int, int]:
    """(width, height) of the upright image, from the header only."""
    with Image.open(path) as im:
        w, h = im.size
        return (h, w) if _orientation(im) in (5, 6, 7, 8) else (w, h)


def _to_8bit(im: Image.Image) -> Image.Image:
    # PIL's convert() clips 16-bit greyscale at 255 (a white image); scale it down instead.
    if im.mode in _SIXTEEN_BIT_MODES:
        a = np.asarray(im, dtype=np.float64) / 257.0
        return Image.fromarray(np.clip(np.round(a), 0, 255).astype(np.uint8), "L")
    return im


def read_image(path, gray: bool = False) -> np.ndarray:
    """An image file as shown by a photo viewer: EXIF orientation applied, 8 bits per channel.

    Returns (H, W, 3) uint8 RGB, or (H, W) uint8 when ``gray`` (masks). Grey, palette, RGBA
    (alpha dropped), 16-bit and CMYK files are converted. Raises ValueError, naming the file
    and what to do, when it is unreadable (corrupt, truncated, empty) or under 16 pixels."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()
            upright = _to_8bit(ImageOps.exif_transpose(im))
            arr = np.asarray(upright.convert("L" if gray else "RGB"))
    except Exception as e:  # PIL raises many types for bad files
        raise ValueError(f"cannot read image {path.name}: {e} (re-export or remove the file)") from e
    if arr.shape[0] < MIN_SIDE or arr.shape[1] < MIN_SIDE:
        raise ValueError(f"image {path.name} is only {arr.shape[1]}x{arr.shape[0]} pixels "
                         f"(at least {MIN_SIDE}x{MIN_SIDE} needed)")
    return np.ascontiguousarray(arr)


def write_upright_copy(src, dst) -> Path:
    """Write ``src`` as displayed (EXIF orientation applied, no EXIF kept) to ``dst``, atomically,
    in the format of ``dst``'s suffix (JPEG at quality 95, else PNG), for tools that ignore
    the orientation tag (COLMAP, nerfstudio). Returns ``dst``."""
    dst = Path(dst)
    img = Image.fromarray(read_image(src))
    jpeg = dst.suffix.lower() in (".jpg", ".jpeg")
    with atomic_path(dst) as tmp:
        if jpeg:
            img.save(tmp, format="JPEG", quality=95, subsampling=0)
        else:
            img.save(tmp, format="PNG")
    return dst


def check_unique_stems(names, where: str, fix: str = "rename or remove one of each") -> None:
    """Raise ValueError when two file names share a stem (case-insensitively: ``face.jpg`` and
    ``Face.png``), since outputs are named by the stem and one would overwrite the other.
    ``where``: the folder, for the message; ``fix``: what the user should do."""
    by_stem = defaultdict(list)
    for n in names:
        by_stem[Path(n).stem.lower()].append(Path(n).name)
    clashes = [sorted(v) for v in by_stem.values() if len(v) > 1]
    if clashes:
        listed = "; ".join(" and ".join(c) for c in clashes)
        raise ValueError(f"photos in {where} share a name apart from the extension: {listed}. Outputs are "
                         "named by it (masks/<name>.png, one output folder per photo), so one would overwrite "
                         f"the other: {fix}")


def same_camera_shape(size_a, size_b) -> bool:
    """True when (W, H) ``size_b`` is a uniform scale of ``size_a`` up to rounding (one camera at
    two resolutions, square pixels kept); False for another aspect ratio."""
    (wa, ha), (wb, hb) = size_a, size_b
    return abs(wb * ha / wa - hb) <= 1.0 and abs(hb * wa / ha - wb) <= 1.0
