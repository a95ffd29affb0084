"""Per-task gradients of the shared parameters in one batched backward pass.

MetaBalance (He et al., WWW 2022, Alg. 1) and PCGrad (Yu et al., 2020) need, for every shared parameter
tensor theta_j, the gradient of every task loss, g_{j,k} = dL_k/dtheta_j. The official code gets them with
one `backward(retain_graph=True)` per task (plus one more for the towers) over dense embedding tables.
`GradEngine` gets all of them at once:

1. forward: the batch's embedding rows are gathered into detached leaves (B, D) and the shared
   representation h (B, 72) is computed once (one dropout mask for all tasks);
2. towers: h is handed to the towers as K detached copies (K, B, 72); one ordinary backward of
   sum_k L_k gives each tower its own task's gradient (tower k only reaches L_k) and dL_k/dh per task;
3. shared bottom: one backward from h with the K cotangents dL_k/dh batched (`is_grads_batched=True`,
   i.e. vmap over the backward graph) gives (K, *shape) for each dense shared tensor and (K, B, D) for
   each table's gathered rows, which are summed over duplicate ids (`index_add_`) onto the batch's rows.

Embedding tables reach the balancer as compact rows (K, R, D), with the row ids in `TaskGrads.rows`:
norms, dot products and linear combinations over a table are unchanged by dropping its all-zero rows,
so MetaBalance and PCGrad give the same result as on the full (K, n_rows, D) table. The two modes
differ in how the combined gradient is optimised:

* ``"compact"``: the combined table gradient is written as a sparse COO `.grad` over the batch's rows
  and the tables are optimised by SparseAdam's update (`mbkit.optim.RowAdam`, a faster implementation of it): only
  the touched rows and their Adam moments change, and there is no weight decay (the original's 1e-7
  then applies to the dense parameters only).
* ``"dense"``: the combined table gradient is scattered into a dense `.grad` and every parameter is
  optimised by one dense Adam with weight decay, exactly the original's semantics: rows that the batch
  did not touch get a zero gradient (plus weight decay), so their moments decay and they keep moving by
  momentum. ``full_tables=True`` hands the balancer the literal (K, n_rows, D) tables instead of rows
  (for balancers that are not invariant to zero rows; about 2x slower at paper scale on CPU).

A balancer may instead act on the shared representation (`representation`, e.g. MetaBalance at the level of
h, the form MultiBalance builds on): it sees only step 2's dL_k/dh (K, B, rep_dim), and its one combined
cotangent (B, rep_dim) goes through the bottom in one ordinary backward, so such a step costs about what a
plain sum does.

The two modes therefore train differently (`benchmarks/compact_vs_dense.py` compares their metrics over
seeds). Host-device synchronisation on CUDA: dense mode has none (its rows are the sorted ids
padded to the batch size, see `TaskGrads.rows`); compact mode has one per id tensor (`torch.unique`,
whose size is data-dependent) and builds its sparse gradients already coalesced, so the optimizer adds none.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from mbkit.model import SharedBottomNeuMF

MODES = ("compact", "dense")


@dataclass
class TaskGrads:
    """Per-task gradients of one batch. Row k of every stacked tensor is task k (0 = target)."""

    losses: Tensor  # (K,) detached per-task mean BCE losses
    shared: list[Tensor]  # per shared tensor j, order of model.shared_parameters(): (K, *shape) or (K, R_j, D)
    rows: list[Tensor | None]  # (R_j,) sorted row ids of table j, None for dense tensors and full tables.
    # compact mode: the unique ids of the batch. dense mode: R_j = B, the unique ids followed by copies of
    # the largest one whose gradient rows are zero (a static shape, so no host sync on CUDA)
    towers: dict[str, Tensor]  # tower parameter name -> gradient of its own task's loss
    # representation level (`GradEngine.representation`): sends the combined dL/dh through the bottom
    bottom: Callable[[Tensor], None] | None = None


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"mode={mode!r} is not a gradient mode; use one of {MODES}")


def _sorted_rows(ids: Tensor, static: bool) -> tuple[Tensor, Tensor]:
    """Sorted row ids touched by `ids` (B,) and the slot of each id in them (B,), so rows[inv] == ids.

    static=False: the R unique ids (`torch.unique`; a host sync on CUDA). static=True: B slots, the unique
    ids followed by copies of the largest one that no id maps to, computed without a host sync.
    """
    if not static:
        return torch.unique(ids, sorted=True, return_inverse=True)
    s = ids.sort().values
    first = torch.ones_like(s, dtype=torch.bool)
    first[1:] = s[1:] != s[:-1]
    slot = first.cumsum(0) - 1  # (B,) slot of each sorted id, nondecreasing
    pos = torch.searchsorted(slot, torch.arange(len(s), device=s.device)).clamp_(max=len(s) - 1)
    rows = s[pos]  # (B,) first sorted id of each slot; slots past the last unique id repeat the largest
    return rows, torch.searchsorted(rows, ids)  # leftmost match = the real slot, never a padding copy


class GradEngine:
    """Per-task gradients of `model`'s shared parameters, plus writing a combined gradient back.

    The engine does not change the model's train/eval mode: call `model.train()` for training steps.
    """

    def __init__(self, model: SharedBottomNeuMF, mode: str = "compact", full_tables: bool = False,
                 grad_scale: Sequence[float] | None = None) -> None:
        _check_mode(mode)
        if full_tables and mode != "dense":
            raise ValueError("full_tables=True needs mode='dense' (compact mode writes sparse rows)")
        n_tasks = model.cfg.n_tasks
        if grad_scale is not None and (len(grad_scale) != n_tasks or not all(0 < float(w) < math.inf
                                                                             for w in grad_scale)):
            raise ValueError(f"grad_scale must hold {n_tasks} finite factors > 0 (one per task, target first), got "
                             f"{list(grad_scale)}")
        # w_k multiplies dL_k/dh, so every shared gradient of task k; the towers' gradients are left alone
        self.grad_scale = (None if grad_scale is None or all(float(w) == 1.0 for w in grad_scale) else
                           torch.tensor([float(w) for w in grad_scale], device=next(model.parameters()).device))
        self.model = model
        self.mode = mode
        self.full_tables = full_tables
        self.shared = model.shared_parameters()
        self.tower_params = {n: p for k in range(model.cfg.n_tasks) for n, p in model.task_parameters(k).items()}

    # --- forward --------------------------------------------------------------------------------------
    def _forward_bottom(self, users: Tensor, items: Tensor):
        """Gather rows into detached leaves and compute h (B, rep_dim) with the graph of the bottom."""
        ids = self.model.table_ids(users, items)
        leaves = {n: F.embedding(i, self.shared[n].detach()).requires_grad_() for n, i in ids.items()}
        return ids, leaves, self.model.represent(leaves)

    @staticmethod
    def _losses(logits: Tensor, labels: Tensor) -> Tensor:
        if logits.shape != labels.shape:
            raise ValueError(f"labels must have shape (B, K) = {tuple(logits.shape)}, got {tuple(labels.shape)}")
        return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype), reduction="none").mean(0)

    def _scaled(self, dh: Tensor) -> Tensor:
        """(K, B, rep_dim) per-task dL_k/dh times `grad_scale` (unchanged when there is none)."""
        return dh if self.grad_scale is None else dh * self.grad_scale.to(dh.dtype).view(-1, 1, 1)

    def _rows(self, ids: dict[str, Tensor]) -> dict[int, tuple[Tensor, Tensor]]:
        """`_sorted_rows` once per distinct id tensor (users, items): id(tensor) -> (rows, inv)."""
        out: dict[int, tuple[Tensor, Tensor]] = {}
        for i in ids.values():
            if id(i) not in out:
                out[id(i)] = _sorted_rows(i, static=self.mode == "dense")
        return out

    # --- per-task gradients ------------------------------------------------------------------------------
    def __call__(self, users: Tensor, items: Tensor, labels: Tensor) -> TaskGrads:
        """Per-task gradients of every shared tensor (one batched backward) and of each task's tower."""
        ids, leaves, h = self._forward_bottom(users, items)
        n_tasks = self.model.cfg.n_tasks
        h_tasks = h.detach().expand(n_tasks, *h.shape).requires_grad_()  # tower k reads h_tasks[k]
        losses = self._losses(self.model.heads(h_tasks), labels)  # (K,)
        towers = list(self.tower_params.values())
        dh, *g_towers = torch.autograd.grad(losses.sum(), [h_tasks, *towers])  # dh: (K, B, rep_dim)
        dh = self._scaled(dh)

        names = list(self.shared)
        inputs = [leaves[n] if n in leaves else self.shared[n] for n in names]
        g_shared = torch.autograd.grad(
            h, inputs, grad_outputs=dh, is_grads_batched=True, allow_unused=True, materialize_grads=True
        )
        slots = {} if self.full_tables else self._rows(ids)
        shared: list[Tensor] = []
        rows: list[Tensor | None] = []
        for n, g in zip(names, g_shared):
            if n not in ids:
                shared.append(g)  # (K, *shape)
                rows.append(None)
            elif self.full_tables:
                shared.append(g.new_zeros(n_tasks, *self.shared[n].shape).index_add_(1, ids[n], g))  # (K, n, D)
                rows.append(None)
            else:
                r, inv = slots[id(ids[n])]
                shared.append(g.new_zeros(n_tasks, len(r), g.shape[-1]).index_add_(1, inv, g))  # (K, R, D)
                rows.append(r)
        towers = {n: t.contiguous() for n, t in zip(self.tower_params, g_towers)}  # bmm grads are transposed views
        return TaskGrads(losses.detach(), shared, rows, towers)

    def representation(self, users: Tensor, items: Tensor, labels: Tensor) -> TaskGrads:
        """Per-task gradients of the shared representation h instead of the shared parameters.

        `shared` is the single tensor [dL_k/dh] (K, B, rep_dim) from the towers' backward (no batched
        backward through the bottom); `bottom(dh)` then sends one combined (B, rep_dim) cotangent through
        the shared bottom in one ordinary backward and sets its `.grad` as `backward_sum` does. The bottom's
        graph is kept until `bottom` is called.
        """
        ids, leaves, h = self._forward_bottom(users, items)
        n_tasks = self.model.cfg.n_tasks
        h_tasks = h.detach().expand(n_tasks, *h.shape).requires_grad_()
        losses = self._losses(self.model.heads(h_tasks), labels)
        towers = list(self.tower_params.values())
        dh, *g_towers = torch.autograd.grad(losses.sum(), [h_tasks, *towers])
        dh = self._scaled(dh)

        def bottom(combined: Tensor) -> None:
            if combined.shape != h.shape:
                raise ValueError(f"the combined representation gradient must have shape {tuple(h.shape)}, "
                                 f"got {tuple(combined.shape)}")
            self._backward_bottom(ids, leaves, h, combined)

        towers_g = {n: t.contiguous() for n, t in zip(self.tower_params, g_towers)}
        return TaskGrads(losses.detach(), [dh], [None], towers_g, bottom=bottom)

    # --- writing back ------------------------------------------------------------------------------------
    def _table_grad(self, name: str, rows: Tensor, values: Tensor) -> Tensor:
        """.grad of table `name` from row values (R, D): sparse COO (compact) or dense (dense)."""
        if self.mode == "compact":  # rows are unique and sorted: already coalesced, the optimizer adds no sync
            shape = self.shared[name].shape
            return torch.sparse_coo_tensor(rows[None], values, shape, is_coalesced=True, check_invariants=False)
        return values.new_zeros(self.shared[name].shape).index_add_(0, rows, values)  # padding rows carry zeros

    def write(self, tg: TaskGrads, combined: list[Tensor]) -> None:
        """Set `.grad` of every parameter: `combined[j]` for shared tensor j, each tower its own task's grad.

        Compact-mode tables get a sparse COO gradient over `tg.rows[j]` (for RowAdam or SparseAdam); everything
        else a dense, contiguous one (torch 2.13's fused CPU Adam silently misreads non-contiguous gradients).
        """
        if len(combined) != len(self.shared):
            raise ValueError(
                f"expected {len(self.shared)} combined gradients (one per shared tensor), got {len(combined)}"
            )
        for (n, p), g, r in zip(self.shared.items(), combined, tg.rows):
            p.grad = g.reshape(p.shape).contiguous() if r is None else self._table_grad(n, r, g)
        self.write_towers(tg)

    def write_towers(self, tg: TaskGrads) -> None:
        """Set `.grad` of every tower parameter to its own task's gradient."""
        for n, g in tg.towers.items():
            self.tower_params[n].grad = g.contiguous()

    def losses(self, users: Tensor, items: Tensor, labels: Tensor) -> Tensor:
        """(K,) per-task mean losses of a batch under the model's current weights and mode (no gradient)."""
        return self._losses(self.model(users, items), labels).detach()

    def backward_sum(self, users: Tensor, items: Tensor, labels: Tensor) -> Tensor:
        """Vanilla fast path: one backward of sum_k L_k; sets `.grad` as `write` would; returns (K,) losses.

        Gives the same `.grad` (up to float summation order) as `__call__` + `write` with the plain sum,
        and draws the same dropout masks from the same RNG state. Replaces `.grad`, never accumulates.
        """
        ids, leaves, h = self._forward_bottom(users, items)
        if self.grad_scale is None:
            losses = self._losses(self.model.heads(h), labels)
        else:  # tower k reads its own view of h, whose gradient is scaled by w_k on the way into the bottom
            h_tasks = h.expand(self.model.cfg.n_tasks, *h.shape)
            h_tasks.register_hook(self._scaled)
            losses = self._losses(self.model.heads(h_tasks), labels)
        names = list(self.shared)
        inputs = [leaves[n] if n in leaves else self.shared[n] for n in names]
        towers = list(self.tower_params.values())
        grads = torch.autograd.grad(losses.sum(), inputs + towers, allow_unused=True, materialize_grads=True)
        self._set_shared_grads(ids, grads[: len(names)])
        for p, g in zip(towers, grads[len(names) :]):
            p.grad = g.contiguous()
        return losses.detach()

    def _backward_bottom(self, ids: dict[str, Tensor], leaves: dict[str, Tensor], h: Tensor, dh: Tensor) -> None:
        """One backward of the bottom from the cotangent `dh` of h; sets `.grad` of every shared tensor."""
        inputs = [leaves[n] if n in leaves else p for n, p in self.shared.items()]
        grads = torch.autograd.grad(h, inputs, grad_outputs=dh, allow_unused=True, materialize_grads=True)
        self._set_shared_grads(ids, grads)

    def _set_shared_grads(self, ids: dict[str, Tensor], grads: Sequence[Tensor]) -> None:
        """`.grad` of the shared tensors from one gradient each (gathered rows (B, D) for the tables)."""
        slots = self._rows(ids) if self.mode == "compact" else {}
        for (n, p), g in zip(self.shared.items(), grads):
            if n not in ids:
                p.grad = g.contiguous()
            elif self.mode == "compact":
                r, inv = slots[id(ids[n])]
                p.grad = self._table_grad(n, r, g.new_zeros(len(r), g.shape[-1]).index_add_(0, inv, g))
            else:
                p.grad = g.new_zeros(p.shape).index_add_(0, ids[n], g)  # what the embedding backward does

def grad_stats(tg: TaskGrads) -> tuple[Tensor, Tensor]:
    """(J, K) Frobenius norms of each task's gradient per shared tensor, and (J, K) cosine to the target's.

    A zero gradient has cosine 0. Stays on device (no host sync).
    """
    norms, cos = [], []
    for g in tg.shared:
        flat = g.flatten(1)  # (K, N)
        nrm = torch.linalg.vector_norm(flat, dim=1)  # (K,)
        dots = flat @ flat[0]  # (K,)
        norms.append(nrm)
        cos.append(dots / (nrm * nrm[0]).clamp_min(torch.finfo(g.dtype).tiny))
    return torch.stack(norms), torch.stack(cos)
