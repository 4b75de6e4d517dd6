"""A finished fit, as the training exports read it: :func:`load_fit` gathers everything from
an output folder (params.npz, mesh.obj + texture.png, transforms.json, points3D.ply,
fit_details.json, report.json) and the preprocessing folder (head masks, landmarks.json).

Cameras stay ours here: K in original-image pixels, OpenCV world-to-camera R, t, pixel
centres at +0.5. Each writer converts at its edge.
"""
from __future__ import annotations

import json
import os
import shutil
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fitting.atomic import atomic_write_bytes
from fitting.export.core import read_params, read_points_ply, read_transforms
from fitting.images import exif_orientation, read_image, write_upright_copy
from fitting.meshio import load_obj

__all__ = ["FitResult", "load_fit", "staged_folder", "copy_image", "sample_surface", "project", "model_note"]

FLAME_VERTS = 5023


@dataclass
class FitResult:
    folder: Path
    names: list                 # image file names (N,)
    image_paths: list           # absolute Paths of the photos
    sizes: np.ndarray           # (N, 2) as (W, H), original pixels
    K: np.ndarray               # (N, 3, 3) original pixels
    R: np.ndarray               # (N, 3, 3) world-to-camera (OpenCV)
    t: np.ndarray               # (N, 3)
    verts: np.ndarray           # (V, 3) world = FLAME head frame, metres
    faces: np.ndarray           # (F, 3)
    params: dict                # params.npz
    verts_uvs: np.ndarray | None = None
    faces_uvs: np.ndarray | None = None
    texture: np.ndarray | None = None      # (Ht, Wt, 3) float in [0, 1]
    mask_paths: list = field(default_factory=list)   # head mask per view (Path) or None
    landmarks: list = field(default_factory=list)    # detected (68, 2) original pixels, or None
    points: np.ndarray | None = None       # points3D.ply
    colors: np.ndarray | None = None
    points_are_tracks: bool = False
    model_path: str = ""
    report: dict | None = None

    @property
    def stems(self) -> list:
        return [Path(n).stem for n in self.names]

    @property
    def is_standin(self) -> bool:
        return self.model_path in ("", "synthetic") or "standin" in Path(self.model_path).name

    def head_mask(self, i: int) -> np.ndarray | None:
        """(H, W) uint8 head mask of view i at the image's size, or None."""
        p = self.mask_paths[i] if i < len(self.mask_paths) else None
        if p is None or not Path(p).is_file():
            return None
        m = read_image(p, gray=True)
        W, H = (int(v) for v in self.sizes[i])
        if m.shape != (H, W):
            import cv2
            m = cv2.resize(m, (W, H), interpolation=cv2.INTER_LINEAR)
        return m


def load_fit(folder, prep_dir=None, model_path: str | None = None, tracks: bool | None = None) -> FitResult:
    """Read a complete fit from ``folder`` (a run_fitting output folder). ``prep_dir``: the
    preprocessing folder (default: report.json's ``preprocess_dir``); ``model_path``: the
    FLAME model used (default: fit_details.json's)."""
    folder = Path(folder)
    p = read_params(folder / "params.npz")
    _, _, _, _, paths, _ = read_transforms(folder / "transforms.json")
    report = json.loads((folder / "report.json").read_text()) if (folder / "report.json").is_file() else None
    details = json.loads((folder / "fit_details.json").read_text()) if (folder / "fit_details.json").is_file() else {}
    if prep_dir is None and report is not None:
        prep_dir = report.get("preprocess_dir")
    if model_path is None:
        model_path = (details.get("model") or {}).get("model", "")
    names = [str(n) for n in p["names"]]
    image_paths = [_find_image(folder, fp, n, prep_dir) for fp, n in zip(paths, names)]
    v, f, vt, ft = load_obj(folder / "mesh.obj")
    tex = None
    if (folder / "texture.png").is_file():
        tex = read_image(folder / "texture.png").astype(np.float32) / 255.0
    masks, lmks = [], []
    lm_json = {}
    if prep_dir is not None and (Path(prep_dir) / "landmarks.json").is_file():
        lm_json = json.loads((Path(prep_dir) / "landmarks.json").read_text())
    for n in names:
        mp = Path(prep_dir) / "masks" / "head" / f"{Path(n).stem}.png" if prep_dir is not None else None
        masks.append(mp if mp is not None and mp.is_file() else None)
        pts = (lm_json.get(n) or {}).get("points")
        lmks.append(None if pts is None else np.asarray(pts, np.float64))
    pts = col = None
    if (folder / "points3D.ply").is_file():
        pts, col = read_points_ply(folder / "points3D.ply")
    if tracks is None:
        tracks = bool(report and report.get("tracks"))
    tracks = bool(tracks) and pts is not None and len(pts) > 0
    return FitResult(folder=folder, names=names, image_paths=image_paths, sizes=np.asarray(p["image_size"]),
                     K=np.asarray(p["K"], np.float64), R=np.asarray(p["R"], np.float64),
                     t=np.asarray(p["t"], np.float64), verts=np.asarray(v, np.float64), faces=np.asarray(f),
                     params=p, verts_uvs=vt, faces_uvs=ft, texture=tex, mask_paths=masks, landmarks=lmks,
                     points=pts, colors=col, points_are_tracks=tracks, model_path=str(model_path or ""),
                     report=report)


