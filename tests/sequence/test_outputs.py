"""Sequence output writers, read back: per-timestep FLAME npz (GaussianAvatars' keys, the head
motion as rotation / translation reproducing the rig-frame vertices), the frame table, the
overlay video's frame count."""
from __future__ import annotations

import csv
import json

import cv2
import numpy as np
import pytest
import torch

from fitting.sequence.outputs import (draw_tracked_landmarks, write_flame_params, write_frame_table,
                                      write_overlay_video)


@pytest.fixture(scope="module")
def flame(standin_path):
    from fitting.flame import FLAME
    return FLAME(standin_path, n_shape=40, n_exp=20)


def test_flame_params_reproduce_the_rig_vertices(seq, flame, tmp_path):
    root, gt = seq
    frames = list(gt["frames"])
    params = {k: gt[k] for k in ("shape", "expression", "pose", "head_R", "head_t")}
    write_flame_params(tmp_path, frames, params, flame=flame)
    idx = json.loads((tmp_path / "timestep_index.json").read_text())
    assert idx == {"timestep_indices": [0, 1, 2], "timestep_ids": ["00000", "00001", "00002"], "frames": frames}
    V = flame.v_template.shape[0]
    for i in range(len(frames)):
        with np.load(tmp_path / "flame_param" / f"{i:05d}.npz") as z:
            a = {k: z[k] for k in z.files}
        assert {k: a[k].shape for k in a} == {"shape": (300,), "expr": (1, 100), "rotation": (1, 3),
                                              "neck_pose": (1, 3), "jaw_pose": (1, 3), "eyes_pose": (1, 6),
                                              "translation": (1, 3), "static_offset": (1, V, 3)}
        assert all(v.dtype == np.float32 for v in a.values())
        # GaussianAvatars' FLAME: the root turned by `rotation` about its joint, then + translation
        pose = torch.zeros(1, 15)
        pose[0, 0:3], pose[0, 6:9] = torch.tensor(a["rotation"][0]), torch.tensor(a["jaw_pose"][0])
        v, _ = flame(torch.tensor(a["shape"][None, :40]), torch.tensor(a["expr"][:, :20]), pose)
        v = v[0].numpy() + a["translation"][0]
        assert np.abs(v - gt["vertices"][i]).max() < 1e-4
    assert (tmp_path / "canonical_flame_param.npz").is_file()
    write_flame_params(tmp_path, frames[:2], params | {k: params[k][:2] for k in params if k != "shape"}, flame=flame)
    assert sorted(p.name for p in (tmp_path / "flame_param").iterdir()) == ["00000.npz", "00001.npz"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    with pytest.raises(ValueError, match="root joint"):
        write_flame_params(tmp_path / "x", frames, params)


def test_frame_table(tmp_path):
    rows = [{"frame": "000000", "rmse_px": {"cam00": 1.0, "cam01": 3.0}, "photo_l1": 0.05},
            {"frame": "000001", "rmse_px": {"cam00": 2.0, "cam01": None}, "flags": ["interpolated"]},
            {"frame": "000002", "rmse_px": {}, "flags": ["failed"]}]
    path = write_frame_table(tmp_path, rows)
    got = list(csv.DictReader(path.open()))
    assert list(got[0]) == ["frame", "rmse_mean_px", "rmse_px_cam00", "rmse_px_cam01", "photo_l1", "flags"]
    assert [r["rmse_mean_px"] for r in got] == ["2.0000", "2.0000", ""]
    assert got[1]["rmse_px_cam01"] == "" and got[1]["flags"] == "interpolated" and got[0]["photo_l1"] == "0.0500"
    js = json.loads((tmp_path / "frames.json").read_text())
    assert js["cameras"] == ["cam00", "cam01"] and js["frames"][2]["flags"] == ["failed"]
    assert js["frames"][0]["rmse_mean_px"] == 2.0 and js["frames"][1]["photo_l1"] is None


def test_overlay_video_frame_count(seq, tmp_path):
    root, gt = seq
    from fitting.images import read_image
    from fitting.sequence.layout import read_layout
    lay = read_layout(root)
    lmk = {f: json.loads((root / "frames" / f / "landmarks.json").read_text()) for f in lay.frames}
    loaded = []

    def load(f):
        loaded.append(f)
        return {c: read_image(lay.path(c, f)) for c in lay.cameras}

    def draw(f, c, img):
        img = img.copy()
        for x, y in lmk[f][f"{c}.png"]["points"]:
            cv2.circle(img, (int(x), int(y)), 1, (0, 255, 0), -1)
        return img
    path = write_overlay_video(tmp_path / "overlay.mp4", lay.frames, load, draw, tile_width=96)
    cap = cv2.VideoCapture(str(path))
    n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    w, h = cap.get(cv2.CAP_PROP_FRAME_WIDTH), cap.get(cv2.CAP_PROP_FRAME_HEIGHT)
    cap.release()
    assert n == 3 and (w, h) == (2 * 96, 2 * 96)
    assert loaded == lay.frames                                      # streamed: each frame read once, in turn
    assert sorted(p.name for p in tmp_path.iterdir()) == ["overlay.mp4"]


def test_overlay_marks_the_cameras_whose_landmarks_the_fit_did_not_use():
    """Green points where the frame's fit used the camera's landmarks; orange points and a label
    where it did not (a profile's detector points), so the video shows which cameras the
    landmarks posed."""
    img = np.zeros((96, 160, 3), np.uint8)
    uv = np.array([[40.0, 60.0], [100.0, 70.0]])
    used = draw_tracked_landmarks(img, uv, True)
    assert img.sum() == 0                                            # the input is not drawn on
    assert tuple(used[60, 40]) == (0, 255, 0) and tuple(used[70, 100]) == (0, 255, 0)
    assert (used[:30] == 0).all()                                    # no label
    unused = draw_tracked_landmarks(img, uv, False)
    assert tuple(unused[60, 40]) == (255, 160, 0)
    assert (unused[:30].reshape(-1, 3) == (255, 160, 0)).all(1).sum() > 50   # "landmarks not used"
