"""Fitting with a calibrated rig (``--cameras PATH --camera_mode fixed | refine``).

Frames. The solver keeps working in FLAME's head frame (:mod:`fitting.state`): view i's
camera there is ``R_i = R_rig_i H_R``, ``t_i = R_rig_i H_t + t_rig_i``, where (R_rig_i,
t_rig_i) is the calibration (rig frame) and H = (H_R, H_t) the head's pose in the rig,
``X_rig = H_R X_head + H_t``. So the head's global rotation and translation are the unknowns
H: 6 in all, shared by the views, instead of 6 per view.

* ``fixed``: the geometry LM moves H only (:class:`fitting.geometry_terms.Unknowns` with
  ``rig``), the photometric stage leaves the cameras alone, and :func:`snap_to_rig` puts every
  camera back exactly on the calibration (float32 steps drift by ~1e-7).
* ``refine``: the same rounds, then one LM round with per-view corrections held to the
  calibration by :class:`CameraPrior` (and the shared focal factor when ``--refine_focal
  always``), and the scene's feature tracks (:func:`rig_tracks`): a view's landmarks tell a
  turn of its camera from a sideways shift only by the parallax across the head's depth, while
  tracks seen by several views fix each camera against the others.

Initialisation (:func:`initialize_from_rig`): the 51 static landmarks are triangulated in the
rig frame from the calibrated views and aligned (:func:`fitting.init.umeyama`) with the mean
head's; the similarity's scale, which should be 1 for a metric calibration, is reported. Then
again without the profiles' landmarks (:func:`fitting.landmark_trust.distrust_profiles`); when
one view is left with landmarks, the head's pose is its PnP pose.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fitting.calibration import load_calibration, undistort_points, undistort_view
from fitting.context import JAW, FitContext, subject_vertices, view_geometry
from fitting.geometry_terms import Unknowns
from fitting.images import image_size
from fitting.init import pnp_views, rotation_mean, umeyama
from fitting.landmark_trust import distrust_profiles
from fitting.render.cameras import camera_centers, matrix_to_rot
from fitting.rotations import matrix_to_axis_angle, right_jacobian_inverse, skew
from fitting.state import FitState

__all__ = ["Rig", "read_rig", "scene_cameras_json", "apply_rig", "rig_tracks", "undistorted_copies",
           "initialize_from_rig", "head_to_rig", "snap_to_rig", "place_cameras", "angle_deg", "calibration_sigma",
           "calibration_offsets", "CameraPrior", "TemporalPrior", "rig_report", "CAMERA_MODES"]

CAMERA_MODES = ("estimate", "fixed", "refine")
LANDMARKS = 68     # points per view in the landmark term (CameraPrior's weight)
SCALE_WARN = 0.2   # a calibration whose scale differs from the mean head's by more is probably not in metres


@dataclass
class Rig:
    """A calibration read for a scene: ``path``, ``mode`` ('fixed' | 'refine') and
    {image name: :class:`fitting.calibration.Calibrated`}; after :func:`apply_rig`, R (N, 3, 3)
    and t (N, 3) float64 of the scene's used views, in their order."""

    path: Path
    mode: str
    cameras: dict
    R: torch.Tensor | None = None
    t: torch.Tensor | None = None


def read_rig(cfg, scene_dir) -> Rig | None:
    """The calibration of ``--cameras`` for every image of ``scene_dir``/images (None without
    it). Raises ValueError before any work when it does not fit the images."""
    if not cfg.cameras:
        return None
    from process_data.files import list_images
    images = Path(scene_dir) / "images"
    names, _ = list_images(images)   # the views load_scene reads
    sizes = {n: image_size(images / n) for n in names}
    return Rig(Path(cfg.cameras), cfg.camera_mode, load_calibration(cfg.cameras, names, sizes))


def scene_cameras_json(rig: Rig) -> dict:
    """What :func:`fitting.scene.load_scene` takes instead of cameras.json: the first camera's
    intrinsics and size (every view's own K is set by :func:`apply_rig`), no SfM."""
    c = next(iter(rig.cameras.values()))
    return {"K": c.K.tolist(), "width": c.width, "height": c.height, "model": "PINHOLE", "distortion": [],
            "source": "known", "calibration": str(rig.path)}


