"""FLAME tracked over a monocular video: one identity, per-frame expression, jaw and head pose.

Levenberg-Marquardt on the 68 landmarks of a window of frames, in float64, on the FLAME
restricted to the landmarks' vertices (``fitting.flame.landmark_submodel``), with the
library's closed-form Jacobians (``fitting.jacobians.vertex_jacobian``,
``fitting.jacobians.point_jacobian``). The camera is one pinhole K shared by every frame
(from ``--fov``, not fitted: one view cannot separate focal length from distance); each
frame has its own world-to-camera rotation and translation, i.e. the head's pose in the
camera, with the world = FLAME's head frame (``R = exp(rot) @ FLIP``, as in fitting.render.cameras).

Unknowns of frame t (a block of D = 6 + n_exp + 3): rotation increment (3), translation (3),
expression (n_exp), jaw (3); shared: shape (n_shape), only while the identity is fitted.
Cost, in the units of the library's landmark stages (a frame's landmark term is the weighted
mean of its squared pixel residuals, so 1 = every point 1 px off):

    sum_t  sum_k w_k rho(r_tk) / sum_k w_k                                 landmarks (Cauchy, IRLS)
  + w_shape |shape|^2 + sum_t (w_exp |exp_t|^2 + w_pose |jaw_t / 0.1|^2)    priors (MAP semantics of
                                                                          fitting.stages: shape once)
  + w_smooth / sum_k w_k * sum_t |(q_t - q_{t-1}) / sigma|^2              temporal smoothness

The smoothness term is a random-walk prior: ``w_smooth = 1`` is its MAP weight for 1 px
landmark noise and frame-to-frame steps of standard deviation ``sigma`` (per block: rotation
and jaw in radians, translation in metres, expression coefficients); the rotation step is
``log(R_t R_{t-1}^T)``. A frame without landmarks has no data rows: the smoothness (and the
priors) carry it, and :func:`interpolate_missing` then sets it exactly between its neighbours.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from fitting.context import JAW
from fitting.init import pnp_views
from fitting.render.cameras import FLIP, matrix_to_rot, project_points, rot_to_matrix
from fitting.jacobians import point_jacobian, vertex_jacobian
from fitting.losses import landmark_point_weights
from fitting.rotations import axis_angle_to_matrix, matrix_to_axis_angle

__all__ = ["Weights", "map_prior_weights", "FrameParams", "fold_identity", "lm_frames", "pnp_init", "select_keyframes",
           "interpolate_missing", "model_landmarks"]


@dataclass
class Weights:
    """Loss weights and robust scale (see the module docstring)."""

    w_shape: float = 1e-3
    w_exp: float = 1e-3
    w_pose: float = 0.018
    jaw_side: float = 400.0      # the jaw prior's factor about y and z (a jaw opens about x)
    w_contour: float = 0.3
    lmk_robust_px: float = 3.0
    w_smooth: float = 1.0
    sigma_rot: float = 0.03      # rad per frame
    sigma_trans: float = 0.003   # m per frame
    sigma_exp: float = 0.15      # coefficient units per frame
    sigma_jaw: float = 0.03      # rad per frame


def map_prior_weights(noise_px: float = 1.0, sigma_shape: float = 1.0, sigma_exp: float = 0.5, sigma_jaw: float = 0.1,
                      contour_weight: float = 0.3) -> dict:
    """{"w_shape", "w_exp", "w_pose"}: the MAP weights of the priors N(0, sigma^2) (per coefficient;
    the jaw's in radians) for landmarks with ``noise_px`` of Gaussian noise per coordinate.

    A frame's landmark term is a weighted mean over the 68 points (weights sum to
    51 + 17 ``contour_weight``), so the negative log posterior, times 2 noise^2 / sum_k w_k, is
    this module's cost: w = noise^2 / (sigma^2 sum_k w_k), the jaw's on jaw / 0.1 rad. Exact
    when every point has that noise (``contour_weight`` = 1); with contour weight c < 1 the
    contour is treated as noise / sqrt(c).
    """
    norm = float(landmark_point_weights(contour_weight).sum())
    n2 = noise_px ** 2
    return {"w_shape": n2 / (sigma_shape ** 2 * norm), "w_exp": n2 / (sigma_exp ** 2 * norm),
            "w_pose": n2 * 0.1 ** 2 / (sigma_jaw ** 2 * norm)}


@dataclass
class FrameParams:
    """Per-frame parameters, (T, ...) float64 tensors: rot (world-to-camera, FLIP-relative
    axis-angle), trans (m), exp (n_exp), jaw (axis-angle)."""

    rot: torch.Tensor
    trans: torch.Tensor
    exp: torch.Tensor
    jaw: torch.Tensor

    def __len__(self) -> int:
        return self.rot.shape[0]

    def __getitem__(self, idx) -> "FrameParams":
        return FrameParams(self.rot[idx], self.trans[idx], self.exp[idx], self.jaw[idx])

    def vector(self) -> torch.Tensor:
        """(T, D) blocks in the LM's layout [rot, trans, exp, jaw]."""
        return torch.cat([self.rot, self.trans, self.exp, self.jaw], 1)

    def clone(self) -> "FrameParams":
        return FrameParams(self.rot.clone(), self.trans.clone(), self.exp.clone(), self.jaw.clone())

    @staticmethod
    def cat(parts: list) -> "FrameParams":
        return FrameParams(*(torch.cat([getattr(p, k) for p in parts]) for k in ("rot", "trans", "exp", "jaw")))

    @staticmethod
    def zeros(T: int, n_exp: int, dtype=torch.float64, device=None) -> "FrameParams":
        z = dict(dtype=dtype, device=device)
        trans = torch.zeros(T, 3, **z)
        trans[:, 2] = 1.0
        return FrameParams(torch.zeros(T, 3, **z), trans, torch.zeros(T, n_exp, **z), torch.zeros(T, 3, **z))


