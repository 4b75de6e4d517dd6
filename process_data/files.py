"""Scene files: listing and safely reading images, atomic writes of every output."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}


def atomic_write_bytes(path, data: bytes) -> Path:
    """Write ``data`` to a temp file in the target folder, then ``os.replace`` it into place,
    so a reader never sees a half-written file (and an interrupted run leaves the old one)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix="." + path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write_json(path, obj) -> Path:
    return atomic_write_bytes(path, (json.dumps(obj, indent=1) + "\n").encode())


def atomic_write_png(path, image: np.ndarray) -> Path:
    """image: (H, W) uint8 or (H, W, 3) uint8 RGB."""
    if image.ndim == 3:
        image = image[:, :, ::-1]
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(image))
    if not ok:
        raise RuntimeError(f"could not encode {path} as PNG")
    return atomic_write_bytes(path, buf.tobytes())


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