def _find_image(folder: Path, file_path: str, name: str, prep_dir) -> Path:
    """transforms.json's path (relative to the fit folder, which may have moved since), else
    the scene's images/ that the preprocessing manifest names."""
    cands = [Path(file_path) if os.path.isabs(file_path) else folder / file_path]
    if prep_dir is not None:
        man = Path(prep_dir) / "manifest.json"
        if man.is_file():
            m = json.loads(man.read_text())
            cands.append(Path(m.get("scene", prep_dir)) / m.get("images_dir", "images") / name)
        cands.append(Path(prep_dir) / "images" / name)
    for c in cands:
        if c.is_file():
            return c.resolve()
    raise FileNotFoundError(f"photo {name} not found (looked at {', '.join(map(str, cands))})")


def model_note(fit: FitResult) -> str | None:
    """A warning when the fit's model is not what GaussianAvatars / VHAP / DECA load (FLAME
    2023, 5023 vertices), else None."""
    if fit.is_standin:
        return ("this fit used the synthetic stand-in model, not FLAME: GaussianAvatars and VHAP "
                "load FLAME 2023 and will not reproduce this mesh from these parameters; "
                "refit with --flame_model pointing to FLAME 2023 (flame2023.pkl)")
    if len(fit.verts) != FLAME_VERTS:
        return (f"the fitted model has {len(fit.verts)} vertices, FLAME has {FLAME_VERTS}: "
                "these consumers need FLAME 2023 with the same vertices")
    if "2023" not in Path(fit.model_path).name:
        return (f"the fit used {Path(fit.model_path).name}; GaussianAvatars and VHAP are built on FLAME "
                "2023: with FLAME 2020 the same parameters give another shape (refit with flame2023.pkl)")
    return None


@contextmanager
def staged_folder(dst):
    """Yield a fresh staging folder beside ``dst``; on success it replaces ``dst`` whole
    (a rename; the old folder, if any, is moved aside first and removed), on error it is
    removed and ``dst`` is left as it was."""
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.parent / f".{dst.name}.partial-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if dst.exists():
        old = dst.parent / f".{dst.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(dst, old)
    os.replace(tmp, dst)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def copy_image(src, dst) -> Path:
    """The photo as displayed: copied byte for byte, or an upright copy when it is stored
    sideways (EXIF orientation)."""
    dst = Path(dst)
    if exif_orientation(src) != 1:
        return write_upright_copy(src, dst)
    return atomic_write_bytes(dst, Path(src).read_bytes())


def project(points, K, R, t) -> np.ndarray:
    """(P, 3) world points -> (P, 2) pixels of one OpenCV camera (float64)."""
    x = (np.asarray(points, np.float64) @ np.asarray(R, np.float64).T + np.asarray(t, np.float64)) @ np.asarray(K).T
    return x[:, :2] / x[:, 2:]


