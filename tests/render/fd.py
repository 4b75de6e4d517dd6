"""Central finite differences against autograd, shared by the renderer's gradient tests."""
import torch


def _fd_check(loss_fn, x, idx, eps, visibility=None):
    """Central differences of loss_fn at the flat indices idx of x; returns (autograd, fd)."""
    x = x.detach().clone().requires_grad_()
    loss_fn(x).backward()
    ad = x.grad.flatten()[idx]
    fd = []
    for i in idx.tolist():
        xp, xm = x.detach().clone(), x.detach().clone()
        xp.view(-1)[i] += eps
        xm.view(-1)[i] -= eps
        if visibility is not None:
            assert torch.equal(visibility(xp), visibility(xm)), "visibility changed: pick another coordinate"
        fd.append((loss_fn(xp) - loss_fn(xm)).item() / (2 * eps))
    return ad, torch.tensor(fd, dtype=torch.float64)


def _assert_close(ad, fd):
    rel = (ad - fd).norm() / fd.norm()
    assert fd.norm() > 0 and rel < 1e-3, f"relative error {rel:.2e}"
    assert ((ad - fd).abs() <= 1e-3 * fd.abs().max() + 1e-12).all()
