"""Camera initialisation.

* :func:`pnp_views` - robust PnP per view (RANSAC + LM refinement) of the detected landmarks
  against the model's mean-shape 3D landmarks, with the shared K.
* :func:`umeyama` / :func:`align_sfm_poses` - bring up-to-scale SfM poses into the head frame
  with a similarity, and flag views whose PnP and SfM poses disagree.

The camera conventions and the fit's rotation parameterisation live in
:mod:`fitting.render.cameras`.
"""
from __future__ import annotations

import cv2
import numpy as np
import torch

from fitting.render.cameras import FLIP, rotation_angle_deg

__all__ = ["pnp_views", "umeyama", "rotation_mean", "align_sfm_poses"]


def pnp_views(landmarks: np.ndarray, lmk3d: np.ndarray, K: np.ndarray, point_mask: np.ndarray | None = None,
              reproj_px: float = 8.0):
    """Robust PnP per view.

    landmarks: (N, 68, 2) pixels (continuous convention; same projection formula as OpenCV);
    lmk3d: (68, 3) or (N, 68, 3) model landmarks in the head frame (metres); K: (N, 3, 3);
    point_mask: (68,) bool, which points to use (default the 51 static ones).
    Returns R (N, 3, 3), t (N, 3), ok (N,) bool, rmse (N,) px over the used points, inliers (N,).
    A view fails (ok False, identity-like pose) when RANSAC finds < 6 inliers or the head
    lands behind the camera.
    """
    landmarks = np.asarray(landmarks, np.float64)
    N = landmarks.shape[0]
    lmk3d = np.broadcast_to(np.asarray(lmk3d, np.float64), (N, 68, 3))
    K = np.asarray(K, np.float64)
    if point_mask is None:
        point_mask = np.zeros(68, bool)
        point_mask[17:] = True
    R_out = np.tile(FLIP.numpy().astype(np.float64), (N, 1, 1))
    t_out = np.tile(np.array([0.0, 0.0, 1.0]), (N, 1))
    ok = np.zeros(N, bool)
    rmse = np.full(N, np.inf)
    n_in = np.zeros(N, int)
    for i in range(N):  # OpenCV's PnP is per view; N is small and this runs once
        obj = lmk3d[i][point_mask]
        img = landmarks[i][point_mask]
        good = np.isfinite(img).all(1)
        if good.sum() < 6:
            continue
        obj, img = obj[good], img[good]
        try:
            found, rvec, tvec, inl = cv2.solvePnPRansac(
                obj, img, K[i], None, iterationsCount=200, reprojectionError=reproj_px,
                confidence=0.999, flags=cv2.SOLVEPNP_EPNP)
        except cv2.error:
            found = False
        if not found or inl is None or len(inl) < 6:
            continue
        inl = inl[:, 0]
        rvec, tvec = cv2.solvePnPRefineLM(obj[inl], img[inl], K[i], None, rvec, tvec)
        R, _ = cv2.Rodrigues(rvec)
        if tvec[2, 0] <= 0:
            continue
        proj, _ = cv2.projectPoints(obj, rvec, tvec, K[i], None)
        rmse[i] = float(np.sqrt(((proj[:, 0] - img) ** 2).sum(1).mean()))
        R_out[i], t_out[i], ok[i], n_in[i] = R, tvec[:, 0], True, len(inl)
    return R_out, t_out, ok, rmse, n_in


def umeyama(src: np.ndarray, dst: np.ndarray, with_scale: bool = True):
    """Least-squares similarity dst ~ s Q src + T (Umeyama 1991). src, dst: (M, 3), M >= 3.

    Returns (s, Q (3, 3), T (3,)).
    """
    src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 3 or len(src) < 3:
        raise ValueError(f"umeyama needs two (M, 3) point sets with M >= 3, got {src.shape} and {dst.shape}")
    mu_s, mu_d = src.mean(0), dst.mean(0)
    xs, xd = src - mu_s, dst - mu_d
    cov = xd.T @ xs / len(src)
    U, D, Vt = np.linalg.svd(cov)
    S = np.eye(3)
    if np.linalg.det(U) * np.linalg.det(Vt) < 0:
        S[2, 2] = -1
    Q = U @ S @ Vt
    var_s = (xs ** 2).sum() / len(src)
    s = float(np.trace(np.diag(D) @ S) / var_s) if with_scale else 1.0
    T = mu_d - s * Q @ mu_s
    return s, Q, T


