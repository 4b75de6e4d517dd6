"""Structure-from-motion tracks as a residual term of the geometry solve (bundle adjustment).

SfM (process_data's pycolmap stage) leaves a COLMAP model in ``<prep>/sfm/model``: 3D points,
each with a *track* of 2D SIFT observations in the views that see it. Their reprojection
errors are precise (~0.5 px) but say nothing about metric scale or the head; the landmarks
say both but are noisy (2-20 px on real photos, wrong on profiles). The geometry solve
therefore minimises both together: every track point becomes an unknown of the LM, and the
cameras are shared by both terms (see docs/FITTING.md, "Bundle adjustment").

* :func:`load_tracks` reads the model into arrays over the fit's views.
* :class:`TrackTerm` is the reprojection residual with its Jacobians, and eliminates the
  points from the LM's normal equations by a Schur complement (each point is a 3x3 block,
  so the reduced system keeps the size of the camera + FLAME unknowns).

Units: observations are in fitting pixels (original pixels scaled like the landmarks,
pixel centres at +0.5, COLMAP's convention too); points in the frame of the cameras given.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from fitting.jacobians import point_jacobian

__all__ = ["Tracks", "load_tracks", "TrackTerm"]


@dataclass
class Tracks:
    """Track points and their observations in the fit's views.

    xyz: (P, 3) float64 points in SfM's frame until :meth:`transformed`; rgb: (P, 3) uint8;
    view: (M,) int64 index into the fit's views; point: (M,) int64 index into xyz;
    uv: (M, 2) float64 fitting pixels. Every point has observations in >= 2 views.
    """

    xyz: np.ndarray
    rgb: np.ndarray
    view: np.ndarray
    point: np.ndarray
    uv: np.ndarray

    @property
    def num_points(self) -> int:
        return len(self.xyz)

    @property
    def num_observations(self) -> int:
        return len(self.view)

    def per_view_counts(self, num_views: int) -> np.ndarray:
        """(N,) observations per view."""
        return np.bincount(self.view, minlength=num_views)

    def transformed(self, s: float, Q: np.ndarray, T: np.ndarray) -> "Tracks":
        """The same tracks with points mapped by X' = s Q X + T (SfM frame -> head frame)."""
        xyz = s * self.xyz @ np.asarray(Q, np.float64).T + np.asarray(T, np.float64)
        return Tracks(xyz, self.rgb, self.view, self.point, self.uv)


def load_tracks(model, names: list, scale: np.ndarray, landmarks_px: np.ndarray | None = None,
                inside=None, min_views: int = 2) -> Tracks | None:
    """Tracks of a COLMAP model restricted to the fit's views.

    model: a COLMAP model folder (binary or text) or a ``pycolmap.Reconstruction``; names: (N,) the fit's view names, in
    order; scale: (N, 2) original -> fitting pixel factors (sx, sy); landmarks_px: (N, 68, 2)
    detected landmarks in original pixels, whose copies that SfM may have used as extra
    keypoints (process_data's ``--sfm-landmarks``) are dropped, since the landmark term already
    counts them. inside(view (M,), uv (M, 2) original pixels) -> (M,) bool: the observations
    to keep (the pipeline keeps those on the head, see :func:`fitting.pipeline.head_mask_test`).
    Points seen by fewer than ``min_views`` of the fit's views are dropped.
    Returns None when nothing is left.
    """
    import pycolmap

    rec = model if isinstance(model, pycolmap.Reconstruction) else pycolmap.Reconstruction(str(model))
    index = {n: i for i, n in enumerate(names)}
    image_view = {iid: index.get(im.name, -1) for iid, im in rec.images.items()}
    xy_of = {iid: np.array([p.xy for p in im.points2D], np.float64).reshape(-1, 2) for iid, im in rec.images.items()
             if image_view[iid] >= 0}
    xyz, rgb, view, point, uv = [], [], [], [], []
    for p in rec.points3D.values():  # one pass over the model when it is read
        els = [(image_view[e.image_id], e.image_id, e.point2D_idx) for e in p.track.elements
               if image_view.get(e.image_id, -1) >= 0]
        if len({v for v, _, _ in els}) < min_views:
            continue
        j = len(xyz)
        xyz.append(p.xyz)
        rgb.append(p.color)
        for v, iid, k in els:
            view.append(v)
            point.append(j)
            uv.append(xy_of[iid][k])
    if not xyz:
        return None
    tr = Tracks(np.asarray(xyz, np.float64), np.asarray(rgb, np.uint8), np.asarray(view, np.int64),
                np.asarray(point, np.int64), np.asarray(uv, np.float64))
    if landmarks_px is not None:
        d = np.linalg.norm(tr.uv[:, None] - np.asarray(landmarks_px, np.float64)[tr.view], axis=-1).min(1)
        tr = _keep_observations(tr, d > 1e-3, min_views)
        if tr is None:
            return None
    if inside is not None:
        tr = _keep_observations(tr, np.asarray(inside(tr.view, tr.uv), bool), min_views)
        if tr is None:
            return None
    tr.uv = tr.uv * np.asarray(scale, np.float64)[tr.view]
    return tr


