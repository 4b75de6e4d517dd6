"""The residual terms of the geometry LM (:func:`fitting.stages.lm_geometry`) and its unknowns.

Unknowns (:class:`Unknowns`): per view a rotation increment w (R <- exp([w]) R) and a
translation increment, the shared log focal factor (when refined; its step also moves each
camera along its axis, :func:`dolly`), per subject the
coefficients [shape, expression, jaw] (P of them; [expression, jaw] with ``shape_fixed``, the
identity held, as sequence tracking does). With a calibrated rig held fixed
(``rig``, see :mod:`fitting.known_cameras`) the cameras' unknowns are instead one rigid motion
of the head in its own frame, shared by every view: (R_i, t_i) <- (R_i exp([w]), t_i + R_i d),
which keeps every camera's pose relative to the others as the calibration gives it.

A residual of view i depends only on camera i and subject s(i), so each row term works with
*compressed* tangents: 7 + P columns [w (3), t (3), log focal, free coefficients (P)] shared by all
views, which :meth:`Unknowns.scatter` spreads to the full columns by each row's view. A row
term has:

* ``name`` and ``row_view`` (rows,): the view of each row;
* ``residuals(model)`` -> (rows,): weighted residuals of the head model at a point of the
  tangent space (:func:`model_at`); differentiable there, so the tests compare the Jacobian
  with ``torch.func.jacfwd`` of it;
* ``jacobian(lin)`` -> (rows, 7 + P): by the chain rule at the linearisation point
  (:class:`Linearization`, :func:`fitting.jacobians.point_jacobian`);
* ``step_cost(model)`` -> float: the cost of a candidate step.

Each term is built afresh every iteration at the current estimate: its IRLS weights (Cauchy)
and its correspondences (outline pairs, photometric samples) are held fixed within it.
:class:`GaussianPrior` is the coefficients' (and focal factor's) prior; the track term with
its own unknowns, the points, is :class:`fitting.tracks.TrackTerm`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from fitting.appearance import solve_appearance, solve_lighting
from fitting.context import JAW, FitContext
from fitting.correspondences import bilinear, central_gradients, masked_blur, photo_samples, rim_correspondences
from fitting.jacobians import point_jacobian, vertex_jacobian
from fitting.landmark_trust import placed_by_nothing
from fitting.losses import landmark_point_weights
from fitting.render.cameras import matrix_to_rot, project_points, scale_focal, view_rotation
from fitting.rotations import axis_angle_to_matrix
from fitting.state import FitState

__all__ = ["dolly", "Unknowns", "Model", "model_at", "Linearization", "linearize", "LandmarkTerm", "landmark_term",
           "OutlineTerm", "PhotoTerm", "term_rows", "GaussianPrior"]


@dataclass(frozen=True)
class Unknowns:
    """Column layout of the LM's unknowns: 6 per view (6 in all with ``rig``: the head's rigid
    motion), then the log focal (when refined), then P per subject: [shape, expression, jaw],
    or [expression, jaw] with ``shape_fixed`` (no shape columns at all, so the solve is smaller
    and the identity cannot drift)."""

    view_subject: torch.Tensor      # (N,) long
    num_subjects: int
    n_shape: int
    n_exp: int
    refine_focal: bool
    rig: bool = False
    shape_fixed: bool = False

    @classmethod
    def of(cls, st: FitState, refine_focal: bool, rig: bool = False, shape_fixed: bool = False) -> "Unknowns":
        return cls(st.view_subject, st.num_subjects, st.shape.shape[1], st.expression.shape[1], refine_focal, rig,
                   shape_fixed)

    @property
    def num_views(self) -> int:
        return len(self.view_subject)

    @property
    def first_free(self) -> int:
        """Index in [shape, expression, jaw] of the first coefficient with a column."""
        return self.n_shape if self.shape_fixed else 0

    @property
    def P(self) -> int:
        return self.n_shape + self.n_exp + 3 - self.first_free

    def coefficient_column(self, subject: int, k: int) -> int:
        """Column of coefficient k of [shape, expression, jaw] of a subject (k >= first_free)."""
        return self.n_cam + subject * self.P + k - self.first_free

    @property
    def focal_column(self) -> int:
        """The log focal's column (when refined): after the pose columns."""
        return 6 if self.rig else 6 * self.num_views

    @property
    def n_cam(self) -> int:
        return self.focal_column + int(self.refine_focal)

    @property
    def size(self) -> int:
        return self.n_cam + self.num_subjects * self.P

    def camera_columns(self) -> torch.Tensor:
        """(N, 6) or (N, 7) with the focal: each view's compressed camera tangents' columns."""
        dev = self.view_subject.device
        N = self.num_views
        first = torch.zeros(N, dtype=torch.long, device=dev) if self.rig else 6 * torch.arange(N, device=dev)
        cols = first[:, None] + torch.arange(6, device=dev)[None]
        if self.refine_focal:
            cols = torch.cat([cols, torch.full((N, 1), self.focal_column, device=dev)], 1)
        return cols

    def scatter(self, Jc: torch.Tensor, row_view: torch.Tensor) -> torch.Tensor:
        """Full Jacobian (rows, size) from compressed tangents Jc (rows, 7 + P)."""
        dev = Jc.device
        J = torch.zeros(len(Jc), self.size, device=dev, dtype=Jc.dtype)
        J.scatter_(1, self.camera_columns()[:, :6][row_view], Jc[:, :6])
        if self.refine_focal:
            J[:, self.focal_column] = Jc[:, 6]
        co_cols = self.n_cam + self.view_subject[:, None] * self.P + torch.arange(self.P, device=dev)[None]
        J.scatter_(1, co_cols[row_view], Jc[:, 7:])
        return J

    @staticmethod
    def coefficients(st: FitState) -> torch.Tensor:
        """(G, n_shape + n_exp + 3) [shape, expression, jaw] per subject, all of them."""
        return torch.cat([st.shape, st.expression, st.pose[:, JAW]], 1)

    def values(self, st: FitState) -> torch.Tensor:
        """(size,) the current values of the unknowns that have one (0 for camera increments)."""
        v = torch.zeros(self.size, device=st.shape.device, dtype=st.shape.dtype)
        if self.refine_focal:
            v[self.focal_column] = st.log_focal.reshape(())
        v[self.n_cam:] = self.coefficients(st)[:, self.first_free:].reshape(-1)
        return v

    def apply(self, st: FitState, dx: torch.Tensor) -> FitState:
        """The state moved by a step dx (size,)."""
        N, S, E = self.num_views, self.n_shape, self.n_exp
        out = st.detach()
        if self.rig:
            R = st.R()
            out.cam_rot = matrix_to_rot(R @ axis_angle_to_matrix(dx[:3]))
            out.cam_t = st.cam_t + (R @ dx[3:6, None])[..., 0]
        else:
            d = dx[: 6 * N].reshape(N, 6)
            out.cam_rot = matrix_to_rot(axis_angle_to_matrix(d[:, :3]) @ st.R())
            out.cam_t = st.cam_t + d[:, 3:]
        if self.refine_focal:
            out.log_focal = st.log_focal + dx[self.focal_column]
            out.cam_t = dolly(out.cam_t, dx[self.focal_column])
        co = dx[self.n_cam:].reshape(self.num_subjects, self.P)
        if self.shape_fixed:
            co = torch.cat([torch.zeros_like(st.shape), co], 1)
        out.shape = st.shape + co[:, :S]
        out.expression = st.expression + co[:, S:S + E]
        out.pose = torch.cat([st.pose[:, :6], st.pose[:, JAW] + co[:, S + E:], st.pose[:, 9:]], 1)
        return out


