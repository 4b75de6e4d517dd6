"""Analytic checks of the hard rasterizer with a single triangle and a quad."""
import numpy as np
import pytest
import torch

import importlib

from fitting.render import Fragments, RasterSettings, interpolate, rasterize

rasterize_module = importlib.import_module("fitting.render.rasterize")  # the module, not the function

H, W = 40, 48


def _identity_cam(B=1, f=60.0, dtype=torch.float64):
    K = torch.tensor([[f, 0, W / 2], [0, f * 1.1, H / 2], [0, 0, 1]], dtype=dtype).expand(B, 3, 3)
    R = torch.eye(3, dtype=dtype).expand(B, 3, 3)
    return K, R, torch.zeros(B, 3, dtype=dtype)


def _pixel_centres():
    y, x = np.meshgrid(np.arange(H) + 0.5, np.arange(W) + 0.5, indexing="ij")
    return x, y


def _inside_2d(P, K):
    """Exact pixel-centre inside test in float64 numpy for a triangle in front of the camera."""
    uv = (K[:2, :2] @ (P[:, :2] / P[:, 2:]).T).T + K[:2, 2]
    x, y = _pixel_centres()
    ws = []
    for i in range(3):
        a, b = uv[(i + 1) % 3], uv[(i + 2) % 3]
        ws.append((b[0] - a[0]) * (y - a[1]) - (b[1] - a[1]) * (x - a[0]))
    ws = np.stack(ws)
    return (ws >= 0).all(0) | (ws <= 0).all(0)


TRI = torch.tensor([[[-0.31, -0.22, 1.1], [0.27, -0.13, 1.4], [0.05, 0.29, 0.9]]], dtype=torch.float64)
FACE = torch.tensor([[0, 1, 2]])


def test_single_triangle_coverage_and_rays():
    K, R, t = _identity_cam()
    fr = rasterize(TRI, FACE, K, R, t, RasterSettings((H, W)))
    assert fr.face_idx.dtype == torch.int64 and fr.face_idx.shape == (1, H, W)
    expect = _inside_2d(TRI[0].numpy(), K[0].numpy())
    assert expect.sum() > 100
    np.testing.assert_array_equal(fr.face_idx[0].numpy() >= 0, expect)
    # interpolated camera-space positions lie on each pixel's ray, at the reported depth
    X = interpolate(fr, FACE, TRI)[0]                       # (H, W, 3), R = I, t = 0
    m = torch.from_numpy(expect)
    x, y = _pixel_centres()
    ray = torch.linalg.inv(K[0]) @ torch.stack([torch.from_numpy(x), torch.from_numpy(y), torch.ones(H, W, dtype=torch.float64)]).reshape(3, -1)
    ray = ray.T.reshape(H, W, 3)
    torch.testing.assert_close((X / X[..., 2:])[m], ray[m], atol=1e-9, rtol=0)
    torch.testing.assert_close(X[..., 2][m], fr.depth[0][m], atol=1e-12, rtol=0)
    # barycentrics sum to one inside, background is zero
    torch.testing.assert_close(fr.bary[0][m].sum(-1), torch.ones(int(m.sum()), dtype=torch.float64))
    assert (fr.bary[0][~m] == 0).all() and (fr.depth[0][~m] == 0).all()


def test_tilted_quad_perspective_correct_uv():
    # plane point O + a*A + b*B for (a, b) in [0,1]^2, strongly tilted in depth
    O = np.array([-0.4, -0.3, 0.8])
    A = np.array([0.8, 0.05, 0.9])
    B = np.array([0.1, 0.6, 0.3])
    corners = np.stack([O, O + A, O + A + B, O + B])
    uvs = torch.tensor([[0, 0], [1, 0], [1, 1], [0, 1]], dtype=torch.float64)
    verts = torch.from_numpy(corners)[None]
    faces = torch.tensor([[0, 1, 2], [0, 2, 3]])
    K, R, t = _identity_cam()
    fr = rasterize(verts, faces, K, R, t, RasterSettings((H, W)))
    got = interpolate(fr, faces, uvs)[0]
    m = (fr.face_idx[0] >= 0).numpy()
    assert m.sum() > 200
    # analytic ray-plane intersection: lam * d = O + a A + b B  ->  solve for (a, b, lam)
    x, y = _pixel_centres()
    Kinv = np.linalg.inv(K[0].numpy())
    d = np.einsum("ij,hwj->hwi", Kinv, np.stack([x, y, np.ones_like(x)], -1))
    M = np.stack([np.broadcast_to(A, d.shape), np.broadcast_to(B, d.shape), -d], -1)   # (H, W, 3, 3)
    sol = np.linalg.solve(M, -np.broadcast_to(O, d.shape)[..., None])[..., 0]
    inside = (sol[..., 0] >= 0) & (sol[..., 0] <= 1) & (sol[..., 1] >= 0) & (sol[..., 1] <= 1)
    np.testing.assert_array_equal(m, inside)
    np.testing.assert_allclose(got.numpy()[m], sol[..., :2][m], atol=1e-4, rtol=0)
    # and in float32 too (the library default)
    fr32 = rasterize(verts.float(), faces, K.float(), R.float(), t.float(), RasterSettings((H, W)))
    np.testing.assert_allclose(interpolate(fr32, faces, uvs.float())[0].numpy()[m], sol[..., :2][m], atol=1e-4)


