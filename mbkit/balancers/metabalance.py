"""MetaBalance (He et al., WWW 2022): rescale each auxiliary gradient towards the target's magnitude."""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor

from .base import GradientBalancer, check_grads, check_state_keys, task_view, weighted_sum

STRATEGIES: tuple[str, ...] = ("both", "reduce", "enlarge")


class MetaBalance(GradientBalancer):
    """MetaBalance, per shared tensor, as in Algorithm 1 of He et al. (2022), "MetaBalance:
    Improving Multi-Task Recommendations via Adapting Gradient Magnitudes of Auxiliary Tasks"
    (arXiv:2203.06801), and its released code (facebookresearch/MetaBalance, metabalance.py).

    For every shared parameter tensor and task k (k = 0 is the target), with g_k the task's
    gradient of that tensor and ||.|| the Frobenius norm of the whole tensor:

        m_k <- beta * m_k + (1 - beta) * ||g_k||            (moving average of the gradient
                                                            magnitudes; zero start, no bias correction)
        g_k <- r * (m_0 / m_k) * g_k + (1 - r) * g_k          (auxiliary k >= 1, relax factor r:
                                                            magnitude proximity to the target)
        g   =  g_0 + sum_k g_k

    r = 0 is the plain sum, r = 1 gives every auxiliary the target's (averaged) magnitude (the
    original code rejects r = 1; it is well defined and allowed here).
    `strategy` selects the paper's three strategies: "both" rescales every auxiliary gradient,
    "reduce" only those with m_k > m_0, "enlarge" only those with m_k < m_0. The target's
    average m_0 is the one already updated this iteration, and the arithmetic is the original's
    `(m0 * g / mk) * r + g * (1 - r)` summed in task order, so the moving averages and the
    auxiliary terms of `transform` equal the original bit for bit. The target's own gradient is
    passed through untouched; the original also pushes it through that formula (with m_k = m_0),
    the identity up to one float32 rounding. Calling the balancer computes sum_k w_k g_k in one
    pass per tensor (w = `last_weights`), so combined gradients agree with the original to ~1 ulp.

    Edge cases (the original returns NaN or crashes; here they are defined):
      * a zero moving average never divides: a task with m_k = 0 (no gradient so far, e.g. an
        all-zero gradient at the first iteration) contributes its gradient unscaled -- which is
        zero, since m_k = 0 implies ||g_k|| = 0 this iteration (or a gradient so tiny that its
        norm underflows to 0);
      * a task that does not reach a tensor (an all-zero row, e.g. a missing gradient filled with
        zeros) contributes nothing for that task; its moving average decays as in the original
        (its norm this iteration is 0);
      * if the target's moving average is 0 for a tensor (the target has never reached it) there
        is no reference magnitude: the auxiliaries of that tensor are left unscaled (plain sum).
        The bare formula would give (1 - r) * g_k there, an artefact rather than a balance.

    `last_weights[j]` is the (K,) effective scale per task for tensor j: r * m_0 / m_k + 1 - r
    where rescaled, else 1 (always 1 for the target). m_0 / m_k is capped at the dtype's largest
    finite value (reached only when m_k has decayed into subnormal numbers), so weights are finite.

    Args:
        relax_factor: r in [0, 1]; 0.7 is the original's default.
        beta: moving-average factor in [0, 1); 0.9 is the original's default.
        strategy: "both" (default, the original code), "reduce" or "enlarge".
    """

    name = "metabalance"

    def __init__(self, relax_factor: float = 0.7, beta: float = 0.9, strategy: str = "both") -> None:
        super().__init__()
        if not 0.0 <= float(relax_factor) <= 1.0:
            raise ValueError(f"relax_factor must lie in [0, 1]; got {relax_factor}")
        if not 0.0 <= float(beta) < 1.0:
            raise ValueError(f"beta must lie in [0, 1); got {beta}")
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}; got {strategy!r}")
        self.relax_factor = float(relax_factor)
        self.beta = float(beta)
        self.strategy = strategy
        self.moving_averages: list[Tensor] | None = None  # per tensor: (K,) m_k
        self.step = 0

    def _advance(self, grads: Sequence[Tensor]) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        """Update the moving averages with this iteration's norms; return the checked grads and,
        per tensor, the mask of rescaled tasks and the safe divisors m_k (1 where not rescaled)."""
        grads, k = check_grads(grads)
        if self.moving_averages is None:
            self.moving_averages = [torch.zeros(k, dtype=g.dtype, device=g.device) for g in grads]
        elif len(self.moving_averages) != len(grads) or self.moving_averages[0].shape[0] != k:
            raise ValueError(
                f"MetaBalance holds moving averages for {len(self.moving_averages)} tensors and "
                f"K={self.moving_averages[0].shape[0]} tasks but got {len(grads)} tensors and K={k}; "
                "use one balancer per model and task set (or a fresh one)"
            )
        r, beta = self.relax_factor, self.beta
        masks, divisors, weights, averages = [], [], [], []
        for g, m in zip(grads, self.moving_averages):
            norms = torch.linalg.vector_norm(g.reshape(k, -1), dim=1)  # (K,) Frobenius norm per task
            m = m.to(device=g.device) * beta + (1 - beta) * norms  # (K,)
            m0 = m[0]
            rescale = (m > 0) & (m0 > 0)  # never divide by 0; no reference magnitude if m0 = 0
            if self.strategy == "reduce":
                rescale &= m > m0
            elif self.strategy == "enlarge":
                rescale &= m < m0
            rescale[0] = False  # the target is never rescaled
            mk = torch.where(rescale, m, torch.ones_like(m))
            ratio = (m0 / mk).clamp(max=torch.finfo(m.dtype).max)  # m_k subnormal: no inf weight
            masks.append(rescale)
            divisors.append(mk)
            weights.append(torch.where(rescale, ratio * r + (1 - r), torch.ones_like(m)))
            averages.append(m)
        self.moving_averages = averages
        self.last_weights = weights
        self.step += 1
        return grads, masks, divisors

    def transform(self, grads: Sequence[Tensor]) -> list[Tensor]:
        """Per-task terms with the original's arithmetic, `(m0 * g / mk) * r + g * (1 - r)`."""
        grads, masks, divisors = self._advance(grads)
        r = self.relax_factor
        out = []
        for g, rescale, mk, m in zip(grads, masks, divisors, self.moving_averages):
            scaled = (m[0] * g).div_(task_view(mk, g)).mul_(r).add_(g * (1 - r))  # (m0*g/mk)*r + g*(1-r)
            out.append(torch.where(task_view(rescale, g), scaled, g))
        return out

    def __call__(self, grads: Sequence[Tensor]) -> list[Tensor]:
        """The combined gradient sum_k w_k g_k in one pass per tensor (w = `last_weights`)."""
        grads, _, _ = self._advance(grads)
        return [weighted_sum(w, g) for w, g in zip(self.last_weights, grads)]

    def state_dict(self) -> dict[str, Any]:
        averages = None if self.moving_averages is None else [m.detach().clone() for m in self.moving_averages]
        return {"step": self.step, "moving_averages": averages}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        check_state_keys(state, {"step", "moving_averages"}, "MetaBalance")
        averages = state["moving_averages"]
        self.moving_averages = None if averages is None else [m.detach().clone() for m in averages]
        self.step = int(state["step"])

    def label(self, short: bool = False) -> str:
        args = [] if short and self.relax_factor == 0.7 else [f"r={self.relax_factor:g}"]
        if self.beta != 0.9:
            args.append(f"beta={self.beta:g}")
        if self.strategy != "both":
            args.append(self.strategy)
        return "MetaBalance" + (f" ({', '.join(args)})" if args else "")

    def __repr__(self) -> str:
        return f"MetaBalance(relax_factor={self.relax_factor!r}, beta={self.beta!r}, strategy={self.strategy!r})"


class RepresentationMetaBalance(MetaBalance):
    """MetaBalance on the shared representation h instead of the shared parameters (`level`).

    The same moving averages, relax factor and strategies, applied to one tensor: each task's gradient
    dL_k/dh (B, rep_dim) of the batch's shared representation, whose Frobenius norms over the batch give
    the m_k. The combined dL/dh = sum_k w_k dL_k/dh then flows through the shared bottom in one backward, so
    every shared parameter receives sum_k w_k dL_k/dtheta with one weight per task for the whole bottom
    (instead of one per tensor) and the step costs about what a plain sum does. This is the level at which
    MultiBalance (He et al., 2024), MetaBalance's successor by the same first author, balances; the training
    loop hands such a balancer `[dh]` (see `mbkit.grads.GradEngine.representation`).
    """

    name = "metabalance_rep"
    level = "representation"

    def label(self, short: bool = False) -> str:
        return super().label(short).replace("MetaBalance", "MetaBalance on h", 1)

    def __repr__(self) -> str:
        return "Representation" + super().__repr__()
