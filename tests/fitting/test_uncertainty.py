"""The cameras' covariance (fitting/uncertainty.py) against independent references: a Monte
Carlo of a weighted linear least-squares problem whose weights do not match its noise, and a
dense solve of the track term with its points kept as unknowns."""
import numpy as np
import torch

from fitting.tracks import TrackTerm, Tracks
from fitting.uncertainty import Group, covariance_parts, helmert_matrix, variance_factors


def _linear_problem(seed=0):
    """Two row groups (J1: 200 rows with noise 1; J2: 30 precise rows with noise 0.3, both
    weighted 1, as the demo's outline and tracks weigh ~10x less than their noise says) and a prior d |x|^2 on x ~ N(0, 0.8^2): only J1's weight matches its noise."""
    g = np.random.default_rng(seed)
    n = 6
    J1, J2 = g.normal(size=(200, n)), g.normal(size=(30, n))
    return n, J1, J2, 1.0, 0.3, 0.5, 0.8


def test_variance_factors_and_sandwich_match_a_monte_carlo():
    n, J1, J2, s1, s2, d, sp = _linear_problem()
    A = J1.T @ J1 + J2.T @ J2 + d * np.eye(n)
    Ai = np.linalg.inv(A)
    g = np.random.default_rng(1)
    errs, preds, facs = [], [], []
    for _ in range(6000):
        x = g.normal(0, sp, n)
        y1, y2 = J1 @ x + g.normal(0, s1, 200), J2 @ x + g.normal(0, s2, 30)
        xh = Ai @ (J1.T @ y1 + J2.T @ y2)                 # the weighted least-squares / MAP estimate
        r1, r2 = J1 @ xh - y1, J2 @ xh - y2
        groups = [Group("a", torch.as_tensor(J1.T @ J1), float(r1 @ r1), 200),
                  Group("b", torch.as_tensor(J2.T @ J2), float(r2 @ r2), 30),
                  Group("prior", torch.as_tensor(d * np.eye(n)), float(d * xh @ xh), n)]
        f = variance_factors(groups)
        keep = torch.ones(n, dtype=torch.bool)
        preds.append(sum(covariance_parts(groups, f, keep).values()).numpy())
        facs.append([f["a"], f["b"], f["prior"]])
        errs.append(xh - x)
    facs = np.mean(facs, 0)
    # each group's factor is the variance of its weighted rows: s1^2, s2^2 and d sp^2
    np.testing.assert_allclose(facs, [s1 ** 2, s2 ** 2, d * sp ** 2], rtol=0.06)
    e = np.array(errs)
    mc = e.T @ e / len(e)
    pred = np.mean(preds, 0)
    assert np.linalg.norm(pred - mc) / np.linalg.norm(mc) < 0.06, (np.diag(pred), np.diag(mc))
    # (0.036 measured); the plain c A^-1 with the first group's factor is 0.20 off: the weights
    # do not match the noise
    assert np.linalg.norm(s1 ** 2 * Ai - mc) / np.linalg.norm(mc) > 0.15


def _track_scene(N=4, P=30, seed=0):
    """Cameras on an arc around points near the origin, each point seen by 2-4 views, 0.5 px noise."""
    from fitting.rotations import axis_angle_to_matrix
    g = torch.Generator().manual_seed(seed)
    yaw = torch.linspace(-0.6, 0.6, N, dtype=torch.float64)
    rot = torch.stack([torch.zeros(N, dtype=torch.float64), yaw, torch.zeros(N, dtype=torch.float64)], 1)
    R = torch.diag(torch.tensor([1.0, -1.0, -1.0], dtype=torch.float64)) @ axis_angle_to_matrix(rot)
    t = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64).expand(N, 3).clone()
    K = torch.tensor([[500.0, 0, 128], [0, 500.0, 128], [0, 0, 1]], dtype=torch.float64).expand(N, 3, 3).clone()
    X = 0.1 * torch.randn(P, 3, generator=g, dtype=torch.float64)
    view, point = [], []
    for j in range(P):
        vs = torch.randperm(N, generator=g)[:2 + j % (N - 1)]
        view += vs.tolist()
        point += [j] * len(vs)
    view, point = torch.tensor(view), torch.tensor(point)
    xc = (R[view] @ X[point][..., None])[..., 0] + t[view]
    uv = xc[:, :2] / xc[:, 2:] * 500 + 128 + 0.5 * torch.randn(len(view), 2, generator=g, dtype=torch.float64)
    return R, t, K, Tracks(X.numpy().copy(), np.zeros((P, 3), np.uint8), view.numpy(), point.numpy(), uv.numpy())