def apply_rig(rig: Rig, scene) -> None:
    """Give the loaded scene the calibration's per-view K and remove lens distortion from its
    views (images, masks and landmarks at fitting size, by OpenCV), so the fit sees pinhole
    cameras. Sets ``rig.R``, ``rig.t`` for the used views."""
    scale = scene.scale.cpu().numpy().astype(np.float64)                          # (N, 2)
    K_orig = np.stack([rig.cameras[n].K for n in scene.names])                    # (N, 3, 3)
    S = np.tile(np.eye(3), (len(K_orig), 1, 1))                                   # original -> fitting pixels
    S[:, 0, 0], S[:, 1, 1] = scale[:, 0], scale[:, 1]
    K_fit = S @ K_orig
    lmk = scene.landmarks.cpu().numpy().astype(np.float64)
    for i, n in enumerate(scene.names):  # OpenCV works per image
        dist = rig.cameras[n].distortion
        if not np.any(dist):
            continue
        img = scene.images[i].permute(1, 2, 0).cpu().numpy()
        scene.images[i] = torch.from_numpy(undistort_view(img, K_fit[i], dist)).permute(2, 0, 1)
        for m in (scene.head_mask, scene.skin_mask):
            m[i, 0] = torch.from_numpy(undistort_view(m[i, 0].cpu().numpy(), K_fit[i], dist))
        lmk[i] = undistort_points(lmk[i], K_fit[i], dist)
    f32 = torch.float32
    scene.landmarks = torch.as_tensor(lmk, dtype=f32, device=scene.landmarks.device)
    scene.K_orig = torch.as_tensor(K_orig, dtype=f32)
    scene.K = torch.as_tensor(K_fit, dtype=f32, device=scene.K.device)
    rig.R = torch.as_tensor(np.stack([rig.cameras[n].R for n in scene.names]), dtype=torch.float64)
    rig.t = torch.as_tensor(np.stack([rig.cameras[n].t for n in scene.names]), dtype=torch.float64)


def rig_tracks(rig: Rig, scene, work_dir, tolerance_deg: float, inside=None, max_image_size: int = 1024):
    """The scene's feature tracks for ``refine`` (:class:`fitting.tracks.Tracks`, or None): SIFT
    matches triangulated under the calibration (``process_data.intrinsics.triangulate_known``;
    database in ``work_dir``). Only the observations matter: the geometry stage triangulates
    the points again from its own cameras. ``inside``: as :func:`fitting.tracks.load_tracks`.
    tolerance_deg: how far the calibration may be off (matches that disagree with it by more
    are not triangulated).

    SIFT runs on copies of the images (:func:`undistorted_copies`, in ``work_dir``) when the
    views distort, so that the keypoints are in the calibration's pinhole pixels, as the fit's
    images are; it sees small views doubled (``process_data.intrinsics.sift_upsampling``).
    None for a scene of one view: a track needs two."""
    from fitting.tracks import load_tracks
    from process_data.intrinsics import sift_upsampling, triangulate_known
    if len(scene.names) < 2:
        return None
    cams = [rig.cameras[n] for n in scene.names]
    image_dir = Path(scene.image_paths[0]).parent
    if any(np.any(c.distortion) for c in cams):
        image_dir = undistorted_copies(scene.image_paths, cams, Path(work_dir) / "undistorted")
    rec = triangulate_known(image_dir, scene.names, [(c.K, c.R, c.t, c.width, c.height) for c in cams],
                            work_dir, tolerance_deg=tolerance_deg, max_image_size=max_image_size,
                            upsample=sift_upsampling([(c.width, c.height) for c in cams], max_image_size))
    scale = scene.scale.cpu().numpy()                                       # the views' pixels -> fitting pixels
    lmk = scene.landmarks.cpu().numpy() / scale[:, None, :]
    return load_tracks(rec, scene.names, scale, landmarks_px=lmk, inside=inside)


def undistorted_copies(paths: list, cams: list, out: Path) -> Path:
    """The images ``paths`` as the pinhole cameras of their calibration ``cams`` (Calibrated,
    one per path) see them (:func:`fitting.calibration.undistort_view`: lens distortion
    removed, the same K), in ``out`` under their own names, which the tracks are looked up by
    (``process_data.intrinsics.write_sift_copy``). Returns ``out``."""
    from fitting.images import read_image
    from process_data.intrinsics import write_sift_copy
    out.mkdir(parents=True, exist_ok=True)
    for p, c in zip(map(Path, paths), cams):
        rgb = undistort_view(read_image(p), c.K, np.asarray(c.distortion, np.float64))
        write_sift_copy(out / p.name, rgb[..., ::-1])
    return out