def rotation_mean(Rs: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """Chordal L2 mean of rotations (M, 3, 3): the rotation nearest to their weighted sum."""
    w = np.ones(len(Rs)) if weights is None else np.asarray(weights, np.float64)
    M = (w[:, None, None] * Rs).sum(0)
    U, _, Vt = np.linalg.svd(M)
    S = np.diag([1.0, 1.0, np.sign(np.linalg.det(U @ Vt))])
    return U @ S @ Vt


def _angles_deg(Ra: np.ndarray, Rb: np.ndarray) -> np.ndarray:
    """(M,) :func:`rotation_angle_deg` of numpy rotations (M, 3, 3)."""
    return rotation_angle_deg(torch.from_numpy(Ra), torch.from_numpy(Rb)).numpy()


def _consensus_rotation_views(R_sfm: np.ndarray, R_ref: np.ndarray, use: np.ndarray, max_deg: float) -> np.ndarray:
    """(M,) bool: the views whose rotations agree within ``max_deg`` under the frame rotation
    that most views agree with, each usable view's R_ref_i^T R_sfm_i tried in turn."""
    best = np.zeros(len(R_sfm), bool)
    for i in np.nonzero(use)[0]:  # a few views
        Q = R_ref[i].T @ R_sfm[i]
        agree = use & (_angles_deg(R_sfm @ Q.T, R_ref) <= max_deg)
        if agree.sum() > best.sum():
            best = agree
    return best


def align_sfm_poses(R_sfm: np.ndarray, t_sfm: np.ndarray, R_ref: np.ndarray, t_ref: np.ndarray,
                    ref_ok: np.ndarray | None = None, max_deg: float = 10.0, max_rel: float = 0.1):
    """Similarity from the SfM world to the head frame, fitted to the reference (PnP) poses.

    R_sfm, R_ref: (M, 3, 3); t_sfm, t_ref: (M, 3) world-to-camera, same views in the same order.
    With X_head = s Q X_sfm + T, a camera becomes R = R_sfm Q^T and t = s t_sfm - R T.
    Q is the chordal mean of R_ref_i^T R_sfm_i (well-posed even when the cameras lie on an
    arc, where Umeyama on the centres alone is not), then s and T by least squares on the
    centres; views off by more than ``max_deg`` / ``max_rel`` are dropped and the fit redone.
    The views that start are those agreeing within ``max_deg`` with the best single view's
    rotation (the one most views agree with): a few reference poses off by tens of degrees
    (PnP on a profile's collapsed landmarks) would otherwise pull the first mean so far that
    every view disagrees with it.

    Returns dict: R (M,3,3), t (M,3) SfM poses in the head frame, s, Q, T,
    angle_deg (M,), center_rel (M,) (centre distance / mean camera distance), disagree (M,) bool.
    """
    R_sfm, t_sfm = np.asarray(R_sfm, np.float64), np.asarray(t_sfm, np.float64)
    R_ref, t_ref = np.asarray(R_ref, np.float64), np.asarray(t_ref, np.float64)
    M = len(R_sfm)
    use = np.ones(M, bool) if ref_ok is None else np.asarray(ref_ok, bool).copy()
    C_sfm = -np.einsum("mji,mj->mi", R_sfm, t_sfm)
    C_ref = -np.einsum("mji,mj->mi", R_ref, t_ref)
    use &= _consensus_rotation_views(R_sfm, R_ref, use, max_deg)
    out = None
    for _ in range(2):
        if use.sum() < 2:
            break
        Q = rotation_mean(np.einsum("mji,mjk->mik", R_ref[use], R_sfm[use]))  # R_ref = R_sfm Q^T => Q = R_ref^T R_sfm
        a = (Q @ C_sfm[use].T).T
        am, cm = a.mean(0), C_ref[use].mean(0)
        denom = ((a - am) ** 2).sum()
        s = float(((a - am) * (C_ref[use] - cm)).sum() / denom) if denom > 1e-12 else 1.0
        T = cm - s * am
        R_al = R_sfm @ Q.T
        C_al = s * (Q @ C_sfm.T).T + T
        t_al = -np.einsum("mij,mj->mi", R_al, C_al)
        ang = _angles_deg(R_al, R_ref)
        dist = np.linalg.norm(C_ref, axis=1).mean()
        rel = np.linalg.norm(C_al - C_ref, axis=1) / max(dist, 1e-9)
        disagree = (ang > max_deg) | (rel > max_rel)
        out = dict(R=R_al, t=t_al, s=s, Q=Q, T=T, angle_deg=ang, center_rel=rel, disagree=disagree)
        new_use = use & ~disagree
        if new_use.sum() == use.sum() or new_use.sum() < 2:
            break
        use = new_use
    return out
