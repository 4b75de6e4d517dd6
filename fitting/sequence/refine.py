"""The identity's shape and the rig's calibration refined over several frames of a sequence
(``--refine_frames K``; docs/SEQUENCES.md); with ``--camera_mode fixed`` the shape alone, the
cameras held.

One frame's landmarks fix a camera only as well as their noise allows: on the synthetic rig,
``refine`` from the exact calibration ends ~0.07 deg / 0.5 mm away (docs/FITTING.md). The rig
does not move, so K frames see the same cameras again, with fresh landmark noise and the head
elsewhere; one solve over all of them averages that noise.

Unknowns (:class:`FrameRig`, float64):

* per camera c a correction in its own frame, x <- exp([w_c]) x + d_c: R_c <- exp([w_c]) R_c,
  t_c <- exp([w_c]) t_c + d_c (its centre moves by -R_c^T d_c whatever w_c);
* per frame k the head's rigid motion in the rig: H_R,k <- H_R,k exp([w_k]), H_t,k <- H_t,k +
  H_R,k d_k;
* per frame its expression and jaw, and the shape all frames share (the person's: the
  keyframe's alone carries that frame's landmark noise into every camera);
* when the keyframe's fit refined the focal length, one log factor of every camera's focal
  length, as that fit has it (:class:`fitting.geometry_terms.Unknowns`).

View (k, c), camera c looking at frame k, is R = R_c H_R,k, t = R_c H_t,k + t_c in frame k's head
frame. The row terms are the geometry LM's (landmarks and outline, :mod:`fitting.geometry_terms`)
over the K C views as K subjects; their per-view tangents are linear in these unknowns
(:meth:`FrameRig.tangent_map`), and so are the feature tracks' (each frame's, their points
eliminated): on real photos dlib's landmarks are pixels off, and the tracks keep the cameras
consistent with the images. Gauge: a rigid motion of the rig frame, undone in every head,
changes no image; :class:`RigPrior`, each camera held to the calibration, fixes it.
"""
from __future__ import annotations

import hashlib
import io
import json
import math
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from fitting.atomic import atomic_write_bytes
from fitting.context import JAW, FitContext
from fitting.geometry_terms import GaussianPrior, Unknowns, linearize, model_at, uses_outline
from fitting.known_cameras import LANDMARKS, angle_deg, calibration_offsets, calibration_sigma
from fitting.lm import NormalEquations, levenberg_marquardt
from fitting.render.cameras import camera_centers, matrix_to_rot
from fitting.rotations import axis_angle_to_matrix, right_jacobian_inverse, skew
from fitting.stages import cameras64, geometry_terms, track_weight
from fitting.state import FitState
from fitting.tracks import TrackTerm

ROW_BLOCK = 4096   # rows of the row terms spread to the per-view columns at a time (memory)

__all__ = ["FrameRig", "RigPrior", "TrackedFrame", "refine_over_frames", "solve_frame_rig", "stack_frames",
           "pick_frames", "unknowns_map"]


