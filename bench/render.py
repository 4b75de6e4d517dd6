"""Renderer benchmark: python -m bench.render [--device cpu|cuda] [--views 1 8 30] [--res 256 512] [--threads N]
[--mode packed static graph]
(FLAME_FIT_NATIVE_CUDA=1 measures the experimental CUDA kernels in the packed mode)

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
from fitting.render.static import StaticMeshRenderer, static_sizes


def _graphed(fn, dev):
    """Capture fn() in a CUDA graph (after warm-up on a side stream); returns its replay."""
    side = torch.cuda.Stream(dev)
    side.wait_stream(torch.cuda.current_stream(dev))
    with torch.cuda.stream(side):
        for _ in range(2):
            fn()
    torch.cuda.current_stream(dev).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph.replay


def _native_kernels(dev: torch.device) -> bool:
    """Whether the packed mode renders with the compiled kernels on this device (CPU: unless
    FLAME_FIT_NATIVE=0; CUDA: with FLAME_FIT_NATIVE_CUDA=1, experimental)."""
    from fitting.render.native import shade
    return shade.available_on(dev)


def run_case(mesh, views: int, res: int, device: str, repeats: int, mode: str = "packed") -> dict:
    """mode: 'packed' (default pipeline), 'static' (StaticMeshRenderer, sized 20 % above
    what the views need) or 'graph' (static,
    forward and forward+backward each captured in a CUDA graph and replayed)."""
    v, f, vt, ft, name = mesh
    dev = torch.device(device)
    K, R, t = (x.to(dev) for x in orbit_cameras(v, views, res))
    settings = RasterSettings((res, res))
    verts = v.to(dev)[None].repeat(views, 1, 1).requires_grad_()
    if mode == "packed":
        renderer = MeshRenderer(f, vt, ft, settings).to(dev)
    else:
        sizes = static_sizes(verts.detach(), f.to(dev), K, R, t, settings).with_room(margin=0.2)
        renderer = StaticMeshRenderer(f, vt, ft, settings, sizes).to(dev)
    tex = checker_texture(256).to(dev).requires_grad_()
    sh = default_sh(views).to(dev).requires_grad_()

    def forward():
        return renderer(verts, K, R, t, texture=tex, sh=sh)

    def forward_backward():
        out = forward()
        (out.image.mean() + out.silhouette.mean()).backward()
        verts.grad = tex.grad = sh.grad = None

    if mode == "graph":
        if dev.type != "cuda":
            raise SystemExit("--mode graph needs --device cuda")
        fwd, fwd_cpu = timings_ms(_graphed(lambda: forward(), dev), dev, repeats)
        fb, fb_cpu = timings_ms(_graphed(forward_backward, dev), dev, repeats)
    else:
        fwd, fwd_cpu = timings_ms(forward, dev, repeats)
        fb, fb_cpu = timings_ms(forward_backward, dev, repeats)
    with PeakMemory(dev) as mem:
        forward_backward()
    with torch.no_grad():
        cover = forward().alpha.mean().item()
    return dict(device=dev.type, mode=mode, machine=machine(), mesh=name, faces=int(f.shape[0]), views=views,
                resolution=res, forward_ms=round(fwd, 2), forward_backward_ms=round(fb, 2),
                forward_cpu_ms=round(fwd_cpu, 2), forward_backward_cpu_ms=round(fb_cpu, 2),
                threads=torch.get_num_threads(), load_avg_1min=load_average(),
                peak_memory_mb=round(mem.total, 1), peak_extra_mb=round(mem.extra, 1),
                coverage=round(cover, 3), native_kernels=_native_kernels(dev), torch=torch.__version__,
                date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d"))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--views", type=int, nargs="+", default=[1, 8, 30])
    ap.add_argument("--res", type=int, nargs="+", default=[256, 512])
    ap.add_argument("--repeats", type=int, default=10, help="timed runs per measurement (>= 10)")
    ap.add_argument("--mesh", default=None, help="OBJ to use instead of the FLAME template")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--mode", choices=["packed", "static", "graph"], nargs="+", default=["packed"],
                    help="packed pipeline, static shapes, or static shapes replayed from a CUDA graph")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    mesh = load_head_mesh(args.mesh)
    for res in args.res:
        for views in args.views:
            for mode in args.mode:
                emit(run_case(mesh, views, res, args.device, max(args.repeats, 10), mode))


if __name__ == "__main__":
    main()
