"""Stage 1: pad to a square, or crop a square around the face, at a configurable size.

Pure functions ``square_transform`` / ``apply_transform`` plus ``main`` (the command)."""
from __future__ import annotations

import sys

import cv2
import numpy as np

from .manifest import ImageTransform


def pad_transform(width: int, height: int, size: int | None = None) -> ImageTransform:
    """Transform that centres a (width x height) image on a black square of side max(w, h),
    then resizes it to ``size`` (None keeps the square's side)."""
    side = max(width, height)
    size = side if size is None else int(size)
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    s = size / side
    # integer padding in the original grid so that no resampling happens when size is None
    px, py = (side - width) // 2, (side - height) // 2
    return ImageTransform(s, (px * s, py * s), (size, size))


def crop_transform(box, size: int, margin: float = 2.0) -> ImageTransform:
    """Transform of a square crop centred on ``box`` ([x0, y0, x1, y1], continuous pixels),
    of side ``margin`` x the box's mean side, resized to ``size``. Parts outside the image are
    padded black."""
    x0, y0, x1, y1 = map(float, box)
    side = margin * 0.5 * ((x1 - x0) + (y1 - y0))
    if not side > 0:
        raise ValueError(f"crop box {box} is empty")
    s = size / side
    cx, cy = 0.5 * (x0 + x1), 0.5 * (y0 + y1)
    # derived centre is size/2: s*c + o = size/2
    return ImageTransform(s, (size / 2 - s * cx, size / 2 - s * cy), (int(size), int(size)))


def apply_transform(image: np.ndarray, t: ImageTransform, interpolation: int | None = None) -> np.ndarray:
    """Warp image (H, W[, C]) with t; returns (t.size[1], t.size[0][, C]) of the same dtype.

    Downscaling pre-blurs so that the result is not aliased (warpAffine samples points)."""
    img = image
    if interpolation is None:
        interpolation = cv2.INTER_LINEAR if image.ndim == 3 else cv2.INTER_NEAREST
    if t.scale < 0.5 and interpolation != cv2.INTER_NEAREST:
        sigma = 0.5 / t.scale
        img = cv2.GaussianBlur(img, (0, 0), sigma)
    return cv2.warpAffine(img, t.affine_matrix_cv(), tuple(t.size), flags=interpolation,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0)


if __name__ == "__main__":  # python -m process_data.pad: the command is process_data/cli.py's
    from process_data.cli import pad_main
    sys.exit(pad_main())
