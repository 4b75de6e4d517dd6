"""The SfM track term: its Jacobians and Schur-complement step against a dense autodiff solve,
and the track reader against a COLMAP model written by pycolmap."""
import numpy as np
import pytest
import torch

from fitting.lm import NormalEquations
from fitting.rotations import axis_angle_to_matrix
from fitting.tracks import TrackTerm, Tracks, load_tracks


def _scene(N=4, P=25, seed=0):
    """Cameras on an arc looking at points near the origin; every point seen by 2-4 views."""
    g = torch.Generator().manual_seed(seed)
    yaw = torch.linspace(-0.6, 0.6, N, dtype=torch.float64)
    rot = torch.stack([torch.zeros(N, dtype=torch.float64), yaw, torch.zeros(N, dtype=torch.float64)], 1)
    flip = torch.diag(torch.tensor([1.0, -1.0, -1.0], dtype=torch.float64))
    R = flip @ axis_angle_to_matrix(rot)
    t = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64).expand(N, 3).clone()
    K = torch.tensor([[500.0, 0, 128], [0, 500.0, 128], [0, 0, 1]], dtype=torch.float64).expand(N, 3, 3).clone()
    X = 0.1 * torch.randn(P, 3, generator=g, dtype=torch.float64)
    view, point = [], []
    for j in range(P):
        k = 2 + j % (N - 1)
        vs = torch.randperm(N, generator=g)[:k]
        view += vs.tolist()
        point += [j] * k
    view, point = torch.tensor(view), torch.tensor(point)
    xc = (R[view] @ X[point][..., None])[..., 0] + t[view]
    uv = xc[:, :2] / xc[:, 2:] * 500 + 128 + 0.5 * torch.randn(len(view), 2, generator=g, dtype=torch.float64)
    return R, t, K, X, Tracks(X.numpy().copy(), np.zeros((P, 3), np.uint8), view.numpy(), point.numpy(), uv.numpy())


def _dense_step(term, R0, t0, K0, w, n_unk, lam):
    """The damped Gauss-Newton step of the full problem (cameras and points together), with
    the Jacobian by autodiff: the reference for the Schur-complement path."""
    N, P = len(R0), term.num_points

    def res(z):
        c, X = z[: 6 * N + 1], z[n_unk:].reshape(P, 3)
        d = c[: 6 * N].reshape(N, 6)
        R = axis_angle_to_matrix(d[:, :3]) @ R0
        K = K0.clone()
        K[:, 0, 0] = K0[:, 0, 0] * torch.exp(c[6 * N])
        K[:, 1, 1] = K0[:, 1, 1] * torch.exp(c[6 * N])
        t = t0 + d[:, 3:]
        t = torch.cat([t[:, :2], t[:, 2:] * torch.exp(c[6 * N])], 1)   # the focal step's dolly
        return (term.residuals(R, t, K, term.points + X) * w[:, None]).reshape(-1)

    z0 = torch.zeros(n_unk + 3 * P, dtype=torch.float64)
    J = torch.func.jacfwd(res)(z0)
    A = J.T @ J
    g = J.T @ res(z0)
    keep = A.diagonal() > 0   # the spare columns stand for FLAME's, which tracks do not touch
    Ak = A[keep][:, keep]
    dz = torch.zeros_like(z0)
    dz[keep] = -torch.linalg.solve(Ak + lam * torch.diag(Ak.diagonal()), g[keep])
    return dz[:n_unk], dz[n_unk:].reshape(P, 3)


