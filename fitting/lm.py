"""Levenberg-Marquardt on a sum of squared residual terms, with a Schur complement for the
terms that bring unknowns of their own (the track points).

The caller linearises the problem at the current estimate into :class:`NormalEquations`:
``A = J^T J`` and ``g = J^T r`` over the *reduced* unknowns (cameras and model coefficients),
plus, per term with unknowns of its own, their blocks (``reduce(lam)``: the Schur complement
of the damped own-unknown blocks, and the back-substitution that recovers their step). The
step solves ``(A + lam diag(A) - S) dx = -(g - h)`` (Marquardt's scaling of the damping); a
step is taken when it lowers the cost, and ``lam`` shrinks by 3 or grows by 4.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

__all__ = ["NormalEquations", "levenberg_marquardt"]


@dataclass
class NormalEquations:
    """``A`` (n, n), ``g`` (n,), ``cost`` (the squared residuals at the linearisation point),
    ``parts`` {term name: its cost}, ``eliminated``: the terms' own-unknown blocks (objects with
    ``reduce(lam) -> (S (n, n), h (n,), back_substitute)``)."""

    A: torch.Tensor
    g: torch.Tensor
    cost: float = 0.0
    parts: dict = field(default_factory=dict)
    eliminated: list = field(default_factory=list)

    @classmethod
    def zeros(cls, n: int, dtype=torch.float32, device=None) -> "NormalEquations":
        return cls(torch.zeros(n, n, dtype=dtype, device=device), torch.zeros(n, dtype=dtype, device=device))

    def add(self, name: str, A: torch.Tensor, g: torch.Tensor, cost: float) -> None:
        """Add a term's normal equations (in the wider of the two dtypes)."""
        dt = torch.promote_types(self.A.dtype, A.dtype)
        self.A = self.A.to(dt) + A.to(dt)
        self.g = self.g.to(dt) + g.to(dt)
        self.cost += cost
        self.parts[name] = self.parts.get(name, 0.0) + cost

    def add_rows(self, name: str, J: torch.Tensor, r: torch.Tensor) -> None:
        """Add residual rows r (rows,) with their Jacobian J (rows, n)."""
        self.add(name, J.T @ J, J.T @ r, float(r @ r))

    def add_eliminated(self, name: str, blocks) -> None:
        """Add a term with unknowns of its own: its reduced blocks ``A``, ``g``, ``cost`` now,
        the Schur complement of the rest at every step (:meth:`step`)."""
        self.add(name, blocks.A, blocks.g, blocks.cost)
        self.eliminated.append(blocks)

    def step(self, lam: float) -> tuple[torch.Tensor, list]:
        """The damped step: dx (n,) and each eliminated term's own step."""
        A = self.A + lam * torch.diag(self.A.diagonal().clamp_min(1e-9))
        g = self.g
        backs = []
        for blocks in self.eliminated:
            S, h, back = blocks.reduce(lam)
            A, g = A - S, g - h
            backs.append(back)
        dx = -torch.linalg.solve(A, g)
        return dx, [back(dx) for back in backs]


def levenberg_marquardt(x, linearize: Callable, propose: Callable, iters: int, lam: float = 1e-3,
                        max_tries: int = 6, tol: float = 1e-7, record: Callable | None = None):
    """Minimise from ``x`` (any object the callbacks understand).

    linearize(x, it) -> (x, NormalEquations): may update parts of x that are solved in closed
    form at each iteration; propose(x, dx, own_steps) -> (candidate, cost); record(it,
    NormalEquations, lam), after each iteration. Stops after ``iters`` iterations, when no
    damping in ``max_tries`` lowers the cost, or when the step's largest entry is below
    ``tol``. Returns the last accepted x."""
    for it in range(iters):
        x, ne = linearize(x, it)
        accepted = False
        for _try in range(max_tries):
            dx, own = ne.step(lam)
            cand, cost = propose(x, dx, own)
            if cost < ne.cost:
                x, accepted = cand, True
                lam = max(lam / 3, 1e-7)
                break
            lam *= 4
        if record is not None:
            record(it, ne, lam)
        if not accepted or float(dx.abs().max()) < tol:
            break
    return x
