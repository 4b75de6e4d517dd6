"""Fitting stages: initialise -> geometry (landmarks, outline, tracks) -> photometric (render).

Each stage takes a :class:`~fitting.context.FitContext` (model, observations, weights, options)
and a :class:`~fitting.state.FitState` and returns a new FitState. They work for N views of G
subjects (``state.view_subject``): multi-view fitting is G = 1, a batch of single images is
G = N with one view each. Nothing here loops over views: per-view work is batched.

The geometry stage is a schedule of Levenberg-Marquardt rounds (:func:`lm_geometry`,
:mod:`fitting.lm`) over residual terms (:mod:`fitting.geometry_terms`, :mod:`fitting.tracks`).

Gauge: the world is FLAME's head frame, so the head's global rotation stays 0 and the
cameras carry the rigid motion; the neck stays 0 too (landmarks cannot tell it from the
cameras) and the eyes stay 0 (no landmark sees the eyeballs). The jaw is fitted.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch
from tqdm.auto import tqdm

from fitting.adam import Adam
from fitting.context import JAW, FitContext, project_landmarks, render_views, subject_vertices, view_geometry
from fitting.correspondences import rasterize_state
from fitting.geometry_terms import (GaussianPrior, OutlineTerm, PhotoTerm, Unknowns, landmark_term, model_at, term_rows,
                                   uses_outline)
from fitting.init import align_sfm_poses, pnp_views
from fitting.known_cameras import CameraPrior, snap_to_rig
from fitting.landmark_trust import distrust_outlier_views, distrust_profiles, view_yaw_deg
from fitting.lm import NormalEquations, levenberg_marquardt
from fitting.losses import (gaussian_prior, landmark_point_weights, landmark_rmse, mask_iou, masked_photometric_l1,
                            robust_landmark_loss, silhouette_loss, texture_smoothness)
from fitting.mask_pose import repose_by_mask
from fitting.render.cameras import matrix_to_rot, project_points
from fitting.state import RESTART_HINT, FitState

__all__ = ["initialize", "mean_head_pnp", "has_photo_round", "stage_geometry", "lm_geometry", "lm_unknowns",
           "geometry_terms", "init_appearance", "stage_photometric", "evaluate", "cameras64", "track_weight"]


def _prior(ctx: FitContext, shape, expr, jaw, log_focal=None) -> torch.Tensor:
    c = ctx.cfg
    p = c.w_shape * gaussian_prior(shape) + c.w_exp * gaussian_prior(expr) + c.w_pose * gaussian_prior(jaw / 0.1)
    if log_focal is not None and ctx.refine_focal:
        p = p + c.w_focal * (log_focal / 0.1).pow(2).sum()
    return p

# -- initialisation ------------------------------------------------------------------------------
@torch.no_grad()
def mean_head_pnp(ctx: FitContext, state: FitState) -> tuple:
    """Each view's pose from robust PnP of its 51 static landmarks on the mean head (shape,
    expression and pose zero) with the state's K. Returns R (N, 3, 3), t (N, 3), ok (N,),
    RMSE (N,) px (numpy, float64) and the mean head's 3D landmarks per view (N, 68, 3) (frontal
    contour)."""
    mean = state.detach()
    mean.shape.zero_()
    mean.expression.zero_()
    mean.pose.zero_()
    _, lmk3d = view_geometry(ctx, mean, subject_vertices(ctx, mean))
    R, t, ok, rmse, _ = pnp_views(ctx.landmarks.cpu().double().numpy(), lmk3d.cpu().double().numpy(),
                                  state.K().cpu().double().numpy(), reproj_px=max(4.0, 0.03 * max(ctx.size)))
    return R, t, ok, rmse, lmk3d


# SfM is trusted only where its aligned poses also put the mean head's static landmarks near
# the detections, as a median over views: within this many times PnP's own residual, or this share
# of the image width, whichever is larger. Trusted synthetic SfM scenes measured 1.0-5.4x and
# 1-7 % (PnP overfits the mean head per view); a wrong head-only SfM on the real sample, whose
# rotations agreed within 3.9 deg, 25x and 20 %: trusted, it sent the fit 15-178 px off the
# landmarks, where the tracks outweighed them (docs/FITTING.md, "Initialisation").
SFM_TRUST_PNP_RATIO = 10.0
SFM_TRUST_WIDTH_FRAC = 0.08


def _landmark_rmse_px(lmk3d: np.ndarray, R: np.ndarray, t: np.ndarray, K: np.ndarray, lm: np.ndarray) -> np.ndarray:
    """(M,) RMSE (px) of each view's points lmk3d (M, P, 3) projected by R (M, 3, 3), t (M, 3),
    K (M, 3, 3) against lm (M, P, 2); inf for a view where a point lies behind the camera."""
    uv, z = project_points(*(torch.as_tensor(a, dtype=torch.float64) for a in (lmk3d, K, R, t)))
    rmse = np.sqrt(((uv.numpy() - lm) ** 2).sum(-1).mean(-1))
    return np.where(z.numpy().min(1) <= 0, np.inf, rmse)


def initialize(ctx: FitContext, state: FitState, sfm_poses: list | None = None,
               prefer_sfm: bool = False, trust_deg: float | None = None) -> tuple[FitState, dict]:
    """Per-view cameras from robust PnP of the 51 static landmarks on the mean shape, checked
    against (and, where PnP failed or fits worse, replaced by) SfM poses after a similarity.

    sfm_poses: N entries of (R (3,3), t (3,)) or None. prefer_sfm: when SfM is consistent
    with PnP (the median view's poses agree within ``trust_deg``, default ``--sfm_trust_deg``;
    negative: SfM never trusted; and they fit the landmarks, see :data:`SFM_TRUST_PNP_RATIO`),
    take the SfM pose of every view that has one: a profile's landmarks can fit a wrong PnP
    pose better than the right one. With few views SfM can land on a bas-relief solution (a
    wrong focal length traded against flattened depth and compressed angles), which no
    similarity aligns with PnP: then PnP's poses stay, except for views beyond
    ``lmk_max_yaw_deg``. Returns (state, info) with per-view ``pnp_ok``, ``pnp_rmse_px``,
    ``source`` ('pnp' | 'sfm' | 'failed'), ``sfm_angle_deg``, ``sfm_center_rel``,
    ``sfm_disagree`` (NaN / False where SfM has no pose), SfM's scale, ``sfm_similarity``
    {s, Q, T}: X_head = s Q X_sfm + T (None without an alignment), ``sfm_trusted`` and
    ``sfm_trust_why``.
    """
    trust_deg = ctx.cfg.sfm_trust_deg if trust_deg is None else trust_deg
    st = state.detach()
    N = st.num_views
    K = st.K().cpu().double().numpy()
    lm = ctx.landmarks.cpu().double().numpy()
    R, t, ok, rmse, lmk3d = mean_head_pnp(ctx, st)
    source = np.where(ok, "pnp", "failed").astype(object)
    info = {"pnp_ok": ok.tolist(), "pnp_rmse_px": rmse.tolist(), "sfm_angle_deg": [math.nan] * N,
            "sfm_center_rel": [math.nan] * N, "sfm_disagree": [False] * N, "sfm_scale": None,
            "sfm_similarity": None, "sfm_trusted": False, "sfm_trust_why": "no SfM poses to align"}
    has = np.array([p is not None for p in (sfm_poses or [None] * N)])
    if has.sum() >= 2 and (ok & has).sum() >= 2:
        idx = np.nonzero(has)[0]
        Rs = np.stack([sfm_poses[i][0] for i in idx])
        ts = np.stack([sfm_poses[i][1] for i in idx])
        al = align_sfm_poses(Rs, ts, R[idx], t[idx], ref_ok=ok[idx], max_deg=ctx.cfg.pose_disagree_deg,
                             max_rel=ctx.cfg.pose_disagree_rel)
        if al is not None:
            info["sfm_scale"] = al["s"]
            info["sfm_similarity"] = {"s": float(al["s"]), "Q": al["Q"].tolist(), "T": al["T"].tolist()}
            used = ok[idx]
            med = float(np.median(al["angle_deg"][used]))
            err = _landmark_rmse_px(lmk3d[idx, 17:].cpu().double().numpy(), al["R"], al["t"], K[idx], lm[idx, 17:])
            err_med, pnp_med = float(np.median(err[used])), float(np.median(rmse[idx][used]))
            limit = max(SFM_TRUST_PNP_RATIO * pnp_med, SFM_TRUST_WIDTH_FRAC * ctx.images.shape[-1])
            info["sfm_trusted"] = med <= trust_deg and err_med <= limit
            info["sfm_trust_why"] = (f"aligned SfM and PnP rotations differ by {med:.1f} deg in the median view "
                                     f"({'<=' if med <= trust_deg else '>'} {trust_deg:g})")
            if med <= trust_deg and not info["sfm_trusted"]:
                info["sfm_trust_why"] += (f", but SfM's poses put the landmarks {err_med:.1f} px off (median over "
                                          f"views) against PnP's {pnp_med:.1f} px (> {limit:.1f})")
            # a view beyond the landmark detector's range takes its SfM pose even from an
            # untrusted SfM: its landmarks will not be used (distrust_profiles), and SfM's
            # angles are off by a fraction of the yaw where PnP's can be off by all of it
            profile = view_yaw_deg(torch.as_tensor(al["R"])).abs().numpy() > ctx.cfg.lmk_max_yaw_deg
            for j, i in enumerate(idx):  # a few views; picks the better of two poses
                info["sfm_angle_deg"][i] = float(al["angle_deg"][j])
                info["sfm_center_rel"][i] = float(al["center_rel"][j])
                info["sfm_disagree"][i] = bool(al["disagree"][j]) and bool(ok[i])
                e = float(err[j])
                if not math.isfinite(e):
                    continue
                if (prefer_sfm and (info["sfm_trusted"] or profile[j])) or not ok[i] or e < rmse[i]:
                    R[i], t[i], rmse[i], source[i] = al["R"][j], al["t"][j], e, "sfm"
    info["source"] = source.tolist()
    info["init_rmse_px"] = rmse.tolist()
    st.cam_rot = matrix_to_rot(torch.as_tensor(R, dtype=torch.float32)).to(st.cam_rot.device)
    st.cam_t = torch.as_tensor(t, dtype=torch.float32).to(st.cam_t.device)
    return st, info

# -- stage 1: geometry -----------------------------------------------------------------------------
def _bar(ctx, iterable, desc):
    return tqdm(iterable, desc=desc, disable=not ctx.progress, leave=False, dynamic_ncols=True)


def geometry_terms(ctx: FitContext, st: FitState, unk: Unknowns, static_only: bool, use_rim: bool,
                   use_photo: bool, it: int = 0, iters: int = 1) -> tuple[FitState, list]:
    """The row terms of one LM iteration at st: landmarks, then the outline (``use_rim``), then
    photometric samples (``use_photo``; the state's texture code and SH are solved for them,
    hence the returned state; a held identity, ``unk.shape_fixed``, holds its texture code
    too). it / iters: the iteration within the round (the photometric term's coarse-to-fine
    blur)."""
    m0 = model_at(ctx, st, unk)
    terms = [landmark_term(ctx, m0, static_only)]
    with torch.no_grad():
        frag = rasterize_state(ctx, st) if use_photo else None  # shared by outline and samples
        if use_rim:
            terms.append(OutlineTerm.at(ctx, st, m0, frag))
        if use_photo:
            st, photo = PhotoTerm.at(ctx, st, m0, frag, it, iters, texture_held=unk.shape_fixed)
            terms.append(photo)
    return st, [t for t in terms if t is not None]


def lm_geometry(ctx: FitContext, state: FitState, static_only: bool, iters: int, hist: list | None = None,
                rnd: int = 0, use_rim: bool = False, use_photo: bool = False, use_tracks: bool = False,
                camera_prior=None, shape_fixed: bool = False, priors: tuple = ()) -> FitState:
    """Levenberg-Marquardt on everything the landmarks, outlines, photometric samples and tracks
    see: per-view cameras, the shared focal factor (when refined), per-subject shape,
    expression and jaw, and the track points.

    Cost: the landmark term, plus the outline term (``use_rim``), the photometric term
    (``use_photo``: G = 1, a texture space and ``w_photo_gn > 0``), the coefficients' prior
    (all in :mod:`fitting.geometry_terms`), and the SfM track term (``use_tracks`` with
    ``ctx.tracks`` set; its points are eliminated by a Schur complement and weighed against
    the landmarks by :func:`track_weight`). The row terms' Jacobians come by the chain rule
    over compressed tangents (7 + P columns whatever N and G are); tests/fitting check them
    against jacfwd of the residuals, term by term. ``hist`` gets one record per iteration with
    each term's cost and the damping.

    With a calibrated rig (``ctx.rig``) the cameras' unknowns are the head's rigid motion
    (:mod:`fitting.known_cameras`), unless a ``camera_prior``
    (:class:`fitting.known_cameras.CameraPrior`) frees the views and holds them to the rig.
    Sequence tracking holds the identity (``shape_fixed``: no shape unknowns) and adds
    ``priors`` built on the same :func:`lm_unknowns` (the temporal prior)."""
    c = ctx.cfg
    unk = lm_unknowns(ctx, state, camera_prior, shape_fixed)
    st0 = state.detach()
    priors = [GaussianPrior(ctx, unk, st0.shape.device, st0.shape.dtype)] + \
        ([] if camera_prior is None else [camera_prior]) + list(priors)
    use_rim = use_rim and uses_outline(ctx)
    use_photo = use_photo and c.w_photo_gn > 0 and ctx.texspace is not None and unk.num_subjects == 1
    tracks = ctx.tracks if use_tracks else None

    def linearize_at(x: _Estimate, it: int):
        st, terms = geometry_terms(ctx, x.state, unk, static_only, use_rim, use_photo, it, iters)
        rows = term_rows(ctx, st, unk, terms)
        ne = NormalEquations.zeros(unk.size, rows[0][1].dtype, rows[0][1].device)
        for name, J, r in rows:
            ne.add_rows(name, J, r)
        for prior in priors:
            ne.add(prior.name, *prior.normal_equations(st))
        blocks = None
        if tracks is not None:
            tracks.points = x.points
            weight, ctx.landmark_sigma_px = track_weight(ctx, terms[0].raw, terms[0].point_weights)
            blocks = tracks.normal_equations(*cameras64(st), weight, unk.camera_columns(), unk.size)
            ne.add_eliminated("track", blocks)
        return _Estimate(st, x.points, terms, blocks), ne

    def propose(x: _Estimate, dx: torch.Tensor, own: list):
        cand = unk.apply(x.state, dx.to(x.state.shape.dtype))
        with torch.no_grad():
            m = model_at(ctx, cand, unk)
            cost = sum(t.step_cost(m) for t in x.terms) + sum(p.cost(cand) for p in priors)
            if tracks is None:
                return _Estimate(cand, None), cost
            points = x.points + own[0]
            return _Estimate(cand, points), cost + tracks.step_cost(x.blocks, *cameras64(cand), points)

    def record(it: int, ne: NormalEquations, lam: float):
        if hist is not None:
            hist.append({"round": rnd, "iter": it, **{k: ne.parts.get(k, 0.0) for k in
                                                      ("landmark", "rim", "photo", "track")}, "lambda": lam})

    x = levenberg_marquardt(_Estimate(st0, None if tracks is None else tracks.points), linearize_at, propose, iters,
                            record=record)
    if tracks is not None:
        tracks.points = x.points
    return x.state


def lm_unknowns(ctx: FitContext, state: FitState, camera_prior=None, shape_fixed: bool = False) -> Unknowns:
    """The unknowns :func:`lm_geometry` solves for (the rig's head motion with ``ctx.rig`` and
    no camera prior). The focal factor only moves with per-view cameras: with every camera held
    to the calibration it would soak up the calibration's errors (docs/FITTING.md, "Known
    cameras")."""
    rig = ctx.rig is not None and camera_prior is None
    return Unknowns.of(state, ctx.refine_focal and not rig, rig=rig, shape_fixed=shape_fixed)


