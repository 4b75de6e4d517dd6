"""Single-image fitting benchmark: python -m bench.single_view [--cases reference dlib ...] [--images N]

Fits the ten FFHQ photos of ../shared/data/ffhq as ONE batch at 256 px with the stand-in
built on the shared FLAME template (through single_view.batch.fit_images, exactly what
``single_view/fit.py`` runs) and prints one JSON line per case:

* ``reference``: the reference (FAN) landmarks and BiSeNet skin masks given as input
  (``--landmarks`` / ``--mask``); target NME <= 0.035.
* ``dlib``: the defaults, dlib detections and process_data masks; NME of the fitted
  landmarks against the *reference* landmarks, target <= 0.05 (dlib's own NME there: 0.044).
* ``weak``: like ``reference`` with ``--camera weak_perspective``.
* ``fovN`` (e.g. ``fov6``, ``fov25``): like ``reference`` with ``--fov N``.
* ``synthetic``: the issue's synthetic ground truth (tests/single_view), one fit per seed of
  ``--seeds`` on the procedural stand-in (built as the test builds it) at 192 px: mean vertex error (mm) after a similarity
  over all vertices, the NoW face region and the vertices seen in the photo
  (single_view.groundtruth), per seed and mean, with the mean shape's errors for scale.
  Extra options (after ``--``) go to every fit, e.g. ``-- --w_shape 0.018``.
* ``video``: memory and speed of video tracking: the synthetic clip (16 frames at 256 px,
  single_view.groundtruth.make_synthetic_clip) played back and forth to each of ``--frames``
  frames, with its landmarks as a file, fitted by ``single_view/fit.py`` in a child process
  (overlay video on); one line per length with the child's peak RSS (its report.json's
  ``peak_rss_mb``), wall time, s_per_frame and the report's stage timings. Target: peak RSS
  flat between lengths, <= 1 s per frame.

Fields: nme_ref_mean / nme_ref_max (fitted vs reference landmarks), nme_used_mean (report.json's
landmark_nme: fitted vs the landmarks used), photometric L1 first / last and drop (mean, min),
s_per_image (wall), cpu_s_per_image (process CPU time, all threads), stage timings,
load_avg_1min (other work on the machine inflates wall times), machine, date.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench._common import emit, load_average, machine

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"


def run_case(case: str, photos: Path, out: Path, standin_dir: Path, image_size: int, extra: list) -> dict:
    from single_view.batch import fit_images
    from single_view.options import parse_single_view

    ffhq, topo = DATA / "ffhq", DATA / "flame_topology"
    argv = [str(photos), "--savefolder", str(out / case), "--flame_model", "synthetic",
            "--standin_template", str(topo / "head_template_mesh.obj"),
            "--standin_embedding", str(topo / "landmark_embedding.npy"), "--standin_dir", str(standin_dir),
            "--image_size", str(image_size), "--progress", "false", *extra]
    if case != "dlib":
        argv += ["--landmarks", str(ffhq / "{stem}_landmarks68.npy"), "--mask", str(ffhq / "{stem}_skinmask.png")]
    if case == "weak":
        argv += ["--camera", "weak_perspective"]
    elif case.startswith("fov"):
        argv += ["--fov", case[3:]]
    cfg = parse_single_view(argv)
    c0, w0 = time.process_time(), time.perf_counter()
    res = fit_images(cfg, log=lambda *a: None)
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    nme_ref, nme_used, l1a, l1b = [], [], [], []
    for name, rep in sorted(res["images"].items()):
        p = np.load(out / case / Path(name).stem / "params.npz")
        ref = np.load(ffhq / f"{Path(name).stem}_landmarks68.npy").astype(np.float64) + 0.5
        io = np.linalg.norm(ref[36:42].mean(0) - ref[42:48].mean(0))
        nme_ref.append(float(np.linalg.norm(p["landmarks_fitted"] - ref, axis=1).mean() / io))
        nme_used.append(rep["landmark_nme"])
        l1a.append(rep["photometric_l1_first"])
        l1b.append(rep["photometric_l1_last"])
    n = len(nme_ref)
    drop = 1 - np.array(l1b) / np.array(l1a)
    return {"bench": "single_view", "case": case, "n_images": n, "failed": res["failed"], "image_size": image_size,
            "nme_ref_mean": float(np.mean(nme_ref)), "nme_ref_max": float(np.max(nme_ref)),
            "nme_used_mean": float(np.mean(nme_used)), "nme_ref_per_image": [round(x, 4) for x in nme_ref],
            "photometric_l1_first_mean": float(np.mean(l1a)), "photometric_l1_last_mean": float(np.mean(l1b)),
            "photometric_l1_drop_mean": float(drop.mean()), "photometric_l1_drop_min": float(drop.min()),
            "s_per_image": wall / max(n, 1), "cpu_s_per_image": cpu / max(n, 1), "timing_s": res["timing_s"],
            "load_avg_1min": load_average(), "machine": machine(), "device": res["device"],
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def run_synthetic(out: Path, seeds: list, extra: list) -> dict:
    from fitting.flame import FLAME
    from fitting.meshio import load_obj
    from single_view.batch import fit_images
    from fitting.synthetic import build_standin
    from single_view.groundtruth import make_synthetic_photo, region_errors
    from single_view.options import parse_single_view

    model = out / "_standin_procedural" / "standin.pkl"
    if not model.is_file():
        build_standin(model)
    mean_shape = FLAME(model)()[0][0].numpy().astype(np.float64)
    rows, c0, w0 = [], time.process_time(), time.perf_counter()
    for seed in seeds:  # one fit per photo, as the test runs it
        d = out / "synthetic" / f"seed{seed}"
        gt = make_synthetic_photo(model, d / "in", seed=seed)
        argv = [str(d / "in" / "photo.png"), "--flame_model", str(model), "--savefolder", str(d / "out"),
                "--landmarks", str(d / "in" / "photo_landmarks68.npy"), "--mask", str(d / "in" / "photo_skinmask.png"),
                "--image_size", "192", "--progress", "false", *extra]
        argv = [a.replace("{headmask}", str(d / "in" / "photo_headmask.png")) for a in argv]
        res = fit_images(parse_single_view(argv), log=lambda *a: None)
        verts = np.asarray(load_obj(d / "out" / "photo" / "mesh.obj")[0], np.float64)
        e = region_errors(verts, gt["verts"], gt["regions"])
        b = region_errors(mean_shape, gt["verts"], gt["regions"])
        rows.append({"seed": seed, **{k: round(e[k], 3) for k in ("all", "face", "visible")},
                     "mean_shape": {k: round(b[k], 2) for k in ("all", "face", "visible")},
                     "nme_used": round(res["images"]["photo.png"]["landmark_nme"], 4)})
    n = len(rows)
    return {"bench": "single_view", "case": "synthetic", "seeds": seeds, "extra": extra,
            "mean_mm": {k: round(float(np.mean([r[k] for r in rows])), 3) for k in ("all", "face", "visible")},
            "max_mm": {k: round(float(np.max([r[k] for r in rows])), 3) for k in ("all", "face", "visible")},
            "per_seed": rows, "cpu_s_per_image": (time.process_time() - c0) / n,
            "s_per_image": (time.perf_counter() - w0) / n, "load_avg_1min": load_average(), "machine": machine(),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def _pingpong(n_frames: int, clip_len: int) -> np.ndarray:
    """(n_frames,) indices into a clip of ``clip_len`` frames played forwards then backwards."""
    period = 2 * (clip_len - 1)
    k = np.arange(n_frames) % period
    return np.where(k < clip_len, k, period - k)


def _write_played_clip(gt: dict, n_frames: int, out: Path) -> tuple[Path, Path]:
    """The clip of ``gt`` (make_synthetic_clip's result) played back and forth to ``n_frames``:
    (video path, (n_frames, 68, 2) landmarks .npy path)."""
    import cv2

    from single_view.video_io import VideoWriter, iter_frame_chunks

    frames = [f for c in iter_frame_chunks(gt["path"], 64) for f in c.frames]   # 16 frames of 256 px
    order = _pingpong(n_frames, len(frames))
    video, lmk = out / f"clip{n_frames}.mp4", out / f"clip{n_frames}_landmarks68.npy"
    h, w = frames[0].shape[:2]
    with VideoWriter(video, cv2.VideoCapture(str(gt["path"])).get(cv2.CAP_PROP_FPS), (w, h)) as wr:
        for i in order:
            wr.write(frames[i])
    np.save(lmk, np.load(gt["landmarks_path"])[order])
    return video, lmk


def run_video(out: Path, lengths: list, extra: list) -> list:
    from fitting.synthetic import build_standin
    from single_view.groundtruth import make_synthetic_clip

    model = out / "_standin_procedural" / "standin.pkl"
    if not model.is_file():
        build_standin(model)
    gt = make_synthetic_clip(model, out / "video" / "clip", frames=16, size=256)
    rows = []
    for n in lengths:
        video, lmk = _write_played_clip(gt, n, out / "video")
        save = out / "video" / f"out{n}"
        cmd = [sys.executable, str(REPO / "single_view" / "fit.py"), str(video), "--flame_model", str(model),
               "--landmarks", str(lmk), "--savefolder", str(save), "--image_size", "256", "--progress", "false", *extra]
        w0 = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        wall = time.perf_counter() - w0
        rep = json.loads((save / video.stem / "report.json").read_text())
        rows.append({"bench": "single_view", "case": "video", "frames": n, "image_size": 256, "extra": extra,
                     "peak_rss_mb": rep["peak_rss_mb"], "wall_s": round(wall, 2), "s_per_frame": round(wall / n, 4),
                     "report_s_per_frame": rep["timing_s"]["per_frame"], "timing_s": rep["timing_s"],
                     "load_avg_1min": load_average(), "machine": machine(),
                     "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")})
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.single_view", description=__doc__.splitlines()[0])
    p.add_argument("--cases", nargs="+", default=["reference", "dlib"],
                   help="reference | dlib | weak | fovN (e.g. fov6 fov25) | synthetic | video")
    p.add_argument("--seeds", type=int, nargs="+", default=[3, 0, 1, 2, 4, 5],
                   help="synthetic case: seeds of the ground-truth photos (the test uses 3)")
    p.add_argument("--frames", type=int, nargs="+", default=[100, 1000],
                   help="video case: lengths (frames) the synthetic clip is played to")
    p.add_argument("--images", type=int, default=10, help="how many of the FFHQ photos (sorted)")
    p.add_argument("--image_size", type=int, default=256)
    p.add_argument("--out", default="", help="output folder (default: a temporary one, removed)")
    p.add_argument("extra", nargs="*", help="further single_view options after --, e.g. -- --photo_iters 60")
    a = p.parse_args(argv)
    tmp = Path(a.out) if a.out else Path(tempfile.mkdtemp(prefix="bench_single_view_"))
    for case, run in (("synthetic", lambda: [run_synthetic(tmp, a.seeds, a.extra)]),
                      ("video", lambda: run_video(tmp, a.frames, a.extra))):
        if case not in a.cases:
            continue
        try:
            for row in run():
                emit(row)
        finally:
            if not a.out and a.cases == [case]:
                shutil.rmtree(tmp, ignore_errors=True)
        a.cases = [c for c in a.cases if c != case]
        if not a.cases:
            return 0
    if not (DATA / "ffhq").is_dir():
        print(f"{DATA / 'ffhq'} is absent: nothing to benchmark")
        return 0
    photos = tmp / "photos"
    photos.mkdir(parents=True, exist_ok=True)
    for q in sorted((DATA / "ffhq").glob("[0-9]*[0-9].png"))[: a.images]:
        dst = photos / q.name
        if not dst.exists():
            os.symlink(q, dst)
    try:
        for case in a.cases:
            emit(run_case(case, photos, tmp / "out", tmp / "_standin", a.image_size, a.extra))
    finally:
        if not a.out:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
