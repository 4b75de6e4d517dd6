"""Closed-form Jacobians of projected points, shared by the geometry LM's residual terms."""
from __future__ import annotations

import torch

__all__ = ["point_jacobian", "vertex_jacobian"]


def point_jacobian(X: torch.Tensor, J: torch.Tensor, subject: torch.Tensor, corners: torch.Tensor,
                   bary: torch.Tensor, view: torch.Tensor, R: torch.Tensor, t: torch.Tensor,
                   K: torch.Tensor) -> torch.Tensor:
    """d(u, v) / d(unknowns) of mesh points by the chain rule, for the geometry LM
    (:func:`fitting.stages.lm_geometry`).

    Point m is ``sum_k bary_mk X[subject_m, corners_mk]`` projected by view m's camera (no
    skew; (u, v) = (fx x / z + cx, fy y / z + cy) of ``R X + t``). The unknowns are
    lm_geometry's tangents: a rotation increment w (R = exp([w]) R), a translation increment,
    the log-focal increment (fx, fy and t_z scale by its exp: :func:`fitting.geometry_terms.dolly`)
    and the FLAME coefficients, whose vertex Jacobian J comes from :func:`vertex_jacobian` (for
    a free point, J = I makes the last three columns d(u, v) / dX). Explicit per point, so the cost is
    O(points x P); a jacfwd through the residuals ran every point's gathers and projection
    once per tangent (~2.3 s per iteration for 25k photometric samples in 12 views).

    X: (G, V, 3); J: (G, V, 3, P); subject, view: (M,); corners: (M, 3) vertex ids; bary:
    (M, 3); R: (N, 3, 3); t: (N, 3); K: (N, 3, 3). Returns (M, 2, 7 + P), columns
    [w (3), t (3), log focal, coefficients (P)]."""
    G, V = X.shape[:2]
    rows = subject[:, None] * V + corners                                      # (M, 3) into G*V
    # weighted sums of gathered rows without an (M, 3, 3, P) intermediate
    Xp = torch.nn.functional.embedding_bag(rows, X.reshape(G * V, 3), per_sample_weights=bary, mode="sum")
    dX = torch.nn.functional.embedding_bag(rows, J.reshape(G * V, -1), per_sample_weights=bary,
                                           mode="sum").view(len(rows), 3, -1)   # (M, 3, P)
    Rv = R[view]
    a = (Rv @ Xp[..., None])[..., 0]                                           # R X (M, 3)
    ax, ay, az = a.unbind(-1)
    zero = torch.zeros_like(ax)
    # d xc / d w_j = e_j x (R X); d xc / d t = I; the focal column is filled below
    d_rot = torch.stack([torch.stack([zero, -az, ay], -1), torch.stack([az, zero, -ax], -1),
                         torch.stack([-ay, ax, zero], -1)], -1)                # (M, 3 xyz, 3 j)
    eye = torch.eye(3, dtype=a.dtype, device=a.device).expand(len(a), 3, 3)
    # the focal step is a dolly zoom: t_z scales with the focal (see fitting.geometry_terms.dolly)
    d_focal = torch.zeros_like(a)
    d_focal[:, 2] = t[view, 2]
    dxc = torch.cat([d_rot, eye, d_focal[..., None], Rv @ dX], -1)             # (M, 3, 7 + P)
    x, y, z = (a + t[view]).unbind(-1)
    fx, fy = K[view, 0, 0], K[view, 1, 1]
    du = (fx / z)[:, None] * (dxc[:, 0] - (x / z)[:, None] * dxc[:, 2])
    dv = (fy / z)[:, None] * (dxc[:, 1] - (y / z)[:, None] * dxc[:, 2])
    du[:, 6] += fx * x / z                                                     # fx, fy scale by exp
    dv[:, 6] += fy * y / z
    return torch.stack([du, dv], 1)


def vertex_jacobian(flame, co: torch.Tensor, pose: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """FLAME vertices and their Jacobian w.r.t. the LM coefficients [shape, expression, jaw].

    co: (G, P) per subject; pose: (G, 15) (its jaw replaced by co's). All columns in closed
    form (:meth:`FLAME.jacobian`). Returns X (G, V, 3) and J (G, V, 3, P)."""
    n_sh, n_ex = flame.n_shape, flame.n_exp
    n = n_sh + n_ex
    posed = torch.cat([pose[:, :6], co[:, n:], pose[:, 9:]], 1)
    X, J = flame.jacobian(co[:, :n_sh], co[:, n_sh:n], posed, joint="jaw")
    return X.detach(), J.detach()
