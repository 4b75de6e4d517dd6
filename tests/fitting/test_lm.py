"""The generic Levenberg-Marquardt (fitting/lm.py) on problems with known answers."""
from __future__ import annotations

import torch

from fitting.lm import NormalEquations, levenberg_marquardt
from fitting.render.cameras import project_points, rotation_angle_deg, scale_focal
from fitting.rotations import axis_angle_to_matrix
from tests.fitting.test_init import _rig   # cameras on an arc around a face-like slab of 68 points


def test_cameras_and_shared_focal_converge_from_a_perturbed_start():
    """Per-view rotation and translation plus a shared log focal, from rotations ~3 deg off,
    translations 2 cm off and the focal 10 % off, to the exact projections of known points."""
    K, R, t, pts = _rig()
    n = len(K)
    uv, _ = project_points(pts.expand(n, -1, -1), K, R, t)
    g = torch.Generator().manual_seed(1)
    R0 = axis_angle_to_matrix(0.05 * torch.randn(n, 3, generator=g, dtype=torch.float64)) @ R
    t0 = t + 0.02 * torch.randn(n, 3, generator=g, dtype=torch.float64)
    K0 = K.clone()
    K0[:, :2, :2] /= 1.1

    def residuals(x, Rb, tb, lf):
        d = x[: 6 * n].reshape(n, 6)
        Kx = scale_focal(K0, lf + x[6 * n])
        return (project_points(pts.expand(n, -1, -1), Kx, axis_angle_to_matrix(d[:, :3]) @ Rb, tb + d[:, 3:])[0]
                - uv).reshape(-1)

    def linearize(x, it):
        x0 = torch.zeros(6 * n + 1, dtype=torch.float64)
        ne = NormalEquations.zeros(6 * n + 1, torch.float64)
        ne.add_rows("points", torch.func.jacfwd(residuals)(x0, *x), residuals(x0, *x))
        return x, ne

    def propose(x, dx, own):
        assert own == []
        r = residuals(dx, *x)
        d = dx[: 6 * n].reshape(n, 6)
        return (axis_angle_to_matrix(d[:, :3]) @ x[0], x[1] + d[:, 3:], x[2] + dx[6 * n]), float(r @ r)

    costs = []
    Rf, tf, lf = levenberg_marquardt((R0, t0, torch.zeros((), dtype=torch.float64)), linearize, propose, 30,
                                     record=lambda it, ne, lam: costs.append(ne.cost))
    assert rotation_angle_deg(Rf, R).max() < 1e-4
    assert (tf - t).abs().max() < 1e-7
    assert abs(float(torch.exp(lf)) - 1.1) < 1e-7
    assert all(b <= a for a, b in zip(costs, costs[1:]))      # only steps that lower the cost are taken


def test_a_step_that_never_lowers_the_cost_is_not_taken():
    """When every damping's step raises the cost, the estimate stays and the loop stops."""
    calls = []

    def linearize(x, it):
        ne = NormalEquations.zeros(2, torch.float64)
        ne.add_rows("r", torch.eye(2, dtype=torch.float64), torch.tensor([1.0, -2.0], dtype=torch.float64))
        calls.append(it)
        return x, ne

    out = levenberg_marquardt("start", linearize, lambda x, dx, own: ("moved", 1e9), 10, max_tries=3)
    assert out == "start" and calls == [0]


def test_eliminated_blocks_give_the_dense_solution():
    """A term with unknowns of its own, eliminated by its Schur complement, gives the same
    damped step as the dense system over all unknowns."""
    torch.manual_seed(0)
    n, m = 4, 3                                   # reduced unknowns, own unknowns
    J = torch.randn(12, n + m, dtype=torch.float64)
    r = torch.randn(12, dtype=torch.float64)
    H, gfull = J.T @ J, J.T @ r
    lam = 0.1

    class Own:
        A, g, cost = H[:n, :n], gfull[:n], float(r @ r)

        def reduce(self, lam_):
            V = H[n:, n:] + lam_ * torch.diag(H[n:, n:].diagonal())
            W = H[:n, n:]
            Vi = torch.linalg.inv(V)
            return W @ Vi @ W.T, W @ Vi @ gfull[n:], lambda dx: -Vi @ (gfull[n:] + W.T @ dx)

    ne = NormalEquations.zeros(n, torch.float64)
    ne.add_eliminated("own", Own())
    dx, (dp,) = ne.step(lam)
    ref = -torch.linalg.solve(H + lam * torch.diag(H.diagonal()), gfull)
    torch.testing.assert_close(torch.cat([dx, dp]), ref)