@dataclass
class Model:
    """The head as every view sees it: cameras R (N, 3, 3), t (N, 3), K (N, 3, 3), vertices
    (N, V, 3) in the head frame and the head's rotation (N, 3, 3) (global x neck)."""

    R: torch.Tensor
    t: torch.Tensor
    K: torch.Tensor
    verts: torch.Tensor
    head: torch.Tensor

    def project(self, X: torch.Tensor, view: torch.Tensor) -> torch.Tensor:
        """(M, 2) pixels of points X (M, 3), point m seen by view[m]."""
        return project_points(X[:, None], self.K[view], self.R[view], self.t[view])[0][:, 0]


def model_at(ctx: FitContext, st: FitState, unk: Unknowns, x: torch.Tensor | None = None) -> Model:
    """The model at the state moved by compressed tangents x (7 + P,), the same increment in
    every view and subject (what ``jacobian`` differentiates); x = None is the state itself.
    With ``unk.rig`` the camera tangents are the head's rigid motion (see :class:`Unknowns`)."""
    if x is None:
        x = torch.zeros(7 + unk.P, device=st.shape.device, dtype=st.shape.dtype)
    N, S, E = unk.num_views, unk.n_shape, unk.n_exp
    if unk.rig:
        R0 = st.R()
        R, t = R0 @ axis_angle_to_matrix(x[:3]), st.cam_t + (R0 @ x[3:6, None])[..., 0]
    else:
        R, t = axis_angle_to_matrix(x[:3].expand(N, 3)) @ st.R(), st.cam_t + x[3:6]
    co = unk.coefficients(st)
    co = torch.cat([co[:, :unk.first_free], co[:, unk.first_free:] + x[7:]], 1)
    pose = torch.cat([st.pose[:, :6], co[:, S + E:], st.pose[:, 9:]], 1)
    verts, _ = ctx.flame(co[:, :S], co[:, S:S + E], pose)
    head = axis_angle_to_matrix(pose[:, 0:3]) @ axis_angle_to_matrix(pose[:, 3:6])
    if unk.num_subjects == 1:
        vv, hv = verts.expand(N, -1, -1), head.expand(N, 3, 3)
    else:
        vv, hv = verts[unk.view_subject], head[unk.view_subject]
    return Model(R, dolly(t, x[6]), scale_focal(st.K0, st.log_focal + x[6]), vv, hv)


