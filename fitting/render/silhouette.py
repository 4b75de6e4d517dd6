"""Differentiable silhouette by analytic edge antialiasing (nvdiffrast-style).

Choice: analytic antialiasing of the hard-raster coverage rather than soft rasterization.

* It costs almost nothing: work is done only for the ~perimeter-many pairs of
  neighbouring pixels that straddle the outline, reusing the hard rasterizer's output;
  soft rasterization evaluates every (face, pixel) pair within a blur radius with autograd,
  which is orders of magnitude more work and memory for 30 views.
* It does not blur: away from the outline the silhouette equals the hard coverage, and
  at the outline it is the (axis-aligned) fraction of the pixel that the mesh covers, so
  it matches the mask a camera sees; soft rasterization's sigma is a bias to tune.
* The gradient is exactly where a mask loss needs it (on the outline). Its limitation,
  shared with nvdiffrast: no gradient reaches an outline that is more than a pixel away
  from the target's, so mask losses should start from a roughly aligned fit (ours do:
  landmarks first) or use a coarse-to-fine image pyramid.

Method. For each horizontally or vertically adjacent pixel pair (p covered by face f, q
background) the pixel-centre rays ``d_p, d_q`` are tested against f's edge functions
``w_i(d) = d . (P_j x P_k)`` (linear in d, and d is affine along the segment), so the
outline crosses the segment p -> q at ``s = min_i w_i(p) / (w_i(p) - w_i(q))`` over the edges
that change sign, in pixel units from p's centre. Coverage then moves by the signed
distance of that crossing from the pixel boundary at s = 0.5: if s < 0.5 pixel p loses
0.5 - s, otherwise q gains s - 0.5. A pair only counts in the direction closer to the
edge's screen-space normal (horizontal pairs for steep edges, vertical pairs for flat
ones) so that diagonal outlines are not counted twice. ``s`` is differentiable w.r.t.
verts, K, R, t; the result is clamped to [0, 1].
"""
from __future__ import annotations

import torch

from fitting.render.cameras import prepare_cameras, world_to_camera
from fitting.render.rasterize import Fragments, RasterSettings, check_mesh, rasterize
from fitting.render.rays import cross, face_corners, pixel_centre_rays, pixel_xy

__all__ = ["silhouette", "silhouette_camera_space", "outline_pair_counts", "differing_pairs", "pair_pixels",
           "outline_delta"]


