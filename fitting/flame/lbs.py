"""Linear blend skinning with pose-corrective blendshapes (FLAME / SMPL family).

Pure functions, batched over B. Shapes follow smplx's ``lbs.py`` notation:
V vertices, J joints (5 for FLAME: global, neck, jaw, left eye, right eye).
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from fitting.rotations import axis_angle_to_matrix, left_jacobian, skew


def blend_shapes(coeffs: torch.Tensor, dirs: torch.Tensor) -> torch.Tensor:
    """Linear blendshapes. coeffs: (B, K); dirs: (V, 3, K) -> offsets (B, V, 3)."""
    return torch.einsum("bk,vck->bvc", coeffs, dirs)


def rigid_transform_chain(rot: torch.Tensor, joints: torch.Tensor, parents: list[int]):
    """Forward kinematics.

    rot: (B, J, 3, 3) local joint rotations; joints: (B, J, 3) rest joint positions;
    parents: parent index per joint (-1 for the root, parents before children).
    Returns (posed_joints (B, J, 3), rel_transforms (B, J, 4, 4)) where each relative
    transform maps a rest-pose point to its posed position for that joint alone.
    """
    B, J = rot.shape[:2]
    rel = joints.clone()
    rel[:, 1:] = joints[:, 1:] - joints[:, parents[1:]]
    local = torch.zeros(B, J, 4, 4, dtype=rot.dtype, device=rot.device)
    local[..., :3, :3] = rot
    local[..., :3, 3] = rel
    local[..., 3, 3] = 1
    chain = [local[:, 0]]
    for j in range(1, J):  # J = 5: a loop over joints, not over data
        chain.append(chain[parents[j]] @ local[:, j])
    world = torch.stack(chain, dim=1)
    posed_joints = world[..., :3, 3]
    # Remove the rest joint position so the transform applies to rest-pose vertices.
    offset = world[..., :3, :3] @ joints.unsqueeze(-1)
    rel_tf = world.clone()
    rel_tf[..., :3, 3] = world[..., :3, 3] - offset.squeeze(-1)
    return posed_joints, rel_tf


class Skinned(NamedTuple):
    """The steps of :func:`lbs` that the closed-form Jacobians reuse."""
    verts: torch.Tensor         # (B, V, 3)
    posed_joints: torch.Tensor  # (B, J, 3)
    rot: torch.Tensor           # (B, J, 3, 3) local joint rotations
    T: torch.Tensor             # (B, V, 4, 4) per-vertex blended transforms
    v_posed: torch.Tensor       # (B, V, 3) shaped and pose-corrected template
    rel_tf: torch.Tensor        # (B, J, 4, 4) per-joint transforms of rest-pose points


def _skin(shape_coeffs: torch.Tensor, pose: torch.Tensor, v_template: torch.Tensor, shapedirs: torch.Tensor,
          posedirs: torch.Tensor, j_regressor: torch.Tensor, parents: list[int], weights: torch.Tensor) -> Skinned:
    """The steps of :func:`lbs` (arguments as there)."""
    B = pose.shape[0]
    J = j_regressor.shape[0]
    v_shaped = v_template + blend_shapes(shape_coeffs, shapedirs)
    joints = torch.einsum("jv,bvc->bjc", j_regressor, v_shaped)
    rot = axis_angle_to_matrix(pose.reshape(B, J, 3))
    eye = torch.eye(3, dtype=pose.dtype, device=pose.device)
    pose_feature = (rot[:, 1:] - eye).reshape(B, -1)  # zero at rest pose
    v_posed = v_shaped + (pose_feature @ posedirs).reshape(B, -1, 3)
    posed_joints, rel_tf = rigid_transform_chain(rot, joints, parents)
    T = torch.einsum("vj,bjrc->bvrc", weights, rel_tf)  # (B, V, 4, 4)
    verts = (T[..., :3, :3] @ v_posed.unsqueeze(-1)).squeeze(-1) + T[..., :3, 3]
    return Skinned(verts, posed_joints, rot, T, v_posed, rel_tf)


def lbs(shape_coeffs: torch.Tensor, pose: torch.Tensor, v_template: torch.Tensor,
        shapedirs: torch.Tensor, posedirs: torch.Tensor, j_regressor: torch.Tensor,
        parents: list[int], weights: torch.Tensor):
    """Shape, pose-correct and skin the template.

    shape_coeffs: (B, K) identity and expression coefficients, concatenated to match shapedirs
    pose: (B, J*3) axis-angle per joint
    v_template: (V, 3); shapedirs: (V, 3, K); posedirs: ((J-1)*9, V*3)
    j_regressor: (J, V); weights: (V, J)
    Returns (vertices (B, V, 3), posed joints (B, J, 3)).
    """
    sk = _skin(shape_coeffs, pose, v_template, shapedirs, posedirs, j_regressor, parents, weights)
    return sk.verts, sk.posed_joints


def lbs_jacobian(shape_coeffs: torch.Tensor, pose: torch.Tensor, v_template: torch.Tensor,
                 shapedirs: torch.Tensor, posedirs: torch.Tensor, j_regressor: torch.Tensor,
                 parents: list[int], weights: torch.Tensor, joint: int | None = None):
    """:func:`lbs` and, in closed form, d vertices / d shape_coeffs and, with ``joint``, d vertices /
    d that joint's axis-angle (pose[:, 3 joint: 3 joint + 3]); other arguments as in :func:`lbs`.
    No autodiff: ~50x less work than a forward-mode pass with K tangents, and forward mode's
    first use imports torch's compiler (~2.5 s per process). Returns (vertices (B, V, 3),
    J (B, V, 3, K [+ 3]): the shape columns, then the joint's three)."""
    sk = _skin(shape_coeffs, pose, v_template, shapedirs, posedirs, j_regressor, parents, weights)
    jac = _shape_columns(sk, shapedirs, j_regressor, parents, weights)
    if joint is not None:
        jac = torch.cat([jac, _joint_columns(sk, pose, posedirs, parents, weights, joint)], -1)
    return sk.verts, jac


