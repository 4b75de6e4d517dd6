"""The compiled per-pixel shading chain and silhouette (fitting.render.native.shade) that
MeshRenderer takes on CPU: against the pure-torch path on the benchmark head (values and
gradients), against float64 central finite differences, and its fallbacks."""
import warnings

import pytest
import torch

from fitting.render import MeshRenderer, RasterSettings, rasterize
from fitting.render.demo import checker_texture, default_sh, load_head_mesh, orbit_cameras
from fitting.render.native import shade
from tests.render.fd import _assert_close, _fd_check, _scene, _seen_coords

pytestmark = pytest.mark.skipif(not shade.available(),
                                reason="native shading kernel unavailable (FLAME_FIT_NATIVE=0, or no C++ "
                                       "compiler / ninja: see the warning)")

VIEWS, RES = 8, 128


def _fused(out) -> bool:
    """Whether a render went through the compiled kernel (its outputs come from _Shade)."""
    return out.packed.bary.grad_fn is not None and "_Shade" in type(out.packed.bary.grad_fn).__name__


def cameras(v, views, res):
    """orbit_cameras with intrinsics that differ per view (focal lengths +-6 %, principal
    point +-2 px), so that a kernel reading the wrong view's K shows."""
    K, R, t = orbit_cameras(v, views, res)
    s = torch.linspace(-1, 1, views)
    K = K.clone()
    K[:, 0, 0] *= 1 + 0.06 * s
    K[:, 1, 1] *= 1 - 0.04 * s
    K[:, 0, 2] += 2 * s
    K[:, 1, 2] -= 1.5 * s
    return K, R, t


@pytest.fixture(scope="module")
def head():
    v, f, vt, ft, _ = load_head_mesh(None)
    K, R, t = cameras(v, VIEWS, RES)
    return MeshRenderer(f, vt, ft, RasterSettings((RES, RES))), v, K, R, t


def _render_and_grads(renderer, v, K, R, t, monkeypatch, native, texture=None, sh=None, vertex_colors=None,
                      device="cpu"):
    """Image, packed outputs and the gradients of a loss touching every output (w.r.t.
    verts, K and whichever of texture, sh, vertex_colors are given), rendered on ``device``
    with (native) or without the compiled kernels (the CPU ones, or the CUDA ones (emulated on
    CPU tensors) where the caller set FLAME_FIT_NATIVE_CUDA)."""
    monkeypatch.setenv("FLAME_FIT_NATIVE", "1" if native else "0")    # the master switch: CUDA kernels too
    renderer = renderer.to(device)
    R, t = R.to(device), t.to(device)
    verts = v.to(device)[None].repeat(K.shape[0], 1, 1).requires_grad_()
    K = K.detach().to(device).clone().requires_grad_()
    leaves = [x.detach().to(device).clone().requires_grad_() if x is not None else None
              for x in (texture, sh, vertex_colors)]
    out = renderer(verts, K, R, t, texture=leaves[0], sh=leaves[1], vertex_colors=leaves[2])
    assert _fused(out) == native
    g = torch.Generator().manual_seed(1)
    w = torch.rand(out.image.shape, generator=g).to(device)
    pf = out.packed
    loss = ((out.image * w).sum() + 0.3 * (out.packed_normals * w.flatten()[:pf.pix.numel(), None]).sum()
            + 0.2 * (out.packed_albedo * out.packed_shading).sum() + (pf.depth ** 2).sum()
            + (pf.bary[:, 0] * w.flatten()[:pf.pix.numel()]).sum())
    loss.backward()
    grads = [verts.grad, K.grad] + [x.grad for x in leaves if x is not None]
    values = [out.image, pf.bary, pf.depth, out.packed_normals, out.packed_albedo, out.packed_shading]
    return pf, values, grads


CASES = {
    "texture": lambda B: dict(texture=checker_texture(64), sh=default_sh(B)),
    "per_view_texture": lambda B: dict(texture=torch.rand(B, 3, 32, 48, generator=torch.Generator().manual_seed(2)),
                                       sh=default_sh(B)),
    "shared_vertex_colours": lambda B: dict(vertex_colors=torch.rand(5023, 3, generator=torch.Generator().manual_seed(3)),
                                            sh=default_sh(B)),
    "per_view_vertex_colours": lambda B: dict(vertex_colors=torch.rand(B, 5023, 3,
                                                                       generator=torch.Generator().manual_seed(4))),
    "plain": lambda B: dict(),
    "sh_only": lambda B: dict(sh=default_sh(B)),
}


