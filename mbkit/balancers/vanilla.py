"""Vanilla multi-task training: the plain sum of the task gradients, L = L_tar + sum_i L_aux,i."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from .base import GradientBalancer, check_grads


class Vanilla(GradientBalancer):
    """Sum of the per-task gradients; `last_weights` are all ones."""

    name = "vanilla"
    scalar_weights = True

    def transform(self, grads: Sequence[Tensor]) -> list[Tensor]:
        grads, k = check_grads(grads)
        self.last_weights = [torch.ones(k, dtype=g.dtype, device=g.device) for g in grads]
        return grads

    def label(self, short: bool = False) -> str:
        return "Vanilla"

    def __repr__(self) -> str:
        return "Vanilla()"
