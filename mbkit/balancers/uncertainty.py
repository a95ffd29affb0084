"""Uncertainty weighting (Kendall, Gal & Cipolla, CVPR 2018, eqs. 7 and 10): L = sum_k exp(-s_k) L_k + s_k."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .base import LossWeighting, adam_update, check_losses, check_state_keys, clone_state, follow_device


class UncertaintyWeighting(LossWeighting):
    """Homoscedastic-uncertainty task weights, learned jointly with the model.

    With s_k = log sigma_k^2 one learnable number per task, the objective is
    L = sum_k exp(-s_k) L_k + s_k, so the shared gradient is sum_k exp(-s_k) g_k and
    dL/ds_k = 1 - exp(-s_k) L_k (closed form; s starts at 0, i.e. Vanilla). After the combined
    gradient is formed with the current s, s takes one Adam step on that derivative (the weights
    of a step are those before its update, as in joint training). At the fixed point
    exp(-s_k) = 1 / L_k: each task's loss is normalised by its running size.

    Kendall et al.'s classification form (eq. 10) has s_k / 2 in place of s_k, their regression
    form (eq. 7) 1/2 exp(-s_k); `regularizer` sets that coefficient (1 = the common
    implementation exp(-s) L + s, 0.5 = eq. 10 for our binary cross-entropy tasks).

    Args:
        lr: Adam learning rate of s (default 1e-3, mbkit's model learning rate).
        regularizer: c in exp(-s) L + c s (> 0).
    """

    name = "uncertainty"
    scalar_weights = True

    def __init__(self, lr: float = 1e-3, regularizer: float = 1.0) -> None:
        super().__init__()
        if not lr > 0 or not regularizer > 0:
            raise ValueError(f"lr and regularizer must be > 0; got {lr=}, {regularizer=}")
        self.lr = float(lr)
        self.regularizer = float(regularizer)
        self.log_vars: Tensor | None = None  # (K,) s_k, float32 at least
        self.adam: dict[str, Any] = {}

    def _weights(self, grads: list[Tensor], k: int, losses: Tensor | None) -> Tensor:
        losses = check_losses(losses, k, "UncertaintyWeighting")
        follow_device(self, ("log_vars", "adam"), grads[0].device)
        if self.log_vars is None:
            dtype = torch.promote_types(losses.dtype, torch.float32)
            self.log_vars = torch.zeros(k, dtype=dtype, device=grads[0].device)
        if self.log_vars.shape[0] != k:
            raise ValueError(f"UncertaintyWeighting was set up for K={self.log_vars.shape[0]} tasks; got K={k}")
        weights = torch.exp(-self.log_vars)
        grad_s = self.regularizer - weights * losses.to(weights)  # d/ds_k of exp(-s_k) L_k + c s_k
        adam_update(self.log_vars, grad_s, self.adam, self.lr)
        self.last_weights = [weights.to(g.dtype) for g in grads]
        return weights

    def state_dict(self) -> dict[str, Any]:
        return {"log_vars": clone_state(self.log_vars), "adam": clone_state(self.adam)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        check_state_keys(state, {"log_vars", "adam"}, "UncertaintyWeighting")
        self.log_vars, self.adam = clone_state(state["log_vars"]), clone_state(dict(state["adam"]))

    def label(self, short: bool = False) -> str:
        return "Uncertainty weighting" + ("" if self.regularizer == 1.0 else f" (c={self.regularizer:g})")

    def __repr__(self) -> str:
        return f"UncertaintyWeighting(lr={self.lr!r}, regularizer={self.regularizer!r})"