@pytest.mark.parametrize("order", [[0, 1], [1, 0]])
def test_nearer_triangle_wins_in_any_order(order):
    near = torch.tensor([[-0.3, -0.3, 1.0], [0.3, -0.2, 1.0], [0.0, 0.3, 1.0]])
    far = torch.tensor([[-0.2, 0.3, 1.5], [0.0, -0.4, 1.5], [0.4, 0.3, 1.5]])
    tris = [near, far]
    verts = torch.cat([tris[i] for i in order])[None].double()
    faces = torch.tensor([[0, 1, 2], [3, 4, 5]])
    K, R, t = _identity_cam()
    fr = rasterize(verts, faces, K, R, t, RasterSettings((H, W)))
    near_id = order.index(0)
    in_near = _inside_2d(near.double().numpy(), K[0].numpy())
    in_far = _inside_2d(far.double().numpy(), K[0].numpy())
    assert (in_near & in_far).sum() > 50
    fi = fr.face_idx[0].numpy()
    np.testing.assert_array_equal(fi[in_near], near_id)
    np.testing.assert_array_equal(fi[in_far & ~in_near], 1 - near_id)
    np.testing.assert_allclose(fr.depth[0].numpy()[in_near], 1.0, atol=1e-12)


def test_triangle_behind_camera_draws_nothing():
    K, R, t = _identity_cam()
    behind = TRI * torch.tensor([1.0, 1.0, -1.0], dtype=torch.float64)
    fr = rasterize(behind, FACE, K, R, t, RasterSettings((H, W)))
    assert (fr.face_idx == -1).all() and (fr.bary == 0).all()
    # in front of the camera but closer than `near`: also nothing
    fr = rasterize(TRI * 0.01, FACE, K, R, t, RasterSettings((H, W), near=0.1))
    assert (fr.face_idx == -1).all()


def test_triangle_crossing_near_plane_is_clipped():
    # one vertex behind the camera: exactly the pixels whose ray meets the triangle at z >= near
    P = np.array([[-0.5, -0.3, 1.2], [0.4, -0.1, 1.0], [0.1, 0.35, -0.4]])
    near = 0.3
    K, R, t = _identity_cam()
    fr = rasterize(torch.from_numpy(P)[None], FACE, K, R, t, RasterSettings((H, W), near=near))
    x, y = _pixel_centres()
    d = np.einsum("ij,hwj->hwi", np.linalg.inv(K[0].numpy()), np.stack([x, y, np.ones_like(x)], -1))
    # solve lam d = b0 P0 + b1 P1 + b2 P2, b0 + b1 + b2 = 1
    E1, E2 = P[1] - P[0], P[2] - P[0]
    M = np.stack([np.broadcast_to(E1, d.shape), np.broadcast_to(E2, d.shape), -d], -1)
    sol = np.linalg.solve(M, -np.broadcast_to(P[0], d.shape)[..., None])[..., 0]
    b1, b2, lam = sol[..., 0], sol[..., 1], sol[..., 2]
    expect = (b1 >= 0) & (b2 >= 0) & (b1 + b2 <= 1) & (lam >= near)
    assert expect.sum() > 100 and (~expect).sum() > 100
    np.testing.assert_array_equal(fr.face_idx[0].numpy() >= 0, expect)
    assert (fr.depth[0][fr.face_idx[0] >= 0] >= near - 1e-9).all()


