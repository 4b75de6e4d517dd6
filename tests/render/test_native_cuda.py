"""The experimental CUDA kernels (fitting.render.native.cuda, FLAME_FIT_NATIVE_CUDA=1) against
the torch path on the same GPU: bit-identical visibility, shading values and gradients, vertex
normals, and the whole renderer against the CPU. Run where a GPU is present; the plumbing
that needs none (flags, build prerequisites) is tested at the end."""
import pytest
import torch

from fitting.render import MeshRenderer, RasterSettings, world_to_camera
from fitting.render.demo import checker_texture, default_sh, load_head_mesh, orbit_cameras
from fitting.render.native import _missing, cuda, shade
from fitting.render.rasterize import _visible_faces_torch, visible_faces
from fitting.render.shading import vertex_normals
from tests.render.test_native_shade import CASES, VIEWS, RES, _fused, check_fused_equals_torch_path

needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


@pytest.fixture
def on(monkeypatch):
    """The CUDA kernels enabled and built (skips with the build error if they cannot be)."""
    monkeypatch.setenv("FLAME_FIT_NATIVE", "1")
    monkeypatch.setenv("FLAME_FIT_NATIVE_CUDA", "1")
    try:
        cuda.build()
    except RuntimeError as e:
        pytest.fail(f"the CUDA kernels did not build: {e}")


@pytest.fixture(scope="module")
def head():
    v, f, vt, ft, _ = load_head_mesh(None)
    K, R, t = orbit_cameras(v, VIEWS, RES)
    return MeshRenderer(f, vt, ft, RasterSettings((RES, RES))), v, K, R, t


def _camera_space(views, res, dev="cuda"):
    v, f, *_ = load_head_mesh(None)
    K, R, t = orbit_cameras(v, views, res)
    Xc = world_to_camera(v[None].expand(views, -1, -1), R, t)
    return Xc.to(dev), f.to(dev), K.to(dev)


@needs_gpu
@pytest.mark.parametrize("views,res,near,cull", [(8, 128, 1e-3, False), (30, 256, 1e-3, False),
                                                 (8, 128, 1e-3, True), (4, 96, 1.45, False)])
def test_visibility_is_bit_identical_to_the_torch_path(on, views, res, near, cull):
    # near = 1.45 cuts through the head (its depths span ~1.37-1.62): the clipping branch
    Xc, f, K = _camera_space(views, res)
    s = RasterSettings((res, res), near=near, cull_backfaces=cull)
    pix, face = visible_faces(Xc, f, K, s, native=True)
    ref_pix, ref_face = _visible_faces_torch(Xc, f, K, s)
    assert pix.numel() > 0.02 * views * res * res
    assert torch.equal(pix, ref_pix) and torch.equal(face, ref_face)
    if near > 0.1:
        assert bool((Xc[..., 2] < near).any()), "the near plane must cut the mesh in this case"
    cpu_pix, cpu_face = visible_faces(Xc.cpu(), f.cpu(), K.cpu(), s)
    assert torch.equal(pix.cpu(), cpu_pix) and torch.equal(face.cpu(), cpu_face)


@needs_gpu
@pytest.mark.parametrize("case", list(CASES))
def test_fused_equals_torch_path_on_cuda(on, head, monkeypatch, case):
    check_fused_equals_torch_path(head, monkeypatch, case, device="cuda")


@needs_gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_vertex_normals_equal_the_torch_ones(on, dtype):
    v, f, *_ = load_head_mesh(None)
    verts = (v[None].repeat(3, 1, 1) + 0.01 * torch.randn(3, *v.shape, generator=torch.Generator().manual_seed(0)))
    verts = verts.to("cuda", dtype).requires_grad_()
    w = torch.randn(verts.shape, generator=torch.Generator().manual_seed(1)).to(verts)
    n = shade.vertex_normals(verts, f.cuda())
    (g,) = torch.autograd.grad((n * w).sum(), verts)
    ref = vertex_normals(verts, f.cuda())
    (ref_g,) = torch.autograd.grad((ref * w).sum(), verts)
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(n, ref, atol=tol, rtol=tol)
    torch.testing.assert_close(g, ref_g, atol=100 * tol * ref_g.abs().max().item(), rtol=100 * tol)


@needs_gpu
def test_renderer_on_cuda_matches_the_cpu(on, monkeypatch):
    v, f, vt, ft, _ = load_head_mesh(None)
    K, R, t = orbit_cameras(v, 8, 128)
    tex, sh = checker_texture(64), default_sh(8)
    renderer = MeshRenderer(f, vt, ft, RasterSettings((128, 128)))
    cpu = renderer(v[None].repeat(8, 1, 1), K, R, t, texture=tex, sh=sh)
    renderer = renderer.cuda()
    out = renderer(v.cuda()[None].repeat(8, 1, 1), K.cuda(), R.cuda(), t.cuda(), texture=tex.cuda(), sh=sh.cuda())
    assert _fused(out)
    assert torch.equal(out.face_idx.cpu(), cpu.face_idx)
    assert (out.image.cpu() - cpu.image).abs().max() < 1e-4
    assert (out.silhouette.cpu() - cpu.silhouette).abs().max() < 1e-4


# ---- without a GPU ----------------------------------------------------------------------

def test_off_unless_asked(monkeypatch):
    monkeypatch.delenv("FLAME_FIT_NATIVE_CUDA", raising=False)
    assert not cuda.enabled()
    monkeypatch.setenv("FLAME_FIT_NATIVE_CUDA", "1")
    assert cuda.enabled()
    monkeypatch.setenv("FLAME_FIT_NATIVE", "0")           # the master switch wins
    assert not cuda.enabled()


def test_cpu_torch_or_no_gpu_means_the_torch_path(monkeypatch):
    monkeypatch.setenv("FLAME_FIT_NATIVE_CUDA", "1")
    Xc, f, K = _camera_space(2, 32, "cpu")
    assert cuda.visible_faces(Xc, f, K, 32, 32, 1e-3, False) is None      # CPU tensors: not this kernel
    if torch.version.cuda is None:
        assert any("CUDA build of torch" in m for m in _missing(cuda=True))
    if not torch.cuda.is_available():
        assert not cuda.available()
