"""The demo scene: a synthetic multi-view capture of the stand-in head with ground truth.

:func:`make_scene` renders a random head (shape, expression, jaw, texture code; SH light per
view) from ``n_views`` cameras on a +-yaw arc with some pitch, known K, over a textured
background, and writes a normal scene folder, so the fit runs through the normal pipeline:

    images/view_XX.png, landmarks.json, masks/head/, masks/skin/, cameras.json, manifest.json

plus ``ground_truth.npz`` (parameters, K, R, t, vertices, noise-free landmarks, the views given a
detector's profile points).
The manifest names its ``producer`` and the images' fingerprints, so ``load_scene`` uses the
true landmarks and masks as they are (while they belong to these images) instead of running
process_data over them.
Landmarks are the projected model landmarks (contour by each view's yaw; beyond 45 deg of yaw
what a detector returns there, :func:`detector_landmarks`) + N(0, sigma) px, in
original pixels with pixel centres at +0.5; the head mask is the render's coverage, the skin
mask the covered pixels inside the landmark hull minus eyes and inner mouth (what the
preprocessing's skin mask means). ``faceless`` views show the background only and are
recorded as failed detections, as process_data would.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch

from fitting.export import write_json, write_png
from fitting.landmark_trust import view_yaw_deg
from fitting.render.cameras import FLIP
from process_data.manifest import fingerprint

# Bump when the scene's content changes for the same options: demo scenes are rebuilt then.
SCENE_VERSION = 4
# A 68-point detector trained on near-frontal faces (dlib's) follows the face to about this yaw;
# beyond it, it returns a frontal-shaped set of points squeezed into the profile.
DETECTOR_MAX_YAW_DEG = 45.0
# Narrowest Gaussian the skin detail draws, in texels: a narrower one would alias in the texture.
MIN_SIGMA_TEXELS = 0.8

__all__ = ["make_scene", "camera_arc", "detector_landmarks", "head_texture", "view_annotations", "write_preprocessing",
           "textured_background", "skin_mask_from_landmarks", "skin_detail", "uv_metres"]


def textured_background(H: int, W: int, rng: np.random.Generator) -> np.ndarray:
    """(H, W, 3) float in [0, 1]: smooth colour gradients plus sinusoid stripes and fine noise."""
    x, y = np.arange(W) / W, (np.arange(H) / H)[:, None]                  # (W,), (H, 1)
    img = np.zeros((H, W, 3))
    for c in range(3):
        img[..., c] = 0.35 + 0.15 * rng.uniform(-1, 1) * x + 0.15 * rng.uniform(-1, 1) * y
        for _ in range(4):
            k = rng.uniform(3, 25, size=2)
            u, v = 2 * np.pi * k[0] * x, 2 * np.pi * k[1] * y + rng.uniform(0, 2 * np.pi)
            # sin(u + v) from sines and cosines of a row and a column: a megapixel view costs
            # 2 (H + W) of them, not H W
            img[..., c] += 0.06 * (np.sin(u) * np.cos(v) + np.cos(u) * np.sin(v))
    noise = cv2.GaussianBlur(rng.normal(0, 0.08, (H, W, 3)), (0, 0), 1.5)
    return np.clip(img + noise, 0, 1)


def skin_mask_from_landmarks(coverage: np.ndarray, lmk: np.ndarray) -> np.ndarray:
    """coverage: (H, W) bool render coverage; lmk: (68, 2) pixels (+0.5 convention) -> (H, W) uint8.

    Inside the convex hull of the 68 points (raised above the brows), minus the eye and inner
    mouth polygons, and only where the head covers the pixel."""
    H, W = coverage.shape
    m = np.zeros((H, W), np.uint8)
    pts = lmk.astype(np.float64) - 0.5  # OpenCV drawing puts pixel centres at integers
    brow_lift = pts[17:27].copy()
    eye_c = pts[36:48].mean(0)
    brow_lift[:, 1] -= 0.4 * np.abs(eye_c[1] - pts[8, 1]) * 0.35
    hull = cv2.convexHull(np.concatenate([pts[:17], brow_lift]).astype(np.float32))
    cv2.fillConvexPoly(m, np.round(hull).astype(np.int32), 255)
    for poly in (pts[36:42], pts[42:48], pts[60:68]):
        cv2.fillPoly(m, [np.round(poly).astype(np.int32)], 0)
    return np.where(coverage, m, 0).astype(np.uint8)


def uv_metres(verts: np.ndarray, faces: np.ndarray, verts_uvs: np.ndarray, faces_uvs: np.ndarray) -> np.ndarray:
    """(2,) median surface length in metres of one unit of u and of v, over the triangles."""
    X, U = verts[faces], verts_uvs[faces_uvs]
    dX = np.stack([X[:, 1] - X[:, 0], X[:, 2] - X[:, 0]], -1)     # (F, 3, 2)
    dU = np.stack([U[:, 1] - U[:, 0], U[:, 2] - U[:, 0]], -1)     # (F, 2, 2)
    ok = np.abs(np.linalg.det(dU)) > 1e-10                         # degenerate UV triangles (poles, seams)
    J = dX[ok] @ np.linalg.inv(dU[ok])                             # (F, 3, 2): d position / d (u, v)
    return np.median(np.linalg.norm(J, axis=1), axis=0)


def _band_noise(shape, sigma_mm: float, texel_m: float, rng: np.random.Generator) -> np.ndarray:
    """(H, W) Gaussian-filtered white noise of correlation length ``sigma_mm``, unit standard
    deviation, as texels of ``texel_m`` see it: finer noise than a texel averages out in it."""
    sigma = sigma_mm * 1e-3 / texel_m
    n = cv2.GaussianBlur(rng.normal(0, 1, shape).astype(np.float32), (0, 0), max(sigma, MIN_SIGMA_TEXELS))
    return n / max(float(n.std()), 1e-8) * min(sigma / MIN_SIGMA_TEXELS, 1.0)


def _spots(shape, per_cm2: float, sigma_mm: float, texel_m: float, rng: np.random.Generator) -> np.ndarray:
    """(H, W) Gaussian blobs of peak ~U(0.5, 1) (summed where they overlap) at Poisson-placed
    centres. A blob finer than a texel keeps its integral (a fainter, texel-wide blob), as a
    camera pixel would average it."""
    sigma = sigma_mm * 1e-3 / texel_m
    impulses = (rng.random(shape) < per_cm2 * (texel_m * 100) ** 2) * rng.uniform(0.5, 1.0, shape)
    blobs = cv2.GaussianBlur(impulses.astype(np.float32), (0, 0), max(sigma, MIN_SIGMA_TEXELS))
    return blobs * (2 * np.pi * sigma ** 2)


def skin_detail(height: int, width: int, texel_m: float, rng: np.random.Generator) -> np.ndarray:
    """(3, height, width) multiplicative albedo detail, mean 1 per channel, for a UV texture whose
    texels are ``texel_m`` metres across: fine mottling, dark pores and brown freckles of real
    skin sizes (what is finer than a texel fades, as in a photo of lower resolution)."""
    shape = (height, width)
    mottle = sum(a * _band_noise(shape, mm, texel_m, rng) for mm, a in ((0.3, 0.04), (0.8, 0.04), (2.5, 0.03)))
    pores = np.clip(0.2 * _spots(shape, 40.0, 0.25, texel_m, rng), 0, 0.5)
    freckles = np.clip(0.3 * (_spots(shape, 4.0, 0.6, texel_m, rng) + _spots(shape, 1.5, 1.2, texel_m, rng)), 0, 0.6)
    # melanin darkens blue most, so freckles look brown; pores are a neutral shadow
    tint = np.array([0.75, 0.9, 1.0], np.float32)[:, None, None]
    detail = np.clip(1 + mottle, 0, None)[None] * (1 - pores)[None] * (1 - freckles[None] * tint)
    # unit mean: the texture space's albedo stays the detail's average colour
    return (detail / detail.mean(axis=(1, 2), keepdims=True)).astype(np.float32)


def _detailed_texture(texture: torch.Tensor, verts: np.ndarray, faces: np.ndarray, vt: np.ndarray, ft: np.ndarray,
                      pixel_m: float, seed: int) -> torch.Tensor:
    """The texture-space albedo (1, 3, h, w) resampled to texels of half a pixel's footprint and
    multiplied by :func:`skin_detail`. The detail lives in UV space, on the surface, so every
    view sees the same pores and freckles: SIFT tracks them across views."""
    texel_m = pixel_m / 2
    W, H = np.ceil(uv_metres(verts, faces, vt, ft) / texel_m).astype(int)
    base = torch.nn.functional.interpolate(texture, size=(int(H), int(W)), mode="bilinear", align_corners=False)
    # its own stream: the scene's other draws (head, cameras, light, backgrounds) stay as they were
    detail = skin_detail(int(H), int(W), texel_m, np.random.default_rng([seed, 1]))
    return (base * torch.from_numpy(detail)[None]).clamp(0, 1)


def _sh_random(n: int, rng: np.random.Generator) -> np.ndarray:
    """(n, 9, 3) plausible lighting: ambient ~1 plus a random directional part, mildly coloured."""
    sh = np.zeros((n, 9, 3))
    sh[:, 0] = (1.0 / 0.8862269) * rng.uniform(0.85, 1.05, (n, 1)) * np.array([1.0, 0.97, 0.93])
    d = rng.normal(0, 1, (n, 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    d[:, 2] = np.abs(d[:, 2])  # light from the front half
    sh[:, 1:4] = 0.35 * d[:, :, None]
    sh[:, 4:] = rng.normal(0, 0.05, (n, 5, 1))
    return sh.astype(np.float32)


def detector_landmarks(lmk: np.ndarray, yaw_deg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """What a 68-point detector returns for views of one face: the true points up to
    ``DETECTOR_MAX_YAW_DEG`` of yaw, and beyond it the most frontal view's points squeezed into
    the box of the view's true points. lmk: (N, 68, 2) true points; yaw_deg: (N,) each view's
    yaw around the head. Returns (landmarks (N, 68, 2), profile (N,) bool)."""
    front = lmk[np.argmin(np.abs(yaw_deg))]
    unit = (front - front.min(0)) / (front.max(0) - front.min(0))
    out = np.array(lmk, copy=True)
    profile = np.abs(yaw_deg) > DETECTOR_MAX_YAW_DEG
    lo, hi = lmk.min(1, keepdims=True), lmk.max(1, keepdims=True)      # (N, 1, 2) each view's box
    out[profile] = (lo + unit * (hi - lo))[profile]
    return out, profile


def camera_arc(n: int, width: int, height: int, fov_deg: float, distance: float, yaw_deg: float, pitch_deg: float,
               rng: np.random.Generator):
    """The demo rig: K (n, 3, 3), world-to-camera R (n, 3, 3), t (n, 3) float32 of ``n`` cameras
    at ``distance`` metres from the origin, yaw evenly on [-yaw_deg, yaw_deg] (a single camera
    frontal, in the middle of that arc), pitch
    pitch_deg * cos(3 pi i / (n - 1)), each looking at a point jittered by a few mm around
    (0, 0.01, 0) (drawn from ``rng``)."""
    from fitting.render import intrinsics_from_fov, look_at
    i = np.arange(n)
    yaw = np.radians(np.linspace(-yaw_deg, yaw_deg, n) if n > 1 else np.zeros(n))
    pitch = np.radians(pitch_deg) * np.cos(3 * np.pi * i / max(n - 1, 1))
    eye = distance * np.stack([np.cos(pitch) * np.sin(yaw), np.sin(pitch), np.cos(pitch) * np.cos(yaw)], -1)
    target = rng.normal(0, 0.005, (n, 3)) + np.array([0.0, 0.01, 0.0])
    R, t = look_at(torch.tensor(eye, dtype=torch.float32), torch.tensor(target, dtype=torch.float32))
    return intrinsics_from_fov(fov_deg, width, height, n), R, t


def head_texture(flame, texspace, verts: torch.Tensor, distance: float, fov_deg: float, width: int, seed: int,
                 rng: np.random.Generator):
    """(code (1, n_tex), texture (1, 3, h, w) or None, verts_uvs, faces_uvs) of a drawn head:
    the texture space's albedo of a code from ``rng`` times the skin detail, sized for pixels of
    a camera ``distance`` metres away; the model's UVs and no texture without a texture space.
    verts: (V, 3) the head the detail's texel size is measured on."""
    if texspace is None:
        return torch.zeros(1, 0), None, flame.verts_uvs, flame.faces_uvs
    code = torch.tensor(rng.normal(0, 1, (1, texspace.n_tex)), dtype=torch.float32)
    vt, ft = texspace.verts_uvs, texspace.faces_uvs
    pixel_m = distance * 2 * np.tan(np.radians(fov_deg) / 2) / width  # footprint at the head
    texture = _detailed_texture(texspace(code), verts.numpy(), flame.faces.numpy(), vt.numpy(), ft.numpy(),
                                pixel_m, seed)
    return code, texture, vt, ft


