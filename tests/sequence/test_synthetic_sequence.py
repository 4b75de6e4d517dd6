"""The synthetic sequence generator: its calibration (three formats, rig frame) reprojects the
ground truth onto the written landmarks, the ground-truth motion is what its docstring says,
and each frame folder is a scene load_scene uses as it is."""
from __future__ import annotations

import json
import os

import numpy as np
import torch

from fitting.calibration import load_calibration
from fitting.render.cameras import FLIP

FORMATS = ("cameras.json", "transforms.json", "colmap")


def _project(cam, X: np.ndarray) -> np.ndarray:
    x = X @ cam.R.T + cam.t
    return x[:, :2] / x[:, 2:] * np.diag(cam.K)[:2] + cam.K[:2, 2]


def _load(root, gt, fmt: str) -> dict:
    plain = json.loads((root / "calibration" / "cameras.json").read_text())
    sizes = {f"{c}.png": (plain[c]["width"], plain[c]["height"]) for c in gt["cameras"]}
    return load_calibration(root / "calibration" / fmt, list(sizes), sizes)


def test_layout_and_ground_truth_shapes(seq):
    root, gt = seq
    T, C = 3, 3
    assert list(gt["cameras"]) == ["cam00", "cam01", "cam02"] and list(gt["frames"]) == ["000000", "000001", "000002"]
    for k, shape in (("expression", (T, 20)), ("pose", (T, 15)), ("head_R", (T, 3, 3)), ("head_t", (T, 3)),
                     ("K", (C, 3, 3)), ("R", (C, 3, 3)), ("t", (C, 3)), ("shape", (40,))):
        assert gt[k].shape == shape, k
    assert gt["vertices"].shape[0] == T and gt["vertices"].shape[2] == 3
    for fr in gt["frames"]:
        folder = root / "frames" / fr
        for cam in gt["cameras"]:
            link = folder / "images" / f"{cam}.png"
            assert link.is_symlink() and os.readlink(link) == f"../../../images/{cam}/{fr}.png"
            assert (folder / "masks" / "head" / f"{cam}.png").is_file()
        man = json.loads((folder / "manifest.json").read_text())
        assert man["producer"] == "fitting.synthetic_sequence" and len(man["views"]) == C
        assert json.loads((folder / "cameras.json").read_text())["source"] == "known"


def test_formats_reproject_onto_the_landmarks(seq, standin_path):
    """Each format's cameras put the ground truth's landmarks on the written ones within the
    noise, and all three reproject the GT vertices alike (<= 1e-4 px)."""
    from fitting.flame import FLAME
    root, gt = seq
    flame = FLAME(standin_path, n_shape=40, n_exp=20)
    T = len(gt["frames"])
    verts, _ = flame(torch.tensor(gt["shape"])[None].expand(T, -1), torch.tensor(gt["expression"]),
                     torch.tensor(gt["pose"]))
    HR, Ht = torch.tensor(gt["head_R"]), torch.tensor(gt["head_t"])
    rig = verts @ HR.transpose(1, 2) + Ht[:, None]
    assert (rig - torch.tensor(gt["vertices"])).abs().max() < 1e-5   # the documented head motion
    loaded = {fmt: _load(root, gt, fmt) for fmt in FORMATS}
    errs = []
    for f, fr in enumerate(gt["frames"]):
        written = json.loads((root / "frames" / fr / "landmarks.json").read_text())
        for c, cam in enumerate(gt["cameras"]):
            name = f"{cam}.png"
            R = torch.tensor(loaded["cameras.json"][name].R, dtype=torch.float32)
            lmk = flame.landmarks(verts[f:f + 1], (FLIP @ R @ HR[f])[None])[0] @ HR[f].T + Ht[f]
            for fmt in FORMATS:
                uv = _project(loaded[fmt][name], lmk.double().numpy())
                errs.append(np.linalg.norm(uv - np.asarray(written[name]["points"]), axis=1))
            X = gt["vertices"][f].astype(np.float64)
            ref = _project(loaded["cameras.json"][name], X)
            for fmt in FORMATS[1:]:
                assert np.abs(_project(loaded[fmt][name], X) - ref).max() <= 1e-4, (fmt, name)
    errs = np.concatenate(errs)
    assert np.sqrt((errs ** 2).mean() / 2) < 0.5 * 1.3 and errs.max() < 0.5 * 6, (errs.mean(), errs.max())


def test_expression_jaw_and_head_move(seq):
    _, gt = seq
    step = np.abs(np.diff(gt["expression"], axis=0))
    assert step.mean() > 0.02 and step.max() < 0.6                  # varies over frames, smoothly
    jaw = gt["pose"][:, 6]
    assert jaw.min() >= 0 and jaw.max() <= 0.25
    assert np.abs(gt["head_t"] - gt["head_t"][0]).max() > 1e-4
    # the rig frame is not the head frame
    assert np.abs(gt["head_R"][0] - np.eye(3)).max() > 0.1


def test_frame_folder_loads_as_is(seq):
    """load_scene takes the generator's preprocessing without running process_data."""
    from fitting.scene import load_scene
    root, gt = seq
    cams = json.loads((root / "frames" / "000001" / "cameras.json").read_text())
    sc = load_scene(root / "frames" / "000001", image_size=64, cameras=cams)
    assert len(sc.names) == 3
