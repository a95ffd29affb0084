"""FAMO, fast adaptive multitask optimization (Liu et al., NeurIPS 2023, Algorithm 1)."""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor

from .base import (REDUCTIONS, GradientBalancer, adam_update, check_grads, check_losses, check_state_keys,
                   clone_state, follow_device, task_view, weighted_sum)
from .gram import check_choice


class FAMO(GradientBalancer):
    """Task weights that make every task's log-loss fall at the same rate, at one extra forward per step.

    With logits xi (K,), z = softmax(xi) and D_k = L_k - min_k + eps the batch's loss above its floor, the
    step descends sum_k z_k log D_k, normalised by c = sum_k z_k / D_k:

        g = sum_k lambda_k g_k,   lambda_k = (z_k / D_k) / c      (the lambda_k sum to 1)

    After the model's step the training loop evaluates the same batch again (`after_step`, no gradient) and
    the logits move to equalise the decrease of the log losses: with delta_k = log D_k(before) - log
    D_k(after), the gradient of xi is J_softmax(xi)^T delta = z * (delta - z . delta), followed by one Adam
    step (lr `w_lr`, L2 weight decay `gamma`, as the paper's code). xi starts at 0 (equal weights).

    `reduction="mean"` is the paper's (weights sum to 1); the default "sum" multiplies them by K so that
    they sum to K like Vanilla's plain sum. `min_losses` are the losses' floors (0 for cross-entropy, the
    paper's default).
    """

    name = "famo"
    scalar_weights = True
    uses_losses = True
    uses_losses_after_step = True

    def __init__(self, w_lr: float = 0.025, gamma: float = 0.01, eps: float = 1e-8, reduction: str = "sum",
                 min_losses: Sequence[float] | None = None) -> None:
        super().__init__()
        if not (w_lr > 0 and gamma >= 0 and eps > 0):
            raise ValueError(f"FAMO needs w_lr > 0, gamma >= 0 and eps > 0; got {w_lr=}, {gamma=}, {eps=}")
        self.w_lr, self.gamma, self.eps = float(w_lr), float(gamma), float(eps)
        self.reduction = check_choice(reduction, REDUCTIONS, "reduction")
        self.min_losses = None if min_losses is None else tuple(float(v) for v in min_losses)
        self.logits: Tensor | None = None  # (K,) xi
        self.adam: dict[str, Any] = {}
        self.pending: Tensor | None = None  # (K,) log D_k of the step's batch before the step

    def _gap(self, losses: Tensor) -> Tensor:
        """D_k = L_k - min_k + eps."""
        floor = 0.0 if self.min_losses is None else torch.tensor(self.min_losses, dtype=losses.dtype,
                                                                 device=losses.device)
        return losses - floor + self.eps

    def _weights(self, grads: Sequence[Tensor], losses: Tensor | None) -> tuple[list[Tensor], Tensor]:
        grads, k = check_grads(grads)
        losses = check_losses(losses, k, "FAMO")
        if self.min_losses is not None and len(self.min_losses) != k:
            raise ValueError(f"FAMO has {len(self.min_losses)} min_losses but the gradients have K={k} tasks")
        follow_device(self, ("logits", "adam"), grads[0].device)
        if self.logits is None:
            self.logits = torch.zeros(k, dtype=torch.promote_types(losses.dtype, torch.float32),
                                      device=grads[0].device)
        if self.logits.shape[0] != k:
            raise ValueError(f"FAMO was set up for K={self.logits.shape[0]} tasks; got K={k}")
        gap = self._gap(losses.to(self.logits))
        w = torch.softmax(self.logits, dim=0) / gap
        weights = w / w.sum() * (k if self.reduction == "sum" else 1)
        self.pending = gap.log()
        self.last_weights = [weights.to(g.dtype) for g in grads]
        return grads, weights

    def after_step(self, losses: Tensor) -> None:
        """The logits' update from the same batch's (K,) losses after the model's step."""
        if self.pending is None:
            raise ValueError("FAMO.after_step needs a step first: call the balancer with the batch's losses")
        delta = self.pending - self._gap(check_losses(losses, len(self.pending), "FAMO").to(self.pending)).log()
        z = torch.softmax(self.logits, dim=0)
        grad = z * (delta - (z * delta).sum())  # d/dxi of softmax(xi) . delta
        adam_update(self.logits, grad + self.gamma * self.logits, self.adam, self.w_lr)
        self.pending = None

    def transform(self, grads: Sequence[Tensor], losses: Tensor | None = None) -> list[Tensor]:
        grads, _ = self._weights(grads, losses)
        return [g * task_view(w, g) for g, w in zip(grads, self.last_weights)]

    def reduce(self, grads: Sequence[Tensor]) -> list[Tensor]:
        return [g.sum(0) for g in grads]  # the weights already carry the reduction

    def __call__(self, grads: Sequence[Tensor], losses: Tensor | None = None) -> list[Tensor]:
        grads, _ = self._weights(grads, losses)
        return [weighted_sum(w, g) for w, g in zip(self.last_weights, grads)]

    def state_dict(self) -> dict[str, Any]:
        return {"logits": clone_state(self.logits), "adam": clone_state(self.adam)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        check_state_keys(state, {"logits", "adam"}, "FAMO")
        self.logits, self.adam = clone_state(state["logits"]), clone_state(dict(state["adam"]))
        self.pending = None

    def label(self, short: bool = False) -> str:
        return "FAMO" + ("" if self.reduction == "sum" else " (mean)")

    def __repr__(self) -> str:
        return (f"FAMO(w_lr={self.w_lr!r}, gamma={self.gamma!r}, eps={self.eps!r}, reduction={self.reduction!r}, "
                f"min_losses={self.min_losses!r})")
