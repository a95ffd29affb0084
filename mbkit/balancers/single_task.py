"""Single-task training: the target's gradient alone (the floor every auxiliary method must beat)."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from .base import GradientBalancer, check_grads


class SingleTask(GradientBalancer):
    """The target alone, L = L_tar: weights (1, 0, ..., 0) on the shared tensors.

    The auxiliary towers still train on their own losses (they do not touch the shared bottom),
    so only the shared representation is single-task. `last_weights` are (1, 0, ..., 0).
    """

    name = "single_task"
    scalar_weights = True

    def transform(self, grads: Sequence[Tensor]) -> list[Tensor]:
        grads, k = check_grads(grads)
        self.last_weights = [self._weights(k, g) for g in grads]
        return [g * w.view((k,) + (1,) * (g.dim() - 1)) for g, w in zip(grads, self.last_weights)]

    def __call__(self, grads: Sequence[Tensor]) -> list[Tensor]:
        grads, k = check_grads(grads)
        self.last_weights = [self._weights(k, g) for g in grads]
        return [g[0].clone() for g in grads]

    @staticmethod
    def _weights(k: int, like: Tensor) -> Tensor:
        w = torch.zeros(k, dtype=like.dtype, device=like.device)
        w[0] = 1.0
        return w

    def label(self, short: bool = False) -> str:
        return "Single task"

    def __repr__(self) -> str:
        return "SingleTask()"
