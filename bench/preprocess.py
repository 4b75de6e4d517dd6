"""Seconds per view for each preprocessing stage on this machine: python -m bench.preprocess

Prints one JSON line per case. Uses ../shared/data (skips a case whose data is absent)."""
from __future__ import annotations

import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path


REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DATA = REPO.parent / "shared" / "data"


def _emit(**kw):
    kw.update(machine=platform.processor() or platform.machine(), cpus=os.cpu_count(),
              date=time.strftime("%Y-%m-%d"))
    print(json.dumps(kw), flush=True)


def _read(p):
    from process_data.files import read_image

    return read_image(p)


def bench_views(name: str, paths: list[Path]) -> None:
    from process_data.landmarks import detect_landmarks
    from process_data.masks import compute_masks
    from process_data.pad import apply_transform, pad_transform

    imgs = [_read(p) for p in paths]
    detect_landmarks(imgs[0], cnn_fallback=False)  # load the models outside the timing
    t = time.perf_counter()
    pts = [detect_landmarks(im, cnn_fallback=False)["points"] for im in imgs]
    _emit(case=f"{name}/landmarks_dlib_hog", views=len(imgs), size=list(imgs[0].shape[1::-1]),
          s_per_view=round((time.perf_counter() - t) / len(imgs), 4))
    t = time.perf_counter()
    for im in imgs:
        apply_transform(im, pad_transform(im.shape[1], im.shape[0], 512))
    _emit(case=f"{name}/pad_512", views=len(imgs), s_per_view=round((time.perf_counter() - t) / len(imgs), 4))
    t = time.perf_counter()
    for im, p in zip(imgs, pts):
        compute_masks(im, p)
    _emit(case=f"{name}/masks_default", views=len(imgs), s_per_view=round((time.perf_counter() - t) / len(imgs), 4))
    from process_data import landmarks as lm

    # the CNN fallback path as detect_landmarks runs it when HOG finds nothing
    dlib, hog, predictor = lm._dlib_models()

    class _NoHog:
        def run(self, *a):
            return [], [], []

    real = lm._dlib_models
    lm._dlib_models = lambda: (dlib, _NoHog(), predictor)
    try:
        if lm._dlib_cnn() is not None:
            t = time.perf_counter()
            for im in imgs[:3]:
                detect_landmarks(im)
            _emit(case=f"{name}/landmarks_cnn_fallback", views=3,
                  s_per_view=round((time.perf_counter() - t) / 3, 4))
    finally:
        lm._dlib_models = real


def bench_sfm() -> None:
    from process_data.intrinsics import estimate_intrinsics

    d = DATA / "multiview_sample" / "images"
    names = sorted(p.name for p in d.glob("*.jpg"))
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        cams, _, warns = estimate_intrinsics(d, names, work_dir=tmp)
        dt = time.perf_counter() - t
    _emit(case="multiview_sample/intrinsics_pycolmap", views=len(names), registered=len(cams["registered"]),
          focal_over_width=round(cams["K"][0][0] / cams["width"], 3), source=cams["source"],
          reproj_px=round(cams.get("mean_reprojection_error", float("nan")), 3),
          s_total=round(dt, 2), s_per_view=round(dt / len(names), 3))


def main() -> None:
    if (DATA / "ffhq").is_dir():
        bench_views("ffhq_256", sorted((DATA / "ffhq").glob("?????.png")))
    mv = DATA / "multiview_sample" / "images"
    if mv.is_dir():
        bench_views("multiview_520x696", sorted(mv.glob("*.jpg")))
        bench_sfm()


if __name__ == "__main__":
    main()
