"""What every stage shares: the fitting context (model, observations, options) and the
evaluation of the head model for every view.

Views and subjects: N views of G subjects (``state.view_subject``): multi-view fitting is G = 1,
a batch of single images is G = N with one view each.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from fitting.observations import Observations
from fitting.render.cameras import project_points, view_rotation
from fitting.rotations import axis_angle_to_matrix
from fitting.state import FitState
from fitting.tracks import TrackTerm

__all__ = ["FitContext", "Outline", "JAW", "subject_vertices", "head_rotation", "view_geometry", "project_landmarks",
           "texture_maps", "render_views"]

JAW = slice(6, 9)   # the jaw's axis-angle in FLAME's pose vector


@dataclass(frozen=True)
class Outline:
    """The head masks' outlines on a grid ``factor`` x finer than the fitting pixels: every
    outline point once, with its outward unit normal (points, normals: (E, 2) fitting pixels, the
    views' in order), and the index of the nearest one of its view per fine pixel (nearest:
    (N, Hs, Ws) int32)."""

    nearest: torch.Tensor
    points: torch.Tensor
    normals: torch.Tensor
    factor: int

    def at(self, view: torch.Tensor, iy: torch.Tensor, ix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(points (K, 2), normals (K, 2)) nearest to the fine pixels (view, iy, ix), each (K,)."""
        k = self.nearest[view, iy, ix].long()
        return self.points[k], self.normals[k]


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
    whose landmarks are not trusted, see :func:`fitting.landmark_trust.distrust_profiles` and
    :func:`distrust_outlier_views`); landmark_flags: {view index: why its landmarks are not used}.
    tracks: the SfM track term of the geometry LM (:class:`fitting.tracks.TrackTerm`) or None;
    track_sigma_px: its observation noise in fitting pixels; landmark_sigma_px: the landmark
    noise the last LM iteration measured (see :func:`fitting.stages.track_weight`).
    rig: the calibrated rig of ``--cameras`` (:class:`fitting.known_cameras.Rig`), or None.
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
    rig: object | None = None
    _renderer: torch.nn.Module | None = None
    _boundary: "Outline | None" = None
    _edges: tuple | None = None

    def __post_init__(self):
        if self.landmark_weights is None:
            self.landmark_weights = torch.ones_like(self.view_weights)

    @classmethod
    def from_observations(cls, obs: Observations, flame: torch.nn.Module, cfg: argparse.Namespace,
                          texspace: torch.nn.Module | None, refine_focal: bool, rig=None) -> "FitContext":
        """The context of a fit of ``obs`` (on its device), every view weighted 1; ``rig``: the
        calibrated rig of ``--cameras`` or None."""
        return cls(flame=flame, images=obs.images, landmarks=obs.landmarks, skin_mask=obs.skin_mask,
                   head_mask=obs.head_mask, view_weights=torch.ones(obs.num_views, device=obs.images.device),
                   cfg=cfg, texspace=texspace, refine_focal=refine_focal, progress=cfg.progress, rig=rig)

    @property
    def size(self) -> tuple:
        return tuple(self.images.shape[-2:])

    def renderer(self):
        if self._renderer is None:
            from fitting.render import MeshRenderer, RasterSettings
            vt, ft = self.uvs()
            self._renderer = MeshRenderer(self.flame.faces, vt, ft, RasterSettings(self.size)).to(self.images.device)
        return self._renderer

    def boundary(self) -> "Outline":
        """The head masks' outlines, located to 1 / factor of a fitting pixel: each mask is
        upsampled by ``factor`` and thresholded at 0.5. Computed once (OpenCV, per view)."""
        if self._boundary is None:
            import cv2
            H, W = self.size
            f = max(1, round(512 / max(H, W)))
            nearest, pts, nrm, count = [], [], [], 0
            for m in self.head_mask[:, 0].detach().cpu().numpy():  # once per view, at setup
                up = cv2.resize(m.astype(np.float32), (W * f, H * f), interpolation=cv2.INTER_LINEAR)
                inside = (up > 0.5).astype(np.uint8)
                edge = inside - cv2.erode(inside, np.ones((3, 3), np.uint8))
                if edge.sum() == 0:
                    edge[0, 0] = 1
                _, lab = cv2.distanceTransformWithLabels(1 - edge, cv2.DIST_L2, 5, labelType=cv2.DIST_LABEL_PIXEL)
                ys, xs = np.nonzero(edge)  # label k (1-based) is the k-th edge pixel in scan order
                order = np.zeros(lab.max() + 1, np.int32)
                order[1:len(ys) + 1] = np.arange(count, count + len(ys))
                nearest.append(order[lab])                        # (Hs, Ws): the nearest edge pixel
                count += len(ys)
                sm = cv2.GaussianBlur(up, (0, 0), 1.5 * f)
                g = -np.stack([cv2.Sobel(sm, cv2.CV_32F, 1, 0)[ys, xs],
                               cv2.Sobel(sm, cv2.CV_32F, 0, 1)[ys, xs]], -1)  # outward: the mask decreases
                n_e = g / (np.linalg.norm(g, axis=-1, keepdims=True) + 1e-12)  # (E, 2), per edge pixel
                # Edge pixels are the innermost *inside* pixels; the outline (the 0.5 level of the
                # mask, whose fractional values at a downsampled outline carry sub-pixel position)
                # lies between an edge pixel and the point one fine pixel further out along the
                # normal: interpolate the crossing there (a plain grid point is up to a pixel off,
                # ~0.3 % of head scale at 128 px).
                ex, ey = xs.astype(np.float32), ys.astype(np.float32)
                v_in = up[ys, xs]
                v_out = cv2.remap(up, (ex + n_e[:, 0])[None], (ey + n_e[:, 1])[None], cv2.INTER_LINEAR,
                                  borderMode=cv2.BORDER_REPLICATE)[0]
                step = np.clip((v_in - 0.5) / np.maximum(v_in - v_out, 1e-3), 0.0, 1.0)
                pts.append(np.stack([ex + 0.5, ey + 0.5], -1) / f + (step / f)[:, None] * n_e)
                nrm.append(n_e)
            dev = self.images.device
            self._boundary = Outline(torch.from_numpy(np.stack(nearest)).to(dev),
                                     torch.from_numpy(np.concatenate(pts)).float().to(dev),
                                     torch.from_numpy(np.concatenate(nrm)).float().to(dev), f)
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


