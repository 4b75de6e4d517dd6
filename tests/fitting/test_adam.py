"""fitting.adam.Adam against torch.optim.Adam with a LambdaLR schedule, the pair it replaces."""
import math

import pytest
import torch

from fitting.adam import Adam


def _problem():
    """Three parameter groups with their own learning rates, and a loss with curvature that
    differs per coordinate, so that the moments matter."""
    g = torch.Generator().manual_seed(0)
    a, b, c = (torch.randn(n, generator=g) for n in (5, (2, 3), 4))
    target = torch.randn(5 + 6 + 4, generator=g)
    weights = torch.rand(5 + 6 + 4, generator=g) * 10

    def loss(ps):
        x = torch.cat([p.reshape(-1) for p in ps])
        return (weights * (x - target) ** 2).sum() + (x ** 4).sum()

    return [a, b, c], loss


def _groups(ps):
    return [{"params": [ps[0]], "lr": 0.05}, {"params": [ps[1]], "lr": 0.01}, {"params": [ps[2]], "lr": 0.2}]


def _schedule(k: int, n: int) -> float:
    return 0.1 + 0.45 * (1 + math.cos(math.pi * min(k, n) / n))


def _run(opt, ps, loss, steps: range, frozen_until: int, n: int) -> None:
    """Adam steps over ``steps``; the last parameter has no gradient before ``frozen_until``
    (the photometric stage's geometry warm-up)."""
    for it in steps:
        opt.zero_grad()
        ps[2].requires_grad_(it >= frozen_until)
        loss(ps).backward()
        if isinstance(opt, Adam):
            opt.step(lr_scale=_schedule(it, n))
        else:
            opt.step()
            opt.sched.step()


def _torch_adam(ps, start: int, n: int):
    opt = torch.optim.Adam(_groups(ps))
    opt.sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: _schedule(k + start, n))
    return opt


def test_adam_steps_as_torch_adam_with_its_schedule():
    n, warm = 30, 6
    ours, loss = _problem()
    ref = [p.clone() for p in ours]
    for p in ours + ref[:2]:
        p.requires_grad_(True)
    _run(Adam(_groups(ours)), ours, loss, range(n), warm, n)
    _run(_torch_adam(ref, 0, n), ref, loss, range(n), warm, n)
    for p, q in zip(ours, ref):
        torch.testing.assert_close(p.detach(), q.detach(), rtol=1e-6, atol=1e-7)
    start = _problem()[0]
    assert min(float((p.detach() - s).abs().max()) for p, s in zip(ours, start)) > 0.05   # every group moved


def test_adam_resumes_from_its_own_and_from_torch_state():
    """Stopped at step 12 and resumed from the saved moments, the run ends where an uninterrupted
    one ends; the same from a torch.optim.Adam state_dict (checkpoints written before this class)."""
    n, warm, stop = 30, 6, 12
    full, loss = _problem()
    for p in full:
        p.requires_grad_(True)
    _run(Adam(_groups(full)), full, loss, range(n), warm, n)

    for make in (lambda ps: Adam(_groups(ps)), lambda ps: _torch_adam(ps, 0, n)):
        ps = [p.requires_grad_(True) for p in _problem()[0]]
        first = make(ps)
        _run(first, ps, loss, range(stop), warm, n)
        second = Adam(_groups(ps))
        second.load_state_dict(first.state_dict())
        _run(second, ps, loss, range(stop, n), warm, n)
        for p, q in zip(ps, full):
            torch.testing.assert_close(p.detach(), q.detach(), rtol=1e-6, atol=1e-7)

    # without the moments the resumed run ends elsewhere: the check above has teeth
    ps = [p.requires_grad_(True) for p in _problem()[0]]
    _run(Adam(_groups(ps)), ps, loss, range(stop), warm, n)
    _run(Adam(_groups(ps)), ps, loss, range(stop, n), warm, n)
    assert max(float((p.detach() - q.detach()).abs().max()) for p, q in zip(ps, full)) > 1e-3


def test_adam_refuses_a_state_for_other_parameters():
    ps, loss = _problem()
    for p in ps:
        p.requires_grad_(True)
    opt = Adam(_groups(ps))
    _run(opt, ps, loss, range(2), 0, 10)
    other = Adam([{"params": [torch.zeros(7, requires_grad=True)], "lr": 0.1}])
    with pytest.raises(ValueError, match="does not fit"):
        other.load_state_dict(opt.state_dict())
