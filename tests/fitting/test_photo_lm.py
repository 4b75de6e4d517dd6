"""The photometric LM round's building blocks: the masked blur (coarse to fine) and the
central-difference gradients on analytic images, and the chain-rule Jacobian of its rows
against autodiff. The closed-form appearance is checked against the renderer in
test_pipeline.py (it shares the reduced-demo fit)."""
from __future__ import annotations

import numpy as np
import torch

from fitting.render import look_at
from fitting.rotations import axis_angle_to_matrix
from fitting.jacobians import point_jacobian
from fitting.correspondences import central_gradients, masked_blur
from fitting.jacobians import vertex_jacobian


def test_central_gradients_of_a_ramp():
    N, H, W = 2, 9, 11
    y, x = torch.meshgrid(torch.arange(H, dtype=torch.float32), torch.arange(W, dtype=torch.float32), indexing="ij")
    img = torch.stack([0.3 * x - 0.2 * y, 0.05 * y, torch.ones_like(x)], -1)  # (H, W, 3)
    flat = img[None].expand(N, H, W, 3).reshape(-1, 3)
    gx, gy = central_gradients(flat, N, H, W)
    gx, gy = gx.view(N, H, W, 3)[:, 1:-1, 1:-1], gy.view(N, H, W, 3)[:, 1:-1, 1:-1]  # interior
    torch.testing.assert_close(gx, torch.tensor([0.3, 0.0, 0.0]).expand_as(gx))
    torch.testing.assert_close(gy, torch.tensor([-0.2, 0.05, 0.0]).expand_as(gy))


def test_masked_blur_keeps_a_constant_and_ignores_outside():
    N, H, W = 1, 16, 16
    mask = torch.zeros(N, H, W, 1)
    mask[:, 4:12, 3:10] = 1
    val = torch.full((N, H, W, 3), 0.25)
    val[mask[..., 0] == 0] = 7.0  # outside values must not bleed in
    out = masked_blur(val.reshape(-1, 3), mask.reshape(-1, 1), N, H, W, 1.5).view(N, H, W, 3)
    torch.testing.assert_close(out[mask[..., 0] > 0], torch.full((7 * 8, 3), 0.25))
    # and it is a blur: a step inside the mask gets a monotone ramp
    step = torch.zeros(N, H, W, 1)
    step[:, :, 8:] = 1
    b = masked_blur(step.reshape(-1, 1), torch.ones(N * H * W, 1), N, H, W, 1.5).view(H, W)
    row = b[8]
    assert abs(float(row[7] + row[8]) - 1) < 1e-4 and bool((row[1:] >= row[:-1] - 1e-6).all())
    assert float(row[0]) < 1e-3 and float(row[-1]) > 1 - 1e-3


def test_masked_blur_is_scipys_normalised_convolution():
    """Several views and channels against scipy's separable Gaussian, per view and channel:
    sum(k * value * mask) / sum(k * mask), zero outside the image."""
    from scipy.ndimage import correlate1d

    rng = np.random.default_rng(0)
    N, H, W, C, sigma = 3, 20, 17, 4, 1.3
    val = rng.uniform(0, 1, (N, H, W, C))
    mask = (rng.uniform(0, 1, (N, H, W, 1)) > 0.3).astype(np.float64)
    r = int(np.ceil(3 * sigma))
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    k /= k.sum()

    def blur(a):   # a (N, H, W, c): along the rows, then the columns
        return correlate1d(correlate1d(a, k, axis=2, mode="constant"), k, axis=1, mode="constant")

    want = blur(val * mask) / np.maximum(blur(mask), 1e-6)
    got = masked_blur(torch.tensor(val.reshape(-1, C)), torch.tensor(mask.reshape(-1, 1)), N, H, W, sigma)
    np.testing.assert_allclose(got.numpy().reshape(N, H, W, C), want, rtol=1e-9, atol=1e-12)


def test_point_jacobian_equals_autodiff(standin):
    """point_jacobian's chain rule (with vertex_jacobian) against torch.func.jacfwd of the
    projected mesh points written out from their definition (rotation increment exp([w]) R,
    translation, log focal with the cameras' dolly, FLAME coefficients incl. the jaw), for two subjects in three views
    of the stand-in head. (tests/fitting/test_pipeline.py checks each LM term's Jacobian the same way.)"""
    g = torch.Generator().manual_seed(0)
    S, E = standin.n_shape, standin.n_exp
    P = S + E + 3
    co = torch.cat([0.5 * torch.randn(2, S + E, generator=g), 0.1 * torch.randn(2, 3, generator=g)], 1)
    pose = 0.1 * torch.randn(2, 15, generator=g)
    yaw = torch.tensor([-0.6, 0.1, 0.7])
    eye = torch.stack([torch.sin(yaw), 0.1 * torch.ones(3), torch.cos(yaw)], -1)
    R, t = look_at(eye, torch.zeros(3, 3))
    K = torch.tensor([[900.0, 0, 130], [0, 880, 120], [0, 0, 1]]).expand(3, 3, 3)
    subject_of_view = torch.tensor([0, 1, 1])
    M = 50
    view = torch.randint(0, 3, (M,), generator=g)
    face = torch.randint(0, standin.faces.shape[0], (M,), generator=g)
    bary = torch.rand(M, 3, generator=g) + 0.05
    bary = bary / bary.sum(1, keepdim=True)

    def uv(x):
        Rx = axis_angle_to_matrix(x[:3].expand(3, 3)) @ R
        tx = t + x[3:6]
        tx = torch.cat([tx[:, :2], tx[:, 2:] * torch.exp(x[6])], 1)     # the focal step's dolly
        c = co + x[7:]
        p = torch.cat([pose[:, :6], c[:, S + E:], pose[:, 9:]], 1)
        V = standin(c[:, :S], c[:, S:S + E], p)[0][subject_of_view[view]]          # (M, V, 3)
        X = (V[torch.arange(M)[:, None], standin.faces[face]] * bary[..., None]).sum(1)
        xc = (Rx[view] @ X[..., None])[..., 0] + tx[view]
        u = K[view, 0, 0] * torch.exp(x[6]) * xc[:, 0] / xc[:, 2] + K[view, 0, 2]
        v = K[view, 1, 1] * torch.exp(x[6]) * xc[:, 1] / xc[:, 2] + K[view, 1, 2]
        return torch.stack([u, v], 1)

    ref = torch.func.jacfwd(uv)(torch.zeros(7 + P))                                 # (M, 2, 7 + P)
    X, J = vertex_jacobian(standin, co, pose)
    assert X.shape == (2, standin.v_template.shape[0], 3) and J.shape == X.shape + (P,)
    d = point_jacobian(X, J, subject_of_view[view], standin.faces[face], bary, view, R, t, K)
    assert d.shape == ref.shape == (M, 2, 7 + P)
    for cols, name in ((slice(0, 3), "rotation"), (slice(3, 6), "translation"), (slice(6, 7), "focal"),
                       (slice(7, 7 + S), "shape"), (slice(7 + S, 7 + S + E), "expression"), (slice(7 + S + E, None), "jaw")):
        a, b = d[..., cols], ref[..., cols]
        assert b.abs().max() > 0, name
        rel = float((a - b).norm() / b.norm())
        assert rel < 1e-4, f"{name}: relative error {rel:.2e}"
