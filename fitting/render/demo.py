"""Demo / benchmark scene: the FLAME template head (or a procedural stand-in), an orbit of
cameras framing it, a checker texture and a plausible SH light. Used by bench.render,
the preview contact sheet and tests."""
from __future__ import annotations

import math
from pathlib import Path

import torch

from fitting.render.cameras import intrinsics_from_fov, look_at

__all__ = ["FLAME_TEMPLATE", "load_head_mesh", "ellipsoid_mesh", "orbit_cameras", "checker_texture",
           "default_sh"]

FLAME_TEMPLATE = Path(__file__).resolve().parents[3] / "shared" / "data" / "flame_topology" / "head_template_mesh.obj"


def ellipsoid_mesh(n_lat: int = 71, n_lon: int = 72, radii=(0.08, 0.11, 0.095)):
    """UV ellipsoid (~10k faces for the defaults) centred at the origin, metres, CCW outward.
    Returns verts (V,3), faces (F,3), verts_uvs (T,2), faces_uvs (F,3)."""
    lat = torch.linspace(0, math.pi, n_lat + 1)
    lon = torch.linspace(0, 2 * math.pi, n_lon + 1)
    th, ph = torch.meshgrid(lat, lon, indexing="ij")          # (n_lat+1, n_lon+1) incl. seam copy
    r = torch.tensor(radii)
    sin_th = torch.sin(th)
    sin_th[[0, -1]] = 0                                         # exact poles: their slivers vanish
    verts = torch.stack([sin_th * torch.sin(ph) * r[0], torch.cos(th) * r[1],
                         sin_th * torch.cos(ph) * r[2]], -1).reshape(-1, 3)
    uvs = torch.stack([ph / (2 * math.pi), 1 - th / math.pi], -1).reshape(-1, 2)
    i, j = torch.meshgrid(torch.arange(n_lat), torch.arange(n_lon), indexing="ij")
    a = i * (n_lon + 1) + j
    b, c, d = a + n_lon + 1, a + 1, a + n_lon + 2
    faces = torch.cat([torch.stack([a, b, c], -1).reshape(-1, 3), torch.stack([c, b, d], -1).reshape(-1, 3)])
    # drop the degenerate triangles at the poles
    area = torch.cross(verts[faces[:, 1]] - verts[faces[:, 0]], verts[faces[:, 2]] - verts[faces[:, 0]], dim=-1)
    faces = faces[area.norm(dim=-1) > 1e-9 * area.norm(dim=-1).max()]
    return verts, faces, uvs, faces.clone()


def load_head_mesh(path: str | Path | None = None):
    """FLAME template (verts, faces, verts_uvs, faces_uvs) as tensors, or the procedural
    ellipsoid when the shared file is absent. Also returns a name for the source."""
    path = Path(path) if path is not None else FLAME_TEMPLATE
    if path.is_file():
        from fitting.meshio import load_obj
        v, f, vt, ft = load_obj(path)
        return (torch.as_tensor(v).float(), torch.as_tensor(f).long(), torch.as_tensor(vt).float(),
                torch.as_tensor(ft).long(), "flame_template")
    return (*ellipsoid_mesh(), "procedural_ellipsoid")


def orbit_cameras(verts: torch.Tensor, views: int, resolution: int, fill: float = 0.6,
                  yaw_range: float = 60.0, fov_deg: float = 20.0):
    """Cameras on a yaw orbit (-yaw_range..+yaw_range degrees, small pitch wobble) looking at
    the mesh centre, distance chosen so the head spans about ``fill`` of the frame.
    Returns K (views,3,3), R (views,3,3), t (views,3)."""
    centre = (verts.amin(0) + verts.amax(0)) / 2
    size = (verts.amax(0) - verts.amin(0)).max().item()
    dist = size / fill / (2 * math.tan(math.radians(fov_deg) / 2))
    yaw = torch.linspace(-yaw_range, yaw_range, views) if views > 1 else torch.zeros(1)
    pitch = 10.0 * torch.sin(torch.arange(views) * 1.3)
    yaw, pitch = torch.deg2rad(yaw), torch.deg2rad(pitch)
    eye = centre + dist * torch.stack([torch.sin(yaw) * torch.cos(pitch), torch.sin(pitch),
                                       torch.cos(yaw) * torch.cos(pitch)], -1)
    R, t = look_at(eye, centre.expand(views, 3))
    K = intrinsics_from_fov(fov_deg, resolution, resolution, batch=views)
    return K, R, t


def checker_texture(size: int = 256, squares: int = 16) -> torch.Tensor:
    """(1, 3, size, size) two-tone checker with a colour ramp, so orientation is visible."""
    y, x = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    check = ((x * squares // size + y * squares // size) % 2).float()
    r = 0.35 + 0.55 * check
    g = 0.35 + 0.45 * check * (1 - y.float() / size) + 0.1
    b = 0.35 + 0.45 * check * (x.float() / size)
    return torch.stack([r, g, b])[None]


def default_sh(views: int) -> torch.Tensor:
    """A soft key light from the upper front-left plus ambient: sh (views, 9, 3)."""
    sh = torch.zeros(views, 9, 3)
    sh[:, 0] = 2.6
    sh[:, 1] = 0.25     # +x (subject's left)
    sh[:, 2] = 0.35     # +y (up)
    sh[:, 3] = 0.45     # +z (front)
    sh[:, 8] = -0.1
    return sh
