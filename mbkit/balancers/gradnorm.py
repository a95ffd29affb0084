"""GradNorm (Chen et al., ICML 2018, eqs. 1-2): task weights learned to equalise training rates."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .base import LossWeighting, adam_update, check_losses, check_state_keys, clone_state, follow_device


class GradNorm(LossWeighting):
    """Task weights w_k trained so that each weighted gradient norm follows its relative training rate.

    With n_k the norm of task k's gradient of the chosen shared parameters W, G_k = w_k n_k,
    G_bar = mean_k G_k, the loss ratio Ltilde_k = L_k(t) / L_k(0) and the relative inverse
    training rate r_k = Ltilde_k / mean_i Ltilde_i, the weights descend
    L_grad = sum_k |G_k - G_bar r_k^alpha| (eq. 2) with G_bar r_k^alpha held constant (as in the
    paper), so dL_grad/dw_k = sign(G_k - G_bar r_k^alpha) n_k. One Adam step per call, then the
    weights are clamped at 0 and renormalised to sum to K (Section 3.2). The shared gradient of
    the step is sum_k w_k g_k with the weights before the update; w starts at 1 (Vanilla).

    Choices where papers and peers differ: L_k(0) is the first batch's loss (the paper's
    "initial loss"; some use log C or the first epoch's mean); W is by default all shared
    tensors (`layer=None`), since NeuMF's MF branch bypasses the last MLP layer that would be
    the paper's "last shared layer" -- `layer=j` uses shared tensor j alone; the weights are the
    raw w_k renormalised to K (LibMTL: K softmax(w)).

    Args:
        alpha: asymmetry alpha (1.5, the paper's most used value).
        lr: Adam learning rate of the weights.
        layer: index of the shared tensor whose gradient norms are balanced, or None for all.
    """

    name = "gradnorm"

    def __init__(self, alpha: float = 1.5, lr: float = 1e-3, layer: int | None = None) -> None:
        super().__init__()
        if not alpha >= 0 or not lr > 0:
            raise ValueError(f"alpha must be >= 0 and lr > 0; got {alpha=}, {lr=}")
        self.alpha = float(alpha)
        self.lr = float(lr)
        self.layer = None if layer is None else int(layer)
        self.weights: Tensor | None = None  # (K,) w_k
        self.initial_losses: Tensor | None = None  # (K,) L_k(0)
        self.adam: dict[str, Any] = {}

    def _norms(self, grads: list[Tensor]) -> Tensor:
        """(K,) gradient norms n_k over the chosen tensors (float32 at least, scaled to avoid underflow)."""
        chosen = grads if self.layer is None else [grads[self.layer]]
        acc = torch.promote_types(chosen[0].dtype, torch.float32)
        flats = [g.reshape(g.shape[0], -1).to(acc) for g in chosen]
        return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(f, dim=1) for f in flats]), dim=0)

    def _weights(self, grads: list[Tensor], k: int, losses: Tensor | None) -> Tensor:
        losses = check_losses(losses, k, "GradNorm")
        follow_device(self, ("weights", "initial_losses", "adam"), grads[0].device)
        if self.layer is not None and not -len(grads) <= self.layer < len(grads):
            raise ValueError(f"layer={self.layer} but there are {len(grads)} shared tensors")
        if self.weights is None:
            dtype = torch.promote_types(losses.dtype, torch.float32)
            self.weights = torch.ones(k, dtype=dtype, device=grads[0].device)
            self.initial_losses = losses.to(self.weights).clone()
        if self.weights.shape[0] != k:
            raise ValueError(f"GradNorm was set up for K={self.weights.shape[0]} tasks; got K={k}")
        weights = self.weights.clone()
        norms = self._norms(grads).to(weights)
        ok = self.initial_losses > 0
        ratio = torch.where(ok, losses.to(weights) / torch.where(ok, self.initial_losses, 1.0), 1.0)  # Ltilde_k
        mean_ratio = ratio.mean()
        rate = torch.where(mean_ratio > 0, ratio / torch.where(mean_ratio > 0, mean_ratio, 1.0), 1.0)  # r_k
        g = weights * norms
        target = g.mean() * rate.pow(self.alpha)
        adam_update(self.weights, torch.sign(g - target) * norms, self.adam, self.lr)
        clamped = self.weights.clamp_min(0.0)
        total = clamped.sum()
        self.weights.copy_(torch.where(total > 0, clamped * (k / torch.where(total > 0, total, 1.0)), 1.0))
        self.last_weights = [weights.to(gr.dtype) for gr in grads]
        return weights

    def state_dict(self) -> dict[str, Any]:
        return clone_state({"weights": self.weights, "initial_losses": self.initial_losses, "adam": self.adam})

    def load_state_dict(self, state: dict[str, Any]) -> None:
        check_state_keys(state, {"weights", "initial_losses", "adam"}, "GradNorm")
        state = clone_state(state)
        self.weights, self.initial_losses, self.adam = state["weights"], state["initial_losses"], dict(state["adam"])

    def label(self, short: bool = False) -> str:
        args = [f"alpha={self.alpha:g}"] + ([] if self.layer is None else [f"layer {self.layer}"])
        return f"GradNorm ({', '.join(args)})"

    def __repr__(self) -> str:
        return f"GradNorm(alpha={self.alpha!r}, lr={self.lr!r}, layer={self.layer!r})"
