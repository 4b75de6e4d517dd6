"""Renderer benchmark: python -m bench.render [--device cpu|cuda] [--views 1 8 30] [--res 256 512] [--threads N]

One JSON line per case: forward (MeshRenderer with autograd on: rasterize, interpolate,
texture, SH, silhouette) and forward + backward of ``image.mean() + silhouette.mean()``
w.r.t. verts, texture and SH; medians of >= 10 runs after warm-up; peak memory of one
forward + backward (CPU: peak RSS of the process, ``peak_memory_mb``, and above the
pre-case baseline, ``peak_extra_mb``; CUDA: max_memory_allocated). ``*_cpu_ms`` are the
process CPU times (all threads) and ``load_avg_1min`` the machine's load, because wall
times on a shared machine depend on what else runs.
Mesh: the FLAME template (../shared/data/flame_topology) or a procedural ellipsoid; the
head spans ~60% of the frame; views on a +-60 degree yaw orbit.
"""
from __future__ import annotations

import argparse
import datetime

import torch

from bench._common import PeakMemory, emit, load_average, machine, timings_ms
from fitting.render import MeshRenderer, RasterSettings
from fitting.render.demo import checker_texture, default_sh, load_head_mesh, orbit_cameras


def run_case(mesh, views: int, res: int, device: str, repeats: int) -> dict:
    v, f, vt, ft, name = mesh
    dev = torch.device(device)
    K, R, t = (x.to(dev) for x in orbit_cameras(v, views, res))
    renderer = MeshRenderer(f, vt, ft, RasterSettings((res, res))).to(dev)
    verts = v.to(dev)[None].repeat(views, 1, 1).requires_grad_()
    tex = checker_texture(256).to(dev).requires_grad_()
    sh = default_sh(views).to(dev).requires_grad_()

    def forward():
        return renderer(verts, K, R, t, texture=tex, sh=sh)

    def forward_backward():
        out = forward()
        (out.image.mean() + out.silhouette.mean()).backward()
        verts.grad = tex.grad = sh.grad = None

    fwd, fwd_cpu = timings_ms(forward, dev, repeats)
    fb, fb_cpu = timings_ms(forward_backward, dev, repeats)
    with PeakMemory(dev) as mem:
        forward_backward()
    with torch.no_grad():
        cover = forward().alpha.mean().item()
    return dict(device=dev.type, machine=machine(), mesh=name, faces=int(f.shape[0]), views=views,
                resolution=res, forward_ms=round(fwd, 2), forward_backward_ms=round(fb, 2),
                forward_cpu_ms=round(fwd_cpu, 2), forward_backward_cpu_ms=round(fb_cpu, 2),
                threads=torch.get_num_threads(), load_avg_1min=load_average(),
                peak_memory_mb=round(mem.total, 1), peak_extra_mb=round(mem.extra, 1),
                coverage=round(cover, 3), torch=torch.__version__,
                date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d"))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--views", type=int, nargs="+", default=[1, 8, 30])
    ap.add_argument("--res", type=int, nargs="+", default=[256, 512])
    ap.add_argument("--repeats", type=int, default=10, help="timed runs per measurement (>= 10)")
    ap.add_argument("--mesh", default=None, help="OBJ to use instead of the FLAME template")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    mesh = load_head_mesh(args.mesh)
    for res in args.res:
        for views in args.views:
            emit(run_case(mesh, views, res, args.device, max(args.repeats, 10)))


if __name__ == "__main__":
    main()
