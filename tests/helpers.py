"""What the tests share: one small world, a small model configuration, and per-task gradients with
conflicts and imbalance (the fixtures of tests/conftest.py are built from these)."""

from __future__ import annotations

import torch

from mbkit.train import TrainConfig

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])

# synthesize(**WORLD) has ~130 k rows (0.3 s); FILTER leaves 149 users x 170 items of it, 3,859 training
# positives: enough for every split to hold purchases, small enough for an epoch in a fraction of a second.
WORLD = dict(n_users=3000, n_items=1000, seed=3)
FILTER = dict(min_user_items=5, min_item_users=5)
TINY = TrainConfig(epochs=2, batch_size=512, emb_dim=8, mlp_layers=(8, 4), tower_layers=(8,), device="cpu",
                   progress=False)


def random_grads(k: int = 4, seed: int = 0, dtype=torch.float32, device="cpu",
                 aligned: bool = False) -> list[torch.Tensor]:
    """Per-task gradients of three shared tensors, task magnitudes 1, 10, 0.1, 3 (imbalanced), with
    conflicts in every tensor and in the flattened vector unless `aligned` (then all dot products > 0)."""
    g = torch.Generator().manual_seed(seed)
    scales = torch.tensor([1.0, 10.0, 0.1, 3.0][:k] + [1.0] * max(0, k - 4), dtype=torch.float64)
    out = []
    for shape in [(3, 4), (5,), (6, 2)]:
        x = torch.randn((k,) + shape, generator=g, dtype=torch.float64)
        if aligned:
            x = x.abs() + 0.1
        out.append((x * scales.view((k,) + (1,) * len(shape))).to(dtype=dtype, device=device))
    return out


def losses_of(k: int = 4, step: int = 0, device="cpu") -> torch.Tensor:
    """Per-task losses that fall at different rates."""
    base = torch.tensor([0.7, 0.5, 0.3, 0.6, 0.4][:k], dtype=torch.float64)
    rate = torch.tensor([0.9, 0.99, 0.8, 0.95, 0.97][:k], dtype=torch.float64)
    return (base * rate**step).float().to(device)


def call(bal, grads: list[torch.Tensor], step: int = 0, combine: bool = True) -> list[torch.Tensor]:
    """A balancer's combined gradient (or its transform, reduced), with losses for the loss-based ones; a
    balancer that sees the losses after the step (FAMO) gets the next step's."""
    k, device = grads[0].shape[0], grads[0].device
    kw = {"losses": losses_of(k, step, device)} if getattr(bal, "uses_losses", False) else {}
    out = bal(grads, **kw) if combine else bal.reduce(bal.transform(grads, **kw))
    if getattr(bal, "uses_losses_after_step", False):
        bal.after_step(losses_of(k, step + 1, device))
    return out
