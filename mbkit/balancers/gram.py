"""The machinery that every Gram-based method shares: the K x K Gram matrix of the task gradients, the
coefficients computed from it, and small exact solvers on it, batched over groups of tensors (G, K, K).

Every gradient-combination method here (PCGrad and its adjusted form, MGDA, gradient cosine, GradVac,
CAGrad, GradCraft) picks weights or coefficients from the Gram matrix alone (norms, cosines, dot
products), then applies them to the gradients: every combined gradient is sum_l C[i, l] g_l. So they work
unchanged on the compact rows of an embedding table, and their K x K arithmetic runs without host syncs.
A call computes one Gram matrix per group of tensors (one group per tensor, or one group for the whole
flattened shared vector) and applies the coefficients with one (K, K) @ (K, N) product per tensor
(`transform`) or, for the combined gradient, one (K,) @ (K, N) product with the column sums of C.
The Gram matrix is computed on gradients scaled by a power of two (the group's largest |entry|), so
projections are scale invariant and do not underflow at tiny gradient scales.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor

from .base import GradientBalancer, check_grads, weighted_sum


def check_choice(value: str, choices: tuple[str, ...], what: str) -> str:
    if value not in choices:
        raise ValueError(f"{what} must be one of {choices}; got {value!r}")
    return value


def groups_of(n_tensors: int, granularity: str) -> list[list[int]]:
    return [list(range(n_tensors))] if granularity == "flat" else [[j] for j in range(n_tensors)]


def gram_matrices(grads: Sequence[Tensor], groups: list[list[int]]) -> Tensor:
    """(G, K, K) Gram matrices g_i . g_l over each group's tensors, each group scaled by 2^-e
    (computed in float32 at least).

    2^e is the power of two just above the group's largest |entry| (clamped to the float range),
    which leaves every projection coefficient unchanged but keeps the products from underflowing.
    """
    k = grads[0].shape[0]
    flats = [g.reshape(k, -1) for g in grads]
    out = []
    for group in groups:
        members = [flats[j] for j in group if flats[j].shape[1] > 0]
        if not members:
            ref = grads[group[0]]
            acc = torch.promote_types(ref.dtype, torch.float32)
            out.append(torch.zeros(k, k, dtype=acc, device=ref.device))
            continue
        acc = torch.promote_types(members[0].dtype, torch.float32)  # half precision: accumulate in fp32
        extremes = torch.stack([torch.stack(torch.aminmax(f)) for f in members]).to(acc)  # (M, 2) min, max
        amax = torch.maximum(-extremes[:, 0], extremes[:, 1]).amax()  # largest |entry| of the group
        _, exponent = torch.frexp(amax)
        limit = int(math.log2(torch.finfo(acc).max)) - 1  # keep 2^-e finite
        scale = torch.ldexp(torch.ones_like(amax), (-exponent).clamp(-limit, limit))
        gram = torch.zeros(k, k, dtype=acc, device=members[0].device)
        for f in members:
            fs = f.to(acc) * scale
            gram = gram + fs @ fs.T
        out.append(gram)
    return torch.stack(out)


def safe_div(num: Tensor, den: Tensor, where: Tensor | None = None) -> Tensor:
    """num / den where den > 0 (and `where`, if given), else 0: no division by zero, no host sync. For the
    nonnegative denominators of this module (norms, squared norms, their products)."""
    ok = den > 0 if where is None else where & (den > 0)
    return torch.where(ok, num / torch.where(ok, den, torch.ones_like(den)), torch.zeros_like(num))


def apply_coefficients(grads: Sequence[Tensor], coefficients: Tensor, groups: list[list[int]]) -> list[Tensor]:
    """Per-task gradients sum_l C[i, l] g_l for every tensor, with its group's coefficients."""
    out: list[Tensor | None] = [None] * len(grads)
    for gi, group in enumerate(groups):
        for j in group:
            g = grads[j]
            out[j] = (coefficients[gi].to(g.dtype) @ g.reshape(g.shape[0], -1)).view(g.shape)
    return out  # type: ignore[return-value]


def combine_coefficients(
    grads: Sequence[Tensor], coefficients: Tensor, groups: list[list[int]], reduction: str
) -> list[Tensor]:
    """The reduced gradient sum_i sum_l C[i, l] g_l (or its mean over i) in one pass per tensor."""
    k = coefficients.shape[-1]
    weights = coefficients.sum(dim=-2) if reduction == "sum" else coefficients.sum(dim=-2) / k  # (G, K)
    out: list[Tensor | None] = [None] * len(grads)
    for gi, group in enumerate(groups):
        for j in group:
            out[j] = weighted_sum(weights[gi], grads[j])
    return out  # type: ignore[return-value]


def diagonal_weights(coefficients: Tensor, groups: Sequence[Sequence[int]], grads: Sequence[Tensor]) -> list[Tensor]:
    """Per tensor, the (K,) task weights of diagonal coefficient matrices (G, K, K), in the tensor's dtype."""
    out: list[Tensor | None] = [None] * len(grads)
    for gi, group in enumerate(groups):
        for j in group:
            out[j] = torch.diagonal(coefficients[gi]).to(grads[j].dtype)
    return out  # type: ignore[return-value]