def dolly(t: torch.Tensor, log_step: torch.Tensor) -> torch.Tensor:
    """Translations t (N, 3) moved with a focal step of ``log_step`` (the focal scales by its
    exp): each camera moves along its axis by the same factor, so the head keeps its size and
    place in the image while the perspective changes. With few views the focal and the
    cameras' distance trade off along a curved valley of the cost; in this parameterisation
    the valley is nearly straight and the LM crosses it in a few steps."""
    return torch.cat([t[..., :2], t[..., 2:] * torch.exp(log_step)], -1)


@dataclass
class Linearization:
    """What the terms' Jacobians need at the current state: the cameras, FLAME's vertices X
    (G, V, 3) and their Jacobian J (G, V, 3, P) w.r.t. the free coefficients, the head's rotation
    per view (N, 3, 3); ``rig``: the camera tangents are the head's rigid motion."""

    R: torch.Tensor
    t: torch.Tensor
    K: torch.Tensor
    X: torch.Tensor
    J: torch.Tensor
    head: torch.Tensor
    view_subject: torch.Tensor
    rig: bool = False

    def point_rows(self, view: torch.Tensor, corners: torch.Tensor, bary: torch.Tensor) -> torch.Tensor:
        """(M, 2, 7 + P) d(u, v) of the mesh points sum_k bary_mk X[corners_mk] in view[m]."""
        d = point_jacobian(self.X, self.J, self.view_subject[view], corners, bary, view, self.R, self.t, self.K)
        if self.rig:
            # R_i exp([w]) = exp([R_i w]) R_i and t_i + R_i d: view i's own tangents times R_i
            Rv = self.R[view]                                                         # (M, 3, 3)
            d = torch.cat([d[..., :3] @ Rv, d[..., 3:6] @ Rv, d[..., 6:]], -1)
        return d


def linearize(ctx: FitContext, st: FitState, unk: Unknowns) -> Linearization:
    X, J = vertex_jacobian(ctx.flame, unk.coefficients(st), st.pose)
    J = J[..., unk.first_free:]     # a held shape has no columns (its closed-form part costs little)
    head = axis_angle_to_matrix(st.pose[:, 0:3]) @ axis_angle_to_matrix(st.pose[:, 3:6])
    return Linearization(st.R(), st.cam_t, st.K(), X, J, head[st.view_subject], st.view_subject, unk.rig)


class _RowTerm:
    """Shared by the row terms: the default candidate cost is the squared residuals."""

    name = ""
    row_view: torch.Tensor

    def residuals(self, m: Model) -> torch.Tensor:
        raise NotImplementedError

    def step_cost(self, m: Model) -> float:
        r = self.residuals(m)
        return float(r @ r)


