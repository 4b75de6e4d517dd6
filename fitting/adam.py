"""Adam for the photometric stage, with a learning-rate factor per step.

It computes what ``torch.optim.Adam`` (single-tensor path, no weight decay, no amsgrad)
followed by a ``LambdaLR`` schedule computes, operation for operation. It exists because
constructing a ``torch.optim`` optimiser imports ``torch._dynamo``, about 2 s per process on a
2-core CPU, which is a quarter of the real 8-view sample's photometric stage.

Each parameter keeps its own step count: a parameter whose gradient is ``None`` (frozen during
a warm-up) is skipped, and its bias correction starts when it first gets a gradient.

:meth:`Adam.state_dict` has the layout of torch's (``state`` keyed by the parameter's index
over all groups, each with ``step``, ``exp_avg``, ``exp_avg_sq``), so a checkpoint written with
``torch.optim.Adam`` resumes here too (its ``param_groups`` are not read: the learning rates
come from the options of the run that resumes).
"""
from __future__ import annotations

import torch


class Adam:
    """Adam over parameter groups ``[{"params": [tensor, ...], "lr": float}, ...]``.

    ``step(lr_scale)`` updates every parameter that has a gradient with learning rate
    ``group lr * lr_scale``.
    """

    def __init__(self, groups: list[dict], betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        self.params = [p for g in groups for p in g["params"]]
        self.lrs = [float(g["lr"]) for g in groups for _ in g["params"]]       # per parameter
        self.betas, self.eps = (float(betas[0]), float(betas[1])), float(eps)
        self.state: dict[int, dict] = {}

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self, lr_scale: float = 1.0) -> None:
        beta1, beta2 = self.betas
        for i, (p, lr) in enumerate(zip(self.params, self.lrs)):
            if p.grad is not None:
                self._update(i, p, lr * lr_scale, beta1, beta2)

    def _update(self, i: int, p: torch.Tensor, lr: float, beta1: float, beta2: float) -> None:
        s = self.state.get(i)
        if s is None:
            s = self.state[i] = {"step": 0, "exp_avg": torch.zeros_like(p), "exp_avg_sq": torch.zeros_like(p)}
        s["step"] += 1
        grad = p.grad
        s["exp_avg"].lerp_(grad, 1 - beta1)
        s["exp_avg_sq"].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        step = float(s["step"])
        step_size = lr / (1 - beta1 ** step)
        denom = (s["exp_avg_sq"].sqrt() / (1 - beta2 ** step) ** 0.5).add_(self.eps)
        p.addcdiv_(s["exp_avg"], denom, value=-step_size)

    def state_dict(self) -> dict:
        """``{"state": {index: {"step", "exp_avg", "exp_avg_sq"}}}``: tensors and plain data."""
        return {"state": {i: {"step": s["step"], "exp_avg": s["exp_avg"].clone(), "exp_avg_sq": s["exp_avg_sq"].clone()}
                          for i, s in self.state.items()}}

    def load_state_dict(self, saved: dict) -> None:
        """Continue from ``saved`` (this class's or ``torch.optim.Adam``'s state_dict). Raises
        ValueError when its moments do not fit these parameters."""
        state = {}
        for i, s in saved["state"].items():
            i = int(i)
            if i >= len(self.params) or s["exp_avg"].shape != self.params[i].shape:
                raise ValueError(f"the saved Adam state does not fit these parameters (parameter {i}: "
                                 f"{len(self.params)} parameters here)")
            p = self.params[i]
            state[i] = {"step": int(s["step"]), "exp_avg": s["exp_avg"].to(p.device, p.dtype).clone(),
                        "exp_avg_sq": s["exp_avg_sq"].to(p.device, p.dtype).clone()}
        self.state = state