@torch.no_grad()
def fold_identity(model, shape: torch.Tensor):
    """A copy of the FLAME ``model`` with the identity ``shape`` (S,) folded into its template and
    no shape components (n_shape = 0): the same vertices for every expression and pose, and
    the tracking Jacobians skip the S shape columns that a fixed identity does not need (the
    blend shapes and the joints are linear in the coefficients)."""
    import copy
    m = copy.deepcopy(model)
    S = model.n_shape
    m.v_template = model.v_template + torch.einsum("vck,k->vc", model.shapedirs[..., :S], shape.to(model.v_template))
    m.shapedirs = model.shapedirs[..., S:].contiguous()
    m.n_shape = 0
    return m


def _pose(jaw: torch.Tensor) -> torch.Tensor:
    pose = jaw.new_zeros(jaw.shape[0], 15)
    pose[:, JAW] = jaw
    return pose


def model_landmarks(model, K: torch.Tensor, shape: torch.Tensor, p: FrameParams) -> torch.Tensor:
    """(T, 68, 2) projected landmarks (fitting px) of the frames ``p`` for ``shape`` (S,); the
    contour follows each frame's yaw."""
    T = len(p)
    R = rot_to_matrix(p.rot)
    verts, _ = model(shape[None].expand(T, -1), p.exp, _pose(p.jaw))
    lmk3d = model.landmarks(verts, FLIP.to(R) @ R)
    return project_points(lmk3d, K[None].expand(T, 3, 3), R, p.trans)[0]


def _smooth_steps(prev: FrameParams | None, p: FrameParams) -> torch.Tensor:
    """(T, D) step of each frame from the one before (frame 0 from ``prev``, zero without)."""
    R = rot_to_matrix(p.rot)
    v = p.vector()
    steps = torch.zeros_like(v)
    if len(p) > 1:
        steps[1:] = v[1:] - v[:-1]
        steps[1:, :3] = matrix_to_axis_angle(R[1:] @ R[:-1].transpose(-1, -2))
    if prev is not None:
        Rp = rot_to_matrix(prev.rot[-1:])
        steps[0] = v[0] - prev.vector()[-1]
        steps[0, :3] = matrix_to_axis_angle(R[:1] @ Rp.transpose(-1, -2))[0]
    return steps


