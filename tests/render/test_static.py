"""Static-shape mode (fitting.render.static): same images and gradients as the packed
pipeline, and capturable in a CUDA graph."""
import pytest
import torch

from fitting.render import MeshRenderer, RasterSettings
from fitting.render.demo import checker_texture, default_sh, ellipsoid_mesh, orbit_cameras
from fitting.render.silhouette import outline_pair_counts
from fitting.render.static import StaticMeshRenderer, StaticSizes, static_sizes


def _scene(views=3, res=40, device="cpu"):
    v, f, vt, ft = ellipsoid_mesh(16, 20)
    K, R, t = (x.to(device) for x in orbit_cameras(v, views, res))
    verts = v.to(device)[None].repeat(views, 1, 1)
    return f.to(device), vt.to(device), ft.to(device), verts, K, R, t


def _render(settings, f, vt, ft, verts, K, R, t, sizes=None):
    verts = verts.clone().requires_grad_()
    tex = checker_texture(32).to(verts.device).requires_grad_()
    sh = default_sh(verts.shape[0]).to(verts.device).requires_grad_()
    renderer = MeshRenderer(f, vt, ft, settings) if sizes is None else StaticMeshRenderer(f, vt, ft, settings, sizes)
    out = renderer.to(verts.device)(verts, K, R, t, texture=tex, sh=sh)
    H, W = settings.image_size
    w = torch.linspace(0, 1, H * W, device=verts.device).view(1, 1, H, W)
    ((out.image * w).sum() + (out.silhouette * w).sum()).backward()
    return out, (verts.grad, tex.grad, sh.grad)


