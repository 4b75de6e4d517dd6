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

The same linearisation says whether the solve converged (:func:`geometry_convergence`): the
Gauss-Newton step that the cost still takes at the estimate, in those standard errors.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from fitting.context import FitContext
from fitting.geometry_terms import GaussianPrior, Unknowns, term_rows, uses_outline
from fitting.rotations import skew
from fitting.state import FitState

__all__ = ["Group", "term_groups", "helmert_matrix", "variance_factors", "covariance_parts", "camera_uncertainty",
           "center_tangent", "CONVERGED_STEP_SIGMA", "geometry_convergence"]


@dataclass
class Group:
    """One group of residual rows at the linearisation point: ``A`` (n, n) float64 its
    (reduced) normal matrix, ``cost`` its weighted squared residuals, ``rows`` its residual
    rows that carry weight, ``own`` the unknowns only it determines (3 per track point), ``g``
    (n,) its (reduced) gradient ``J^T r`` (half the cost's)."""

    name: str
    A: torch.Tensor
    cost: float
    rows: int
    own: int = 0
    g: torch.Tensor | None = None


def term_groups(ctx: FitContext, st: FitState, unk: Unknowns, static_only: bool = False) -> list[Group]:
    """The groups of the geometry LM at st: landmarks and outline (as in the last rounds:
    all 68 points, outline when :func:`fitting.geometry_terms.uses_outline`; the 51 static
    points without the outline with ``static_only``, as in the first rounds), the prior, and
    the tracks when their points are set. The photometric rows are not included."""
    from fitting.stages import cameras64, geometry_terms, track_weight
    st, terms = geometry_terms(ctx, st, unk, static_only=static_only, use_rim=uses_outline(ctx) and not static_only,
                               use_photo=False)
    groups = []
    for name, J, r in term_rows(ctx, st, unk, terms):
        J, r = J.double(), r.double()
        groups.append(Group(name, J.T @ J, float(r @ r), int((J.abs().sum(1) > 0).sum()), g=J.T @ r))
    prior = GaussianPrior(ctx, unk, st.shape.device, torch.float64)
    A, g, cost = prior.normal_equations(st)
    groups.append(Group(prior.name, A, cost, int((prior.diag > 0).sum()), g=g.double()))
    tracks = ctx.tracks
    if tracks is not None and tracks.points is not None:
        weight, _ = track_weight(ctx, terms[0].raw, terms[0].point_weights)
        b = tracks.normal_equations(*cameras64(st), weight, unk.camera_columns(), unk.size)
        S, h, _ = b.reduce(0.0)
        groups.append(Group("track", b.A - S, b.cost, 2 * int((b.row_weight > 0).sum()), 3 * tracks.num_points,
                            g=b.g - h))
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


@dataclass
class _Linearised:
    """The geometry LM's groups at an estimate and the covariance they give: ``A`` (n, n) the
    groups' normal matrix, ``keep`` (n,) the unknowns solved for (a view left out, with no
    landmarks and no tracks, has empty columns), ``posed`` (N,) the views that have them,
    ``factors`` {group: c_t}, ``parts`` {group: its share of the covariance (n, n)}, ``cov``
    (n, n) their sum."""

    unk: Unknowns
    groups: list
    A: torch.Tensor
    keep: torch.Tensor
    posed: torch.Tensor
    factors: dict
    parts: dict
    cov: torch.Tensor

    def view_block(self, st: FitState, i: int) -> tuple[torch.Tensor, torch.Tensor, float, float]:
        """View i's camera columns (C,), the tangent (3, C) of its centre
        (:func:`center_tangent`), and the standard errors of its rotation (rad) and centre (m)."""
        cols = self.unk.camera_columns()[i]
        M = center_tangent(st.R()[i].double(), st.cam_t[i].double())[:, :len(cols)]
        c = self.cov[cols[:, None], cols[None, :]]
        return cols, M, math.sqrt(float(c[:3, :3].trace())), math.sqrt(float((M @ c @ M.T).trace()))


def _linearise(ctx: FitContext, st: FitState, static_only: bool = False) -> _Linearised:
    """The geometry LM's groups (:func:`term_groups`) and covariance at st (module docstring)."""
    from fitting.stages import lm_unknowns
    unk = lm_unknowns(ctx, st)
    groups = term_groups(ctx, st, unk, static_only)
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
    return _Linearised(unk, groups, A, keep, posed, factors, parts, sum(parts.values()))