def test_schur_step_matches_dense_solve():
    R, t, K, X, tr = _scene()
    tr.xyz = tr.xyz + 0.003 * np.random.default_rng(1).normal(size=tr.xyz.shape)  # off the optimum
    N = len(R)
    term = TrackTerm(tr, robust_px=2.0)
    term.points = torch.as_tensor(tr.xyz)
    n_unk = 6 * N + 1 + 5
    w = term.irls_weights(term.residuals(R, t, K)).sqrt() * 0.7
    cols = torch.cat([6 * torch.arange(N)[:, None] + torch.arange(6)[None], torch.full((N, 1), 6 * N)], 1)
    blocks = term.normal_equations(R, t, K, 0.7 ** 2, cols, n_unk)   # rows scaled by sqrt(0.49 w_irls) = w
    ne = NormalEquations.zeros(n_unk, torch.float64)
    ne.add_eliminated("track", blocks)
    lam = 1e-2
    dc, (dp,) = ne.step(lam)                                            # the LM's step, points eliminated
    dc_ref, dp_ref = _dense_step(term, R, t, K, w, n_unk, lam)
    assert torch.allclose(dc, dc_ref, atol=1e-10, rtol=1e-7), (dc - dc_ref).abs().max()
    assert torch.allclose(dp, dp_ref, atol=1e-10, rtol=1e-7), (dp - dp_ref).abs().max()
    r = term.residuals(R, t, K) * w[:, None]
    assert blocks.cost == pytest.approx(float((r * r).sum()), rel=1e-12)


def test_exact_tracks_triangulate_to_the_points():
    R, t, K, X, tr = _scene()
    xc = (R[tr.view] @ X[tr.point][..., None])[..., 0] + t[tr.view]
    tr.uv = (xc[:, :2] / xc[:, 2:] * 500 + 128).numpy()
    term = TrackTerm(tr, 2.0)
    term.triangulate(R, t, K)
    assert (term.points - X).abs().max() < 1e-9
    assert term.residuals(R, t, K).abs().max() < 1e-9
    rms = term.view_rms(R, t, K + torch.tensor([[0, 0, 1.0], [0, 0, 0], [0, 0, 0]], dtype=torch.float64), 5)
    assert torch.allclose(rms[:4], torch.ones(4, dtype=torch.float64)) and torch.isnan(rms[4])  # cx moved 1 px


def test_load_tracks_from_a_pycolmap_model(tmp_path):
    pytest.importorskip("pycolmap")
    R, t, K, X, tr = _scene(N=3, P=6)
    # a COLMAP text model written by hand from the format's documentation, read by pycolmap
    names = ["b.png", "a.png", "c.png"]
    (tmp_path / "cameras.txt").write_text("1 SIMPLE_PINHOLE 256 256 500 128 128\n")
    idx = [np.nonzero(tr.view == i)[0] for i in range(3)]   # observation ids per image, in order
    lines = []
    for i, n in enumerate(names):
        pts = " ".join(f"{u:.12f} {v:.12f} {tr.point[m] + 1}" for m, (u, v) in zip(idx[i], tr.uv[idx[i]]))
        lines += [f"{i + 1} 1 0 0 0 0 0 1 1 {n}", pts]
    (tmp_path / "images.txt").write_text("\n".join(lines) + "\n")
    lines = []
    for j in range(tr.num_points):
        els = " ".join(f"{tr.view[m] + 1} {int(np.nonzero(idx[tr.view[m]] == m)[0][0])}"
                       for m in np.nonzero(tr.point == j)[0])
        lines.append(f"{j + 1} {tr.xyz[j][0]} {tr.xyz[j][1]} {tr.xyz[j][2]} 10 20 30 0.5 {els}")
    (tmp_path / "points3D.txt").write_text("\n".join(lines) + "\n")
    scale = np.array([[0.5, 0.5], [0.5, 0.5], [0.5, 0.5]])
    fit_names = ["a.png", "b.png"]      # c.png is not in the fit: its observations go
    out = load_tracks(tmp_path, fit_names, scale[:2])
    assert out is not None
    for m in range(out.num_observations):
        v_fit = out.view[m]
        src = names.index(fit_names[v_fit])
        cand = tr.uv[(tr.view == src)] * 0.5
        assert np.abs(cand - out.uv[m]).sum(1).min() < 1e-9
    assert (np.bincount(out.point) >= 2).all()
    # observations at detected landmarks (SfM's extra landmark keypoints) are dropped
    lmk = np.zeros((2, 68, 2))
    lmk[0, 0] = out.uv[out.view == 0][0] / 0.5
    fewer = load_tracks(tmp_path, fit_names, scale[:2], landmarks_px=lmk)
    assert fewer is None or fewer.num_observations < out.num_observations
    assert load_tracks(tmp_path, fit_names, scale[:2], landmarks_px=lmk + 5.0).num_observations == out.num_observations
