"""Profiles judged before any pose: where the face's box sits in the head mask.

Past about 45 deg of yaw a 68-point detector returns a frontal-shaped set of points squeezed
into the profile, so the points' shape does not tell a profile. Their box still lies on the
face, and on a profile the face is at the side of the head's silhouette: the box centre's
horizontal offset from the head mask's centroid, over the mask's width, grows with the yaw.
Measured on the synthetic demo (its masks are the head's silhouette): 0.014 at 5 deg, 0.049 at
16, 0.087 at 27, 0.13 at 38, 0.18 at 49, 0.23 at 60 and 0.27 at 70; the real sample's views,
hair in their masks and within ~25 deg of yaw, 0.08 at most.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

__all__ = ["PROFILE_BOX_OFFSET", "face_box_offset", "profile_views"]

PROFILE_BOX_OFFSET = 0.16   # ~45 deg of yaw on the synthetic demo


def face_box_offset(points: np.ndarray, head_mask: np.ndarray) -> float:
    """Horizontal offset of the centre of the landmarks' box (points (68, 2) px) from the head
    mask's centroid (head_mask (H, W), nonzero inside, the same pixels), over the mask's width;
    NaN for an empty mask."""
    ys, xs = np.nonzero(head_mask)
    if len(xs) == 0:
        return float("nan")
    p = np.asarray(points, np.float64)
    centre = (p[:, 0].min() + p[:, 0].max()) / 2
    # mask pixel i covers [i, i + 1): its centre is at i + 0.5 in the points' convention
    return float((centre - (xs.mean() + 0.5)) / (xs.max() - xs.min() + 1))


def profile_views(points: dict, masks_dir: Path) -> dict:
    """{name: offset} of the views whose landmarks (points: {name: (68, 2)}) have a
    :func:`face_box_offset` beyond ``PROFILE_BOX_OFFSET`` in their head mask
    (``masks_dir/<stem>.png``); views without a mask file are not judged."""
    out = {}
    for name, p in points.items():  # once per view, before SfM
        path = Path(masks_dir) / f"{Path(name).stem}.png"
        if not path.is_file():
            continue
        off = face_box_offset(np.asarray(p), cv2.imread(str(path), cv2.IMREAD_GRAYSCALE) > 127)
        if abs(off) > PROFILE_BOX_OFFSET:
            out[name] = off
    return out
