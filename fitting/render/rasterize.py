"""Hard rasterization: nearest face per pixel, perspective-correct barycentrics, depth.

Two passes, in PyTorch for any device, no Python loop over views, faces or pixels (on the
CPU a compiled kernel, fitting.render.native, runs the first pass bit for bit the same):

1. **Visibility** (no gradient). Each face's screen-space bounding box is enumerated as
   (face, pixel) candidate pairs in flat tensors (in chunks of at most
   ``RasterSettings.max_pairs`` pairs to bound memory). For every pair the pixel-centre
   ray ``d = K^-1 (u, v, 1)`` is tested against the triangle with the three edge
   functions ``w_i = d . (P_j x P_k)`` (camera-space corners ``P``); these are the
   unnormalised perspective-correct barycentrics, affine in (u, v), so each face needs
   only a 3x3 coefficient table plus ``1/|det(P0, P1, P2)|`` for inverse depth. A pixel
   centre is covered when all ``w_i`` carry the sign of ``det`` (closed triangle: centres
   exactly on an edge count, for both faces sharing it). Faces with small boxes (almost
   all of a head mesh) are grouped by box shape and evaluated as dense broadcast grids
   with no per-pair gathers; larger ones are enumerated pair by pair. The z-buffer keeps,
   per pixel, the maximum of an int64 key ``(float32 bits of inverse depth) << 32 |
   (2^31 - 1 - face)`` with ``scatter_reduce('amax')``: positive floats order like their
   bit patterns, and the low bits break exact ties deterministically (lowest id wins).
2. **Barycentrics** (differentiable). For the winning face of each covered pixel only,
   ``b_i = w_i / sum(w)`` and ``depth = sum_i b_i Z_i`` are recomputed with autograd
   from the camera-space vertices and K, so gradients reach ``verts, K, R, t``; the
   visibility decision itself is piecewise constant (as pytorch3d's hard rasterizer).

**Near plane: triangles are clipped, not dropped.** The ray test above is exact in 3D,
so a triangle crossing ``z = near`` is drawn exactly where its part in front of the
plane is (a pixel is kept only when its intersection depth is ``>= near``); its screen
bounding box is that of the clipped polygon (vertices in front plus the edge/near-plane
intersections), which is finite. Triangles entirely behind ``near`` draw nothing.

Background: ``face_idx = -1``, ``bary = 0``, ``depth = 0``.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from fitting.render.cameras import Cameras, pinhole_inverse, prepare_cameras, world_to_camera
from fitting.render.rays import cross, face_corners, pixel_centre_rays, pixel_xy

__all__ = ["RasterSettings", "Fragments", "PackedFragments", "rasterize", "rasterize_packed",
           "rasterize_camera_space", "visible_faces", "check_mesh", "check_image_size"]

_FACE_MASK = 0xFFFFFFFF


class RasterSettings(NamedTuple):
    """image_size: (H, W); near: camera-space clip distance (same unit as verts);
    cull_backfaces: drop faces whose (v0, v1, v2) winding is clockwise as seen by the camera
    (i.e. whose right-hand normal points away from it); max_pairs: candidate (face, pixel)
    pairs per chunk of the visibility pass (memory ~ 60-100 bytes per pair). Tensor sizes
    follow the image content; fitting.render.static renders with fixed sizes instead."""
    image_size: tuple[int, int]
    near: float = 1e-3
    cull_backfaces: bool = False
    max_pairs: int = 1 << 22


class Fragments(NamedTuple):
    """face_idx (B,H,W) int64, -1 = background; bary (B,H,W,3) perspective-correct, 0 at
    background; depth (B,H,W) camera z, 0 at background."""
    face_idx: torch.Tensor
    bary: torch.Tensor
    depth: torch.Tensor


class PackedFragments(NamedTuple):
    """The covered pixels only (N of them), which is what the renderer computes on.

    pix (N,) int64 flat index ``b*H*W + y*W + x``; view (N,) int64; face (N,) int64 face id
    (per view, into ``faces``); bary (N,3); depth (N,); shape (B, H, W)."""
    pix: torch.Tensor
    view: torch.Tensor
    face: torch.Tensor
    bary: torch.Tensor
    depth: torch.Tensor
    shape: tuple[int, int, int]

    def scatter(self, values: torch.Tensor, fill: float = 0) -> torch.Tensor:
        """(N, C) values at the listed pixels -> (B*H*W, C), ``fill`` elsewhere."""
        B, H, W = self.shape
        return values.new_full((B * H * W, values.shape[-1]), fill).index_copy(0, self.pix, values)

    def face_idx(self) -> torch.Tensor:
        """(B, H, W) int64 face per pixel, -1 for background."""
        B, H, W = self.shape
        return self.scatter(self.face[:, None], -1).view(B, H, W)

    def to_dense(self) -> Fragments:
        B, H, W = self.shape
        bary = self.scatter(self.bary).view(B, H, W, 3)
        depth = self.scatter(self.depth[:, None]).view(B, H, W)
        return Fragments(self.face_idx(), bary, depth)


def check_mesh(verts: torch.Tensor, faces: torch.Tensor) -> None:
    """Raise a ValueError unless verts (B, V, 3) and integer faces (F, 3) fit together."""
    if verts.dim() != 3 or verts.shape[-1] != 3:
        raise ValueError(f"verts must be (B, V, 3), got {tuple(verts.shape)}; add a batch dim")
    if faces.dim() != 2 or faces.shape[-1] != 3 or faces.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"faces must be an integer (F, 3) tensor, got {tuple(faces.shape)} {faces.dtype}")
    if faces.device != verts.device:
        raise ValueError(f"faces on {faces.device} but verts on {verts.device}; move them together")


def check_image_size(settings: RasterSettings) -> None:
    H, W = settings.image_size
    if H <= 0 or W <= 0:
        raise ValueError(f"image_size must be positive (H, W), got {settings.image_size}")


def face_boxes(Xc: torch.Tensor, faces: torch.Tensor, K: torch.Tensor, near: float, H: int, W: int,
               static: bool = False):
    """Inclusive pixel boxes (x0, x1, y0, y1), each (B, F) int64, of the faces' parts in front
    of the near plane (empty, x1 < x0 or y1 < y0, for faces that can draw nothing).
    static: always take the clipping branch (no host sync on the vertices' depths)."""
    B, F = Xc.shape[0], faces.shape[0]
    fx, fy = K[:, 0, 0, None, None], K[:, 1, 1, None, None]
    cx, cy, sk = K[:, 0, 2, None, None], K[:, 1, 2, None, None], K[:, 0, 1, None, None]
    z = Xc[..., 2]
    if not static and bool(z.min() >= near):
        # common case: every vertex in front; project vertices once, then gather per corner
        x, y = Xc[..., 0] / z, Xc[..., 1] / z
        uv = torch.stack([fx[:, 0] * x + sk[:, 0] * y + cx[:, 0], fy[:, 0] * y + cy[:, 0]], -1)
        uv = uv.index_select(1, faces.reshape(-1)).view(B, F, 3, 2)
        lo, hi = uv.amin(2), uv.amax(2)
        umin, vmin, umax, vmax = lo[..., 0], lo[..., 1], hi[..., 0], hi[..., 1]
    else:
        # box of the clipped polygon: in-front corners plus the points where edges cross
        # z = near (finite by construction)
        P = Xc.index_select(1, faces.reshape(-1)).view(B, F, 3, 3)
        zi = P[..., 2]
        zj = zi.roll(-1, dims=2)
        Pj = P.roll(-1, dims=2)
        crosses = (zi - near) * (zj - near) < 0
        t = ((near - zi) / torch.where(crosses, zj - zi, torch.ones_like(zi))).clamp(0, 1)
        Q = torch.cat([P, P + t[..., None] * (Pj - P)], 2)
        valid = torch.cat([zi >= near, crosses], 2)              # (B, F, 6)
        Qz = Q[..., 2].clamp_min(near)
        qx, qy = Q[..., 0] / Qz, Q[..., 1] / Qz
        u = fx * qx + sk * qy + cx
        v = fy * qy + cy
        big = torch.finfo(u.dtype).max
        umin = torch.where(valid, u, big).amin(-1)
        umax = torch.where(valid, u, -big).amax(-1)
        vmin = torch.where(valid, v, big).amin(-1)
        vmax = torch.where(valid, v, -big).amax(-1)
    # pixel j is a candidate when its centre j + 0.5 lies in [umin, umax]; clamp to the image
    # in float before the integer cast so huge boxes cannot overflow.
    x0 = torch.ceil(umin - 0.5).clamp(0, W).long()
    x1 = torch.floor(umax - 0.5).clamp(-1, W - 1).long()
    y0 = torch.ceil(vmin - 0.5).clamp(0, H).long()
    y1 = torch.floor(vmax - 0.5).clamp(-1, H - 1).long()
    return x0, x1, y0, y1


def _sum3(x: torch.Tensor) -> torch.Tensor:
    """x[..., 0] + x[..., 1] + x[..., 2] in that order: a reduction kernel may add in another
    order on CUDA, and visibility must round identically on both devices."""
    return (x[..., 0] + x[..., 1]) + x[..., 2]


def face_coefficients(Xc: torch.Tensor, faces: torch.Tensor, Kinv: torch.Tensor, gidx: torch.Tensor):
    """Edge-function and inverse-depth coefficients of the faces ``gidx`` (flat b*F + f), for
    the pixel-centre rays of Kinv (B, 3, 3) = pinhole_inverse(K).

    Returns coef (M, 12): rows ``[a0 b0 c0 a1 b1 c1 a2 b2 c2 az bz cz]`` with
    ``w_i = a_i u + b_i v + c_i`` sign-normalised (all >= 0 inside) and inverse depth
    ``az u + bz v + cz``, and det (M,) = det(P0, P1, P2) (0: degenerate or edge-on;
    > 0: the right-hand normal points away from the camera)."""
    B, F = Xc.shape[0], faces.shape[0]
    view = torch.div(gidx, F, rounding_mode="floor")
    P0, P1, P2 = face_corners(Xc, faces, view, gidx - view * F).unbind(1)
    E = torch.stack([cross(P1, P2), cross(P2, P0), cross(P0, P1)], 1)      # (M, 3, 3)
    det = _sum3(P0 * E[:, 0])
    # w_i = E_i . (Kinv (u, v, 1)), Kinv upper triangular with last row (0, 0, 1)
    Ki = Kinv.reshape(B, 9).index_select(0, view)                          # (M, 9)
    Es = E * torch.sign(det)[:, None, None]
    ex, ey, ez = Es.unbind(-1)                                              # (M, 3) each
    a = ex * Ki[:, 0:1]
    b = ex * Ki[:, 1:2] + ey * Ki[:, 4:5]
    c = ex * Ki[:, 2:3] + ey * Ki[:, 5:6] + ez
    inv_det = 1.0 / det.abs()
    # inverse depth (w0 + w1 + w2) / |det| is affine in (u, v) as well
    z = torch.stack([_sum3(a), _sum3(b), _sum3(c)], -1) * inv_det[:, None]
    coef = torch.cat([torch.stack([a, b, c], -1).flatten(1), z], -1)
    return coef, det


_SMALL_BOX = 8   # faces whose pixel box is at most this many pixels wide and tall are bucketed
_PAD_TO = (0, 1, 2, 3, 4, 6, 6, 8, 8)   # a small box n pixels wide (or tall) is evaluated as _PAD_TO[n]
# on CUDA the cost is the number of launches, not candidates: square 4x4 or 8x8 boxes only
_PAD_TO_COARSE = (0, 4, 4, 4, 4, 8, 8, 8, 8)
_COARSE_DEVICES = ("cuda",)


def _pairs_key(w0, w1, w2, invz, fid, near):
    """int64 z-buffer key of candidate pairs, 0 where the pixel centre is not covered.

    Key = float32 bits of inverse depth (positive floats order like their bit patterns;
    larger = nearer) << 32 | (2^31 - 1 - face), so 'amax' keeps the nearest face and, on an
    exact tie, the lowest face id."""
    ok = (torch.minimum(torch.minimum(w0, w1), w2) >= 0) & (invz <= 1.0 / near)
    key = (invz.float().view(torch.int32).to(torch.int64) << 32) | (0x7FFFFFFF - fid)
    return torch.where(ok, key, 0)   # inside implies invz >= 0; invz == 0 (degenerate) is not a hit


def key_face(key: torch.Tensor) -> torch.Tensor:
    """The face id in z-buffer keys (see _pairs_key)."""
    return 0x7FFFFFFF - (key & _FACE_MASK)


def grid_keys(coef, u0, v0, fid, dx, dy, near: float):
    """z-buffer keys of each face's (by, bx) grid of candidate pixels.

    coef: (n, 12) from face_coefficients; u0, v0: (n,) centre of each grid's corner pixel;
    fid: (n,) face ids; dx: (bx,), dy: (by,) pixel offsets. Returns (n, by, bx) int64.

    Every candidate is evaluated as ``(a * u + b * v) + c`` at its own pixel centre (u, v)
    (exact in float32), whatever grid, tile or chunk it belongs to, so all the candidate
    strategies below give bit-identical keys. Keep it unfused (no torch.compile): each
    operation is then rounded the same way on CPU and CUDA; an FMA in a fused kernel can
    flip a pixel centre that lies on an edge."""
    c = coef.view(-1, 4, 3)                                  # w0, w1, w2, inverse depth
    au = c[..., 0, None] * (u0[:, None] + dx)[:, None, :]    # (n, 4, bx)
    bv = c[..., 1, None] * (v0[:, None] + dy)[:, None, :]    # (n, 4, by)
    ws = (au[:, :, None, :] + bv[..., None]) + c[..., 2, None, None]            # (n, 4, by, bx)
    return _pairs_key(*ws.unbind(1), fid[:, None, None], near)


@torch.no_grad()
def visible_faces(Xc: torch.Tensor, faces: torch.Tensor, K: torch.Tensor, settings: RasterSettings,
                  native: bool | None = None, Kinv: torch.Tensor | None = None):
    """Visibility pass. Xc: (B, V, 3) camera frame; K: (B, 3, 3); Kinv: pinhole_inverse(K)
    where the caller has it. Returns (pix (N,), face (N,)) int64 for the covered pixels,
    sorted by pixel; ``face`` indexes ``faces`` (per view).

    native: None (default) runs the compiled kernel (fitting.render.native, bit-identical
    to the torch path) where it takes these inputs (see native.visible_faces), else the
    torch path; False always runs the torch path; True requires the kernel (RuntimeError
    otherwise)."""
    if native is not False:
        from fitting.render import native as kernels
        H, W = settings.image_size
        out = kernels.visible_faces(Xc, faces, K, H, W, settings.near, settings.cull_backfaces)
        if out is not None:
            return out
        if native:
            raise RuntimeError("the native visibility kernel is not available for these inputs (it needs "
                               "float32 Xc and K on the CPU, near > 0, finite values, and a successful build: "
                               "python -m fitting.render.native)")
    return _visible_faces_torch(Xc, faces, K, settings, Kinv)


def _visible_faces_torch(Xc: torch.Tensor, faces: torch.Tensor, K: torch.Tensor, settings: RasterSettings,
                         Kinv: torch.Tensor | None = None):
    """Pure-PyTorch visibility pass (any device and float dtype); see visible_faces.

    Boxes come first (cheap, per vertex), edge coefficients only for faces whose box holds
    a pixel centre. Faces with small pixel boxes (the vast majority for a head mesh) are grouped by box
    shape (nx, ny): each group is a dense (faces, ny, nx) grid of candidates evaluated by
    broadcasting, with no per-pair gathers. Larger faces are enumerated pair by pair in
    chunks of at most ``settings.max_pairs``.
    """
    H, W = settings.image_size
    B, F = Xc.shape[0], faces.shape[0]
    dev = Xc.device
    x0, x1, y0, y1 = face_boxes(Xc, faces, K, settings.near, H, W)
    nx = (x1 - x0 + 1).clamp_min(0).flatten()
    ny = (y1 - y0 + 1).clamp_min(0).flatten()
    gidx = ((nx > 0) & (ny > 0)).nonzero()[:, 0]            # faces that may cover a pixel centre
    zbuf = torch.zeros(B * H * W, dtype=torch.int64, device=dev)
    coef, det = face_coefficients(Xc, faces, pinhole_inverse(K) if Kinv is None else Kinv, gidx)
    nx, ny = nx.index_select(0, gidx), ny.index_select(0, gidx)
    draw = det < 0 if settings.cull_backfaces else det != 0  # camera at the origin: N faces it when det < 0
    S = _SMALL_BOX
    # bucket per face: padded box shape for small boxes, S*S for large ones, S*S+1 for no
    # drawing; padding widths/heights to _PAD_TO halves the number of buckets (and so
    # per-call overhead) for a few extra candidates that fail the inside test
    coarse = dev.type in _COARSE_DEVICES and min(H, W) >= S
    pad = torch.tensor(_PAD_TO_COARSE if coarse else _PAD_TO if min(H, W) >= S else tuple(range(S + 1)),
                       device=dev)
    small = (nx <= S) & (ny <= S)
    px = torch.where(small, pad[nx.clamp(max=S)], nx)      # large boxes keep their size
    py = torch.where(small, pad[ny.clamp(max=S)], ny)
    if coarse:                                              # two square buckets: 4x4 and 8x8
        side = torch.maximum(px, py)
        px, py = torch.where(small, side, px), torch.where(small, side, py)
    bucket = torch.where(small, (py - 1) * S + (px - 1), S * S)
    bucket = torch.where(draw, bucket, S * S + 1)
    sizes = torch.bincount(bucket, minlength=S * S + 2).tolist()
    order = torch.argsort(bucket)
    # everything per face, permuted once into bucket order (each bucket is then a slice)
    coef, nx, ny = coef.index_select(0, order), nx.index_select(0, order), ny.index_select(0, order)
    count = nx * ny
    gidx = gidx.index_select(0, order)
    view = torch.div(gidx, F, rounding_mode="floor")
    fid = gidx - view * F
    x0, y0 = x0.flatten().index_select(0, gidx), y0.flatten().index_select(0, gidx)
    # a padded box must stay inside the image: shift it left/up (it still holds the box)
    px, py = px.index_select(0, order), py.index_select(0, order)
    x0 = torch.minimum(x0, W - px).clamp_min(0)
    y0 = torch.minimum(y0, H - py).clamp_min(0)
    pix0 = view * (H * W) + y0 * W + x0                     # flat index of each box's corner
    u0 = x0.to(coef.dtype) + 0.5
    v0 = y0.to(coef.dtype) + 0.5
    start = 0
    for b, size in enumerate(sizes[:-1]):
        sl = slice(start, start + size)
        start += size
        if size == 0:
            continue
        if b == S * S:
            _enumerate_pairs(zbuf, coef[sl], u0[sl], v0[sl], nx[sl], count[sl], pix0[sl], fid[sl], W, settings)
            continue
        bx, by = b % S + 1, b // S + 1
        dx = torch.arange(bx, device=dev, dtype=coef.dtype)
        dy = torch.arange(by, device=dev, dtype=coef.dtype)
        offs = (torch.arange(by, device=dev) * W)[:, None] + torch.arange(bx, device=dev)
        rows = max(1, settings.max_pairs // (bx * by))          # bound the memory of one grid
        for r0 in range(sl.start, sl.stop, rows):
            ch = slice(r0, min(r0 + rows, sl.stop))
            key = grid_keys(coef[ch], u0[ch], v0[ch], fid[ch], dx, dy, settings.near)
            pix = pix0[ch][:, None, None] + offs
            zbuf.scatter_reduce_(0, pix.flatten(), key.flatten(), "amax")
    pix = zbuf.nonzero()[:, 0]
    return pix, key_face(zbuf.index_select(0, pix))


def _enumerate_pairs(zbuf, coef, u0, v0, nx, count, pix0, fid, W, settings):
    """Candidate pairs of faces with large boxes, enumerated in chunks of <= max_pairs."""
    dev = zbuf.device
    ends = count.cumsum(0)
    first, nf = 0, len(count)
    while first < nf:
        offset = int(ends[first - 1]) if first > 0 else 0
        last = int(torch.searchsorted(ends, offset + settings.max_pairs, right=True))
        last = max(last, first + 1)                           # a huge face is a chunk of its own
        sl = slice(first, last)
        cnt = count[sl]
        n = int(ends[last - 1]) - offset
        j = torch.repeat_interleave(torch.arange(last - first, device=dev), cnt, output_size=n)
        local = torch.arange(n, device=dev) - (ends[sl] - cnt - offset)[j]
        w = nx[sl][j]
        ry = torch.div(local, w, rounding_mode="floor")
        rx = local - ry * w
        c = coef[sl][j]
        u = u0[sl][j] + rx.to(c.dtype)
        v = v0[sl][j] + ry.to(c.dtype)
        ws = [c[:, 3 * i] * u + c[:, 3 * i + 1] * v + c[:, 3 * i + 2] for i in range(4)]
        key = _pairs_key(*ws, fid[sl][j], settings.near)
        zbuf.scatter_reduce_(0, pix0[sl][j] + ry * W + rx, key, "amax")
        first = last


def barycentrics(Xc, faces, Kinv, pix, view, face, H, W, covered=None):
    """Differentiable perspective-correct barycentrics (N, 3) and depth (N,) of the pixels
    pix (N,) of views view (N,) on faces face (N,); Kinv: pinhole_inverse(K) (zero where
    ``covered`` (N,) bool, if given, is False)."""
    x, y = pixel_xy(pix, view, H, W)
    d = pixel_centre_rays(Kinv.to(Xc.dtype), view, x, y, H, W)                # (N, 3)
    P = face_corners(Xc, faces, view, face)                                   # (N, 3, 3)
    P0, P1, P2 = P.unbind(1)
    # w_i = d . (P_j x P_k); with q = d x P0 the last two are triple products with q, and
    # their sum is d . ((P1 - P0) x (P2 - P0)): two cross products instead of three
    q = cross(d, P0)
    w1 = -(P2 * q).sum(-1)
    w2 = (P1 * q).sum(-1)
    total = (d * cross(P1 - P0, P2 - P0)).sum(-1)
    w = torch.stack([total - w1 - w2, w1, w2], -1)
    if covered is not None:                          # background rays may be parallel to face 0
        total = torch.where(covered, total, 1.0)
        w = torch.where(covered[:, None], w, 0.0)
    bary = w * total.reciprocal()[:, None]           # one reciprocal: cheaper than a division backward
    depth = (bary * P[..., 2]).sum(-1)
    return bary, depth


def rasterize_camera_space(Xc: torch.Tensor, faces: torch.Tensor, cams: Cameras,
                           settings: RasterSettings) -> PackedFragments:
    """:func:`rasterize_packed` of vertices already in the camera frame, for callers that
    checked and prepared the cameras once (MeshRenderer.forward).

    Xc: (B, V, 3) = world_to_camera(verts, R, t); faces: (F, 3) int64; cams: prepare_cameras(K, R, t)."""
    H, W = settings.image_size
    pix, face = visible_faces(Xc.detach(), faces, cams.K.detach(), settings, Kinv=cams.Kinv.detach())
    view = torch.div(pix, H * W, rounding_mode="floor")
    bary, depth = barycentrics(Xc, faces, cams.Kinv, pix, view, face, H, W)
    return PackedFragments(pix, view, face, bary, depth, (Xc.shape[0], H, W))


def rasterize_packed(verts: torch.Tensor, faces: torch.Tensor, K: torch.Tensor, R: torch.Tensor,
                     t: torch.Tensor, settings: RasterSettings) -> PackedFragments:
    """Like :func:`rasterize` but returns only the covered pixels (see PackedFragments)."""
    check_mesh(verts, faces)
    cams = prepare_cameras(K, R, t, verts.shape[0])
    check_image_size(settings)
    return rasterize_camera_space(world_to_camera(verts, R, t), faces.long(), cams, settings)


def rasterize(verts: torch.Tensor, faces: torch.Tensor, K: torch.Tensor, R: torch.Tensor,
              t: torch.Tensor, settings: RasterSettings) -> Fragments:
    """Rasterize a batch of views of a mesh.

    verts: (B, V, 3) world; faces: (F, 3) int64; K, R: (B, 3, 3); t: (B, 3).
    Returns Fragments(face_idx (B,H,W) int64 (-1 background), bary (B,H,W,3), depth (B,H,W)),
    with bary and depth differentiable w.r.t. verts, K, R, t.
    """
    return rasterize_packed(verts, faces, K, R, t, settings).to_dense()
