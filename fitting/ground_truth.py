"""Errors of a fit against the ground truth of a synthetic scene (``ground_truth.npz``, written by
:mod:`fitting.synthetic_scene`): camera rotations and centres, vertices, landmarks."""
from __future__ import annotations

import numpy as np
import torch

from fitting.init import align_sfm_poses
from fitting.render.cameras import rotation_angle_deg
from fitting.rotations import axis_angle_to_matrix

__all__ = ["ground_truth_errors", "aligned_camera_errors", "calibration_errors", "focal_error_pct", "perturb_cameras"]


def ground_truth_errors(gt: dict, names: list, R: np.ndarray, t: np.ndarray, verts: np.ndarray,
                        lmk_orig: np.ndarray, aligned: bool = False) -> dict:
    """Errors against ground_truth.npz (synthetic scenes), for the used views ``names``.

    R, t: (N, 3, 3), (N, 3) fitted world-to-camera; verts (V, 3) fitted; lmk_orig (N, 68, 2)
    fitted landmarks in original pixels, compared with the noise-free projections."""
    idx = [list(map(str, gt["names"])).index(n) for n in names]
    Rg, tg = torch.as_tensor(gt["R"][idx], dtype=torch.float64), torch.as_tensor(gt["t"][idx], dtype=torch.float64)
    Rf, tf = torch.as_tensor(R, dtype=torch.float64), torch.as_tensor(t, dtype=torch.float64)
    rot = rotation_angle_deg(Rf, Rg).numpy()
    Cg = -(Rg.transpose(1, 2) @ tg[..., None])[..., 0]
    Cf = -(Rf.transpose(1, 2) @ tf[..., None])[..., 0]
    cc = (Cf - Cg).norm(dim=-1).numpy() * 1000
    ve = np.linalg.norm(verts - gt["vertices"], axis=-1).mean() * 1000
    lr = np.sqrt(((lmk_orig - gt["landmarks"][idx]) ** 2).sum(-1).mean())
    out = {"rotation_error_deg_mean": float(rot.mean()), "rotation_error_deg_max": float(rot.max()),
           "camera_center_error_mm_mean": float(cc.mean()), "vertex_error_mm_mean": float(ve),
           "landmark_rmse_px": float(lr)}
    if aligned and len(idx) >= 2:
        # The same errors after the similarity (Sim(3)) that best maps the fitted cameras onto the
        # true ones: the model's shape space can rotate and scale the head a little, which the
        # images cannot see, so the head frame itself is only fixed by the prior.
        al = align_sfm_poses(R, t, gt["R"][idx], gt["t"][idx], max_deg=180, max_rel=1e9)
        Ca = -np.einsum("nji,nj->ni", al["R"], al["t"])
        va = al["s"] * verts @ al["Q"].T + al["T"]
        out["aligned"] = {"rotation_error_deg_mean": float(al["angle_deg"].mean()),
                          "rotation_error_deg_max": float(al["angle_deg"].max()),
                          "camera_center_error_mm_mean": float(np.linalg.norm(Ca - Cg.numpy(), axis=1).mean() * 1000),
                          "vertex_error_mm_mean": float(np.linalg.norm(va - gt["vertices"], axis=-1).mean() * 1000),
                          "similarity_scale": float(al["s"]),
                          "similarity_rotation_deg": float(np.degrees(np.arccos(np.clip((np.trace(al["Q"]) - 1) / 2, -1, 1))))}
    return out


def aligned_camera_errors(R: np.ndarray, t: np.ndarray, R_true: np.ndarray, t_true: np.ndarray) -> tuple:
    """(rotation (N,) deg, centre (N,) mm) errors of cameras R (N, 3, 3), t (N, 3) after the
    similarity that best maps them onto the true ones: a rig's frame is only fixed up to one."""
    al = align_sfm_poses(R, t, R_true, t_true, max_deg=180, max_rel=1e9)
    C = -np.einsum("nji,nj->ni", al["R"], al["t"])
    C_true = -np.einsum("nji,nj->ni", R_true, t_true)
    return al["angle_deg"], np.linalg.norm(C - C_true, axis=1) * 1000


def calibration_errors(cameras: dict, truth: dict) -> tuple[float, float]:
    """Mean rotation (deg) and centre (mm) errors of cameras {name: Calibrated} against the true
    ones, over the names of ``truth``, after the best similarity (:func:`aligned_camera_errors`)."""
    names = sorted(truth)
    rot, cen = aligned_camera_errors(*(np.stack([getattr(c[n], k) for n in names]) for c in (cameras, truth)
                                       for k in ("R", "t")))
    return float(rot.mean()), float(cen.mean())


def focal_error_pct(cameras: dict, truth: dict) -> float:
    """Mean relative error (%) of the focal lengths (fx) of cameras {name: Calibrated} against the
    true ones, over the names of ``truth``: signed, so a common scale of every lens shows."""
    return float(np.mean([cameras[n].K[0, 0] / truth[n].K[0, 0] - 1 for n in truth]) * 100)


def perturb_cameras(cameras: dict, rng: np.random.Generator, deg: float = 1.0, mm: float = 5.0,
                    focal_pct: float = 0.0) -> dict:
    """{name: Calibrated} with each camera turned by ``deg`` about its centre (random axis), its
    centre moved by ``mm`` (random direction) and its focal length (fx, fy) scaled by
    1 + ``focal_pct`` / 100 (every lens alike): a calibration that has drifted."""
    out = {}
    for n, c in cameras.items():
        a, d = rng.normal(size=3), rng.normal(size=3)
        C = -c.R.T @ c.t + mm / 1000 * d / np.linalg.norm(d)
        R = axis_angle_to_matrix(torch.as_tensor(a / np.linalg.norm(a) * np.radians(deg))).numpy() @ c.R
        K = np.asarray(c.K, dtype=np.float64).copy()
        K[:2, :2] *= 1 + focal_pct / 100
        out[n] = c._replace(R=R, t=-R @ C, K=K)
    return out