def check_fused_equals_torch_path(head, monkeypatch, case, device="cpu"):
    """The compiled path against the torch path on ``device``: same pixels and faces, values
    to 1e-5, gradients to 1e-4 relative."""
    renderer, v, K, R, t = head
    if v.shape[0] != 5023 and "vertex" in case:
        pytest.skip("the vertex-colour cases are sized for the FLAME template")
    inputs = CASES[case](K.shape[0])
    pf, values, grads = _render_and_grads(renderer, v, K, R, t, monkeypatch, True, device=device, **inputs)
    ref_pf, ref_values, ref_grads = _render_and_grads(renderer, v, K, R, t, monkeypatch, False, device=device,
                                                      **inputs)
    assert torch.equal(pf.pix, ref_pf.pix) and torch.equal(pf.face, ref_pf.face) and torch.equal(pf.view, ref_pf.view)
    assert pf.pix.numel() > 0.1 * K.shape[0] * renderer.settings.image_size[0] * renderer.settings.image_size[1]
    for name, a, b in zip(["image", "bary", "depth", "normals", "albedo", "shading"], values, ref_values):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5, msg=lambda m: f"{name}: {m}")
    assert len(grads) == len(ref_grads)
    for a, b in zip(grads, ref_grads):
        assert b.abs().max() > 0
        rel = (a - b).norm() / b.norm()
        assert rel < 1e-4, f"gradient relative error {rel:.2e}"
        assert ((a - b).abs() <= 1e-4 * b.abs().max()).all()


@pytest.mark.parametrize("case", list(CASES))
def test_fused_equals_torch_path_on_the_head(head, monkeypatch, case):
    check_fused_equals_torch_path(head, monkeypatch, case)


def check_silhouette_equals_torch_path(head, monkeypatch, device="cpu", dtype=torch.float32):
    """The compiled silhouette (outline.h) against silhouette.py's PyTorch path on ``device``:
    values to float rounding, gradients w.r.t. verts and K to 1e-4 relative."""
    from fitting.render.silhouette import silhouette
    renderer, v, K, R, t = head
    B = K.shape[0]
    face_idx = rasterize(v[None].expand(B, -1, -1), renderer.faces, K, R, t, renderer.settings).face_idx.to(device)
    w = torch.rand(face_idx.shape, generator=torch.Generator().manual_seed(7)).to(device, dtype)[:, None]
    results = []
    for native in (True, False):
        monkeypatch.setenv("FLAME_FIT_NATIVE", "1" if native else "0")
        verts = v.to(device, dtype)[None].repeat(B, 1, 1).requires_grad_()
        Kg = K.detach().to(device, dtype).clone().requires_grad_()
        sil = silhouette(verts, renderer.faces.to(device), Kg, R.to(device, dtype), t.to(device, dtype),
                         face_idx=face_idx)
        assert ("_Outline" in type(sil.grad_fn).__name__ or "_Outline" in str(sil.grad_fn.next_functions)) == native
        ((sil * w).sum() + (sil ** 2).sum()).backward()
        results.append((sil.detach(), verts.grad, Kg.grad))
    (sil, gv, gK), (ref, ref_gv, ref_gK) = results
    partial = ((ref > 0) & (ref < 1)).sum()
    assert partial > 0.5 * B * face_idx.shape[-1], "the outline must have antialiased pixels"
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(sil, ref, atol=tol, rtol=0)
    for a, b in ((gv, ref_gv), (gK, ref_gK)):
        assert b.abs().max() > 0
        assert (a - b).norm() / b.norm() < 100 * tol


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_silhouette_equals_torch_path(head, monkeypatch, dtype):
    check_silhouette_equals_torch_path(head, monkeypatch, dtype=dtype)


def test_falls_back_when_the_kernel_is_off(head, monkeypatch):
    renderer, v, K, R, t = head
    verts = v[None].repeat(VIEWS, 1, 1).requires_grad_()
    assert _fused(renderer(verts, K, R, t))
    assert _fused(renderer(verts, K.clone().requires_grad_(), R, t))     # focal refinement stays fused
    monkeypatch.setenv("FLAME_FIT_NATIVE", "0")
    assert not _fused(renderer(verts, K, R, t))


