"""Differentiable mesh renderer: PyTorch (CPU and CUDA), with compiled C++ kernels for the
hot loops on the CPU (native/, built on first use; FLAME_FIT_NATIVE=0 keeps PyTorch alone).

Pieces, each a small module: cameras (conventions and conversions), rays (pixel-centre rays,
triangle corners), rasterize (hard visibility + differentiable barycentrics), interpolate,
texture, shading (normals, SH), silhouette (analytic edge antialiasing), renderer
(MeshRenderer), native (compiled kernels), static (fixed shapes for CUDA graphs, opt-in).
See docs/RENDERER.md.
"""
from fitting.render.cameras import (Cameras, camera_centers, check_cameras, from_pytorch3d, intrinsics_from_fov,
                                    look_at, opencv_to_opengl_c2w, opengl_c2w_to_opencv, prepare_cameras,
                                    project_points, scale_intrinsics, to_pytorch3d, world_to_camera)
from fitting.render.interpolate import interpolate, interpolate_packed
from fitting.render.rasterize import (Fragments, PackedFragments, RasterSettings, rasterize,
                                      rasterize_packed)
from fitting.render.renderer import MeshRenderer, RenderOutput, sample_texture_packed
from fitting.render.shading import SH_CONSTANTS, face_normals, sh_basis, sh_shading, vertex_normals
from fitting.render.silhouette import silhouette
from fitting.render.texture import sample_texture

__all__ = [
    "Cameras", "prepare_cameras", "camera_centers", "check_cameras", "from_pytorch3d", "intrinsics_from_fov", "look_at",
    "opencv_to_opengl_c2w", "opengl_c2w_to_opencv", "project_points", "scale_intrinsics",
    "to_pytorch3d", "world_to_camera", "interpolate", "interpolate_packed", "Fragments",
    "PackedFragments", "RasterSettings", "rasterize", "rasterize_packed", "MeshRenderer",
    "RenderOutput", "sample_texture_packed", "SH_CONSTANTS", "face_normals", "sh_basis",
    "sh_shading", "vertex_normals", "silhouette", "sample_texture",
]
