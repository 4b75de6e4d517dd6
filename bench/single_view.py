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

Fields: nme_ref_mean / nme_ref_max (fitted vs reference landmarks), nme_used_mean (report.json's
landmark_nme: fitted vs the landmarks used), photometric L1 first / last and drop (mean, min),
s_per_image (wall), cpu_s_per_image (process CPU time, all threads), stage timings,
load_avg_1min (other work on the machine inflates wall times), machine, date.
"""
from __future__ import annotations

import argparse
import datetime
import os
import shutil
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


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.single_view", description=__doc__.splitlines()[0])
    p.add_argument("--cases", nargs="+", default=["reference", "dlib"],
                   help="reference | dlib | weak | fovN (e.g. fov6 fov25) | synthetic")
    p.add_argument("--seeds", type=int, nargs="+", default=[3, 0, 1, 2, 4, 5],
                   help="synthetic case: seeds of the ground-truth photos (the test uses 3)")
    p.add_argument("--images", type=int, default=10, help="how many of the FFHQ photos (sorted)")
    p.add_argument("--image_size", type=int, default=256)
    p.add_argument("--out", default="", help="output folder (default: a temporary one, removed)")
    p.add_argument("extra", nargs="*", help="further single_view options after --, e.g. -- --photo_iters 60")
    a = p.parse_args(argv)
    tmp = Path(a.out) if a.out else Path(tempfile.mkdtemp(prefix="bench_single_view_"))
    if "synthetic" in a.cases:
        try:
            emit(run_synthetic(tmp, a.seeds, a.extra))
        finally:
            if not a.out and a.cases == ["synthetic"]:
                shutil.rmtree(tmp, ignore_errors=True)
        a.cases = [c for c in a.cases if c != "synthetic"]
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
