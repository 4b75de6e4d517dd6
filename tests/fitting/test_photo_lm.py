"""The photometric LM round's building blocks on analytic images: the masked blur (coarse to
fine) and the central-difference gradients. The closed-form appearance is checked against the
renderer in test_pipeline.py (it shares the reduced-demo fit)."""
from __future__ import annotations

import torch

from fitting.stages import _central_gradients, _masked_blur


def test_central_gradients_of_a_ramp():
    N, H, W = 2, 9, 11
    y, x = torch.meshgrid(torch.arange(H, dtype=torch.float32), torch.arange(W, dtype=torch.float32), indexing="ij")
    img = torch.stack([0.3 * x - 0.2 * y, 0.05 * y, torch.ones_like(x)], -1)  # (H, W, 3)
    flat = img[None].expand(N, H, W, 3).reshape(-1, 3)
    gx, gy = _central_gradients(flat, N, H, W)
    gx, gy = gx.view(N, H, W, 3)[:, 1:-1, 1:-1], gy.view(N, H, W, 3)[:, 1:-1, 1:-1]  # interior
    torch.testing.assert_close(gx, torch.tensor([0.3, 0.0, 0.0]).expand_as(gx))
    torch.testing.assert_close(gy, torch.tensor([-0.2, 0.05, 0.0]).expand_as(gy))


def test_masked_blur_keeps_a_constant_and_ignores_outside():
    N, H, W = 1, 16, 16
    mask = torch.zeros(N, H, W, 1)
    mask[:, 4:12, 3:10] = 1
    val = torch.full((N, H, W, 3), 0.25)
    val[mask[..., 0] == 0] = 7.0  # outside values must not bleed in
    out = _masked_blur(val.reshape(-1, 3), mask.reshape(-1, 1), N, H, W, 1.5).view(N, H, W, 3)
    torch.testing.assert_close(out[mask[..., 0] > 0], torch.full((7 * 8, 3), 0.25))
    # and it is a blur: a step inside the mask gets a monotone ramp
    step = torch.zeros(N, H, W, 1)
    step[:, :, 8:] = 1
    b = _masked_blur(step.reshape(-1, 1), torch.ones(N * H * W, 1), N, H, W, 1.5).view(H, W)
    row = b[8]
    assert abs(float(row[7] + row[8]) - 1) < 1e-4 and bool((row[1:] >= row[:-1] - 1e-6).all())
    assert float(row[0]) < 1e-3 and float(row[-1]) > 1 - 1e-3