class _Estimate(NamedTuple):
    """What the geometry LM moves: the state and the track points (P, 3) (or None); the terms
    (and the track blocks) of the linearisation the next step comes from."""

    state: FitState
    points: torch.Tensor | None
    terms: list | None = None
    blocks: object | None = None


def cameras64(st: FitState) -> tuple:
    """(R, t, K) of every view in float64, for the track term."""
    return st.R().double(), st.cam_t.double(), st.K().double()


@torch.no_grad()
def track_weight(ctx: FitContext, r_lmk: torch.Tensor, pw: torch.Tensor) -> tuple[float, float]:
    """The track term's weight, so that both terms weigh by their noise, and the landmark
    noise sigma_l (fitting px) it assumed.

    The landmark rows cost ``sum_l w_l |r_l|^2 / sum_l pw_l``: by maximum likelihood that is the
    landmark noise variance sigma_l^2 per unit of ``sum |r|^2 / sigma_l^2 / sum pw``, so a track
    row with noise sigma_t carries ``(sigma_l / sigma_t)^2 / sum pw`` (times its Cauchy IRLS
    weight, which the term applies). sigma_l is measured on the current landmark residuals (median of |r|^2 over the
    used points = 2 ln 2 sigma^2 for 2D Gaussian noise), so detector noise and the views'
    disagreement with the tracks raise it; it is never taken below sigma_t.
    r_lmk: (N, 68, 2) landmark residuals; pw: (N, 68) point weights."""
    used = pw > 0
    d2 = (r_lmk ** 2).sum(-1)[used]
    sig_l2 = float(d2.median()) / (2 * math.log(2)) if d2.numel() else ctx.track_sigma_px ** 2
    ratio = max(sig_l2, ctx.track_sigma_px ** 2) / ctx.track_sigma_px ** 2
    return ratio / float(pw.sum().clamp_min(1e-8)), math.sqrt(max(sig_l2, 0.0))