def lm_frames(model, K: torch.Tensor, obs: torch.Tensor, valid: torch.Tensor, shape: torch.Tensor, p: FrameParams,
              w: Weights, iters: int, *, fit_shape: bool = False, smooth: bool = True,
              prev: FrameParams | None = None, static_only: bool = False) -> tuple[torch.Tensor, FrameParams, dict]:
    """Levenberg-Marquardt on the frames of one window (or the identity's keyframes).

    model: landmark FLAME in float64; K: (3, 3) fitting px; obs: (T, 68, 2) landmarks (fitting
    px, +0.5 convention; anything where ``valid`` is False); valid: (T,) bool; shape: (S,);
    p: the start. fit_shape: the shape is an unknown too (identity fit); smooth: the temporal
    prior between consecutive frames, and between ``prev`` (the last frame before the window,
    held fixed) and frame 0. static_only: the 51 static landmarks only (a first round).
    Returns (shape, params, info {"cost", "iters", "landmark_rmse_px" (T,)}).
    """
    dt, dev = torch.float64, K.device
    T, E = len(p), p.exp.shape[1]
    S = shape.shape[0]
    D = 6 + E + 3
    n = T * D + (S if fit_shape else 0)
    obs = torch.where(valid[:, None, None], obs, torch.zeros_like(obs)).to(dt)
    pw = landmark_point_weights(w.w_contour, static_only, dev).to(dt)            # (68,)
    norm = float(landmark_point_weights(w.w_contour, False, dev).sum())
    fw = valid.to(dt)                                                            # (T,)
    jaw_w = torch.tensor([1.0, w.jaw_side, w.jaw_side]) * w.w_pose / 0.01
    prior_block = torch.cat([torch.zeros(6), torch.full((E,), w.w_exp), jaw_w]).to(dev, dt)
    sig = torch.cat([torch.full((3,), w.sigma_rot), torch.full((3,), w.sigma_trans),
                     torch.full((E,), w.sigma_exp), torch.full((3,), w.sigma_jaw)]).to(dev, dt)
    c2 = (w.w_smooth / norm) / sig ** 2 if smooth and w.w_smooth > 0 else torch.zeros(D, dtype=dt, device=dev)
    Kb = K.to(dt)[None].expand(T, 3, 3)
    ar = torch.arange(T, device=dev)
    lv = ar.repeat_interleave(68)

    def residuals(shp, q):
        return model_landmarks(model, K.to(dt), shp, q) - obs                    # (T, 68, 2)

    def cost(shp, q, r, pt_w):
        data = float((pt_w * (r ** 2).sum(-1)).sum())
        pri = float((q.exp ** 2).sum() * w.w_exp + (jaw_w.to(dev, dt) * q.jaw ** 2).sum())
        if fit_shape:
            pri += float(w.w_shape * (shp ** 2).sum())
        sm = float((c2 * _smooth_steps(prev, q) ** 2).sum()) if c2.any() else 0.0
        return data + pri + sm

    def apply(shp, q, dx):
        d = dx[:T * D].reshape(T, D)
        R = axis_angle_to_matrix(d[:, :3]) @ rot_to_matrix(q.rot)
        q2 = FrameParams(matrix_to_rot(R), q.trans + d[:, 3:6], q.exp + d[:, 6:6 + E], q.jaw + d[:, 6 + E:])
        return (shp + dx[T * D:] if fit_shape else shp), q2

    # the smoothness term's Hessian is the path graph's Laplacian (x) diag(c2); frame 0 is also
    # tied to prev
    L = torch.zeros(T, T, dtype=dt, device=dev)
    if T > 1:
        L[ar[1:], ar[1:]] += 1
        L[ar[:-1], ar[:-1]] += 1
        L[ar[1:], ar[:-1]] -= 1
        L[ar[:-1], ar[1:]] -= 1
    if prev is not None:
        L[0, 0] += 1
    A_smooth = torch.kron(L, torch.diag(c2))

    lam, it, rmse = 1e-3, 0, None
    c = float("nan")
    for it in range(iters):
        with torch.no_grad():
            r = residuals(shape, p)
            irls = 1 / (1 + (r ** 2).sum(-1) / w.lmk_robust_px ** 2)
            pt_w = pw[None] * irls * fw[:, None] / norm                         # (T, 68)
        R = rot_to_matrix(p.rot)
        co = torch.cat([shape[None].expand(T, -1), p.exp, p.jaw], 1)
        Xv, Jv = vertex_jacobian(model, co, _pose(p.jaw))
        lf, lb = model.landmark_faces(T, FLIP.to(R) @ R)
        d = point_jacobian(Xv, Jv, lv, model.faces[lf.reshape(-1)], lb.reshape(-1, 3).to(dt), lv, R, p.trans, Kb)
        d = d.reshape(T, 136, -1)                                               # rows in (68, 2) order
        sw = pt_w.sqrt().repeat_interleave(2, 1)                                 # (T, 136)
        Jf = torch.cat([d[..., :6], d[..., 7 + S:]], -1) * sw[..., None]         # (T, 136, D)
        rw = r.reshape(T, 136) * sw
        A = torch.zeros(n, n, dtype=dt, device=dev)
        g = torch.zeros(n, dtype=dt, device=dev)
        Aff = torch.zeros(T, D, T, D, dtype=dt, device=dev)
        Aff[ar, :, ar, :] = Jf.transpose(1, 2) @ Jf                             # block diagonal (T, D, D)
        A[:T * D, :T * D] = Aff.reshape(T * D, T * D) + A_smooth
        g[:T * D] = (Jf.transpose(1, 2) @ rw[..., None])[..., 0].reshape(-1)
        steps = _smooth_steps(prev, p)
        gs = c2 * steps
        gs_next = torch.zeros_like(gs)
        gs_next[:-1] = gs[1:]
        g[:T * D] += (gs - gs_next).reshape(-1)
        A[:T * D, :T * D] += torch.diag(prior_block.repeat(T))
        g[:T * D] += (prior_block * torch.cat([torch.zeros_like(p.rot), torch.zeros_like(p.trans), p.exp,
                                               p.jaw], 1)).reshape(-1)
        if fit_shape:
            Js = d[..., 7:7 + S] * sw[..., None]                                 # (T, 136, S)
            A[T * D:, T * D:] = torch.einsum("tri,trj->ij", Js, Js) + w.w_shape * torch.eye(S, dtype=dt, device=dev)
            cross = (Jf.transpose(1, 2) @ Js).reshape(T * D, S)
            A[:T * D, T * D:] = cross
            A[T * D:, :T * D] = cross.T
            g[T * D:] = torch.einsum("tri,tr->i", Js, rw) + w.w_shape * shape
        c0 = cost(shape, p, r, pt_w)
        c = c0
        diag = A.diagonal().clamp_min(1e-9)
        accepted = False
        for _ in range(8):
            dx = -torch.linalg.solve(A + torch.diag(lam * diag + 1e-12), g)
            shp1, p1 = apply(shape, p, dx)
            with torch.no_grad():
                c1 = cost(shp1, p1, residuals(shp1, p1), pt_w)
            if c1 < c0:
                shape, p, c, accepted = shp1, p1, c1, True
                lam = max(lam / 3, 1e-7)
                break
            lam *= 4
        if not accepted or float(dx.abs().max()) < 1e-8:
            break
    with torch.no_grad():
        r = residuals(shape, p)
        rmse = (r ** 2).sum(-1).mean(-1).sqrt()
        rmse = torch.where(valid, rmse, torch.full_like(rmse, float("nan")))
    return shape, p, {"cost": c, "iters": it + 1, "landmark_rmse_px": rmse}


