"""GradVac, Gradient Vaccine (Wang et al., ICLR 2021, eq. 4, Algorithm 2), and a target-anchored variant."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..utils import make_generator
from .base import GRANULARITIES, check_state_keys, clone_state, follow_device
from .gram import CoefficientBalancer, check_choice, gram_matrices, safe_div


def _correction(norm_i: Tensor, norm_j: Tensor, phi: Tensor, target: Tensor) -> Tensor:
    """Eq. 4: the multiple w of g_j that turns cos(g_i, g_j) = phi into `target` (where phi < target)."""
    s_phi = (1 - phi * phi).clamp_min(0.0).sqrt()
    s_target = (1 - target * target).clamp_min(0.0).sqrt()
    w = safe_div(norm_i * (target * s_phi - phi * s_target), norm_j * s_target)
    return torch.where(phi < target, w, torch.zeros_like(w))


class GradVac(CoefficientBalancer):
    """GradVac: raise each pair's cosine to an adaptive target instead of PCGrad's 0.

    For each task i and every other task j in a random order (fresh per call, as PCGrad):
    phi = cos(g_i', g_j) of i's current (already corrected) gradient and j's original one; if
    phi < phi_hat_ij, g_i' += ||g_i'|| (phi_hat sqrt(1 - phi^2) - phi sqrt(1 - phi_hat^2)) /
    (||g_j|| sqrt(1 - phi_hat^2)) g_j (eq. 4), which sets the cosine to exactly phi_hat; then
    phi_hat_ij <- (1 - beta) phi_hat_ij + beta phi (the pre-correction cosine). phi_hat starts at 0,
    so the first call is PCGrad. The corrected gradients are summed. `granularity="tensor"`
    (default; the paper's best results are with fine groups) keeps one phi_hat matrix per shared
    tensor; `"flat"` one for all shared parameters (the paper's "whole model", torchjd's
    GradVac). Orders come from `generator` (or a seeded CPU one) via `torch.randperm`, one per
    task, like torchjd; they are kept in `last_order` (K, K-1). Zero denominators give no
    correction (no epsilon). `last_weights` is None.

    Args:
        beta: EMA rate of phi_hat (the paper's 1e-2; torchjd's default is 0.5).
        granularity: "tensor" or "flat".
        seed, generator: the source of the task orders.
    """

    name = "gradvac"

    def __init__(
        self, beta: float = 0.01, granularity: str = "tensor", seed: int = 0, generator: torch.Generator | None = None
    ) -> None:
        super().__init__()
        if not 0.0 <= beta <= 1.0:
            raise ValueError(f"beta must lie in [0, 1]; got {beta}")
        self.beta = float(beta)
        self.granularity = check_choice(granularity, GRANULARITIES, "granularity")
        self.seed = int(seed)
        self._user_generator = generator
        self.generator = generator if generator is not None else make_generator(self.seed, "cpu")
        self.targets: Tensor | None = None  # (G, K, K) phi_hat
        self.last_order: Tensor | None = None

    def draw_order(self, k: int) -> Tensor:
        """(K, K-1): row i is a random order of the tasks other than i (torch.randperm per task)."""
        others = torch.arange(k, device=self.generator.device)
        rows = [others[others != i][torch.randperm(k - 1, generator=self.generator, device=self.generator.device)]
                for i in range(k)]
        return torch.stack(rows) if k > 1 else torch.zeros(k, 0, dtype=torch.long, device=self.generator.device)

    def _coefficients(self, grads: list[Tensor], groups: list[list[int]]) -> Tensor:
        gram = gram_matrices(grads, groups).to(torch.float64)
        follow_device(self, ("targets",), gram.device)  # (G, K, K)
        n_groups, k, _ = gram.shape
        if self.targets is None:
            self.targets = torch.zeros(n_groups, k, k, dtype=torch.float64, device=gram.device)
        if self.targets.shape != gram.shape:
            raise ValueError(
                f"GradVac was set up for {tuple(self.targets.shape)} groups x tasks; got {tuple(gram.shape)}"
            )
        order = self.draw_order(k).to(gram.device)
        self.last_order = order
        c = torch.eye(k, dtype=gram.dtype, device=gram.device).expand(n_groups, k, k).clone()
        norm_j_all = torch.diagonal(gram, dim1=-2, dim2=-1).clamp_min(0.0).sqrt()  # (G, K)
        rows = torch.arange(k, device=gram.device)
        for p in range(k - 1):
            j = order[:, p]  # (K,) partner of each task
            dots = c @ gram  # (G, K, K): g_i' . g_l
            dot_ij = dots[:, rows, j]  # (G, K)
            norm_i = (dots * c).sum(-1).clamp_min(0.0).sqrt()  # (G, K) ||g_i'||
            norm_j = norm_j_all[:, j]
            phi = safe_div(dot_ij, norm_i * norm_j)
            target = self.targets[:, rows, j]
            c[:, rows, j] += _correction(norm_i, norm_j, phi, target)
            self.targets[:, rows, j] = (1 - self.beta) * target + self.beta * phi
        return c

    def state_dict(self) -> dict[str, Any]:
        return {"targets": clone_state(self.targets), "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        check_state_keys(state, {"targets", "generator"}, "GradVac")
        self.targets = clone_state(state["targets"])
        self.generator.set_state(state["generator"])

    def label(self, short: bool = False) -> str:
        args = [] if self.beta == 0.01 else [f"beta={self.beta:g}"]
        args += [] if self.granularity == "tensor" else ["flat"]
        return "GradVac" + (f" ({', '.join(args)})" if args else "")

    def __repr__(self) -> str:
        gen = None if self._user_generator is None else f"<torch.Generator device={self.generator.device}>"
        return (f"GradVac(beta={self.beta!r}, granularity={self.granularity!r}, seed={self.seed!r}, "
                f"generator={gen})")


class GradVacAdjusted(CoefficientBalancer):
    """Target-anchored GradVac: only auxiliary gradients are corrected, only towards the target.

    As PCGrad (adjusted) is to PCGrad: for each auxiliary k with phi = cos(g_k, g_0) < phi_hat_k,
    g_k += w g_0 with eq. 4's w (so that cos(g_k', g_0) = phi_hat_k), then phi_hat_k <- (1 - beta)
    phi_hat_k + beta phi. The target's gradient is never changed and auxiliaries are never
    corrected against each other (their agreement does not matter to the target); no random
    order is needed. phi_hat starts at 0 (the first call is PCGrad adjusted). Summed.
    """

    name = "gradvac_adjusted"

    def __init__(self, beta: float = 0.01, granularity: str = "tensor") -> None:
        super().__init__()
        if not 0.0 <= beta <= 1.0:
            raise ValueError(f"beta must lie in [0, 1]; got {beta}")
        self.beta = float(beta)
        self.granularity = check_choice(granularity, GRANULARITIES, "granularity")
        self.targets: Tensor | None = None  # (G, K) phi_hat_k (entry 0 unused)

    def _coefficients(self, grads: list[Tensor], groups: list[list[int]]) -> Tensor:
        gram = gram_matrices(grads, groups).to(torch.float64)
        follow_device(self, ("targets",), gram.device)
        n_groups, k, _ = gram.shape
        if self.targets is None:
            self.targets = torch.zeros(n_groups, k, dtype=torch.float64, device=gram.device)
        if self.targets.shape != gram.shape[:2]:
            raise ValueError(f"GradVacAdjusted was set up for {tuple(self.targets.shape)} groups x tasks")
        norms = torch.diagonal(gram, dim1=-2, dim2=-1).clamp_min(0.0).sqrt()  # (G, K)
        phi = safe_div(gram[:, :, 0], norms * norms[:, :1])
        w = _correction(norms, norms[:, :1].expand_as(norms), phi, self.targets)
        w[:, 0] = 0.0
        self.targets = torch.cat([self.targets[:, :1], ((1 - self.beta) * self.targets + self.beta * phi)[:, 1:]], 1)
        c = torch.eye(k, dtype=gram.dtype, device=gram.device).expand(n_groups, k, k).clone()
        c[:, :, 0] += w
        return c

    def state_dict(self) -> dict[str, Any]:
        return {"targets": clone_state(self.targets)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        check_state_keys(state, {"targets"}, "GradVacAdjusted")
        self.targets = clone_state(state["targets"])

    def label(self, short: bool = False) -> str:
        args = ["adjusted"] + ([] if self.beta == 0.01 else [f"beta={self.beta:g}"])
        args += [] if self.granularity == "tensor" else ["flat"]
        return f"GradVac ({', '.join(args)})"

    def __repr__(self) -> str:
        return f"GradVacAdjusted(beta={self.beta!r}, granularity={self.granularity!r})"
