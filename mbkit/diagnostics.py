"""Gradient diagnostics of a run: per shared tensor and task, the gradient's norm, its ratio and cosine to
the target's, and the weight a balancer applied (`TrainConfig(diagnostics_every=N)`)."""

from __future__ import annotations

import pandas as pd
import torch

from mbkit.grads import TaskGrads, grad_stats


def sample(step: int, epoch: int, tg: TaskGrads, weights: list[torch.Tensor | None] | None) -> dict[str, torch.Tensor]:
    """One step's diagnostics, kept on the device: (J, K) norms, ratios and cosines to the target, applied
    weights (NaN where the balancer reports none)."""
    norms, cos = grad_stats(tg)  # (J, K) each
    ratio = norms / norms[:, :1].clamp_min(torch.finfo(norms.dtype).tiny)
    w = torch.full_like(norms, float("nan"))
    if weights is not None:
        for j, wj in enumerate(weights):
            if wj is not None:
                w[j] = wj.to(w)
    return {"step": torch.tensor(step), "epoch": torch.tensor(epoch), "norm": norms.detach(),
            "ratio": ratio.detach(), "cosine": cos.detach(), "weight": w.detach()}


def frame(samples: list[dict[str, torch.Tensor]], names: list[str], tasks: tuple[str, ...]) -> pd.DataFrame:
    """The samples as one tidy frame: a row per (step, shared tensor, task)."""
    rows = []
    for s in samples:
        norm, ratio, cos, w = (s[k].float().cpu() for k in ("norm", "ratio", "cosine", "weight"))
        for j, name in enumerate(names):
            for k, task in enumerate(tasks):
                rows.append({"step": int(s["step"]), "epoch": int(s["epoch"]), "tensor": name, "task": task,
                             "norm": float(norm[j, k]), "ratio_to_target": float(ratio[j, k]),
                             "cosine_to_target": float(cos[j, k]), "weight": float(w[j, k])})
    return pd.DataFrame(rows)
