"""Random loss weighting, RLW (Lin et al., TMLR 2022, Algorithm 2): fresh random task weights every step."""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor

from ..utils import make_generator
from .base import REDUCTIONS, GradientBalancer, check_grads, check_state_keys, task_view, weighted_sum
from .gram import check_choice


class RandomLossWeighting(GradientBalancer):
    """Every step draws z ~ N(0, I_K) and weighs task k by lambda_k = softmax(z)_k: g = sum_k lambda_k g_k.

    The same K weights apply to every shared tensor (they are loss weights: L = sum_k lambda_k L_k), so the
    method needs no per-task gradient at all and is the control for "does any balancing beat noise".
    `reduction="mean"` is the paper's convention (weights sum to 1, as torchjd's `Random`); the default
    "sum" multiplies them by K, so that they sum to K like Vanilla's plain sum and the expected weight of
    every task is 1 (Adam is almost invariant to that scale, weight decay and eps are not).

    The draws come from `generator` (a seeded CPU generator from `seed` when None, so that a run's weights
    follow its seed and resume bit for bit); `last_weights` holds the step's weights for every tensor.
    """

    name = "rlw"
    scalar_weights = True

    def __init__(self, reduction: str = "sum", seed: int = 0, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.reduction = check_choice(reduction, REDUCTIONS, "reduction")
        self.seed = int(seed)
        self._user_generator = generator
        self.generator = generator if generator is not None else make_generator(self.seed, "cpu")
        self.step = 0

    def _weights(self, grads: Sequence[Tensor]) -> tuple[list[Tensor], Tensor]:
        grads, k = check_grads(grads)
        z = torch.randn(k, generator=self.generator, device=self.generator.device)
        weights = torch.softmax(z, dim=0).mul_(k if self.reduction == "sum" else 1).to(grads[0].device)
        self.last_weights = [weights.to(g.dtype) for g in grads]  # one copy to the device, not one per tensor
        self.step += 1
        return grads, weights

    def transform(self, grads: Sequence[Tensor]) -> list[Tensor]:
        grads, _ = self._weights(grads)
        return [g * task_view(w, g) for g, w in zip(grads, self.last_weights)]

    def reduce(self, grads: Sequence[Tensor]) -> list[Tensor]:
        return [g.sum(0) for g in grads]  # the weights already carry the reduction

    def __call__(self, grads: Sequence[Tensor]) -> list[Tensor]:
        grads, _ = self._weights(grads)
        return [weighted_sum(w, g) for w, g in zip(self.last_weights, grads)]

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step, "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        check_state_keys(state, {"step", "generator"}, "RandomLossWeighting")
        self.generator.set_state(state["generator"])
        self.step = int(state["step"])

    def label(self, short: bool = False) -> str:
        return "RLW" + ("" if self.reduction == "sum" else " (mean)")

    def __repr__(self) -> str:
        gen = None if self._user_generator is None else f"<torch.Generator device={self.generator.device}>"
        return f"RandomLossWeighting(reduction={self.reduction!r}, seed={self.seed!r}, generator={gen})"
