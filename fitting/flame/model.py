"""The FLAME head model as a ``torch.nn.Module``."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from fitting.rotations import axis_angle_to_matrix

from .io import N_SHAPE_MAX, FlameFileError, load_flame_arrays
from .landmarks import (LandmarkEmbedding, barycentric_points, contour_row, find_embedding, load_embedding,
                        yaw_degrees, N_CONTOUR)
from .lbs import lbs, lbs_jacobian

POSE_DIM = 15  # global, neck, jaw, left eye, right eye; axis-angle each
POSE_SLICES = {"global": slice(0, 3), "neck": slice(3, 6), "jaw": slice(6, 9),
               "left_eye": slice(9, 12), "right_eye": slice(12, 15)}


class FLAME(torch.nn.Module):
    """FLAME: vertices and 68 landmarks from shape, expression and pose.

    Args:
        model_path: ``generic_model.pkl`` (FLAME 2020/2023, read without chumpy), the same
            arrays as ``.npz``, or the synthetic stand-in.
        landmark_embedding_path: DECA ``landmark_embedding.npy`` or RingNet
            ``flame_static_embedding.pkl``; ``None`` looks beside the model file.
        n_shape: identity components used (<= 300). n_exp: expression components (<= 100).

    Buffers: ``faces (F, 3) int64``, ``v_template (V, 3)``, and ``verts_uvs (T, 2)`` /
    ``faces_uvs (F, 3)`` when UVs are found (in the model file, or in a
    ``head_template*.obj`` beside it); otherwise those two are ``None``.
    """

    def __init__(self, model_path, landmark_embedding_path=None, n_shape: int = 100, n_exp: int = 50):
        super().__init__()
        model_path = Path(model_path)
        a = load_flame_arrays(model_path)
        total = a["shapedirs"].shape[2]
        n_shape_avail = min(N_SHAPE_MAX, total)
        n_exp_avail = total - N_SHAPE_MAX if total > N_SHAPE_MAX else 0
        if not 0 <= n_shape <= n_shape_avail:
            raise ValueError(f"n_shape={n_shape}, but {model_path} has {n_shape_avail} shape components")
        if not 0 <= n_exp <= n_exp_avail:
            raise ValueError(f"n_exp={n_exp}, but {model_path} has {n_exp_avail} expression components")
        self.n_shape, self.n_exp = n_shape, n_exp
        self.model_path = model_path
        f32 = dict(dtype=torch.float32)
        sd = a["shapedirs"]
        dirs = np.concatenate([sd[..., :n_shape], sd[..., N_SHAPE_MAX:N_SHAPE_MAX + n_exp]], axis=-1)
        V = a["v_template"].shape[0]
        self.register_buffer("v_template", torch.as_tensor(a["v_template"], **f32))
        self.register_buffer("shapedirs", torch.as_tensor(dirs, **f32))
        # (V, 3, 36) -> (36, V*3) so pose offsets are one matmul
        self.register_buffer("posedirs", torch.as_tensor(a["posedirs"].reshape(V * 3, -1).T.copy(), **f32))
        self.register_buffer("j_regressor", torch.as_tensor(a["J_regressor"], **f32))
        self.register_buffer("lbs_weights", torch.as_tensor(a["weights"], **f32))
        self.register_buffer("faces", torch.as_tensor(a["f"].astype(np.int64)))
        parents = a["kintree_table"][0].astype(np.int64)
        parents[0] = -1  # stored as uint32 max
        self.parents = [int(p) for p in parents]
        self._register_uvs(a, model_path)

        emb = (load_embedding(landmark_embedding_path) if landmark_embedding_path is not None
               else find_embedding(model_path))
        self._register_embedding(emb, a["f"].shape[0])

    # -- setup ----------------------------------------------------------------------------
    def _register_uvs(self, a: dict, model_path: Path):
        vt, ft = a.get("vt"), a.get("ft")
        if vt is None:
            from fitting.meshio import load_obj
            for name in ("head_template_mesh.obj", "head_template.obj"):
                obj = model_path.parent / name
                if obj.is_file():
                    _, faces, vt, ft = load_obj(obj)
                    if vt is not None and len(faces) != len(a["f"]):
                        vt = ft = None
                    break
        self.register_buffer("verts_uvs", None if vt is None else torch.as_tensor(vt, dtype=torch.float32))
        self.register_buffer("faces_uvs", None if ft is None else torch.as_tensor(np.asarray(ft), dtype=torch.int64))

    def _register_embedding(self, emb: LandmarkEmbedding, n_faces: int):
        for name in ("static_faces", "dynamic_faces", "full_faces"):
            idx = getattr(emb, name)
            if idx.min() < 0 or idx.max() >= n_faces:
                raise FlameFileError(f"{emb.source}: {name} indexes faces beyond this model's {n_faces} faces; "
                                     "is the embedding for another mesh topology?")
        t = torch.as_tensor
        self.register_buffer("lmk_static_faces", t(emb.static_faces))
        self.register_buffer("lmk_static_bary", t(emb.static_bary, dtype=torch.float32))
        self.register_buffer("lmk_dynamic_faces", t(emb.dynamic_faces))
        self.register_buffer("lmk_dynamic_bary", t(emb.dynamic_bary, dtype=torch.float32))
        self.register_buffer("lmk_full_faces", t(emb.full_faces))
        self.register_buffer("lmk_full_bary", t(emb.full_bary, dtype=torch.float32))
        self.embedding_source = emb.source

    # -- forward --------------------------------------------------------------------------
    def _batch(self, x, width: int, B: int, name: str) -> torch.Tensor:
        if x is None:
            return self.v_template.new_zeros(B, width)
        if x.ndim != 2 or x.shape[1] != width:
            raise ValueError(f"{name} must be (B, {width}), got {tuple(x.shape)}")
        return x.expand(B, -1) if x.shape[0] == 1 else x

    def forward(self, shape=None, expression=None, pose=None):
        """shape: (B, n_shape); expression: (B, n_exp); pose: (B, 15) axis-angle
        [global, neck, jaw, left eye, right eye]. Omitted ones are zeros (B = 1 if all omitted).

        Returns ``(vertices (B, V, 3), landmarks (B, 68, 3))`` in metres, FLAME frame. The
        contour landmarks follow the yaw of the global and neck rotations.
        """
        sizes = [x.shape[0] for x in (shape, expression, pose) if x is not None]
        B = max(sizes) if sizes else 1
        shape = self._batch(shape, self.n_shape, B, "shape")
        expression = self._batch(expression, self.n_exp, B, "expression")
        pose = self._batch(pose, POSE_DIM, B, "pose")
        verts, _ = lbs(torch.cat([shape, expression], 1), pose, self.v_template, self.shapedirs,
                       self.posedirs, self.j_regressor, self.parents, self.lbs_weights)
        head_rot = axis_angle_to_matrix(pose[:, POSE_SLICES["global"]]) @ axis_angle_to_matrix(pose[:, POSE_SLICES["neck"]])
        return verts, self.landmarks(verts, head_rot)

    def jacobian(self, shape: torch.Tensor, expression: torch.Tensor, pose: torch.Tensor,
                 joint: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Vertices and their derivative w.r.t. [shape, expression] and, with ``joint`` (a key of
        POSE_SLICES, e.g. "jaw"), that joint's axis-angle, in closed form (see
        lbs.lbs_jacobian). shape: (B, n_shape); expression: (B, n_exp); pose: (B, 15).
        Returns (vertices (B, V, 3), J (B, V, 3, n_shape + n_exp [+ 3]))."""
        B = max(shape.shape[0], expression.shape[0], pose.shape[0])
        shape = self._batch(shape, self.n_shape, B, "shape")
        expression = self._batch(expression, self.n_exp, B, "expression")
        pose = self._batch(pose, POSE_DIM, B, "pose")
        index = None if joint is None else POSE_SLICES[joint].start // 3
        return lbs_jacobian(torch.cat([shape, expression], 1), pose, self.v_template, self.shapedirs,
                            self.posedirs, self.j_regressor, self.parents, self.lbs_weights, index)

    def landmarks(self, vertices: torch.Tensor, view_rotation: torch.Tensor | None = None,
                  contour: str = "dynamic") -> torch.Tensor:
        """68 landmarks on ``vertices (B, V, 3)`` -> ``(B, 68, 3)``.

        view_rotation: (B, 3, 3) the head's rotation as seen by a frontal viewer (identity: a
        viewer on +z looking at the face). It picks the jaw-contour row by yaw. For an OpenCV
        world-to-camera ``R`` and the head's own rotation ``R_head``:
        ``diag(1, -1, -1) @ R @ R_head``. contour: "dynamic" or "static" (the full 68 embedding).
        """
        if view_rotation is not None:
            view_rotation = view_rotation.to(vertices.dtype)
        faces, bary = self.landmark_faces(vertices.shape[0], view_rotation, contour)
        return barycentric_points(vertices, self.faces, faces, bary)

    def landmark_faces(self, B: int, view_rotation: torch.Tensor | None = None,
                       contour: str = "dynamic") -> tuple[torch.Tensor, torch.Tensor]:
        """Where :meth:`landmarks` puts the 68 points: face ids (B, 68) and barycentric weights
        (B, 68, 3) (arguments as there). The points are linear in the vertices with these
        weights, which is what an analytic Jacobian of landmark residuals needs."""
        device = self.lmk_static_faces.device
        if contour == "static":
            return self.lmk_full_faces.expand(B, -1), self.lmk_full_bary.expand(B, -1, -1)
        if contour != "dynamic":
            raise ValueError(f"contour must be 'dynamic' or 'static', got {contour!r}")
        if view_rotation is None:
            row = torch.zeros(B, dtype=torch.long, device=device)
        else:
            row = contour_row(yaw_degrees(view_rotation)).expand(B)
        faces = torch.cat([self.lmk_dynamic_faces[row], self.lmk_static_faces.expand(B, -1)], 1)
        bary = torch.cat([self.lmk_dynamic_bary[row], self.lmk_static_bary.expand(B, -1, -1)], 1)
        return faces, bary

    def extra_repr(self) -> str:
        return (f"model={self.model_path}, V={self.v_template.shape[0]}, F={self.faces.shape[0]}, "
                f"n_shape={self.n_shape}, n_exp={self.n_exp}, contour points={N_CONTOUR}")
