"""Dynamic Weight Average (Liu, Johns & Davison, CVPR 2019, eq. 2): weights from the rate of loss descent."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .base import LossWeighting, check_losses, check_state_keys, clone_state, follow_device

PERIODS: tuple[str, ...] = ("epoch", "step")


class DWA(LossWeighting):
    """lambda_k(t) = K exp(w_k(t-1) / T) / sum_i exp(w_i(t-1) / T), w_k(t-1) = L_k(t-1) / L_k(t-2).

    As in the paper, L_k(t) is task k's average training loss over epoch t, the weights sum to K,
    and lambda = 1 until two epochs are complete (epochs 1 and 2). The loop must call
    `end_epoch()` after each epoch; `period="step"` uses the last two batches' losses instead
    (the per-iteration form of several re-implementations; noisier), and needs no `end_epoch()`.

    Args:
        temperature: T (2 in the paper).
        period: "epoch" (the paper) or "step".
    """

    name = "dwa"
    scalar_weights = True

    def __init__(self, temperature: float = 2.0, period: str = "epoch") -> None:
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0; got {temperature}")
        if period not in PERIODS:
            raise ValueError(f"period must be one of {PERIODS}; got {period!r}")
        self.temperature = float(temperature)
        self.period = period
        self.history: Tensor | None = None  # (2, K): L(t-2), L(t-1)
        self.n_history = 0  # complete periods in `history` (at most 2 matter)
        self.epoch_sum: Tensor | None = None  # (K,) losses summed over this epoch's steps
        self.epoch_steps = 0

    def _weights(self, grads: list[Tensor], k: int, losses: Tensor | None) -> Tensor:
        losses = check_losses(losses, k, "DWA")
        follow_device(self, ("history", "epoch_sum"), grads[0].device)
        if self.history is None:
            dtype = torch.promote_types(losses.dtype, torch.float32)
            self.history = torch.zeros(2, k, dtype=dtype, device=losses.device)
            self.epoch_sum = torch.zeros(k, dtype=dtype, device=losses.device)
        if self.history.shape[1] != k:
            raise ValueError(f"DWA was set up for K={self.history.shape[1]} tasks; got K={k}")
        if self.n_history >= 2:
            prev, last = self.history
            ok = prev > 0
            rate = torch.where(ok, last / torch.where(ok, prev, torch.ones_like(prev)), torch.ones_like(prev))
            weights = k * torch.softmax(rate / self.temperature, dim=0)
        else:
            weights = torch.ones(k, dtype=self.history.dtype, device=self.history.device)
        if self.period == "step":
            self._push(losses.to(self.history))
        else:
            self.epoch_sum += losses.to(self.epoch_sum)
            self.epoch_steps += 1
        self.last_weights = [weights.to(g.dtype) for g in grads]
        return weights

    def _push(self, mean_losses: Tensor) -> None:
        self.history = torch.stack([self.history[1], mean_losses])
        self.n_history += 1

    def end_epoch(self) -> None:
        """Close the epoch: its average losses become L(t-1). A no-op with `period="step"`."""
        if self.period == "epoch" and self.epoch_steps > 0:
            self._push(self.epoch_sum / self.epoch_steps)
            self.epoch_sum = torch.zeros_like(self.epoch_sum)
            self.epoch_steps = 0

    def state_dict(self) -> dict[str, Any]:
        return clone_state({"history": self.history, "n_history": self.n_history,
                            "epoch_sum": self.epoch_sum, "epoch_steps": self.epoch_steps})

    def load_state_dict(self, state: dict[str, Any]) -> None:
        check_state_keys(state, {"history", "n_history", "epoch_sum", "epoch_steps"}, "DWA")
        state = clone_state(state)
        self.history, self.epoch_sum = state["history"], state["epoch_sum"]
        self.n_history, self.epoch_steps = int(state["n_history"]), int(state["epoch_steps"])

    def label(self, short: bool = False) -> str:
        args = [f"T={self.temperature:g}"] + ([] if self.period == "epoch" else ["per step"])
        return f"DWA ({', '.join(args)})"

    def __repr__(self) -> str:
        return f"DWA(temperature={self.temperature!r}, period={self.period!r})"