def test_backface_culling_and_batch_and_chunking():
    K, R, t = _identity_cam(2)
    flipped = FACE[:, [0, 2, 1]]
    verts = TRI.expand(2, -1, -1).clone()
    verts[1, :, 0] += 0.1                               # second view sees a shifted triangle
    s = RasterSettings((H, W))
    # TRI's (0,1,2) winding: its normal (P1-P0)x(P2-P0) has negative z, i.e. faces the camera
    front = FACE if torch.linalg.det(TRI[0]) < 0 else flipped
    back = flipped if front is FACE else FACE
    fr = rasterize(verts, front, K, R, t, s._replace(cull_backfaces=True))
    assert (fr.face_idx >= 0).sum() > 100
    assert (rasterize(verts, back, K, R, t, s._replace(cull_backfaces=True)).face_idx == -1).all()
    full = rasterize(verts, back, K, R, t, s)
    torch.testing.assert_close(full.face_idx, fr.face_idx)
    # batched views equal views rendered one by one; tiny chunks change nothing
    one = rasterize(verts[1:], front, K[1:], R[1:], t[1:], s)
    torch.testing.assert_close(fr.face_idx[1:], one.face_idx)
    torch.testing.assert_close(fr.bary[1:], one.bary)
    chunked = rasterize(verts, front, K, R, t, s._replace(max_pairs=7))
    for a, b in zip(chunked, rasterize(verts, front, K, R, t, s)):
        torch.testing.assert_close(a, b)
    assert isinstance(chunked, Fragments)


def test_bad_inputs_raise():
    K, R, t = _identity_cam()
    with pytest.raises(ValueError, match="verts must be"):
        rasterize(TRI[0], FACE, K, R, t, RasterSettings((H, W)))
    with pytest.raises(ValueError, match="batch"):
        rasterize(TRI.expand(2, -1, -1), FACE, K, R, t, RasterSettings((H, W)))


def test_small_face_buckets_and_chunks_agree_with_brute_force(monkeypatch):
    # many small faces (the bucketed path), chunked or not, equal a per-pixel brute force
    from fitting.render.demo import ellipsoid_mesh, orbit_cameras
    v, f, _, _ = ellipsoid_mesh(16, 20)
    K, R, t = orbit_cameras(v, 2, 32)
    verts = v[None].expand(2, -1, -1).double()
    K, R, t = K.double(), R.double(), t.double()
    s = RasterSettings((32, 32))
    fr = rasterize(verts, f, K, R, t, s)
    small = rasterize(verts, f, K, R, t, s._replace(max_pairs=5))
    torch.testing.assert_close(small.face_idx, fr.face_idx)
    # the coarse square buckets used on CUDA give the same fragments
    monkeypatch.setattr(rasterize_module, "_COARSE_DEVICES", ("cuda", "cpu"))
    coarse = rasterize(verts, f, K, R, t, s)
    assert torch.equal(coarse.face_idx, fr.face_idx)
    torch.testing.assert_close(coarse.bary, fr.bary)
    Xc = verts @ R.transpose(1, 2) + t[:, None]
    y, x = torch.meshgrid(torch.arange(32) + 0.5, torch.arange(32) + 0.5, indexing="ij")
    d = torch.stack([x, y, torch.ones_like(x)], -1).double().reshape(-1, 3)          # (P, 3)
    for b in range(2):
        rays = d @ torch.linalg.inv(K[b]).T                                         # (P, 3)
        P = Xc[b][f]                                                                # (F, 3, 3)
        w = torch.stack([torch.linalg.cross(P[:, 1], P[:, 2]), torch.linalg.cross(P[:, 2], P[:, 0]),
                         torch.linalg.cross(P[:, 0], P[:, 1])], 1)                  # (F, 3, 3)
        ws = torch.einsum("fkc,pc->pfk", w, rays)                                   # (P, F, 3)
        tot = ws.sum(-1)
        inside = ((ws * tot.sign()[..., None]) >= 0).all(-1) & (tot != 0)
        depth = torch.einsum("fc,fc->f", P[:, 0], w[:, 0])[None] / tot              # z of the hit
        depth = torch.where(inside & (depth > 0), depth, torch.inf)
        expect = torch.where(depth.isfinite().any(-1), depth.argmin(-1), -1).reshape(32, 32)
        assert (fr.face_idx[b] == expect).float().mean() > 0.999   # exact ties may differ
        assert (fr.face_idx[b] >= 0).sum() > 100