class LandmarkTerm(_RowTerm):
    """The 68 landmarks of every view, weighted so that the term's cost is
    ``sum_i w_i rho(r_i) / sum_i pw_i`` (Cauchy rho of scale ``robust_px``, by IRLS). Each
    view's jaw-line contour is picked by its view direction, redone at every evaluation.

    point_weights: (N, 68) (0 for unused points and views). ``raw`` (N, 68, 2) holds the
    unweighted residuals at the linearisation point."""

    name = "landmark"

    def __init__(self, ctx: FitContext, m0: Model, point_weights: torch.Tensor, robust_px: float):
        self.ctx = ctx
        self.point_weights = point_weights
        with torch.no_grad():
            self.raw = self._pixels(m0) - ctx.landmarks
            w = point_weights / (1 + (self.raw ** 2).sum(-1) / robust_px ** 2)
        self.sw = (w / point_weights.sum().clamp_min(1e-8)).sqrt()                  # (N, 68)
        N = len(point_weights)
        self.row_view = torch.arange(N, device=point_weights.device).repeat_interleave(136)

    def _pixels(self, m: Model) -> torch.Tensor:
        lmk = self.ctx.flame.landmarks(m.verts, view_rotation(m.R, m.head))         # (N, 68, 3)
        return project_points(lmk, m.K, m.R, m.t)[0]

    def residuals(self, m: Model) -> torch.Tensor:
        return ((self._pixels(m) - self.ctx.landmarks) * self.sw[..., None]).reshape(-1)

    def jacobian(self, lin: Linearization) -> torch.Tensor:
        N = len(self.point_weights)
        faces, bary = self.ctx.flame.landmark_faces(N, view_rotation(lin.R, lin.head))
        view = torch.arange(N, device=lin.R.device).repeat_interleave(68)
        d = lin.point_rows(view, self.ctx.flame.faces[faces.reshape(-1)], bary.reshape(-1, 3).to(lin.X.dtype))
        return (d * self.sw.reshape(-1)[:, None, None]).reshape(-1, d.shape[-1])


def landmark_term(ctx: FitContext, m0: Model, static_only: bool) -> LandmarkTerm:
    """The landmark term with the options' point weights (contour down-weighted; static points
    only in the first rounds) and each view's weights."""
    c = ctx.cfg
    pw = landmark_point_weights(c.w_contour, static_only, m0.R.device)[None] \
        * (ctx.view_weights * ctx.landmark_weights)[:, None]
    return LandmarkTerm(ctx, m0, pw, c.lmk_robust_px)


# A view that neither its landmarks (dropped), SfM tracks nor a calibration place is held by its
# outline at least this much (against w_lmk), whatever --w_rim says: without it the view has no
# rows, stays where it was put while the head frame moves, and the photometric round pulls it
# off (docs/FITTING.md, "Profiles posed by their mask").
OUTLINE_ONLY_WEIGHT = 1.0


def outline_weights(ctx: FitContext) -> torch.Tensor:
    """(N,) the outline term's weight per view: ``w_rim``, at least ``OUTLINE_ONLY_WEIGHT`` for
    the views that nothing else places (:func:`fitting.landmark_trust.placed_by_nothing`), 0
    for dropped views."""
    w = torch.full_like(ctx.view_weights, ctx.cfg.w_rim)
    w = torch.where(placed_by_nothing(ctx), w.clamp_min(OUTLINE_ONLY_WEIGHT), w)
    return w * (ctx.view_weights > 0)


def uses_outline(ctx: FitContext) -> bool:
    """Whether the outline term has any view to weigh (see :func:`outline_weights`)."""
    return bool((outline_weights(ctx) > 0).any())


