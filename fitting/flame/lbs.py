"""Linear blend skinning with pose-corrective blendshapes (FLAME / SMPL family).

Pure functions, batched over B. Shapes follow smplx's ``lbs.py`` notation:
V vertices, J joints (5 for FLAME: global, neck, jaw, left eye, right eye).
"""
from __future__ import annotations

import torch

from fitting.rotations import axis_angle_to_matrix


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


def _skin(shape_coeffs: torch.Tensor, pose: torch.Tensor, v_template: torch.Tensor, shapedirs: torch.Tensor,
          posedirs: torch.Tensor, j_regressor: torch.Tensor, parents: list[int], weights: torch.Tensor):
    """The steps of :func:`lbs`; returns (vertices (B, V, 3), posed joints (B, J, 3), rotations
    (B, J, 3, 3), per-vertex transforms T (B, V, 4, 4))."""
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
    return verts, posed_joints, rot, T


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
    verts, posed_joints, _, _ = _skin(shape_coeffs, pose, v_template, shapedirs, posedirs, j_regressor, parents,
                                      weights)
    return verts, posed_joints


def lbs_shape_jacobian(shape_coeffs: torch.Tensor, pose: torch.Tensor, v_template: torch.Tensor,
                       shapedirs: torch.Tensor, posedirs: torch.Tensor, j_regressor: torch.Tensor,
                       parents: list[int], weights: torch.Tensor):
    """:func:`lbs` and d vertices / d shape_coeffs in closed form (arguments as there).

    For a fixed pose, skinning is linear in the shaped template: the joints are linear in it
    (J_regressor), the posed joint translations are linear in the joints (the rotations are
    fixed), and each vertex is T_v applied to its template point. So the derivative along
    blendshape k is T_v's rotation applied to shapedirs[..., k] plus the skinned translation
    change of joints moved by J_regressor @ shapedirs[..., k]: no autodiff, ~50x less work than
    a forward-mode pass with K tangents. Returns (vertices (B, V, 3), J (B, V, 3, K))."""
    B, K = pose.shape[0], shapedirs.shape[-1]
    verts, _, rot, T = _skin(shape_coeffs, pose, v_template, shapedirs, posedirs, j_regressor, parents, weights)
    d_joints = torch.einsum("jv,vck->kjc", j_regressor, shapedirs)                 # (K, J, 3)
    # rigid_transform_chain's translations are linear and homogeneous in the joints
    _, rel = rigid_transform_chain(rot.repeat_interleave(K, 0), d_joints.repeat(B, 1, 1), parents)
    d_trans = rel[..., :3, 3].reshape(B, K, -1, 3)                                  # (B, K, J, 3)
    jac = (torch.einsum("bvrc,vck->bvrk", T[..., :3, :3], shapedirs)
           + torch.einsum("vj,bkjr->bvrk", weights, d_trans))
    return verts, jac
