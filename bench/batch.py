"""Speedup of ``python -m fitting.batch`` with 2 workers over 1: ``python -m bench.batch``.

The same ``--scenes`` small synthetic captures (the demo generator, stand-in model) are fitted
by :func:`fitting.batch.run_batch` on a local Ray of 1 CPU, then of 2, each time into a fresh
output folder. Prints one JSON line per worker count (the batch's wall time without Ray's
start, Ray's start, each fit's time, the 1-minute load average before and after) and a last
line with the speedup. Ray's start is timed apart: it is paid once per batch, not per scene.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench._common import emit, load_average, machine  # noqa: E402


def make_captures(root: Path, n: int, views: int, size: int) -> tuple[list[Path], Path]:
    """``n`` captures of ``views`` views at ``size`` px (seeds 1..n) and the stand-in model."""
    from fitting.synthetic import build_standin
    from fitting.synthetic_scene import make_scene
    model = build_standin(root / "standin.pkl")
    scenes = [make_scene(root / f"capture_{k}", model, n_views=views, width=size, height=size, yaw_deg=40,
                         n_shape=50, n_exp=20, seed=k) for k in range(1, n + 1)]
    return scenes, model


def time_batch(scenes: list[Path], model: Path, out: Path, workers: int, fit_args: list[str]) -> dict:
    """One batch on a fresh local Ray of ``workers`` CPUs: its timings."""
    import ray

    from fitting.batch import run_batch, scene_configs
    cfgs = scene_configs(scenes, str(out), ["--flame_model", str(model), *fit_args])
    load_before = load_average()
    t0 = time.perf_counter()
    ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
    ray_start = time.perf_counter() - t0
    try:
        t0 = time.perf_counter()
        rows = run_batch(cfgs, workers=workers, log=lambda line: None)
        wall = time.perf_counter() - t0
    finally:
        ray.shutdown()
    if any(r["status"] != "ok" for r in rows):
        raise RuntimeError(f"a fit failed: {rows}")
    return {"bench": "batch", "workers": workers, "scenes": len(scenes), "wall_s": round(wall, 2),
            "ray_start_s": round(ray_start, 2), "fit_s": [r["time_s"] for r in rows],
            "load_before": load_before, "load_after": load_average()}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scenes", type=int, default=4, help="captures in the batch")
    p.add_argument("--views", type=int, default=8, help="views per capture")
    p.add_argument("--size", type=int, default=384, help="capture image size (px)")
    p.add_argument("--image_size", type=int, default=256, help="fitting size (px)")
    p.add_argument("--photo_iters", type=int, default=60)
    args = p.parse_args(argv)
    fit_args = ["--n_shape", "50", "--n_exp", "20", "--image_size", str(args.image_size),
                "--photo_iters", str(args.photo_iters), "--write_images", "false", "--export", "none"]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        scenes, model = make_captures(root, args.scenes, args.views, args.size)
        runs = {}
        for workers in (1, 2):
            runs[workers] = time_batch(scenes, model, root / f"out_{workers}", workers, fit_args)
            emit({**runs[workers], "views": args.views, "size": args.size, "image_size": args.image_size,
                  "photo_iters": args.photo_iters})
    emit({"bench": "batch_speedup", "speedup_2_over_1": round(runs[1]["wall_s"] / runs[2]["wall_s"], 2),
          "machine": machine(), "cpus": os.cpu_count(), "date": time.strftime("%Y-%m-%d %H:%M")})


if __name__ == "__main__":
    main()
