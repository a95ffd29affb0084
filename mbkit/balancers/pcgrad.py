"""PCGrad (Yu et al., NeurIPS 2020) and the study's auxiliary-only variant ("adjusted").

Both are computed in the K x K space of task gradients (`mbkit.balancers.gram`): every projected gradient
is a linear combination sum_l C[i, l] g_l of the original ones, and the dot products it needs are entries
of the Gram matrix g_i . g_l. A projection onto a gradient whose squared norm is 0 is skipped (no division
by zero).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..utils import make_generator
from .base import GRANULARITIES, REDUCTIONS, check_state_keys
from .gram import CoefficientBalancer, check_choice, gram_matrices, safe_div


def adjusted_coefficients(gram: Tensor) -> Tensor:
    """(G, K, K) coefficients of the study's variant: auxiliaries conflicting with the target are
    projected onto the target's normal plane, g_k <- g_k - (g_k . g_0 / ||g_0||^2) g_0 if g_k . g_0 < 0."""
    n_groups, k, _ = gram.shape
    dots = gram[:, :, 0]  # (G, K) g_k . g_0
    sq0 = gram[:, :1, 0].expand(n_groups, k)  # (G, K) ||g_0||^2
    coef = safe_div(dots, sq0, dots < 0)  # g_0 . g_0 >= 0: the target is never projected
    c = torch.eye(k, dtype=gram.dtype, device=gram.device).expand(n_groups, k, k).clone()
    c[:, :, 0] -= coef
    return c


def pcgrad_coefficients(gram: Tensor, order: Tensor) -> Tensor:
    """(G, K, K) coefficients of PCGrad (Yu et al. 2020, Algorithm 1).

    Task i is projected, in the order `order[i]` (K-1 other tasks), against each other task's
    original gradient g_j whenever the current projected gradient conflicts with it:
    g_i <- g_i - (g_i . g_j / ||g_j||^2) g_j if g_i . g_j < 0. All K tasks advance together.
    """
    n_groups, k, _ = gram.shape
    c = torch.eye(k, dtype=gram.dtype, device=gram.device).expand(n_groups, k, k).clone()
    sq = torch.diagonal(gram, dim1=-2, dim2=-1)  # (G, K)
    for p in range(k - 1):
        j = order[:, p]  # (K,) the partner of every task at this position
        dots = (c * gram[:, j, :]).sum(-1)  # (G, K) (sum_l C[i, l] g_l) . g_{j_i}
        coef = safe_div(dots, sq[:, j], dots < 0)
        c = c.scatter_add(2, j.view(1, k, 1).expand(n_groups, k, 1), -coef.unsqueeze(-1))
    return c


class PCGradAdjusted(CoefficientBalancer):
    """The study's PCGrad for auxiliary tasks: only auxiliaries are projected, only against the target.

    Each auxiliary gradient g_k with g_k . g_0 < 0 is replaced by its projection onto the normal
    plane of the target gradient g_0, g_k - (g_k . g_0 / ||g_0||^2) g_0; the target's gradient is
    never changed; the results are summed. Per shared tensor by default (`granularity="tensor"`),
    or over the whole concatenated shared vector (`"flat"`). If ||g_0|| = 0 nothing is projected.

    The authors' released version of this never projects anything: it aliases the target's
    gradient buffer, which is overwritten before the projections read it. This is the intended
    method, not that behaviour. `last_weights` is None (projections are not scalar weights).
    """

    name = "pcgrad_adjusted"

    def __init__(self, granularity: str = "tensor") -> None:
        super().__init__()
        self.granularity = check_choice(granularity, GRANULARITIES, "granularity")

    def _coefficients(self, grads: list[Tensor], groups: list[list[int]]) -> Tensor:
        return adjusted_coefficients(gram_matrices(grads, groups))

    def label(self, short: bool = False) -> str:
        return "PCGrad (adjusted)" if self.granularity == "tensor" else "PCGrad (adjusted, flat)"

    def __repr__(self) -> str:
        return f"PCGradAdjusted(granularity={self.granularity!r})"


class PCGrad(CoefficientBalancer):
    """PCGrad, "gradient surgery" (Yu et al., NeurIPS 2020, Algorithm 1).

    Every task's gradient g_i is projected, sequentially, against every other task's original
    gradient g_j (j != i) in a random order -- a fresh permutation per task per call -- whenever
    they conflict: g_i <- g_i - (g_i . g_j / ||g_j||^2) g_j if g_i . g_j < 0. The projected
    gradients are then summed (`reduction="sum"`, Yu et al.) or averaged (`"mean"`, the default of
    the popular PyTorch port, whose "sum" option is silently ignored). `granularity="flat"`
    (default, as the original) projects the whole concatenated shared vector; `"tensor"` does it
    per shared tensor with the same task orders.

    The orders come from `generator` (a seeded CPU generator from `seed` when None; pass a CUDA
    generator to draw them on the GPU); the last ones are kept in `last_order` (K, K-1).
    `last_weights` is None (projections are not scalar weights).
    """

    name = "pcgrad"

    def __init__(
        self,
        reduction: str = "sum",
        granularity: str = "flat",
        seed: int = 0,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.reduction = check_choice(reduction, REDUCTIONS, "reduction")
        self.granularity = check_choice(granularity, GRANULARITIES, "granularity")
        self.seed = int(seed)
        self._user_generator = generator
        self.generator = generator if generator is not None else make_generator(self.seed, "cpu")
        self.last_order: Tensor | None = None
        self.step = 0

    def draw_order(self, k: int) -> Tensor:
        """(K, K-1): row i is a uniformly random permutation of the tasks other than i."""
        noise = torch.rand(k, k - 1, generator=self.generator, device=self.generator.device)
        rank = noise.argsort(dim=1)  # a permutation of 0..K-2 per row
        return rank + (rank >= torch.arange(k, device=rank.device).unsqueeze(1)).long()  # skip task i

    def _coefficients(self, grads: list[Tensor], groups: list[list[int]]) -> Tensor:
        k = grads[0].shape[0]
        self.step += 1
        order = self.draw_order(k)
        self.last_order = order
        device = grads[0].device
        if order.device != device:
            if order.device.type == "cpu" and device.type == "cuda":
                order = order.pin_memory().to(device, non_blocking=True)  # no host sync
            else:
                order = order.to(device)
        return pcgrad_coefficients(gram_matrices(grads, groups), order)

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step, "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        check_state_keys(state, {"step", "generator"}, "PCGrad")
        self.generator.set_state(state["generator"])
        self.step = int(state["step"])

    def label(self, short: bool = False) -> str:
        args = []
        if self.reduction != "sum":
            args.append(self.reduction)
        if self.granularity != "flat":
            args.append("per tensor")
        return "PCGrad" + (f" ({', '.join(args)})" if args else "")

    def __repr__(self) -> str:
        gen = None if self._user_generator is None else f"<torch.Generator device={self.generator.device}>"
        return (
            f"PCGrad(reduction={self.reduction!r}, granularity={self.granularity!r}, "
            f"seed={self.seed!r}, generator={gen})"
        )