def sample_surface(fit: FitResult, n: int = 20000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """n points on the mesh, area-weighted, with colours from the texture (bilinear at their
    UV), or grey without one. -> (points (n, 3) float32, colors (n, 3) uint8)."""
    rng = np.random.default_rng(seed)
    v, f = fit.verts, fit.faces
    tri = v[f]
    area = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
    fi = rng.choice(len(f), size=n, p=area / area.sum())
    r1, r2 = rng.random(n), rng.random(n)
    s = np.sqrt(r1)
    bary = np.stack([1 - s, s * (1 - r2), s * r2], 1)
    pts = (tri[fi] * bary[..., None]).sum(1)
    col = np.full((n, 3), 200, np.uint8)
    if fit.texture is not None and fit.verts_uvs is not None:
        uv = (fit.verts_uvs[fit.faces_uvs[fi]] * bary[..., None]).sum(1)
        Ht, Wt = fit.texture.shape[:2]
        import cv2
        mx = (uv[:, 0] * Wt - 0.5).astype(np.float32)[None]
        my = ((1 - uv[:, 1]) * Ht - 0.5).astype(np.float32)[None]
        c = cv2.remap(fit.texture, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)[0]
        col = (np.clip(c, 0, 1) * 255 + 0.5).astype(np.uint8)
    return pts.astype(np.float32), col


def render_views(fit: FitResult, K, R, t, size, sh=None):
    """Render the fitted mesh (textured when the fit has a texture) through cameras K, R, t
    (B, ...) at ``size`` (W, H) with our renderer. -> RenderOutput (image, alpha, fragments)."""
    import torch

    from fitting.render import MeshRenderer, RasterSettings
    W, H = (int(v) for v in size)
    tex = vt = ft = None
    if fit.texture is not None and fit.verts_uvs is not None:
        tex = torch.as_tensor(fit.texture, dtype=torch.float32).permute(2, 0, 1)[None]
        vt, ft = torch.as_tensor(fit.verts_uvs, dtype=torch.float32), torch.as_tensor(fit.faces_uvs)
    r = MeshRenderer(torch.as_tensor(fit.faces), vt, ft, RasterSettings((H, W)))
    B = len(K)
    f32 = dict(dtype=torch.float32)
    verts = torch.as_tensor(fit.verts, **f32)[None].expand(B, -1, -1)
    with torch.no_grad():
        return r(verts, torch.as_tensor(np.asarray(K), **f32), torch.as_tensor(np.asarray(R), **f32),
                 torch.as_tensor(np.asarray(t), **f32), texture=tex,
                 sh=None if sh is None else torch.as_tensor(np.asarray(sh), **f32))


def fitted_landmarks(fit: FitResult) -> np.ndarray | None:
    """(N, 68, 3) the fitted model's 68 landmarks on the mesh, per view (the jaw contour follows
    each view's yaw, as in the fit), head frame, metres; None when the model file is absent."""
    import torch
    try:
        from fitting.flame import FLAME
        from fitting.rotations import axis_angle_to_matrix
        flame = FLAME(fit.model_path, n_shape=0, n_exp=0)
    except Exception:  # the model or its embedding is not on this machine
        return None
    if flame.v_template.shape[0] != len(fit.verts):
        return None
    R_head = axis_angle_to_matrix(torch.as_tensor(np.asarray(fit.params["pose"])[0, :3], dtype=torch.float64))
    view = torch.diag(torch.tensor([1.0, -1, -1], dtype=torch.float64)) @ torch.as_tensor(fit.R) @ R_head
    verts = torch.as_tensor(fit.verts, dtype=torch.float32)[None].expand(len(fit.R), -1, -1)
    return flame.landmarks(verts, view.float()).double().numpy()


def depth_map(fit: FitResult, i: int) -> np.ndarray:
    """(H, W) float32 camera-space depth z of view i at its image size, metres, 0 = background
    (our rasterizer alone: visibility, no shading)."""
    import torch

    from fitting.render import RasterSettings, rasterize_packed
    W, H = (int(v) for v in fit.sizes[i])
    f32 = dict(dtype=torch.float32)
    with torch.no_grad():
        pf = rasterize_packed(torch.as_tensor(fit.verts, **f32)[None], torch.as_tensor(fit.faces),
                              torch.as_tensor(fit.K[i:i + 1], **f32), torch.as_tensor(fit.R[i:i + 1], **f32),
                              torch.as_tensor(fit.t[i:i + 1], **f32), RasterSettings((H, W)))
        return pf.scatter(pf.depth[:, None]).view(H, W).numpy().astype(np.float32)
