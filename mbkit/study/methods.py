"""The methods each notebook compares, and the grid a notebook trains from its parameters."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

from mbkit.balancers import BASELINES, make
from mbkit.train import TrainConfig


@dataclass(frozen=True)
class Method:
    """One row of a comparison table: a balancer with its arguments and the label shown for it."""

    label: str
    balancer: str
    kwargs: dict[str, Any] = field(default_factory=dict)


def study_methods(relax_factor: float = 0.7) -> list[Method]:
    """The six methods of the study's comparison (thesis Table 3), MetaBalance at `relax_factor`."""
    r = {"relax_factor": relax_factor}
    return [
        Method("Vanilla", "vanilla"),
        Method(f"MetaBalance (r={relax_factor:g})", "metabalance", r),
        Method("PCGrad (adjusted)", "pcgrad_adjusted"),
        Method("PCGrad (original)", "pcgrad"),
        Method("MetaBalance + PCGrad (adjusted)", "metabalance+pcgrad_adjusted", r),
        Method("MetaBalance + PCGrad (original)", "metabalance+pcgrad", r),
    ]


# The floor every auxiliary method must beat: the target task alone, same model and protocol.
SINGLE_TASK = Method("Single task (target only)", "single_task")


def relax_sweep_methods(relax_factors: Iterable[float], strategies: Iterable[str]) -> list[Method]:
    """Notebook 03's grid (thesis Table 2): MetaBalance at every r and strategy; r = 0 (the plain sum,
    the same for every strategy) once, labelled "r=0"."""
    strategies = list(strategies)
    return [Method("r=0", "metabalance", {"relax_factor": 0.0})] + [
        Method(f"{s} r={float(r):g}", "metabalance", {"relax_factor": float(r), "strategy": s})
        for s in strategies for r in relax_factors if float(r) != 0]


def map_methods(relax_factor: float) -> list[Method]:
    """Notebook 05's methods: Vanilla, MetaBalance at the validated r and at r = 1 (equal magnitudes, which no
    auxiliary scale can move), PCGrad in the study's adjusted form."""
    vanilla, mb, pcgrad_adjusted = study_methods(relax_factor)[:3]
    equal = [] if float(relax_factor) == 1.0 else [Method("MetaBalance (r=1)", "metabalance", {"relax_factor": 1.0})]
    return [vanilla, mb, *equal, pcgrad_adjusted]


def all_methods(relax_factor: float = 0.7) -> list[Method]:
    """Notebook 06's comparison: Vanilla, MetaBalance at `relax_factor` on the shared parameters and on the
    shared representation (its successor's level, at the same r), PCGrad (adjusted), then every baseline of
    `mbkit.balancers.BASELINES` (single task first), each with its default arguments."""
    vanilla, mb, pcgrad_adjusted = study_methods(relax_factor)[:3]
    on_h = Method(str(make("metabalance_rep", **mb.kwargs)), "metabalance_rep", mb.kwargs)
    return [vanilla, mb, on_h, pcgrad_adjusted, SINGLE_TASK] + [Method(str(make(b)), b) for b in BASELINES
                                                                  if b != SINGLE_TASK.balancer]


GRIDS = {"03_relax_factor": lambda p: relax_sweep_methods(p["relax_factors"], p["strategies"]),
         "04_method_comparison": lambda p: study_methods(p["relax_factor"]) + [SINGLE_TASK],
         "06_all_methods": lambda p: all_methods(p["relax_factor"])}


def notebook_grid(notebook: str, params: dict[str, Any]) -> tuple[list[Method], list[int], TrainConfig]:
    """The grid a notebook trains with its parameters: (methods, seeds, base config). The notebooks and
    `python -m mbkit grid` both build it here, so their runs share records in a `runs_dir`."""
    if notebook not in GRIDS:
        raise ValueError(f"notebook {notebook!r} trains no grid; grids: {', '.join(GRIDS)}")
    patience = params.get("patience")
    base = TrainConfig(epochs=int(params["epochs"]), batch_size=int(params["batch_size"]), mode=params["mode"],
                       patience=None if patience is None else int(patience), device=params.get("device", "auto"),
                       progress=False)
    return GRIDS[notebook](params), [int(s) for s in params["seeds"]], base
