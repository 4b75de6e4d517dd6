"""Hard rasterization: nearest face per pixel, perspective-correct barycentrics, depth.

Two passes, one code path for CPU and CUDA, no Python loop over views, faces or pixels:

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

from fitting.render.cameras import check_cameras, pinhole_inverse, world_to_camera

__all__ = ["RasterSettings", "Fragments", "PackedFragments", "StaticSizes", "rasterize", "rasterize_packed",
           "visible_faces", "visible_faces_static", "static_sizes", "static_settings", "pixel_rays",
           "pixel_centre_rays"]

_FACE_MASK = 0xFFFFFFFF


class RasterSettings(NamedTuple):
    """image_size: (H, W); near: camera-space clip distance (same unit as verts);
    cull_backfaces: drop faces whose (v0, v1, v2) winding is clockwise as seen by the camera
    (i.e. whose right-hand normal points away from it); max_pairs: candidate (face, pixel)
    pairs per chunk of the visibility pass (memory ~ 60-100 bytes per pair);
    static_tiles, static_pixels: 0 (default) for the packed pipeline, whose tensor sizes
    follow the image content. Both > 0 for static shapes throughout (at most that many 2x2
    candidate tiles and covered pixels per call, padded to exactly that many), which lets
    a CUDA graph capture a forward + backward (docs/RENDERER.md). static_outline: in the
    static mode, the silhouette's outline pixel pairs per direction (0: 2 x static_pixels,
    which always suffices but costs ~30x the work of a measured size). A call that needs
    more raises; :func:`static_sizes` measures what a set of views needs and
    :func:`static_settings` sets all three with a margin."""
    image_size: tuple[int, int]
    near: float = 1e-3
    cull_backfaces: bool = False
    max_pairs: int = 1 << 22
    static_tiles: int = 0
    static_pixels: int = 0
    static_outline: int = 0


class StaticSizes(NamedTuple):
    """What a set of views needs in the static mode: 2x2 candidate tiles, covered pixels, and
    outline pixel pairs (the larger of the horizontal and vertical counts)."""
    tiles: int
    pixels: int
    outline: int


class Fragments(NamedTuple):
    """face_idx (B,H,W) int64, -1 = background; bary (B,H,W,3) perspective-correct, 0 at
    background; depth (B,H,W) camera z, 0 at background."""
    face_idx: torch.Tensor
    bary: torch.Tensor
    depth: torch.Tensor


class PackedFragments(NamedTuple):
    """The covered pixels only (N of them), which is what the renderer computes on.

    pix (N,) int64 flat index ``b*H*W + y*W + x``; view (N,) int64; face (N,) int64 face id
    (per view, into ``faces``); bary (N,3); depth (N,); shape (B, H, W).
    Static mode (``RasterSettings.static_tiles``): N = static_pixels, the slots after the
    covered pixels are padding with ``pix = B*H*W`` (one past the image), ``covered`` (N,)
    bool False, view and face 0, bary and depth 0; ``needed`` = (tiles, pixels) the call
    needed (after a CUDA graph replay, check it against the settings: more means faces or
    pixels were dropped). Both are None in the packed mode."""
    pix: torch.Tensor
    view: torch.Tensor
    face: torch.Tensor
    bary: torch.Tensor
    depth: torch.Tensor
    shape: tuple[int, int, int]
    covered: torch.Tensor | None = None
    needed: torch.Tensor | None = None

    def scatter(self, values: torch.Tensor, fill: float = 0) -> torch.Tensor:
        """(N, C) values at the listed pixels -> (B*H*W, C), ``fill`` elsewhere."""
        B, H, W = self.shape
        n = B * H * W
        if self.covered is None:
            return values.new_full((n, values.shape[-1]), fill).index_copy(0, self.pix, values)
        out = values.new_full((n + 1, values.shape[-1]), fill)      # a dump slot for the padding
        return out.index_copy(0, self.pix, values)[:n]

    def face_idx(self) -> torch.Tensor:
        """(B, H, W) int64 face per pixel, -1 for background."""
        B, H, W = self.shape
        face = self.face if self.covered is None else torch.where(self.covered, self.face, -1)
        return self.scatter(face[:, None], -1).view(B, H, W)

    def to_dense(self) -> Fragments:
        B, H, W = self.shape
        bary = self.scatter(self.bary).view(B, H, W, 3)
        depth = self.scatter(self.depth[:, None]).view(B, H, W)
        return Fragments(self.face_idx(), bary, depth)


def _check_mesh(verts: torch.Tensor, faces: torch.Tensor) -> None:
    if verts.dim() != 3 or verts.shape[-1] != 3:
        raise ValueError(f"verts must be (B, V, 3), got {tuple(verts.shape)}; add a batch dim")
    if faces.dim() != 2 or faces.shape[-1] != 3 or faces.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"faces must be an integer (F, 3) tensor, got {tuple(faces.shape)} {faces.dtype}")
    if faces.device != verts.device:
        raise ValueError(f"faces on {faces.device} but verts on {verts.device}; move them together")


def _cross(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cross product over the last dim (explicit: faster than linalg.cross on strided views)."""
    ax, ay, az = a.unbind(-1)
    bx, by, bz = b.unbind(-1)
    return torch.stack([ay * bz - az * by, az * bx - ax * bz, ax * by - ay * bx], -1)


