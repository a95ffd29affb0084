"""MGDA (Sener & Koltun, NeurIPS 2018, eq. 3 / Algorithm 2): the min-norm point of the gradients' hull."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from .base import GRANULARITIES
from .gram import CoefficientBalancer, check_choice, diagonal_weights, gram_matrices, min_norm_weights


SOLVERS: tuple[str, ...] = ("exact", "frank_wolfe")


def frank_wolfe(gram: Tensor, epsilon: float, max_iters: int) -> Tensor:
    """Sener & Koltun's Algorithm 2 on one Gram matrix (K, K): the min-norm weights by Frank-Wolfe."""
    k = gram.shape[0]
    alpha = torch.full((k,), 1.0 / k, dtype=gram.dtype)
    for _ in range(max_iters):
        t = int(torch.argmin(gram @ alpha))
        a, b, c = float(alpha @ gram[:, t]), float(alpha @ (gram @ alpha)), float(gram[t, t])
        gamma = 1.0 if c <= a else 0.0 if b <= a else (b - a) / (b + c - 2 * a)  # exact line search
        alpha = (1 - gamma) * alpha
        alpha[t] += gamma
        if gamma < epsilon:
            break
    return alpha


class MGDA(CoefficientBalancer):
    """Multiple-gradient descent: d = sum_k alpha_k g_k with alpha on the simplex minimising ||d||^2.

    d is the common descent direction of all tasks (d . g_k >= ||d||^2 for every k), or 0 at a
    Pareto-stationary point. The weights come from an exact solver of the K x K problem (every
    support's KKT system at once; `gram.min_norm_weights`) instead of the paper's Frank-Wolfe
    iterations, which converge to the same point slowly (`solver="frank_wolfe"` runs those
    iterations as published: uniform start, exact line search, stop when the step is below
    `epsilon` or after `max_iters`; on the CPU, with one host sync per call). No gradient normalisation (the paper's
    Algorithm 2 as written; its code also offers 'l2' / 'loss' / 'loss+').

    Parameter scope: MGDA-UB takes the gradients of the shared *representation* z as a cheap
    upper bound; the balancer sees parameter gradients, so `granularity="flat"` (default) solves
    MGDA exactly over all shared parameters at once -- the quantity MGDA-UB bounds -- and
    `"tensor"` solves one problem per shared tensor. The weights sum to 1, so the step is on the
    scale of one task's gradient (Vanilla sums K of them). `last_weights` are the alphas.
    """

    name = "mgda"

    def __init__(
        self, granularity: str = "flat", solver: str = "exact", epsilon: float = 1e-3, max_iters: int = 100
    ) -> None:
        super().__init__()
        self.granularity = check_choice(granularity, GRANULARITIES, "granularity")
        self.solver = check_choice(solver, SOLVERS, "solver")
        if not epsilon > 0 or int(max_iters) < 1:
            raise ValueError(f"epsilon must be > 0 and max_iters >= 1; got {epsilon=}, {max_iters=}")
        self.epsilon = float(epsilon)
        self.max_iters = int(max_iters)

    def _coefficients(self, grads: list[Tensor], groups: list[list[int]]) -> Tensor:
        gram = gram_matrices(grads, groups)
        if self.solver == "exact":
            alpha = min_norm_weights(gram)
        else:
            alpha = torch.stack([frank_wolfe(g, self.epsilon, self.max_iters) for g in gram.double().cpu()])
        return torch.diag_embed(alpha.to(gram.device)).to(gram.dtype)

    def _prepare(self, grads: Sequence[Tensor]):
        grads, groups, coefficients = super()._prepare(grads)
        self.last_weights = diagonal_weights(coefficients, groups, grads)
        return grads, groups, coefficients

    def label(self, short: bool = False) -> str:
        args = ([] if self.granularity == "flat" else ["per tensor"]) + ([] if self.solver == "exact" else ["FW"])
        return "MGDA" + (f" ({', '.join(args)})" if args else "")

    def __repr__(self) -> str:
        return (f"MGDA(granularity={self.granularity!r}, solver={self.solver!r}, epsilon={self.epsilon!r}, "
                f"max_iters={self.max_iters!r})")
