"""Autograd vs float64 central finite differences; silhouette gradients at the outline."""
import math

import pytest
import torch

from fitting.render import RasterSettings, rasterize, silhouette
from tests.render.fd import _assert_close, _fd_check, _scene, _seen_coords



@pytest.mark.slow
def test_image_gradients_match_finite_differences():
    renderer, verts, K, R, t, tex, sh, w = _scene()

    def loss(verts=verts, tex=tex, sh=sh):
        return (renderer(verts, K, R, t, texture=tex, sh=sh).image * w).sum()

    def vis(verts):
        return rasterize(verts, renderer.faces, K, R, t, renderer.settings).face_idx

    g = torch.Generator().manual_seed(5)
    idx = _seen_coords(vis(verts), renderer.faces, 0, 4, g)
    _assert_close(*_fd_check(lambda x: loss(verts=x), verts, idx, 1e-6, vis))
    _assert_close(*_fd_check(lambda x: loss(sh=x), sh, torch.randperm(sh.numel(), generator=g)[:12], 1e-6))
    _assert_close(*_fd_check(lambda x: loss(tex=x), tex, torch.randperm(tex.numel(), generator=g)[:12], 1e-6))


def test_vertex_colour_and_depth_gradients():
    renderer, verts, K, R, t, _, _, w = _scene(1)
    col = torch.rand(verts.shape, dtype=torch.float64)

    def loss(x):
        out = renderer(x, K, R, t, vertex_colors=col)
        return (out.image * w).sum() + (out.fragments.depth ** 2).sum()

    idx = torch.arange(0, verts.numel(), 7)[:10]
    _assert_close(*_fd_check(loss, verts, idx, 1e-6, lambda x: renderer(x, K, R, t).fragments.face_idx))
    # camera translation: gradients reach the cameras too

    def loss_t(tt):
        out = renderer(verts, K, R, tt, vertex_colors=col)
        return (out.image * w).sum() + (out.fragments.depth ** 2).sum()

    _assert_close(*_fd_check(loss_t, t, torch.arange(3), 1e-7,
                             lambda tt: renderer(verts, K, R, tt).fragments.face_idx))

    def loss_k(KK):                                     # focal lengths and principal point
        out = renderer(verts, KK, R, t, vertex_colors=col)
        return (out.image * w).sum() + (out.fragments.depth ** 2).sum()

    _assert_close(*_fd_check(loss_k, K.contiguous(), torch.tensor([0, 2, 4, 5]), 1e-6,
                             lambda KK: renderer(verts, KK, R, t).fragments.face_idx))


def _disc(n=24, radius=0.3, z=1.0, dtype=torch.float64):
    ang = torch.arange(n, dtype=dtype) * (2 * math.pi / n) + 0.1
    rim = torch.stack([radius * torch.cos(ang), radius * torch.sin(ang), torch.full_like(ang, z)], -1)
    verts = torch.cat([torch.tensor([[0.0, 0.0, z]], dtype=dtype), rim])[None]
    i = torch.arange(n)
    faces = torch.stack([torch.zeros_like(i), 1 + i, 1 + (i + 1) % n], -1)
    K = torch.tensor([[[50.0, 0, 24.0], [0, 50.0, 24.0], [0, 0, 1]]], dtype=dtype)
    return verts, faces, K, torch.eye(3, dtype=dtype)[None], torch.zeros(1, 3, dtype=dtype)


def test_silhouette_gradient_pushes_outline_outward():
    verts, faces, K, R, t = _disc()
    verts.requires_grad_()
    s = RasterSettings((48, 48))
    sil = silhouette(verts, faces, K, R, t, settings=s)
    target = torch.ones_like(sil)                       # larger than the mesh
    ((sil - target) ** 2).mean().backward()
    g = verts.grad[0, 1:, :2]                           # rim vertices, image-plane components
    radial = torch.nn.functional.normalize(verts[0, 1:, :2].detach(), dim=-1)
    moving = g.norm(dim=-1) > 0
    assert moving.float().mean() > 0.8
    assert ((-g * radial).sum(-1)[moving] > 0).all()   # descent moves every rim vertex outward
    # and a target smaller than the mesh pulls it inward
    verts.grad = None
    sil = silhouette(verts, faces, K, R, t, settings=s)
    (sil ** 2).mean().backward()
    assert ((-verts.grad[0, 1:, :2] * radial).sum(-1)[moving] < 0).all()


def test_silhouette_scale_gradient_matches_finite_differences():
    verts, faces, K, R, t = _disc()
    centre = verts[:, :1]
    target = torch.zeros(1, 1, 48, 48, dtype=torch.float64)
    target[..., 8:40, 10:38] = 1
    s = RasterSettings((48, 48))

    def loss(scale):
        v = centre + scale * (verts - centre)
        return ((silhouette(v, faces, K, R, t, settings=s) - target) ** 2).sum()

    ad, fd = _fd_check(loss, torch.tensor([1.0], dtype=torch.float64), torch.tensor([0]), 1e-7)
    assert fd.abs().item() > 1
    _assert_close(ad, fd)


def test_silhouette_is_area_coverage_for_straight_edges():
    # a large quad whose right edge is the vertical line u = 20.3 and bottom edge v = 30.8
    H = W = 40
    K = torch.tensor([[[40.0, 0, 0], [0, 40.0, 0], [0, 0, 1]]], dtype=torch.float64)
    u1, v1 = 20.3, 30.8
    x1, y1 = u1 / 40, v1 / 40
    verts = torch.tensor([[[-1, -1, 1], [x1, -1, 1], [x1, y1, 1], [-1, y1, 1]]], dtype=torch.float64)
    faces = torch.tensor([[0, 1, 2], [0, 2, 3]])
    sil = silhouette(verts, faces, K, torch.eye(3, dtype=torch.float64)[None], torch.zeros(1, 3, dtype=torch.float64),
                     settings=RasterSettings((H, W)))[0, 0]
    cov_x = (torch.arange(W, dtype=torch.float64).neg() + u1).clamp(0, 1)    # column coverage
    cov_y = (torch.arange(H, dtype=torch.float64).neg() + v1).clamp(0, 1)
    expect = cov_y[:, None] * cov_x[None]
    # exact except at the corner pixel (antialiasing is per axis)
    mask = torch.ones(H, W, dtype=torch.bool)
    mask[30, 20] = False
    torch.testing.assert_close(sil[mask], expect[mask], atol=1e-9, rtol=0)