def _keep_observations(tr: Tracks, keep: np.ndarray, min_views: int) -> Tracks | None:
    """Tracks with only the observations in ``keep`` (M,) bool, points re-indexed, and points
    left with fewer than ``min_views`` views dropped."""
    view, point, uv = tr.view[keep], tr.point[keep], tr.uv[keep]
    nviews = np.zeros(len(tr.xyz), np.int64)
    pairs = np.unique(np.stack([point, view], 1), axis=0)
    np.add.at(nviews, pairs[:, 0], 1)
    good = nviews >= min_views
    if not good.any():
        return None
    new = np.cumsum(good) - 1
    m = good[point]
    return Tracks(tr.xyz[good], tr.rgb[good], view[m], new[point[m]], uv[m])


class TrackTerm:
    """Robust reprojection residuals of track points, for the geometry LM.

    For observation m of point j in view i: ``r_m = pi(K_i (R_i X_j + t_i)) - u_m`` (fitting
    pixels), weighted in the LM by ``sqrt(weight * w_m)`` with ``w_m`` the IRLS weight of a
    Cauchy loss of scale ``robust_px``. ``weight`` sets the term against the other rows (the LM
    passes it per iteration, from the measured noise of both terms).

    The camera Jacobian uses the LM's compressed tangents (rotation increment, translation,
    log focal), and the point Jacobian the 3 coordinates. :meth:`normal_equations` returns the
    term's camera block of the LM's normal equations and its point blocks, which
    :meth:`TrackBlocks.reduce` eliminates (Schur complement).

    points: (P, 3) float64, the current points in the cameras' frame; None until set, or
    computed by :meth:`triangulate`. The LM moves them (see :func:`fitting.stages.lm_geometry`).
    The term works in float64: its normal equations sum thousands of rows whose weights are
    ~(landmark noise / track noise)^2 ~ 10-100 times the landmarks', and float32 loses the
    sub-pixel steps in that sum.
    """

    def __init__(self, tracks: Tracks, robust_px: float, device=None):
        self.num_points = tracks.num_points
        self.rgb = tracks.rgb
        self.view = torch.as_tensor(tracks.view, device=device)
        self.point = torch.as_tensor(tracks.point, device=device)
        self.uv = torch.as_tensor(tracks.uv, device=device, dtype=torch.float64)
        self.points = None
        self.robust_px = float(robust_px)

    def residuals(self, R: torch.Tensor, t: torch.Tensor, K: torch.Tensor,
                  points: torch.Tensor | None = None) -> torch.Tensor:
        """(M, 2) reprojection errors in pixels. R: (N, 3, 3); t: (N, 3); K: (N, 3, 3)."""
        X = (self.points if points is None else points)[self.point]
        xc = (R[self.view] @ X[..., None])[..., 0] + t[self.view]
        f = torch.stack([K[self.view, 0, 0], K[self.view, 1, 1]], -1)
        return xc[:, :2] / xc[:, 2:3].clamp_min(1e-9) * f + K[self.view, :2, 2] - self.uv

    @torch.no_grad()
    def triangulate(self, R: torch.Tensor, t: torch.Tensor, K: torch.Tensor) -> None:
        """Set every point to the least-squares intersection of its observation rays (the point
        nearest to all rays: sum_m (I - d_m d_m^T)(X - C_m) = 0), for cameras R (N, 3, 3),
        t (N, 3), K (N, 3, 3) in the points' dtype."""
        v = self.view
        C = -(R.transpose(1, 2) @ t[..., None])[..., 0]                            # (N, 3) centres
        x = torch.stack([(self.uv[:, 0] - K[v, 0, 2]) / K[v, 0, 0], (self.uv[:, 1] - K[v, 1, 2]) / K[v, 1, 1],
                         torch.ones_like(self.uv[:, 0])], -1)
        d = (R[v].transpose(1, 2) @ x[..., None])[..., 0]
        d = d / d.norm(dim=-1, keepdim=True)
        Pm = torch.eye(3, dtype=d.dtype, device=d.device) - d[:, :, None] * d[:, None, :]  # (M, 3, 3)
        A = torch.zeros(self.num_points, 3, 3, dtype=d.dtype, device=d.device).index_add_(0, self.point, Pm)
        b = torch.zeros(self.num_points, 3, dtype=d.dtype, device=d.device).index_add_(
            0, self.point, (Pm @ C[v][..., None])[..., 0])
        self.points = torch.linalg.solve(A + 1e-12 * torch.eye(3, dtype=d.dtype, device=d.device), b)

    def view_rms(self, R: torch.Tensor, t: torch.Tensor, K: torch.Tensor, num_views: int) -> torch.Tensor:
        """(N,) RMS reprojection error of each view's observations (pixels; NaN without any)."""
        r2 = (self.residuals(R, t, K) ** 2).sum(-1)
        n = torch.bincount(self.view, minlength=num_views).to(r2)
        return (torch.zeros(num_views, dtype=r2.dtype, device=r2.device).index_add_(0, self.view, r2) / n).sqrt()

    def irls_weights(self, r: torch.Tensor) -> torch.Tensor:
        """(M,) Cauchy IRLS weights of residuals r (M, 2)."""
        return 1 / (1 + (r * r).sum(-1) / self.robust_px ** 2)

    def normal_equations(self, R, t, K, weight: float, cam_cols: torch.Tensor, n_unk: int) -> "TrackBlocks":
        """Linearise at the current cameras and points.

        weight: the term's weight against the LM's other rows; each observation's row is
        scaled by ``sqrt(weight * w_m)``, w_m its IRLS weight here. cam_cols: (N, C) the LM
        columns of each view's C compressed camera tangents (C = 6, or 7 with the shared log
        focal); n_unk: the LM's number of (camera and model) unknowns."""
        C = cam_cols.shape[1]
        P = self.num_points
        dt, dev = self.points.dtype, self.points.device
        eye = torch.eye(3, dtype=dt, device=dev).expand(1, P, 3, 3)
        M = len(self.view)
        one = torch.tensor([1.0, 0.0, 0.0], dtype=dt, device=dev).expand(M, 3)
        J = point_jacobian(self.points[None], eye, torch.zeros_like(self.point), self.point[:, None].expand(M, 3),
                           one, self.view, R, t, K)                                # (M, 2, 10)
        r = self.residuals(R, t, K)
        row_weight = (weight * self.irls_weights(r)).sqrt()
        r = r * row_weight[:, None]
        J = J * row_weight[:, None, None]
        B, Pj = J[..., :C], J[..., 7:]                                             # (M, 2, C), (M, 2, 3)
        cols = cam_cols[self.view]                                                 # (M, C)
        A = torch.zeros(n_unk * n_unk, dtype=dt, device=dev)
        idx = (cols[:, :, None] * n_unk + cols[:, None, :]).reshape(-1)
        A.index_add_(0, idx, (B.transpose(1, 2) @ B).reshape(-1))
        g = torch.zeros(n_unk, dtype=dt, device=dev).index_add_(
            0, cols.reshape(-1), (B.transpose(1, 2) @ r[..., None]).reshape(-1))
        V = torch.zeros(P, 3, 3, dtype=dt, device=dev).index_add_(0, self.point, Pj.transpose(1, 2) @ Pj)
        gp = torch.zeros(P, 3, dtype=dt, device=dev).index_add_(
            0, self.point, (Pj.transpose(1, 2) @ r[..., None])[..., 0])
        return TrackBlocks(self, A.view(n_unk, n_unk), g, float((r * r).sum()), V, gp, B.transpose(1, 2) @ Pj, cols,
                           row_weight)

    def step_cost(self, blocks: "TrackBlocks", R, t, K, points: torch.Tensor) -> float:
        """The term's cost for candidate cameras and points, with the row weights of ``blocks``
        (the linearisation the candidate step came from)."""
        r = self.residuals(R, t, K, points) * blocks.row_weight[:, None]
        return float((r * r).sum())


