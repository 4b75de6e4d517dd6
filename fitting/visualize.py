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

__all__ = ["overlay", "contact_sheet", "plot_losses", "error_heatmap", "label", "draw_landmarks"]


def _u8(img) -> np.ndarray:
    a = img.detach().cpu().numpy() if isinstance(img, torch.Tensor) else np.asarray(img)
    if a.ndim == 3 and a.shape[0] in (1, 3) and a.shape[-1] not in (1, 3):
        a = a.transpose(1, 2, 0)
    if a.dtype != np.uint8:
        a = (np.clip(a, 0, 1) * 255 + 0.5).astype(np.uint8)
    return np.ascontiguousarray(a)


def label(img: np.ndarray, text: str, scale: float = 0.5) -> np.ndarray:
    """Draw ``text`` on a dark band at the top-left of ``img`` (in place, returned)."""
    th = max(1, round(scale * 2))
    (w, h), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, th)
    cv2.rectangle(img, (0, 0), (w + 8, h + base + 6), (0, 0, 0), -1)
    cv2.putText(img, text, (4, h + 3), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), th, cv2.LINE_AA)
    return img


def draw_landmarks(img: np.ndarray, pts, col, s: float = 1.0, radius: int | None = None) -> np.ndarray:
    """Dots at ``pts`` (68, 2) pixels of the unscaled image (+0.5 convention), scaled by s."""
    if pts is None:
        return img
    q = np.asarray(pts.detach().cpu() if isinstance(pts, torch.Tensor) else pts, np.float64) * s - 0.5
    r = radius or max(1, round(s))
    for x, y in q:
        if np.isfinite(x) and np.isfinite(y):
            cv2.circle(img, (int(round(x)), int(round(y))), r, col, -1, cv2.LINE_AA)
    return img


DETECTED, FITTED = (0, 230, 0), (255, 40, 40)


def overlay(photo, render, alpha, lmk_detected=None, lmk_fitted=None, blend: float = 0.6,
            display: int = 384) -> np.ndarray:
    """photo, render: (3, H, W) in [0, 1]; alpha: (1, H, W); landmarks (68, 2) pixels of that
    image (+0.5 convention). Returns (h, 3w, 3) uint8 RGB, upscaled so the longer side is at
    least ``display``, three labelled columns: the photo with the detected (green) and fitted
    (red) landmarks, the render, and the render blended over the photo."""
    p = _u8(photo).astype(np.float32)
    r = _u8(render).astype(np.float32)
    a = _u8(alpha).astype(np.float32)[..., :1] / 255.0 * blend
    H, W = p.shape[:2]
    s = max(1.0, display / max(H, W))
    size = (round(W * s), round(H * s))
    left = cv2.resize(p.astype(np.uint8), size, interpolation=cv2.INTER_LINEAR)
    mid = cv2.resize(r.astype(np.uint8), size, interpolation=cv2.INTER_LINEAR)
    right = cv2.resize((a * r + (1 - a) * p).astype(np.uint8), size, interpolation=cv2.INTER_LINEAR)
    for pts, col in ((lmk_detected, DETECTED), (lmk_fitted, FITTED)):
        draw_landmarks(left, pts, col, s)
    label(left, "photo: detected (green) / fitted (red)", 0.4)
    label(mid, "render (fit)", 0.4)
    label(right, "blend", 0.4)
    return np.concatenate([left, mid, right], 1)


def error_heatmap(photo, render, alpha, vmax: float = 0.25) -> tuple[np.ndarray, float]:
    """Per-pixel colour error |photo - render| (mean over RGB, colours in [0, 1]) where the
    render covers the photo, as an inferno heat map over a dimmed photo (0 -> black, ``vmax``
    or more -> yellow). Returns ((H, W, 3) uint8 RGB, mean error inside the render)."""
    p = _u8(photo).astype(np.float32) / 255
    r = _u8(render).astype(np.float32) / 255
    m = _u8(alpha).astype(np.float32)[..., 0] / 255 > 0.5
    err = np.abs(p - r).mean(-1)
    heat = cv2.applyColorMap((np.clip(err / vmax, 0, 1) * 255).astype(np.uint8), cv2.COLORMAP_INFERNO)[..., ::-1]
    out = (p * 255 * 0.35).astype(np.uint8)
    out[m] = heat[m]
    return np.ascontiguousarray(out), float(err[m].mean()) if m.any() else float("nan")


