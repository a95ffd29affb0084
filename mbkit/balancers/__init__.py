"""Gradient balancers: pure functions of the per-task gradients of the shared tensors + explicit state.

`grads[j]` holds the K per-task gradients of shared tensor j, shape (K, *shape_j), row 0 = target;
a balancer returns the combined gradient of every tensor, shape (*shape_j):

>>> import torch
>>> from mbkit.balancers import make
>>> bal = make("metabalance", relax_factor=0.7)
>>> grads = [torch.tensor([[3.0, 4.0], [0.0, 10.0]])]  # one shared tensor (2,), K = 2 tasks
>>> bal(grads)[0]  # m = (0.5, 1.0) after one step: the auxiliary is scaled by 0.7 * 0.5 + 0.3
tensor([ 3.0000, 10.5000])
>>> bal.last_weights[0]
tensor([1.0000, 0.6500])
>>> str(make("metabalance+pcgrad"))
'MetaBalance + PCGrad'

Registry names: "vanilla", "metabalance", "metabalance_rep" (MetaBalance on the shared
representation), "pcgrad_adjusted", "pcgrad", the baselines in `BASELINES` ("single_task", "fixed",
"uncertainty", "dwa", "gradnorm", "rlw", "famo", "mgda", "cosine", "gradvac", "gradvac_adjusted",
"cagrad", "gradcraft"), and any "+"-joined chain of them (e.g. "metabalance+pcgrad"), whose keyword
arguments go to the members that accept them; `make("chain", balancers=[...])` chains names or
instances. `METHODS` lists the six methods of the study's comparison in order. Loss-based methods
(`uses_losses`) are called with the batch's per-task losses, FAMO also sees the batch's losses after the
step (`uses_losses_after_step`), DWA has an `end_epoch()`, and a balancer with `level = "representation"`
is handed dL_k/dh instead of the parameters' gradients (see `base`):

>>> bal = make("uncertainty")
>>> bal.uses_losses, str(bal)
(True, 'Uncertainty weighting')
>>> bal([torch.tensor([[1.0, 0.0], [0.0, 2.0]])], losses=torch.tensor([0.7, 0.3]))[0]  # s = 0: weights 1
tensor([1., 2.])
"""

from __future__ import annotations

import inspect
from typing import Any, Sequence

from .base import GRANULARITIES, REDUCTIONS, Balancer, GradientBalancer, LossWeighting, check_grads
from .cagrad import CAGrad
from .chain import Chain, chain
from .cosine import GradCosine
from .dwa import DWA
from .fixed import FixedWeights
from .gradcraft import GradCraft
from .gram import CoefficientBalancer
from .gradnorm import GradNorm
from .gradvac import GradVac, GradVacAdjusted
from .famo import FAMO
from .metabalance import STRATEGIES, MetaBalance, RepresentationMetaBalance
from .mgda import MGDA
from .pcgrad import PCGrad, PCGradAdjusted
from .rlw import RandomLossWeighting
from .single_task import SingleTask
from .uncertainty import UncertaintyWeighting
from .vanilla import Vanilla

REGISTRY: dict[str, type[GradientBalancer]] = {
    "vanilla": Vanilla,
    "metabalance": MetaBalance,
    "metabalance_rep": RepresentationMetaBalance,
    "pcgrad_adjusted": PCGradAdjusted,
    "pcgrad": PCGrad,
    "single_task": SingleTask,
    "fixed": FixedWeights,
    "uncertainty": UncertaintyWeighting,
    "dwa": DWA,
    "gradnorm": GradNorm,
    "rlw": RandomLossWeighting,
    "famo": FAMO,
    "mgda": MGDA,
    "cosine": GradCosine,
    "gradvac": GradVac,
    "gradvac_adjusted": GradVacAdjusted,
    "cagrad": CAGrad,
    "gradcraft": GradCraft,
}

METHODS: tuple[str, ...] = (
    "vanilla",
    "metabalance",
    "pcgrad_adjusted",
    "pcgrad",
    "metabalance+pcgrad_adjusted",
    "metabalance+pcgrad",
)

# The baselines, in the order of a comparison table: the single-task floor, loss
# weighting, gradient combination; "_adjusted" = the target-anchored variant of the method before it.
BASELINES: tuple[str, ...] = (
    "single_task",
    "fixed",
    "uncertainty",
    "dwa",
    "gradnorm",
    "rlw",
    "famo",
    "mgda",
    "cosine",
    "gradvac",
    "gradvac_adjusted",
    "cagrad",
    "gradcraft",
)


def _parse(name: str) -> list[str]:
    if not isinstance(name, str):
        raise ValueError(f"a balancer name must be a string; got {type(name).__name__}")
    parts = [p.strip() for p in name.split("+")]
    unknown = [p for p in parts if p not in REGISTRY]
    if unknown:
        raise ValueError(
            f"unknown balancer {name!r}: valid names are {', '.join(REGISTRY)}, 'chain', and '+'-joined "
            f"chains of them such as the study's {', '.join(METHODS)}"
        )
    return parts


def _arguments(cls: type) -> list[str]:
    return [p for p in inspect.signature(cls.__init__).parameters if p != "self"]


def accepted_kwargs(name: str) -> set[str]:
    """The keyword arguments `make(name, ...)` accepts, e.g. to pick a method's settings out of a config."""
    if name == "chain":
        return {"balancers"}
    return {a for part in _parse(name) for a in _arguments(REGISTRY[part])}


def make(name: str, **kwargs: Any) -> GradientBalancer:
    """Build a balancer by registry name; unknown names or arguments raise ValueError.

    For a chain such as "metabalance+pcgrad" each keyword argument goes to every member that
    accepts it (relax_factor/beta/strategy to MetaBalance; reduction/granularity/seed/generator to
    PCGrad). Arguments no member accepts are an error rather than silently ignored.
    """
    if name == "chain":
        members = kwargs.pop("balancers", None)
        if kwargs or not isinstance(members, Sequence) or isinstance(members, str) or len(members) < 2:
            raise ValueError("make('chain', balancers=[a, b, ...]) takes a list of >= 2 names or balancer instances")
        return Chain(*(make(m) if isinstance(m, str) else m for m in members))
    parts = _parse(name)
    extra = set(kwargs) - accepted_kwargs(name)
    if extra:
        raise ValueError(
            f"{name!r} does not take {sorted(extra)}; it accepts {sorted(accepted_kwargs(name))} "
            "(use accepted_kwargs(name) to filter a shared config)"
        )
    built = [REGISTRY[p](**{k: v for k, v in kwargs.items() if k in _arguments(REGISTRY[p])}) for p in parts]
    return built[0] if len(built) == 1 else Chain(*built)


__all__ = [
    "BASELINES",
    "Balancer",
    "CAGrad",
    "Chain",
    "CoefficientBalancer",
    "DWA",
    "FAMO",
    "FixedWeights",
    "GradCosine",
    "GradCraft",
    "GradNorm",
    "GradVac",
    "GradVacAdjusted",
    "MGDA",
    "SingleTask",
    "UncertaintyWeighting",
    "GRANULARITIES",
    "GradientBalancer",
    "LossWeighting",
    "METHODS",
    "MetaBalance",
    "PCGrad",
    "PCGradAdjusted",
    "REDUCTIONS",
    "RandomLossWeighting",
    "RepresentationMetaBalance",
    "REGISTRY",
    "STRATEGIES",
    "Vanilla",
    "accepted_kwargs",
    "chain",
    "check_grads",
    "make",
]
