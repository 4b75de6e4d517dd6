"""Fitting stages: initialise -> geometry (landmarks) -> photometric (render).

Each stage takes a :class:`FitContext` (model, observations, weights, options) and a
:class:`~fitting.state.FitState` and returns a new FitState. They work for N views of G
subjects (``state.view_subject``): multi-view fitting is G = 1, a batch of single images is
G = N with one view each. Nothing here loops over views: per-view work is batched.

Gauge: the world is FLAME's head frame, so the head's global rotation stays 0 and the
cameras carry the rigid motion; the neck stays 0 too (landmarks cannot tell it from the
cameras) and the eyes stay 0 (no landmark sees the eyeballs). The jaw is fitted.
"""
from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from fitting.init import FLIP, align_sfm_poses, matrix_to_rot, pnp_views, project
from fitting.jacobians import point_jacobian
from fitting.losses import (gaussian_prior, landmark_point_weights, landmark_rmse, mask_iou, masked_photometric_l1,
                            robust_landmark_loss, silhouette_loss, texture_smoothness)
from fitting.rotations import axis_angle_to_matrix
from fitting.state import FitState
from fitting.tracks import TrackTerm

__all__ = ["FitContext", "subject_vertices", "view_geometry", "initialize", "stage_geometry", "lm_geometry",
           "rim_correspondences", "photo_samples", "solve_appearance", "init_appearance", "project_landmarks",
           "stage_photometric", "evaluate", "render_views", "texture_maps", "cameras64", "view_yaw_deg",
           "distrust_profiles", "distrust_outlier_views"]

JAW = slice(6, 9)