class OutlineTerm(_RowTerm):
    """Rim vertices against the head mask's outline: the signed distance ``n_k . (u_k - b_k)``
    of rim vertex k's projection u_k from its nearest outline point b_k along the outline's
    normal n_k, Cauchy (scale ``rim_robust_px``) by IRLS, the term's cost weighted by
    ``outline_weights / w_lmk`` (weight: a float or (K,) per pair) and averaged over the pairs
    (see :func:`fitting.correspondences.rim_correspondences` for which vertices pair)."""

    name = "rim"

    def __init__(self, m0: Model, view, vert, target, normal, weight, robust_px: float):
        self.row_view, self.vert, self.target, self.normal = view, vert, target, normal
        with torch.no_grad():
            raw = self._signed(m0)
            w = 1 / (1 + raw ** 2 / robust_px ** 2)
        self.rw = (w * weight / len(raw)).sqrt()

    @classmethod
    def at(cls, ctx: FitContext, st: FitState, m0: Model, frag=None) -> "OutlineTerm | None":
        """The term for the current fit's outline pairs in the views :func:`outline_weights`
        weighs, or None when there are none."""
        c = ctx.cfg
        w = outline_weights(ctx)
        rc = rim_correspondences(ctx, st, c.rim_max_px, frag)
        if rc is None:
            return None
        keep = w[rc[0]] > 0
        if not keep.any():
            return None
        view, vert, target, normal = (a[keep] for a in rc)
        return cls(m0, view, vert, target, normal, w[view] / c.w_lmk, c.rim_robust_px)

    def _signed(self, m: Model) -> torch.Tensor:
        uv = m.project(m.verts[self.row_view, self.vert], self.row_view)
        return ((uv - self.target) * self.normal).sum(-1)

    def residuals(self, m: Model) -> torch.Tensor:
        return self._signed(m) * self.rw

    def jacobian(self, lin: Linearization) -> torch.Tensor:
        one = torch.tensor([1.0, 0.0, 0.0], dtype=lin.X.dtype, device=lin.X.device).expand(len(self.vert), 3)
        d = lin.point_rows(self.row_view, self.vert[:, None].expand(-1, 3), one)      # (K, 2, 7 + P)
        return self.rw[:, None] * (self.normal[..., None] * d).sum(1)


class PhotoTerm(_RowTerm):
    """Surface samples s against the photo: ``I(u_s) - a_s`` per colour channel, the photo at
    the sample's projection u_s against its fitted appearance a_s (albedo x shading, solved in
    closed form at every iteration and held fixed within it), Cauchy (scale
    ``photo_gn_robust``) by IRLS, weighted by ``w_photo_gn / w_lmk`` and averaged over samples.

    ``residuals`` linearises the photo at the sample's pixel with central differences (a
    bilinear lookup's one-sided slope at a pixel centre would bias the fixed point); a
    candidate step's cost (``step_cost``) looks the photo up where the sample lands."""

    name = "photo"

    def __init__(self, ctx: FitContext, m0: Model, samples, target, photo, weight: float, robust: float):
        view, face, bary, pix = samples
        self.ctx = ctx
        self.row_view = view.repeat_interleave(3)
        self.view, self.face, self.bary, self.pix, self.target = view, face, bary, pix, target
        self.photo = photo
        self.gx, self.gy = central_gradients(photo, len(ctx.images), *ctx.size)
        with torch.no_grad():
            self.u0 = self._pixels(m0)
            rp = (photo[pix] - target).norm(dim=-1)
            w = 1 / (1 + rp ** 2 / robust ** 2)
        self.pw = (w * weight / len(rp)).sqrt()

    @classmethod
    def at(cls, ctx: FitContext, st: FitState, m0: Model, frag, it: int, iters: int, texture_held: bool = False):
        """(state with its appearance solved at the samples, the term or None without samples):
        texture code and SH, or with ``texture_held`` (a sequence's frame, whose texture is its
        identity's) the SH alone.

        Coarse to fine: photo and fitted appearance alike are blurred (inside the sampled pixels)
        by ``photo_gn_blur`` px, decreasing to 0 over the first half of the round's ``iters``,
        which widens the basin of the linearised photo; every ``photo_gn_stride``-th sample is
        kept."""
        c = ctx.cfg
        smp = photo_samples(ctx, st, frag)
        if smp is None:
            return st, None
        st, target = (solve_lighting if texture_held else solve_appearance)(ctx, st, smp)
        view, face, bary, pix = smp
        N, (H, W) = st.num_views, ctx.size
        photo = ctx.images.permute(0, 2, 3, 1).reshape(-1, 3)
        sigma = c.photo_gn_blur * (1 - it / max(1.0, iters / 2))
        if sigma >= 0.3:
            dev = photo.device
            m = torch.zeros(N * H * W, 1, device=dev).index_fill_(0, pix, 1.0)
            a_img = torch.zeros(N * H * W, 3, device=dev).index_copy_(0, pix, target)
            both = masked_blur(torch.cat([a_img, photo], 1), m, N, H, W, sigma)   # one pass for the two images
            target, photo = both[pix, :3], both[:, 3:].contiguous()
        keep = torch.arange(0, len(pix), max(1, int(c.photo_gn_stride)), device=pix.device)
        samples = (view[keep], face[keep], bary[keep], pix[keep])
        return st, cls(ctx, m0, samples, target[keep], photo, c.w_photo_gn / c.w_lmk, c.photo_gn_robust)

    def _pixels(self, m: Model) -> torch.Tensor:
        X = (m.verts[self.view[:, None], self.ctx.flame.faces[self.face]] * self.bary[..., None]).sum(1)  # (S, 3)
        return m.project(X, self.view)

    def residuals(self, m: Model) -> torch.Tensor:
        du = self._pixels(m) - self.u0
        p = self.pix
        col = self.photo[p] + self.gx[p] * du[:, :1] + self.gy[p] * du[:, 1:]
        return ((col - self.target) * self.pw[:, None]).reshape(-1)

    def step_cost(self, m: Model) -> float:
        H, W = self.ctx.size
        col = bilinear(self.photo, H, W, self.view, self._pixels(m))
        r = (col - self.target) * self.pw[:, None]
        return float((r * r).sum())

    def jacobian(self, lin: Linearization) -> torch.Tensor:
        d = lin.point_rows(self.view, self.ctx.flame.faces[self.face], self.bary)     # (S, 2, 7 + P)
        gx, gy = self.gx[self.pix], self.gy[self.pix]                                 # (S, 3) RGB
        return (self.pw[:, None, None] * (gx[..., None] * d[:, None, 0] + gy[..., None] * d[:, None, 1])) \
            .reshape(-1, d.shape[-1])


