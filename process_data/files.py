"""Scene files: listing and safely reading images, atomic writes of every output."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from fitting.atomic import atomic_write_bytes, atomic_write_json, atomic_write_png  # noqa: F401 (re-exported)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}


def list_images(images_dir) -> tuple[list[str], dict[str, str]]:
    """Sorted image file names in ``images_dir`` and ``{name: reason}`` for the files skipped.

    Raises ValueError when the folder is missing or holds no image at all."""
    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        raise ValueError(f"{images_dir} is not a folder: a scene needs an images/ folder of jpg or png files")
    names, skipped = [], {}
    for p in sorted(images_dir.iterdir()):
        if p.name.startswith("."):
            continue
        if not p.is_file():
            skipped[p.name] = "not a file"
        elif p.suffix.lower() not in IMAGE_SUFFIXES:
            skipped[p.name] = f"not an image (suffix {p.suffix or 'none'}; expected .jpg, .jpeg or .png)"
        else:
            names.append(p.name)
    if not names:
        raise ValueError(f"{images_dir} holds no .jpg/.jpeg/.png image: put the scene's photos there")
    return names, skipped


def read_image(path) -> np.ndarray:
    """Read an image file as RGB uint8 (H, W, 3), raising ValueError when it is unreadable.

    PIL is used because it reports truncated JPEGs (OpenCV silently returns a grey-filled
    image). EXIF orientation is deliberately NOT applied: every coordinate refers to the
    stored pixel grid, as COLMAP sees it."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()
            arr = np.asarray(im.convert("RGB"))
    except Exception as e:  # PIL raises many types for bad files
        raise ValueError(f"cannot read image {path.name}: {e} (re-export or remove the file)") from e
    if arr.shape[0] < 16 or arr.shape[1] < 16:
        raise ValueError(f"image {path.name} is only {arr.shape[1]}x{arr.shape[0]} pixels")
    return np.ascontiguousarray(arr)


def image_size(path) -> tuple[int, int]:
    """(width, height) from the header only."""
    with Image.open(path) as im:
        return im.size
