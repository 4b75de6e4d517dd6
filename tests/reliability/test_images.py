"""Photos as users bring them: phone-rotated (EXIF orientation), two files with one stem, mixed
sizes, and a corpus of bad or unusual files generated at test time (nothing committed)."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from fitting.export import displayed_image_paths
from fitting.images import read_image
from fitting.scene import load_scene
from process_data import run_all
from process_data.manifest import load_manifest

ORIENTATION = 0x0112


def _save_sideways(upright: np.ndarray, path: Path, orientation: int = 6) -> None:
    """Store ``upright`` (H, W, 3) RGB the way a phone does: pixels rotated, EXIF tag to undo it.
    Orientation 6 = "rotate 90 deg clockwise to display", so the stored pixels are the upright
    image rotated 90 deg counter-clockwise (8: the other way)."""
    stored = np.rot90(upright, 1 if orientation == 6 else -1)
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    Image.fromarray(np.ascontiguousarray(stored)).save(path, quality=95, exif=exif)


def _stored_pixels(path: Path) -> np.ndarray:
    """What a tool that ignores the orientation tag (COLMAP, nerfstudio) sees: (H, W, 3) RGB."""
    return cv2.imread(str(path), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)[:, :, ::-1]


@pytest.fixture
def face(ffhq, read_rgb) -> np.ndarray:
    return read_rgb(ffhq / "00000.png")
