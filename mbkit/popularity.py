"""The popularity floor: every user gets the same ranking, items by their number of training purchases.

A trained recommender that does not beat it has learned nothing personal; every comparison table shows it
beside the trained models, on the same split, the same masking and the same metrics (`mbkit.metrics.evaluate`
ranks it like a model; `mbkit.study.tables.floor_row` makes it a table row).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

LABEL = "Most popular (training purchases)"


@dataclass(frozen=True)
class MostPopular:
    """A parameter-free model: `score_items` gives every user the same scores."""

    scores: Tensor  # (n_items,) float32, distinct integers: higher = more training purchases

    def score_items(self, users: Tensor) -> Tensor:
        return self.scores.expand(len(users), -1)


def most_popular(data: Any) -> MostPopular:
    """Rank items by training purchases of the target task, ties by item index (so that every machine
    ranks alike); scores are the reversed rank, exact in float32."""
    bought = data.labels[:, 0] > 0
    counts = torch.bincount(data.items[bought], minlength=data.n_items).cpu().numpy()
    order = np.lexsort((np.arange(data.n_items), -counts))  # most purchases first, then the smaller index
    scores = np.empty(data.n_items, dtype=np.float32)
    scores[order] = np.arange(data.n_items, 0, -1, dtype=np.float32)
    scores = torch.from_numpy(scores).to(data.device)
    return MostPopular(scores)
