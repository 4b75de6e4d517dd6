"""Views posed wrong by a detector's points on a profile, found by their head mask and re-posed
by it.

Past about 45 deg of yaw a 68-point detector returns a frontal-shaped set of points squeezed
into the profile (:mod:`fitting.landmark_trust`). Where tracks or a calibration place such a
view, its landmarks are simply dropped. A view that only its landmarks place follows them
instead: PnP puts the squeezed points at a few degrees of yaw, with a residual only 1.5-2x
the median view's, so the landmarks cannot tell the view is wrong. Its mask can: the head,
posed that way, covers much less of the view's head mask than in the other views
(:data:`SUSPECT_IOU_RATIO`).

:func:`repose_by_mask` moves such a view's camera around the head: to the yaw at which the
face's box (what the detector's points still tell) lies where the detector put it, then to the
elevation and roll whose silhouette covers the mask best. It drops the view's landmarks; the
outline (:func:`fitting.geometry_terms.outline_weights`) and photometric terms of the rounds
after it pose the view from there. Run after the static-landmark rounds
(:func:`fitting.stages.stage_geometry`), whose head the other views placed, and again after
the static round is refit without the re-posed views' landmarks.
"""
from __future__ import annotations

import numpy as np
import torch

from fitting.context import FitContext, head_rotation, subject_vertices, view_geometry
from fitting.landmark_trust import distrust, placed_without_landmarks, view_yaw_deg
from fitting.losses import mask_iou
from fitting.render import RasterSettings
from fitting.render.rasterize import rasterize
from fitting.render.cameras import matrix_to_rot, project_points, scale_intrinsics, view_rotation
from fitting.rotations import axis_angle_to_matrix
from fitting.state import FitState

__all__ = ["MASK_IOU_FLAG_RATIO", "low_mask_iou", "orbit", "yaw_candidates", "tilt_candidates", "box_mismatch",
           "repose_by_mask"]

# A view that neither tracks nor a calibration place whose fitted head covers much less of its
# head mask than the median view's is posed wrong. Measured: views that followed a detector's
# frontal-shaped points on a profile, with no tracks to pose them, 0.45 against a median of
# 0.88; the real sample's masks, hair included, 0.65-0.67 in every view.
MASK_IOU_FLAG_RATIO = 0.7
# Views below this x the median view's IoU are searched (a profile 40 deg off read 0.83x; views
# posed right, 0.96-1.04x here and on the real sample); a search moves a view when it lifts the
# IoU by MIN_IOU_GAIN and to MASK_IOU_FLAG_RATIO x the median at least.
SUSPECT_IOU_RATIO, MIN_IOU_GAIN = 0.9, 0.05
# A view is re-posed only as a profile: at a yaw within this of the detector's range or beyond.
# The face's box puts a profile up to ~7 deg nearer the front (a view at 46.8 deg: 40).
PROFILE_MARGIN_DEG = 10.0
# the yaws tried (head frame, degrees): the detector's failure lies beyond 45 deg, and a camera
# past 90 deg no longer sees the face that gave the view its landmarks
YAW_RANGE_DEG, YAW_STEP_DEG = 90.0, 5.0
# the (elevation, roll) pairs tried around the chosen yaw (degrees)
_TILT = torch.arange(-15.0, 15.1, 3.0)
TILTS_DEG = torch.stack(torch.meshgrid(_TILT, _TILT, indexing="ij"), -1).reshape(-1, 2)
# the longer side (px) of the images the search compares: its grid's steps move a profile's
# outline by several pixels there, and each searched view costs ~0.5 s at this size
SEARCH_SIZE = 128
# moment-matching steps per yaw (the coverage's size and place converge in two)
FIT_STEPS = 2


def low_mask_iou(iou: np.ndarray, by_landmarks: np.ndarray) -> np.ndarray:
    """(M,) bool: the views that neither tracks nor a calibration place (by_landmarks (M,) bool)
    whose mask IoU (iou (M,)) is below ``MASK_IOU_FLAG_RATIO`` x the median view's."""
    med = float(np.median(iou)) if len(iou) else 0.0
    return np.asarray(by_landmarks, bool) & (np.asarray(iou) < MASK_IOU_FLAG_RATIO * med)