def contact_sheet(images: list, labels: list | None = None, cols: int | None = None, cell_width: int = 512) -> np.ndarray:
    """Tile (h, w, 3) uint8 images (resized to ``cell_width``) into a grid, each label on a band of
    its own above its image (the images carry labels of their own at their top-left)."""
    if not images:
        raise ValueError("contact_sheet needs at least one image")
    cols = cols or min(len(images), max(1, round(math.sqrt(len(images) * 1.2))))
    cells = []
    for k, im in enumerate(images):
        im = _u8(im)
        h = round(im.shape[0] * cell_width / im.shape[1])
        im = cv2.resize(im, (cell_width, h), interpolation=cv2.INTER_AREA)
        if labels:
            band = np.zeros((24, cell_width, 3), np.uint8)
            cv2.putText(band, str(labels[k]), (6, 17), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (255, 255, 0), 1, cv2.LINE_AA)
            im = np.concatenate([band, im], 0)
        cells.append(im)
    ch = max(c.shape[0] for c in cells)
    rows = math.ceil(len(cells) / cols)
    sheet = np.zeros((rows * ch, cols * cell_width, 3), np.uint8)
    for k, c in enumerate(cells):
        r, q = divmod(k, cols)
        sheet[r * ch:r * ch + c.shape[0], q * cell_width:(q + 1) * cell_width] = c
    return sheet


# what each recorded term is, for the axis labels (fitting/stages.py records them)
_UNITS = {"geometry": "cost: weighted sum of squared residuals\n(landmarks, rim, tracks: px^2 at fitting size)",
          "photometric": "loss (weighted; colours in [0, 1])"}
_NOT_LOSSES = ("iter", "round", "lambda")


def plot_losses(history: dict, path) -> Path:
    """One panel per stage, one curve per loss term, saved as PNG atomically. The y axis is
    logarithmic where a panel's values span more than a decade. The Levenberg-Marquardt damping
    (``lambda``, not a loss) gets its own panel."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from fitting.meshio import atomic_write_bytes

    stages = [s for s, h in history.items() if h]
    damping = [s for s in stages if any("lambda" in r for r in history[s])]
    panels = [(s, "loss") for s in stages] + [(s, "lambda") for s in damping]
    fig, axes = plt.subplots(1, max(1, len(panels)), figsize=(5 * max(1, len(panels)), 3.8), squeeze=False)
    for ax, (s, kind) in zip(axes[0], panels):
        h = history[s]
        x = np.arange(len(h))
        xl = "LM iteration (all rounds)" if s == "geometry" else "iteration"
        if kind == "lambda":
            y = np.array([r.get("lambda", np.nan) for r in h], np.float64)
            ax.plot(x, y, color="0.3")
            ax.set_yscale("log")
            ax.set_title(f"{s}: LM damping")
            ax.set_ylabel("lambda (unitless)")
        else:
            keys = [k for k in dict.fromkeys(k for r in h for k in r) if k not in _NOT_LOSSES]
            vals = []
            for k in keys:
                y = np.abs(np.array([r.get(k, np.nan) if isinstance(r.get(k), (int, float)) else np.nan
                                     for r in h], np.float64))
                y[y <= 0] = np.nan  # a term not yet switched on (e.g. the rim before its round)
                if np.isfinite(y).any() and np.nanmax(y) > 0:
                    ax.plot(x, y, label=k)
                    vals.append(y[np.isfinite(y) & (y > 0)])
            allv = np.concatenate(vals) if vals else np.array([1.0])
            if len(allv) and allv.max() / max(allv.min(), 1e-300) > 10:
                ax.set_yscale("log")
            ax.set_title(s)
            ax.set_ylabel(_UNITS.get(s, "loss"), fontsize=8)
            if vals:
                ax.legend(fontsize=7)
        ax.set_xlabel(xl)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    import io
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)
