"""How precisely the geometry solve pins the cameras: their covariance at the fitted estimate.

The geometry LM (:func:`fitting.stages.lm_geometry`) minimises a sum of groups of weighted
squared residuals: landmarks, outline, SfM tracks (their points eliminated by a Schur
complement) and the coefficients' prior. Linearised at the estimate, each group t adds
``A_t = J_t^T J_t`` (weights included) to the normal matrix ``A = sum_t A_t``.

The groups' weights come from nominal noise levels, which need not be the real ones (on the
demo the outline's and the tracks' residuals are ~0.1x what their weights assume). So each
group's variance factor ``c_t`` (the variance of one of its weighted rows) is estimated from
the residuals by Helmert's variance-component equations: the expected cost of each group is
linear in all the factors, ``E[cost_t] = sum_s H_ts c_s``, with H from the groups' normal
matrices alone (:func:`helmert_matrix`; the track group's 3 P points count as unknowns only
it determines), and the observed costs solve for c. The estimate's covariance is then the
sandwich of a weighted least-squares solution, ``A^-1 (sum_t c_t A_t) A^-1``, which is
``c A^-1`` when every weight matches its noise. For the tracks, ``A_t`` is the Schur-reduced
block ``A_track - W V^-1 W^T``: the sandwich's camera block with the points marginalised out
reduces to exactly that, and so do Helmert's traces (less the points' 3 P).

For a view, from its rotation increment w (R <- exp([w]) R) and translation increment:
``rotation_sigma_deg`` = sqrt(E|w|^2) and ``center_sigma_mm`` = sqrt(E|dC|^2), with
``dC = R^T (w x t - dt - e_z t_z df)``, df the log focal's increment when it is refined (its
step moves every camera along its axis: :func:`fitting.geometry_terms.dolly`). For the scene:
the head frame's rotation against the rig (the views' common rotation, ``mean_i R_i^T w_i``
in the head frame), and the focal length when it is refined. Linearised and Gaussian: a guide
to the noise, blind to biases that the model cannot see (e.g. a structured outline error).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from fitting.context import FitContext
from fitting.geometry_terms import GaussianPrior, Unknowns, term_rows
from fitting.rotations import skew
from fitting.state import FitState

__all__ = ["Group", "term_groups", "helmert_matrix", "variance_factors", "covariance_parts", "camera_uncertainty",
           "center_tangent"]


@dataclass
class Group:
    """One group of residual rows at the linearisation point: ``A`` (n, n) float64 its
    (reduced) normal matrix, ``cost`` its weighted squared residuals, ``rows`` its residual
    rows that carry weight, ``own`` the unknowns only it determines (3 per track point)."""

    name: str
    A: torch.Tensor
    cost: float
    rows: int
    own: int = 0


def term_groups(ctx: FitContext, st: FitState, unk: Unknowns) -> list[Group]:
    """The groups of the geometry LM at st: landmarks and outline (as in the last rounds:
    all 68 points, outline when ``w_rim > 0``), the prior, and the tracks when their points
    are set. The photometric rows are not included."""
    from fitting.stages import cameras64, geometry_terms, track_weight
    st, terms = geometry_terms(ctx, st, unk, static_only=False, use_rim=ctx.cfg.w_rim > 0, use_photo=False)
    groups = []
    for name, J, r in term_rows(ctx, st, unk, terms):
        J, r = J.double(), r.double()
        groups.append(Group(name, J.T @ J, float(r @ r), int((J.abs().sum(1) > 0).sum())))
    prior = GaussianPrior(ctx, unk, st.shape.device, torch.float64)
    groups.append(Group(prior.name, torch.diag(prior.diag), prior.cost(st), int((prior.diag > 0).sum())))
    tracks = ctx.tracks
    if tracks is not None and tracks.points is not None:
        weight, _ = track_weight(ctx, terms[0].raw, terms[0].point_weights)
        b = tracks.normal_equations(*cameras64(st), weight, unk.camera_columns(), unk.size)
        S, _, _ = b.reduce(0.0)
        groups.append(Group("track", b.A - S, b.cost, 2 * int((b.row_weight > 0).sum()), 3 * tracks.num_points))
    return groups


def helmert_matrix(groups: list[Group], keep: torch.Tensor | None = None) -> torch.Tensor:
    """(G, G) H of Helmert's equations ``E[cost_t] = sum_s H_ts c_s`` for the weighted least-squares
    estimate, whatever the weights: with ``M_t = A^-1 A_t``,
    ``H_ts = [t = s] (rows_t - own_t - 2 tr M_t) + tr(M_t M_s)``.
    keep: (n,) bool, the unknowns solved for (default all)."""
    A = sum(g.A for g in groups)
    keep = keep if keep is not None else torch.ones(len(A), dtype=torch.bool)
    Ai = torch.linalg.inv(A[keep][:, keep])
    M = [Ai @ g.A[keep][:, keep] for g in groups]
    H = torch.tensor([[float((Mt * Ms.T).sum()) for Ms in M] for Mt in M], dtype=torch.float64)
    H += torch.diag(torch.tensor([g.rows - g.own - 2 * float(Mt.trace()) for g, Mt in zip(groups, M)],
                                 dtype=torch.float64))
    return H


def variance_factors(groups: list[Group], keep: torch.Tensor | None = None) -> dict:
    """{name: c_t}: each group's variance factor, the solution of Helmert's equations with the
    observed costs (:func:`helmert_matrix`); unbiased for a linear model even where the
    weights do not match the noise. A factor the residuals cannot support (<= 0, a group
    with almost no redundancy) is set to 1e-12 of the largest."""
    H = helmert_matrix(groups, keep)
    c = torch.linalg.pinv(H) @ torch.tensor([g.cost for g in groups], dtype=torch.float64)
    c = c.clamp_min(1e-12 * float(c.max()))
    return {g.name: float(ci) for g, ci in zip(groups, c)}


def covariance_parts(groups: list[Group], factors: dict, keep: torch.Tensor) -> dict:
    """{name: (k, k)}: each group's share ``c_t A^-1 A_t A^-1`` of the kept unknowns' covariance
    (the sandwich ``A^-1 (sum_t c_t A_t) A^-1`` is their sum): what its noise alone moves."""
    Ai = torch.linalg.inv(sum(g.A for g in groups)[keep][:, keep])
    parts = {}
    for g in groups:
        p = factors[g.name] * Ai @ g.A[keep][:, keep] @ Ai
        parts[g.name] = (p + p.T) / 2
    return parts


@torch.no_grad()
def camera_uncertainty(ctx: FitContext, st: FitState) -> dict | None:
    """The cameras' standard errors at the geometry estimate st (module docstring), or None
    with a calibrated rig (its cameras are the calibration's).

    Returns {"views": (N,) list of {"rotation_sigma_deg", "center_sigma_mm"} or None for a view
    the fit does not pose, "head_frame_rotation_sigma_deg", "head_frame_variance_share":
    {group: the share of the head frame's rotation variance that its noise causes (the
    prior's: the shrinkage of the coefficients towards the mean head)},
    "head_frame_rotation_sigma_deg_noise_weighted" (the same with every group weighted by its
    measured noise: the Cramer-Rao bound of these groups if their errors were white), "focal_sigma_pct" (None
    unless refined), "noise_vs_landmarks": {group: c_t / c_landmark}}: the weights give every
    group's rows the landmarks' variance when they match the noise, so a ratio below 1 says a
    group's residuals are smaller than its weight assumes."""
    if ctx.rig is not None:
        return None
    try:
        return _camera_uncertainty(ctx, st)
    except torch.linalg.LinAlgError as e:   # a diagnostic: the fit's result stands without it
        print(f"[fit] no camera standard errors: the linearised problem is singular ({e})")
        return None


def center_tangent(R: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """(3, 7) dC / d[w, dt, d log focal] of a camera's centre C = -R^T t, R (3, 3), t (3,), under
    the LM's increments: R <- exp([w]) R, t <- t + dt, and the focal step's dolly (t_z scales
    with the focal, :func:`fitting.geometry_terms.dolly`)."""
    return torch.cat([-R.T @ skew(t), -R.T, -R.T[:, 2:] * t[2]], 1)


def _camera_uncertainty(ctx: FitContext, st: FitState) -> dict:
    """:func:`camera_uncertainty` without the rig case and the guard."""
    from fitting.stages import lm_unknowns
    unk = lm_unknowns(ctx, st)
    groups = term_groups(ctx, st, unk)
    A = sum(g.A for g in groups)
    keep = A.diagonal() > 0          # a view left out (no landmarks, no tracks) has empty columns
    N = st.num_views
    posed = keep[: 6 * N].reshape(N, 6).all(1)
    keep[: 6 * N] = posed.repeat_interleave(6)
    factors = variance_factors(groups, keep)
    idx = torch.nonzero(keep)[:, 0]
    parts = {}
    for name, p in covariance_parts(groups, factors, keep).items():
        parts[name] = torch.zeros_like(A)
        parts[name][idx[:, None], idx[None, :]] = p
    cov = sum(parts.values())

    R, t = st.R().double(), st.cam_t.double()
    cam_cols = unk.camera_columns()
    views, common = [], torch.zeros(3, len(A), dtype=torch.float64)
    for i in range(N):          # 3x3 blocks per view: a loop over a dozen views, not a hot path
        if not posed[i]:
            views.append(None)
            continue
        cols = cam_cols[i]
        c = cov[cols[:, None], cols[None, :]]
        M = center_tangent(R[i], t[i])[:, :len(cols)]
        views.append({"rotation_sigma_deg": math.degrees(math.sqrt(float(c[:3, :3].trace()))),
                      "center_sigma_mm": 1000 * math.sqrt(float((M @ c @ M.T).trace()))})
        common[:, 6 * i: 6 * i + 3] = R[i].T / int(posed.sum())
    head = {k: float((common @ p @ common.T).trace()) for k, p in parts.items()}
    total = sum(head.values())
    # the same with every group weighted by its measured noise (1 / c_t): the Cramer-Rao bound
    # of these groups, were their residuals white noise
    k = common[:, keep]
    best = k @ torch.linalg.inv(sum(g.A[keep][:, keep] / factors[g.name] for g in groups)) @ k.T
    focal = None
    if unk.refine_focal:
        focal = 100 * math.sqrt(float(cov[unk.focal_column, unk.focal_column]))
    return {"views": views, "head_frame_rotation_sigma_deg": math.degrees(math.sqrt(total)),
            "head_frame_variance_share": {k: v / total for k, v in head.items()},
            "head_frame_rotation_sigma_deg_noise_weighted": math.degrees(math.sqrt(float(best.trace()))),
            "focal_sigma_pct": focal,
            "noise_vs_landmarks": {k: c / factors["landmark"] for k, c in factors.items() if k != "landmark"}}