@dataclass
class FitContext:
    """What the stages need besides the state.

    flame: FLAME module; images: (N, 3, H, W); landmarks: (N, 68, 2) fitting pixels;
    skin_mask, head_mask: (N, 1, H, W); view_weights: (N,) (0 drops a view from every loss);
    cfg: the config Namespace (iterations, learning rates, weights); texspace: TextureSpace or None;
    refine_focal: optimise state.log_focal; history: {stage: [{loss: value}, ...]};
    on_iter(stage, position, state): checkpoint hook; progress: show tqdm bars;
    photo_opt_state: the photometric stage's Adam state at its last ``on_iter`` call (saved
    with checkpoints; set it before resuming so the moments carry on, not restart).
    landmark_weights: (N,) per-view weight of the landmark rows only (default 1; 0 for views
    whose landmarks are not trusted, see :func:`distrust_profiles` and
    :func:`distrust_outlier_views`); landmark_flags: {view index: why its landmarks are not used}.
    tracks: the SfM track term of the geometry LM (:class:`fitting.tracks.TrackTerm`) or None;
    track_sigma_px: its observation noise in fitting pixels; landmark_sigma_px: the landmark
    noise the last LM iteration measured (see :func:`_track_weight`).
    """

    flame: torch.nn.Module
    images: torch.Tensor
    landmarks: torch.Tensor
    skin_mask: torch.Tensor
    head_mask: torch.Tensor
    view_weights: torch.Tensor
    cfg: argparse.Namespace
    texspace: torch.nn.Module | None = None
    refine_focal: bool = False
    history: dict = field(default_factory=dict)
    on_iter: Callable | None = None
    progress: bool = True
    photo_opt_state: dict | None = None
    landmark_weights: torch.Tensor | None = None
    landmark_flags: dict = field(default_factory=dict)
    tracks: TrackTerm | None = None
    track_sigma_px: float = 0.5
    landmark_sigma_px: float | None = None
    _renderer: torch.nn.Module | None = None
    _boundary: tuple | None = None
    _edges: tuple | None = None

    def __post_init__(self):
        if self.landmark_weights is None:
            self.landmark_weights = torch.ones_like(self.view_weights)

    @property
    def size(self) -> tuple:
        return tuple(self.images.shape[-2:])

    def renderer(self):
        if self._renderer is None:
            from fitting.render import MeshRenderer, RasterSettings
            vt, ft = self.uvs()
            self._renderer = MeshRenderer(self.flame.faces, vt, ft, RasterSettings(self.size)).to(self.images.device)
        return self._renderer

    def boundary(self):
        """Nearest head-mask boundary point and outward normal per pixel of a finer grid.

        Returns (points (N, Hs, Ws, 2) fitting pixels, normals (N, Hs, Ws, 2), factor): the
        mask is upsampled by ``factor`` and thresholded at 0.5, so the outline is located to
        1 / factor of a fitting pixel. Computed once (OpenCV, per view)."""
        if self._boundary is None:
            import cv2
            H, W = self.size
            f = max(1, round(512 / max(H, W)))
            pts, nrm = [], []
            for m in self.head_mask[:, 0].detach().cpu().numpy():  # once per view, at setup
                up = cv2.resize(m.astype(np.float32), (W * f, H * f), interpolation=cv2.INTER_LINEAR)
                inside = (up > 0.5).astype(np.uint8)
                edge = inside - cv2.erode(inside, np.ones((3, 3), np.uint8))
                if edge.sum() == 0:
                    edge[0, 0] = 1
                _, lab = cv2.distanceTransformWithLabels(1 - edge, cv2.DIST_L2, 5, labelType=cv2.DIST_LABEL_PIXEL)
                ys, xs = np.nonzero(edge)  # label k (1-based) is the k-th edge pixel in scan order
                order = np.zeros(lab.max() + 1, np.int64)
                order[1:len(ys) + 1] = np.arange(len(ys))
                k = order[lab]
                sm = cv2.GaussianBlur(up, (0, 0), 1.5 * f)
                gx, gy = cv2.Sobel(sm, cv2.CV_32F, 1, 0), cv2.Sobel(sm, cv2.CV_32F, 0, 1)
                g = -np.stack([gx, gy], -1)  # outward: the mask decreases
                g /= np.linalg.norm(g, axis=-1, keepdims=True) + 1e-12
                n_k = g[ys[k], xs[k]]
                # Edge pixels are the innermost *inside* pixels; the outline (the 0.5 level of the
                # mask, whose fractional values at a downsampled outline carry sub-pixel position)
                # lies between an edge pixel and the point one fine pixel further out along the
                # normal: interpolate the crossing there (a plain grid point is up to a pixel off,
                # ~0.3 % of head scale at 128 px).
                ex, ey = xs[k].astype(np.float32), ys[k].astype(np.float32)
                v_in = up[ey.astype(np.int64), ex.astype(np.int64)]
                v_out = cv2.remap(up, (ex + n_k[..., 0]).astype(np.float32), (ey + n_k[..., 1]).astype(np.float32),
                                  cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
                step = np.clip((v_in - 0.5) / np.maximum(v_in - v_out, 1e-3), 0.0, 1.0)
                pts.append(np.stack([ex + 0.5, ey + 0.5], -1) / f + (step / f)[..., None] * n_k)
                nrm.append(n_k)
            dev = self.images.device
            self._boundary = (torch.tensor(np.stack(pts), dtype=torch.float32, device=dev),
                              torch.tensor(np.stack(nrm), dtype=torch.float32, device=dev), f)
        return self._boundary

    def edges(self):
        """Interior mesh edges with their two faces, and the vertices near the border, computed once:
        (vertices (E, 2), faces (E, 2), near_border (V,) bool). Border edges (one face, e.g. the
        neck opening) are left out."""
        if self._edges is None:
            faces = self.flame.faces.long()
            V = int(faces.max()) + 1
            e = torch.cat([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]).sort(1).values  # (3F, 2)
            fid = torch.arange(len(faces), device=faces.device).repeat(3)
            key = e[:, 0] * V + e[:, 1]
            key, order = key.sort()
            e, fid = e[order], fid[order]
            same = key[1:] == key[:-1]
            pair = same.nonzero()[:, 0]  # consecutive equal keys: an edge's two faces
            ev = e[pair]
            # vertices within two rings of the mesh border (the neck cut): the mask's outline
            # there is the cut itself, not an occluding contour, so they pair with the wrong edge
            single = torch.ones(len(key), dtype=torch.bool, device=key.device)
            single[1:] &= ~same
            single[:-1] &= ~same
            near = torch.zeros(V, dtype=torch.bool, device=key.device)
            near[e[single].reshape(-1)] = True
            for _ in range(2):
                grow = near.clone()
                grow[ev[:, 0]] |= near[ev[:, 1]]
                grow[ev[:, 1]] |= near[ev[:, 0]]
                near = grow
            dev = self.images.device
            self._edges = (ev.to(dev), torch.stack([fid[pair], fid[pair + 1]], 1).to(dev), near.to(dev))
        return self._edges

    def uvs(self):
        if self.texspace is not None:
            return self.texspace.verts_uvs, self.texspace.faces_uvs
        return self.flame.verts_uvs, self.flame.faces_uvs


# -- model evaluation --------------------------------------------------------------------------
def subject_vertices(ctx: FitContext, state: FitState, pose: torch.Tensor | None = None) -> torch.Tensor:
    """(G, V, 3) vertices of every subject in the head frame."""
    verts, _ = ctx.flame(state.shape, state.expression, state.pose if pose is None else pose)
    return verts


def view_geometry(ctx: FitContext, state: FitState, verts: torch.Tensor, pose: torch.Tensor | None = None):
    """Per-view vertices (N, V, 3) and 68 landmarks (N, 68, 3), contour chosen by each view's yaw."""
    pose = state.pose if pose is None else pose
    head = axis_angle_to_matrix(pose[:, 0:3]) @ axis_angle_to_matrix(pose[:, 3:6])  # (G, 3, 3)
    N = state.num_views
    if verts.shape[0] == 1:
        vv, hv = verts.expand(N, -1, -1), head.expand(N, 3, 3)
    else:
        vv, hv = verts[state.view_subject], head[state.view_subject]
    view_rot = FLIP.to(verts) @ state.R() @ hv
    return vv, ctx.flame.landmarks(vv, view_rot)


def project_landmarks(state: FitState, lmk3d: torch.Tensor) -> torch.Tensor:
    return project(lmk3d, state.K(), state.R(), state.cam_t)


def texture_maps(ctx: FitContext, state: FitState) -> torch.Tensor:
    """(G, 3, Ht, Wt) albedo maps from the code or the free map."""
    if state.free_texture:
        return state.tex.clamp(0, 1)
    return ctx.texspace(state.tex)


def render_views(ctx: FitContext, state: FitState, verts_v: torch.Tensor | None = None):
    """Render every view (one batch). Returns RenderOutput."""
    if verts_v is None:
        verts_v, _ = view_geometry(ctx, state, subject_vertices(ctx, state))
    tex = texture_maps(ctx, state)
    if tex.shape[0] > 1:
        tex = tex[state.view_subject]
    return ctx.renderer()(verts_v, state.K(), state.R(), state.cam_t, texture=tex, sh=state.sh)


def _prior(ctx: FitContext, shape, expr, jaw, log_focal=None) -> torch.Tensor:
    c = ctx.cfg
    p = c.w_shape * gaussian_prior(shape) + c.w_exp * gaussian_prior(expr) + c.w_pose * gaussian_prior(jaw / 0.1)
    if log_focal is not None and ctx.refine_focal:
        p = p + c.w_focal * (log_focal / 0.1).pow(2).sum()
    return p


# -- initialisation ------------------------------------------------------------------------------
@torch.no_grad()
def initialize(ctx: FitContext, state: FitState, sfm_poses: list | None = None,
               prefer_sfm: bool = False) -> tuple[FitState, dict]:
    """Per-view cameras from robust PnP of the 51 static landmarks on the mean shape, checked
    against (and, where PnP failed or fits worse, replaced by) SfM poses after a similarity.

    sfm_poses: N entries of (R (3,3), t (3,)) or None. prefer_sfm: when SfM is consistent
    with PnP (the median view's poses agree within ``sfm_trust_deg``), take the SfM pose of
    every view that has one: a profile's landmarks can fit a wrong PnP pose better than the
    right one. With few views SfM can land on a bas-relief solution (a wrong focal length
    traded against flattened depth and compressed angles), which no similarity aligns with
    PnP: then PnP's poses stay, except for views beyond ``lmk_max_yaw_deg``. Returns (state, info) with per-view ``pnp_ok``,
    ``pnp_rmse_px``, ``source`` ('pnp' | 'sfm' | 'failed'), ``sfm_angle_deg``,
    ``sfm_center_rel``, ``sfm_disagree`` (NaN / False where SfM has no pose), SfM's scale,
    ``sfm_similarity`` {s, Q, T}: X_head = s Q X_sfm + T (None without an alignment),
    ``sfm_trusted`` and ``sfm_trust_why``.
    """
    st = state.detach()
    N = st.num_views
    mean = st.detach()
    mean.shape.zero_()
    mean.expression.zero_()
    mean.pose.zero_()
    verts = subject_vertices(ctx, mean)
    _, lmk3d = view_geometry(ctx, mean, verts)  # frontal contour; PnP uses the static points only
    K = st.K().cpu().double().numpy()
    lm = ctx.landmarks.cpu().double().numpy()
    reproj = max(4.0, 0.03 * max(ctx.size))
    R, t, ok, rmse, _ = pnp_views(lm, lmk3d.cpu().double().numpy(), K, reproj_px=reproj)
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
            med = float(np.median(al["angle_deg"][ok[idx]]))
            info["sfm_trusted"] = med <= ctx.cfg.sfm_trust_deg
            info["sfm_trust_why"] = (f"aligned SfM and PnP rotations differ by {med:.1f} deg in the median view "
                                     f"({'<=' if info['sfm_trusted'] else '>'} {ctx.cfg.sfm_trust_deg:g})")
            # a view beyond the landmark detector's range takes its SfM pose even from an
            # untrusted SfM: its landmarks will not be used (distrust_profiles), and SfM's
            # angles are off by a fraction of the yaw where PnP's can be off by all of it
            profile = view_yaw_deg(torch.as_tensor(al["R"])).abs().numpy() > ctx.cfg.lmk_max_yaw_deg
            static = np.zeros(68, bool)
            static[17:] = True
            for j, i in enumerate(idx):  # a few views; picks the better of two poses
                info["sfm_angle_deg"][i] = float(al["angle_deg"][j])
                info["sfm_center_rel"][i] = float(al["center_rel"][j])
                info["sfm_disagree"][i] = bool(al["disagree"][j]) and bool(ok[i])
                x = lmk3d[i, 17:].cpu().double().numpy() @ al["R"][j].T + al["t"][j]
                if x[:, 2].min() <= 0:
                    continue
                uv = x[:, :2] / x[:, 2:] * np.array([K[i, 0, 0], K[i, 1, 1]]) + K[i, :2, 2]
                e = float(np.sqrt(((uv - lm[i, 17:]) ** 2).sum(1).mean()))
                if (prefer_sfm and (info["sfm_trusted"] or profile[j])) or not ok[i] or e < rmse[i]:
                    R[i], t[i], rmse[i], source[i] = al["R"][j], al["t"][j], e, "sfm"
    info["source"] = source.tolist()
    info["init_rmse_px"] = rmse.tolist()
    st.cam_rot = matrix_to_rot(torch.as_tensor(R, dtype=torch.float32)).to(st.cam_rot.device)
    st.cam_t = torch.as_tensor(t, dtype=torch.float32).to(st.cam_t.device)
    return st, info


# -- which views' landmarks to trust -------------------------------------------------------------
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


def _distrust(ctx: FitContext, i: int, why: str) -> None:
    ctx.landmark_weights[i] = 0.0
    ctx.landmark_flags[i] = why


@torch.no_grad()
def distrust_profiles(ctx: FitContext, st: FitState) -> None:
    """Stop using the landmarks of tracked views beyond ``lmk_max_yaw_deg`` of yaw.

    Past about 45 deg a 68-point detector (dlib's, trained on near-frontal faces) returns a
    frontal-shaped set of points squeezed into the profile, and PnP / the fit follow it. The
    yaw comes from the current cameras, which the tracks hold (SfM poses at initialisation)."""
    yaw = view_yaw_deg(st.R())
    lim = ctx.cfg.lmk_max_yaw_deg
    for i in torch.nonzero(_tracked_views(ctx) & (yaw.abs() > lim)).flatten().tolist():  # a few views
        _distrust(ctx, i, f"yaw {float(yaw[i]):+.0f} deg is beyond the landmark detector's range (+-{lim:.0f} deg); "
                          "posed by its SfM tracks")


@torch.no_grad()
def distrust_outlier_views(ctx: FitContext, st: FitState) -> None:
    """Stop using the landmarks of tracked views whose static landmarks sit much farther from the
    fit than the other views' (a box on the wrong face, a bad detection): more than
    ``lmk_outlier_factor`` x the median view's RMSE and more than 3 px at fitting size."""
    _, lmk3d = view_geometry(ctx, st, subject_vertices(ctx, st))
    d = (project_landmarks(st, lmk3d) - ctx.landmarks)[:, 17:]
    rmse = d.pow(2).sum(-1).mean(-1).sqrt()                                      # (N,)
    trusted = (ctx.landmark_weights > 0) & (ctx.view_weights > 0)
    if trusted.sum() < 3:
        return
    lim = max(ctx.cfg.lmk_outlier_factor * float(rmse[trusted].median()), 3.0)
    for i in torch.nonzero(_tracked_views(ctx) & trusted & (rmse > lim)).flatten().tolist():  # a few views
        _distrust(ctx, i, f"landmark RMSE {float(rmse[i]):.1f} px (fitting size) > {lim:.1f} px, the limit set by "
                          "the other views: the landmarks disagree with the tracks")


# -- stage 1: geometry -----------------------------------------------------------------------------
def _bar(ctx, iterable, desc):
    return tqdm(iterable, desc=desc, disable=not ctx.progress, leave=False, dynamic_ncols=True)


# Tests set this: lm_geometry then also differentiates its residuals with torch.func.jacfwd
# and raises if the chain-rule Jacobian differs (slow: ~10x the Jacobian's cost).
CHECK_JACOBIAN = False


def _compare_jacobians(J: torch.Tensor, ref: torch.Tensor, groups: dict, tol: float = 1e-4) -> None:
    """Raise AssertionError unless J matches ref (rows, 7 + P) to ``tol`` relative (Frobenius)
    in every row group (name: row count, in order) and column block (rotation, translation,
    focal, coefficients): a small group is not drowned by a large one."""
    if J.shape != ref.shape:
        raise AssertionError(f"Jacobian shape {tuple(J.shape)} != autodiff {tuple(ref.shape)}")
    start = 0
    for group, n in groups.items():
        rows = slice(start, start + n)
        start += n
        for name, cols in (("rotation", slice(0, 3)), ("translation", slice(3, 6)), ("focal", slice(6, 7)),
                           ("coefficients", slice(7, None))):
            a, b = J[rows, cols], ref[rows, cols]
            err = float((a - b).norm() / b.norm().clamp_min(1e-30)) if n else 0.0
            if err > tol:
                raise AssertionError(f"chain-rule Jacobian, {group} rows, {name} columns: relative error "
                                     f"{err:.2e} against jacfwd")
    if start != len(J):
        raise AssertionError(f"row groups cover {start} of {len(J)} rows")


def vertex_jacobian(flame, co: torch.Tensor, pose: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """FLAME vertices and their Jacobian w.r.t. the LM coefficients [shape, expression, jaw].

    co: (G, P) per subject; pose: (G, 15) (its jaw replaced by co's). Shape and expression
    columns in closed form (FLAME.shape_jacobian); the three jaw columns by one jacfwd (the jaw
    rotation enters nonlinearly). Returns X (G, V, 3) and J (G, V, 3, P)."""
    n_sh, n_ex = flame.n_shape, flame.n_exp
    n = n_sh + n_ex

    def posed(jaw):
        return torch.cat([pose[:, :6], jaw, pose[:, 9:]], 1)

    X, J_se = flame.shape_jacobian(co[:, :n_sh], co[:, n_sh:n], posed(co[:, n:]))

    def vertices(d):
        return flame(co[:, :n_sh], co[:, n_sh:n], posed(co[:, n:] + d))[0]     # (G, V, 3)

    J_jaw = torch.func.jacfwd(vertices)(torch.zeros(3, dtype=co.dtype, device=co.device))
    return X.detach(), torch.cat([J_se, J_jaw], -1).detach()


def lm_geometry(ctx: FitContext, state: FitState, static_only: bool, iters: int, hist: list | None = None,
                rnd: int = 0, use_rim: bool = False, use_photo: bool = False, use_tracks: bool = False) -> FitState:
    """Levenberg-Marquardt on everything the landmarks (and outlines) see: per-view cameras, the
    shared focal factor (when refined), and per-subject shape, expression and jaw.

    Cost (the same as the Adam formulation):
    ``sum_i w_i rho(r_i) / sum_i w_i`` over landmarks (Cauchy rho, by IRLS)
    ``+ w_rim / w_lmk * mean_k rho(n_k . (u_k - b_k))`` over rim vertices u_k and their nearest
    head-mask outline points b_k with outline normals n_k (when ``use_rim``; correspondences
    redone every iteration, see :func:`rim_correspondences`)
    ``+ w_photo_gn / w_lmk * mean_s rho(|I(u_s) - a_s|)`` over surface samples s (when
    ``use_photo``, see :func:`photo_samples`): the photo at the sample's projection u_s against
    its fitted appearance a_s (albedo x shading, solved in closed form every iteration by
    :func:`solve_appearance` and held fixed within it)
    ``+ (w_shape |shape|^2 + w_exp |exp|^2 + w_pose |jaw / 0.1|^2) / (w_lmk G)``.

    The Jacobian uses *compressed* tangents: a residual of view i depends only on camera i and
    subject s(i), so one tangent perturbs the same camera parameter in every view (6 tangents
    for all cameras) and one perturbs the same coefficient in every subject; the dense Jacobian
    is scattered from them by each row's view. The tangent count is 7 + n_shape + n_exp + 3
    whatever N and G are. It is computed by the chain rule (:func:`point_jacobian`): every row
    is a function of one projected mesh point, and the only autodiff is one jacfwd of FLAME's
    vertices w.r.t. the coefficients (:func:`vertex_jacobian`); tests/fitting check it against
    jacfwd of the residuals.
    """
    c = ctx.cfg
    st = state.detach()
    N, G = st.num_views, st.num_subjects
    S, E = st.shape.shape[1], st.expression.shape[1]
    P = S + E + 3
    dev, dt = st.shape.device, st.shape.dtype
    pw = landmark_point_weights(c.w_contour, static_only, dev)[None] * (ctx.view_weights * ctx.landmark_weights)[:, None]
    vs = st.view_subject
    refine = ctx.refine_focal
    n_cam = 6 * N + (1 if refine else 0)
    n_unk = n_cam + G * P
    lam_s, lam_e, lam_j = (c.w_shape / c.w_lmk / G, c.w_exp / c.w_lmk / G, c.w_pose / c.w_lmk / G / 0.01)
    prior_diag = torch.cat([torch.full((S,), lam_s), torch.full((E,), lam_e), torch.full((3,), lam_j)]).to(dev, dt)
    lam_f = c.w_focal / c.w_lmk / 0.01 if refine else 0.0
    use_rim = use_rim and c.w_rim > 0
    use_photo = use_photo and getattr(c, "w_photo_gn", 0.0) > 0 and ctx.texspace is not None and G == 1
    H, W = ctx.size
    img_flat = ctx.images.permute(0, 2, 3, 1).reshape(-1, 3)
    ph = {}  # the photo the photometric rows see this iteration (blurred early on) and its gradients
    fmask = torch.tensor([[1.0, 1.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0]], dtype=dt, device=dev)
    ar = torch.arange(N, device=dev)
    cam_cols = 6 * ar[:, None] + torch.arange(6, device=dev)[None]         # (N, 6)
    co_cols = n_cam + vs[:, None] * P + torch.arange(P, device=dev)[None]  # (N, P)

    def coeffs(st_):
        return torch.cat([st_.shape, st_.expression, st_.pose[:, JAW]], 1)  # (G, P)

    def residuals(x, R_b, t_b, lf_b, co_b, pose_b, sw, rim, pho=None):
        """Flat weighted residuals: N*136 landmark rows, then one row per rim pair, then three
        (RGB) per photometric sample."""
        R = axis_angle_to_matrix(x[:3].expand(N, 3)) @ R_b
        t = t_b + x[3:6]
        co = co_b + x[7:]
        pose = torch.cat([pose_b[:, :6], co[:, S + E:], pose_b[:, 9:]], 1)
        verts, _ = ctx.flame(co[:, :S], co[:, S:S + E], pose)
        head = axis_angle_to_matrix(pose[:, 0:3]) @ axis_angle_to_matrix(pose[:, 3:6])
        vv = verts.expand(N, -1, -1) if G == 1 else verts[vs]
        hv = head.expand(N, 3, 3) if G == 1 else head[vs]
        lmk = ctx.flame.landmarks(vv, FLIP.to(R) @ R @ hv)
        K = st.K0 * (1 + (torch.exp(lf_b + x[6]) - 1) * fmask)
        out = [((project(lmk, K, R, t) - ctx.landmarks) * sw[..., None]).reshape(-1)]
        if rim is not None:
            view, vert, tgt, nrm, rw = rim
            X = vv[view, vert]                                            # (K, 3)
            xc = (R[view] @ X[..., None])[..., 0] + t[view]
            uv = xc[:, :2] / xc[:, 2:3] * torch.stack([K[view, 0, 0], K[view, 1, 1]], -1) + K[view, :2, 2]
            out.append(((uv - tgt) * nrm).sum(-1) * rw)
        if pho is not None:
            view, face, bary, pix, u0, target, pw_, exact = pho
            X = (vv[view[:, None], ctx.flame.faces[face]] * bary[..., None]).sum(1)  # (S, 3)
            xc = (R[view] @ X[..., None])[..., 0] + t[view]
            uv = xc[:, :2] / xc[:, 2:3] * torch.stack([K[view, 0, 0], K[view, 1, 1]], -1) + K[view, :2, 2]
            if exact:  # the cost of a candidate step: the photo where the sample lands now
                col = _bilinear(ph["img"], H, W, view, uv)
            else:
                # Jacobian: the photo linearised at the sample's pixel with central differences (a
                # bilinear lookup's one-sided slope at a pixel centre would bias the fixed point)
                du = uv - u0
                col = ph["img"][pix] + ph["gx"][pix] * du[:, :1] + ph["gy"][pix] * du[:, 1:]
            out.append(((col - target) * pw_[:, None]).reshape(-1))
        return torch.cat(out)

    def jacobian(args, sw, rim, pho):
        """d residuals / d (7 + P compressed tangents) at x = 0, by the chain rule
        (point_jacobian): the same rows as residuals, landmarks, rim, photometric."""
        R_b, t_b, lf_b, co_b, pose_b = args
        K_b = st.K0 * (1 + (torch.exp(lf_b) - 1) * fmask)
        Xv, Jv = vertex_jacobian(ctx.flame, co_b, pose_b)
        head = axis_angle_to_matrix(pose_b[:, 0:3]) @ axis_angle_to_matrix(pose_b[:, 3:6])
        lf, lb = ctx.flame.landmark_faces(N, FLIP.to(R_b) @ R_b @ head[vs])   # the contour rows residuals use
        lv = ar.repeat_interleave(68)
        d = point_jacobian(Xv, Jv, vs[lv], ctx.flame.faces[lf.reshape(-1)], lb.reshape(-1, 3).to(dt), lv,
                           R_b, t_b, K_b)                                          # (N*68, 2, 7 + P)
        out = [(d * sw.reshape(-1)[:, None, None]).reshape(-1, d.shape[-1])]
        if rim is not None:
            view, vert, _tgt, nrm, rw = rim
            one = torch.tensor([1.0, 0.0, 0.0], dtype=dt, device=dev).expand(len(vert), 3)
            d = point_jacobian(Xv, Jv, vs[view], vert[:, None].expand(-1, 3), one, view, R_b, t_b, K_b)
            out.append(rw[:, None] * (nrm[..., None] * d).sum(1))
        if pho is not None:
            view, face, bary, pix, _u0, _target, pw_, _exact = pho
            d = point_jacobian(Xv, Jv, vs[view], ctx.flame.faces[face], bary, view, R_b, t_b, K_b)
            gx, gy = ph["gx"][pix], ph["gy"][pix]                                  # (M, 3) RGB
            out.append((pw_[:, None, None] * (gx[..., None] * d[:, None, 0] + gy[..., None] * d[:, None, 1]))
                       .reshape(-1, d.shape[-1]))
        return torch.cat(out)

    def cost_of(r, co, lf):
        return float((r * r).sum() + (prior_diag * co * co).sum() + lam_f * float(lf) ** 2)

    lam = 1e-3
    for it in range(iters):
        x0 = torch.zeros(7 + P, device=dev, dtype=dt)
        args = (st.R(), st.cam_t, st.log_focal.reshape(()), coeffs(st), st.pose)
        with torch.no_grad():
            rim = None
            frag = _rasterize_state(ctx, st) if use_photo else None  # shared by outline and samples
            if use_rim:
                rc = rim_correspondences(ctx, st, c.rim_max_px, frag)
                if rc is not None:
                    rim = (*rc, torch.ones(len(rc[0]), device=dev, dtype=dt))
            r_all = residuals(x0, *args, torch.ones_like(pw), rim)
            r_lmk = r_all[: N * 136].reshape(N, 68, 2)
            w = pw / (1 + (r_lmk ** 2).sum(-1) / c.lmk_robust_px ** 2)  # IRLS weights of the Cauchy loss
            sw = (w / pw.sum().clamp_min(1e-8)).sqrt()
            row_view = ar.repeat_interleave(136)
            trk_w = _track_weight(ctx, r_lmk, pw) if use_tracks and ctx.tracks is not None else None
            if rim is not None:
                rr = r_all[N * 136:]
                wr = 1 / (1 + rr ** 2 / c.rim_robust_px ** 2)
                rim = (*rim[:4], (wr * c.w_rim / c.w_lmk / len(rr)).sqrt())
                row_view = torch.cat([row_view, rim[0]])
            pho = None
            if use_photo:
                smp = photo_samples(ctx, st, frag)
                if smp is not None:
                    vv0, _ = view_geometry(ctx, st, subject_vertices(ctx, st))
                    st, target = solve_appearance(ctx, st, smp)
                    view, face, bary, pix = smp
                    # coarse to fine: blur photo and model alike (inside the sampled pixels) for the
                    # first half of the round, which widens the basin of the linearised photo
                    sigma = c.photo_gn_blur * (1 - it / max(1.0, iters / 2))
                    photo = img_flat
                    if sigma >= 0.3:
                        m = torch.zeros(N * H * W, 1, device=dev).index_fill_(0, pix, 1.0)
                        a_img = torch.zeros(N * H * W, 3, device=dev).index_copy_(0, pix, target)
                        photo = _masked_blur(img_flat, m, N, H, W, sigma)
                        target = _masked_blur(a_img, m, N, H, W, sigma)[pix]
                    ph["img"], ph["gx"], ph["gy"] = photo, *_central_gradients(photo, N, H, W)
                    keep = torch.arange(0, len(pix), max(1, int(c.photo_gn_stride)), device=dev)
                    view, face, bary, pix, target = view[keep], face[keep], bary[keep], pix[keep], target[keep]
                    rp = (photo[pix] - target).norm(dim=-1)
                    wp = 1 / (1 + rp ** 2 / c.photo_gn_robust ** 2)  # IRLS weights of the Cauchy loss
                    X = (vv0[view[:, None], ctx.flame.faces[face]] * bary[..., None]).sum(1)
                    u0 = project(X[:, None], st.K()[view], st.R()[view], st.cam_t[view])[:, 0]
                    pho = (view, face, bary, pix, u0, target, (wp * c.w_photo_gn / c.w_lmk / len(rp)).sqrt(), False)
                    row_view = torch.cat([row_view, view.repeat_interleave(3)])
                    args = (st.R(), st.cam_t, st.log_focal.reshape(()), coeffs(st), st.pose)
        Jc = jacobian(args, sw, rim, pho)                                  # (rows, 7 + P)
        if CHECK_JACOBIAN:
            n_rim = 0 if rim is None else len(rim[0])
            _compare_jacobians(Jc, torch.func.jacfwd(residuals)(x0, *args, sw, rim, pho).detach(),
                               {"landmark": N * 136, "rim": n_rim, "photometric": len(Jc) - N * 136 - n_rim})
        with torch.no_grad():
            r0 = residuals(x0, *args, sw, rim, pho)
        rows = r0.shape[0]
        Jf = torch.zeros(rows, n_unk, device=dev, dtype=dt)
        Jf.scatter_(1, cam_cols[row_view], Jc[:, :6])
        if refine:
            Jf[:, 6 * N] = Jc[:, 6]
        Jf.scatter_(1, co_cols[row_view], Jc[:, 7:])
        co = coeffs(st)
        diag_p = torch.zeros(n_unk, device=dev, dtype=dt)
        grad_p = torch.zeros(n_unk, device=dev, dtype=dt)
        diag_p[n_cam:] = prior_diag.repeat(G)
        grad_p[n_cam:] = (prior_diag * co).reshape(-1)
        if refine:
            diag_p[6 * N] = lam_f
            grad_p[6 * N] = lam_f * st.log_focal.reshape(())
        A = Jf.T @ Jf + torch.diag(diag_p)
        g = Jf.T @ r0 + grad_p
        cost0 = cost_of(r0, co, st.log_focal)
        ne = None
        if trk_w is not None:  # the track term: cameras here, its points eliminated (Schur)
            cols = torch.cat([cam_cols, torch.full((N, 1), 6 * N, device=dev)], 1) if refine else cam_cols
            ne = ctx.tracks.normal_equations(*cameras64(st), trk_w, cols, n_unk)
            A, g = A.double() + ne["A"], g.double() + ne["g"]
            cost0 += ne["cost"]
        accepted = False
        for _try in range(6):
            Ad = A + lam * torch.diag(A.diagonal().clamp_min(1e-9))
            if ne is None:
                dx = -torch.linalg.solve(Ad, g)
            else:
                Sc, h, Vinv = ctx.tracks.reduce(ne, lam, n_unk)
                dx = -torch.linalg.solve(Ad - Sc, g - h)
                dp = ctx.tracks.back_substitute(ne, Vinv, dx)
                dx = dx.to(dt)
            cand = _apply_delta(st, dx, N, G, S, E, n_cam, refine)
            with torch.no_grad():
                r1 = residuals(x0, cand.R(), cand.cam_t, cand.log_focal.reshape(()), coeffs(cand), cand.pose, sw, rim,
                               None if pho is None else (*pho[:-1], True))
            cost1 = cost_of(r1, coeffs(cand), cand.log_focal)
            if ne is not None:
                r1t = ctx.tracks.residuals(*cameras64(cand), ctx.tracks.points + dp) * ne["row_weight"][:, None]
                cost1 += float((r1t * r1t).sum())
            if cost1 < cost0:
                st, accepted = cand, True
                if ne is not None:
                    ctx.tracks.points = ctx.tracks.points + dp
                lam = max(lam / 3, 1e-7)
                break
            lam *= 4
        if hist is not None:
            n_rim = 0 if rim is None else len(rim[0])
            hist.append({"round": rnd, "iter": it, "landmark": float((r0[: N * 136] ** 2).sum()),
                         "rim": float((r0[N * 136:N * 136 + n_rim] ** 2).sum()),
                         "photo": float((r0[N * 136 + n_rim:] ** 2).sum()),
                         "track": 0.0 if ne is None else ne["cost"], "lambda": lam})
        if not accepted or float(dx.abs().max()) < 1e-7:
            break
    return st


def cameras64(st: FitState) -> tuple:
    """(R, t, K) of every view in float64, for the track term."""
    return st.R().double(), st.cam_t.double(), st.K().double()


@torch.no_grad()
def _track_weight(ctx: FitContext, r_lmk: torch.Tensor, pw: torch.Tensor) -> float:
    """The track term's weight, so that both terms weigh by their noise.

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
    ctx.landmark_sigma_px = math.sqrt(max(sig_l2, 0.0))
    return ratio / float(pw.sum().clamp_min(1e-8))


@torch.no_grad()
def rim_correspondences(ctx: FitContext, st: FitState, max_px: float, frag=None):
    """Silhouette correspondences for the current fit (ICP-style, redone every LM iteration).

    Rim vertices of each view are the end points of its *silhouette edges*: mesh edges whose
    two faces face opposite ways from that camera. They project exactly onto the outline of
    the rendered polygon mesh (what the head mask is), whereas vertices picked by their
    smoothed normal (|n . d| < eps) include points inside it; any such offset biases the head's
    scale (0.1 px at 128 px is ~0.3 % of scale, 3 mm of camera distance at 1 m). Vertices near
    the mesh border, hidden ones and those of internal contours (covered just outside) are
    skipped. Each rim vertex takes the nearest (sub-pixel) head-mask boundary point and its
    outward normal; pairs farther than ``max_px`` are dropped. Returns (view (K,), vertex (K,),
    target (K, 2), normal (K, 2)) or None. ``frag``: this state's dense Fragments, when already
    rasterized."""
    pts_map, nrm_map, f = ctx.boundary()
    e_v, e_f, near_border = ctx.edges()
    verts = subject_vertices(ctx, st)
    vv, _ = view_geometry(ctx, st, verts)
    R = st.R()
    C = -(R.transpose(1, 2) @ st.cam_t[..., None])[..., 0]
    fv = vv[:, ctx.flame.faces]                                             # (N, F, 3, 3)
    fn = torch.cross(fv[:, :, 1] - fv[:, :, 0], fv[:, :, 2] - fv[:, :, 0], dim=-1)
    front = (fn * (fv[:, :, 0] - C[:, None])).sum(-1) < 0                    # (N, F)
    sil = front[:, e_f[:, 0]] != front[:, e_f[:, 1]]                        # (N, E)
    N, V = vv.shape[:2]
    rim = torch.zeros(N, V, dtype=torch.bool, device=vv.device)
    ev, ee = torch.nonzero(sil, as_tuple=True)
    rim[ev, e_v[ee, 0]] = True
    rim[ev, e_v[ee, 1]] = True
    rim &= (ctx.view_weights[:, None] > 0) & ~near_border[None]
    uv = project(vv, st.K(), R, st.cam_t)
    Hs, Ws = pts_map.shape[1:3]
    ix = (uv[..., 0] * f).floor().long()
    iy = (uv[..., 1] * f).floor().long()
    rim &= (ix >= 0) & (ix < Ws) & (iy >= 0) & (iy < Hs)
    view, vert = torch.nonzero(rim, as_tuple=True)
    if view.numel() == 0:
        return None
    tgt = pts_map[view, iy[view, vert], ix[view, vert]]
    nrm = nrm_map[view, iy[view, vert], ix[view, vert]]
    keep = (uv[view, vert] - tgt).norm(dim=-1) < max_px
    # Internal occluding contours (nose over cheek, ear, the far cheek behind the face) have
    # silhouette edges too; only vertices on the *outer* outline have empty space just outside
    # them. Checked on the current fit's coverage 1.5 px outward along the mask normal.
    from fitting.render.rasterize import RasterSettings, rasterize
    H, W = ctx.size
    if frag is None:
        frag = rasterize(vv, ctx.flame.faces, st.K(), R, st.cam_t, RasterSettings((H, W)))
    cov = frag.face_idx >= 0                                                # (N, H, W)
    out = uv[view, vert] + 1.5 * nrm
    ox, oy = out[:, 0].floor().long(), out[:, 1].floor().long()
    inside = (ox >= 0) & (ox < W) & (oy >= 0) & (oy < H)
    keep &= ~(inside & cov[view, oy.clamp(0, H - 1), ox.clamp(0, W - 1)])
    # ... and are not hidden: a contour just behind the outline-forming surface (the brow behind
    # the nose in a profile) passes the test above but lies up to a pixel inside the outline
    px = uv[view, vert].floor().long()
    px_x, px_y = px[:, 0].clamp(0, W - 1), px[:, 1].clamp(0, H - 1)
    z = ((R[view] @ vv[view, vert][..., None])[..., 0] + st.cam_t[view])[:, 2]
    zr = frag.depth[view, px_y, px_x]
    keep &= ~(cov[view, px_y, px_x] & (zr < z * (1 - getattr(ctx.cfg, "rim_occlusion_rel", 0.005))))
    if keep.sum() == 0:
        return None
    return view[keep], vert[keep], tgt[keep], nrm[keep]


def _bilinear(img_flat: torch.Tensor, H: int, W: int, view: torch.Tensor, uv: torch.Tensor) -> torch.Tensor:
    """Bilinear lookup of per-view images at continuous pixel positions, differentiable in ``uv``
    (forward and reverse mode; the cell index is piecewise constant). img_flat: (N*H*W, C) rows
    ``n*H*W + y*W + x``; view: (S,); uv: (S, 2) pixels with centres at +0.5 -> (S, C)."""
    x = (uv[:, 0] - 0.5).clamp(0, W - 1.001)
    y = (uv[:, 1] - 0.5).clamp(0, H - 1.001)
    x0, y0 = x.floor(), y.floor()
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]
    i00 = view * (H * W) + y0.long() * W + x0.long()
    return ((1 - fy) * ((1 - fx) * img_flat[i00] + fx * img_flat[i00 + 1])
            + fy * ((1 - fx) * img_flat[i00 + W] + fx * img_flat[i00 + W + 1]))


def _masked_blur(flat: torch.Tensor, mask: torch.Tensor, N: int, H: int, W: int, sigma: float) -> torch.Tensor:
    """Gaussian blur of (N*H*W, C) per-view images inside a (N*H*W, 1) mask (normalised
    convolution: outside pixels do not bleed in). Returns (N*H*W, C)."""
    r = int(math.ceil(3 * sigma))
    k = torch.exp(-0.5 * (torch.arange(-r, r + 1, device=flat.device, dtype=flat.dtype) / sigma) ** 2)
    k = k / k.sum()
    C = flat.shape[1]
    x = torch.cat([flat * mask, mask], 1).view(N, H, W, C + 1).permute(0, 3, 1, 2).reshape(N * (C + 1), 1, H, W)
    x = torch.nn.functional.conv2d(x, k.view(1, 1, 1, -1), padding=(0, r))
    x = torch.nn.functional.conv2d(x, k.view(1, 1, -1, 1), padding=(r, 0))
    x = x.view(N, C + 1, H, W).permute(0, 2, 3, 1).reshape(-1, C + 1)
    return x[:, :C] / x[:, C:].clamp_min(1e-6)


def _central_gradients(flat: torch.Tensor, N: int, H: int, W: int):
    """d/dx and d/dy (per pixel) of (N*H*W, C) per-view images by central differences."""
    img = flat.view(N, H, W, -1).permute(0, 3, 1, 2)
    pad = torch.nn.functional.pad(img, (1, 1, 1, 1), mode="replicate")
    gx = (pad[..., 1:-1, 2:] - pad[..., 1:-1, :-2]) / 2
    gy = (pad[..., 2:, 1:-1] - pad[..., :-2, 1:-1]) / 2
    return gx.permute(0, 2, 3, 1).reshape(flat.shape), gy.permute(0, 2, 3, 1).reshape(flat.shape)


@torch.no_grad()
def photo_samples(ctx: FitContext, st: FitState, frag=None):
    """Surface samples for the photometric rows of the LM, one per covered pixel of the current
    fit inside the photo's skin mask, at least one pixel inside the rendered outline (a step
    would slide an outline pixel off the surface). ``frag``: this state's dense Fragments, when
    already rasterized. Returns (view (S,), face (S,), bary (S, 3), flat pixel index (S,) into
    ``n*H*W + y*W + x``) or None."""
    H, W = ctx.size
    N = st.num_views
    if frag is None:
        frag = _rasterize_state(ctx, st)
    cov = (frag.face_idx >= 0).float()[:, None]                                  # (N, 1, H, W)
    inner = -torch.nn.functional.max_pool2d(-cov, 3, 1, 1)  # 3x3 erosion
    ok = inner * (ctx.skin_mask > 0.5) * (ctx.view_weights[:, None, None, None] > 0)
    pix = torch.nonzero(ok.reshape(-1) > 0)[:, 0]
    if pix.numel() == 0:
        return None
    view = torch.div(pix, H * W, rounding_mode="floor")
    return view, frag.face_idx.reshape(-1)[pix], frag.bary.reshape(-1, 3)[pix].detach(), pix


@torch.no_grad()
def _rasterize_state(ctx: FitContext, st: FitState):
    """Dense Fragments of every view of the current fit at fitting resolution."""
    from fitting.render.rasterize import RasterSettings, rasterize
    vv, _ = view_geometry(ctx, st, subject_vertices(ctx, st))
    return rasterize(vv, ctx.flame.faces, st.K(), st.R(), st.cam_t, RasterSettings(ctx.size))


@torch.no_grad()
def solve_appearance(ctx: FitContext, st: FitState, samples, rounds: int = 8,
                     tol: float = 1e-5) -> tuple[FitState, torch.Tensor]:
    """Texture code and per-view SH that best explain the photo at the samples (G = 1, texture
    space): colour = (mean + basis code) * (Y(n) . sh_view) in least squares, plus a weak
    N(0, 1) prior on the code. Returns (state with the new ``tex`` and ``sh``, the fitted colour
    of every sample (S, 3)).

    The problem is bilinear. Alternating the two linear solves converges slowly along the
    albedo-versus-lighting valley (measured on the demo: 4 rounds left 2.8x the converged
    residual, and the geometry bent to explain the rest), so this is variable projection: the
    SH is always the exact least-squares solution for the current code, and the code takes
    Gauss-Newton steps on the reduced problem (the SH eliminated by a Schur complement), for
    at most ``rounds`` steps or until the cost drops by less than ``tol`` relatively."""
    from fitting.render.renderer import view_packing
    from fitting.render.shading import sh_basis, vertex_normals
    from fitting.render.texture import uv_to_grid
    view, face, bary, pix = samples
    ts = ctx.texspace
    N, S = st.num_views, len(view)
    vv, _ = view_geometry(ctx, st, subject_vertices(ctx, st))
    faces = ctx.flame.faces.long()
    vn = vertex_normals(vv, faces)
    n = (vn[view[:, None], faces[face]] * bary[..., None]).sum(1)
    Y = sh_basis(n / n.norm(dim=-1, keepdim=True).clamp_min(1e-12))                  # (S, 9)
    vt, ft = ctx.uvs()
    uv = (vt[ft[face]] * bary[..., None]).sum(1)
    Kt = ts.n_tex
    stack = torch.cat([ts.mean[None], ts.basis.reshape(1, Kt * 3, *ts.basis.shape[-2:])], 1)
    smp = torch.nn.functional.grid_sample(stack, uv_to_grid(uv)[None, None].to(stack), mode="bilinear",
                                          padding_mode="border", align_corners=False)[0, :, 0].t()
    mean, basis = smp[:, :3], smp[:, 3:].reshape(S, Kt, 3).transpose(1, 2)             # (S, 3), (S, 3, Kt)
    img = ctx.images.permute(0, 2, 3, 1).reshape(-1, 3)[pix]                           # (S, 3)
    slot, m = view_packing(view, N)            # samples are sorted by view: zero-padded (N, m) batches
    Yp = Y.new_zeros(N * m, 9).index_copy_(0, slot, Y).view(N, 1, m, 9)
    eye9 = torch.eye(9, device=Y.device, dtype=Y.dtype)
    prior = 1e-4   # code ~ N(0, 1) against colour noise 0.01 (a ridge of w_tex x samples biased the code)

    def padded(x):                             # (S, 3, C) -> (N, 3, m, C)
        return x.new_zeros(N * m, *x.shape[1:]).index_copy_(0, slot, x).view(N, m, 3, -1).transpose(1, 2)

    def light(code):
        """Exact SH for a code: per view and channel 9x9 normal equations. -> alb, A_hh, sh, shade."""
        alb = mean + basis @ code                                                        # (S, 3)
        aY = padded(alb[..., None] * Y[:, None, :])                                      # (N, 3, m, 9)
        A = aY.transpose(-1, -2) @ aY + 1e-6 * eye9                                      # (N, 3, 9, 9)
        b = aY.transpose(-1, -2) @ padded(img[..., None])                                # (N, 3, 9, 1)
        sh = torch.linalg.solve(A, b)[..., 0].transpose(1, 2)                           # (N, 9, 3)
        shade = (Y[:, :, None] * sh[view]).sum(1)                                        # (S, 3)
        return alb, A, sh, shade

    def cost(code, alb, shade):
        return float(((alb * shade - img) ** 2).sum()) + prior * float(code @ code)

    code = st.tex[0].clone()
    alb, A_hh, sh, shade = light(code)
    c0 = cost(code, alb, shade)
    for _ in range(rounds):
        r = alb * shade - img                                                            # (S, 3)
        Jc = shade[..., None] * basis                                                    # (S, 3, Kt)
        A_cc = torch.einsum("skt,sku->tu", Jc, Jc) + prior * torch.eye(Kt, device=Y.device, dtype=Y.dtype)
        g_c = torch.einsum("skt,sk->t", Jc, r) + prior * code
        # cross blocks d(colour)/d(code) x d(colour)/d(sh) per view and channel: (N, 3, Kt, 9)
        A_ch = padded(Jc * alb[..., None]).transpose(-1, -2) @ Yp
        X = torch.linalg.solve(A_hh, A_ch.transpose(-1, -2))                             # A_hh^-1 A_ch^T
        M = A_cc - torch.einsum("nktj,nkju->tu", A_ch, X)
        # the SH gradient is zero at its exact solve (up to the 1e-6 ridge), so it drops out
        step = -torch.linalg.solve(M, g_c)
        for _try in range(4):                  # Gauss-Newton on a bilinear problem: backtrack if needed
            cand = code + step
            alb1, A1, sh1, shade1 = light(cand)
            c1 = cost(cand, alb1, shade1)
            if c1 <= c0:
                break
            step = step / 2
        else:
            break
        code, alb, A_hh, sh, shade = cand, alb1, A1, sh1, shade1
        done = c0 - c1 <= tol * c0
        c0 = c1
        if done:
            break
    out = st.detach()
    out.tex = code[None].to(st.tex)
    out.sh = sh.to(st.sh)
    return out, alb * shade


def _apply_delta(st: FitState, dx: torch.Tensor, N, G, S, E, n_cam, refine) -> FitState:
    out = st.detach()
    d = dx[: 6 * N].reshape(N, 6)
    out.cam_rot = matrix_to_rot(axis_angle_to_matrix(d[:, :3]) @ st.R())
    out.cam_t = st.cam_t + d[:, 3:]
    if refine:
        out.log_focal = st.log_focal + dx[6 * N]
    co = dx[n_cam:].reshape(G, S + E + 3)
    out.shape = st.shape + co[:, :S]
    out.expression = st.expression + co[:, S:S + E]
    out.pose = torch.cat([st.pose[:, :6], st.pose[:, JAW] + co[:, S + E:], st.pose[:, 9:]], 1)
    return out


def stage_geometry(ctx: FitContext, state: FitState, start_round: int = 0) -> FitState:
    """Landmark fit: ``geom_rounds`` rounds of Levenberg-Marquardt (:func:`lm_geometry`) over
    cameras, focal, shape, expression and jaw; the first ``geom_static_rounds`` use the 51
    static points, later ones all 68 with the contour down-weighted by ``w_contour``; with
    ``w_photo_gn > 0`` (texture space, one subject) a last round of ``photo_gn_iters`` adds the
    photometric rows (see :func:`lm_geometry`). SfM tracks (``ctx.tracks``) take part from the
    start when their points are set (trusted SfM), else from the first round after the static
    ones, their points triangulated from the cameras of that moment; with
    tracks, the landmarks of profile views are dropped first and those of views that disagree
    with the fit after each round (:func:`distrust_profiles`, :func:`distrust_outlier_views`). Then
    ``geom_iters`` optional Adam iterations on the same loss (0 by default: LM converges).
    Records go to ``ctx.history['geometry']``."""
    c = ctx.cfg
    st = state.detach()
    hist = ctx.history.setdefault("geometry", [])
    # the photometric round needs a texture space (a closed-form albedo) and one subject
    photo_round = (getattr(c, "w_photo_gn", 0.0) > 0 and getattr(c, "photo_gn_iters", 0) > 0
                   and ctx.texspace is not None and state.num_subjects == 1)
    if ctx.tracks is not None and start_round == 0:
        distrust_profiles(ctx, st)
    last = c.geom_rounds + int(photo_round) - 1
    rounds = _bar(ctx, range(start_round, last + 1), "geometry")
    for rnd in rounds:
        static = rnd < c.geom_static_rounds
        if ctx.tracks is not None and not static and ctx.tracks.points is None:
            # without trusted SfM points, the tracks join once the landmarks have fixed focal
            # and depth: with few views the tracks alone leave a bas-relief valley, and the LM
            # stays in the part of it nearest to where it starts
            ctx.tracks.triangulate(*cameras64(st))
        use_tracks = ctx.tracks is not None and ctx.tracks.points is not None
        if rnd >= c.geom_rounds:  # the photometric round: landmarks, outline and colour samples
            st = lm_geometry(ctx, st, False, c.photo_gn_iters, hist, rnd, use_rim=True, use_photo=True,
                             use_tracks=use_tracks)
        else:
            st = lm_geometry(ctx, st, static, c.geom_lm_iters, hist, rnd, use_rim=not static, use_tracks=use_tracks)
        if ctx.tracks is not None and rnd < last:
            distrust_outlier_views(ctx, st)
        if hist:
            rounds.set_postfix(lmk=f"{hist[-1]['landmark']:.3f}")
        if ctx.on_iter is not None:
            ctx.on_iter("geometry", rnd + 1, st)
    if c.geom_iters > 0:
        st = _adam_geometry(ctx, st, hist)
    return st


def _adam_geometry(ctx: FitContext, state: FitState, hist: list) -> FitState:
    c = ctx.cfg
    st = state.detach()
    pw = landmark_point_weights(c.w_contour, False, st.shape.device)
    jaw = st.pose[:, JAW].clone()
    for p in (st.shape, st.expression, st.cam_rot, st.cam_t, jaw):
        p.requires_grad_(True)
    opt = torch.optim.Adam([{"params": [st.shape, st.expression, jaw], "lr": c.geom_lr},
                            {"params": [st.cam_rot, st.cam_t], "lr": c.geom_lr * 0.01}])
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, c.geom_iters, eta_min=c.geom_lr * 0.05)
    for it in _bar(ctx, range(c.geom_iters), "geometry (adam)"):
        opt.zero_grad(set_to_none=True)
        pose = torch.cat([st.pose[:, :6], jaw, st.pose[:, 9:]], 1)
        _, lmk3d = view_geometry(ctx, st, subject_vertices(ctx, st, pose), pose)
        l_lmk = robust_landmark_loss(project_landmarks(st, lmk3d), ctx.landmarks, pw, ctx.view_weights,
                                     c.lmk_robust_px)
        loss = c.w_lmk * l_lmk + _prior(ctx, st.shape, st.expression, jaw)
        loss.backward()
        opt.step()
        sched.step()
        if it % 10 == 0:
            hist.append({"round": "adam", "iter": it, "landmark": float(l_lmk.detach())})
    st.pose = torch.cat([st.pose[:, :6], jaw.detach(), st.pose[:, 9:]], 1)
    return st.detach()


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
    expression, jaw, texture (code or map), SH per view, cameras (small steps) and the focal
    factor when refined. Losses go to ``ctx.history['photometric']``."""
    c = ctx.cfg
    st = state.detach()
    hist = ctx.history.setdefault("photometric", [])
    if c.photo_iters <= start_iter:
        return st
    jaw = st.pose[:, JAW].clone()
    # the focal factor is a leaf only when refined: a gradient nobody uses costs a K backward
    focal = [st.log_focal] if ctx.refine_focal else []
    leaves = [st.shape, st.expression, jaw, st.tex, st.sh, st.cam_rot, st.cam_t] + focal
    for p in leaves:
        p.requires_grad_(True)
    groups = [{"params": [st.shape, st.expression, jaw], "lr": c.photo_lr},
              {"params": [st.tex], "lr": c.tex_lr},
              {"params": [st.sh], "lr": c.sh_lr},
              {"params": [st.cam_rot, st.cam_t], "lr": c.photo_cam_lr}]
    if ctx.refine_focal:
        groups.append({"params": [st.log_focal], "lr": c.photo_cam_lr})
    opt = torch.optim.Adam(groups)
    if start_iter > 0 and ctx.photo_opt_state is not None:
        opt.load_state_dict(ctx.photo_opt_state)   # resumed: Adam's moments carry on
    # cosine decay to 10% over the stage (resumed runs continue the schedule where it stopped)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda k: 0.1 + 0.45 * (1 + math.cos(math.pi * min(k + start_iter, c.photo_iters) / c.photo_iters)))
    pw = landmark_point_weights(c.w_contour, False, st.shape.device)
    bar = _bar(ctx, range(start_iter, c.photo_iters), "photometric")
    warmup = int(round(c.photo_warmup * c.photo_iters))
    geo = [st.shape, st.expression, jaw, st.cam_rot, st.cam_t] + focal
    for it in bar:
        opt.zero_grad(set_to_none=True)
        # appearance first: with texture and light still wrong, geometry would bend to explain them
        for p in geo:
            p.requires_grad_(it >= warmup)
        pose = torch.cat([st.pose[:, :6], jaw, st.pose[:, 9:]], 1)
        verts = subject_vertices(ctx, st, pose)
        vv, lmk3d = view_geometry(ctx, st, verts, pose)
        out = render_views(ctx, st, vv)
        l_photo = masked_photometric_l1(out.image, ctx.images, ctx.skin_mask, out.alpha, ctx.view_weights)
        l_sil = silhouette_loss(out.silhouette, ctx.head_mask, ctx.view_weights)
        l_lmk = robust_landmark_loss(project_landmarks(st, lmk3d), ctx.landmarks, pw, ctx.view_weights,
                                     c.lmk_robust_px)
        l_prior = _prior(ctx, st.shape, st.expression, jaw, st.log_focal)
        if st.free_texture:
            l_tex = c.w_tex_smooth * texture_smoothness(st.tex)
        else:
            l_tex = c.w_tex * gaussian_prior(st.tex)
        loss = c.w_photo * l_photo + c.w_sil * l_sil + c.w_photo_lmk * l_lmk + l_prior + l_tex
        loss.backward()
        opt.step()
        sched.step()
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