def _triangulate(uv: np.ndarray, P: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Linear (DLT) triangulation. uv: (N, M, 2) pixels; P: (N, 3, 4) projections; w: (N,)
    view weights -> (M, 3)."""
    rows = np.concatenate([uv[..., :1] * P[:, None, 2] - P[:, None, 0],
                           uv[..., 1:] * P[:, None, 2] - P[:, None, 1]], 0)       # (2N, M, 4)
    rows = rows * np.concatenate([w, w])[:, None, None]
    _, _, Vt = np.linalg.svd(rows.transpose(1, 0, 2))                              # per point
    X = Vt[:, -1]
    return X[:, :3] / X[:, 3:]


def place_cameras(st: FitState, rig: Rig, H_R: np.ndarray, H_t: np.ndarray) -> FitState:
    """st with the cameras of the calibration seen from the head placed at (H_R, H_t)."""
    R = rig.R.numpy() @ H_R
    t = rig.R.numpy() @ H_t + rig.t.numpy()
    out = st.detach()
    out.cam_rot = matrix_to_rot(torch.as_tensor(R, dtype=torch.float32)).to(st.cam_rot.device)
    out.cam_t = torch.as_tensor(t, dtype=torch.float32).to(st.cam_t.device)
    return out


def _head_in_rig(ctx: FitContext, st: FitState, rig: Rig, lmk3d: np.ndarray
                 ) -> tuple[FitState, float | None, float | None]:
    """(st with the calibration's cameras placed at the head pose that aligns the mean head's
    static landmarks (lmk3d: (68, 3)) with those triangulated from the views whose landmarks are
    used, the similarity's scale, the rigid alignment's RMS in m); from one such view, its PnP
    pose (scale and RMS then None)."""
    K = st.K().cpu().double().numpy()
    w = (ctx.view_weights * ctx.landmark_weights).cpu().double().numpy()
    used = np.flatnonzero(w > 0)
    if len(used) == 0:
        raise ValueError(f"--cameras {rig.path}: the head's pose needs landmarks in a calibrated view, found none")
    if len(used) == 1:
        i = int(used[0])
        R, t, ok, _, _ = pnp_views(ctx.landmarks[i:i + 1].cpu().double().numpy(), lmk3d, K[i:i + 1])
        if not ok[0]:
            raise ValueError(f"--cameras {rig.path}: the head's pose from the landmarks of the one view that has "
                             f"usable ones (view {i} in the scene's sorted order) failed: PnP found no consistent "
                             "pose; check that view's landmarks.json entry")
        Rr, tr = rig.R.numpy()[i], rig.t.numpy()[i]
        return place_cameras(st, rig, Rr.T @ R[0], Rr.T @ (t[0] - tr)), None, None
    head_pts = lmk3d[17:]
    P = K @ np.concatenate([rig.R.numpy(), rig.t.numpy()[..., None]], -1)            # (N, 3, 4)
    rig_pts = _triangulate(ctx.landmarks[:, 17:].cpu().double().numpy(), P, w)
    s, _, _ = umeyama(head_pts, rig_pts, with_scale=True)
    _, Q, T = umeyama(head_pts, rig_pts, with_scale=False)
    rms = float(np.sqrt(((head_pts @ Q.T + T - rig_pts) ** 2).sum(1).mean()))
    return place_cameras(st, rig, Q, T), float(s), rms


@torch.no_grad()
def initialize_from_rig(ctx: FitContext, state: FitState, rig: Rig) -> tuple[FitState, dict]:
    """The head's pose in the rig from the landmarks: the 51 static points triangulated from the
    calibrated views (in the rig frame), aligned rigidly with the mean head's; then again
    without the profile views' landmarks, which :func:`fitting.landmark_trust.distrust_profiles`
    drops once that pose gives each view's yaw. Returns (state with the calibration's cameras in
    the head frame, info with the alignment's RMS in mm and the scale a similarity would take,
    ~1 for a metric calibration)."""
    mean = state.detach()
    mean.shape.zero_()
    mean.expression.zero_()
    mean.pose.zero_()
    _, lmk3d = view_geometry(ctx, mean, subject_vertices(ctx, mean))
    head = lmk3d[0].cpu().double().numpy()          # frontal contour; the static 51 are the same in every view
    st, s, rms = _head_in_rig(ctx, state.detach(), rig, head)
    used = ctx.landmark_weights.clone()
    distrust_profiles(ctx, st)
    if not torch.equal(used, ctx.landmark_weights):
        st, s, rms = _head_in_rig(ctx, st, rig, head)
    if s is not None and abs(s - 1) > SCALE_WARN:
        print(f"[fit] warning: --cameras {rig.path}: the landmarks triangulated with this calibration are "
              f"{s:.2f} x the mean head's size; is it in metres?")
    return st, {"source": ["calibration"] * st.num_views, "calibration_scale": s,
                "landmark_alignment_rms_mm": None if rms is None else rms * 1000}


def head_to_rig(st: FitState, rig: Rig) -> tuple[np.ndarray, np.ndarray]:
    """(H_R (3, 3), H_t (3,)): X_rig = H_R X_head + H_t, the head's pose in the rig that best
    explains the state's cameras (the rotations' chordal mean, the translations' mean)."""
    R = st.R().detach().cpu().double().numpy()
    t = st.cam_t.detach().cpu().double().numpy()
    Rr, tr = rig.R.numpy(), rig.t.numpy()
    H_R = rotation_mean(np.transpose(Rr, (0, 2, 1)) @ R)
    H_t = (np.transpose(Rr, (0, 2, 1)) @ (t - tr)[..., None])[..., 0].mean(0)
    return H_R, H_t


