"""GradCraft (Bai et al., KDD 2024, Section 4, eqs. 5-8): align magnitudes, then craft directions jointly."""

from __future__ import annotations

import torch
from torch import Tensor

from .base import GRANULARITIES
from .gram import CoefficientBalancer, check_choice, gram_matrices, safe_div


def gradcraft_coefficients(gram: Tensor, tau: float, epsilon: float) -> Tensor:
    """(G, K, K) coefficients C with crafted c_i = sum_l C[i, l] g_l, from the Gram matrices (G, K, K).

    Magnitude: g'_k = tau (M / n_k) g_k + (1 - tau) g_k, M = max_k n_k, n_k = ||g_k|| (a zero
    gradient stays zero). Direction: with C_i = {j : g'_i . g'_j < 0}, c_i = g'_i + sum_{j in C_i}
    w_ij g'_j where the |C_i| x |C_i| system (G'_CC) w = -G'_Ci + epsilon ||g'_i|| (||g'_j||)_j makes
    c_i . g'_j = epsilon ||g'_i|| ||g'_j|| for every conflicting j (solved by pseudo-inverse, so
    dependent partners do not fail).
    """
    gram = gram.to(torch.float64)
    n_groups, k, _ = gram.shape
    norms = torch.diagonal(gram, dim1=-2, dim2=-1).clamp_min(0.0).sqrt()  # (G, K)
    top = norms.amax(-1, keepdim=True)
    s = torch.where(norms > 0, tau * safe_div(top.expand_as(norms), norms) + (1 - tau), 1.0)  # (G, K)
    rescaled = gram * s.unsqueeze(-1) * s.unsqueeze(-2)  # Gram of g'
    n_r = norms * s  # ||g'_k||
    conflict = rescaled < 0  # (G, K, K), row i: C_i
    both = conflict.unsqueeze(-1) & conflict.unsqueeze(-2)  # (G, K(i), K, K)
    eye = torch.eye(k, dtype=torch.bool, device=gram.device)
    system = torch.where(both, rescaled.unsqueeze(1), (eye & ~conflict.unsqueeze(-1)).to(gram.dtype))
    rhs = torch.where(conflict, -rescaled + epsilon * n_r.unsqueeze(-1) * n_r.unsqueeze(-2), 0.0)  # (G, K, K)
    w = (torch.linalg.pinv(system) @ rhs.unsqueeze(-1)).squeeze(-1) * conflict  # (G, K(i), K(j))
    return (torch.diag_embed(torch.ones_like(s)) + w) * s.unsqueeze(-2)  # C[i, l] = (delta_il + w_il) s_l


class GradCraft(CoefficientBalancer):
    """GradCraft: magnitudes adjusted towards the largest task's, then each task's direction crafted
    so that it no longer conflicts with any other task (all conflicts of a task solved jointly,
    not sequentially as PCGrad), then the mean over tasks.

    Checked against the original code (baiyimeng/GradCraft, GlobalPCGradMagnitudePositive) on
    golden values in tests/fixtures/gradcraft_original.json. As there: norms and conflicts over all
    shared parameters at once (`granularity="flat"`; `"tensor"` per shared tensor), no moving
    average (the original's b is 0), the mean over tasks (all tensors given to a balancer are
    shared by every task), defaults tau = 1, epsilon = 0 (its config). Unlike there: a zero
    gradient stays zero instead of turning the whole update into NaN; dependent conflicting
    partners are solved by pseudo-inverse instead of raising; a tensor whose gradient entries sum
    to exactly 0 is not mistaken for an absent one. `last_weights` is None.

    Args:
        tau: magnitude-alignment strength in [0, 1] (the original's r).
        epsilon: target cosine-like margin >= 0 after crafting (the original's e).
        granularity: "flat" or "tensor".
    """

    name = "gradcraft"

    def __init__(self, tau: float = 1.0, epsilon: float = 0.0, granularity: str = "flat") -> None:
        super().__init__()
        if not 0.0 <= tau <= 1.0 or not epsilon >= 0:
            raise ValueError(f"tau must lie in [0, 1] and epsilon be >= 0; got {tau=}, {epsilon=}")
        self.tau = float(tau)
        self.epsilon = float(epsilon)
        self.granularity = check_choice(granularity, GRANULARITIES, "granularity")
        self.reduction = "mean"

    def _coefficients(self, grads: list[Tensor], groups: list[list[int]]) -> Tensor:
        return gradcraft_coefficients(gram_matrices(grads, groups), self.tau, self.epsilon)

    def label(self, short: bool = False) -> str:
        args = [] if self.tau == 1.0 else [f"tau={self.tau:g}"]
        args += [] if self.epsilon == 0 else [f"eps={self.epsilon:g}"]
        args += [] if self.granularity == "flat" else ["per tensor"]
        return "GradCraft" + (f" ({', '.join(args)})" if args else "")

    def __repr__(self) -> str:
        return f"GradCraft(tau={self.tau!r}, epsilon={self.epsilon!r}, granularity={self.granularity!r})"