@dataclass
class TrackBlocks:
    """The track term's normal equations at one linearisation point.

    ``A`` (n, n) and ``g`` (n,) over the LM's unknowns, ``cost`` (the weighted squared
    residuals); the point blocks ``V`` (P, 3, 3) and ``gp`` (P, 3); the cross terms ``Y``
    (M, C, 3) (camera tangents x point of each observation) in the columns ``cols`` (M, C);
    ``row_weight`` (M,), held for the candidate costs of the iteration."""

    term: TrackTerm
    A: torch.Tensor
    g: torch.Tensor
    cost: float
    V: torch.Tensor
    gp: torch.Tensor
    Y: torch.Tensor
    cols: torch.Tensor
    row_weight: torch.Tensor

    def reduce(self, lam: float):
        """Schur complement of the (Marquardt-damped) point blocks.

        With the full system [[A, W], [W^T, V]] [dc; dp] = -[g; gp], the cameras solve
        ``(A - W V^-1 W^T) dc = -(g - W V^-1 gp)``. W's block of point j (3 columns) is the
        sum of Y_m over the observations m of j, in the rows of observation m's camera columns;
        only camera rows are non-zero, so W is built dense over those rows (C x P x 3: 0.4 MB
        for 8 views and 700 points) and the products are two dense matrix products.
        Returns (the matrix to subtract from A, the vector to subtract from g, the function
        that maps a camera step dc (n,) to the point steps (P, 3))."""
        n = self.A.shape[0]
        point, P = self.term.point, self.term.num_points
        Vd = self.V + lam * torch.diag_embed(self.V.diagonal(dim1=1, dim2=2).clamp_min(1e-9))
        Vinv = torch.linalg.inv(Vd)                                                # (P, 3, 3)
        nc = int(self.cols.max()) + 1                                              # the camera rows
        C = self.cols.shape[1]
        W = torch.zeros(nc, P, 3, dtype=Vd.dtype, device=Vd.device)
        W.index_put_((self.cols.reshape(-1), point.repeat_interleave(C)), self.Y.reshape(-1, 3), accumulate=True)
        WV = torch.einsum("cpi,pij->cpj", W, Vinv)
        S = torch.zeros(n, n, dtype=Vd.dtype, device=Vd.device)
        S[:nc, :nc] = WV.reshape(nc, -1) @ W.reshape(nc, -1).T
        h = torch.zeros(n, dtype=Vd.dtype, device=Vd.device)
        h[:nc] = WV.reshape(nc, -1) @ self.gp.reshape(-1)

        def back_substitute(dc: torch.Tensor) -> torch.Tensor:
            """dp_j = -V_j^-1 (gp_j + W_j^T dc)."""
            return -(Vinv @ (self.gp + torch.einsum("cpi,c->pi", W, dc[:nc]))[..., None])[..., 0]

        return S, h, back_substitute
