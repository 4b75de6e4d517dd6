"""Benchmark of sequence tracking: ``python -m bench.sequence``.

A synthetic sequence (:func:`fitting.synthetic_sequence.make_sequence`, stand-in model,
``--frames`` x ``--cameras`` at ``--size`` px, built once in ``--cache`` when given, and again
when the generator's ``SEQUENCE_VERSION`` changed) tracked
with its calibration (``--camera_mode fixed``, photometric rows on) by
:func:`fitting.sequence.__main__.run_sequence`. Prints one JSON line: the identity fit's and
the tracking's seconds, seconds per frame (mean, median, and the median without each chunk's
first frame, which holds the process's one-off warm-up), the vertex error against the ground
truth (rig frame, no alignment, mean over frames, mm; and after one similarity for the whole
sequence) and the jaw's angle error (deg), the load average and the torch thread count. With
``--perturb SEED`` the calibration is perturbed
(1 deg, 5 mm per camera) and refined (``--camera_mode refine`` over ``--refine_frames``); the line
then holds the cameras' mean rotation (deg) and centre (mm) errors after the best similarity:
perturbed, after the keyframe's fit alone and after the refinement over frames (null with
``--cameras 1``: a similarity maps one camera onto any other). With
``--perturb_focal PCT`` every focal length is also scaled by 1 + PCT / 100 and refined
(``--refine_focal always``); the line holds the focal error (%) at the same three stages.
Any other option goes to the sequence command and overrides the bench's (``--track_photo_iters 3``);
a misspelt one stops there with the sequence command's error.
"""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

