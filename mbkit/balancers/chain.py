"""Composition of balancers, e.g. MetaBalance then PCGrad as in the follow-up study."""

from __future__ import annotations

from typing import Any, Sequence

from torch import Tensor

from .base import GradientBalancer, check_grads


class Chain(GradientBalancer):
    """`Chain(a, b)`: b's transform applied to a's transformed per-task gradients, then b's reduction.

    State is that of every member; `last_weights` is the product of the members' per-task weights
    when all of them have scalar weights, else None (e.g. when PCGrad takes part). A chain uses the
    losses if a member does (`uses_losses`): it passes them to those members only; `end_epoch()`
    and `after_step(losses)` (`uses_losses_after_step`) reach every member that has them.
    """

    name = "chain"

    def __init__(self, *balancers: GradientBalancer) -> None:
        super().__init__()
        if len(balancers) < 2:
            raise ValueError(f"a chain needs at least two balancers; got {len(balancers)}")
        for b in balancers:
            if not (callable(getattr(b, "transform", None)) and callable(getattr(b, "reduce", None))):
                raise ValueError(f"chain members need transform() and reduce(); {b!r} has not")
        self.balancers: tuple[GradientBalancer, ...] = tuple(balancers)
        self.reduction = self.balancers[-1].reduction
        self.uses_losses = any(getattr(b, "uses_losses", False) for b in self.balancers)
        self.uses_losses_after_step = any(getattr(b, "uses_losses_after_step", False) for b in self.balancers)
        self.scalar_weights = all(getattr(b, "scalar_weights", False) for b in self.balancers)
        # loss weights act alike on either level; the other members must agree on theirs
        levels = {getattr(b, "level", "parameters") for b in self.balancers
                  if not getattr(b, "scalar_weights", False)} or {"parameters"}
        if len(levels) > 1:
            raise ValueError("a chain's members must act on the same gradients; "
                             f"{' + '.join(str(b) for b in self.balancers)} mixes the shared parameters' gradients "
                             "with the representation's (metabalance_rep); chain it with loss-weighting methods only")
        self.level = levels.pop()

    def _run(self, grads: Sequence[Tensor], combine: bool, losses: Tensor | None = None) -> list[Tensor]:
        grads, _ = check_grads(grads)
        weights: list[Tensor | None] | None = None
        for i, b in enumerate(self.balancers):
            last = i == len(self.balancers) - 1
            kw = {"losses": losses} if getattr(b, "uses_losses", False) else {}
            grads = b(grads, **kw) if last and combine else b.transform(grads, **kw)
            w = b.last_weights
            if i == 0:
                weights = None if w is None else list(w)
            elif weights is not None and w is not None:
                weights = [None if a is None or c is None else a * c for a, c in zip(weights, w)]
            else:
                weights = None
        self.last_weights = weights
        return grads

    def transform(self, grads: Sequence[Tensor], losses: Tensor | None = None) -> list[Tensor]:
        return self._run(grads, combine=False, losses=losses)

    def __call__(self, grads: Sequence[Tensor], losses: Tensor | None = None) -> list[Tensor]:
        """Transforms of all members but the last, then the last member's (fused) combination."""
        return self._run(grads, combine=True, losses=losses)

    def end_epoch(self) -> None:
        for b in self.balancers:
            if callable(getattr(b, "end_epoch", None)):
                b.end_epoch()

    def after_step(self, losses: Tensor) -> None:
        for b in self.balancers:
            if getattr(b, "uses_losses_after_step", False):
                b.after_step(losses)

    def reduce(self, grads: Sequence[Tensor]) -> list[Tensor]:
        return self.balancers[-1].reduce(grads)

    def state_dict(self) -> dict[str, Any]:
        return {"balancers": [b.state_dict() for b in self.balancers]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        states = state.get("balancers") if isinstance(state, dict) else None
        if not isinstance(states, (list, tuple)) or len(states) != len(self.balancers):
            raise ValueError(f"chain state needs 'balancers': a list of {len(self.balancers)} member states")
        for b, s in zip(self.balancers, states):
            b.load_state_dict(s)

    def label(self, short: bool = False) -> str:
        return " + ".join(b.label(short=True) for b in self.balancers)

    def __repr__(self) -> str:
        return f"Chain({', '.join(repr(b) for b in self.balancers)})"


def chain(first: GradientBalancer, second: GradientBalancer, *more: GradientBalancer) -> Chain:
    """`chain(a, b)`: a's per-task transform, then b's transform and reduction."""
    return Chain(first, second, *more)