def differing_pairs(cov: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(a, differs): coverage of each pair's first pixel and whether its neighbour along dim
    (2: horizontal, 1: vertical) differs; cov (B, H, W) bool -> each one shorter along dim."""
    n = cov.shape[dim] - 1
    a = cov.narrow(dim, 0, n)
    return a, a != cov.narrow(dim, 1, n)


def outline_pair_counts(face_idx: torch.Tensor) -> torch.Tensor:
    """(2,) int64: the horizontal and vertical outline pixel pairs of face_idx (B, H, W)."""
    cov = face_idx >= 0
    return torch.stack([differing_pairs(cov, 2)[1].sum(), differing_pairs(cov, 1)[1].sum()])


def pair_pixels(a: torch.Tensor, edge: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat pixels (p covered, q background), each (M,), into B*H*W of the outline pairs
    whose first pixels are ``edge`` (M, 3) (b, y, x); a: differing_pairs' coverage of the
    first pixels; dim: 2 horizontal, 1 vertical."""
    H, W = a.shape[1] + (dim == 1), a.shape[2] + (dim == 2)
    first = (edge[:, 0] * H + edge[:, 1]) * W + edge[:, 2]
    a_cov = a[edge[:, 0], edge[:, 1], edge[:, 2]]
    step = W if dim == 1 else 1
    return torch.where(a_cov, first, first + step), torch.where(a_cov, first + step, first)


def outline_delta(Xc, faces, Kinv, flat_face, p, q, horizontal, valid, H: int, W: int):
    """Coverage change (B*H*W,) of the outline pairs (p covered, q background), (M,) each;
    horizontal, valid: (M,) bool (invalid pairs change nothing); Xc: (B, V, 3) camera
    frame; Kinv: (B, 3, 3) (see module doc)."""
    B = Xc.shape[0]
    hw = H * W
    view = torch.div(p, hw, rounding_mode="floor")
    Kinv = Kinv.to(Xc.dtype)
    dp = pixel_centre_rays(Kinv, view, *pixel_xy(p, view, H, W), H, W)     # (M, 3)
    dq = pixel_centre_rays(Kinv, view, *pixel_xy(q, view, H, W), H, W)
    P0, P1, P2 = face_corners(Xc, faces, view, flat_face.index_select(0, p).clamp_min(0)).unbind(1)
    E = torch.stack([cross(P1, P2), cross(P2, P0), cross(P0, P1)], 1)      # (M, 3 edges, 3)
    wp = (E * dp[:, None]).sum(-1)                                      # (M, 3)
    wq = (E * dq[:, None]).sum(-1)
    with torch.no_grad():
        changes = (wp * wq) < 0
        s_det = torch.where(changes, wp / torch.where(changes, wp - wq, 1.0), 2.0)
        edge = s_det.argmin(-1, keepdim=True)                           # the edge crossed first
        ok = changes.gather(1, edge)[:, 0] & valid
        # edge's screen-space normal: gradient of w_edge(u, v) = E_edge . Kinv (u, v, 1)
        Ee = E.gather(1, edge[..., None].expand(-1, 1, 3))[:, 0]        # (M, 3)
        Kv = Kinv.index_select(0, view)                                 # (M, 3, 3)
        g = (Ee[:, :, None] * Kv[:, :, :2]).sum(1)                      # (M, 2)
        steep = g[:, 0].abs() >= g[:, 1].abs()
        ok = ok & torch.where(horizontal, steep, ~steep)
    a, b = wp.gather(1, edge)[:, 0], wq.gather(1, edge)[:, 0]
    s = (a / torch.where(ok, a - b, torch.ones_like(a))).clamp(0, 1)
    # p loses 0.5 - s when s < 0.5, else q gains s - 0.5 (masked adds: no data-dependent shapes)
    zero = torch.zeros_like(s)
    delta = Xc.new_zeros(B * hw)
    delta = delta.index_add(0, p, torch.where(ok & (s < 0.5), s - 0.5, zero))
    return delta.index_add(0, q, torch.where(ok & (s >= 0.5), s - 0.5, zero))


def _native_applies(Xc, faces, Kinv, face_idx) -> bool:
    """Whether the compiled silhouette (fitting.render.native.shade.silhouette: the same
    values per pixel, no per-pair tensors) takes these inputs: float32 / float64, all on one
    device whose kernels are built (FLAME_FIT_NATIVE=0 keeps this module's PyTorch path)."""
    from fitting.render.native import shade
    dev = Xc.device
    return (shade.enabled() and Xc.dtype in (torch.float32, torch.float64)
            and all(x.device == dev for x in (faces, Kinv, face_idx)) and shade.available_on(dev))


def silhouette(verts: torch.Tensor, faces: torch.Tensor, K: torch.Tensor, R: torch.Tensor,
               t: torch.Tensor, fragments: Fragments | None = None,
               settings: RasterSettings | None = None, face_idx: torch.Tensor | None = None) -> torch.Tensor:
    """Antialiased silhouette (B, 1, H, W) in [0, 1] with gradients at the outline.

    verts: (B, V, 3) world; faces: (F, 3); K, R: (B, 3, 3); t: (B, 3). Pass the
    ``fragments`` of the same mesh and cameras (or only their ``face_idx`` (B, H, W)), or
    ``settings`` to rasterize here.
    """
    cams = prepare_cameras(K, R, t, verts.shape[0])
    if face_idx is None:
        if fragments is None:
            if settings is None:
                raise ValueError("silhouette needs fragments (or face_idx) from rasterize(), or settings")
            fragments = rasterize(verts, faces, K, R, t, settings)
        face_idx = fragments.face_idx
    check_mesh(verts, faces)
    return silhouette_camera_space(world_to_camera(verts, R, t), faces.long(), cams.Kinv, face_idx)


def silhouette_camera_space(Xc: torch.Tensor, faces: torch.Tensor, Kinv: torch.Tensor,
                            face_idx: torch.Tensor) -> torch.Tensor:
    """:func:`silhouette` of vertices already in the camera frame: Xc (B, V, 3); faces (F, 3)
    int64; Kinv (B, 3, 3) = pinhole_inverse(K); face_idx (B, H, W). Runs the compiled kernel
    where one is built (fitting.render.native; FLAME_FIT_NATIVE=0 keeps the PyTorch path)."""
    if _native_applies(Xc, faces, Kinv, face_idx):
        from fitting.render.native import shade
        return shade.silhouette(Xc, faces, Kinv, face_idx)
    B, H, W = face_idx.shape
    flat_face = face_idx.reshape(-1)
    cover = (flat_face >= 0).to(Xc.dtype)
    ah, dh = differing_pairs(face_idx >= 0, 2)
    av, dv = differing_pairs(face_idx >= 0, 1)
    ph, qh = pair_pixels(ah, dh.nonzero(), 2)
    pv, qv = pair_pixels(av, dv.nonzero(), 1)
    p = torch.cat([ph, pv])
    if len(p) == 0:
        return cover.view(B, 1, H, W)
    q = torch.cat([qh, qv])
    valid = torch.ones(len(p), dtype=torch.bool, device=p.device)
    horizontal = torch.arange(len(p), device=p.device) < len(ph)
    delta = outline_delta(Xc, faces, Kinv, flat_face, p, q, horizontal, valid, H, W)
    return (cover + delta).clamp(0, 1).view(B, 1, H, W)
