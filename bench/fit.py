"""Benchmark of the multi-view fit: ``python -m bench.fit``.

For 8 and 30 synthetic views at 256 px (the demo generator, stand-in model), prints one JSON
line per case with the stage timings of :func:`fitting.pipeline.fit_scene`, the process's
CPU time and peak resident memory (each case in its own process, so peaks do not mix), and
the GPU peak when run on CUDA. ``--device cuda`` adds GPU cases when one is available.

``--ba`` (also part of the default run) adds the joint geometry solve with SfM tracks (bundle
adjustment, issue 14): a 30-view demo scene at ``--ba_size`` px (skin-detailed albedo, SfM with
SIFT at that size, ~6k track points), fitted at 256 px without the photometric stage, timed
``--ba_repeat`` times in fresh processes on the same scene (built once, in ``--cache`` when
given, so a second invocation skips the scene and SfM). Its row gives the geometry stage's
min / median / max and the tracks' size.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time


def _one(n_views: int, size: int, device: str, photo_iters: int, root: str) -> dict:
    import torch

    from fitting.config import parse_config
    from fitting.pipeline import fit_scene

    cfg = parse_config([
        "--demo", "true", "--scene_dir", f"{root}/scene{n_views}", "--savefolder", f"{root}/out",
        "--scene_name", f"bench{n_views}", "--standin_dir", f"{root}/standin", "--demo_views", str(n_views),
        "--demo_width", str(size), "--demo_height", str(size), "--image_size", str(size),
        "--photo_iters", str(photo_iters), "--progress", "false", "--device", device, "--write_images", "false"])
    c0 = time.process_time()
    w0 = time.perf_counter()
    rep = fit_scene(cfg)
    out = {"bench": "fit", "views": n_views, "size": size, "device": rep["device"], "photo_iters": photo_iters,
           "timing_s": rep["timing_s"], "wall_s": round(time.perf_counter() - w0, 2),
           "cpu_s": round(time.process_time() - c0, 2),
           "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
           "threads": torch.get_num_threads(), "machine": platform.processor() or platform.machine(),
           "ground_truth": rep.get("ground_truth")}
    if rep["device"].startswith("cuda"):
        out["gpu_peak_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        out["gpu"] = torch.cuda.get_device_name()
    return out


def _ba_one(n_views: int, size: int, sfm_size: int, root: str) -> dict:
    """One fit of the bundle-adjustment case (the scene and its SfM are built on first use)."""
    import torch

    from fitting.config import parse_config
    from fitting.pipeline import fit_scene

    cfg = parse_config([
        "--demo", "true", "--scene_dir", f"{root}/ba_scene{n_views}_{size}", "--savefolder", f"{root}/out",
        "--scene_name", f"ba{n_views}_{size}", "--standin_dir", f"{root}/standin", "--demo_views", str(n_views),
        "--demo_width", str(size), "--demo_height", str(size), "--demo_sfm_max_size", str(sfm_size),
        "--image_size", "256", "--photo_iters", "0", "--progress", "false", "--device", "cpu",
        "--write_images", "false"])
    c0, w0 = time.process_time(), time.perf_counter()
    rep = fit_scene(cfg)
    return {"bench": "fit_ba", "views": n_views, "size": size, "sfm_size": sfm_size, "fit_size": 256,
            "tracks": rep["tracks"], "timing_s": rep["timing_s"], "wall_s": round(time.perf_counter() - w0, 2),
            "cpu_s": round(time.process_time() - c0, 2),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "threads": torch.get_num_threads(), "load_1min": round(os.getloadavg()[0], 2),
            "epipolar": rep["epipolar"]["fit"], "epipolar_sfm": rep["epipolar"]["sfm"],
            "ground_truth": rep.get("ground_truth")}


def _ba_rows(a, root: str) -> None:
    """The bundle-adjustment case: ``--ba_repeat`` fits in fresh processes, then a summary row."""
    import statistics
    runs = []
    for _ in range(a.ba_repeat):
        r = subprocess.run([sys.executable, "-m", "bench.fit", "--one_ba", "--views", str(a.ba_views), "--ba_size",
                            str(a.ba_size), "--ba_sfm_size", str(a.ba_sfm_size), "--root", root],
                           capture_output=True, text=True, env={**os.environ})
        line = [ln for ln in r.stdout.splitlines() if ln.startswith("{")]
        if r.returncode or not line:
            print(json.dumps({"bench": "fit_ba", "views": a.ba_views, "error": r.stderr[-800:]}), flush=True)
            return
        print(line[-1], flush=True)
        runs.append(json.loads(line[-1]))
    geo = [r["timing_s"]["geometry"] for r in runs]
    print(json.dumps({"bench": "fit_ba_summary", "views": a.ba_views, "size": a.ba_size, "runs": len(runs),
                      "tracks": runs[-1]["tracks"], "geometry_s": {"min": min(geo), "median": statistics.median(geo),
                                                                   "max": max(geo)},
                      "load_1min": [r["load_1min"] for r in runs], "target_geometry_s": 10.0}), flush=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--views", type=int, nargs="*", default=[8, 30])
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--photo_iters", type=int, default=20)
    p.add_argument("--device", default="cpu", help="cpu | cuda | all (cpu, then cuda when available)")
    p.add_argument("--ba", action=argparse.BooleanOptionalAction, default=True,
                   help="also time the joint geometry solve with SfM tracks (bundle adjustment)")
    p.add_argument("--ba_views", type=int, default=30)
    p.add_argument("--ba_size", type=int, default=768, help="photo size of the bundle-adjustment scene")
    p.add_argument("--ba_sfm_size", type=int, default=768, help="SIFT's image size for its SfM")
    p.add_argument("--ba_repeat", type=int, default=3, help="fits of the bundle-adjustment case")
    p.add_argument("--ba_only", action="store_true", help="only the bundle-adjustment case")
    p.add_argument("--cache", default="", help="keep the bundle-adjustment scene here (built once)")
    p.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--one_ba", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--root", default="", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.one:
        print(json.dumps(_one(a.views[0], a.size, a.device, a.photo_iters, a.root)), flush=True)
        return 0
    if a.one_ba:
        print(json.dumps(_ba_one(a.views[0], a.ba_size, a.ba_sfm_size, a.root)), flush=True)
        return 0
    if a.ba_only:
        if a.cache:
            os.makedirs(a.cache, exist_ok=True)
            _ba_rows(a, a.cache)
        else:
            with tempfile.TemporaryDirectory() as root:
                _ba_rows(a, root)
        return 0
    devices = ["cpu"]
    if a.device in ("cuda", "all"):
        import torch
        if torch.cuda.is_available():
            devices = ["cuda"] if a.device == "cuda" else ["cpu", "cuda"]
    with tempfile.TemporaryDirectory() as root:
        for dev in devices:
            for n in a.views:
                r = subprocess.run([sys.executable, "-m", "bench.fit", "--one", "--views", str(n), "--size",
                                    str(a.size), "--device", dev, "--photo_iters", str(a.photo_iters), "--root", root],
                                   capture_output=True, text=True, env={**os.environ})
                line = [ln for ln in r.stdout.splitlines() if ln.startswith("{")]
                if r.returncode or not line:
                    print(json.dumps({"bench": "fit", "views": n, "device": dev, "error": r.stderr[-800:]}))
                else:
                    print(line[-1], flush=True)
        if a.ba:
            if a.cache:
                os.makedirs(a.cache, exist_ok=True)
            _ba_rows(a, a.cache or root)
    return 0


if __name__ == "__main__":
    sys.exit(main())
