"""Which views' landmarks the fit uses.

A view's landmarks are dropped (``ctx.landmark_weights`` 0, the reason in
``ctx.landmark_flags``) only where something else places its camera: its SfM tracks, or a
calibration (``--cameras``). Two reasons:

* a profile (:func:`distrust_profiles`): past about 45 deg of yaw a 68-point detector (dlib's,
  trained on near-frontal faces) returns a frontal-shaped set of points squeezed into the
  profile, and PnP / the fit follow it;
* an outlier (:func:`distrust_outlier_views`): the view's landmarks sit much farther from the
  fit than the other views' (a box on the wrong face, a bad detection).

A profile that neither tracks nor a calibration place is found by its head mask, and re-posed
by it before its landmarks are dropped (:mod:`fitting.mask_pose`).
"""
from __future__ import annotations

import torch

from fitting.context import FitContext, project_landmarks, subject_vertices, view_geometry
from fitting.state import FitState

__all__ = ["MIN_VIEW_TRACKS", "view_yaw_deg", "placed_without_landmarks", "placed_by_nothing", "distrust",
           "distrust_profiles", "distrust_outlier_views"]

MIN_VIEW_TRACKS = 20   # observations that pin a view without its landmarks


def view_yaw_deg(R: torch.Tensor) -> torch.Tensor:
    """(N,) yaw of each camera around the head in degrees (0: in front of the face; the sign
    follows the head's x axis). R: (N, 3, 3) world-to-camera in the head frame."""
    d = R[:, 2, :]                                   # the camera's viewing direction in the head frame
    return torch.rad2deg(torch.atan2(d[:, 0], -d[:, 2]))


def _tracked_views(ctx: FitContext) -> torch.Tensor:
    """(N,) bool: views with enough track observations to be posed without landmarks."""
    if ctx.tracks is None:
        return torch.zeros_like(ctx.view_weights, dtype=torch.bool)
    counts = torch.bincount(ctx.tracks.view, minlength=len(ctx.view_weights)).to(ctx.view_weights.device)
    return counts >= MIN_VIEW_TRACKS


def placed_without_landmarks(ctx: FitContext) -> torch.Tensor:
    """(N,) bool: every view of a calibrated rig, else the tracked views."""
    if ctx.rig is not None:
        return torch.ones_like(ctx.view_weights, dtype=torch.bool)
    return _tracked_views(ctx)


def placed_by_nothing(ctx: FitContext) -> torch.Tensor:
    """(N,) bool: the views whose landmarks are dropped and that neither tracks nor a
    calibration place (views re-posed by their mask, :mod:`fitting.mask_pose`): only their
    outline and colours hold them."""
    return (ctx.landmark_weights == 0) & ~placed_without_landmarks(ctx)


def _trusted(ctx: FitContext) -> torch.Tensor:
    return (ctx.landmark_weights > 0) & (ctx.view_weights > 0)


def distrust(ctx: FitContext, i: int, why: str) -> None:
    ctx.landmark_weights[i] = 0.0
    ctx.landmark_flags[i] = why


@torch.no_grad()
def distrust_profiles(ctx: FitContext, st: FitState) -> None:
    """Stop using the landmarks of the views beyond ``lmk_max_yaw_deg`` of yaw whose cameras
    are placed without them: every view of a calibrated rig (as long as one view keeps its
    landmarks for the head's pose), else the tracked views. The yaw comes from st's cameras
    (SfM poses, or the calibration placed by the head's pose)."""
    yaw = view_yaw_deg(st.R())
    lim = ctx.cfg.lmk_max_yaw_deg
    trusted = _trusted(ctx)
    profile = trusted & placed_without_landmarks(ctx) & (yaw.abs() > lim)
    if ctx.rig is not None and not (trusted & ~profile).any():   # the rig's head pose needs one view's landmarks
        return
    how = "its camera is calibrated" if ctx.rig is not None else "posed by its SfM tracks"
    for i in torch.nonzero(profile).flatten().tolist():  # a few views
        distrust(ctx, i, f"yaw {float(yaw[i]):+.0f} deg is beyond the landmark detector's range (+-{lim:.0f} deg); "
                         + how)


@torch.no_grad()
def distrust_outlier_views(ctx: FitContext, st: FitState) -> None:
    """Stop using the landmarks of the views placed without them (:func:`distrust_profiles`) whose
    static landmarks sit much farther from the fit than the other views': more than
    ``lmk_outlier_factor`` x the median view's RMSE and more than 3 px at fitting size."""
    _, lmk3d = view_geometry(ctx, st, subject_vertices(ctx, st))
    d = (project_landmarks(st, lmk3d) - ctx.landmarks)[:, 17:]
    rmse = d.pow(2).sum(-1).mean(-1).sqrt()                                      # (N,)
    trusted = _trusted(ctx)
    if trusted.sum() < 3:
        return
    lim = max(ctx.cfg.lmk_outlier_factor * float(rmse[trusted].median()), 3.0)
    against = "the calibration and the other views" if ctx.rig is not None else "the tracks"
    for i in torch.nonzero(placed_without_landmarks(ctx) & trusted & (rmse > lim)).flatten().tolist():  # a few
        distrust(ctx, i, f"landmark RMSE {float(rmse[i]):.1f} px (fitting size) > {lim:.1f} px, the limit set by "
                         f"the other views: the landmarks disagree with {against}")
