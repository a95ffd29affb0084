"""Compressed sparse rows of (user, item) pairs: the layout of the splits (`mbkit.data.split`) and of the
masks that ranking applies (`mbkit.metrics`)."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor


def sorted_unique(a: np.ndarray) -> np.ndarray:
    """Sorted distinct values (sort-based; numpy's hash-based `np.unique` is slower here)."""
    a = np.sort(a)
    return a[np.r_[True, a[1:] != a[:-1]]] if len(a) else a


def csr_rows_mask(indptr: Tensor, indices: Tensor, rows: Tensor, n_cols: int) -> Tensor:
    """Dense (len(rows), n_cols) bool mask of the CSR rows `rows` (indptr (n_rows+1,), indices (nnz,))."""
    starts, ends = indptr[rows], indptr[rows + 1]
    counts = ends - starts  # (U,)
    total = int(counts.sum())
    mask = torch.zeros(len(rows), n_cols, dtype=torch.bool, device=indices.device)
    if total == 0:
        return mask
    row = torch.repeat_interleave(torch.arange(len(rows), device=rows.device), counts, output_size=total)
    first = torch.repeat_interleave(starts - (counts.cumsum(0) - counts), counts, output_size=total)
    pos = first + torch.arange(total, device=rows.device)  # position of each entry in `indices`
    mask.index_put_((row, indices[pos]), torch.tensor(True, device=mask.device))
    return mask


class CSR(NamedTuple):
    """Rows of column indices: row r holds `indices[indptr[r]:indptr[r + 1]]` (sorted)."""

    indptr: Tensor  # (n_rows + 1,) int64
    indices: Tensor  # (nnz,) int64

    def row_lengths(self) -> Tensor:
        return self.indptr[1:] - self.indptr[:-1]

    def mask(self, rows: Tensor, n_cols: int) -> Tensor:
        """Dense bool (len(rows), n_cols) membership mask of the given rows (e.g. for ranking)."""
        return csr_rows_mask(self.indptr, self.indices, rows, n_cols)


def csr_from_keys(keys: np.ndarray, n_rows: int, n_cols: int, device: torch.device) -> CSR:
    """CSR from sorted distinct keys row * n_cols + col."""
    indptr = np.zeros(n_rows + 1, np.int64)
    np.cumsum(np.bincount(keys // n_cols, minlength=n_rows), out=indptr[1:])
    return CSR(torch.from_numpy(indptr).to(device), torch.from_numpy(keys % n_cols).to(device))
