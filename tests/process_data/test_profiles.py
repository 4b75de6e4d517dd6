"""Profiles judged by where the face's box sits in the head mask (process_data/profiles.py):
analytic offsets on rectangles, and the synthetic scene's views against their true yaws."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from process_data.profiles import PROFILE_BOX_OFFSET, face_box_offset, profile_views


def _box_points(x0, x1, y0=40.0, y1=70.0):
    """68 points whose box is [x0, x1] x [y0, y1] (the rest inside it)."""
    rng = np.random.default_rng(0)
    p = np.column_stack([rng.uniform(x0, x1, 68), rng.uniform(y0, y1, 68)])
    p[0], p[1] = (x0, y0), (x1, y1)
    return p


def test_face_box_offset_on_a_rectangle():
    mask = np.zeros((100, 120), bool)
    mask[10:90, 20:100] = True                       # 80 px wide, centroid x = 60 (pixel centres at +0.5)
    assert face_box_offset(_box_points(40.0, 80.0), mask) == pytest.approx(0.0)
    assert face_box_offset(_box_points(60.0, 90.0), mask) == pytest.approx(15.0 / 80.0)
    assert face_box_offset(_box_points(25.0, 55.0), mask) == pytest.approx(-20.0 / 80.0)
    assert np.isnan(face_box_offset(_box_points(25.0, 55.0), np.zeros((10, 10), bool)))


def test_the_synthetic_profiles_and_only_they_are_judged_profiles(tmp_path, standin_path):
    """A 6-view scene on +-60 deg (its masks the head's silhouette): the two views at +-60 deg
    read |0.23|, the others at most 0.13 (at +-36 deg)."""
    from fitting.synthetic_scene import make_scene
    scene = make_scene(tmp_path / "scene", standin_path, n_views=6, width=160, height=160, yaw_deg=60.0,
                       n_shape=20, n_exp=10, seed=0)
    points = {n: np.asarray(r["points"]) for n, r in json.loads((scene / "landmarks.json").read_text()).items()}
    gt = np.load(scene / "ground_truth.npz")
    found = profile_views(points, scene / "masks" / "head")
    assert sorted(found) == sorted(str(n) for n, p in zip(gt["names"], gt["profile_views"]) if p)
    assert all(abs(o) > PROFILE_BOX_OFFSET for o in found.values())
    cv2.imwrite(str(scene / "masks" / "head" / "view_00.png"), np.zeros((160, 160), np.uint8))
    assert "view_00.png" not in profile_views(points, scene / "masks" / "head")     # an empty mask: not judged