from bench._common import emit, load_average, machine


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=20)
    ap.add_argument("--cameras", type=int, default=8)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--chunk", type=int, default=0)
    ap.add_argument("--cache", type=str, default="", help="folder keeping the stand-in and the sequence")
    ap.add_argument("--perturb", type=int, default=-1,
                    help="seed: every camera of the calibration turned by 1 deg and moved by 5 mm, then "
                         "--camera_mode refine (default -1: the exact calibration, fixed)")
    ap.add_argument("--perturb_focal", type=float, default=0.0,
                    help="with --perturb: every focal length scaled by 1 + PCT / 100, and refined")
    ap.add_argument("--refine_frames", type=int, default=8, help="with --perturb: frames the cameras are refined over")
    # the rest goes to the sequence command after the bench's own options, which it overrides
    # (e.g. --track_photo_iters 3)
    a, sequence_options = ap.parse_known_args(argv)

    import numpy as np
    import torch

    from fitting.calibration import load_calibration, write_calibration_json
    from fitting.flame import FLAME
    from fitting.ground_truth import calibration_errors, focal_error_pct, perturb_cameras
    from fitting.init import umeyama
    from fitting.known_cameras import Rig
    from fitting.sequence.__main__ import parse_sequence_config, run_sequence
    from fitting.sequence.track import frame_vertices, identity_from_fit
    from fitting.synthetic import build_standin
    from fitting.synthetic_sequence import SEQUENCE_VERSION, make_sequence

    root = Path(a.cache or tempfile.mkdtemp(prefix="bench_seq_"))
    standin = root / "standin" / "standin.pkl"
    if not standin.is_file():
        build_standin(standin)
    seq = root / f"seq_{a.frames}x{a.cameras}_{a.size}"
    t0 = time.perf_counter()
    gt_path = seq / "ground_truth.npz"
    version = 0
    if gt_path.is_file():
        with np.load(gt_path) as z:
            version = int(z.get("version", 0))
    if version != SEQUENCE_VERSION:
        if seq.exists():
            print(f"[bench] {seq} was built by another version of the generator; rebuilding it", flush=True)
            shutil.rmtree(seq)
        make_sequence(seq, standin, n_frames=a.frames, n_cameras=a.cameras, width=a.size, height=a.size,
                      n_shape=40, n_exp=20, seed=0)
    t_make = time.perf_counter() - t0
    out = Path(tempfile.mkdtemp(prefix="bench_seq_out_"))
    calib, mode = seq / "calibration" / "cameras.json", "fixed"
    names = [f"cam{c:02d}.png" for c in range(a.cameras)]
    sizes = {n: (a.size, a.size) for n in names}
    truth = load_calibration(calib, names, sizes)
    if a.perturb >= 0:
        calib, mode = out / "perturbed.json", "refine"
        write_calibration_json(calib, perturb_cameras(truth, np.random.default_rng(a.perturb),
                                                      focal_pct=a.perturb_focal))
    focal = ["--refine_focal", "always"] if a.perturb >= 0 and a.perturb_focal else []
    cfg = parse_sequence_config([
        str(seq), "--cameras", str(calib), "--camera_mode", mode, "--refine_frames", str(a.refine_frames),
        "--savefolder", str(out), "--flame_model", str(standin), "--n_shape", "40", "--n_exp", "20",
        "--image_size", str(a.size), "--photo_iters", "0", "--progress", "false", "--write_images", "false",
        "--w_shape", "8e-5", "--w_exp", "3.2e-4", "--w_rim", "1.0", "--rim_robust_px", "0.6",
        "--w_photo_gn", "3e4", "--photo_gn_iters", "3", "--workers", str(a.workers), "--chunk", str(a.chunk),
        *focal, *sequence_options])
    rep = run_sequence(cfg)
    z = np.load(out / "sequence.npz")
    gt = np.load(seq / "ground_truth.npz")
    flame = FLAME(standin, n_shape=40, n_exp=20)
    V = frame_vertices(flame, torch.as_tensor(z["shape"]), {k: z[k] for k in z.files}).numpy()
    err = np.linalg.norm(V - gt["vertices"], axis=-1).mean(-1) * 1000
    sc, Q, T = umeyama(V.reshape(-1, 3), gt["vertices"].reshape(-1, 3))   # a refined rig's frame is the prior's
    err_sim = np.linalg.norm(sc * V @ Q.T + T - gt["vertices"], axis=-1).mean() * 1000
    jaw = np.degrees(np.linalg.norm(z["jaw"] - gt["pose"][:, 6:9], axis=-1))
    sec = np.array([f["seconds"] for f in rep["frames"]])

    def camera_errors(cams: dict) -> list | None:
        if len(truth) < 2:     # one camera's pose is any similarity's
            return None
        rot, cen = calibration_errors(cams, truth)
        return [round(rot, 4), round(cen, 3)] + ([round(focal_error_pct(cams, truth), 3)] if focal else [])
    cameras = {}
    if a.perturb >= 0:
        perturbed = load_calibration(calib, names, sizes)
        keyframe = identity_from_fit(out / "identity", Rig(calib, mode, perturbed))
        cameras = {"perturb_focal_pct": a.perturb_focal, "camera_deg_mm_perturbed": camera_errors(perturbed),
                   "camera_deg_mm_keyframe": camera_errors(keyframe.cameras),
                   "camera_deg_mm": camera_errors(load_calibration(out / "cameras.json", names, sizes)),
                   "refine": {k: rep["summary"].get("refine", {}).get(k) for k in ("frames", "seconds")}}
    firsts = [a for a, _ in rep["summary"]["chunks"]]
    emit({
        "bench": "sequence", "frames": a.frames, "cameras": a.cameras, "size": a.size, "workers": a.workers,
        "chunks": rep["summary"]["chunks"], "make_sequence_s": round(t_make, 1),
        "timing_s": rep["summary"]["timing_s"], "s_per_frame_mean": round(float(sec.mean()), 2),
        "s_per_frame_median": round(float(np.median(sec)), 2),
        "s_per_frame_median_warm": round(float(np.median(np.delete(sec, firsts))), 2),
        "vertex_mm_mean": round(float(err.mean()), 3), "vertex_mm_max": round(float(err.max()), 3),
        "vertex_mm_after_similarity": round(float(err_sim), 3),
        "jaw_deg_mean": round(float(jaw.mean()), 3), "jaw_deg_max": round(float(jaw.max()), 3),
        "landmark_rmse_px_mean": rep["summary"]["landmark_rmse_px_mean"], "perturb": a.perturb, **cameras,
        "load_avg_1min": load_average(),
        "threads": torch.get_num_threads(), "cpus": os.cpu_count(), "machine": machine()})


if __name__ == "__main__":
    main()
