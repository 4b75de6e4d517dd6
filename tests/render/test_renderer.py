"""MeshRenderer composition, outputs, the FLAME template, and CPU/CUDA agreement."""
import pytest
import torch

from fitting.render import (MeshRenderer, RasterSettings, interpolate, rasterize, sample_texture, sh_shading,
                            vertex_normals)
from fitting.render.demo import checker_texture, default_sh, ellipsoid_mesh, load_head_mesh, orbit_cameras


def _setup(views=3, res=48, dtype=torch.float32):
    v, f, vt, ft = ellipsoid_mesh(20, 24)
    K, R, t = orbit_cameras(v, views, res)
    verts = v[None].expand(views, -1, -1).to(dtype)
    return MeshRenderer(f, vt, ft, RasterSettings((res, res))), verts, K.to(dtype), R.to(dtype), t.to(dtype)


def test_renderer_equals_composition_of_the_functional_pieces():
    r, verts, K, R, t = _setup()
    tex, sh = checker_texture(32), default_sh(3)
    out = r(verts, K, R, t, texture=tex, sh=sh)
    B, H, W = 3, 48, 48
    for name in ("image", "albedo", "shading", "normals"):
        assert getattr(out, name).shape == (B, 3, H, W)
    fr = rasterize(verts, r.faces, K, R, t, r.settings)
    torch.testing.assert_close(out.fragments.face_idx, fr.face_idx)
    torch.testing.assert_close(out.fragments.bary, fr.bary)
    torch.testing.assert_close(out.fragments.depth, fr.depth)
    mask = fr.face_idx >= 0
    n = torch.nn.functional.normalize(interpolate(fr, r.faces, vertex_normals(verts, r.faces)), dim=-1)
    uv = interpolate(fr, r.faces_uvs, r.verts_uvs)
    ref = sample_texture(tex, uv) * sh_shading(n, sh) * mask[..., None]
    torch.testing.assert_close(out.image.permute(0, 2, 3, 1), ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.alpha[:, 0], mask.float())
    assert (out.image.permute(0, 2, 3, 1)[~mask] == 0).all()
    # the silhouette equals the hard coverage except on the outline
    m = mask.float()[:, None]
    mx = torch.nn.functional.max_pool2d(m, 3, 1, 1)[:, 0]
    mn = -torch.nn.functional.max_pool2d(-m, 3, 1, 1)[:, 0]
    interior = mx == mn                                  # 3x3 neighbourhood all in or all out
    torch.testing.assert_close(out.silhouette[:, 0][interior], out.alpha[:, 0][interior])
    assert ((out.silhouette > 0) & (out.silhouette < 1)).any()


def test_vertex_colours_and_plain_albedo():
    r, verts, K, R, t = _setup(2)
    col = torch.rand(verts.shape[1], 3)
    out = r(verts, K, R, t, vertex_colors=col)
    fr = out.fragments
    torch.testing.assert_close(out.image.permute(0, 2, 3, 1), interpolate(fr, r.faces, col), atol=1e-6, rtol=1e-6)
    plain = r(verts, K, R, t)
    torch.testing.assert_close(plain.image, plain.alpha.expand(-1, 3, -1, -1))
    with pytest.raises(ValueError, match="sh must be"):
        r(verts, K, R, t, sh=torch.zeros(2, 4, 3))


def test_flame_template_renders(shared_data):
    v, f, vt, ft, name = load_head_mesh(shared_data / "flame_topology" / "head_template_mesh.obj")
    assert name == "flame_template" and v.shape == (5023, 3) and f.shape == (9976, 3)
    K, R, t = orbit_cameras(v, 2, 64)
    out = MeshRenderer(f, vt, ft, RasterSettings((64, 64)))(v[None].expand(2, -1, -1), K, R, t,
                                                             texture=checker_texture(64), sh=default_sh(2))
    cover = out.alpha.mean().item()
    assert 0.1 < cover < 0.5
    # front-lit head: the mean normal of visible pixels faces the camera
    fwd = -R[:, 2]                                     # world direction towards the camera
    for b in range(2):
        n = out.normals[b].permute(1, 2, 0)[out.alpha[b, 0] > 0]
        assert (n @ fwd[b]).mean() > 0.5


@pytest.mark.cuda
def test_cpu_and_cuda_images_agree():
    r, verts, K, R, t = _setup(4, 96)
    tex, sh = checker_texture(64), default_sh(4)
    cpu = r(verts, K, R, t, texture=tex, sh=sh)
    dev = torch.device("cuda")
    gpu = r.to(dev)(verts.to(dev), K.to(dev), R.to(dev), t.to(dev), texture=tex.to(dev), sh=sh.to(dev))
    differ = cpu.fragments.face_idx != gpu.fragments.face_idx.cpu()
    assert not differ.any(), f"{int(differ.sum())} pixels pick another face, e.g. at {differ.nonzero()[:3].tolist()}"
    for name in ("image", "silhouette", "normals"):
        assert (getattr(cpu, name) - getattr(gpu, name).cpu()).abs().max() < 1e-4, name


def test_per_view_matmul_rows_and_empty_input():
    """Row-wise x[n] @ mats[view[n]] against an explicit gather, and with no rows at all (a
    render that covers no pixel must not fail on the zero-size reshape)."""
    from fitting.render.renderer import per_view_matmul
    x = torch.randn(7, 9)
    view = torch.tensor([0, 0, 2, 2, 2, 3, 3])
    mats = torch.randn(4, 9, 3)
    torch.testing.assert_close(per_view_matmul(x, view, mats), torch.einsum("nk,nkc->nc", x, mats[view]))
    assert per_view_matmul(x[:0], view[:0], mats).shape == (0, 3)