@torch.no_grad()
def pnp_init(model, K: torch.Tensor, obs: np.ndarray, valid: np.ndarray, shape: torch.Tensor) -> tuple:
    """Robust PnP (``fitting.init.pnp_views``, 51 static points) of every valid frame against
    the neutral head of ``shape``. obs: (T, 68, 2) fitting px. Returns (rot (T, 3), trans
    (T, 3), ok (T,)) as float64 tensors / bool array; frames that are not valid or fail are
    not ok (their pose is meaningless)."""
    T = len(obs)
    verts, _ = model(shape[None].to(torch.float64), None, None)
    lmk3d = model.landmarks(verts, torch.eye(3, dtype=torch.float64)[None])[0].cpu().numpy()
    Kn = np.broadcast_to(K.cpu().double().numpy(), (T, 3, 3))
    o = np.where(valid[:, None, None], obs, 0.0)
    size = max(float(K[0, 2]), float(K[1, 2])) * 2
    R, t, ok, _rmse, _ = pnp_views(o, lmk3d, Kn, reproj_px=max(4.0, 0.03 * size))
    ok = ok & valid
    rot = matrix_to_rot(torch.as_tensor(R, dtype=torch.float64))
    return rot, torch.as_tensor(t, dtype=torch.float64), ok


def select_keyframes(rot: torch.Tensor, obs: np.ndarray, ok: np.ndarray, k: int) -> np.ndarray:
    """Up to ``k`` frame indices among ``ok`` ones, spread over head pose and mouth opening by
    farthest-point sampling (an identity seen from several angles separates depth from shape).
    Features: the rotation (rad / 0.1) and the inner-lip gap over the inter-ocular distance."""
    idx = np.nonzero(ok)[0]
    if len(idx) <= k:
        return idx
    o = obs[idx]
    io = np.linalg.norm(o[:, 36:42].mean(1) - o[:, 42:48].mean(1), axis=-1)
    mouth = np.linalg.norm(o[:, 62] - o[:, 66], axis=-1) / np.maximum(io, 1e-6)
    f = np.concatenate([rot[idx].cpu().numpy() / 0.1, (mouth / 0.1)[:, None]], 1)
    chosen = [int(np.argmin(np.linalg.norm(f - np.median(f, 0), axis=1)))]  # the most typical frame first
    dist = np.linalg.norm(f - f[chosen[0]], axis=1)
    while len(chosen) < k:
        j = int(np.argmax(dist))
        chosen.append(j)
        dist = np.minimum(dist, np.linalg.norm(f - f[j], axis=1))
    return np.sort(idx[chosen])