def subject_vertices(ctx: FitContext, state: FitState, pose: torch.Tensor | None = None) -> torch.Tensor:
    """(G, V, 3) vertices of every subject in the head frame."""
    verts, _ = ctx.flame(state.shape, state.expression, state.pose if pose is None else pose)
    return verts


def head_rotation(pose: torch.Tensor) -> torch.Tensor:
    """(G, 3, 3) each subject's head rotation in the world: global pose, then neck (pose (G, P))."""
    return axis_angle_to_matrix(pose[:, 0:3]) @ axis_angle_to_matrix(pose[:, 3:6])


def view_geometry(ctx: FitContext, state: FitState, verts: torch.Tensor, pose: torch.Tensor | None = None):
    """Per-view vertices (N, V, 3) and 68 landmarks (N, 68, 3), contour chosen by each view's yaw."""
    head = head_rotation(state.pose if pose is None else pose)
    N = state.num_views
    if verts.shape[0] == 1:
        vv, hv = verts.expand(N, -1, -1), head.expand(N, 3, 3)
    else:
        vv, hv = verts[state.view_subject], head[state.view_subject]
    return vv, ctx.flame.landmarks(vv, view_rotation(state.R(), hv))


def project_landmarks(state: FitState, lmk3d: torch.Tensor) -> torch.Tensor:
    """(N, 68, 2) pixels of the 3D landmarks (N, 68, 3) in each view."""
    return project_points(lmk3d, state.K(), state.R(), state.cam_t)[0]


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