def has_photo_round(ctx: FitContext, state: FitState) -> bool:
    """Whether :func:`stage_geometry` ends with the photometric LM round: ``--w_photo_gn`` and
    ``--photo_gn_iters`` set, a texture space (a closed-form albedo) and one subject."""
    c = ctx.cfg
    return c.w_photo_gn > 0 and c.photo_gn_iters > 0 and ctx.texspace is not None and state.num_subjects == 1


def stage_geometry(ctx: FitContext, state: FitState, start_round: int = 0) -> FitState:
    """Landmark fit: ``geom_rounds`` rounds of Levenberg-Marquardt (:func:`lm_geometry`) over
    cameras, focal, shape, expression and jaw; the first ``geom_static_rounds`` use the 51
    static points, later ones all 68 with the contour down-weighted by ``w_contour``; with
    ``w_photo_gn > 0`` (texture space, one subject) a last round of ``photo_gn_iters`` adds the
    photometric rows (see :func:`lm_geometry`). SfM tracks (``ctx.tracks``) take part from the
    start when their points are set (trusted SfM), else from the first round after the static
    ones, their points triangulated from the cameras of that moment; with
    tracks, the landmarks of profile views are dropped first (with a calibration, at
    initialisation), and with tracks or a calibration those of views that disagree with the fit
    after each round (:func:`distrust_profiles`, :func:`distrust_outlier_views`). After the
    static rounds, views whose head misses their mask are re-posed by it
    (:func:`fitting.mask_pose.repose_by_mask`). Whether the rounds reached their optimum:
    :func:`fitting.uncertainty.geometry_convergence`. Records go to ``ctx.history['geometry']``."""
    c = ctx.cfg
    st = state.detach()
    hist = ctx.history.setdefault("geometry", [])
    photo_round = has_photo_round(ctx, state)
    # with a rig the cameras move together in these rounds, which tracks do not see: they join
    # the refine round only, where each camera moves on its own
    tracks = ctx.tracks if ctx.rig is None else None
    if tracks is not None and start_round == 0:
        distrust_profiles(ctx, st)
    last = c.geom_rounds + int(photo_round) - 1
    rounds = _bar(ctx, range(start_round, last + 1), "geometry")
    for rnd in rounds:
        static = rnd < c.geom_static_rounds
        if tracks is not None and not static and tracks.points is None:
            # without trusted SfM points, the tracks join once the landmarks have fixed focal
            # and depth: with few views the tracks alone leave a bas-relief valley, and the LM
            # stays in the part of it nearest to where it starts
            tracks.triangulate(*cameras64(st))
        use_tracks = tracks is not None and tracks.points is not None
        if rnd >= c.geom_rounds:  # the photometric round: landmarks, outline and colour samples
            st = lm_geometry(ctx, st, False, c.photo_gn_iters, hist, rnd, use_rim=True, use_photo=True,
                             use_tracks=use_tracks)
        else:
            st = lm_geometry(ctx, st, static, c.geom_lm_iters, hist, rnd, use_rim=not static, use_tracks=use_tracks)
        if (tracks is not None or ctx.rig is not None) and rnd < last:
            distrust_outlier_views(ctx, st)
        if rnd == c.geom_static_rounds - 1 and rnd < last:
            st = _repose_by_masks(ctx, st, hist, rnd, use_tracks)
        if hist:
            rounds.set_postfix(lmk=f"{hist[-1]['landmark']:.3f}")
        if ctx.on_iter is not None:
            ctx.on_iter("geometry", rnd + 1, st)
    if ctx.rig is not None:
        st = _refine_rig_cameras(ctx, st, hist, last + 1, photo_round) if ctx.rig.mode == "refine" \
            else snap_to_rig(st, ctx.rig)
    return st