def term_rows(ctx: FitContext, st: FitState, unk: Unknowns, terms: list) -> list[tuple]:
    """Each row term's ``(name, J (rows, size), weighted residuals (rows,))`` at st."""
    m0, lin = model_at(ctx, st, unk), linearize(ctx, st, unk)
    out = []
    for t in terms:
        with torch.no_grad():
            r = t.residuals(m0)
        out.append((t.name, unk.scatter(t.jacobian(lin), t.row_view), r))
    return out


class GaussianPrior:
    """``(w_shape |shape|^2 + w_exp |exp|^2 + w_pose |jaw / 0.1|^2) / (w_lmk G)`` per subject, and
    ``w_focal / w_lmk |log focal / 0.1|^2`` when the focal is refined: a diagonal quadratic
    ``sum_k d_k v_k^2`` over the unknowns' values v (:meth:`Unknowns.values`)."""

    name = "prior"

    def __init__(self, ctx: FitContext, unk: Unknowns, device, dtype):
        c, G = ctx.cfg, unk.num_subjects
        per_subject = torch.cat([torch.full((unk.n_shape - unk.first_free,), c.w_shape / c.w_lmk / G),
                                 torch.full((unk.n_exp,), c.w_exp / c.w_lmk / G),
                                 torch.full((3,), c.w_pose / c.w_lmk / G / 0.01)])
        self.diag = torch.zeros(unk.size, dtype=dtype, device=device)
        self.diag[unk.n_cam:] = per_subject.to(device, dtype).repeat(G)
        if unk.refine_focal:
            self.diag[unk.focal_column] = c.w_focal / c.w_lmk / 0.01
        self.unk = unk

    def cost(self, st: FitState) -> float:
        v = self.unk.values(st)
        return float((self.diag * v * v).sum())

    def normal_equations(self, st: FitState) -> tuple[torch.Tensor, torch.Tensor, float]:
        """(A (n, n), g (n,), cost) of the prior at st."""
        v = self.unk.values(st)
        return torch.diag(self.diag), self.diag * v, float((self.diag * v * v).sum())
