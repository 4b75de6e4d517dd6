"""The small synthetic sequence the sequence tests share (built once per session)."""
from __future__ import annotations

import numpy as np
import pytest

from fitting.synthetic_sequence import make_sequence

SIZE = 128


@pytest.fixture(scope="session")
def seq(tmp_path_factory, standin_path):
    """(folder, ground truth) of 3 frames x 3 cameras at 128 px (~2 s), on +-40 deg: within the
    landmark detector's range, so that every camera's landmarks are fitted. Read only: copy it
    to change it."""
    root = make_sequence(tmp_path_factory.mktemp("seq") / "seq", standin_path, n_frames=3, n_cameras=3,
                         width=SIZE, height=SIZE, yaw_deg=40, seed=1)
    return root, dict(np.load(root / "ground_truth.npz"))


@pytest.fixture(scope="session")
def sequence6(tmp_path_factory, standin_path):
    """(folder, ground truth) of 6 frames x 8 cameras at 192 px, on +-50 deg: the two outer views
    hold a detector's frontal-shaped points. Read only."""
    root = make_sequence(tmp_path_factory.mktemp("seq6") / "seq", standin_path, n_frames=6, n_cameras=8,
                         width=192, height=192, n_shape=40, n_exp=20, seed=0)
    return root, dict(np.load(root / "ground_truth.npz"))


@pytest.fixture(scope="session")
def sequence6_true_profiles(tmp_path_factory, standin_path):
    """sequence6 with the true points in its outer views. Read only."""
    root = make_sequence(tmp_path_factory.mktemp("seq6t") / "seq", standin_path, n_frames=6, n_cameras=8,
                         width=192, height=192, n_shape=40, n_exp=20, seed=0, detector_profiles=False)
    return root, dict(np.load(root / "ground_truth.npz"))



@pytest.fixture(scope="session")
def sequence_one_camera(tmp_path_factory, standin_path):
    """(folder, ground truth) of 6 frames filmed by one calibrated camera, frontal, at 192 px: a
    video as a sequence (images/cam00/<frame>.png). Read only."""
    root = make_sequence(tmp_path_factory.mktemp("seq1") / "seq", standin_path, n_frames=6, n_cameras=1,
                         width=192, height=192, n_shape=40, n_exp=20, seed=0)
    return root, dict(np.load(root / "ground_truth.npz"))