# re-posing and refitting passes: each refit, free of the re-posed views' landmarks, gives a
# head on which the mask tells the next profile's pose better
REPOSE_PASSES = 3


def _repose_by_masks(ctx: FitContext, st: FitState, hist: list, rnd: int, use_tracks: bool) -> FitState:
    """:func:`fitting.mask_pose.repose_by_mask`, then the static round again, now without the
    re-posed views' landmarks, which had pulled the head that they were re-posed on, and with
    the outline, which holds those views; repeated while views move, at most ``REPOSE_PASSES``
    times."""
    for _ in range(REPOSE_PASSES):
        st, moved = repose_by_mask(ctx, st)
        if not moved:
            break
        st = lm_geometry(ctx, st, True, ctx.cfg.geom_lm_iters, hist, rnd, use_rim=True, use_tracks=use_tracks)
    return st


def _refine_rig_cameras(ctx: FitContext, st: FitState, hist: list, rnd: int, photo_round: bool) -> FitState:
    """``--camera_mode refine``'s last geometry rounds: per-view cameras free, held to the
    calibration by :class:`fitting.known_cameras.CameraPrior`; landmarks, outline and the
    feature tracks when the scene has them (:func:`fitting.known_cameras.rig_tracks`), their
    points triangulated from the calibration; then, when the fit has a photometric round
    (``photo_round``: ``--w_photo_gn``, a texture space, one subject), ``photo_gn_iters`` more
    with the photometric rows."""
    target = snap_to_rig(st, ctx.rig)
    prior = CameraPrior(ctx, Unknowns.of(target, ctx.refine_focal), target, ctx.rig)
    if ctx.tracks is not None and ctx.tracks.points is None:
        ctx.tracks.triangulate(*cameras64(target))
    # the photometric rows only once the landmarks have moved each camera to its images: from
    # a calibration a degree off, a view's colours lie outside the linearised photo's basin
    st = lm_geometry(ctx, target, False, ctx.cfg.geom_lm_iters, hist, rnd, use_rim=True,
                     use_tracks=ctx.tracks is not None, camera_prior=prior)
    if photo_round:
        st = lm_geometry(ctx, st, False, ctx.cfg.photo_gn_iters, hist, rnd, use_rim=True, use_photo=True,
                         use_tracks=ctx.tracks is not None, camera_prior=prior)
    return st


