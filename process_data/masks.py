"""Stage 3: a head mask (face, ears, hair; no neck or clothes) and a face-skin mask (no eyes,
brows, inner mouth or hair) per view, as 8-bit images at the original size.

Default backend, offline and without learned weights:
- skin: a Gaussian colour model (YCrCb + Lab a*b*, full covariance) learned from the cheeks,
  nose and forehead inside the landmark polygon; pixels within a Mahalanobis radius inside the
  landmark face outline (jaw + brows lifted towards the hairline) are skin; the largest blob,
  holes filled (lips and nostrils are face), minus the eye, brow and inner-mouth polygons.
- head: GrabCut seeded with the face as sure foreground, a head-shaped ellipse as probable
  foreground, the image border and the region under the jaw (neck, clothes) as background.
Optional backend ``bisenet`` (see bisenet.py): a face parser with user-supplied weights.
"""
from __future__ import annotations

import sys

import cv2
import numpy as np
from scipy import ndimage

# Tuned on ../shared/data/ffhq against the BiSeNet reference skin masks (mean IoU 0.83).
FOREHEAD_LIFT = 0.6      # brows lifted by this x half the eye-centre-to-chin distance
SKIN_MAHALANOBIS2 = 9.0  # squared Mahalanobis radius of the skin colour model
OUTER = 1.3             # sure-background beyond this x the probable-head ellipse
GRABCUT_SIDE = 320       # GrabCut runs at this longest side (it is O(pixels) per iteration)

EYE_R, EYE_L = list(range(36, 42)), list(range(42, 48))
BROW_R, BROW_L = list(range(17, 22)), list(range(22, 27))
INNER_MOUTH = list(range(60, 68))
OUTER_MOUTH = list(range(48, 60))


def _fill(shape, pts: np.ndarray, value=255) -> np.ndarray:
    """Rasterise a polygon given in continuous pixels (+0.5 centres) with subpixel precision."""
    m = np.zeros(shape, np.uint8)
    q = np.round((np.asarray(pts, np.float64) - 0.5) * 16).astype(np.int32)
    cv2.fillPoly(m, [q.reshape(-1, 1, 2)], value, lineType=cv2.LINE_8, shift=4)
    return m


def _hull(pts: np.ndarray) -> np.ndarray:
    return cv2.convexHull(np.asarray(pts, np.float32)).reshape(-1, 2)


def _scaled(pts: np.ndarray, s: float) -> np.ndarray:
    c = pts.mean(0)
    return c + (pts - c) * s


def face_outline(points: np.ndarray, lift: float = FOREHEAD_LIFT) -> np.ndarray:
    """Convex outline (K, 2) of the face: the jaw plus the brows lifted towards the hairline
    (points: (68, 2))."""
    eye_c = 0.5 * (points[EYE_R].mean(0) + points[EYE_L].mean(0))
    up = eye_c - points[8]
    forehead = points[17:27] + lift * 0.5 * up
    return _hull(np.vstack([points[0:17], forehead]))


def _largest_component(m: np.ndarray) -> np.ndarray:
    lab, n = ndimage.label(m)
    if n <= 1:
        return m.astype(bool)
    sizes = ndimage.sum(np.ones_like(lab), lab, index=np.arange(1, n + 1))
    return lab == (1 + int(np.argmax(sizes)))


def _features(image_rgb: np.ndarray) -> np.ndarray:
    ycc = cv2.cvtColor(image_rgb, cv2.COLOR_RGB2YCrCb).astype(np.float32)
    lab = cv2.cvtColor(image_rgb, cv2.COLOR_RGB2Lab).astype(np.float32)
    return np.concatenate([ycc, lab[..., 1:]], axis=-1)  # (H, W, 5)