def snap_to_rig(st: FitState, rig: Rig) -> FitState:
    """st with every camera put exactly on the calibration at the head pose the cameras share."""
    return place_cameras(st, rig, *head_to_rig(st, rig))


def calibration_sigma(cfg, dtype=torch.float64, device=None) -> torch.Tensor:
    """(6,) one standard deviation of a camera's offset from its calibration: ``--camera_prior_deg``
    (rad) on each rotation-vector component, ``--camera_prior_mm`` (m) on each of its centre's."""
    return torch.tensor([math.radians(cfg.camera_prior_deg)] * 3 + [cfg.camera_prior_mm / 1000] * 3,
                        dtype=dtype, device=device)


def calibration_offsets(R: torch.Tensor, t: torch.Tensor, R0: torch.Tensor, C0: torch.Tensor) -> torch.Tensor:
    """(N, 6) [w, C - C0] of cameras R (N, 3, 3), t (N, 3) against calibrated rotations R0 and
    centres C0 (N, 3): w the rotation vector of R R0^T, C the centres (m)."""
    return torch.cat([matrix_to_axis_angle(R @ R0.transpose(1, 2)), camera_centers(R, t) - C0], 1)


class CameraPrior:
    """``refine``: each view's deviation from its calibrated camera,
    ``sum_i |w_i / sigma_r|^2 + |C_i - C*_i|^2 / sigma_c^2`` with ``w_i``
    the rotation vector of ``R_i R*_i^T`` and C the camera centres; sigma_r =
    ``--camera_prior_deg``, sigma_c = ``--camera_prior_mm``: the calibration's uncertainty, one
    standard deviation. It is weighed against the landmarks as if each were a measurement with
    1 px of noise (fitting size): the landmark term is the mean over the 68 N points, so this
    sum is divided by 68 N. (As a mean over views instead, 1 deg, 10 mm held the cameras ~8x
    too hard: a camera's turn and its sideways shift move the landmarks alike, only parallax
    tells them apart, and the prior then split a 1 deg turn into 0.66 deg + 5 mm.)
    On the centre, not on t: turning a camera about its own
    centre (what a bumped camera does) then costs rotation only, while t = -R C would charge it
    |C| x the angle of translation too. The interface of
    :class:`fitting.geometry_terms.GaussianPrior`, Gauss-Newton in the per-view tangents
    (R <- exp([w]) R, t <- t + d) and, when the focal is refined, its column (whose step moves
    every camera along its axis: :func:`fitting.geometry_terms.dolly`).

    The calibrated cameras (R*, C*) are the calibration placed at a head pose: with ``rig``, the
    one that best explains the cameras at each linearisation (:func:`snap_to_rig`), so the prior
    measures how far the cameras are from some placement of the calibrated rig, the head pose
    being a free unknown solved by alternation (at a fixed point the cameras are optimal for
    that pose and the pose for the cameras); without, the placement of ``start``. A pose held
    from the rounds before, where the perturbed rig moved as one, carries their misfit into
    every target: views that only the prior holds (profiles without landmarks) then stay with
    it while the others follow their landmarks (one frame of the bench sequence: 2.13 deg /
    16.7 mm off after the best similarity, against 0.196 deg / 1.65 mm with the pose re-placed)."""

    name = "camera_prior"

    def __init__(self, ctx: FitContext, unk: Unknowns, start: FitState, rig: Rig | None = None):
        self.sigma = calibration_sigma(ctx.cfg, start.cam_t.dtype, start.cam_t.device)
        self.rig = rig
        self._place(start)
        self.size, self.N, self.cols = unk.size, unk.num_views, unk.camera_columns()

    def _place(self, st: FitState) -> None:
        """The calibrated cameras: st's, or with a rig, the rig placed at st's head pose."""
        target = st if self.rig is None else snap_to_rig(st, self.rig)
        self.R, self.C = target.R().detach(), camera_centers(target.R(), target.cam_t).detach()

    def residuals(self, st: FitState) -> torch.Tensor:
        """(N, 6) [w_i, C_i - C*_i] / sigma / sqrt(68 N)."""
        return calibration_offsets(st.R(), st.cam_t, self.R, self.C) / self.sigma / math.sqrt(LANDMARKS * self.N)

    def cost(self, st: FitState) -> float:
        return float(self.residuals(st).pow(2).sum())

    def normal_equations(self, st: FitState) -> tuple[torch.Tensor, torch.Tensor, float]:
        """(A (size, size), g (size,), cost): 6 x 6 blocks on the views' pose columns, and
        their coupling with the focal column when the focal is refined; with a rig, the
        calibrated cameras are first placed at st's head pose."""
        if self.rig is not None:
            self._place(st)
        r = self.residuals(st)
        R, t, N = st.R(), st.cam_t, self.N
        RT = R.transpose(1, 2)
        # dw/dw = I; C = -R^T t moves by -R^T [t]x dw - R^T dt (R <- exp([dw]) R, t <- t + dt),
        # and by -R^T e_z t_z per unit of log focal (the focal step's dolly)
        J = torch.zeros(N, 6, self.cols.shape[1], dtype=r.dtype, device=r.device)
        J[:, :3, :3] = torch.eye(3, dtype=r.dtype, device=r.device)
        J[:, 3:, 3:6] = -RT
        J[:, 3:, :3] = -RT @ skew(t)
        if J.shape[2] == 7:
            J[:, 3:, 6] = -RT[:, :, 2] * t[:, 2:]
        J = J / self.sigma[:, None] / math.sqrt(LANDMARKS * N)
        Jt = J.transpose(1, 2)
        idx = (self.cols[:, :, None] * self.size + self.cols[:, None, :]).reshape(-1)
        A = torch.zeros(self.size * self.size, dtype=r.dtype, device=r.device).index_add_(0, idx, (Jt @ J).reshape(-1))
        g = torch.zeros(self.size, dtype=r.dtype, device=r.device).index_add_(
            0, self.cols.reshape(-1), (Jt @ r[..., None]).reshape(-1))
        return A.view(self.size, self.size), g, float(r.pow(2).sum())