def interpolate_missing(p: FrameParams, valid: np.ndarray) -> FrameParams:
    """Frames where ``valid`` is False take values interpolated between the nearest valid
    frames before and after (linear; the rotation along the geodesic), or the nearest valid
    frame's at either end. With no valid frame, ``p`` is returned unchanged."""
    valid = np.asarray(valid, bool)
    good = np.nonzero(valid)[0]
    if len(good) == 0 or valid.all():
        return p
    out = p.clone()
    R = rot_to_matrix(p.rot)
    for t in np.nonzero(~valid)[0]:  # missing frames are few; each is a closed form
        after = good[good > t]
        before = good[good < t]
        if len(before) == 0 or len(after) == 0:
            s = int(after[0] if len(before) == 0 else before[-1])
            out.rot[t], out.trans[t], out.exp[t], out.jaw[t] = p.rot[s], p.trans[s], p.exp[s], p.jaw[s]
            continue
        a, b = int(before[-1]), int(after[0])
        f = (t - a) / (b - a)
        rel = matrix_to_axis_angle(R[b] @ R[a].T)
        out.rot[t] = matrix_to_rot(axis_angle_to_matrix(f * rel) @ R[a])
        out.trans[t] = (1 - f) * p.trans[a] + f * p.trans[b]
        out.exp[t] = (1 - f) * p.exp[a] + f * p.exp[b]
        out.jaw[t] = (1 - f) * p.jaw[a] + f * p.jaw[b]
    return out