class CoefficientBalancer(GradientBalancer):
    """Base of the methods that combine task gradients through the Gram matrix: a subclass computes the
    coefficients C (G, K, K) of each call from the gradients (`_coefficients`), which are then applied per
    task (`transform`: sum_l C[i, l] g_l) or summed over tasks in one pass per tensor (`__call__`)."""

    granularity: str = "tensor"

    def __init__(self) -> None:
        super().__init__()
        self.last_coefficients: Tensor | None = None  # (G, K, K) of the last call

    def _coefficients(self, grads: list[Tensor], groups: list[list[int]]) -> Tensor:
        raise NotImplementedError

    def _prepare(self, grads: Sequence[Tensor]) -> tuple[list[Tensor], list[list[int]], Tensor]:
        grads, _ = check_grads(grads)
        groups = groups_of(len(grads), self.granularity)
        coefficients = self._coefficients(grads, groups)
        self.last_coefficients = coefficients
        self.last_weights = None
        return grads, groups, coefficients

    def transform(self, grads: Sequence[Tensor]) -> list[Tensor]:
        grads, groups, coefficients = self._prepare(grads)
        return apply_coefficients(grads, coefficients, groups)

    def __call__(self, grads: Sequence[Tensor]) -> list[Tensor]:
        grads, groups, coefficients = self._prepare(grads)
        return combine_coefficients(grads, coefficients, groups, self.reduction)


# Small exact solvers on the Gram matrix (MGDA's min-norm point, CAGrad's dual)


def subsets(k: int, device: torch.device | str = "cpu") -> Tensor:
    """(2^K - 1, K) bool masks of every nonempty subset of the K tasks."""
    codes = torch.arange(1, 2**k, device=device)
    return (codes.unsqueeze(1) >> torch.arange(k, device=device)) & 1 == 1


def restrict(gram: Tensor, masks: Tensor) -> Tensor:
    """(G, S, K, K): gram on support x support of each mask, the identity on the other rows/columns."""
    both = masks.unsqueeze(-1) & masks.unsqueeze(-2)  # (S, K, K)
    eye = torch.eye(gram.shape[-1], dtype=torch.bool, device=gram.device)
    outside = eye & ~masks.unsqueeze(-1)
    return torch.where(both, gram.unsqueeze(1), outside.to(gram.dtype))


def quadratic(w: Tensor, gram: Tensor) -> Tensor:
    """w^T G w for w (G, S, K) against gram (G, K, K) -> (G, S)."""
    return torch.einsum("gsk,gkl,gsl->gs", w, gram, w)


def pick(candidates: Tensor, objective: Tensor, feasible: Tensor) -> Tensor:
    """Per group, the candidate (G, S, K) of least objective (G, S) among the feasible ones."""
    objective = torch.where(feasible & torch.isfinite(objective), objective, torch.inf)
    best = objective.argmin(dim=-1)  # (G,)
    return candidates.gather(1, best.view(-1, 1, 1).expand(-1, 1, candidates.shape[-1])).squeeze(1)


def on_simplex(w: Tensor, tol: float = 1e-9) -> tuple[Tensor, Tensor]:
    """(clamped and renormalised w, mask of candidates that were nonnegative up to `tol` and finite)."""
    ok = torch.isfinite(w).all(-1) & (w >= -tol).all(-1)
    w = torch.where(torch.isfinite(w), w, 0.0).clamp_min(0.0)
    total = w.sum(-1, keepdim=True)
    ok = ok & (total.squeeze(-1) > 0)
    return w / torch.where(total > 0, total, 1.0), ok


def solve_pd(a: Tensor, b: Tensor) -> Tensor:
    """x = a^-1 b for a batch of small symmetric positive-definite a (..., n, n), b (..., n, m).

    Gauss-Jordan without pivoting (positive-definite pivots need none) in elementwise ops: LAPACK's
    batched solvers spread thousands of 4 x 4 systems over OpenMP threads, which costs milliseconds.
    A singular system gives non-finite entries, which the callers treat as infeasible.
    """
    a, b = a.clone(), b.clone()
    for i in range(a.shape[-1]):
        pivot = a[..., i : i + 1, i : i + 1]  # (..., 1, 1)
        row_a, row_b = a[..., i : i + 1, :] / pivot, b[..., i : i + 1, :] / pivot
        factor = a[..., :, i : i + 1].clone()
        factor[..., i, :] = 0.0
        a = a - factor * row_a
        b = b - factor * row_b
        a[..., i : i + 1, :] = row_a
        b[..., i : i + 1, :] = row_b
    return b


def min_norm_weights(gram: Tensor) -> Tensor:
    """(G, K) convex weights alpha minimising ||sum_k alpha_k g_k||^2 = alpha^T G alpha over the simplex.

    Exact for small K. On the simplex alpha^T G alpha = alpha^T H alpha - t with H = G + t 1 1^T
    (t > 0: every g_k lifted by a coordinate sqrt(t)), and H_SS is positive definite whenever the
    gradients of S are affinely independent -- as on the support of the minimiser -- even if G_SS
    is singular (e.g. opposite gradients, whose min-norm point is 0). On its support the minimiser
    is alpha_S = H_SS^-1 1 / (1^T H_SS^-1 1); every support is solved at once and the feasible
    (nonnegative) candidate of least norm wins. The vertices are always candidates.
    """
    gram = gram.to(torch.float64)
    n_groups, k, _ = gram.shape
    masks = subsets(k, gram.device)  # (S, K)
    m = masks.to(gram.dtype)
    t = torch.diagonal(gram, dim1=-2, dim2=-1).mean(-1)  # (G,) a shift on the scale of the gradients
    lifted = gram + torch.where(t > 0, t, 1.0).view(-1, 1, 1)
    p = solve_pd(restrict(lifted, masks), m.expand(n_groups, -1, -1).unsqueeze(-1)).squeeze(-1) * m  # (G, S, K)
    w, ok = on_simplex(p / p.sum(-1, keepdim=True))
    eye = torch.eye(k, dtype=gram.dtype, device=gram.device).expand(n_groups, k, k)
    candidates = torch.cat([w, eye], dim=1)
    feasible = torch.cat([ok, torch.ones(n_groups, k, dtype=torch.bool, device=gram.device)], dim=1)
    return pick(candidates, quadratic(candidates, gram), feasible)