class TemporalPrior:
    """Sequence tracking's random-walk prior tying a frame to the previous frame's estimate:
    ``sum |step / sigma|^2 / (68 N)`` over the head's rotation step (the rotation vector of
    ``H_R H_R,prev^T``, rad), its translation step ``H_t - H_t,prev`` (m), the expression's and
    the jaw's steps; sigmas are one standard deviation of a frame-to-frame step. Weighed like
    :class:`CameraPrior`: each of the 68 N landmarks is a 1 px measurement of the landmark term
    (a mean over them), so ``weight`` = 1 is the MAP weight for 1 px landmark noise (scale it
    by (1 px / sigma_lmk)^2 otherwise). Gauss-Newton in the rig unknowns of
    :class:`fitting.geometry_terms.Unknowns` (``rig``, one subject; ``shape_fixed`` or not):
    H_R <- H_R exp([w]), H_t <- H_t + H_R d, coefficients additively.

    H comes from view 0's camera (every view shares it in the rig parameterisation):
    ``H_R = R_rig_0^T R_0``, ``H_t = R_rig_0^T (t_0 - t_rig_0)``."""

    name = "temporal"

    def __init__(self, unk: Unknowns, rig: Rig, prev: FitState, sigma_rot: float, sigma_trans: float,
                 sigma_exp: float, sigma_jaw: float, weight: float = 1.0):
        if not unk.rig or unk.num_subjects != 1:
            raise ValueError("TemporalPrior needs the rig unknowns of one subject")
        dt, dev = prev.cam_t.dtype, prev.cam_t.device
        self.unk = unk
        self.Rr, self.tr = rig.R[0].to(dev, dt), rig.t[0].to(dev, dt)
        self.H_R, self.H_t = (h.detach() for h in self.head(prev))
        self.exp, self.jaw = prev.expression[0].detach(), prev.pose[0, JAW].detach()
        E = unk.n_exp
        self.sigma = torch.cat([torch.full((3,), sigma_rot), torch.full((3,), sigma_trans),
                                torch.full((E,), sigma_exp), torch.full((3,), sigma_jaw)]).to(dev, dt)
        self.scale = math.sqrt(weight / (LANDMARKS * unk.num_views))

    def head(self, st: FitState) -> tuple[torch.Tensor, torch.Tensor]:
        """(H_R (3, 3), H_t (3,)) of the state: the head's pose in the rig."""
        R0, t0 = st.R()[0], st.cam_t[0]
        return self.Rr.T @ R0, self.Rr.T @ (t0 - self.tr)

    def residuals(self, st: FitState) -> torch.Tensor:
        """(9 + E,) [rotation step, translation step, expression step, jaw step] / sigma x scale."""
        H_R, H_t = self.head(st)
        step = torch.cat([matrix_to_axis_angle(H_R @ self.H_R.T), H_t - self.H_t,
                          st.expression[0] - self.exp, st.pose[0, JAW] - self.jaw])
        return step / self.sigma * self.scale

    def cost(self, st: FitState) -> float:
        return float(self.residuals(st).pow(2).sum())

    def normal_equations(self, st: FitState) -> tuple[torch.Tensor, torch.Tensor, float]:
        """(A (size, size), g (size,), cost): rows on the head's 6 columns and the subject's
        expression and jaw columns."""
        r = self.residuals(st)
        unk, E = self.unk, self.unk.n_exp
        H_R, _ = self.head(st)
        phi = r[:3] * self.sigma[:3] / self.scale
        J = torch.zeros(len(r), unk.size, dtype=r.dtype, device=r.device)
        # H_R exp([w]) H_prev^T = D exp([H_prev w]) with D = exp([phi]): d phi / d w = Jr^-1(phi) H_prev
        J[:3, :3] = right_jacobian_inverse(phi) @ self.H_R
        J[3:6, 3:6] = H_R
        first = unk.coefficient_column(0, unk.n_shape)
        J[6:, first:first + E + 3] = torch.eye(E + 3, dtype=r.dtype, device=r.device)
        J = J / self.sigma[:, None] * self.scale
        return J.T @ J, J.T @ r, float(r @ r)


