"""Sequence tracking (fitting.sequence.track): chunking and blending, and the tracker on a
synthetic 6-frame x 8-camera sequence with its calibration (``--camera_mode fixed``) against
the ground truth vertices in the rig frame, one chunk against two tracked in parallel, and a
rerun that reuses the chunk files. (The temporal prior's and ``shape_fixed``'s Jacobian checks
are in tests/fitting/test_known_cameras.py.)"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from fitting.ground_truth import calibration_errors
from fitting.rotations import axis_angle_to_matrix
from fitting.sequence.track import blend_chunks, chunk_ranges


def test_chunk_ranges():
    assert chunk_ranges(6, 0, 2) == [(0, 6)]
    assert chunk_ranges(6, 4, 2) == [(0, 4), (2, 6)]
    assert chunk_ranges(10, 4, 1) == [(0, 4), (3, 7), (6, 10)]
    with pytest.raises(ValueError):
        chunk_ranges(6, 3, 3)


@pytest.mark.parametrize("option, value", [("workers", 0), ("refine_frames", 0), ("chunk", -1), ("overlap", -1),
                                           ("track_iters", -1), ("refine_iters", -2), ("w_temporal", -1),
                                           ("sigma_rot_deg", 0), ("sigma_jaw_deg", -1)])
def test_bad_sequence_options_are_refused_up_front(seq, option, value):
    """Each names its option, before any frame is read or fitted."""
    from fitting.sequence.__main__ import parse_sequence_config
    with pytest.raises(ValueError, match=f"--{option} "):
        parse_sequence_config([str(seq[0]), "--savefolder", "unused", f"--{option}", str(value)])
    with pytest.raises(ValueError, match="--overlap 4 must be in"):
        parse_sequence_config([str(seq[0]), "--savefolder", "unused", "--chunk", "4", "--overlap", "4"])


def _result(T: int, angle: float, x: float) -> dict:
    R = axis_angle_to_matrix(torch.tensor([0.0, 0.0, angle], dtype=torch.float64)).numpy()
    return {"head_R": np.repeat(R[None], T, 0), "head_t": np.full((T, 3), x), "expression": np.full((T, 2), x),
            "jaw": np.full((T, 3), x), "landmark_rmse_px": np.full((T, 1), x), "missing": np.zeros(T, bool),
            "seconds": np.ones(T), "why": np.full(T, "", dtype="<U32")}


def test_blend_ramps_over_the_overlap():
    """Overlap of 2: the later chunk weighs 1/3 then 2/3; rotations along the geodesic."""
    out = blend_chunks([(0, 4), (2, 6)], [_result(4, 0.0, 0.0), _result(4, 0.3, 3.0)])
    assert np.allclose(out["head_t"][:, 0], [0, 0, 1, 2, 3, 3])
    ang = np.arctan2(out["head_R"][:, 1, 0], out["head_R"][:, 0, 0])
    assert np.allclose(ang, [0, 0, 0.1, 0.2, 0.3, 0.3])
    same = blend_chunks([(0, 4), (2, 6)], [_result(4, 0.2, 1.0), _result(4, 0.2, 1.0)])
    assert np.allclose(same["head_R"], _result(6, 0.2, 1.0)["head_R"])


def test_blend_takes_the_tracked_chunk_where_the_other_missed():
    """In the overlap, a frame one chunk could not track takes the other chunk's values, whatever
    the ramp; only a frame both missed stays missing, with its reason."""
    early, late = _result(4, 0.0, 0.0), _result(4, 0.3, 3.0)
    late["missing"][0], late["why"][0], late["landmark_rmse_px"][0] = True, "no face", np.nan
    early["missing"][3], early["why"][3] = True, "no face in any view"
    out = blend_chunks([(0, 4), (2, 6)], [early, late])
    assert np.allclose(out["head_t"][2:4, 0], [0, 3]) and out["landmark_rmse_px"][2, 0] == 0
    assert np.isclose(np.arctan2(out["head_R"][3, 1, 0], out["head_R"][3, 0, 0]), 0.3)
    assert not out["missing"].any() and list(out["why"]) == [""] * 6
    late["missing"][1], late["why"][1] = True, "no face in any view"
    out = blend_chunks([(0, 4), (2, 6)], [early, late])
    assert list(out["missing"]) == [False, False, False, True, False, False]
    assert list(out["why"]) == ["", "", "", "no face in any view", "", ""]


def test_missing_frame_interpolated():
    """A frame without landmarks anywhere takes the geodesic / linear midpoint of its neighbours."""
    from fitting.sequence.track import interpolate
    r = blend_chunks([(0, 3)], [_result(3, 0.0, 0.0)])
    r["head_R"][2] = axis_angle_to_matrix(torch.tensor([0.0, 0.0, 0.4], dtype=torch.float64)).numpy()
    r["head_t"][2] = 2.0
    r["head_t"][1], r["missing"][1] = 99.0, True
    out = interpolate(r)
    assert np.allclose(out["head_t"][1], 1.0)
    assert np.isclose(np.arctan2(out["head_R"][1, 1, 0], out["head_R"][1, 0, 0]), 0.2)


def _run(root, out, standin_path, *args) -> dict:
    """``python -m fitting.sequence`` on the synthetic sequence ``root`` at 192 px. ``--tracks off``:
    SIFT on the views doubled finds ~70 points a frame, at ~5 s per frame refined over; what
    they give is measured by bench.sequence (docs/SEQUENCES.md) and tested on single frames in
    tests/fitting/test_known_cameras.py and on the real views in test_real_sequence.py."""
    from fitting.sequence.__main__ import parse_sequence_config, run_sequence
    cfg = parse_sequence_config([
        str(root), "--cameras", str(root / "calibration" / "cameras.json"), "--camera_mode", "fixed",
        "--savefolder", str(out), "--flame_model", str(standin_path), "--n_shape", "40", "--n_exp", "20",
        "--image_size", "192", "--photo_iters", "0", "--progress", "false", "--write_images", "false",
        "--w_shape", "8e-5", "--w_exp", "3.2e-4", "--w_rim", "1.0", "--rim_robust_px", "0.6",
        "--w_photo_gn", "3e4", "--photo_gn_iters", "3", "--tracks", "off", *args])
    return run_sequence(cfg)


def _tracked(out) -> dict:
    z = np.load(out / "sequence.npz")
    return {k: z[k] for k in z.files}


@pytest.mark.slow
def test_tracking_fixed_rig(sequence6, standin_path, tmp_path):
    """Vertices within 0.6 mm of the truth (mean over frames, rig frame, no alignment), jaw within
    1.3 deg mean; the shape refined over the frames with the cameras held (closer to the truth
    than the keyframe's alone, the calibration unchanged); two chunks (overlap 2, 2 workers) agree
    with one chunk; a rerun tracks nothing. The two outer views hold a detector's profile points,
    which the fit leaves out. Measured at 192 px and 6 frames (2026-12-08, AVX2 AMD EPYC): 0.48 mm,
    jaw 1.08 deg mean (max 1.25); the neutral head 0.33 mm from the truth's against 0.43 with the
    keyframe's shape. With the keyframe's shape alone: 0.61-0.69 mm, jaw 1.15-1.30 deg mean, over
    forms of the same maths that round differently (with those points used: 3.84 mm, 1.99 deg; with
    the true points there: 0.44 mm, 0.92 deg). The issue's 0.5 mm and 1 deg, on the 20-frame 256 px
    sequence, are bench.sequence's (docs/SEQUENCES.md)."""
    from fitting.flame import FLAME
    from fitting.sequence.track import frame_vertices, identity_from_fit

    root, gt = sequence6
    rep = _run(root, tmp_path, standin_path)
    one = _tracked(tmp_path)
    flame = FLAME(standin_path, n_shape=40, n_exp=20)
    V = frame_vertices(flame, torch.as_tensor(one["shape"]), one).numpy()
    err_mm = np.linalg.norm(V - gt["vertices"], axis=-1).mean(-1) * 1000
    jaw_deg = np.degrees(np.linalg.norm(one["jaw"] - gt["pose"][:, 6:9], axis=-1))
    print("vertex mm", err_mm, "jaw deg", jaw_deg, rep["summary"])
    assert err_mm.mean() <= 0.6 and jaw_deg.max() <= 1.6 and jaw_deg.mean() <= 1.3
    refine = rep["summary"]["refine"]
    assert refine["frames"] == [f"{k:06d}" for k in range(6)]
    assert set(refine["change_from_keyframe_deg"].values()) == {0} == set(refine["change_from_keyframe_mm"].values())

    def neutral_mm(shape) -> float:
        zeros = torch.zeros(1, 20), torch.zeros(1, 15)
        v = [flame(torch.as_tensor(s, dtype=torch.float32).reshape(1, -1), *zeros)[0] for s in (shape, gt["shape"])]
        return float((v[0] - v[1]).norm(dim=-1).mean()) * 1000
    keyframe_mm, refined_mm = neutral_mm(identity_from_fit(tmp_path / "identity", None).shape), neutral_mm(one["shape"])
    print(f"neutral head: keyframe's shape {keyframe_mm:.3f} mm, refined over the frames {refined_mm:.3f} mm")
    assert refined_mm < 0.9 * keyframe_mm
    # the landmark RMSE is over the views whose landmarks the fit used: not the outer two
    table = json.loads((tmp_path / "frames.json").read_text())["frames"]
    assert all(t["rmse_px"]["cam00"] is None and t["rmse_px"]["cam07"] is None for t in table), table
    assert rep["summary"]["landmark_rmse_px_mean"] < 1.5, rep["summary"]

    # the identity fit is reused; two chunks of 4 sharing 2 frames, in 2 processes
    (tmp_path / "sequence.npz").unlink()
    rep2 = _run(root, tmp_path, standin_path, "--chunk", "4", "--overlap", "2", "--workers", "2")
    two = _tracked(tmp_path)
    assert rep2["summary"]["chunks"] == [[0, 4], [2, 6]] and rep2["summary"]["chunks_tracked_now"] == [True, True]
    V2 = frame_vertices(flame, torch.as_tensor(two["shape"]), two).numpy()
    diff_mm = np.linalg.norm(V2 - V, axis=-1).mean(-1) * 1000
    print("one vs two chunks, mm", diff_mm)
    assert diff_mm.max() <= 0.2
    # in this process: reusing a chunk is track_chunk's, whatever runs it, and spawning costs ~4 s
    rep3 = _run(root, tmp_path, standin_path, "--chunk", "4", "--overlap", "2", "--workers", "1")
    assert rep3["summary"]["chunks_tracked_now"] == [False, False]
    assert np.array_equal(_tracked(tmp_path)["head_t"], two["head_t"])


def _similarity(A: np.ndarray, B: np.ndarray):
    """(s, R, t) minimising |s R A + t - B| over points A, B (N, 3) (Umeyama)."""
    ma, mb = A.mean(0), B.mean(0)
    U, S, Vt = np.linalg.svd((B - mb).T @ (A - ma))
    D = np.diag([1.0, 1.0, np.sign(np.linalg.det(U @ Vt))])
    R = U @ D @ Vt
    s = np.trace(np.diag(S) @ D) / ((A - ma) ** 2).sum()
    return s, R, mb - s * R @ ma


@pytest.mark.slow
def test_one_camera_sequence_in_every_camera_mode(sequence_one_camera, standin_path, tmp_path):
    """One camera's video laid out as a sequence (images/cam00/<frame>.png, docs/SEQUENCES.md) is
    tracked in each camera mode: every frame from its one view (the first placed by PnP under the
    camera), none refused for lacking a second view; ``refine`` (a calibration perturbed by 1 deg
    and 5 mm, the feature tracks on) runs without tracks, which need two views. One view leaves
    the head's depth to the model's size, so the vertices are compared after one similarity for
    the whole sequence. The landmark term is a mean over the views, so the priors of the 8-view
    runs are 8 x weaker per landmark here and are scaled by 8 (docs/SEQUENCES.md). The refined
    camera stays at the calibration: each frame's head pose takes up what its pose would. Measured
    (2026-12-08, AMD EPYC): vertices 1.24-1.25 mm mean in each mode (1.61 in ``fixed`` with the
    keyframe's shape, not refined over the frames); jaw 1.85-1.87 deg mean, max 2.05 deg; the
    refined camera turned by 2e-5 deg."""
    from fitting.calibration import load_calibration, write_calibration_json
    from fitting.flame import FLAME
    from fitting.ground_truth import perturb_cameras
    from fitting.sequence.track import frame_vertices

    root, gt = sequence_one_camera
    names, sizes = ["cam00.png"], {"cam00.png": (192, 192)}
    truth = load_calibration(root / "calibration" / "cameras.json", names, sizes)
    perturbed = tmp_path / "perturbed.json"
    write_calibration_json(perturbed, perturb_cameras(truth, np.random.default_rng(0)))
    flame = FLAME(standin_path, n_shape=40, n_exp=20)
    for mode, calib in (("fixed", root / "calibration" / "cameras.json"), ("refine", perturbed), ("estimate", "")):
        out = tmp_path / mode
        rep = _run(root, out, standin_path, "--camera_mode", mode, "--cameras", str(calib), "--tracks", "auto",
                   "--w_shape", str(8 * 8e-5), "--w_exp", str(8 * 3.2e-4))
        got = _tracked(out)
        assert not got["missing"].any() and rep["summary"]["num_cameras"] == 1, rep["summary"]
        V = frame_vertices(flame, torch.as_tensor(got["shape"]), got).numpy()
        s, R, t = _similarity(V.reshape(-1, 3), gt["vertices"].reshape(-1, 3))
        err_mm = np.linalg.norm(s * V @ R.T + t - gt["vertices"], axis=-1).mean(-1) * 1000
        jaw_deg = np.degrees(np.linalg.norm(got["jaw"] - gt["pose"][:, 6:9], axis=-1))
        print(mode, "scale", s, "vertex mm", err_mm, "jaw deg", jaw_deg, rep["summary"].get("refine"))
        assert err_mm.mean() <= 2.0 and jaw_deg.mean() <= 2.5 and rep["summary"]["landmark_rmse_px_mean"] < 1.0
        if mode == "refine":
            assert rep["summary"]["refine"]["tracks"]["num_points"] == 0
            moved = rep["summary"]["refine"]["camera_rotation_change_deg"]["cam00.png"]
            assert moved < 1.0, rep["summary"]["refine"]


@pytest.mark.slow
def test_tracking_without_cameras(sequence6_true_profiles, standin_path, tmp_path):
    """No --cameras: the keyframe's fit estimates the cameras (SfM on its views), they are refined
    over the frames (closer to the truth than the keyframe's: measured 0.084-0.086 deg / 0.87-0.88 mm
    against 0.163 / 1.27-1.28 after the best similarity), written to OUT/cameras.json, and every frame is
    tracked with them. In the keyframe's head frame, so the vertices are compared after one
    similarity for the whole sequence: within 1 mm, jaw within 1.5 deg. A rerun that changes only
    sequence options reuses the identity; a fit option changed makes it stale. The outer views
    hold their true points: the runs leave the tracks off (:func:`_run`), and without tracks
    nothing but its landmarks poses a view, so a detector's profile points would turn it
    (docs/FITTING.md)."""
    import argparse

    from fitting.calibration import load_calibration
    from fitting.flame import FLAME
    from fitting.fit_record import files_digest, finished_report
    from fitting.sequence.__main__ import SEQUENCE_ONLY
    from fitting.sequence.track import frame_vertices, identity_from_fit

    root, gt = sequence6_true_profiles
    rep = _run(root, tmp_path, standin_path, "--camera_mode", "estimate", "--cameras", "")
    names = [f"cam{c:02d}.png" for c in range(8)]
    sizes = {n: (192, 192) for n in names}
    cams = load_calibration(tmp_path / "cameras.json", names, sizes)
    assert len(cams) == 8 and len(rep["summary"]["refine"]["frames"]) == 6
    truth = load_calibration(root / "calibration" / "cameras.json", names, sizes)
    rot, cen = calibration_errors(cams, truth)
    rot_key, cen_key = calibration_errors(identity_from_fit(tmp_path / "identity", None).cameras, truth)
    print(f"cameras: keyframe {rot_key:.3f} deg / {cen_key:.2f} mm, refined over frames {rot:.3f} / {cen:.2f}")
    assert rot < 0.75 * rot_key and cen < 0.75 * cen_key
    got = _tracked(tmp_path)
    flame = FLAME(standin_path, n_shape=40, n_exp=20)
    V = frame_vertices(flame, torch.as_tensor(got["shape"]), got).numpy()
    s, R, t = _similarity(V.reshape(-1, 3), gt["vertices"].reshape(-1, 3))
    err_mm = np.linalg.norm(s * V @ R.T + t - gt["vertices"], axis=-1).mean(-1) * 1000
    jaw_deg = np.degrees(np.linalg.norm(got["jaw"] - gt["pose"][:, 6:9], axis=-1))
    print("scale", s, "vertex mm", err_mm, "jaw deg", jaw_deg, rep["summary"])
    assert abs(s - 1) < 0.02 and err_mm.mean() <= 1.0 and jaw_deg.max() <= 1.5

    record = tmp_path / "identity" / "fit_record.json"
    before = record.stat().st_mtime_ns
    again = _run(root, tmp_path, standin_path, "--camera_mode", "estimate", "--cameras", "", "--frames", "0:2")
    assert record.stat().st_mtime_ns == before and again["summary"]["num_frames"] == 2
    cfg = json.loads(record.read_text())["options"]
    key = argparse.Namespace(**{**{k: v for k, v in cfg.items() if k not in SEQUENCE_ONLY}, "w_shape": 1e-3})
    inputs = {"keyframe_images": files_digest([root / "frames" / "000000" / "images"]), "cameras": None}
    assert finished_report(argparse.Namespace(**cfg), inputs) is not None
    assert finished_report(key, inputs) is None


@pytest.mark.slow
def test_frame_without_a_face_is_interpolated_and_the_video_written(seq, standin_path, tmp_path, capfd):
    """End to end on a capture whose first frame shows no face in any camera: the keyframe is
    chosen among the others, the frame is not fitted but takes its tracked neighbour's values,
    flagged with its reason in report.json and in the frame table, and the overlay video has
    every frame. First with the frame's old preprocessing still there (made for other images:
    refused, never read), then with none (process_data's detector finds no face). The console
    shows each step as it is done, and the frame that was not tracked with its reason."""
    import shutil

    import cv2

    from fitting.sequence.__main__ import parse_sequence_config, run_sequence

    root = shutil.copytree(seq[0], tmp_path / "seq", symlinks=True)
    blank = np.full((128, 128, 3), 90, np.uint8)
    for c in range(3):
        cv2.imwrite(str(root / "images" / f"cam{c:02d}" / "000000.png"), blank)
    out = tmp_path / "out"
    cfg = parse_sequence_config([
        str(root), "--cameras", str(root / "calibration" / "cameras.json"), "--camera_mode", "fixed",
        "--savefolder", str(out), "--flame_model", str(standin_path), "--image_size", "128", "--photo_iters", "0",
        "--progress", "false", "--write_images", "true"])
    for stale in (True, False):
        if not stale:
            for f in ("landmarks.json", "manifest.json", "cameras.json", "masks"):
                p = root / "frames" / "000000" / f
                shutil.rmtree(p) if p.is_dir() else p.unlink()
        capfd.readouterr()
        rep = run_sequence(cfg)
        shown = capfd.readouterr().out
        assert rep["summary"]["keyframe"] == "000001" and rep["summary"]["frames_flagged"] == ["000000"]
        reason = "preprocessing failed" if stale else "no usable view"
        assert f"[track] frame 000000: not tracked, {reason}" in shown
        assert "[track] frame 000002: landmark RMSE" in shown and "[sequence] 3 frames (1 not tracked" in shown
        assert ("[identity] fitting the keyframe 000001" if stale else "[identity] reused") in shown
        assert [f["missing"] for f in rep["frames"]] == [True, False, False]
        why = rep["frames"][0]["why"]
        assert ("preprocessing failed" in why) if stale else ("no usable view" in why and "no face" in why)
        table = json.loads((out / "frames.json").read_text())
        assert [f["flags"] for f in table["frames"]] == [["interpolated"], [], []]
        got = _tracked(out)
        assert np.allclose(got["head_t"][0], got["head_t"][1]) and np.allclose(got["head_R"][0], got["head_R"][1])
        video = cv2.VideoCapture(str(out / "overlay.mp4"))
        assert int(video.get(cv2.CAP_PROP_FRAME_COUNT)) == 3


@pytest.mark.slow
def test_refine_past_a_faceless_frame_and_a_camera_the_keyframe_missed(seq, standin_path, tmp_path, capfd):
    """``refine`` over every frame of a capture whose first frame shows no face and whose keyframe
    (1) has no landmarks in cam02, as when the detector misses a face: the faceless frame is
    left out of the solve, said so on the console, and cam02, calibrated but not in the
    keyframe's fit, is refined from the frame that shows it and tracked there."""
    import shutil

    import cv2

    from fitting.sequence.__main__ import parse_sequence_config, run_sequence

    root = shutil.copytree(seq[0], tmp_path / "seq", symlinks=True)
    for c in range(3):
        cv2.imwrite(str(root / "images" / f"cam{c:02d}" / "000000.png"), np.full((128, 128, 3), 90, np.uint8))
    for f in ("landmarks.json", "manifest.json", "cameras.json", "masks"):    # preprocessed again: no face
        p = root / "frames" / "000000" / f
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    marks = root / "frames" / "000001" / "landmarks.json"
    lmk = json.loads(marks.read_text())
    lmk["cam02.png"] = {"points": None}
    marks.unlink()                                   # a link into the fixture's folder: write a file of its own
    marks.write_text(json.dumps(lmk))
    out = tmp_path / "out"
    rep = run_sequence(parse_sequence_config([
        str(root), "--cameras", str(root / "calibration" / "cameras.json"), "--camera_mode", "refine",
        "--refine_frames", "3", "--keyframe", "1", "--savefolder", str(out), "--flame_model", str(standin_path),
        "--image_size", "128", "--photo_iters", "0", "--progress", "false", "--write_images", "false"]))
    shown = capfd.readouterr().out
    refine = rep["summary"]["refine"]
    assert "[refine] 1/3 frame 000000: not tracked" in shown and refine["frames"] == ["000001", "000002"]
    assert "cam02.png" in refine["cameras"] and refine["change_from_keyframe_deg"]["cam02.png"] > 0
    table = json.loads((out / "frames.json").read_text())["frames"]
    assert table[1]["rmse_px"]["cam02"] is None and table[2]["rmse_px"]["cam02"] < 2.0, table


def test_keyframe_is_the_first_with_the_most_faces(tmp_path):
    """--keyframe -1: the first frame whose landmarks.json has a face in the most cameras; a frame
    whose preprocessing failed counts none."""
    from fitting.sequence.__main__ import choose_keyframe
    faces = {"a": [1, None, 1], "b": [1, 1, 1], "c": [1, 1, 1], "d": []}
    dirs = []
    for name, pts in faces.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "landmarks.json").write_text(json.dumps(
            {f"cam{i}.png": {"points": p} for i, p in enumerate(pts)}))
        dirs.append(tmp_path / name)
    assert choose_keyframe(dirs, {}) == 1
    assert choose_keyframe(dirs, {"b": "preprocessing failed"}) == 2
    assert choose_keyframe([tmp_path / "d", tmp_path / "missing"], {}) == 0


