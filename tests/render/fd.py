"""Central finite differences against autograd, and the float64 scene they run on, shared by
the renderer's gradient tests."""
import torch

from fitting.render import MeshRenderer, RasterSettings, look_at
from fitting.render.demo import ellipsoid_mesh

RES = 32


def _scene(views=2):
    """A bumpy float64 ellipsoid seen by ``views`` (<= 2) cameras at RES x RES, with a texture,
    SH and per-pixel loss weights w. Returns renderer, verts (views, V, 3), K, R, t, tex, sh, w."""
    v, f, vt, ft = ellipsoid_mesh(8, 10, radii=(0.09, 0.11, 0.1))
    v = v.double() + 0.004 * torch.randn(v.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    yaw = torch.tensor([0.3, -0.9], dtype=torch.float64)[:views]
    eye = 0.6 * torch.stack([torch.sin(yaw), 0.2 * torch.ones_like(yaw), torch.cos(yaw)], -1)
    R, t = look_at(eye, torch.zeros_like(eye))
    K = torch.tensor([[70.0, 0, RES / 2], [0, 70.0, RES / 2], [0, 0, 1]], dtype=torch.float64).expand(views, 3, 3)
    g = torch.Generator().manual_seed(4)
    tex = torch.rand(1, 3, 8, 8, generator=g, dtype=torch.float64)
    sh = 0.3 * torch.randn(views, 9, 3, generator=g, dtype=torch.float64)
    sh[:, 0] += 2.0
    w = torch.rand(views, 3, RES, RES, generator=g, dtype=torch.float64)
    renderer = MeshRenderer(f, vt, ft, RasterSettings((RES, RES)))
    renderer.verts_uvs = renderer.verts_uvs.double()
    return renderer, v[None].expand(views, -1, -1).clone(), K, R, t, tex, sh, w


def _seen_coords(face_idx, faces, view, n, g, V=0):
    """Flat indices into verts (B, V, 3) of x/y/z of n random vertices of faces visible in
    ``view`` (face_idx (B, H, W)); V is needed for view > 0."""
    fv = face_idx[view]
    seen = torch.unique(faces[fv[fv >= 0]])
    pick = seen[torch.randperm(len(seen), generator=g)[:n]]
    return ((view * V + pick[:, None]) * 3 + torch.arange(3)).flatten()


def _fd_check(loss_fn, x, idx, eps, visibility=None):
    """Central differences of loss_fn at the flat indices idx of x; returns (autograd, fd)."""
    x = x.detach().clone().requires_grad_()
    loss_fn(x).backward()
    ad = x.grad.flatten()[idx]
    fd = []
    for i in idx.tolist():
        xp, xm = x.detach().clone(), x.detach().clone()
        xp.view(-1)[i] += eps
        xm.view(-1)[i] -= eps
        if visibility is not None:
            assert torch.equal(visibility(xp), visibility(xm)), "visibility changed: pick another coordinate"
        fd.append((loss_fn(xp) - loss_fn(xm)).item() / (2 * eps))
    return ad, torch.tensor(fd, dtype=torch.float64)


def _assert_close(ad, fd):
    rel = (ad - fd).norm() / fd.norm()
    assert fd.norm() > 0 and rel < 1e-3, f"relative error {rel:.2e}"
    assert ((ad - fd).abs() <= 1e-3 * fd.abs().max() + 1e-12).all()
