"""Which views' landmarks the fit drops (fitting/landmark_trust.py), and the synthetic scenes'
model of what a 68-point detector returns on profiles."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch

from fitting.landmark_trust import distrust_profiles, view_yaw_deg
from fitting.synthetic_scene import detector_landmarks


def _cameras(yaw_deg) -> torch.Tensor:
    """(N, 3, 3) world-to-camera rotations looking at the head's origin from each yaw."""
    th = torch.deg2rad(torch.as_tensor(yaw_deg, dtype=torch.float64))
    z = torch.zeros_like(th)
    rows = [torch.stack([-th.cos(), z, -th.sin()], -1), torch.stack([z, z + 1, z], -1),
            torch.stack([th.sin(), z, -th.cos()], -1)]
    return torch.stack(rows, 1)


def _ctx(n: int, rig: bool):
    return SimpleNamespace(cfg=SimpleNamespace(lmk_max_yaw_deg=45.0), rig=object() if rig else None, tracks=None,
                           view_weights=torch.ones(n), landmark_weights=torch.ones(n), landmark_flags={})


def test_view_yaw_of_the_test_cameras():
    yaw = [-60.0, -20.0, 0.0, 35.0, 70.0]
    assert torch.allclose(view_yaw_deg(_cameras(yaw)), torch.tensor(yaw, dtype=torch.float64))


def test_detector_points_on_profiles_are_the_frontal_shape_in_the_true_box():
    rng = np.random.default_rng(0)
    lmk = rng.uniform(10, 100, (5, 68, 2))
    yaw = np.array([-60.0, -30.0, 5.0, 30.0, 50.0])
    out, profile = detector_landmarks(lmk, yaw)
    assert profile.tolist() == [True, False, False, False, True]
    assert np.array_equal(out[~profile], lmk[~profile])

    def unit(p):
        return (p - p.min(0)) / (p.max(0) - p.min(0))
    for i in (0, 4):
        assert np.allclose(out[i].min(0), lmk[i].min(0)) and np.allclose(out[i].max(0), lmk[i].max(0))
        assert np.allclose(unit(out[i]), unit(lmk[2]))          # the most frontal view's shape


def test_a_calibrated_rig_drops_its_profiles_landmarks():
    ctx = _ctx(4, rig=True)
    distrust_profiles(ctx, SimpleNamespace(R=lambda: _cameras([-60.0, -20.0, 20.0, 50.0])))
    assert ctx.landmark_weights.tolist() == [0.0, 1.0, 1.0, 0.0]
    assert sorted(ctx.landmark_flags) == [0, 3] and "calibrated" in ctx.landmark_flags[3]


def test_a_rig_keeps_them_when_no_view_would_be_left():
    """The head's pose in the rig comes from the landmarks: one view's at least (its PnP)."""
    ctx = _ctx(3, rig=True)
    distrust_profiles(ctx, SimpleNamespace(R=lambda: _cameras([-50.0, 0.0, 50.0])))
    assert ctx.landmark_weights.tolist() == [0.0, 1.0, 0.0]
    ctx = _ctx(2, rig=True)
    distrust_profiles(ctx, SimpleNamespace(R=lambda: _cameras([-50.0, 60.0])))
    assert ctx.landmark_weights.tolist() == [1.0, 1.0] and not ctx.landmark_flags


def test_without_tracks_or_a_calibration_every_view_keeps_its_landmarks():
    ctx = _ctx(4, rig=False)
    distrust_profiles(ctx, SimpleNamespace(R=lambda: _cameras([-60.0, -20.0, 20.0, 60.0])))
    assert ctx.landmark_weights.tolist() == [1.0] * 4 and not ctx.landmark_flags