@dataclass(frozen=True)
class FrameRig:
    """The cameras of a rig and the head of K frames, in the rig frame: cam_R (C, 3, 3), cam_t
    (C, 3) world-to-camera; head_R (K, 3, 3), head_t (K, 3) with X_rig = head_R X_head + head_t;
    view_frame, view_camera (N,) long: the frame and camera of each view. Unknowns' order:
    [w_k, d_k per frame (6 K), w_c, d_c per camera (6 C)]."""

    cam_R: torch.Tensor
    cam_t: torch.Tensor
    head_R: torch.Tensor
    head_t: torch.Tensor
    view_frame: torch.Tensor
    view_camera: torch.Tensor

    @property
    def size(self) -> int:
        return 6 * (len(self.head_R) + len(self.cam_R))

    def views(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(R (N, 3, 3), t (N, 3)): each view's camera in its frame's head frame."""
        Rc, tc = self.cam_R[self.view_camera], self.cam_t[self.view_camera]
        HR, Ht = self.head_R[self.view_frame], self.head_t[self.view_frame]
        return Rc @ HR, (Rc @ Ht[..., None])[..., 0] + tc

    def moved(self, dx: torch.Tensor) -> "FrameRig":
        """The rig after a step dx (size,) (module docstring)."""
        K = len(self.head_R)
        h, c = dx[:6 * K].reshape(-1, 6), dx[6 * K:].reshape(-1, 6)
        E = axis_angle_to_matrix(c[:, :3])
        return replace(self, cam_R=E @ self.cam_R, cam_t=(E @ self.cam_t[..., None])[..., 0] + c[:, 3:],
                       head_R=self.head_R @ axis_angle_to_matrix(h[:, :3]),
                       head_t=self.head_t + (self.head_R @ h[:, 3:, None])[..., 0])

    def tangent_map(self) -> torch.Tensor:
        """(6 N, size): each view's tangents [w, d] of the geometry LM (R <- exp([w]) R, t <- t + d)
        to first order in the unknowns: w = R w_k + w_c, d = R d_k + d_c - [t]x w_c."""
        R, t = self.views()
        N, K = len(R), len(self.head_R)
        dt = R.dtype
        zero = torch.zeros_like(R)
        eye = torch.eye(3, dtype=dt).expand(N, 3, 3)
        head = torch.cat([torch.cat([R, zero], 2), torch.cat([zero, R], 2)], 1)          # (N, 6, 6)
        cam = torch.cat([torch.cat([eye, zero], 2), torch.cat([-skew(t), eye], 2)], 1)   # (N, 6, 6)
        six = torch.arange(6)
        M = torch.zeros(N, 6, self.size, dtype=dt)
        M.scatter_(2, (6 * self.view_frame[:, None] + six).expand(6, N, 6).transpose(0, 1), head)
        M.scatter_(2, (6 * K + 6 * self.view_camera[:, None] + six).expand(6, N, 6).transpose(0, 1), cam)
        return M.reshape(6 * N, self.size)

    def focal_map(self) -> torch.Tensor:
        """(6 N + 1,): a log focal step of these unknowns, which scales K alone, as the geometry
        LM's per-view tangents and its focal column. Its focal step also moves each view along
        its axis (:func:`fitting.geometry_terms.dolly`), which cameras that the frames share
        cannot follow, so each view's t_z step undoes that."""
        t = self.views()[1]
        col = torch.zeros(6 * len(t) + 1, dtype=t.dtype)
        col[5:-1:6] = -t[:, 2]
        col[-1] = 1
        return col


class RigPrior:
    """Each camera held to its calibration (R*_c, t*_c), as :class:`fitting.known_cameras.CameraPrior`
    holds one frame's views: ``sum_c |w_c / sigma_r|^2 + |C_c - C*_c|^2 / sigma_c^2`` over
    68 N, w_c the rotation vector of R_c R*_c^T, C the centres, sigma_r = ``--camera_prior_deg``,
    sigma_c = ``--camera_prior_mm`` (each of the 68 N landmarks a 1 px measurement)."""

    name = "camera_prior"

    def __init__(self, cfg, R0: torch.Tensor, t0: torch.Tensor, num_views: int):
        self.sigma = calibration_sigma(cfg)
        self.R0, self.C0 = R0, camera_centers(R0, t0)
        self.scale = 1 / math.sqrt(LANDMARKS * num_views)

    def residuals(self, rig: FrameRig) -> torch.Tensor:
        """(C, 6) [w_c, C_c - C*_c] / sigma x scale."""
        return calibration_offsets(rig.cam_R, rig.cam_t, self.R0, self.C0) / self.sigma * self.scale

    def cost(self, rig: FrameRig) -> float:
        return float(self.residuals(rig).pow(2).sum())

    def normal_equations(self, rig: FrameRig) -> tuple[torch.Tensor, torch.Tensor, float]:
        """(A (size, size), g (size,), cost) on the cameras' columns of ``rig``'s unknowns."""
        r = self.residuals(rig)
        C, first = len(rig.cam_R), 6 * len(rig.head_R)
        phi = r[:, :3] * self.sigma[:3] / self.scale
        J = torch.zeros(C, 6, 6, dtype=torch.float64)
        J[:, :3, :3] = right_jacobian_inverse(-phi)        # exp([w]) exp([phi]): the left Jacobian
        J[:, 3:, 3:] = -rig.cam_R.transpose(1, 2)          # C = -R^T t moves by -R^T d, not with w
        J = J / self.sigma[:, None] * self.scale
        A = torch.zeros(rig.size, rig.size, dtype=torch.float64)
        g = torch.zeros(rig.size, dtype=torch.float64)
        A[first:, first:] = torch.block_diag(*(J.transpose(1, 2) @ J))
        g[first:] = (J.transpose(1, 2) @ r[..., None]).reshape(-1)
        return A, g, float(r.pow(2).sum())


class _Estimate(NamedTuple):
    """What the solve moves: the state, the rig and the track points (P, 3) or None; the terms
    and the track blocks of the linearisation the next step comes from."""

    state: FitState
    rig: FrameRig
    points: torch.Tensor | None
    terms: list | None = None
    blocks: object | None = None


@dataclass
class _MappedBlocks:
    """A :class:`fitting.tracks.TrackBlocks` over the per-view unknowns seen through the linear
    map M (base, reduced) onto the reduced ones: A -> M^T A M, g -> M^T g, and the Schur
    complement's parts likewise; a reduced step dx is the per-view step M dx."""

    blocks: object
    M: torch.Tensor

    @property
    def A(self) -> torch.Tensor:
        return self.M.T @ self.blocks.A @ self.M

    @property
    def g(self) -> torch.Tensor:
        return self.M.T @ self.blocks.g

    @property
    def cost(self) -> float:
        return self.blocks.cost

    def reduce(self, lam: float):
        S, h, back = self.blocks.reduce(lam)
        return self.M.T @ S @ self.M, self.M.T @ h, lambda dx: back(self.M @ dx)


def _with_views(st: FitState, rig: FrameRig) -> FitState:
    R, t = rig.views()
    out = st.detach()
    out.cam_rot = matrix_to_rot(R.float())
    out.cam_t = t.float()
    return out


def solve_frame_rig(ctx: FitContext, st: FitState, rig: FrameRig, prior: RigPrior, iters: int,
                    hist: list | None = None, hold_cameras: bool = False) -> tuple[FitState, FrameRig]:
    """Levenberg-Marquardt on the landmark and outline rows of the stacked frames (``ctx``, ``st``:
    N views of K subjects, one person), their feature tracks (``ctx.tracks`` with its points set,
    or None; weighed by :func:`fitting.stages.track_weight`, the points eliminated), the
    coefficients' priors and ``prior``, over ``rig``'s unknowns (its cameras' left out with
    ``hold_cameras``), each frame's expression and jaw, the shape all frames share and, with
    ``ctx.refine_focal``, the log focal factor (``st.log_focal``). Returns (state, rig)."""
    base = Unknowns.of(st, ctx.refine_focal)                 # per-view tangents, [focal], per-subject coefficients
    n_views = 6 * base.num_views
    gauss = GaussianPrior(ctx, base, st.shape.device, st.shape.dtype)
    coef = _shared_shape_map(base)
    nf = int(ctx.refine_focal)
    solved = torch.ones(rig.size + nf + coef.shape[1], dtype=torch.bool)
    if hold_cameras:
        solved[6 * len(rig.head_R):rig.size] = False
    P = torch.eye(len(solved), dtype=torch.float64)[:, solved]   # the solved unknowns into all of the rig's
    size = P.shape[1]

    def full_map(r: FrameRig) -> torch.Tensor:
        return unknowns_map(r, coef, ctx.refine_focal) @ P

    tracks = ctx.tracks

    def linearize_at(x: _Estimate, it: int):
        s, terms = geometry_terms(ctx, x.state, base, False, use_rim=uses_outline(ctx), use_photo=False)
        M = full_map(x.rig)
        Mf = M.float()
        ne = NormalEquations.zeros(size, torch.float64)
        m0, lin = model_at(ctx, s, base), linearize(ctx, s, base)
        for t in terms:
            with torch.no_grad():
                r = t.residuals(m0)
            Jc = t.jacobian(lin)                             # (rows, 7 + P): compressed, small
            # all rows spread to the per-view columns (6 N + G P) at once would be the solve's
            # largest array (16 cameras x 8 frames at 512 px, 100 shape and 50 expression
            # coefficients: ~1e5 rows x ~2000 columns, 0.8 GB): a block of rows at a time
            for a in range(0, len(r), ROW_BLOCK):
                J = base.scatter(Jc[a:a + ROW_BLOCK], t.row_view[a:a + ROW_BLOCK]) @ Mf
                ne.add_rows(t.name, J.double(), r[a:a + ROW_BLOCK].double())
        A, g, cost = gauss.normal_equations(s)
        ne.add(gauss.name, M.T @ A.double() @ M, M.T @ g.double(), cost)
        Ap, gp, cost = prior.normal_equations(x.rig)
        pad = len(solved) - len(gp)
        ne.add(prior.name, P.T @ torch.nn.functional.pad(Ap, (0, pad, 0, pad)) @ P,
               P.T @ torch.nn.functional.pad(gp, (0, pad)), cost)
        blocks = None
        if tracks is not None:
            tracks.points = x.points
            weight, ctx.landmark_sigma_px = track_weight(ctx, terms[0].raw, terms[0].point_weights)
            blocks = _MappedBlocks(tracks.normal_equations(*cameras64(s), weight, base.camera_columns(), base.size),
                                   M)
            ne.add_eliminated("track", blocks)
        return _Estimate(s, x.rig, x.points, terms, blocks), ne

    def propose(x: _Estimate, dx: torch.Tensor, own: list):
        dx = P @ dx
        r = x.rig.moved(dx[:rig.size])
        step = torch.cat([torch.zeros(n_views, dtype=dx.dtype), dx[rig.size:rig.size + nf],
                          coef @ dx[rig.size + nf:]]).to(x.state.shape.dtype)
        cand = _with_views(base.apply(x.state, step), r)
        with torch.no_grad():
            m = model_at(ctx, cand, base)
            cost = sum(t.step_cost(m) for t in x.terms) + gauss.cost(cand) + prior.cost(r)
        if tracks is None:
            return _Estimate(cand, r, None), cost
        points = x.points + own[0]
        return _Estimate(cand, r, points), cost + tracks.step_cost(x.blocks.blocks, *cameras64(cand), points)

    def record(it: int, ne: NormalEquations, lam: float):
        if hist is not None:
            hist.append({"iter": it, **{k: ne.parts.get(k, 0.0) for k in ("landmark", "rim", "track", prior.name)},
                         "lambda": lam})

    x = levenberg_marquardt(_Estimate(_with_views(st, rig), rig, None if tracks is None else tracks.points),
                            linearize_at, propose, iters, record=record)
    if tracks is not None:
        tracks.points = x.points
    return x.state, x.rig


def unknowns_map(rig: FrameRig, coef: torch.Tensor, refine_focal: bool) -> torch.Tensor:
    """(6 N [+ 1] + G P, rig.size [+ 1] + coef's columns): the geometry LM's per-view unknowns
    (:class:`fitting.geometry_terms.Unknowns`: view tangents, [the focal], each subject's
    coefficients) as linear functions of the frame rig's (the rig's tangents, [the focal,
    scaling K alone: :meth:`FrameRig.focal_map`], the coefficients through ``coef``)."""
    n_views = 6 * len(rig.view_frame)
    M = torch.block_diag(rig.tangent_map(), torch.eye(int(refine_focal), dtype=torch.float64), coef)
    if refine_focal:
        M[:n_views + 1, rig.size] = rig.focal_map()
    return M


def _shared_shape_map(base: Unknowns) -> torch.Tensor:
    """(G P, S + G (E + 3)): every subject's [shape, expression, jaw] columns from one shape and
    each subject's own expression and jaw."""
    G, S, P = base.num_subjects, base.n_shape, base.P
    B = torch.zeros(G, P, S + G * (P - S), dtype=torch.float64)
    B[:, :S, :S] = torch.eye(S, dtype=torch.float64)
    for k in range(G):  # one block per subject
        B[k, S:, S + k * (P - S):S + (k + 1) * (P - S)] = torch.eye(P - S, dtype=torch.float64)
    return B.reshape(G * P, -1)


class TrackedFrame(NamedTuple):
    """A frame as :func:`fitting.sequence.track.load_frame` loads it (ctx, state at the identity,
    scene) and tracking placed it: head_R (3, 3), head_t (3,) in the rig, expression (E,), jaw (3,)."""

    ctx: FitContext
    state: FitState
    scene: object
    head_R: np.ndarray
    head_t: np.ndarray
    expression: np.ndarray
    jaw: np.ndarray


def stack_frames(frames: list, cameras: dict, flame, cfg, refine_focal: bool = False
                 ) -> tuple[FitContext, FitState, FrameRig]:
    """One problem of several :class:`TrackedFrame`'s views, frame k's views showing subject k;
    cameras: {image name: Calibrated} the rig's cameras (rig frame), in the order the FrameRig
    takes them; refine_focal: the focal lengths' common factor is an unknown too."""
    names = [n for f in frames for n in f.scene.names]
    order = list(cameras)
    view_frame = torch.cat([torch.full((f.scene.num_views,), k, dtype=torch.long) for k, f in enumerate(frames)])
    cam_R, cam_t = (torch.as_tensor(np.stack([getattr(c, k) for c in cameras.values()]), dtype=torch.float64)
                    for k in ("R", "t"))
    rig = FrameRig(cam_R, cam_t, torch.as_tensor(np.stack([f.head_R for f in frames])),
                   torch.as_tensor(np.stack([f.head_t for f in frames])), view_frame,
                   torch.tensor([order.index(n) for n in names]))
    ctx = FitContext(flame, *(torch.cat([getattr(f.ctx, k) for f in frames]) for k in
                              ("images", "landmarks", "skin_mask", "head_mask", "view_weights")), cfg, None,
                     refine_focal=refine_focal, progress=False,
                     landmark_weights=torch.cat([f.ctx.landmark_weights for f in frames]))
    st0 = frames[0].state
    st = FitState.create(len(names), view_frame, torch.cat([f.state.K0 for f in frames]), st0.shape.shape[1],
                         st0.expression.shape[1], tuple(st0.tex.shape[1:]))
    K = len(frames)
    st.shape = st0.shape.expand(K, -1).clone()
    st.tex = st0.tex.expand(K, *st0.tex.shape[1:]).clone()
    st.sh = torch.cat([f.state.sh for f in frames])
    st.expression = torch.as_tensor(np.stack([f.expression for f in frames])).float()
    st.pose[:, JAW] = torch.as_tensor(np.stack([f.jaw for f in frames])).float()
    return ctx, _with_views(st, rig), rig


def frame_tracks(cfg, frames: list, cameras: dict):
    """The frames' feature tracks (:func:`fitting.known_cameras.rig_tracks`, each frame's database
    in its preprocessing folder, observations inside the head mask) as one
    :class:`fitting.tracks.Tracks` over the stacked views (frame k's views after the views of the
    frames before it), or None when no frame has any."""
    from fitting.known_cameras import Rig, rig_tracks
    from fitting.pipeline import head_mask_test
    from fitting.tracks import Tracks
    rig = Rig(Path(cfg.cameras), "refine", cameras)
    parts, views, points = [], 0, 0
    for f in frames:
        tr = rig_tracks(rig, f.scene, f.scene.prep_dir / "rig_tracks", 3 * cfg.camera_prior_deg,
                        head_mask_test(f.scene))
        if tr is not None:
            parts.append(Tracks(tr.xyz, tr.rgb, tr.view + views, tr.point + points, tr.uv))
            points += tr.num_points
        views += f.scene.num_views
    if not parts:
        return None
    return Tracks(*(np.concatenate([getattr(p, k) for p in parts]) for k in ("xyz", "rgb", "view", "point", "uv")))


def pick_frames(usable: list, keyframe, count: int) -> list:
    """``count`` frames spread evenly over ``usable`` (frame folders), the keyframe among them."""
    if count >= len(usable):
        return list(usable)
    idx = set(np.round(np.linspace(0, len(usable) - 1, count)).astype(int).tolist())
    key = usable.index(keyframe) if keyframe in usable else None
    if key is not None and key not in idx:
        nearest = min(sorted(idx), key=lambda i: abs(i - key))   # ties: the earlier
        idx = (idx - {nearest}) | {key}
    return [usable[i] for i in sorted(idx)]


def _key(cfg, frames: list, ident, calibration: dict, hold_cameras: bool) -> str:
    """What the refined cameras depend on: the frames and their landmarks, the identity, the
    calibration, whether it is held and the options."""
    from fitting.sequence.track import inputs_key
    cal = {n: [np.asarray(getattr(c, k)).tolist() for k in ("K", "R", "t")] for n, c in sorted(calibration.items())}
    return hashlib.sha256((inputs_key(cfg, frames, ident, {}) + json.dumps([cal, hold_cameras])).encode()).hexdigest()


def refine_over_frames(cfg, dirs: list, keyframe: Path, ident, calibration: dict, unusable: dict,
                       path: Path, log=print, hold_cameras: bool = False) -> tuple:
    """The identity's shape and cameras refined over up to ``--refine_frames`` frames of ``dirs``
    (the keyframe among them), each first fitted alone with the identity's cameras
    (:func:`fitting.sequence.track.fit_frame`), then solved together (:func:`solve_frame_rig`)
    with each camera held to ``calibration`` ({image name: Calibrated}, the rig frame); with
    ``hold_cameras`` (``--camera_mode fixed``) the cameras stay as they are, the shape alone is
    refined, and no feature tracks are made (their points hang on the cameras, not on the head).
    Reuses ``path`` (.npz) when it holds a result for the same inputs, else writes it there; its
    steps go to ``log``, a line each. Returns (Identity with the refined cameras and shape,
    report dict)."""
    from fitting.model import load_model
    from fitting.sequence.track import fit_frame, load_frame
    t0 = time.perf_counter()
    frames = pick_frames([Path(d) for d in dirs if Path(d).name not in unusable], Path(keyframe),
                         cfg.refine_frames)
    cameras = list(ident.cameras)
    key = _key(cfg, frames, ident, calibration, hold_cameras)
    cached = _read(path, key)
    if cached is not None:
        log(f"[refine] reused {path} (the same frames, identity, calibration and options)")
    else:
        flame, texspace, _ = load_model(cfg, torch.device("cpu"))
        loaded = []
        for i, fd in enumerate(frames):
            frame, why = load_frame(cfg, fd, ident, flame, texspace)
            if frame is None:              # no face in any camera: the frame is left out
                log(f"[refine] {i + 1}/{len(frames)} frame {fd.name}: not tracked, {why}")
                continue
            # the start: the frame fitted alone (no colour rows needed), its loaded state kept
            _, pose = fit_frame(cfg, frame, None, None, photo=False)
            log(f"[refine] {i + 1}/{len(frames)} frame {fd.name}: tracked alone, the start "
                f"({time.perf_counter() - t0:.1f} s)")
            ctx, st, _, scene = frame
            loaded.append(TrackedFrame(ctx, st, scene, *pose))
        if len(loaded) < 2:
            return ident, {"frames": [], "why": f"{len(loaded)} of the {len(frames)} picked frames could be tracked"}
        ctx, st, rig = stack_frames(loaded, ident.cameras, flame, cfg, ident.focal_refined)
        tracks = frame_tracks(cfg, loaded, ident.cameras) if cfg.tracks != "off" and not hold_cameras else None
        if tracks is not None:
            px = float(loaded[0].scene.scale.mean())                    # fitting pixels per original pixel
            ctx.tracks = TrackTerm(tracks, robust_px=cfg.track_robust_px * px)
            ctx.track_sigma_px = cfg.track_sigma_px * px
            ctx.tracks.triangulate(*cameras64(st))
        log(f"[refine] feature tracks: {0 if tracks is None else tracks.num_points} points, "
            f"{0 if tracks is None else tracks.num_observations} observations ({time.perf_counter() - t0:.1f} s)")
        used = sorted({cameras[int(c)] for c in rig.view_camera})
        calib_R, calib_t = (torch.as_tensor(np.stack([getattr(calibration[n], k) for n in cameras]), dtype=torch.float64)
                            for k in ("R", "t"))
        prior = RigPrior(cfg, calib_R, calib_t, st.num_views)
        hist: list = []
        st, out = solve_frame_rig(ctx, st, rig, prior, cfg.refine_iters, hist, hold_cameras)
        # a camera no picked frame shows has only the prior to go by: it keeps the keyframe's pose
        unseen = torch.tensor([n not in used for n in cameras])
        out = replace(out, cam_R=torch.where(unseen[:, None, None], rig.cam_R, out.cam_R),
                      cam_t=torch.where(unseen[:, None], rig.cam_t, out.cam_t))
        costs = "".join(f", {k} cost {hist[0][k]:.4g} -> {hist[-1][k]:.4g}" for k in ("landmark", "track")
                        if hist and hist[0][k])
        what = "the shape (cameras held)" if hold_cameras else "the cameras and the shape"
        log(f"[refine] {what} solved over {len(loaded)} frames x {len(cameras)} cameras, {len(hist)} iterations"
            f"{costs} ({time.perf_counter() - t0:.1f} s)")
        cached = {"R": out.cam_R.numpy(), "t": out.cam_t.numpy(), "shape": st.shape[:1].numpy(),
                  "focal_scale": np.array(math.exp(float(st.log_focal))),
                  "names": np.array(cameras),
                  "frames": np.array([Path(f.scene.scene_dir).name for f in loaded]), "used": np.array(used),
                  "start_R": rig.cam_R.numpy(), "start_t": rig.cam_t.numpy(),
                  "tracks": np.array([0 if tracks is None else tracks.num_points,
                                      0 if tracks is None else tracks.num_observations]),
                  "cost": np.array([[h[k] for k in ("landmark", "rim", "track", "camera_prior")]
                                    for h in hist]).reshape(-1, 4)}
        buf = io.BytesIO()
        np.savez(buf, key=np.array(key), **cached)
        atomic_write_bytes(path, buf.getvalue())
        cached["seconds"] = time.perf_counter() - t0
    new = {n: c._replace(R=cached["R"][i], t=cached["t"][i]).with_focal_scale(float(cached["focal_scale"]))
           for i, (n, c) in enumerate(ident.cameras.items())}
    digest = hashlib.sha256((ident.digest + key).encode()).hexdigest()[:16]
    return (replace(ident, shape=torch.as_tensor(cached["shape"]), cameras=new, digest=digest),
            _report(cached, calibration, cameras))


def _read(path: Path, key: str) -> dict | None:
    if not path.is_file():
        return None
    with np.load(path) as z:
        return {k: z[k] for k in z.files if k != "key"} if str(z["key"]) == key else None


def _report(res: dict, calibration: dict, cameras: list) -> dict:
    """report.json's ``refine``: the frames, and per camera how far the refined camera is from
    the calibration and from the keyframe's refined camera (deg, mm)."""
    f64 = torch.float64
    R, t = torch.as_tensor(res["R"], dtype=f64), torch.as_tensor(res["t"], dtype=f64)
    R1, t1 = torch.as_tensor(res["start_R"], dtype=f64), torch.as_tensor(res["start_t"], dtype=f64)
    R0 = torch.as_tensor(np.stack([calibration[n].R for n in cameras]), dtype=f64)
    t0 = torch.as_tensor(np.stack([calibration[n].t for n in cameras]), dtype=f64)

    def moved(Ra, ta, Rb, tb):
        return ([round(float(a), 5) for a in angle_deg(Ra, Rb)],
                [round(float(d), 4) for d in (camera_centers(Ra, ta) - camera_centers(Rb, tb)).norm(dim=1) * 1000])

    rot0, cen0 = moved(R, t, R0, t0)
    rot1, cen1 = moved(R, t, R1, t1)
    out = {"frames": [str(f) for f in res["frames"]], "cameras": [str(n) for n in res["used"]],
           "camera_rotation_change_deg": dict(zip(cameras, rot0)), "camera_center_change_mm": dict(zip(cameras, cen0)),
           "change_from_keyframe_deg": dict(zip(cameras, rot1)), "change_from_keyframe_mm": dict(zip(cameras, cen1)),
           "focal_change_from_keyframe_pct": round((float(res["focal_scale"]) - 1) * 100, 4),
           "tracks": {"num_points": int(res["tracks"][0]), "num_observations": int(res["tracks"][1])},
           "cost_first_last": {k: [float(c[i]) for c in res["cost"][[0, -1]]] for i, k in
                               enumerate(("landmark", "rim", "track", "camera_prior"))} if len(res["cost"]) else {}}
    if "seconds" in res:
        out["seconds"] = round(float(res["seconds"]), 2)
    return out
