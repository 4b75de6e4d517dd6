"""A sequence without a calibration on real views: ../shared/data/multiview_sample's 8 photos
laid out as a 2-frame sequence (the same photos at both frames). The keyframe runs the real
preprocessing (dlib, masks, SfM on its 8 views) and the estimate-mode fit; both frames are then
tracked with its cameras. Skipped without ../shared/data."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from tests.conftest import REPO


@pytest.mark.slow  # ~40 s: preprocessing of 2 x 8 real photos, SfM, the identity fit, 2 frames
def test_real_views_as_a_sequence_without_cameras(shared_data, tmp_path):
    from fitting.calibration import load_calibration
    from fitting.sequence.__main__ import parse_sequence_config, run_sequence

    views = sorted((shared_data / "multiview_sample" / "images").glob("*.jpg"))
    for v in views:
        for frame in ("000000", "000001"):
            (tmp_path / "seq" / "images" / v.stem).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(v, tmp_path / "seq" / "images" / v.stem / f"{frame}.jpg")
    topo = shared_data / "flame_topology"
    out = tmp_path / "out"
    cfg = parse_sequence_config([
        str(tmp_path / "seq"), "--config", str(REPO / "configs" / "scene.txt"), "--savefolder", str(out),
        "--standin_template", str(topo / "head_template_mesh.obj"),
        "--standin_embedding", str(topo / "landmark_embedding.npy"), "--standin_dir", str(tmp_path / "standin"),
        "--photo_iters", "20", "--progress", "false", "--write_images", "false"])
    rep = run_sequence(cfg)
    s = rep["summary"]
    print(s)
    assert s["num_cameras"] == len(views) == 8 and s["frames_flagged"] == []
    details = json.loads((out / "identity" / "fit_details.json").read_text())
    assert details["focal"]["source"] == "sfm"                       # the keyframe's own SfM ran
    names = [f"{v.stem}.jpg" for v in views]
    cams = load_calibration(out / "cameras.json", names, {n: (520, 696) for n in names})
    assert all(np.isclose(c.K[0, 0], details["focal"]["fitted_px"], rtol=1e-5) for c in cams.values())
    z = np.load(out / "sequence.npz")
    # the same photos at both frames: the same head, and it is the keyframe's (the world frame)
    assert np.linalg.norm(z["head_t"][1] - z["head_t"][0]) * 1000 < 0.01
    assert np.abs(z["head_R"][1] - z["head_R"][0]).max() < 1e-4
    assert np.linalg.norm(z["head_t"][0]) * 1000 < 1.0 and np.abs(z["head_R"][0] - np.eye(3)).max() < 0.01
    assert s["landmark_rmse_px_mean"] <= 1.2 * 3.4                   # the single-capture fit's figure