@pytest.mark.parametrize("refined", [False, True])
def test_identity_cameras_in_the_rig_frame(tmp_path, refined):
    """identity_from_fit maps the keyframe's head-frame cameras back into the rig with the head's
    pose: a rig-frame point projects to the same pixel through either; the fitted focal length
    replaces the calibration's only when the fit refined it; without a calibration the cameras
    are the fit's own."""
    from fitting.calibration import Calibrated
    from fitting.export.core import write_params
    from fitting.known_cameras import Rig
    from fitting.sequence.track import identity_from_fit

    H_R = axis_angle_to_matrix(torch.tensor([0.1, -0.3, 0.2], dtype=torch.float64)).numpy()
    H_t = np.array([0.02, -0.01, 0.5])
    R_head = axis_angle_to_matrix(torch.tensor([0.0, 0.4, 0.05], dtype=torch.float64)).numpy()
    t_head = np.array([0.01, 0.0, 0.6])
    K_cal, K_fit = np.diag([500.0, 500.0, 1.0]), np.diag([510.0, 510.0, 1.0])
    K_cal[:2, 2] = K_fit[:2, 2] = 64
    write_params(tmp_path / "params.npz", names=["cam00.png"], K=K_fit[None], R=R_head[None], t=t_head[None],
                 image_size=np.array([[128, 128]]), shape=np.zeros((1, 4)), tex=np.zeros((1, 2)),
                 sh=np.arange(27.0).reshape(1, 9, 3))
    (tmp_path / "report.json").write_text(json.dumps({"known_cameras": {"head_to_rig": {"R": H_R.tolist(),
                                                                                          "t": H_t.tolist()}}}))
    (tmp_path / "fit_details.json").write_text(json.dumps({"focal": {"refined": refined}}))
    unseen = Calibrated(K_cal * [[2, 1, 1], [1, 2, 1], [1, 1, 1]], R_head, np.array([0.0, 0.1, 0.7]), 128, 128,
                        np.zeros(0))
    rig = Rig(tmp_path / "cal.json", "refine", {"cam00.png": Calibrated(K_cal, np.eye(3), np.zeros(3), 128, 128,
                                                                       np.zeros(0)), "cam01.png": unseen})
    ident = identity_from_fit(tmp_path, rig)
    cam = ident.cameras["cam00.png"]
    X_head = np.array([0.03, -0.02, 0.05])
    X_rig = H_R @ X_head + H_t
    assert np.allclose(cam.R @ X_rig + cam.t, R_head @ X_head + t_head)
    assert np.allclose(cam.K, K_fit if refined else K_cal)
    # a calibrated camera the keyframe's fit did not use (no face there): its calibration, with the
    # fit's focal factor, and the fitted cameras' mean light, so later frames can use it
    other = ident.cameras["cam01.png"]
    assert np.allclose(other.R, unseen.R) and np.allclose(other.t, unseen.t)
    assert np.allclose(other.K[:2, :2], unseen.K[:2, :2] * (K_fit[0, 0] / K_cal[0, 0] if refined else 1))
    assert np.allclose(other.K[:2, 2], unseen.K[:2, 2]) and torch.equal(ident.sh["cam01.png"], ident.sh["cam00.png"])
    own = identity_from_fit(tmp_path, None).cameras["cam00.png"]
    assert np.allclose(own.R, R_head) and np.allclose(own.t, t_head) and np.allclose(own.K, K_fit)
    assert (own.width, own.height) == (128, 128)