def angle_deg(Ra: torch.Tensor, Rb: torch.Tensor) -> torch.Tensor:
    """(N,) angle between rotations (N, 3, 3) in degrees, from the rotation vector: accurate down
    to 1e-7 deg, where the arccos of the trace (:func:`rotation_angle_deg`) bottoms out at ~0.02
    deg for float32 matrices."""
    return torch.rad2deg(matrix_to_axis_angle(Ra @ Rb.transpose(-1, -2)).norm(dim=-1))


def rig_report(st: FitState, rig: Rig) -> dict:
    """report.json's ``known_cameras``: the mode, the frame of the outputs, the head's pose in the
    rig and how far the fitted cameras are from the calibration (0 for ``fixed``)."""
    H_R, H_t = head_to_rig(st, rig)
    R = st.R().detach().cpu().double()
    t = st.cam_t.detach().cpu().double()
    R_rig = R @ torch.as_tensor(H_R).T                                          # fitted cameras, rig frame
    t_rig = t - (R_rig @ torch.as_tensor(H_t)[:, None])[..., 0]
    C = -(R_rig.transpose(1, 2) @ t_rig[..., None])[..., 0]
    C0 = -(rig.R.transpose(1, 2) @ rig.t[..., None])[..., 0]
    return {"path": str(rig.path), "mode": rig.mode,
            "frame": "FLAME head frame: the cameras, mesh and parameters of this result are in it; "
                     "X_rig = head_to_rig.R X_head + head_to_rig.t maps them into the calibration's frame",
            "head_to_rig": {"R": H_R.tolist(), "t": H_t.tolist()},
            "camera_rotation_change_deg": angle_deg(R_rig, rig.R).tolist(),
            "camera_center_change_mm": ((C - C0).norm(dim=-1) * 1000).tolist()}
