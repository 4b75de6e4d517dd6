"""Ground-truth vertex errors of a single-image fit, by region (synthetic checks and bench).

One photo leaves a similarity (scale, rotation, translation) of the head undetermined, so a
fitted mesh is compared with the ground truth after the least-squares similarity that maps it
onto the ground truth (Umeyama), vertex to vertex (same topology). Three regions:

* ``all``: every vertex, including the back and top of the skull that a frontal photo never
  shows, where only the shape prior decides;
* ``visible``: vertices of the triangles the ground-truth mesh shows in the photo (its
  rasterisation with the true camera);
* ``face``: the face crop of the NoW benchmark (Sanyal et al., CVPR 2019; the protocol used
  by RingNet, DECA, MICA, EMOCA): ground-truth points within a sphere around the face centre,
  ``centre = nose_bottom + 0.3 (nose_bridge - nose_bottom)`` with the nose bridge midway
  between the inner eye corners, radius ``1.4 (outer-eye distance + nose length) / 2``
  (~0.1 m on an adult head). NoW aligns the prediction to the cropped scan by a similarity
  and measures scan-to-mesh distances; here correspondence is known, so the similarity is
  fitted on the region's vertices and the error is the vertex-to-vertex distance, an upper
  bound of the scan-to-mesh distance.

In each region the similarity is fitted on that region (what an evaluation of that region
sees); ``region_errors`` also reports each region's error under the all-vertex alignment.

:func:`make_synthetic_photo` renders the check's photo (the issue's synthetic ground truth)
and returns the ground truth with both regions; the test and ``python -m bench.single_view
--cases synthetic`` use it.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from fitting.init import umeyama
from fitting.render.cameras import FLIP

__all__ = ["now_face_region", "visible_vertices", "aligned_vertex_errors", "region_errors", "make_synthetic_photo",
           "make_synthetic_clip"]

# iBUG-68 indices of NoW's seven landmarks
OUTER_EYE = (36, 45)
INNER_EYE = (39, 42)
NOSE_BOTTOM = 33


def now_face_region(verts: np.ndarray, lmk68: np.ndarray) -> np.ndarray:
    """(V,) bool: vertices within NoW's face sphere. verts: (V, 3); lmk68: (68, 3) 3D landmarks
    of the same (ground-truth) mesh, iBUG order, same units."""
    verts, lmk68 = np.asarray(verts, np.float64), np.asarray(lmk68, np.float64)
    if verts.ndim != 2 or verts.shape[1] != 3 or lmk68.shape != (68, 3):
        raise ValueError(f"verts must be (V, 3) and lmk68 (68, 3), got {verts.shape} and {lmk68.shape}")
    bridge = 0.5 * (lmk68[INNER_EYE[0]] + lmk68[INNER_EYE[1]])
    nose = lmk68[NOSE_BOTTOM]
    centre = nose + 0.3 * (bridge - nose)
    radius = 0.7 * (np.linalg.norm(lmk68[OUTER_EYE[0]] - lmk68[OUTER_EYE[1]]) + np.linalg.norm(bridge - nose))
    return np.linalg.norm(verts - centre, axis=1) <= radius


@torch.no_grad()
def visible_vertices(verts: torch.Tensor, faces: torch.Tensor, K: torch.Tensor, R: torch.Tensor, t: torch.Tensor,
                     size: tuple) -> np.ndarray:
    """(V,) bool: vertices of the triangles seen by the camera (depth-tested rasterisation).

    verts: (V, 3) or (1, V, 3) head frame; faces: (F, 3); K, R: (1, 3, 3); t: (1, 3); size: (H, W).
    """
    from fitting.render.rasterize import RasterSettings, rasterize

    v = verts if verts.dim() == 3 else verts[None]
    frag = rasterize(v, faces, K, R, t, RasterSettings(tuple(size)))
    fid = frag.face_idx[0]
    seen = torch.unique(fid[fid >= 0])
    out = np.zeros(v.shape[1], bool)
    out[faces[seen].reshape(-1).cpu().numpy()] = True
    return out


def aligned_vertex_errors(pred: np.ndarray, gt: np.ndarray, align: np.ndarray | None = None) -> np.ndarray:
    """(V,) distances after the similarity mapping ``pred`` onto ``gt`` fitted on the vertices
    ``align`` ((V,) bool; default all). pred, gt: (V, 3), same topology and units."""
    pred, gt = np.asarray(pred, np.float64), np.asarray(gt, np.float64)
    if pred.shape != gt.shape:
        raise ValueError(f"pred {pred.shape} and gt {gt.shape} must have the same vertices")
    m = np.ones(len(gt), bool) if align is None else np.asarray(align, bool)
    s, Q, T = umeyama(pred[m], gt[m], with_scale=True)
    return np.linalg.norm(pred @ (s * Q).T + T - gt, axis=1)


def region_errors(pred: np.ndarray, gt: np.ndarray, regions: dict, scale: float = 1000.0) -> dict:
    """Mean vertex error per region, times ``scale`` (metres -> mm by default).

    regions: {name: (V,) bool}. Returns {"all": e, name: e aligned on the region,
    f"{name}_all_aligned": e of the region under the all-vertex alignment}.
    """
    e_all = aligned_vertex_errors(pred, gt)
    out = {"all": float(e_all.mean() * scale)}
    for name, m in regions.items():
        m = np.asarray(m, bool)
        if m.sum() < 3:
            raise ValueError(f"region {name!r} has {int(m.sum())} vertices; at least 3 are needed")
        out[name] = float(aligned_vertex_errors(pred, gt, m)[m].mean() * scale)
        out[f"{name}_all_aligned"] = float(e_all[m].mean() * scale)
    return out


@torch.no_grad()
def make_synthetic_photo(model_path, out: Path, size: int = 192, fov: float = 12.0, noise_px: float = 1.0,
                         seed: int = 3) -> dict:
    """Render the stand-in with known shape (N(0, 1) on every component), expression (N(0, 0.5)),
    jaw (0.08 rad), texture code and SH light under a known camera (20 deg yaw, 8 deg pitch,
    ``fov`` horizontal FOV, 0.32 m of the head plane across ``size`` px), over a textured
    background. Writes photo.png, photo_landmarks68.npy (landmarks + N(0, noise_px) px, in the
    detectors' pixel-index convention), photo_skinmask.png and photo_headmask.png into ``out``.

    Returns {"verts": (V, 3) ground-truth vertices (head frame, metres), "landmarks": (68, 2)
    noise-free landmarks (fitting px, +0.5 convention), "regions": {"face": NoW face crop,
    "visible": seen by the camera} as (V,) bool, "faces": (F, 3)}.
    """
    import cv2

    from fitting.flame import FLAME, find_texture_space, load_texture_space
    from fitting.render import MeshRenderer, RasterSettings, intrinsics_from_fov, look_at, project_points
    from fitting.synthetic_scene import skin_mask_from_landmarks, textured_background

    out = Path(out)
    rng = np.random.default_rng(seed)
    flame = FLAME(model_path)
    tex = load_texture_space(find_texture_space(model_path))
    shape = torch.tensor(rng.normal(0, 1.0, (1, flame.n_shape)), dtype=torch.float32)
    expr = torch.tensor(rng.normal(0, 0.5, (1, flame.n_exp)), dtype=torch.float32)
    pose = torch.zeros(1, 15)
    pose[0, 6] = 0.08
    verts, _ = flame(shape, expr, pose)
    d = 0.16 / math.tan(math.radians(fov / 2))  # 0.32 m of the head plane across the image
    yaw, pitch = math.radians(20), math.radians(8)
    eye = d * torch.tensor([[math.sin(yaw) * math.cos(pitch), math.sin(pitch), math.cos(yaw) * math.cos(pitch)]])
    R, t = look_at(eye, torch.tensor([[0.0, 0.01, 0.0]]))
    K = intrinsics_from_fov(fov, size, size)
    lmk3d = flame.landmarks(verts, FLIP @ R)
    lmk2d, _ = project_points(lmk3d, K, R, t)
    sh = torch.zeros(1, 9, 3)
    sh[:, 0] = 1.0 / 0.8862269
    sh[0, 1:4] = torch.tensor([0.2, 0.25, 0.3])[:, None]
    code = torch.tensor(rng.normal(0, 1, (1, tex.n_tex)), dtype=torch.float32)
    r = MeshRenderer(flame.faces, tex.verts_uvs, tex.faces_uvs, RasterSettings((size, size)))(
        verts, K, R, t, texture=tex(code), sh=sh)
    a = r.silhouette[0, 0].numpy()[..., None]
    img = a * r.image[0].permute(1, 2, 0).numpy().clip(0, 1) + (1 - a) * textured_background(size, size, rng)
    out.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(out / "photo.png"), cv2.cvtColor((img * 255 + 0.5).astype(np.uint8), cv2.COLOR_RGB2BGR))
    noisy = lmk2d[0].numpy() + rng.normal(0, noise_px, (68, 2))
    np.save(out / "photo_landmarks68.npy", (noisy - 0.5).astype(np.float32))
    skin = skin_mask_from_landmarks(r.alpha[0, 0].numpy() > 0.5, lmk2d[0].numpy())
    cv2.imwrite(str(out / "photo_skinmask.png"), skin)
    cv2.imwrite(str(out / "photo_headmask.png"), (r.alpha[0, 0].numpy() > 0.5).astype(np.uint8) * 255)
    v = verts[0].numpy().astype(np.float64)
    regions = {"face": now_face_region(v, lmk3d[0].numpy()),
               "visible": visible_vertices(verts, flame.faces, K, R, t, (size, size))}
    return {"verts": v, "landmarks": lmk2d[0].numpy().astype(np.float64), "regions": regions,
            "faces": flame.faces.cpu().numpy()}


@torch.no_grad()
def make_synthetic_clip(model_path, out: Path, frames: int = 16, size: int = 256, fov: float = 12.0,
                        noise_px: float = 1.0, seed: int = 5, blank: tuple = (), fps: float = 25.0) -> dict:
    """A synthetic talking-head clip: the stand-in with one known identity (shape ~ N(0, 1),
    texture code ~ N(0, 1)) under a fixed camera (``fov`` horizontal FOV, 0.32 m of the head
    plane across ``size`` px), its expression (N(0, 0.35) per sine component), jaw (0.03-0.27
    rad, one open-close cycle), head rotation (yaw -20 to +20 deg, pitch +-8 deg, roll +-3 deg)
    and position (+-5 mm) varying smoothly over ``frames`` frames (about a second of head motion
    at 25 fps squeezed into 16 frames, as with ``--sample_step``), over a fixed textured
    background. Frames listed
    in ``blank`` show the background only (no face).

    Writes into ``out``: ``clip.mp4`` (OpenCV mp4v) and ``clip_landmarks68.npy`` (frames, 68,
    2): the true landmarks + N(0, noise_px) px in the detectors' pixel-index convention, NaN
    rows for blank frames. Returns the ground truth: "shape" (n_shape,), "exp" (T, n_exp), "jaw"
    (T, 3), "R" (T, 3, 3) / "t" (T, 3) world-to-camera (head frame), "K" (3, 3), "verts" (T, V,
    3) head frame, "landmarks" (T, 68, 2) noise-free (+0.5 convention), "face" (T, V) NoW face
    region of each frame, "faces" (F, 3), "blank" (T,) bool, "path", "landmarks_path".
    """
    from fitting.flame import FLAME, find_texture_space, load_texture_space
    from fitting.render.cameras import rot_to_matrix
    from fitting.render import MeshRenderer, RasterSettings, intrinsics_from_fov, project_points
    from fitting.rotations import axis_angle_to_matrix, matrix_to_axis_angle
    from fitting.synthetic_scene import textured_background
    from single_view.video_io import VideoWriter

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    flame = FLAME(model_path)
    tex = load_texture_space(find_texture_space(model_path))
    T = int(frames)
    s = torch.linspace(0, 1, T, dtype=torch.float64)[:, None]
    two_pi = 2 * math.pi
    shape = torch.tensor(rng.normal(0, 1.0, flame.n_shape))
    a, b = (torch.tensor(rng.normal(0, 0.35, (1, flame.n_exp))) for _ in range(2))
    expr = a * torch.sin(math.pi * s) + b * torch.cos(two_pi * 0.6 * s + 0.4)
    jaw = torch.zeros(T, 3, dtype=torch.float64)
    jaw[:, 0] = 0.15 + 0.12 * torch.sin(two_pi * s[:, 0])
    yaw = math.radians(20) * torch.sin(math.pi * (s[:, 0] - 0.5))
    pitch = math.radians(8) * torch.sin(math.pi * s[:, 0] + 1.0)
    roll = math.radians(3) * torch.cos(math.pi * s[:, 0])
    z = torch.zeros_like(yaw)
    # head rotation in the camera frame (y down, z forward): yaw about y, pitch about x, roll about z
    Rh = (axis_angle_to_matrix(torch.stack([z, yaw, z], 1)) @ axis_angle_to_matrix(torch.stack([pitch, z, z], 1))
          @ axis_angle_to_matrix(torch.stack([z, z, roll], 1)))
    R = Rh @ rot_to_matrix(torch.zeros(T, 3, dtype=torch.float64))
    d = 0.16 / math.tan(math.radians(fov / 2))
    centre = torch.tensor([0.0, 0.01, 0.0], dtype=torch.float64)
    t = -(R @ centre) + torch.stack([0.005 * torch.sin(math.pi * s[:, 0]),
                                     0.004 * torch.cos(math.pi * s[:, 0]), z + d], 1)
    pose = torch.zeros(T, 15, dtype=torch.float64)
    pose[:, 6:9] = jaw
    f32 = torch.float32
    verts, _ = flame(shape[None].expand(T, -1).to(f32), expr.to(f32), pose.to(f32))
    K = intrinsics_from_fov(fov, size, size)
    lmk3d = flame.landmarks(verts, FLIP @ R.to(f32))
    lmk2d, _ = project_points(lmk3d, K.expand(T, 3, 3), R.to(f32), t.to(f32))
    sh = torch.zeros(T, 9, 3)
    sh[:, 0] = 1.0 / 0.8862269
    sh[:, 1:4] = torch.tensor([0.2, 0.25, 0.3])[:, None]
    code = torch.tensor(rng.normal(0, 1, (1, tex.n_tex)), dtype=f32)
    r = MeshRenderer(flame.faces, tex.verts_uvs, tex.faces_uvs, RasterSettings((size, size)))(
        verts, K.expand(T, 3, 3), R.to(f32), t.to(f32), texture=tex(code).expand(T, -1, -1, -1), sh=sh)
    bg = textured_background(size, size, rng)
    blank_mask = np.zeros(T, bool)
    blank_mask[list(blank)] = True
    noisy = lmk2d.numpy().astype(np.float64) + rng.normal(0, noise_px, (T, 68, 2))
    noisy[blank_mask] = np.nan
    np.save(out / "clip_landmarks68.npy", (noisy - 0.5).astype(np.float32))
    with VideoWriter(out / "clip.mp4", fps, (size, size)) as w:
        for i in range(T):
            a_ = 0.0 if blank_mask[i] else r.silhouette[i, 0].numpy()[..., None]
            img = a_ * r.image[i].permute(1, 2, 0).numpy().clip(0, 1) + (1 - a_) * bg
            w.write((img * 255 + 0.5).astype(np.uint8))
    v = verts.numpy().astype(np.float64)
    face = np.stack([now_face_region(v[i], lmk3d[i].numpy()) for i in range(T)])
    return {"shape": shape.numpy(), "exp": expr.numpy(), "jaw": jaw.numpy(), "R": R.numpy(), "t": t.numpy(),
            "K": K[0].numpy().astype(np.float64), "verts": v, "landmarks": lmk2d.numpy().astype(np.float64),
            "face": face, "faces": flame.faces.numpy(), "blank": blank_mask, "path": out / "clip.mp4",
            "landmarks_path": out / "clip_landmarks68.npy", "rot_axis_angle": matrix_to_axis_angle(Rh).numpy()}
