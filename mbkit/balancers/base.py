"""The balancer interface: per-task gradients in, one combined gradient per shared tensor out.

A balancer sees, for every shared parameter tensor j, the stacked per-task gradients
`grads[j]` of shape (K, *shape_j) with row 0 = the target task. The tensors may be the
compact rows of an embedding table that a batch touched: every method here only uses norms,
dot products and linear combinations over a whole tensor (or over all shared tensors at once),
which dropping all-zero rows leaves unchanged.

Each method is a per-task `transform` (rescale / project each task's gradient, advancing the
method's state) followed by a `reduce` over tasks (sum, or mean where asked). `chain(a, b)`
feeds a's transformed per-task gradients to b's transform and uses b's reduction.

Extension for methods that need the losses or epoch statistics (uncertainty weighting, DWA,
GradNorm). There is no second class hierarchy: two optional, duck-typed members say it all.

  * `uses_losses = True` (class attribute): the training loop calls
    `balancer(grads, losses=losses)` -- and a chain passes `losses` on to `transform` -- where
    `losses` is a detached 1-D tensor of the K per-task mean losses of the batch, target first,
    on the gradients' device. Balancers without the attribute are called as `balancer(grads)`.
  * `end_epoch()` (optional method): called by the loop after every training epoch, after the
    last step and before the checkpoint of that epoch is written (DWA closes its epoch average).
  * `uses_losses_after_step = True` with `after_step(losses)` (FAMO): after the optimizers' step the
    loop evaluates the same batch again without gradients and hands the balancer its (K,) losses.
  * `level = "representation"` (class attribute; default "parameters"): the balancer is handed one
    tensor, the per-task gradients dL_k/dh (K, B, rep_dim) of the shared representation, and its
    combined dL/dh is back-propagated through the shared bottom (`GradEngine.representation`).
  * `scalar_weights = True` (class attribute): the combination is sum_k w_k g_k with one weight per task
    for every tensor, and the weights do not depend on the gradients (loss weighting). Such a method gives
    the same combination when handed dL_k/dh, so the loop takes the cheap representation path for it
    (`mbkit.train.step_path`); its result differs from the parameter path only in float rounding.
  * All state -- learnable task weights (uncertainty log-variances, GradNorm weights), the
    moments and step count of the small Adam that updates them, loss histories -- lives in the
    balancer as tensors and round-trips through `state_dict()` / `load_state_dict()`, so a
    checkpoint taken after `end_epoch()` resumes bit for bit. Learnable weights are updated
    inside the call with closed-form gradients (e.g. d/ds of exp(-s) L + s; GradNorm's
    d/dw_k |w_k n_k - target_k|), never through autograd or the model's optimizer: a balancer
    stays a pure function of (grads, losses, state), and the model's optimizers see only model
    parameters. The weights used in a step are those before that step's update (as when the
    weights are trained jointly with the model).
"""

from __future__ import annotations

from typing import Any, Protocol, Sequence, runtime_checkable

import torch
from torch import Tensor

REDUCTIONS: tuple[str, ...] = ("sum", "mean")
GRANULARITIES: tuple[str, ...] = ("tensor", "flat")


@runtime_checkable
class Balancer(Protocol):
    """What the training loop relies on; `transform`/`reduce` make methods chainable."""

    reduction: str
    last_weights: list[Tensor | None] | None

    def __call__(self, grads: Sequence[Tensor]) -> list[Tensor]: ...

    def transform(self, grads: Sequence[Tensor]) -> list[Tensor]: ...

    def reduce(self, grads: Sequence[Tensor]) -> list[Tensor]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def check_grads(grads: Sequence[Tensor]) -> tuple[list[Tensor], int]:
    """Validate the stacked per-task gradients and return them as a list with the task count K."""
    if isinstance(grads, Tensor) or not isinstance(grads, Sequence) or len(grads) == 0:
        raise ValueError(
            "grads must be a non-empty list with one (K, *param_shape) tensor per shared parameter; "
            f"got {type(grads).__name__}"
        )
    grads = list(grads)
    for j, g in enumerate(grads):
        if not isinstance(g, Tensor) or g.dim() < 1 or g.shape[0] < 1:
            what = tuple(g.shape) if isinstance(g, Tensor) else type(g).__name__
            raise ValueError(f"grads[{j}] must be a tensor of shape (K, *param_shape) with K >= 1; got {what}")
        if not g.is_floating_point():
            raise ValueError(f"grads[{j}] must be a floating-point tensor; got dtype {g.dtype}")
    k = grads[0].shape[0]
    bad = [j for j, g in enumerate(grads) if g.shape[0] != k]
    if bad:
        raise ValueError(
            f"every grads[j] needs the same number of tasks K in dim 0 (grads[0] has K={k}); "
            f"tensors {bad} differ: stack all tasks, target first, for every shared tensor"
        )
    return grads, k


def task_view(x: Tensor, like: Tensor) -> Tensor:
    """Reshape a per-task vector (K,) so that it broadcasts against `like` (K, *shape)."""
    return x.view((x.shape[0],) + (1,) * (like.dim() - 1))


def weighted_sum(weights: Tensor, g: Tensor) -> Tensor:
    """sum_k weights[k] * g[k] for g (K, *shape) in one pass: a (K,) @ (K, N) product -> (*shape)."""
    return (weights.to(g.dtype) @ g.reshape(g.shape[0], -1)).view(g.shape[1:])