def test_a_failed_build_warns_once_and_renders_with_torch(head, monkeypatch):
    renderer, v, K, R, t = head
    verts = v[None].expand(VIEWS, -1, -1)
    ref = renderer(verts, K, R, t, sh=default_sh(VIEWS))

    def broken(verbose=False):
        raise RuntimeError("cannot build the native shading kernel: test")

    monkeypatch.setattr(shade._kernel, "module", None)
    monkeypatch.setattr(shade._kernel, "failed", None)
    monkeypatch.setattr(shade._kernel, "build", broken)
    with pytest.warns(RuntimeWarning, match="pure-PyTorch shading"):
        out = renderer(verts, K, R, t, sh=default_sh(VIEWS))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        renderer(verts, K, R, t)                       # no second warning
    assert not _fused(out)
    torch.testing.assert_close(out.image, ref.image, atol=1e-5, rtol=1e-5)


# ---- float64 finite differences through the fused path ----------------------------------

@pytest.mark.slow
def test_fused_gradients_match_finite_differences():
    renderer, verts, K, R, t, tex, sh, w = _scene()

    def loss(verts=verts, tex=tex, sh=sh, col=None, K=K):
        out = renderer(verts, K, R, t, texture=None if col is not None else tex, sh=sh, vertex_colors=col)
        assert _fused(out) or out.packed.bary.grad_fn is None     # the FD evaluations have no graph
        return (out.image * w).sum() + (out.packed.depth ** 2).sum() + out.packed_normals[:, 1].sum()

    def vis(verts):
        return rasterize(verts, renderer.faces, K, R, t, renderer.settings).face_idx

    face_idx = vis(verts)
    g = torch.Generator().manual_seed(5)
    idx = _seen_coords(face_idx, renderer.faces, 0, 4, g)
    _assert_close(*_fd_check(lambda x: loss(verts=x), verts, idx, 1e-6, vis))
    _assert_close(*_fd_check(lambda x: loss(sh=x), sh, torch.randperm(sh.numel(), generator=g)[:12], 1e-6))
    _assert_close(*_fd_check(lambda x: loss(tex=x), tex, torch.randperm(tex.numel(), generator=g)[:12], 1e-6))
    col = torch.rand(verts.shape[1], 3, generator=g, dtype=torch.float64)
    _assert_close(*_fd_check(lambda x: loss(col=x), col, idx, 1e-6))          # view 0's colour rows = its vertices
    idx1 = _seen_coords(face_idx, renderer.faces, 1, 4, g, verts.shape[1])         # view 1, vertex colours
    _assert_close(*_fd_check(lambda x: loss(verts=x, col=col), verts, idx1, 1e-6, vis))
    # intrinsics: fx, skew, cx, fy, cy of both views (focal refinement differentiates these)
    Kc = K.clone()
    idxK = torch.tensor([0, 1, 2, 4, 5, 9, 11, 13, 14])
    _assert_close(*_fd_check(lambda x: loss(K=x), Kc, idxK, 1e-6,
                             lambda x: rasterize(verts, renderer.faces, x, R, t, renderer.settings).face_idx))


def test_views_without_pixels(head, monkeypatch):
    # view 1 looks away (nothing covered) between two normal views; then no pixels at all
    renderer, v, K, R, t = head
    K, R, t = K[:3], R[:3].clone(), t[:3].clone()
    t[1, 2] = -1.0                                      # the head is behind camera 1
    inputs = dict(texture=checker_texture(32), sh=default_sh(3))
    pf, values, grads = _render_and_grads(renderer, v, K, R, t, monkeypatch, True, **inputs)
    ref_pf, ref_values, ref_grads = _render_and_grads(renderer, v, K, R, t, monkeypatch, False, **inputs)
    assert (pf.view == 1).sum() == 0 and (pf.view == 2).sum() > 0
    torch.testing.assert_close(values[0], ref_values[0], atol=1e-5, rtol=1e-5)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, atol=1e-4 * float(b.abs().max()), rtol=1e-4)
    monkeypatch.setenv("FLAME_FIT_NATIVE", "1")
    verts = v[None].repeat(1, 1, 1).requires_grad_()
    sh = default_sh(1).requires_grad_()
    out = renderer(verts, K[1:2], R[1:2], t[1:2], texture=checker_texture(32), sh=sh)
    assert _fused(out) and out.packed.pix.numel() == 0 and (out.image == 0).all()
    out.image.sum().backward()
    assert (verts.grad == 0).all() and (sh.grad == 0).all()