# -- stage 2: photometric --------------------------------------------------------------------------
@torch.no_grad()
def init_appearance(ctx: FitContext, state: FitState) -> FitState:
    """Free texture map: fill with the mean skin colour of each subject's photos (a good start
    for Adam, and the colour the map keeps where no view sees the surface)."""
    st = state.detach()
    if st.free_texture:
        m = ctx.skin_mask * ctx.view_weights[:, None, None, None]
        col = (ctx.images * m).sum((2, 3)) / m.sum((2, 3)).clamp_min(1)  # (N, 3)
        G = st.num_subjects
        acc = torch.zeros(G, 3, device=col.device).index_add_(0, st.view_subject, col)
        cnt = torch.zeros(G, device=col.device).index_add_(0, st.view_subject, torch.ones_like(col[:, 0]))
        st.tex[:] = (acc / cnt.clamp_min(1)[:, None])[:, :, None, None]
    return st


def stage_photometric(ctx: FitContext, state: FitState, start_iter: int = 0) -> FitState:
    """Analysis-by-synthesis on every view at once: masked photometric L1 (skin mask of the photo
    AND coverage of the render), silhouette vs head mask, landmarks, priors; optimises shape,
    expression, jaw, texture (code or map), SH per view, and, unless the geometry stage used SfM
    tracks, the cameras (small steps) and the focal factor when refined. With tracks the
    cameras stay: this stage has no track term, and its photometric and landmark gradients
    would move them off the tracks (real 8-view sample: epipolar median 0.42 -> 0.65 px).
    A calibrated rig's cameras (``ctx.rig``) stay too: the geometry stage placed them.
    Losses go to ``ctx.history['photometric']``."""
    c = ctx.cfg
    st = state.detach()
    hist = ctx.history.setdefault("photometric", [])
    if c.photo_iters <= start_iter:
        return st
    jaw = st.pose[:, JAW].clone()
    held = ctx.rig is not None or (ctx.tracks is not None and ctx.tracks.points is not None)
    cams = [] if held else [st.cam_rot, st.cam_t]
    # the focal factor is a leaf only when refined: a gradient nobody uses costs a K backward
    focal = [st.log_focal] if ctx.refine_focal and cams else []
    leaves = [st.shape, st.expression, jaw, st.tex, st.sh] + cams + focal
    for p in leaves:
        p.requires_grad_(True)
    groups = [{"params": [st.shape, st.expression, jaw], "lr": c.photo_lr},
              {"params": [st.tex], "lr": c.tex_lr},
              {"params": [st.sh], "lr": c.sh_lr}]
    if cams:
        groups.append({"params": cams, "lr": c.photo_cam_lr})
    if focal:
        groups.append({"params": focal, "lr": c.photo_cam_lr})
    opt = Adam(groups)
    if start_iter > 0 and ctx.photo_opt_state is not None:
        try:
            opt.load_state_dict(ctx.photo_opt_state)   # resumed: Adam's moments carry on
        except ValueError as e:
            raise ValueError(f"the checkpoint's photometric stage optimised other variables ({e}); "
                             f"{RESTART_HINT}") from e
    pw = landmark_point_weights(c.w_contour, False, st.shape.device)
    bar = _bar(ctx, range(start_iter, c.photo_iters), "photometric")
    warmup = int(round(c.photo_warmup * c.photo_iters))
    geo = [st.shape, st.expression, jaw] + cams + focal
    for it in bar:
        opt.zero_grad()
        # appearance first: with texture and light still wrong, geometry would bend to explain them
        for p in geo:
            p.requires_grad_(it >= warmup)
        pose = torch.cat([st.pose[:, :6], jaw, st.pose[:, 9:]], 1)
        verts = subject_vertices(ctx, st, pose)
        vv, lmk3d = view_geometry(ctx, st, verts, pose)
        out = render_views(ctx, st, vv)
        l_photo = masked_photometric_l1(out.image, ctx.images, ctx.skin_mask, out.alpha, ctx.view_weights)
        l_sil = silhouette_loss(out.silhouette, ctx.head_mask, ctx.view_weights)
        # the views whose landmarks the geometry stage rejected (profiles, outliers) stay out here too
        l_lmk = robust_landmark_loss(project_landmarks(st, lmk3d), ctx.landmarks, pw,
                                     ctx.view_weights * ctx.landmark_weights, c.lmk_robust_px)
        l_prior = _prior(ctx, st.shape, st.expression, jaw, st.log_focal)
        if st.free_texture:
            l_tex = c.w_tex_smooth * texture_smoothness(st.tex)
        else:
            l_tex = c.w_tex * gaussian_prior(st.tex)
        loss = c.w_photo * l_photo + c.w_sil * l_sil + c.w_photo_lmk * l_lmk + l_prior + l_tex
        loss.backward()
        # cosine decay to 10% over the stage (a resumed run continues the schedule where it stopped)
        opt.step(lr_scale=0.1 + 0.45 * (1 + math.cos(math.pi * it / c.photo_iters)))
        rec = {"iter": it, "photometric": float(l_photo.detach()), "silhouette": float(l_sil.detach()),
               "landmark": float(l_lmk.detach()),
               "prior": float(l_prior.detach()), "texture": float(l_tex.detach()), "total": float(loss.detach())}
        hist.append(rec)
        bar.set_postfix(photo=f"{rec['photometric']:.4f}", sil=f"{rec['silhouette']:.3f}",
                        lmk=f"{rec['landmark']:.2f}")
        if ctx.on_iter is not None and c.checkpoint_every > 0 and (it + 1) % c.checkpoint_every == 0:
            snap = st.detach()
            snap.pose = torch.cat([st.pose[:, :6], jaw.detach(), st.pose[:, 9:]], 1)
            ctx.photo_opt_state = opt.state_dict()
            ctx.on_iter("photometric", it + 1, snap)
    st.pose = torch.cat([st.pose[:, :6], jaw.detach(), st.pose[:, 9:]], 1)
    return st.detach()

# -- evaluation ------------------------------------------------------------------------------------
@torch.no_grad()
def evaluate(ctx: FitContext, state: FitState, render: bool = True) -> dict:
    """Per-view numbers at fitting resolution: predicted landmarks (N, 68, 2), landmark RMSE
    (fitting px), photometric L1 and mask IoU (when ``render``), and the RenderOutput."""
    verts = subject_vertices(ctx, state)
    vv, lmk3d = view_geometry(ctx, state, verts)
    pred = project_landmarks(state, lmk3d)
    out = {"verts": verts, "landmarks": pred, "lmk3d": lmk3d,
           "landmark_rmse": landmark_rmse(pred, ctx.landmarks)}
    if render:
        r = render_views(ctx, state, vv)
        out["render"] = r
        out["photometric_l1"] = masked_photometric_l1(r.image, ctx.images, ctx.skin_mask, r.alpha, per_view=True)
        out["mask_iou"] = mask_iou(r.alpha, ctx.head_mask)
    return out
