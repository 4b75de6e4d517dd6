"""instant-ngp export: ``./instant-ngp DIR`` (or ``scripts/run.py --scene DIR``) trains on it.

What ``load_nerf`` in instant-ngp's src/nerf_loader.cu reads::

    DIR/transforms.json   transform_matrix (OpenGL camera-to-world, metres in our head frame),
                          fl_x fl_y cx cy w h per frame, and at the top level:
                          scale, offset  - a point p maps to p * scale + offset in its unit cube
                                           (then its axes are cycled); chosen so that the fitted
                                           head, padded by PAD of its size on each side, fills
                                           [0, 1]^3
                          aabb_scale 1   - the background is transparent (alpha), so nothing
                                           outside the unit cube needs modelling
    DIR/images/<stem>.png RGBA: the photo with the head mask as alpha (stb_image loads 4
                          channels; instant-ngp trains transparent pixels against random colours)

Pixel centres: instant-ngp's rays go through (pixel + 0.5) / resolution, relative to cx / w,
cy / h: our convention, no shift.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from fitting.atomic import atomic_write_bytes
from fitting.export.core import write_transforms
from fitting.export.source import FitResult
from fitting.images import read_image

__all__ = ["write_instant_ngp", "unit_cube_transform", "PAD"]

PAD = 0.15


def unit_cube_transform(verts: np.ndarray, pad: float = PAD) -> tuple[float, list]:
    """(scale, offset) with ``verts * scale + offset`` in [pad', 1 - pad']^3, centred."""
    lo, hi = verts.min(0), verts.max(0)
    extent = float((hi - lo).max())
    scale = 1.0 / (extent * (1 + 2 * pad))
    offset = 0.5 - (lo + hi) / 2 * scale
    return scale, offset.tolist()


def write_instant_ngp(fit: FitResult, out_dir) -> Path:
    out = Path(out_dir)
    paths = []
    for i, stem in enumerate(fit.stems):
        rgb = read_image(fit.image_paths[i])
        m = fit.head_mask(i)
        alpha = np.full(rgb.shape[:2], 255, np.uint8) if m is None else m
        rgba = np.concatenate([rgb, alpha[..., None]], -1)
        ok, buf = cv2.imencode(".png", cv2.cvtColor(rgba, cv2.COLOR_RGBA2BGRA))
        if not ok:
            raise RuntimeError(f"PNG encoding failed for {stem}")
        atomic_write_bytes(out / "images" / f"{stem}.png", buf.tobytes())
        paths.append(f"images/{stem}.png")
    scale, offset = unit_cube_transform(fit.verts)
    write_transforms(out / "transforms.json", fit.K, fit.R, fit.t, fit.sizes, paths,
                     extra={"aabb_scale": 1, "scale": scale, "offset": offset,
                            "frame": "FLAME head frame, metres; instant-ngp maps p -> p * scale + offset"})
    return out

