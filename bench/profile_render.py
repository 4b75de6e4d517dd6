"""Where the renderer's time goes: python -m bench.profile_render [--device cuda] [--views 30] [--res 256]

Runs forward + backward of the benchmark case (bench.render) under torch.profiler and
prints the operators with the most self time on the device (CUDA) or CPU, plus the number
of kernel launches per iteration, which bounds GPU speed for a pure-PyTorch renderer.
"""
from __future__ import annotations

import argparse

import torch
from torch.profiler import ProfilerActivity, profile

from fitting.render import MeshRenderer, RasterSettings
from fitting.render.demo import checker_texture, default_sh, load_head_mesh, orbit_cameras


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--views", type=int, default=30)
    ap.add_argument("--res", type=int, default=256)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--rows", type=int, default=30)
    args = ap.parse_args(argv)
    dev = torch.device(args.device)
    v, f, vt, ft, _ = load_head_mesh(None)
    K, R, t = (x.to(dev) for x in orbit_cameras(v, args.views, args.res))
    renderer = MeshRenderer(f, vt, ft, RasterSettings((args.res, args.res))).to(dev)
    verts = v.to(dev)[None].repeat(args.views, 1, 1).requires_grad_()
    tex = checker_texture(256).to(dev).requires_grad_()
    sh = default_sh(args.views).to(dev).requires_grad_()

    def step():
        out = renderer(verts, K, R, t, texture=tex, sh=sh)
        (out.image.mean() + out.silhouette.mean()).backward()
        verts.grad = tex.grad = sh.grad = None

    for _ in range(3):
        step()
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    with profile(activities=acts) as prof:
        for _ in range(args.iters):
            step()
        if dev.type == "cuda":
            torch.cuda.synchronize()
    key = "self_cuda_time_total" if dev.type == "cuda" else "self_cpu_time_total"
    print(prof.key_averages().table(sort_by=key, row_limit=args.rows))
    if dev.type == "cuda":
        kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
        busy = sum(e.device_time for e in kernels) / 1e3 / args.iters
        print(f"kernels per iteration: {len(kernels) / args.iters:.0f}; GPU busy {busy:.2f} ms per iteration")


if __name__ == "__main__":
    main()
