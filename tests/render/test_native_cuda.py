"""The experimental CUDA kernels (fitting.render.native.cuda) against the torch path:
bit-identical visibility, shading values and gradients, vertex normals, and the whole
renderer against the CPU kernels. Each test runs twice: on a GPU ("cuda", skipped without
one, FLAME_FIT_NATIVE_CUDA=1) and with the same drivers emulated on the CPU ("emulated",
FLAME_FIT_NATIVE_CUDA=emulate: cuda_emulation.h), which checks their indexing, warp
reductions, atomics and glue on every machine. The plumbing is tested at the end."""
import pytest
import torch

from fitting.render import MeshRenderer, RasterSettings, world_to_camera
from fitting.render.demo import checker_texture, default_sh, load_head_mesh
from fitting.render.native import _missing, cuda, shade
from fitting.render.rasterize import _visible_faces_torch, visible_faces
from fitting.render.shading import vertex_normals
from tests.render.test_native_shade import (CASES, _fused, cameras, check_fused_equals_torch_path,
                                            check_silhouette_equals_torch_path)

# smaller than the CPU kernels' scene (8 views, 128 px): the emulation runs every GPU thread in
# turn, and 3 views whose intrinsics differ still show a kernel that reads another view's data
VIEWS, RES = 3, 96


@pytest.fixture(params=["emulated", "cuda"])
def device(request, monkeypatch):
    """The CUDA kernels enabled and built, on the GPU or emulated on the CPU (skips without a
    GPU, or without a compiler for the emulation; fails with the build error otherwise).
    Returns the device their tensors live on."""
    emulated = request.param == "emulated"
    if emulated and _missing():
        pytest.skip("no C++ compiler or ninja to build the emulated CUDA kernels")
    if not emulated and not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    monkeypatch.setenv("FLAME_FIT_NATIVE", "1")
    monkeypatch.setenv("FLAME_FIT_NATIVE_CUDA", "emulate" if emulated else "1")
    try:
        cuda.build()
    except RuntimeError as e:
        pytest.fail(f"the {request.param} CUDA kernels did not build: {e}")
    return "cpu" if emulated else "cuda"


@pytest.fixture(scope="module")
def head():
    v, f, vt, ft, _ = load_head_mesh(None)
    K, R, t = cameras(v, VIEWS, RES)
    return MeshRenderer(f, vt, ft, RasterSettings((RES, RES))), v, K, R, t


def _camera_space(views, res, dev):
    v, f, *_ = load_head_mesh(None)
    K, R, t = cameras(v, views, res)
    Xc = world_to_camera(v[None].expand(views, -1, -1), R, t)
    return Xc.to(dev), f.to(dev), K.to(dev)


@pytest.mark.parametrize("views,res,near,cull", [(8, 128, 1e-3, False), (30, 256, 1e-3, False),
                                                 (8, 128, 1e-3, True), (4, 96, 1.45, False)])
def test_visibility_is_bit_identical_to_the_torch_path(device, views, res, near, cull):
    # near = 1.45 cuts through the head (its depths span ~1.37-1.62): the clipping branch
    Xc, f, K = _camera_space(views, res, device)
    s = RasterSettings((res, res), near=near, cull_backfaces=cull)
    pix, face = cuda.visible_faces(Xc, f, K, res, res, near, cull)
    assert torch.equal(visible_faces(Xc, f, K, s, native=True)[0], pix)       # the renderer's route
    ref_pix, ref_face = _visible_faces_torch(Xc, f, K, s)
    assert pix.numel() > 0.02 * views * res * res
    assert torch.equal(pix, ref_pix) and torch.equal(face, ref_face)
    if near > 0.1:
        assert bool((Xc[..., 2] < near).any()), "the near plane must cut the mesh in this case"


@pytest.mark.parametrize("case", list(CASES))
def test_fused_equals_torch_path(device, head, monkeypatch, case):
    check_fused_equals_torch_path(head, monkeypatch, case, device=device)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_silhouette_equals_torch_path(device, head, monkeypatch, dtype):
    check_silhouette_equals_torch_path(head, monkeypatch, device, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_vertex_normals_equal_the_torch_ones(device, dtype):
    v, f, *_ = load_head_mesh(None)
    verts = (v[None].repeat(3, 1, 1) + 0.01 * torch.randn(3, *v.shape, generator=torch.Generator().manual_seed(0)))
    verts = verts.to(device, dtype).requires_grad_()
    w = torch.randn(verts.shape, generator=torch.Generator().manual_seed(1)).to(verts)
    assert shade._module(verts) is cuda.module()
    n = shade.vertex_normals(verts, f.to(device))
    (g,) = torch.autograd.grad((n * w).sum(), verts)
    ref = vertex_normals(verts, f.to(device))
    (ref_g,) = torch.autograd.grad((ref * w).sum(), verts)
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(n, ref, atol=tol, rtol=tol)
    torch.testing.assert_close(g, ref_g, atol=100 * tol * ref_g.abs().max().item(), rtol=100 * tol)


def test_renderer_matches_the_cpu_kernels(device, monkeypatch):
    v, f, vt, ft, _ = load_head_mesh(None)
    K, R, t = cameras(v, 8, 128)
    tex, sh = checker_texture(64), default_sh(8)
    renderer = MeshRenderer(f, vt, ft, RasterSettings((128, 128)))
    with monkeypatch.context() as m:
        m.setenv("FLAME_FIT_NATIVE_CUDA", "0")
        cpu = renderer(v[None].repeat(8, 1, 1), K, R, t, texture=tex, sh=sh)
    renderer = renderer.to(device)
    verts = v.to(device)[None].repeat(8, 1, 1).requires_grad_()       # _fused reads the autograd graph
    out = renderer(verts, K.to(device), R.to(device), t.to(device), texture=tex.to(device), sh=sh.to(device))
    assert _fused(out)
    assert torch.equal(out.face_idx.cpu(), cpu.face_idx)
    assert (out.image.cpu() - cpu.image).abs().max() < 1e-4
    assert (out.silhouette.cpu() - cpu.silhouette).abs().max() < 1e-4


# ---- plumbing ---------------------------------------------------------------------------

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