def skin_mask(image_rgb: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Face-skin mask (H, W) uint8 {0, 255}. image_rgb: (H, W, 3) uint8; points: (68, 2)."""
    H, W = image_rgb.shape[:2]
    shape = (H, W)
    region = _fill(shape, face_outline(points)) > 0
    # colour samples: the landmark face without (generously grown) eyes, brows and mouth
    sample = _fill(shape, _hull(np.vstack([points[1:16], points[17:27]]))) > 0
    for idx in (EYE_R, EYE_L, OUTER_MOUTH, BROW_R, BROW_L):
        sample &= _fill(shape, _hull(_scaled(points[idx], 1.6))) == 0
    feats = _features(image_rgb)
    samples = feats[sample]
    if len(samples) < 20:  # a tiny face: fall back to the geometric outline
        m = region.copy()
    else:
        mu = samples.mean(0)
        cov = np.cov(samples.T) + np.eye(samples.shape[1])  # +1: 8-bit quantisation floor
        d = feats - mu
        md2 = np.einsum("hwi,ij,hwj->hw", d, np.linalg.inv(cov), d)
        m = ((md2 < SKIN_MAHALANOBIS2) & region).astype(np.uint8)
        k = max(3, int(round(min(H, W) / 50)) | 1)
        m = cv2.morphologyEx(m, cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k)))
        m = cv2.morphologyEx(m, cv2.MORPH_CLOSE, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * k - 1, 2 * k - 1)))
        m = _largest_component(m > 0)
    m = ndimage.binary_fill_holes(m)
    m |= _fill(shape, _hull(points[17:68])) > 0  # the inner face is face even where colour fails
    for idx in (EYE_R, EYE_L, BROW_R, BROW_L, INNER_MOUTH):
        m &= _fill(shape, points[idx]) == 0
    return m.astype(np.uint8) * 255


def _neck_polygon(points: np.ndarray, H: int) -> np.ndarray:
    """Region under the jaw (points 3..13) down to the image bottom: neck and clothes."""
    jaw = points[3:14]
    bottom = float(max(H, jaw[:, 1].max()) + 1)
    return np.vstack([jaw, [[jaw[-1, 0], bottom], [jaw[0, 0], bottom]]])


def head_mask(image_rgb: np.ndarray, points: np.ndarray, skin: np.ndarray | None = None,
              iterations: int = 4) -> np.ndarray:
    """Head mask (H, W) uint8 {0, 255}: face, ears and hair, without neck and clothes.

    image_rgb: (H, W, 3) uint8; points: (68, 2); skin: optional (H, W) skin mask (sure fg)."""
    H, W = image_rgb.shape[:2]
    s = min(1.0, GRABCUT_SIDE / max(H, W))
    small = cv2.resize(image_rgb, (max(1, round(W * s)), max(1, round(H * s))), interpolation=cv2.INTER_AREA) \
        if s < 1 else image_rgb
    h, w = small.shape[:2]
    p = points * np.array([w / W, h / H])
    lab = np.full((h, w), cv2.GC_BGD, np.uint8)
    # probable head: an ellipse around the face, taller upwards for the hair
    eye_c = 0.5 * (p[EYE_R].mean(0) + p[EYE_L].mean(0))
    face_h = np.linalg.norm(p[8] - eye_c)
    jaw_w = np.linalg.norm(p[16] - p[0])
    up = (eye_c - p[8]) / max(face_h, 1e-6)
    centre = eye_c + 0.15 * face_h * up
    angle = np.degrees(np.arctan2(up[1], up[0])) + 90
    c = (int(round(centre[0])), int(round(centre[1])))
    # outside a generous head-sized ellipse is background for sure (other people, objects)
    cv2.ellipse(lab, c, (int(round(OUTER * 0.8 * jaw_w)), int(round(OUTER * 1.35 * face_h))), angle, 0, 360,
                cv2.GC_PR_BGD, -1)
    cv2.ellipse(lab, c, (int(round(0.8 * jaw_w)), int(round(1.35 * face_h))), angle, 0, 360, cv2.GC_PR_FGD, -1)
    b = max(2, int(0.02 * max(h, w)))
    lab[:b], lab[-b:], lab[:, :b], lab[:, -b:] = cv2.GC_BGD, cv2.GC_BGD, cv2.GC_BGD, cv2.GC_BGD
    neck = _fill((h, w), _neck_polygon(p, h)) > 0
    lab[neck] = cv2.GC_BGD
    face = _fill((h, w), face_outline(p, 0.3)) > 0
    if skin is not None:
        face |= cv2.resize(skin, (w, h), interpolation=cv2.INTER_NEAREST) > 0
    lab[face & ~neck] = cv2.GC_FGD
    if (lab == cv2.GC_BGD).any() and ((lab == cv2.GC_FGD) | (lab == cv2.GC_PR_FGD)).any():
        bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
        cv2.setRNGSeed(0)
        cv2.grabCut(np.ascontiguousarray(small[:, :, ::-1]), lab, None, bgd, fgd, iterations, cv2.GC_INIT_WITH_MASK)
    fg = ((lab == cv2.GC_FGD) | (lab == cv2.GC_PR_FGD)).astype(np.uint8)
    fg = cv2.morphologyEx(fg, cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3)))
    fg = ndimage.binary_fill_holes(_largest_component(fg > 0)).astype(np.float32)
    full = cv2.resize(fg, (W, H), interpolation=cv2.INTER_LINEAR) >= 0.5
    full &= _fill((H, W), _neck_polygon(points, H)) == 0
    if skin is not None:
        full |= skin > 0
    return full.astype(np.uint8) * 255


def compute_masks(image_rgb: np.ndarray, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Default (offline, no learned weights) masks of one view.

    image_rgb: (H, W, 3) uint8 RGB; points: (68, 2) landmarks in the +0.5 pixel convention.
    Returns (head (H, W) uint8, skin (H, W) uint8), values 0 or 255."""
    image_rgb = np.asarray(image_rgb)
    if image_rgb.ndim != 3 or image_rgb.shape[2] != 3 or image_rgb.dtype != np.uint8:
        raise ValueError(f"image_rgb must be (H, W, 3) uint8 RGB, got {image_rgb.shape} {image_rgb.dtype}")
    points = np.asarray(points, dtype=np.float64)
    if points.shape != (68, 2) or not np.isfinite(points).all():
        raise ValueError(f"points must be a finite (68, 2) array of landmarks, got {points.shape}")
    image_rgb = np.ascontiguousarray(image_rgb)
    skin = skin_mask(image_rgb, points)
    head = head_mask(image_rgb, points, skin)
    return head, skin


def iou(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a) > 0, np.asarray(b) > 0
    u = (a | b).sum()
    return float((a & b).sum() / u) if u else 1.0


if __name__ == "__main__":  # python -m process_data.masks: the command is process_data/cli.py's
    from process_data.cli import masks_main
    sys.exit(masks_main())
