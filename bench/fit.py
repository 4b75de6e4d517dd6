"""Benchmark of the multi-view fit: ``python -m bench.fit``.

For 8 and 30 synthetic views at 256 px (the demo generator, stand-in model), prints one JSON
line per case with the stage timings of :func:`fitting.pipeline.fit_scene`, the process's
CPU time and peak resident memory (each case in its own process, so peaks do not mix), and
the GPU peak when run on CUDA. ``--device cuda`` adds GPU cases when one is available.
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


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--views", type=int, nargs="*", default=[8, 30])
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--photo_iters", type=int, default=20)
    p.add_argument("--device", default="cpu", help="cpu | cuda | all (cpu, then cuda when available)")
    p.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--root", default="", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.one:
        print(json.dumps(_one(a.views[0], a.size, a.device, a.photo_iters, a.root)), flush=True)
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