def view_annotations(folder: Path, stem: str, coverage: np.ndarray, lmk_true: np.ndarray,
                     lmk_noisy: np.ndarray) -> dict:
    """Write one view's head and skin masks under ``folder/masks`` and return its landmarks.json
    entry. coverage: (H, W) bool; lmk_true, lmk_noisy: (68, 2) pixels (+0.5 convention); the
    skin mask follows the true landmarks, the entry holds the noisy ones (a detector's)."""
    pts = np.asarray(lmk_noisy, np.float64)
    write_png(folder / "masks" / "head" / f"{stem}.png", (coverage * 255).astype(np.uint8))
    write_png(folder / "masks" / "skin" / f"{stem}.png", skin_mask_from_landmarks(coverage, lmk_true))
    return {"points": pts.tolist(), "box": [*pts.min(0).tolist(), *pts.max(0).tolist()],
            "score": 1.0, "detector": "synthetic"}


def write_preprocessing(folder: Path, producer: str, landmarks: dict, views: dict, failed: dict, K, width: int,
                        height: int, settings: dict) -> None:
    """landmarks.json, cameras.json (known K (3, 3)) and a manifest naming ``producer`` and the
    images' fingerprints (``views``), so load_scene uses the folder's preprocessing as it is."""
    write_json(folder / "landmarks.json", landmarks)
    write_json(folder / "cameras.json", {
        "K": np.asarray(K).tolist(), "width": width, "height": height, "model": "PINHOLE", "distortion": [],
        "source": "known", "registered": [], "sfm_poses": {}})
    write_json(folder / "manifest.json", {
        "version": 1, "producer": producer, "scene": str(folder.resolve()), "images_dir": "images", "views": views,
        "failed": failed, "skipped_files": {}, "warnings": [], "stages": {"synthetic": {"tool": producer, **settings}}})