def _shape_columns(sk: Skinned, shapedirs: torch.Tensor, j_regressor: torch.Tensor, parents: list[int],
                   weights: torch.Tensor) -> torch.Tensor:
    """d vertices / d shape_coeffs (B, V, 3, K). For a fixed pose, skinning is linear in the
    shaped template: the joints are linear in it (J_regressor), the posed joint translations
    are linear in the joints (the rotations are fixed), and each vertex is T_v applied to its
    template point. So the derivative along blendshape k is T_v's rotation applied to
    shapedirs[..., k] plus the skinned translation change of joints moved by J_regressor @
    shapedirs[..., k]."""
    B, K = sk.rot.shape[0], shapedirs.shape[-1]
    d_joints = torch.einsum("jv,vck->kjc", j_regressor, shapedirs)                 # (K, J, 3)
    # rigid_transform_chain's translations are linear and homogeneous in the joints
    _, rel = rigid_transform_chain(sk.rot.repeat_interleave(K, 0), d_joints.repeat(B, 1, 1), parents)
    d_trans = rel[..., :3, 3].reshape(B, K, -1, 3)                                  # (B, K, J, 3)
    return (torch.einsum("bvrc,vck->bvrk", sk.T[..., :3, :3], shapedirs)
            + torch.einsum("vj,bkjr->bvrk", weights, d_trans))


def subtree(parents: list[int], joint: int) -> list[int]:
    """``joint`` and every joint below it (parents before children, as in FLAME)."""
    out = [joint]
    for j in range(joint + 1, len(parents)):
        if parents[j] in out:
            out.append(j)
    return out


def _joint_columns(sk: Skinned, pose: torch.Tensor, posedirs: torch.Tensor, parents: list[int],
                   weights: torch.Tensor, joint: int) -> torch.Tensor:
    """d vertices / d (joint ``joint``'s axis-angle w) (B, V, 3, 3), its last axis w's component k.

    A change dw turns the joint by the left increment J_l(w) dw (SO(3)'s left Jacobian,
    :func:`fitting.rotations.left_jacobian`), so everything its subtree carries turns about the
    posed joint p_j with the angular velocity g_k = R_parent J_l(w) e_k (R_parent: the parent's
    posed rotation). A vertex moves by g_k x (y_v - s_v p_j), where y_v = sum over the subtree's
    joints c of w_vc (rel_tf_c applied to the vertex) and s_v = the sum of those weights; and
    its pose-corrective offset changes through d R_j / d w_k = [J_l(w) e_k]x R_j, turned by the
    vertex's blended rotation (the root has no corrective)."""
    B = pose.shape[0]
    a = left_jacobian(pose[:, 3 * joint:3 * joint + 3])                              # (B, 3, 3), columns a_k
    parent = parents[joint]
    g = a if parent < 0 else sk.rel_tf[:, parent, :3, :3] @ a                       # (B, 3, 3), columns g_k
    sub = subtree(parents, joint)
    w = weights[:, sub]                                                              # (V, C)
    tf = sk.rel_tf[:, sub]                                                           # (B, C, 4, 4)
    carried = (torch.einsum("vc,bcrs,bvs->bvr", w, tf[..., :3, :3], sk.v_posed)
               + torch.einsum("vc,bcr->bvr", w, tf[..., :3, 3]))                     # (B, V, 3)
    lever = carried - w.sum(1)[None, :, None] * sk.posed_joints[:, joint, None]      # (B, V, 3)
    jac = torch.linalg.cross(g.transpose(1, 2)[:, None], lever[:, :, None].expand(-1, -1, 3, -1),
                             dim=-1).transpose(2, 3)                                 # (B, V, 3, 3)
    if joint == 0:
        return jac
    dR = skew(a.transpose(1, 2)) @ sk.rot[:, joint, None]                            # (B, 3 (k), 3, 3)
    d_posed = (dR.reshape(B, 3, 9) @ posedirs[9 * (joint - 1):9 * joint]).reshape(B, 3, -1, 3)  # (B, k, V, 3)
    return jac + torch.einsum("bvrc,bkvc->bvrk", sk.T[..., :3, :3], d_posed)
