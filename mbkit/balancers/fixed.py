"""Fixed loss weights, L = L_tar + sum_k w_k L_aux,k: the hand-tuned baseline of multi-task recommenders."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from .base import GradientBalancer, check_grads, task_view, weighted_sum


class FixedWeights(GradientBalancer):
    """Constant task weights: sum_k w_k g_k with w_0 = 1 for the target.

    Args:
        aux_weight: the weight of every auxiliary task (default 0.5, a placeholder to be tuned on
            the target's validation metric; 1.0 is Vanilla).
        weights: all K weights, target first (overrides `aux_weight`, which must then be left at
            its default); the task count of the gradients must match.
    """

    name = "fixed"
    scalar_weights = True

    def __init__(self, aux_weight: float = 0.5, weights: Sequence[float] | None = None) -> None:
        super().__init__()
        if weights is not None and aux_weight != 0.5:
            raise ValueError("give either aux_weight or weights, not both")
        if weights is not None and (isinstance(weights, str) or len(weights) < 1):
            raise ValueError(f"weights must be a sequence of K numbers, target first; got {weights!r}")
        self.aux_weight = float(aux_weight)
        self.weights = None if weights is None else tuple(float(w) for w in weights)

    def _weights(self, k: int, like: Tensor) -> Tensor:
        if self.weights is not None and len(self.weights) != k:
            raise ValueError(f"FixedWeights has {len(self.weights)} weights but the gradients have K={k} tasks")
        values = self.weights if self.weights is not None else (1.0,) + (self.aux_weight,) * (k - 1)
        return torch.tensor(values, dtype=like.dtype).to(like.device)

    def transform(self, grads: Sequence[Tensor]) -> list[Tensor]:
        grads, k = check_grads(grads)
        self.last_weights = [self._weights(k, g) for g in grads]
        return [g * task_view(w, g) for g, w in zip(grads, self.last_weights)]

    def __call__(self, grads: Sequence[Tensor]) -> list[Tensor]:
        grads, k = check_grads(grads)
        self.last_weights = [self._weights(k, g) for g in grads]
        return [weighted_sum(w, g) for w, g in zip(self.last_weights, grads)]

    def label(self, short: bool = False) -> str:
        if self.weights is not None:
            return "Fixed weights (" + ", ".join(f"{w:g}" for w in self.weights) + ")"
        return f"Fixed weights (aux {self.aux_weight:g})"

    def __repr__(self) -> str:
        return f"FixedWeights(aux_weight={self.aux_weight!r}, weights={self.weights!r})"
