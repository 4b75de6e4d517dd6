"""DECA export: the FLAME codes under the names and shapes of DECA's ``codedict``
(decalib/deca.py, ``DECA.encode``), for code written against DECA, plus what
demos/demo_reconstruct.py writes with ``--saveMat``, ``--saveKpt`` and ``--saveDepth``.

Layout (B = the N views; shape and expression are shared, repeated per view)::

    DIR/codedict.npz       shape (B, 100), exp (B, 50), pose (B, 6) = global + jaw axis-angle,
                           tex (B, 50) (zeros with a free UV texture: see texture.png), light
                           (B, 9, 3), cam (B, 3), and our perspective camera: K (B, 3, 3)
                           original pixels, R (B, 3, 3), t (B, 3) (OpenCV world-to-camera),
                           image_size (B, 2) as (W, H), names (B,)
    DIR/<stem>/<stem>.mat         the same for one view (scipy.io.savemat, as --saveMat)
    DIR/<stem>/<stem>_kpt2d.txt   68 x 2 fitted landmarks, original pixels (as --saveKpt)
    DIR/<stem>/<stem>_kpt3d.txt   68 x 3 fitted landmarks, head frame, metres
    DIR/<stem>/<stem>_depth.jpg   DECA's depth picture (near = bright), and
    DIR/<stem>/<stem>_depth.npy   the camera-space depth z in metres (float32, 0 = background)

Conventions: DECA's FLAME sits in a camera frame with x right, y up, z towards the viewer, and
its ``pose[:, :3]`` is the head's rotation in that frame; so per view ``pose[:, :3]`` is
axis-angle of diag(1, -1, -1) R R_head, and ``light`` is our SH (on world normals) rotated
into that frame (DECA shades camera-frame normals). ``cam`` = (s, tx, ty) is DECA's
orthographic camera approximating ours at the depth of the head's origin, over the whole image
normalised by its width (DECA's crop): u = (s (x + tx) + 1) W / 2, v = (-s (y + ty)) W / 2 + H / 2.
It is an approximation; K, R, t are exact.
"""
from __future__ import annotations

import io
from pathlib import Path

import cv2
import numpy as np
import torch

from fitting.atomic import atomic_write_bytes
from fitting.export.core import write_params
from fitting.export.source import FitResult, depth_map, fitted_landmarks, model_note, project
from fitting.rotations import axis_angle_to_matrix, matrix_to_axis_angle

__all__ = ["write_deca", "deca_codedict", "rotate_sh"]

FLIP = np.diag([1.0, -1.0, -1.0])


def _fit_len(x, n: int) -> np.ndarray:
    x = np.asarray(x, np.float32).reshape(-1)[:n]
    return np.concatenate([x, np.zeros(n - len(x), np.float32)])


def rotate_sh(sh: np.ndarray, Rm: np.ndarray) -> np.ndarray:
    """(9, 3) SH lighting on normals n -> the same lighting on normals Rm n (least squares on
    sphere samples; exact, as the 9-term space is closed under rotation)."""
    from fitting.render.shading import sh_basis
    n = torch.as_tensor(np.random.default_rng(0).normal(size=(500, 3)))
    n = n / n.norm(dim=1, keepdim=True)
    B0 = sh_basis(n).double().numpy()
    B1 = sh_basis(n @ torch.as_tensor(Rm).T).double().numpy()
    return np.linalg.lstsq(B1, B0 @ np.asarray(sh, np.float64), rcond=None)[0]


def deca_codedict(fit: FitResult) -> dict:
    """DECA-named arrays for the N views (see the module docstring)."""
    p, N = fit.params, len(fit.names)
    pose = np.asarray(p["pose"], np.float64).reshape(-1, 15)[0]
    R_head = axis_angle_to_matrix(torch.as_tensor(pose[:3])).numpy()
    g = np.stack([FLIP @ fit.R[i] @ R_head for i in range(N)])
    glob = matrix_to_axis_angle(torch.as_tensor(g)).numpy()
    tex = p["tex"][0] if "tex" in p else np.zeros(50)
    light = np.stack([rotate_sh(p["sh"][i], FLIP @ fit.R[i]) for i in range(N)])
    cam = []
    for i in range(N):
        K, (W, H), t = fit.K[i], fit.sizes[i], fit.t[i]
        z0 = t[2]
        s = 2 * K[0, 0] / (z0 * W)
        cam.append([s, t[0] + (K[0, 2] - W / 2) * z0 / K[0, 0], -t[1] - (K[1, 2] - H / 2) * z0 / K[1, 1]])
    return {"shape": np.tile(_fit_len(p["shape"][0], 100), (N, 1)),
            "exp": np.tile(_fit_len(p["expression"][0], 50), (N, 1)),
            "pose": np.concatenate([glob, np.tile(pose[6:9], (N, 1))], 1).astype(np.float32),
            "tex": np.tile(_fit_len(tex, 50), (N, 1)), "light": light.astype(np.float32),
            "cam": np.asarray(cam, np.float32), "K": fit.K, "R": fit.R, "t": fit.t,
            "image_size": np.asarray(fit.sizes), "names": np.asarray(fit.names)}


def write_deca(fit: FitResult, out_dir) -> Path:
    out = Path(out_dir)
    cd = deca_codedict(fit)
    write_params(out / "codedict.npz", **cd)
    note = model_note(fit)
    if note:
        atomic_write_bytes(out / "WARNING.txt", (note.replace("GaussianAvatars and VHAP", "DECA") + "\n").encode())
    lm3 = fitted_landmarks(fit)
    try:
        from scipy.io import savemat
    except ImportError:  # scipy is in requirements.txt; the .mat files are optional all the same
        savemat = None
    for i, stem in enumerate(fit.stems):
        d = out / stem
        one = {k: (v[i] if k != "names" else str(v[i])) for k, v in cd.items()}
        if savemat is not None:
            buf = io.BytesIO()
            savemat(buf, {k: (v[None] if isinstance(v, np.ndarray) and k not in ("K", "R") else v)
                          for k, v in one.items()})
            atomic_write_bytes(d / f"{stem}.mat", buf.getvalue())
        if lm3 is not None:
            atomic_write_bytes(d / f"{stem}_kpt3d.txt", _txt(lm3[i]))
            atomic_write_bytes(d / f"{stem}_kpt2d.txt", _txt(project(lm3[i], fit.K[i], fit.R[i], fit.t[i])))
        z = depth_map(fit, i)
        b = io.BytesIO()
        np.save(b, z)
        atomic_write_bytes(d / f"{stem}_depth.npy", b.getvalue())
        ok, jpg = cv2.imencode(".jpg", _depth_picture(z))
        atomic_write_bytes(d / f"{stem}_depth.jpg", jpg.tobytes())
    return out


def _txt(a: np.ndarray) -> bytes:
    return ("\n".join(" ".join(f"{v:.18e}" for v in row) for row in np.asarray(a, np.float64)) + "\n").encode()


def _depth_picture(z: np.ndarray) -> np.ndarray:
    """Near = bright, background black (DECA renders depth as 1 - normalised z)."""
    m = z > 0
    out = np.zeros(z.shape, np.uint8)
    if m.any():
        lo, hi = z[m].min(), z[m].max()
        out[m] = (255 * (0.2 + 0.8 * (hi - z[m]) / max(hi - lo, 1e-9))).astype(np.uint8)
    return out
