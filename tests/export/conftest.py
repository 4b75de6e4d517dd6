"""One small fit with every export and index.html, shared by the tests in this folder."""
from __future__ import annotations

import numpy as np
import pytest

from fitting.config import parse_config
from fitting.meshio import load_obj
from fitting.pipeline import fit_scene


@pytest.fixture(scope="session")
def fit(tmp_path_factory):
    """(report, output folder, mesh vertices (V, 3) float64, config) of a 4-view demo fit
    (160 x 128 px photos on +-40 deg, fitted at 80 px, ~15 s) with --export all and --val_cameras
    view_01. Without SfM nothing poses a profile but its landmarks, hence views within the
    detector's range."""
    root = tmp_path_factory.mktemp("exports")
    cfg = parse_config([
        "--demo", "true", "--scene_dir", str(root / "scene"), "--savefolder", str(root / "out"),
        "--scene_name", "demo", "--standin_dir", str(root / "standin"), "--demo_views", "4",
        "--demo_yaw_deg", "40", "--demo_width", "160", "--demo_height", "128", "--demo_sfm", "false", "--image_size", "80",
        "--geom_lm_iters", "3", "--geom_rounds", "1", "--photo_iters", "2", "--progress", "false",
        "--n_shape", "20", "--n_exp", "10", "--tex_res", "32", "--export", "all", "--val_cameras", "view_01"])
    report = fit_scene(cfg)
    out = root / "out" / "demo"
    verts = load_obj(out / "mesh.obj")[0].astype(np.float64)
    return report, out, verts, cfg
