"""Contact sheet: the benchmark mesh with a checker texture and SH lighting from several yaws.

    python -m fitting.render.preview --out preview.png [--views 8] [--size 256]

Top row: textured and lit; middle: shading only (SH on world normals); bottom:
antialiased silhouette.
"""
from __future__ import annotations

import argparse

import numpy as np
import torch


def contact_sheet(views: int = 8, size: int = 256, mesh: str | None = None) -> np.ndarray:
    """(3*size, views*size, 3) uint8 RGB."""
    from fitting.render import MeshRenderer, RasterSettings
    from fitting.render.demo import checker_texture, default_sh, load_head_mesh, orbit_cameras

    v, f, vt, ft, _ = load_head_mesh(mesh)
    K, R, t = orbit_cameras(v, views, size, fill=0.8, yaw_range=80.0)
    renderer = MeshRenderer(f, vt, ft, RasterSettings((size, size)))
    with torch.no_grad():
        out = renderer(v[None].expand(views, -1, -1), K, R, t, texture=checker_texture(),
                       sh=default_sh(views))
    rows = [out.image, out.shading * 0.5, out.silhouette.expand(-1, 3, -1, -1)]
    sheet = torch.cat([torch.cat(list(r), dim=2) for r in rows], dim=1)   # (3, 3*size, views*size)
    return (sheet.clamp(0, 1).permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="preview.png", help="output PNG path")
    ap.add_argument("--views", type=int, default=8, help="number of yaws (-80..80 degrees)")
    ap.add_argument("--size", type=int, default=256, help="pixels per view")
    ap.add_argument("--mesh", default=None, help="OBJ with UVs (default: the FLAME template)")
    args = ap.parse_args(argv)
    import cv2
    img = contact_sheet(args.views, args.size, args.mesh)
    if not cv2.imwrite(args.out, img[..., ::-1]):
        raise SystemExit(f"could not write {args.out}")
    print(args.out)


if __name__ == "__main__":
    main()