def reduction_weights(reduction: str, k: int, like: Tensor) -> Tensor:
    """(K,) weights of a plain reduction: ones for "sum", 1/K for "mean"."""
    return torch.full((k,), 1.0 if reduction == "sum" else 1.0 / k, dtype=like.dtype, device=like.device)


def check_losses(losses: Tensor | None, k: int, who: str) -> Tensor:
    """Validate the (K,) per-task losses a loss-based balancer receives (see the module docstring)."""
    if losses is None:
        raise ValueError(f"{who} weights tasks by their losses: call it as balancer(grads, losses=losses)")
    if not isinstance(losses, Tensor) or losses.shape != (k,):
        what = tuple(losses.shape) if isinstance(losses, Tensor) else type(losses).__name__
        raise ValueError(f"losses must be a 1-D tensor of the K={k} per-task mean losses, target first; got {what}")
    return losses.detach()


def adam_update(param: Tensor, grad: Tensor, state: dict[str, Any], lr: float,
                betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
    """One Adam step (Kingma & Ba 2015, Algorithm 1) on a balancer's own weights, in place.

    `state` holds "step" (int), "exp_avg" and "exp_avg_sq" (tensors like `param`), created on first use.
    """
    if not state:
        state.update(step=0, exp_avg=torch.zeros_like(param), exp_avg_sq=torch.zeros_like(param))
    state["step"] += 1
    b1, b2 = betas
    state["exp_avg"].lerp_(grad, 1 - b1)
    state["exp_avg_sq"].mul_(b2).addcmul_(grad, grad, value=1 - b2)
    denom = (state["exp_avg_sq"] / (1 - b2 ** state["step"])).sqrt_().add_(eps)
    param.addcdiv_(state["exp_avg"], denom, value=-lr / (1 - b1 ** state["step"]))


def clone_state(state: Any) -> Any:
    """A deep copy of nested dicts / lists of tensors and numbers (state_dict()/load_state_dict())."""
    if isinstance(state, Tensor):
        return state.detach().clone()
    if isinstance(state, dict):
        return {k: clone_state(v) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(clone_state(v) for v in state)
    return state


def check_state_keys(state: dict[str, Any], keys: set[str], who: str) -> None:
    if not isinstance(state, dict) or set(state) != keys:
        got = sorted(state) if isinstance(state, dict) else type(state).__name__
        raise ValueError(f"{who} state needs keys {sorted(keys)}; got {got} (was it saved by another balancer?)")


class GradientBalancer:
    """Base class: `__call__` = `reduce(transform(grads))`; subclasses override `transform` and state.

    A subclass whose combined gradient is a weighted sum of the input gradients may override
    `__call__` to compute it in one pass over each tensor; it equals `reduce(transform(grads))`
    up to float rounding.
    """

    name: str = "balancer"  # registry name
    reduction: str = "sum"

    def __init__(self) -> None:
        self.last_weights: list[Tensor | None] | None = None

    def transform(self, grads: Sequence[Tensor]) -> list[Tensor]:
        """Per-task gradients after this method (list of (K, *shape)); advances the method's state."""
        raise NotImplementedError

    def reduce(self, grads: Sequence[Tensor]) -> list[Tensor]:
        """Combine the K transformed task gradients of each tensor: (K, *shape) -> (*shape)."""
        return [weighted_sum(reduction_weights(self.reduction, g.shape[0], g), g) for g in grads]

    def __call__(self, grads: Sequence[Tensor]) -> list[Tensor]:
        return self.reduce(self.transform(grads))

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            raise ValueError(f"{type(self).__name__} is stateless but got state keys {sorted(state)}")

    def label(self, short: bool = False) -> str:
        """Label for plots and tables; `short=True` shows only non-default arguments (used inside chains)."""
        raise NotImplementedError

    def __str__(self) -> str:
        return self.label()


def follow_device(balancer: Any, names: Sequence[str], device: torch.device) -> None:
    """Move the tensors of a balancer's state attributes (tensors, or dicts of them) onto `device`.

    A checkpoint loads on the CPU; the balancer's state must follow the gradients to the GPU.
    """
    for name in names:
        value = getattr(balancer, name)
        if isinstance(value, Tensor) and value.device != device:
            setattr(balancer, name, value.to(device))
        elif isinstance(value, dict):
            setattr(balancer, name, {k: v.to(device) if isinstance(v, Tensor) else v for k, v in value.items()})


class LossWeighting(GradientBalancer):
    """Base of the methods that weigh each task by one number per step, set from the batch's losses
    (uncertainty weighting, DWA, GradNorm): the combined gradient is sum_k w_k g_k.

    A subclass implements `_weights(grads, k, losses)`, which validates the losses, advances its state, sets
    `last_weights` (one (K,) tensor per shared tensor) and returns the (K,) weights of this step.
    """

    uses_losses = True

    def _weights(self, grads: list[Tensor], k: int, losses: Tensor | None) -> Tensor:
        raise NotImplementedError

    def transform(self, grads: Sequence[Tensor], losses: Tensor | None = None) -> list[Tensor]:
        grads, k = check_grads(grads)
        self._weights(grads, k, losses)
        return [g * task_view(w, g) for g, w in zip(grads, self.last_weights)]

    def __call__(self, grads: Sequence[Tensor], losses: Tensor | None = None) -> list[Tensor]:
        grads, k = check_grads(grads)
        self._weights(grads, k, losses)
        return [weighted_sum(w, g) for w, g in zip(self.last_weights, grads)]
