"""Contact sheets: thumbnails of every view in a grid, with landmarks or masks drawn."""
from __future__ import annotations

import cv2
import numpy as np

THUMB = 256


def _thumb(image_rgb: np.ndarray, side: int = THUMB) -> tuple[np.ndarray, float]:
    H, W = image_rgb.shape[:2]
    s = side / max(H, W)
    t = cv2.resize(image_rgb, (max(1, round(W * s)), max(1, round(H * s))), interpolation=cv2.INTER_AREA)
    canvas = np.zeros((side, side, 3), np.uint8)
    canvas[: t.shape[0], : t.shape[1]] = t
    return canvas, s


def landmark_tile(image_rgb: np.ndarray, points, label: str) -> np.ndarray:
    """Thumbnail with the 68 points (+0.5 convention) drawn, or a red label when absent."""
    t, s = _thumb(image_rgb)
    if points is not None:
        for i, (x, y) in enumerate(np.asarray(points) * s):
            colour = (255, 60, 60) if 36 <= i < 48 else (60, 255, 60)
            cv2.circle(t, (int(x), int(y)), 2, colour, -1, lineType=cv2.LINE_AA)
    _label(t, label, ok=points is not None)
    return t


def mask_tile(image_rgb: np.ndarray, head, skin, label: str) -> np.ndarray:
    """Thumbnail: outside the head darkened, skin tinted green."""
    img = image_rgb.astype(np.float32)
    if head is not None:
        img[head == 0] *= 0.3
        g = skin > 0
        img[g] = 0.5 * img[g] + 0.5 * np.array([40, 220, 40], np.float32)
    t, _ = _thumb(np.clip(img, 0, 255).astype(np.uint8))
    _label(t, label, ok=head is not None)
    return t


def _label(t: np.ndarray, text: str, ok: bool) -> None:
    cv2.rectangle(t, (0, 0), (THUMB, 16), (0, 0, 0), -1)
    cv2.putText(t, text[:40], (3, 12), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255) if ok else (255, 80, 80), 1,
                cv2.LINE_AA)


def contact_sheet(tiles: list[np.ndarray], cols: int | None = None) -> np.ndarray:
    """Grid (rows*THUMB, cols*THUMB, 3) uint8 of equal-size tiles."""
    if not tiles:
        return np.zeros((THUMB, THUMB, 3), np.uint8)
    n = len(tiles)
    cols = cols or int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / cols))
    sheet = np.zeros((rows * THUMB, cols * THUMB, 3), np.uint8)
    for i, t in enumerate(tiles):
        r, c = divmod(i, cols)
        sheet[r * THUMB:(r + 1) * THUMB, c * THUMB:(c + 1) * THUMB] = t
    return sheet
