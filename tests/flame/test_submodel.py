import torch

from fitting.flame import landmark_submodel
from fitting.rotations import axis_angle_to_matrix


def test_landmark_submodel_matches_flame(standin):
    """The landmark-vertex FLAME gives the full model's 68 landmarks (any pose, contour row)
    with far fewer vertices."""
    sub = landmark_submodel(standin)
    g = torch.Generator().manual_seed(0)
    B = 3
    shape = torch.randn(B, standin.n_shape, generator=g)
    expr = 0.5 * torch.randn(B, standin.n_exp, generator=g)
    pose = 0.2 * torch.randn(B, 15, generator=g)
    v, l = standin(shape, expr, pose)
    vs, ls = sub(shape, expr, pose)
    assert vs.shape[1] < v.shape[1] / 3
    torch.testing.assert_close(ls, l, atol=1e-6, rtol=0)
    R = axis_angle_to_matrix(torch.tensor([[0.0, 0.6, 0.0], [0.1, -0.4, 0.0], [0.0, 0.0, 0.2]]))
    for contour in ("dynamic", "static"):
        torch.testing.assert_close(sub.landmarks(vs, R, contour), standin.landmarks(v, R, contour), atol=1e-6, rtol=0)
