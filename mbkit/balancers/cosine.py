"""Gradient cosine similarity for auxiliary tasks (Du et al., 2018, Algorithm 1 and its weighted variant)."""

from __future__ import annotations

import torch
from torch import Tensor

from .base import GRANULARITIES
from .gram import CoefficientBalancer, check_choice, diagonal_weights, gram_matrices, safe_div


class GradCosine(CoefficientBalancer):
    """Use an auxiliary gradient only where it agrees with the target's (Du, Czarnecki, Jayakumar,
    Farajtabar, Pascanu & Lakshminarayanan, "Adapting Auxiliary Losses Using Gradient Similarity").

    With cos_k = cos(g_0, g_k): the unweighted rule adds g_k iff cos_k >= 0 (Algorithm 1); the
    weighted rule adds max(0, cos_k) g_k. The target always counts with weight 1; a task whose
    gradient (or the target's) is zero has cos_k = 0. Target-anchored by construction.
    `granularity="flat"` (default) measures the cosine over all shared parameters, as the paper;
    `"tensor"` per shared tensor. `last_weights` are the resulting (K,) weights.

    Args:
        weighted: the weighted variant (max(0, cos) g_k) instead of the 0/1 gate.
        granularity: "flat" or "tensor".
    """

    name = "cosine"

    def __init__(self, weighted: bool = False, granularity: str = "flat") -> None:
        super().__init__()
        self.weighted = bool(weighted)
        self.granularity = check_choice(granularity, GRANULARITIES, "granularity")

    def _coefficients(self, grads: list[Tensor], groups: list[list[int]]) -> Tensor:
        gram = gram_matrices(grads, groups)  # (G, K, K)
        sq = torch.diagonal(gram, dim1=-2, dim2=-1)  # (G, K)
        cos = safe_div(gram[:, :, 0], (sq * sq[:, :1]).sqrt())  # (G, K)
        weights = cos.clamp_min(0.0) if self.weighted else (cos >= 0).to(gram.dtype)
        weights[:, 0] = 1.0
        return torch.diag_embed(weights)

    def _prepare(self, grads):
        grads, groups, coefficients = super()._prepare(grads)
        self.last_weights = diagonal_weights(coefficients, groups, grads)
        return grads, groups, coefficients

    def label(self, short: bool = False) -> str:
        args = (["weighted"] if self.weighted else []) + ([] if self.granularity == "flat" else ["per tensor"])
        return "Gradient cosine" + (f" ({', '.join(args)})" if args else "")

    def __repr__(self) -> str:
        return f"GradCosine(weighted={self.weighted!r}, granularity={self.granularity!r})"
