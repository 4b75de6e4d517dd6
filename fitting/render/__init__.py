"""Differentiable mesh renderer in pure PyTorch (CPU and CUDA, one code path).

Pieces, each a small module: cameras (conventions and conversions), rasterize (hard
visibility + differentiable barycentrics), interpolate, texture, shading (normals, SH),
silhouette (analytic edge antialiasing), renderer (MeshRenderer). See docs/RENDERER.md.
"""
from fitting.render.cameras import (camera_centers, check_cameras, from_pytorch3d, intrinsics_from_fov,
                                    look_at, opencv_to_opengl_c2w, opengl_c2w_to_opencv, project_points,
                                    scale_intrinsics, to_pytorch3d, world_to_camera)
from fitting.render.interpolate import interpolate, interpolate_packed
from fitting.render.rasterize import (Fragments, PackedFragments, RasterSettings, rasterize,
                                      rasterize_packed)
from fitting.render.renderer import MeshRenderer, RenderOutput, sample_texture_packed
from fitting.render.shading import SH_CONSTANTS, face_normals, sh_basis, sh_shading, vertex_normals
from fitting.render.silhouette import silhouette
from fitting.render.texture import sample_texture

__all__ = [
    "camera_centers", "check_cameras", "from_pytorch3d", "intrinsics_from_fov", "look_at",
    "opencv_to_opengl_c2w", "opengl_c2w_to_opencv", "project_points", "scale_intrinsics",
    "to_pytorch3d", "world_to_camera", "interpolate", "interpolate_packed", "Fragments",
    "PackedFragments", "RasterSettings", "rasterize", "rasterize_packed", "MeshRenderer",
    "RenderOutput", "sample_texture_packed", "SH_CONSTANTS", "face_normals", "sh_basis",
    "sh_shading", "vertex_normals", "silhouette", "sample_texture",
]