def _camera_uncertainty(ctx: FitContext, st: FitState) -> dict:
    """:func:`camera_uncertainty` without the rig case and the guard."""
    lin = _linearise(ctx, st)
    unk, keep, posed, factors, parts, cov = lin.unk, lin.keep, lin.posed, lin.factors, lin.parts, lin.cov
    N = st.num_views
    R = st.R().double()
    views, common = [], torch.zeros(3, len(cov), dtype=torch.float64)
    for i in range(N):          # 3x3 blocks per view: a loop over a dozen views, not a hot path
        if not posed[i]:
            views.append(None)
            continue
        _, _, rot_sigma, center_sigma = lin.view_block(st, i)
        views.append({"rotation_sigma_deg": math.degrees(rot_sigma), "center_sigma_mm": 1000 * center_sigma})
        common[:, 6 * i: 6 * i + 3] = R[i].T / int(posed.sum())
    head = {k: float((common @ p @ common.T).trace()) for k, p in parts.items()}
    total = sum(head.values())
    # the same with every group weighted by its measured noise (1 / c_t): the Cramer-Rao bound
    # of these groups, were their residuals white noise
    k = common[:, keep]
    best = k @ torch.linalg.inv(sum(g.A[keep][:, keep] / factors[g.name] for g in lin.groups)) @ k.T
    focal = None
    if unk.refine_focal:
        focal = 100 * math.sqrt(float(cov[unk.focal_column, unk.focal_column]))
    return {"views": views, "head_frame_rotation_sigma_deg": math.degrees(math.sqrt(total)),
            "head_frame_variance_share": {k: v / total for k, v in head.items()},
            "head_frame_rotation_sigma_deg_noise_weighted": math.degrees(math.sqrt(float(best.trace()))),
            "focal_sigma_pct": focal,
            "noise_vs_landmarks": {k: c / factors["landmark"] for k, c in factors.items() if k != "landmark"}}


# The geometry solve counts as converged when one more (undamped) Gauss-Newton step would move
# no camera's rotation or centre, and not the focal length, by more than this many of its
# standard errors. Measured (docs/FITTING.md, "Did the solve converge?"): 0.001-0.02 where
# more iterations change nothing, 4.4 on the real sample after 3 of the 10 iterations a round.
CONVERGED_STEP_SIGMA = 1.0


@torch.no_grad()
def geometry_convergence(ctx: FitContext, st: FitState, names: list) -> dict | None:
    """How far from its optimum the geometry solve stopped: the Gauss-Newton step that the
    LM's cost (landmarks, outline, prior, tracks: its last round's) still takes at st, undamped,
    measured in the standard errors of :func:`camera_uncertainty` at st. An LM that ran out of
    iterations in a long valley of the cost (a focal length against every camera's distance)
    stops with small steps and a large remaining one.

    names: (N,) the views' names. Returns None with a calibrated rig, with the photometric
    rows in the LM (``--w_photo_gn``: they are not among the groups) or a singular problem,
    else {"converged": step_sigma_max <= :data:`CONVERGED_STEP_SIGMA`, "step_sigma_max",
    "worst": what moves most ("focal length" or a view's name), "views": (N,) list of
    {"name", "rotation_step_deg", "rotation_step_sigma", "center_step_mm", "center_step_sigma"} or
    None for a view the fit does not pose, "focal_step_pct", "focal_step_sigma" (None unless
    refined)}."""
    from fitting.stages import has_photo_round
    if ctx.rig is not None or has_photo_round(ctx, st):
        return None
    try:   # the last round's cost: the static landmarks' when every round is static
        lin = _linearise(ctx, st, static_only=ctx.cfg.geom_rounds <= ctx.cfg.geom_static_rounds)
    except torch.linalg.LinAlgError:
        return None
    g, keep = sum(gr.g for gr in lin.groups), lin.keep
    dx = torch.zeros_like(g)
    dx[keep] = -torch.linalg.solve(lin.A[keep][:, keep], g[keep])
    views, worst = [], (0.0, None)
    for i in range(st.num_views):
        if not lin.posed[i]:
            views.append(None)
            continue
        cols, M, rot_sigma, center_sigma = lin.view_block(st, i)
        rot, centre = float(dx[cols[:3]].norm()), float((M @ dx[cols]).norm())
        row = {"name": names[i], "rotation_step_deg": math.degrees(rot), "rotation_step_sigma": rot / rot_sigma,
               "center_step_mm": 1000 * centre, "center_step_sigma": centre / center_sigma}
        views.append(row)
        worst = max(worst, (max(row["rotation_step_sigma"], row["center_step_sigma"]), names[i]),
                    key=lambda w: w[0])
    focal_pct = focal_sigma = None
    if lin.unk.refine_focal:
        f = lin.unk.focal_column
        focal_pct, focal_sigma = 100 * float(dx[f]), abs(float(dx[f])) / math.sqrt(float(lin.cov[f, f]))
        worst = max(worst, (focal_sigma, "focal length"), key=lambda w: w[0])
    return {"converged": worst[0] <= CONVERGED_STEP_SIGMA, "step_sigma_max": worst[0], "worst": worst[1],
            "views": views, "focal_step_pct": focal_pct, "focal_step_sigma": focal_sigma}
