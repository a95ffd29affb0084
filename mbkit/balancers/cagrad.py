"""CAGrad, conflict-averse gradient descent (Liu, Liu, Jin, Stone & Liu, NeurIPS 2021, eq. 4 / Algorithm 1)."""

from __future__ import annotations

import torch
from torch import Tensor

from .base import GRANULARITIES
from .gram import (CoefficientBalancer, check_choice, diagonal_weights, gram_matrices, min_norm_weights, on_simplex,
                   pick, quadratic, restrict, solve_pd, subsets)


def cagrad_weights(gram: Tensor, c: float) -> Tensor:
    """(G, K) weights v of d = sum_k v_k g_k: v = 1/K + (sqrt(phi) / ||g_w||) w (Algorithm 1), where w on
    the simplex minimises F(w) = g_w . g_0 + sqrt(phi) ||g_w||, g_0 the mean gradient, sqrt(phi) = c ||g_0||.

    F is convex; on a support S its stationary point solves G_SS w = beta (lambda 1 - a_S) with
    a = G 1 / K, which with sum w = 1 and ||g_w|| = sqrt(phi) beta gives a quadratic in lambda:
    every support is solved at once, and the feasible candidate of least F wins (vertices and the
    min-norm point, where ||g_w|| may be 0, are candidates too). If ||g_w|| = 0, v = 1/K.
    """
    gram = gram.to(torch.float64)
    n_groups, k, _ = gram.shape
    a = gram.mean(-1)  # (G, K) g_k . g_0
    root_phi = c * a.mean(-1).clamp_min(0.0).sqrt()  # (G,) c ||g_0||
    masks = subsets(k, gram.device)  # (S, K)
    m = masks.to(gram.dtype)
    rhs = torch.stack([m.expand(n_groups, -1, -1), a.unsqueeze(1) * m], dim=-1)  # (G, S, K, 2)
    solution = solve_pd(restrict(gram, masks), rhs)
    p, q = solution[..., 0] * m, solution[..., 1] * m  # G_SS^-1 1, G_SS^-1 a_S
    big_a, big_b = p.sum(-1), q.sum(-1)  # 1.p, 1.q
    big_c = (a.unsqueeze(1) * q).sum(-1)  # a.q
    disc = big_b**2 - big_a * (big_c - root_phi.unsqueeze(1) ** 2)
    root = disc.clamp_min(0.0).sqrt()
    lam = (big_b + root) / big_a
    w, ok = on_simplex((lam.unsqueeze(-1) * p - q) / root.unsqueeze(-1))
    ok = ok & (disc > 0) & (big_a != 0)
    eye = torch.eye(k, dtype=gram.dtype, device=gram.device).expand(n_groups, k, k)
    candidates = torch.cat([w, eye, min_norm_weights(gram).unsqueeze(1)], dim=1)
    feasible = torch.cat([ok, torch.ones(n_groups, k + 1, dtype=torch.bool, device=gram.device)], dim=1)
    norms = quadratic(candidates, gram).clamp_min(0.0).sqrt()
    objective = (candidates * a.unsqueeze(1)).sum(-1) + root_phi.unsqueeze(1) * norms
    best = pick(candidates, objective, feasible)  # (G, K)
    norm_w = quadratic(best.unsqueeze(1), gram).squeeze(1).clamp_min(0.0).sqrt()  # (G,)
    # ||g_w|| ~ 0 (a Pareto-stationary point up to rounding): no finite correction, plain mean
    ok = norm_w > 1e-6 * torch.diagonal(gram, dim1=-2, dim2=-1).amax(-1).clamp_min(0.0).sqrt()
    scale = torch.where(ok, root_phi / torch.where(ok, norm_w, 1.0), 0.0)
    return 1.0 / k + scale.unsqueeze(-1) * best


class CAGrad(CoefficientBalancer):
    """CAGrad: the update d maximising the worst task's improvement min_k g_k . d within the ball
    ||d - g_0|| <= c ||g_0|| around the mean gradient g_0 (eq. 4); c = 0 is the mean gradient.

    Solved in its dual over the simplex (Algorithm 1) exactly for small K (`cagrad_weights`)
    instead of the authors' scipy SLSQP. The official code then divides d by 1 + c^2
    (`rescale=True`, its default); torchjd does not (`rescale=False`). `granularity="flat"`
    (default, the paper: all shared parameters) or `"tensor"`. `last_weights` are the (K,)
    weights of d = sum_k v_k g_k.

    Args:
        c: radius factor (0.4, the official multi-task default).
        rescale: divide by 1 + c^2 as the official code.
        granularity: "flat" or "tensor".
    """

    name = "cagrad"

    def __init__(self, c: float = 0.4, rescale: bool = True, granularity: str = "flat") -> None:
        super().__init__()
        if not c >= 0:
            raise ValueError(f"c must be >= 0; got {c}")
        self.c = float(c)
        self.rescale = bool(rescale)
        self.granularity = check_choice(granularity, GRANULARITIES, "granularity")

    def _coefficients(self, grads: list[Tensor], groups: list[list[int]]) -> Tensor:
        gram = gram_matrices(grads, groups)
        v = cagrad_weights(gram, self.c) / (1 + self.c**2 if self.rescale else 1.0)
        return torch.diag_embed(v).to(gram.dtype)

    def _prepare(self, grads):
        grads, groups, coefficients = super()._prepare(grads)
        self.last_weights = diagonal_weights(coefficients, groups, grads)
        return grads, groups, coefficients

    def label(self, short: bool = False) -> str:
        args = [f"c={self.c:g}"] + ([] if self.rescale else ["no rescale"])
        args += [] if self.granularity == "flat" else ["per tensor"]
        return f"CAGrad ({', '.join(args)})"

    def __repr__(self) -> str:
        return f"CAGrad(c={self.c!r}, rescale={self.rescale!r}, granularity={self.granularity!r})"
