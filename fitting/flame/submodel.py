"""A FLAME restricted to the vertices its 68 landmarks sit on, for the landmark stages.

The geometry stage's Levenberg-Marquardt Jacobian (``torch.func.jacfwd`` with ~160 tangents)
runs the whole model forward for every tangent, although landmarks touch only the few hundred
vertices of the embedding's faces. :func:`landmark_submodel` builds a :class:`FLAME` whose
buffers keep only those vertices, with the faces and embedding re-indexed, so ``forward`` and
``landmarks`` (inherited unchanged) give the same 68 points at a fraction of the cost.

Skinning needs the joints, which FLAME regresses from *all* shaped vertices. Both are linear
in the coefficients, so the joints are appended as J extra "vertices" whose template and
blendshapes are the regressed ones (``J_regressor @ v_template`` and ``J_regressor @
shapedirs``), and the new regressor picks them out exactly. Those extra vertices come last
and no face uses them.
"""
from __future__ import annotations

import torch

from .model import FLAME

__all__ = ["landmark_submodel"]


@torch.no_grad()
def landmark_submodel(flame: FLAME) -> FLAME:
    """A FLAME with the same parameters whose ``forward`` returns (vertices (B, V', 3),
    landmarks (B, 68, 3)) where the landmarks equal ``flame``'s and V' = (landmark vertices +
    joints) << V. Buffers follow ``flame``'s device."""
    used_faces = torch.unique(torch.cat([flame.lmk_static_faces.reshape(-1), flame.lmk_dynamic_faces.reshape(-1),
                                         flame.lmk_full_faces.reshape(-1)]))
    verts = torch.unique(flame.faces[used_faces].reshape(-1))
    V, J = flame.v_template.shape[0], flame.j_regressor.shape[0]
    new_vert = torch.full((V,), -1, dtype=torch.long, device=verts.device)
    new_vert[verts] = torch.arange(len(verts), device=verts.device)
    new_face = torch.full((flame.faces.shape[0],), -1, dtype=torch.long, device=verts.device)
    new_face[used_faces] = torch.arange(len(used_faces), device=verts.device)

    sub = FLAME.__new__(FLAME)
    torch.nn.Module.__init__(sub)
    sub.n_shape, sub.n_exp = flame.n_shape, flame.n_exp
    sub.model_path = flame.model_path
    sub.parents = list(flame.parents)
    sub.embedding_source = flame.embedding_source
    n = len(verts)
    jr = flame.j_regressor
    sub.register_buffer("v_template", torch.cat([flame.v_template[verts], jr @ flame.v_template]))
    sub.register_buffer("shapedirs", torch.cat([flame.shapedirs[verts],
                                                torch.einsum("jv,vck->jck", jr, flame.shapedirs)]))
    pd = flame.posedirs.reshape(flame.posedirs.shape[0], V, 3)
    # the joints are taken before pose correctives, so their posedirs rows are never used
    sub.register_buffer("posedirs", torch.cat([pd[:, verts], pd.new_zeros(pd.shape[0], J, 3)], 1).reshape(
        pd.shape[0], -1))
    sub.register_buffer("j_regressor", torch.cat([jr.new_zeros(J, n), torch.eye(J, dtype=jr.dtype,
                                                                                device=jr.device)], 1))
    sub.register_buffer("lbs_weights", torch.cat([flame.lbs_weights[verts], torch.eye(J, dtype=jr.dtype,
                                                                                     device=jr.device)]))
    sub.register_buffer("faces", new_vert[flame.faces[used_faces]])
    sub.register_buffer("verts_uvs", None)
    sub.register_buffer("faces_uvs", None)
    for name in ("static", "dynamic", "full"):
        sub.register_buffer(f"lmk_{name}_faces", new_face[getattr(flame, f"lmk_{name}_faces")])
        sub.register_buffer(f"lmk_{name}_bary", getattr(flame, f"lmk_{name}_bary").clone())
    return sub