def orbit(R: torch.Tensor, t: torch.Tensor, centre: torch.Tensor, rotvec: torch.Tensor) -> tuple:
    """One camera (R (3, 3), t (3,), world-to-camera in the head frame) turned about ``centre``
    (3,) by each rotation vector rotvec (Y, 3) (head frame, radians): the new camera sees a world
    point X where the old one saw the point X turned by rotvec about the centre. It keeps its
    distance to the centre, which projects where it did. Returns R (Y, 3, 3), t (Y, 3)."""
    Q = axis_angle_to_matrix(rotvec)                                      # (Y, 3, 3)
    return R @ Q, t + (R @ (centre[:, None] - Q @ centre[:, None]))[..., 0]


def yaw_candidates(R: torch.Tensor, t: torch.Tensor, centre: torch.Tensor, yaws_deg: torch.Tensor) -> tuple:
    """The camera (R (3, 3), t (3,)) :func:`orbit` ed about the head frame's vertical (y) axis
    through ``centre`` (3,) to each yaw of yaws_deg (Y,) (:func:`fitting.landmark_trust.view_yaw_deg`),
    keeping its elevation and roll. Returns R (Y, 3, 3), t (Y, 3)."""
    rotvec = torch.zeros(len(yaws_deg), 3, dtype=R.dtype, device=R.device)
    rotvec[:, 1] = torch.deg2rad(yaws_deg - view_yaw_deg(R[None])[0])
    return orbit(R, t, centre, rotvec)


def tilt_candidates(R: torch.Tensor, t: torch.Tensor, centre: torch.Tensor, tilts_deg: torch.Tensor) -> tuple:
    """The camera (R (3, 3), t (3,)) :func:`orbit` ed about ``centre`` (3,) by each (elevation,
    roll) of tilts_deg (Y, 2): elevation about the horizontal axis across its view, roll about
    its view direction. Returns R (Y, 3, 3), t (Y, 3)."""
    d = R[2]                                                              # view direction, head frame
    across = torch.linalg.cross(d, torch.tensor([0.0, 1.0, 0.0], dtype=R.dtype, device=R.device))
    across = across / across.norm().clamp_min(1e-8)
    a = torch.deg2rad(tilts_deg)
    return orbit(R, t, centre, a[:, :1] * across + a[:, 1:] * d)