def test_static_mode_equals_packed_mode():
    f, vt, ft, verts, K, R, t = _scene()
    packed = RasterSettings((40, 40))
    tiles, pixels, outline = static_sizes(verts, f, K, R, t, packed)
    assert tiles > 0 and pixels > 100 and 0 < outline < pixels
    ref, ref_grads = _render(packed, f, vt, ft, verts, K, R, t)
    # outline sized exactly: every pair slot is used, none dropped
    out, grads = _render(packed, f, vt, ft, verts, K, R, t, StaticSizes(tiles, pixels + 50, outline))
    assert out.packed.covered is not None and out.packed.needed.tolist() == [tiles, pixels]
    assert out.needed.tolist() == [tiles, pixels, outline]
    assert int(out.packed.covered.sum()) == pixels
    assert torch.equal(out.fragments.face_idx, ref.fragments.face_idx)
    for name in ("image", "silhouette", "alpha", "albedo", "shading", "normals"):
        torch.testing.assert_close(getattr(out, name), getattr(ref, name), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(out.fragments.bary, ref.fragments.bary, atol=1e-6, rtol=1e-6)
    for g, r in zip(grads, ref_grads):
        assert r.abs().max() > 0
        torch.testing.assert_close(g, r, atol=1e-6 * float(r.abs().max()), rtol=1e-5)


def test_static_mode_with_too_small_sizes_says_what_is_needed():
    f, vt, ft, verts, K, R, t = _scene()
    tiles, pixels, outline = static_sizes(verts, f, K, R, t, RasterSettings((40, 40)))
    for nt, npix in ((tiles - 1, pixels), (tiles, pixels - 1)):
        with pytest.raises(ValueError, match=f"need {tiles} tiles and {pixels} pixels"):
            StaticMeshRenderer(f, vt, ft, RasterSettings((40, 40)), StaticSizes(nt, npix))(verts, K, R, t)
    with pytest.raises(ValueError, match=f"needs {outline} outline pairs"):
        StaticMeshRenderer(f, vt, ft, RasterSettings((40, 40)),
                           StaticSizes(tiles, pixels, outline - 1))(verts, K, R, t)
    with pytest.raises(ValueError, match="both"):
        StaticMeshRenderer(f, vt, ft, RasterSettings((40, 40)), StaticSizes(tiles, 0))


def test_outline_pair_counts_on_a_known_face_map():
    # a 3x4 covered block in a 6x7 frame: each of its 3 rows has 2 horizontal outline pairs,
    # each of its 4 columns 2 vertical ones; a second view, one pixel in the corner: one pair
    # each way (the frame's border makes none)
    face_idx = torch.full((2, 6, 7), -1)
    face_idx[0, 1:4, 2:6] = 5
    face_idx[1, 0, 0] = 1
    assert outline_pair_counts(face_idx).tolist() == [3 * 2 + 1, 4 * 2 + 1]


def test_with_room_leaves_room():
    f, vt, ft, verts, K, R, t = _scene()
    need = static_sizes(verts, f, K, R, t, RasterSettings((40, 40)))
    assert need.with_room(margin=0.5, extra=3) == tuple(int(n * 1.5) + 3 for n in need)


@pytest.mark.cuda
def test_cuda_graph_replay_of_forward_and_backward_matches_eager():
    f, vt, ft, verts, K, R, t = _scene(views=4, res=64, device="cuda")
    settings = RasterSettings((64, 64))
    sizes = static_sizes(verts, f, K, R, t, settings).with_room(margin=0.5)
    renderer = StaticMeshRenderer(f, vt, ft, settings, sizes).cuda()
    x = verts.clone().requires_grad_()
    tex = checker_texture(32).cuda().requires_grad_()
    sh = default_sh(4).cuda().requires_grad_()

    def step():
        out = renderer(x, K, R, t, texture=tex, sh=sh)
        (out.image.square().mean() + out.silhouette.mean()).backward()
        return out

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):                 # warm-up on a side stream, as CUDA graphs need
        for _ in range(2):
            step()
            x.grad = tex.grad = sh.grad = None
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = step()
    for shift in (0.0, 0.01):                     # replay on new vertex values, in place
        with torch.no_grad():
            x.copy_(verts + shift * torch.tensor([1.0, -0.5, 0.0], device="cuda"))
        graph.replay()
        torch.cuda.synchronize()
        ref_x = x.detach().clone().requires_grad_()
        ref_tex, ref_sh = tex.detach().clone().requires_grad_(), sh.detach().clone().requires_grad_()
        ref = MeshRenderer(f, vt, ft, RasterSettings((64, 64))).cuda()(ref_x, K, R, t, texture=ref_tex, sh=ref_sh)
        (ref.image.square().mean() + ref.silhouette.mean()).backward()
        assert torch.equal(out.packed.face_idx(), ref.fragments.face_idx)
        assert (out.needed.cpu() <= torch.tensor(sizes)).all()
        torch.testing.assert_close(out.image, ref.image, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(x.grad, ref_x.grad, atol=1e-6, rtol=1e-4)
        torch.testing.assert_close(sh.grad, ref_sh.grad, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("cull", [False, True])
def test_static_mode_equals_packed_for_vertex_colours_culling_and_near_clipping(cull):
    f, vt, ft, verts, K, R, t = _scene(views=2, res=32)
    verts = verts.clone()
    verts[1] = verts[1] * 4.0                     # view 1: the camera sits inside the mesh (near plane)
    colours = torch.rand(verts.shape[1], 3)
    packed = RasterSettings((32, 32), cull_backfaces=cull)
    sizes = static_sizes(verts, f, K, R, t, packed)
    ref = MeshRenderer(f, settings=packed)(verts, K, R, t, vertex_colors=colours)
    out = StaticMeshRenderer(f, settings=packed, sizes=sizes)(verts, K, R, t, vertex_colors=colours)
    assert torch.equal(out.fragments.face_idx, ref.fragments.face_idx)
    assert (ref.fragments.face_idx[1] >= 0).any()
    for name in ("image", "silhouette"):
        torch.testing.assert_close(getattr(out, name), getattr(ref, name), atol=1e-6, rtol=1e-6)
