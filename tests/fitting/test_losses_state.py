"""Losses (analytic values, robustness, masking) and FitState checkpoints."""
from __future__ import annotations

import torch

from fitting.config import build_parser, parse_config
from fitting.losses import (landmark_point_weights, landmark_rmse, mask_iou, masked_photometric_l1,
                            robust_landmark_loss, silhouette_loss, texture_smoothness)
from fitting.state import FitState, load_checkpoint, save_checkpoint


def test_robust_landmark_loss_values():
    tgt = torch.zeros(2, 68, 2)
    pred = tgt.clone()
    pred[..., 0] = 0.1  # small residuals: ~ r^2
    assert abs(float(robust_landmark_loss(pred, tgt, scale_px=3.0)) - 0.01) < 1e-4
    pred[0, 20, 0] = 1000.0  # one wild point grows only logarithmically
    # 9 log(1 + 1000^2 / 9) / 136 = 0.78, where the squared loss would be 7353
    assert abs(float(robust_landmark_loss(pred, tgt, scale_px=3.0)) - (0.01 * 135 + 9 * torch.log1p(torch.tensor(1e6 / 9))) / 136) < 1e-3
    w = landmark_point_weights(0.3, static_only=True)
    assert w[:17].sum() == 0 and w[17:].min() == 1
    assert torch.allclose(landmark_rmse(pred[1:], tgt[1:]), torch.tensor([0.1]))
    # view weights: a zero-weight view does not count
    vw = torch.tensor([0.0, 1.0])
    assert abs(float(robust_landmark_loss(pred, tgt, view_weights=vw)) - 0.01) < 1e-4


def test_photometric_masks_photo_and_render():
    img = torch.zeros(1, 3, 4, 4)
    ren = torch.ones(1, 3, 4, 4)
    skin = torch.zeros(1, 1, 4, 4)
    skin[..., :2, :] = 1  # top half is skin
    cov = torch.zeros(1, 1, 4, 4)
    cov[..., :, :2] = 1  # left half is covered by the render
    # only the top-left quadrant counts, where the error is 1
    assert float(masked_photometric_l1(ren, img, skin, cov)) == 1.0
    ren[..., 2:, :] = 5  # errors outside the photo's skin are ignored
    ren[..., :, 2:] = 7  # ... and outside the render
    assert float(masked_photometric_l1(ren, img, skin, cov)) == 1.0


def test_silhouette_iou_and_smoothness():
    a = torch.zeros(2, 1, 8, 8)
    a[:, :, :4] = 1
    b = torch.zeros(2, 1, 8, 8)
    b[:, :, 2:6] = 1
    assert torch.allclose(mask_iou(a, b), torch.full((2,), 1 / 3))
    assert abs(float(silhouette_loss(a, b)) - 2 / 3) < 1e-6
    assert float(silhouette_loss(a, a)) == 0
    tex = torch.zeros(1, 3, 4, 4)
    assert float(texture_smoothness(tex)) == 0
    tex[..., 0, 0] = 1
    assert float(texture_smoothness(tex)) > 0


def test_state_focal_and_checkpoint(tmp_path):
    K0 = torch.tensor([[500.0, 0, 64], [0, 500.0, 60], [0, 0, 1]]).repeat(3, 1, 1)
    st = FitState.create(3, torch.zeros(3, dtype=torch.long), K0, 10, 5, (8,))
    st.log_focal[:] = torch.log(torch.tensor(2.0))
    K = st.K()
    assert torch.allclose(K[:, 0, 0], torch.full((3,), 1000.0)) and torch.allclose(K[:, 1, 2], torch.full((3,), 60.0))
    st.shape.normal_()
    save_checkpoint(tmp_path / "c.pt", st, {"a": 1}, {"done": ["init"], "pos": 3})
    ck = load_checkpoint(tmp_path / "c.pt")
    assert ck["progress"]["pos"] == 3 and ck["config"] == {"a": 1}
    assert torch.equal(ck["state"].shape, st.shape) and torch.equal(ck["state"].K(), K)


def test_config_file_and_cli(tmp_path):
    cf = tmp_path / "c.txt"
    cf.write_text("scene_dir = /x\nimage_size = 96\nw_sil = 0.5  # comment\n")
    cfg = parse_config(["--config", str(cf), "--image_size", "64"])
    assert cfg.scene_dir == "/x" and cfg.image_size == 64 and cfg.w_sil == 0.5
    # every option has a default and help text
    for a in build_parser()._actions:
        if a.dest not in ("help", "config"):
            assert a.help and a.default is not None, a.dest