def pixel_centre_rays(Kinv: torch.Tensor, view: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
                      H: int, W: int) -> torch.Tensor:
    """Rays d = K^-1 (x + 0.5, y + 0.5, 1) of integer pixels (x, y) of views ``view`` (all (N,)).

    Kinv: (B, 3, 3) upper triangular with last row (0, 0, 1) (any pinhole K). Per-view
    column / row tables keep the per-pixel work to three scalar gathers. Returns (N, 3)."""
    dt = Kinv.dtype
    cols = torch.arange(W, device=Kinv.device, dtype=dt) + 0.5
    rows = torch.arange(H, device=Kinv.device, dtype=dt) + 0.5
    col_x = Kinv[:, 0, 0, None] * cols + Kinv[:, 0, 2, None]          # (B, W)
    row_x = Kinv[:, 0, 1, None] * rows                                 # (B, H)  (skew)
    row_y = Kinv[:, 1, 1, None] * rows + Kinv[:, 1, 2, None]          # (B, H)
    ci, ri = view * W + x, view * H + y
    dx = col_x.reshape(-1).index_select(0, ci) + row_x.reshape(-1).index_select(0, ri)
    dy = row_y.reshape(-1).index_select(0, ri)
    return torch.stack([dx, dy, torch.ones_like(dx)], -1)


def pixel_rays(u: torch.Tensor, v: torch.Tensor, Kinv: torch.Tensor) -> torch.Tensor:
    """Camera-frame ray directions d = K^-1 (u, v, 1) (z component 1 for a pinhole K).

    u, v: (N,) continuous pixel coordinates; Kinv: (N, 3, 3) -> (N, 3)."""
    return Kinv[:, :, 0] * u[:, None] + Kinv[:, :, 1] * v[:, None] + Kinv[:, :, 2]