@torch.no_grad()
def make_scene(out_dir, model_path, n_views: int = 12, width: int = 384, height: int = 384, fov_deg: float = 20.0,
               distance: float = 1.0, yaw_deg: float = 60.0, pitch_deg: float = 10.0, noise_px: float = 1.0,
               shape_std: float = 1.0, exp_std: float = 0.5, faceless_views: int = 0, seed: int = 0,
               n_shape: int = 100, n_exp: int = 50, landmark_embedding=None, detector_profiles: bool = True) -> Path:
    """Write a synthetic scene folder with ground truth; returns ``out_dir``.

    The albedo is the texture space's (drawn code) times a fine skin detail in UV space (pores,
    freckles, mottling; see :func:`skin_detail`), which the texture space cannot represent but
    which gives SfM features on the head; each view's background is drawn independently, so
    every correct multi-view track lies on the head.

    Cameras: yaw evenly on [-yaw_deg, yaw_deg]; pitch = pitch_deg * cos(3 pi i / (n - 1));
    each looks at a point jittered by a few mm around the head centre from ``distance``
    metres. ``faceless_views`` views (spread over the arc) show the background only.
    Landmarks: with ``detector_profiles``, a detector's beyond its yaw range
    (:func:`detector_landmarks`), else the true points; then + N(0, noise_px) px.
    """
    from fitting.flame import FLAME, find_texture_space, load_texture_space
    from fitting.render import MeshRenderer, RasterSettings, project_points

    if n_views < 2:
        raise ValueError(f"a multi-view demo needs n_views >= 2, got {n_views}")
    out = Path(out_dir)
    rng = np.random.default_rng(seed)
    flame = FLAME(model_path, landmark_embedding, n_shape=n_shape, n_exp=n_exp)
    tex_path = find_texture_space(model_path)
    texspace = load_texture_space(tex_path) if tex_path is not None else None

    shape = torch.tensor(rng.normal(0, shape_std, (1, n_shape)), dtype=torch.float32)
    expr = torch.tensor(rng.normal(0, exp_std, (1, n_exp)), dtype=torch.float32)
    pose = torch.zeros(1, 15)
    pose[0, 6] = float(rng.uniform(0.03, 0.12))  # jaw slightly open
    verts, _ = flame(shape, expr, pose)

    K, R, t = camera_arc(n_views, width, height, fov_deg, distance, yaw_deg, pitch_deg, rng)
    sh = torch.tensor(_sh_random(n_views, rng))

    vv = verts.expand(n_views, -1, -1)
    head_rot = torch.eye(3).expand(n_views, 3, 3)
    lmk3d = flame.landmarks(vv, FLIP @ R @ head_rot)
    lmk2d, _ = project_points(lmk3d, K, R, t)

    code, texture, vt, ft = head_texture(flame, texspace, verts[0], distance, fov_deg, width, seed, rng)
    renderer = MeshRenderer(flame.faces, vt, ft, RasterSettings((height, width)))
    r = renderer(vv, K, R, t, texture=texture, sh=sh,
                 vertex_colors=None if texture is not None else torch.full_like(vv, 0.7))

    faceless = set()
    if faceless_views > 0:
        faceless = set(np.linspace(1, n_views - 2, faceless_views).round().astype(int).tolist())
    names = [f"view_{k:02d}.png" for k in range(n_views)]
    (out / "images").mkdir(parents=True, exist_ok=True)
    landmarks, failed, views = {}, {}, {}
    detected, profile = (detector_landmarks(lmk2d.numpy(), view_yaw_deg(R).numpy()) if detector_profiles
                         else (lmk2d.numpy(), np.zeros(n_views, bool)))
    noisy = detected + rng.normal(0, noise_px, lmk2d.shape)
    for k, n in enumerate(names):  # writing files is per view by nature
        bg = textured_background(height, width, rng)
        a = r.silhouette[k, 0].numpy()[..., None]
        img = bg if k in faceless else a * r.image[k].permute(1, 2, 0).numpy().clip(0, 1) + (1 - a) * bg
        write_png(out / "images" / n, img)
        views[n] = {"size": [width, height], **fingerprint(out / "images" / n)}
        if k in faceless:
            landmarks[n] = {"points": None, "box": None, "score": 0.0, "detector": "synthetic"}
            failed[n] = {"stage": "landmarks", "reason": "no face detected"}
            continue
        landmarks[n] = view_annotations(out, Path(n).stem, r.alpha[k, 0].numpy() > 0.5, lmk2d[k].numpy(), noisy[k])

    write_preprocessing(out, "fitting.synthetic_scene", landmarks, views, failed, K[0], width, height,
                        {"model": str(model_path), "seed": seed})
    np.savez(out / "ground_truth.npz", shape=shape.numpy(), expression=expr.numpy(), pose=pose.numpy(),
             tex=code.numpy(), sh=sh.numpy(), K=K.numpy(), R=R.numpy(), t=t.numpy(), names=np.array(names),
             vertices=verts[0].numpy(), landmarks=lmk2d.numpy(), faceless=np.array(sorted(faceless), dtype=np.int64),
             noise_px=np.float32(noise_px), profile_views=profile)
    return out
