"""Preview images of a fit: per-view overlays, a contact sheet, loss curves.

Overlays blend the render over the photo where the render covers it, and draw the detected
landmarks (green) and the fitted model's projected landmarks (red).
"""
from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import torch

__all__ = ["overlay", "contact_sheet", "plot_losses"]


def _u8(img) -> np.ndarray:
    a = img.detach().cpu().numpy() if isinstance(img, torch.Tensor) else np.asarray(img)
    if a.ndim == 3 and a.shape[0] in (1, 3) and a.shape[-1] not in (1, 3):
        a = a.transpose(1, 2, 0)
    if a.dtype != np.uint8:
        a = (np.clip(a, 0, 1) * 255 + 0.5).astype(np.uint8)
    return np.ascontiguousarray(a)


def overlay(photo, render, alpha, lmk_detected=None, lmk_fitted=None, blend: float = 0.6,
            display: int = 384) -> np.ndarray:
    """photo, render: (3, H, W) in [0, 1]; alpha: (1, H, W); landmarks (68, 2) pixels of that
    image (+0.5 convention). Returns (h, w, 3) uint8 RGB, upscaled so the longer side is at
    least ``display``: left the photo with landmarks, right the blend."""
    p = _u8(photo).astype(np.float32)
    r = _u8(render).astype(np.float32)
    a = _u8(alpha).astype(np.float32)[..., :1] / 255.0 * blend
    H, W = p.shape[:2]
    s = max(1.0, display / max(H, W))
    size = (round(W * s), round(H * s))
    left = cv2.resize(p.astype(np.uint8), size, interpolation=cv2.INTER_LINEAR)
    right = cv2.resize((a * r + (1 - a) * p).astype(np.uint8), size, interpolation=cv2.INTER_LINEAR)
    for pts, col in ((lmk_detected, (0, 230, 0)), (lmk_fitted, (255, 40, 40))):
        if pts is None:
            continue
        q = np.asarray(pts.detach().cpu() if isinstance(pts, torch.Tensor) else pts, np.float64) * s - 0.5
        for x, y in q:
            if np.isfinite(x) and np.isfinite(y):
                for img in (left, right):
                    cv2.circle(img, (int(round(x)), int(round(y))), max(1, round(s)), col, -1, cv2.LINE_AA)
    return np.concatenate([left, right], 1)


def contact_sheet(images: list, labels: list | None = None, cols: int | None = None, cell_width: int = 512) -> np.ndarray:
    """Tile (h, w, 3) uint8 images (resized to ``cell_width``) into a grid with labels."""
    if not images:
        raise ValueError("contact_sheet needs at least one image")
    cols = cols or min(len(images), max(1, round(math.sqrt(len(images) * 1.2))))
    cells = []
    for k, im in enumerate(images):
        im = _u8(im)
        h = round(im.shape[0] * cell_width / im.shape[1])
        im = cv2.resize(im, (cell_width, h), interpolation=cv2.INTER_AREA)
        if labels:
            cv2.putText(im, str(labels[k]), (6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 0), 1, cv2.LINE_AA)
        cells.append(im)
    ch = max(c.shape[0] for c in cells)
    rows = math.ceil(len(cells) / cols)
    sheet = np.zeros((rows * ch, cols * cell_width, 3), np.uint8)
    for k, c in enumerate(cells):
        r, q = divmod(k, cols)
        sheet[r * ch:r * ch + c.shape[0], q * cell_width:(q + 1) * cell_width] = c
    return sheet


def plot_losses(history: dict, path) -> Path:
    """One panel per stage, one curve per loss term (log scale), saved as PNG atomically."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from fitting.meshio import atomic_write_bytes

    stages = [s for s, h in history.items() if h]
    fig, axes = plt.subplots(1, max(1, len(stages)), figsize=(5 * max(1, len(stages)), 3.6), squeeze=False)
    for ax, s in zip(axes[0], stages):
        h = history[s]
        keys = [k for k in h[0] if k not in ("iter", "round")]
        x = np.arange(len(h))
        for k in keys:
            y = np.array([r.get(k, np.nan) for r in h], np.float64)
            if np.nanmax(np.abs(y)) > 0:
                ax.plot(x, np.abs(y), label=k)
        ax.set_yscale("log")
        ax.set_title(s)
        ax.set_xlabel("LM iteration (all rounds)" if s == "geometry" else "iteration")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    import io
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)