def _face_boxes(Xc: torch.Tensor, faces: torch.Tensor, K: torch.Tensor, near: float, H: int, W: int,
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


def _face_coefficients(Xc: torch.Tensor, faces: torch.Tensor, K: torch.Tensor, gidx: torch.Tensor):
    """Edge-function and inverse-depth coefficients of the faces ``gidx`` (flat b*F + f).

    Returns coef (M, 12): rows ``[a0 b0 c0 a1 b1 c1 a2 b2 c2 az bz cz]`` with
    ``w_i = a_i u + b_i v + c_i`` sign-normalised (all >= 0 inside) and inverse depth
    ``az u + bz v + cz``, and det (M,) = det(P0, P1, P2) (0: degenerate or edge-on;
    > 0: the right-hand normal points away from the camera)."""
    B, V = Xc.shape[:2]
    F = faces.shape[0]
    view = torch.div(gidx, F, rounding_mode="floor")
    vid = faces.index_select(0, gidx - view * F) + (view * V)[:, None]
    P = Xc.reshape(B * V, 3).index_select(0, vid.reshape(-1)).view(-1, 3, 3)
    P0, P1, P2 = P.unbind(1)
    E = torch.stack([_cross(P1, P2), _cross(P2, P0), _cross(P0, P1)], 1)    # (M, 3, 3)
    det = _sum3(P0 * E[:, 0])
    # w_i = E_i . (Kinv (u, v, 1)), Kinv upper triangular with last row (0, 0, 1)
    Ki = pinhole_inverse(K).reshape(B, 9).index_select(0, view)            # (M, 9)
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


def _key(invz, fid):
    """int64 z-buffer key: float32 bits of inverse depth << 32 | (2^31 - 1 - face)."""
    return (invz.float().view(torch.int32).to(torch.int64) << 32) | (0x7FFFFFFF - fid)


def _pairs_key(w0, w1, w2, invz, fid, near):
    """int64 z-buffer key of candidate pairs, 0 where the pixel centre is not covered.

    Key = float32 bits of inverse depth (positive floats order like their bit patterns;
    larger = nearer) << 32 | (2^31 - 1 - face), so 'amax' keeps the nearest face and, on an
    exact tie, the lowest face id."""
    ok = (torch.minimum(torch.minimum(w0, w1), w2) >= 0) & (invz <= 1.0 / near)
    key = (invz.float().view(torch.int32).to(torch.int64) << 32) | (0x7FFFFFFF - fid)
    return torch.where(ok, key, 0)   # inside implies invz >= 0; invz == 0 (degenerate) is not a hit


def _grid_keys(coef, u0, v0, fid, dx, dy, near: float):
    """z-buffer keys of each face's (by, bx) grid of candidate pixels.

    coef: (n, 12) from _face_coefficients; u0, v0: (n,) centre of each grid's corner pixel;
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
                  native: bool | None = None):
    """Visibility pass. Xc: (B, V, 3) camera frame. Returns (pix (N,), face (N,)) int64 for the
    covered pixels, sorted by pixel; ``face`` indexes ``faces`` (per view).

    native: None (default) runs the compiled kernel (fitting.render.native, bit-identical
    to the torch path) for float32 inputs when it is available (CPU; CUDA with
    FLAME_FIT_NATIVE_CUDA=1, see fitting.render.native.cuda), else the torch path; False
    always runs the torch path; True requires the kernel (RuntimeError otherwise)."""
    if native is not False and Xc.device.type in ("cpu", "cuda"):
        out = _native_visible_faces(Xc, faces, K, settings)
        if out is not None:
            return out
        if native:
            raise RuntimeError("the native visibility kernel is not available for these inputs (it needs "
                               "float32 Xc and K, near > 0, finite values, and a successful build: "
                               "python -m fitting.render.native; on CUDA also FLAME_FIT_NATIVE_CUDA=1)")
    return _visible_faces_torch(Xc, faces, K, settings)


def _native_visible_faces(Xc, faces, K, settings):
    """The compiled kernel's (pix, face), or None where it does not apply (see native)."""
    from fitting.render import native as _native
    from fitting.render.native import cuda as _cuda
    H, W = settings.image_size
    kernel = _cuda if _cuda.runs_on(Xc.device) else _native
    return kernel.visible_faces(Xc, faces, K, H, W, settings.near, settings.cull_backfaces)


def _visible_faces_torch(Xc: torch.Tensor, faces: torch.Tensor, K: torch.Tensor, settings: RasterSettings):
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
    x0, x1, y0, y1 = _face_boxes(Xc, faces, K, settings.near, H, W)
    nx = (x1 - x0 + 1).clamp_min(0).flatten()
    ny = (y1 - y0 + 1).clamp_min(0).flatten()
    gidx = ((nx > 0) & (ny > 0)).nonzero()[:, 0]            # faces that may cover a pixel centre
    zbuf = torch.zeros(B * H * W, dtype=torch.int64, device=dev)
    coef, det = _face_coefficients(Xc, faces, K, gidx)
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
            key = _grid_keys(coef[ch], u0[ch], v0[ch], fid[ch], dx, dy, settings.near)
            pix = pix0[ch][:, None, None] + offs
            zbuf.scatter_reduce_(0, pix.flatten(), key.flatten(), "amax")
    pix = zbuf.nonzero()[:, 0]
    face = 0x7FFFFFFF - (zbuf.index_select(0, pix) & _FACE_MASK)
    return pix, face


# Static-mode tiles are _TILE x _TILE pixels. Most faces of a head cover a pixel box of 1-3
# pixels a side: 2x2 tiles evaluate half the candidates of 4x4 ones (2.4 M instead of 4.8 M for
# 30 views at 256²) for 2.4x the tiles, ~20 % less time in the CPU proxy (docs/RENDERER.md).
_TILE = 2


def _tiles(Xc: torch.Tensor, faces: torch.Tensor, K: torch.Tensor, settings: RasterSettings):
    """Per face (flat b*F + f): boxes x0, x1, y0, y1, edge tables coef (B*F, 12), tiles per
    row tx and the number of tiles ``count`` (0 for faces that cannot draw)."""
    H, W = settings.image_size
    B, F = Xc.shape[0], faces.shape[0]
    x0, x1, y0, y1 = (b.flatten() for b in _face_boxes(Xc, faces, K, settings.near, H, W, static=True))
    coef, det = _face_coefficients(Xc, faces, K, torch.arange(B * F, device=Xc.device))
    draw = det < 0 if settings.cull_backfaces else det != 0
    tx = torch.div(x1 - x0 + _TILE, _TILE, rounding_mode="floor").clamp_min(0)
    ty = torch.div(y1 - y0 + _TILE, _TILE, rounding_mode="floor").clamp_min(0)
    return x0, x1, y0, y1, coef, tx, torch.where(draw, tx * ty, 0)


@torch.no_grad()
def static_sizes(verts: torch.Tensor, faces: torch.Tensor, K: torch.Tensor, R: torch.Tensor,
                 t: torch.Tensor, settings: RasterSettings) -> StaticSizes:
    """StaticSizes(tiles, pixels, outline) that the static mode needs to render these views;
    choose ``RasterSettings.static_tiles`` / ``static_pixels`` / ``static_outline`` with a
    margin for motion (:func:`static_settings` does).

    verts: (B, V, 3) world; K, R: (B, 3, 3); t: (B, 3)."""
    from fitting.render.silhouette import outline_pair_counts
    faces = faces.long()
    Xc = world_to_camera(verts, R, t)
    tiles = int(_tiles(Xc, faces, K, settings)[-1].sum())
    packed = settings._replace(static_tiles=0, static_pixels=0, static_outline=0)
    pix, face = visible_faces(Xc, faces, K, packed)
    B, (H, W) = verts.shape[0], settings.image_size
    face_idx = torch.full((B * H * W,), -1, dtype=torch.int64, device=pix.device).index_copy(0, pix, face)
    outline = int(outline_pair_counts(face_idx.view(B, H, W)).max())
    return StaticSizes(tiles, int(pix.numel()), outline)


def static_settings(verts: torch.Tensor, faces: torch.Tensor, K: torch.Tensor, R: torch.Tensor, t: torch.Tensor,
                    settings: RasterSettings, margin: float = 0.2, extra: int = 64) -> RasterSettings:
    """``settings`` switched to the static mode, sized for these views (static_sizes) plus
    ``margin`` (relative) and ``extra`` (absolute) room for the mesh and cameras to move.
    Same arguments as static_sizes."""
    need = static_sizes(verts, faces, K, R, t, settings)
    room = [int(n * (1 + margin)) + extra for n in need]
    return settings._replace(static_tiles=room[0], static_pixels=room[1], static_outline=room[2])


@torch.no_grad()
def visible_faces_static(Xc: torch.Tensor, faces: torch.Tensor, K: torch.Tensor, settings: RasterSettings):
    """Visibility pass with static shapes and no host sync (capturable in a CUDA graph).

    Every face's box is cut into _TILE x _TILE tiles; a fixed number ``settings.static_tiles`` of tile
    slots is filled by a search over the faces' cumulative tile counts. Keys are
    bit-identical to :func:`visible_faces` (see _grid_keys). Returns face (B*H*W,) int64,
    -1 for background, and the number of tiles needed (0-dim int64 tensor; more than
    ``static_tiles`` means tiles were dropped: the caller must check)."""
    H, W = settings.image_size
    B, F = Xc.shape[0], faces.shape[0]
    dev = Xc.device
    T = _TILE
    x0, x1, y0, y1, coef, tx, count = _tiles(Xc, faces, K, settings)
    ends = count.cumsum(0)
    slot = torch.arange(settings.static_tiles, device=dev)
    g = torch.searchsorted(ends, slot, right=True).clamp(max=B * F - 1)     # face of each slot
    local = slot - (ends.index_select(0, g) - count.index_select(0, g))
    w = tx.index_select(0, g).clamp_min(1)
    ry = torch.div(local, w, rounding_mode="floor")
    tile_x = x0.index_select(0, g) + T * (local - ry * w)                   # tile corner pixel
    tile_y = y0.index_select(0, g) + T * ry
    view = torch.div(g, F, rounding_mode="floor")
    d = torch.arange(T, device=dev)
    xs, ys = tile_x[:, None] + d, tile_y[:, None] + d                       # (S, T) each
    key = _grid_keys(coef.index_select(0, g), tile_x.to(coef.dtype) + 0.5, tile_y.to(coef.dtype) + 0.5,
                     g - view * F, d.to(coef.dtype), d.to(coef.dtype), settings.near)   # (S, T, T)
    inside = ((slot < ends[-1])[:, None, None]
              & (ys <= y1.index_select(0, g)[:, None])[:, :, None]
              & (xs <= x1.index_select(0, g)[:, None])[:, None, :])
    pix = (view * (H * W))[:, None, None] + ys.clamp(max=H - 1)[:, :, None] * W + xs.clamp(max=W - 1)[:, None, :]
    zbuf = torch.zeros(B * H * W, dtype=torch.int64, device=dev)
    zbuf.scatter_reduce_(0, pix.flatten(), torch.where(inside, key, 0).flatten(), "amax")
    face = torch.where(zbuf > 0, 0x7FFFFFFF - (zbuf & _FACE_MASK), -1)
    return face, ends[-1]


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


def _barycentrics(Xc, faces, Kinv, pix, view, face, H, W, covered=None):
    """Differentiable perspective-correct barycentrics and depth of the given pixels
    (zero where ``covered`` (N,) bool, if given, is False)."""
    B, V = Xc.shape[:2]
    rem = pix - view * (H * W)
    y = torch.div(rem, W, rounding_mode="floor")
    x = rem - y * W
    # index_select rather than advanced indexing: ~3x faster gathers and scatter-adds on CPU
    d = pixel_centre_rays(Kinv.to(Xc.dtype), view, x, y, H, W)                # (N, 3)
    vid = faces.index_select(0, face) + (view * V)[:, None]                   # (N, 3)
    P = Xc.reshape(B * V, 3).index_select(0, vid.reshape(-1)).view(-1, 3, 3)  # (N, 3, 3)
    P0, P1, P2 = P.unbind(1)
    # w_i = d . (P_j x P_k); with q = d x P0 the last two are triple products with q, and
    # their sum is d . ((P1 - P0) x (P2 - P0)): two cross products instead of three
    q = _cross(d, P0)
    w1 = -(P2 * q).sum(-1)
    w2 = (P1 * q).sum(-1)
    total = (d * _cross(P1 - P0, P2 - P0)).sum(-1)
    w = torch.stack([total - w1 - w2, w1, w2], -1)
    if covered is not None:                          # background rays may be parallel to face 0
        total = torch.where(covered, total, 1.0)
        w = torch.where(covered[:, None], w, 0.0)
    bary = w * total.reciprocal()[:, None]           # one reciprocal: cheaper than a division backward
    depth = (bary * P[..., 2]).sum(-1)
    return bary, depth


def rasterize_packed(verts: torch.Tensor, faces: torch.Tensor, K: torch.Tensor, R: torch.Tensor,
                     t: torch.Tensor, settings: RasterSettings) -> PackedFragments:
    """Like :func:`rasterize` but returns only the covered pixels (see PackedFragments)."""
    _check_mesh(verts, faces)
    check_cameras(K, R, t, verts.shape[0])
    H, W = settings.image_size
    if H <= 0 or W <= 0:
        raise ValueError(f"image_size must be positive (H, W), got {settings.image_size}")
    faces = faces.long()
    Xc = world_to_camera(verts, R, t)
    B = verts.shape[0]
    if settings.static_tiles > 0 or settings.static_pixels > 0:
        pix, at, face, covered, needed = _static_pixels(Xc.detach(), faces, K.detach(), settings)
    else:
        pix, face = visible_faces(Xc.detach(), faces, K.detach(), settings)
        at, covered, needed = pix, None, None
    view = torch.div(at, H * W, rounding_mode="floor")
    bary, depth = _barycentrics(Xc, faces, pinhole_inverse(K), at, view, face, H, W, covered)
    return PackedFragments(pix, view, face, bary, depth, (B, H, W), covered, needed)


def _static_pixels(Xc, faces, K, settings):
    """Static-mode visibility: (pix (P,), at (P,), face (P,), covered (P,), needed (2,)) with
    P = settings.static_pixels (see PackedFragments); ``at`` is ``pix`` with the padding slots
    on valid, spread-out pixels, for computing on."""
    if settings.static_tiles <= 0 or settings.static_pixels <= 0:
        raise ValueError("static mode needs both RasterSettings.static_tiles and static_pixels > 0 "
                         "(static_sizes() measures what your views need)")
    B = Xc.shape[0]
    H, W = settings.image_size
    face_all, tiles = visible_faces_static(Xc, faces, K, settings)
    hit = face_all >= 0
    needed = torch.stack([tiles, hit.sum()])
    if not (Xc.is_cuda and torch.cuda.is_current_stream_capturing()):
        nt, npix = needed.tolist()
        if nt > settings.static_tiles or npix > settings.static_pixels:
            raise ValueError(f"these views need {nt} tiles and {npix} pixels but RasterSettings allows "
                             f"static_tiles={settings.static_tiles}, static_pixels={settings.static_pixels}; "
                             "raise them (static_sizes() measures what views need)")
    n = B * H * W
    pix = torch.nonzero_static(hit, size=settings.static_pixels, fill_value=n)[:, 0]
    covered = pix < n
    # padding slots compute on spread-out pixels and faces: were they all the same, the
    # backward's atomic adds into that one face's vertices would serialise
    spread = torch.arange(settings.static_pixels, device=pix.device)
    at = torch.where(covered, pix, spread % n)
    face = torch.where(covered, face_all.index_select(0, at), spread % faces.shape[0])
    return pix, at, face, covered, needed


def rasterize(verts: torch.Tensor, faces: torch.Tensor, K: torch.Tensor, R: torch.Tensor,
              t: torch.Tensor, settings: RasterSettings) -> Fragments:
    """Rasterize a batch of views of a mesh.

    verts: (B, V, 3) world; faces: (F, 3) int64; K, R: (B, 3, 3); t: (B, 3).
    Returns Fragments(face_idx (B,H,W) int64 (-1 background), bary (B,H,W,3), depth (B,H,W)),
    with bary and depth differentiable w.r.t. verts, K, R, t.
    """
    return rasterize_packed(verts, faces, K, R, t, settings).to_dense()