def test_reduced_track_block_gives_the_marginal_covariance_and_helmert_matrix():
    """With the points as unknowns of their own, the cameras' block of the full inverse and
    Helmert's matrix of the full system equal what the Schur-reduced block gives (a camera
    prior stands for the other groups and removes the gauge)."""
    from fitting.rotations import axis_angle_to_matrix
    R, t, K, tr = _track_scene()
    N, P = len(R), tr.num_points
    term = TrackTerm(tr, robust_px=2.0)
    term.triangulate(R, t, K)
    n = 6 * N
    cols = 6 * torch.arange(N)[:, None] + torch.arange(6)[None]
    blocks = term.normal_equations(R, t, K, 0.3, cols, n)
    S, _, _ = blocks.reduce(0.0)
    prior = torch.diag(torch.full((n,), 50.0, dtype=torch.float64))
    groups = [Group("track", blocks.A - S, blocks.cost, 2 * len(term.view), 3 * P),
              Group("prior", prior, 0.0, n)]
    H = helmert_matrix(groups)
    Xc = torch.linalg.inv(blocks.A - S + prior)

    def res(z):
        d = z[:n].reshape(N, 6)
        Rz = axis_angle_to_matrix(d[:, :3]) @ R
        return (term.residuals(Rz, t + d[:, 3:], K, term.points + z[n:].reshape(P, 3))
                * blocks.row_weight[:, None]).reshape(-1)

    J = torch.func.jacfwd(res)(torch.zeros(n + 3 * P, dtype=torch.float64))
    Ft = J.T @ J
    F = Ft.clone()
    F[:n, :n] += prior
    Fi = torch.linalg.inv(F)
    torch.testing.assert_close(Xc, Fi[:n, :n], rtol=1e-6, atol=1e-12)
    Fp = torch.zeros_like(F)
    Fp[:n, :n] = prior
    full = [Group("track", Ft, 0.0, 2 * len(term.view)), Group("prior", Fp, 0.0, n)]
    torch.testing.assert_close(H, helmert_matrix(full), rtol=1e-7, atol=1e-7)


def test_center_tangent_is_the_derivative_of_the_lm_step():
    """center_tangent (how a view's centre moves with its LM increments, the focal's dolly
    included) against jacfwd of the centres of Unknowns.apply's moved state."""
    from fitting.geometry_terms import Unknowns
    from fitting.render.cameras import look_at, matrix_to_rot
    from fitting.state import FitState
    from fitting.uncertainty import center_tangent

    N = 3
    yaw = torch.tensor([-0.7, 0.2, 0.9])
    R, t = look_at(torch.stack([torch.sin(yaw), 0.2 * torch.ones(N), torch.cos(yaw)], -1), torch.zeros(N, 3))
    K = torch.tensor([[900.0, 0, 130], [0, 900, 120], [0, 0, 1]]).expand(N, 3, 3)
    st = FitState.create(N, torch.zeros(N, dtype=torch.long), K, 4, 3, (3, 8, 8), cam_rot=matrix_to_rot(R), cam_t=t)
    unk = Unknowns.of(st, True)

    def centres(dx):
        m = unk.apply(st, dx)
        return -(m.R().transpose(1, 2) @ m.cam_t[..., None])[..., 0]          # (N, 3)

    J = torch.func.jacfwd(centres)(torch.zeros(unk.size))                      # (N, 3, size)
    cols = unk.camera_columns()
    for i in range(N):
        ref = J[i][:, cols[i]]
        torch.testing.assert_close(center_tangent(st.R()[i], st.cam_t[i]), ref, rtol=1e-5, atol=1e-6)
        assert float(ref[:, 6].norm()) > 0.1                                   # the dolly moves it
