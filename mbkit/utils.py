"""Small shared helpers: device choice and seeding."""

from __future__ import annotations

import random

import numpy as np
import torch


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """Return CUDA when `device="auto"` and a GPU is visible, else CPU; pass anything else through."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} was requested but no CUDA GPU is visible; use device='auto' or 'cpu'")
    return dev


def seed_everything(seed: int) -> None:
    """Seed Python's `random`, NumPy and torch (all devices) in one place."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def make_generator(seed: int, device: str | torch.device = "cpu") -> torch.Generator:
    """A seeded `torch.Generator` living on `device` (CUDA sampling needs a CUDA generator)."""
    g = torch.Generator(device=resolve_device(device))
    g.manual_seed(seed)
    return g