def _moments(m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Area (B,) and centroid (B, 2) in pixels (x, y; pixel centres at +0.5) of masks (B, 1, H, W)."""
    m = m[:, 0].float()
    H, W = m.shape[-2:]
    area = m.sum((1, 2)).clamp_min(1.0)
    ys = torch.arange(H, dtype=m.dtype, device=m.device) + 0.5
    xs = torch.arange(W, dtype=m.dtype, device=m.device) + 0.5
    cx = (m.sum(1) * xs).sum(1) / area
    cy = (m.sum(2) * ys).sum(1) / area
    return area, torch.stack([cx, cy], 1)


def _fit_to_mask(cover: torch.Tensor, K: torch.Tensor, R: torch.Tensor, t: torch.Tensor, centre: torch.Tensor,
                 area: torch.Tensor, centroid: torch.Tensor) -> torch.Tensor:
    """New t (B, 3) that moves each camera (K, R: (B, 3, 3), t: (B, 3)) so that its coverage
    (cover: (B, 1, H, W) bool) takes the ``area`` (px) and ``centroid`` (2,) px it should have in
    the mask. The head's ``centre`` (3,) moves in depth to scale the coverage about its
    projection, then sideways at that depth."""
    a_c, c_c = _moments(cover)
    s = (area / a_c).sqrt()                                               # (B,) growth of the coverage
    xc = (R @ centre[:, None])[..., 0] + t                                # (B, 3) centre, camera frame
    f, pp = torch.stack([K[:, 0, 0], K[:, 1, 1]], 1), K[:, :2, 2]
    p0 = xc[:, :2] / xc[:, 2:] * f + pp
    p1 = centroid - (c_c - p0) * s[:, None]                               # where the centre must project
    z1 = xc[:, 2] / s
    x1 = torch.cat([(p1 - pp) / f * z1[:, None], z1[:, None]], 1)
    return t + x1 - xc


def box_mismatch(pred: torch.Tensor, detected: torch.Tensor) -> torch.Tensor:
    """(B,) how far the box of each set of projected landmarks pred (B, 68, 2) is from the box of
    the detected ones (68, 2): the centres' distance over the detected box's diagonal, plus
    |log| of the width and height ratios. A detector's points on a profile keep the face's box
    (their shape is a frontal face's), so the box is what the view's landmarks still tell."""
    lo, hi = pred.min(-2).values, pred.max(-2).values
    lo0, hi0 = detected.min(-2).values, detected.max(-2).values
    size0 = (hi0 - lo0).clamp_min(1e-6)
    centre = ((lo + hi) - (lo0 + hi0)).norm(dim=-1) / 2 / size0.norm()
    return centre + ((hi - lo).clamp_min(1e-6) / size0).log().abs().sum(-1)


def _coverage(faces: torch.Tensor, verts: torch.Tensor, K: torch.Tensor, R: torch.Tensor, t: torch.Tensor,
              size: tuple) -> torch.Tensor:
    """(B, 1, H, W) bool: the pixels that the head (verts: (B, V, 3), faces (F, 3)) covers in
    images of ``size`` (H, W)."""
    return rasterize(verts, faces, K, R, t, RasterSettings(size)).face_idx[:, None] >= 0


def _moved_to_mask(faces: torch.Tensor, verts: torch.Tensor, K: torch.Tensor, mask: torch.Tensor, R: torch.Tensor,
                   t: torch.Tensor, centre: torch.Tensor, area_ratio: float, offset: torch.Tensor) -> tuple:
    """Candidate cameras R (Y, 3, 3), t (Y, 3) of one view (verts: (1, V, 3), K: (1, 3, 3),
    mask: (1, 1, H, W)), each moved by :func:`_fit_to_mask` so that the head's coverage takes the
    size and place the other views' fits take in their masks: area ``area_ratio`` x the mask's,
    centroid ``offset`` (2,) x sqrt(mask area) px from the mask's. Returns their t (Y, 3) and
    the IoU (Y,) of their coverage with the mask."""
    Y, size = len(R), tuple(mask.shape[-2:])
    a_m, c_m = _moments(mask > 0.5)
    area, centroid = area_ratio * a_m, c_m[0] - offset * a_m.sqrt()
    v, K = verts.expand(Y, -1, -1), K.expand(Y, 3, 3)
    for _ in range(FIT_STEPS):
        t = _fit_to_mask(_coverage(faces, v, K, R, t, size), K, R, t, centre, area, centroid)
    return t, mask_iou(_coverage(faces, v, K, R, t, size).float(), mask.expand(Y, -1, -1, -1))


def _search_scale(ctx: FitContext, K: torch.Tensor) -> tuple:
    """The head masks (N, 1, h, w), K (N, 3, 3) and landmarks (N, 68, 2) at the search's size:
    the longer side at most ``SEARCH_SIZE``."""
    H, W = ctx.size
    s = min(1.0, SEARCH_SIZE / max(H, W))
    if s == 1.0:
        return ctx.head_mask, K, ctx.landmarks
    h, w = max(1, round(H * s)), max(1, round(W * s))
    masks = torch.nn.functional.interpolate(ctx.head_mask.float(), size=(h, w), mode="area")
    return masks, scale_intrinsics(K, w / W, h / H), ctx.landmarks * ctx.landmarks.new_tensor([w / W, h / H])


@torch.no_grad()
def repose_by_mask(ctx: FitContext, state: FitState) -> tuple[FitState, list]:
    """Re-pose the views that neither tracks nor a calibration place (one subject) whose mask IoU
    is below ``SUSPECT_IOU_RATIO`` x the median view's, each camera orbiting the head (the
    silhouette does not see the head turn in place):

    1. yaw: every ``YAW_STEP_DEG`` within +-``YAW_RANGE_DEG``, keeping elevation and roll, the one
       whose projected landmarks' box best matches the detected points' (:func:`box_mismatch`;
       the silhouette of a head and of its mirror image barely differ, the face's side does);
    2. elevation and roll (:data:`TILTS_DEG`, PnP's are off by up to ~11 deg on such points): the
       pair whose coverage overlaps the mask most.

    Every candidate is first moved so that the head's coverage takes the size and place in the
    mask that it takes in the other views (:func:`_fit_to_mask`; hair makes a mask larger than
    the head). A view takes its new pose when that lifts its IoU by ``MIN_IOU_GAIN`` and to
    ``MASK_IOU_FLAG_RATIO`` x the median view's, at a yaw no nearer the front than
    ``lmk_max_yaw_deg`` - ``PROFILE_MARGIN_DEG`` (a profile: otherwise the detector's points are
    not what misses the mask, and the view stays as it was, flagged at the end if its IoU stays
    low). Its landmarks are then dropped (``ctx.landmark_flags`` says why), and the outline
    term holds it (:func:`fitting.geometry_terms.outline_weights`). Returns the new state and
    the re-posed views' indices."""
    if ctx.rig is not None or state.num_subjects != 1:
        return state, []
    seen = ctx.view_weights > 0
    used = seen & (ctx.landmark_weights > 0)
    if used.sum() < 3:
        return state, []
    verts = subject_vertices(ctx, state)
    vv, _ = view_geometry(ctx, state, verts)
    R, t = state.R(), state.cam_t
    masks, K, landmarks = _search_scale(ctx, state.K())
    faces = ctx.flame.faces
    cover = _coverage(faces, vv, K, R, t, tuple(masks.shape[-2:]))
    iou = mask_iou(cover.float(), masks)
    med = float(iou[seen].median())
    suspect = seen & ~placed_without_landmarks(ctx) & (iou < SUSPECT_IOU_RATIO * med)
    if not suspect.any():
        return state, []
    good = used & ~suspect
    if not good.any():   # no view's head to take the size and place in the mask from
        return state, []
    a_c, c_c = _moments(cover[good])
    a_m, c_m = _moments(masks[good] > 0.5)
    area_ratio = float((a_c / a_m).median())
    offset = ((c_m - c_c) / a_m.sqrt()[:, None]).median(0).values
    centre, head = verts[0].mean(0), head_rotation(state.pose)
    yaws = torch.arange(-YAW_RANGE_DEG, YAW_RANGE_DEG + 0.5 * YAW_STEP_DEG, YAW_STEP_DEG, dtype=R.dtype,
                        device=R.device)
    tilts = TILTS_DEG.to(R)
    st = state.detach()
    moved = []
    for i in torch.nonzero(suspect).flatten().tolist():  # a few views
        at = (vv[i:i + 1], K[i:i + 1], masks[i:i + 1])
        Ry, ty = yaw_candidates(R[i], t[i], centre, yaws)
        ty, _ = _moved_to_mask(faces, *at, Ry, ty, centre, area_ratio, offset)
        lmk = ctx.flame.landmarks(at[0].expand(len(yaws), -1, -1), view_rotation(Ry, head.expand(len(yaws), 3, 3)))
        b = int(box_mismatch(project_points(lmk, at[1].expand(len(yaws), 3, 3), Ry, ty)[0], landmarks[i]).argmin())
        Rt, tt = tilt_candidates(Ry[b], ty[b], centre, tilts)
        tt, score = _moved_to_mask(faces, *at, Rt, tt, centre, area_ratio, offset)
        k = int(score.argmax())
        yaw = float(view_yaw_deg(Rt[k:k + 1])[0])
        if float(score[k]) < max(MASK_IOU_FLAG_RATIO * med, float(iou[i]) + MIN_IOU_GAIN) or \
                abs(yaw) <= ctx.cfg.lmk_max_yaw_deg - PROFILE_MARGIN_DEG:
            continue
        st.cam_rot[i], st.cam_t[i] = matrix_to_rot(Rt[k:k + 1])[0], tt[k]
        moved.append(i)
        distrust(ctx, i, f"mask IoU {float(iou[i]):.2f} against the median view's {med:.2f} with the pose from "
                         f"its landmarks, {float(score[k]):.2f} at {yaw:+.0f} deg "
                         f"of yaw: a detector's frontal-shaped points on a profile; posed by its mask and outline")
    return st, moved
