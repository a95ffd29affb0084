"""The training loop: device-agnostic, balancer-agnostic, dataset-agnostic.

`fit(data, config)` trains a `SharedBottomNeuMF` on a `TaskData` with one balancer and returns a `FitResult`
(history, best-epoch validation and test metrics, optional gradient diagnostics, a provenance record).

The step is the clean order: per-task gradients of the current parameters first, the balancer combines
them, then every optimizer steps. (The original MetaBalance example stepped the towers' optimizer before
back-propagating the shared part through them; PyTorch >= 1.5 raises on that, older versions silently used
the updated towers. mbkit does not copy it.)
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from mbkit import balancers as _balancers
from mbkit.data import TaskData
from mbkit.grads import GradEngine, grad_stats, make_optimizers
from mbkit.metrics import evaluate, metric_keys
from mbkit.model import ModelConfig, SharedBottomNeuMF
from mbkit.record import write_json
from mbkit.utils import make_generator, resolve_device, seed_everything


METRIC_KEYS: tuple[str, ...] = tuple(metric_keys((10, 20)))


class NonFiniteLossError(RuntimeError):
    """A task's loss became NaN or infinite; the message names the step and the task."""


@dataclass
class TrainConfig:
    balancer: str = "vanilla"                 # a name from mbkit.balancers (e.g. "metabalance")
    balancer_kwargs: dict[str, Any] = field(default_factory=dict)  # e.g. {"relax_factor": 0.7}
    epochs: int = 20                          # the study trains 20 epochs
    batch_size: int = 256                     # the original's batch size
    lr: float = 1e-3                          # Adam learning rate (the original's)
    weight_decay: float = 1e-7                # the original's; not applied to tables in compact mode
    num_neg: int = 4                          # negatives per positive, redrawn every epoch
    seed: int = 0                             # seeds init, dropout, negatives, shuffling and PCGrad's order
    mode: str = "compact"                     # "compact": sparse embedding rows; "dense": original semantics
    device: str = "auto"                      # "auto" = CUDA when available, else CPU
    select_metric: str = "ndcg@10"            # validation metric that picks the best epoch
    patience: int | None = None               # stop after this many epochs without improvement (None: off)
    diagnostics_every: int = 0                # sample gradient diagnostics every N steps (0: off)
    amp: bool = False                         # bf16 autocast for the forward pass (CUDA only)
    nan_check_every: int = 0                  # steps between finiteness checks; 0: every step on CPU (a bad step is
                                              # never applied), 50 on CUDA (avoids a sync per step; up to 49 bad
                                              # steps may be applied before the run stops)
    eval_batch_users: int | None = None       # users per ranking batch (None: chosen from the item count)
    progress: bool = True                     # tqdm progress bar over epochs
    emb_dim: int = 64                         # model sizes (NeuMF defaults of the study)
    mlp_layers: tuple[int, ...] = (32, 16, 8)
    tower_layers: tuple[int, ...] = (64, 32)
    dropout: float = 0.5

    def __post_init__(self) -> None:
        if self.select_metric not in METRIC_KEYS:
            raise ValueError(f"select_metric={self.select_metric!r}; use one of {METRIC_KEYS}")
        if self.patience is not None and self.patience < 1:
            raise ValueError(f"patience={self.patience} must be >= 1 (or None to train every epoch)")
        if self.mode not in ("compact", "dense"):
            raise ValueError(f"mode must be 'compact' or 'dense', got {self.mode!r}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError(f"epochs and batch_size must be >= 1, got {self.epochs} and {self.batch_size}")
        self.mlp_layers = tuple(self.mlp_layers)
        self.tower_layers = tuple(self.tower_layers)


@dataclass
class FitResult:
    history: pd.DataFrame                 # one row per epoch: losses per task, validation metrics, times
    best_epoch: int                       # 1-based epoch with the best validation `select_metric`
    valid: dict[str, float]               # validation metrics of the best epoch
    test: dict[str, float]                # test metrics of the best epoch's weights
    diagnostics: pd.DataFrame | None      # tidy gradient diagnostics, when requested
    config: TrainConfig
    device: str
    train_seconds: float                  # wall time of the training steps (evaluation excluded)
    model: SharedBottomNeuMF = field(repr=False)
    label: str = ""                       # the balancer's label, e.g. "MetaBalance (r=0.7)"

    def summary(self) -> dict[str, Any]:
        return {"label": self.label, "balancer": self.config.balancer, "seed": self.config.seed,
                "best_epoch": self.best_epoch, "valid": self.valid, "test": self.test,
                "train_seconds": self.train_seconds, "config": dataclasses.asdict(self.config)}

    def save(self, out: str | Path) -> Path:
        """Write history.csv, metrics.json (with provenance) and diagnostics.csv into `out`."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        self.history.to_csv(out / "history.csv", index=False)
        if self.diagnostics is not None:
            self.diagnostics.to_csv(out / "diagnostics.csv", index=False)
        write_json(out / "metrics.json", self.summary(), device=self.device)
        return out


def build_model(data: TaskData, config: TrainConfig, device: torch.device) -> SharedBottomNeuMF:
    cfg = ModelConfig(n_users=data.n_users, n_items=data.n_items, n_tasks=len(data.tasks),
                      emb_dim=config.emb_dim, mlp_layers=config.mlp_layers,
                      tower_layers=config.tower_layers, dropout=config.dropout)
    return SharedBottomNeuMF(cfg).to(device)


def _check_finite(pending: list[torch.Tensor], first_step: int, epoch: int, tasks: tuple[str, ...]) -> None:
    losses = torch.stack(pending)  # (S, K)
    bad = ~torch.isfinite(losses)
    if bool(bad.any()):
        s, k = (int(v) for v in bad.nonzero()[0])
        raise NonFiniteLossError(
            f"the loss of task {tasks[k]!r} is {losses[s, k].item()} at step {first_step + s} (epoch {epoch}, "
            f"steps counted from 0 over the run). Lower the learning rate, check the input data, "
            f"or turn amp off")


def _diagnostic_rows(step: int, epoch: int, tg: Any,
                     weights: list[torch.Tensor | None] | None) -> dict[str, torch.Tensor]:
    norms, cos = grad_stats(tg)  # (J, K) each
    ratio = norms / norms[:, :1].clamp_min(torch.finfo(norms.dtype).tiny)
    w = torch.full_like(norms, float("nan"))
    if weights is not None:
        for j, wj in enumerate(weights):
            if wj is not None:
                w[j] = wj.to(w)
    return {"step": torch.tensor(step), "epoch": torch.tensor(epoch), "norm": norms.detach(),
            "ratio": ratio.detach(), "cosine": cos.detach(), "weight": w.detach()}


def _diagnostics_frame(samples: list[dict[str, torch.Tensor]], names: list[str],
                       tasks: tuple[str, ...]) -> pd.DataFrame:
    rows = []
    for s in samples:
        norm, ratio, cos, w = (s[k].float().cpu() for k in ("norm", "ratio", "cosine", "weight"))
        for j, name in enumerate(names):
            for k, task in enumerate(tasks):
                rows.append({"step": int(s["step"]), "epoch": int(s["epoch"]), "tensor": name, "task": task,
                             "norm": float(norm[j, k]), "ratio_to_target": float(ratio[j, k]),
                             "cosine_to_target": float(cos[j, k]), "weight": float(w[j, k])})
    return pd.DataFrame(rows)


def _state(model, optimizers, balancer, gen, epoch, history, best, diag) -> dict[str, Any]:
    return {"epoch": epoch, "model": model.state_dict(), "optimizers": [o.state_dict() for o in optimizers],
            "balancer": balancer.state_dict(), "sampler_rng": gen.get_state(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            "history": history, "best": best, "diagnostics": diag}


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(state, tmp)
    tmp.replace(path)  # atomic: an interrupted save never leaves a truncated checkpoint
    return path


def fit(data: TaskData, config: TrainConfig | None = None, *, checkpoint_dir: str | Path | None = None,
        resume: str | Path | None = None) -> FitResult:
    """Train with `config.balancer`, evaluate on validation every epoch, return the best epoch's metrics.

    `checkpoint_dir` receives `last.pt` after every epoch (and `nonfinite.pt` if a loss turns NaN);
    `resume` continues from such a checkpoint and reproduces the uninterrupted run on CPU.
    """
    config = config or TrainConfig()
    device = resolve_device(config.device)
    if data.device != device:
        data = data.to(device)
    seed_everything(config.seed)
    model = build_model(data, config, device)
    balancer_kwargs = dict(config.balancer_kwargs)
    if "seed" in _balancers.accepted_kwargs(config.balancer):  # PCGrad's task order follows the run's seed
        balancer_kwargs.setdefault("seed", config.seed)
    balancer = _balancers.make(config.balancer, **balancer_kwargs)
    engine = GradEngine(model, mode=config.mode)
    optimizers = make_optimizers(model, config.mode, lr=config.lr, weight_decay=config.weight_decay)
    gen = make_generator(config.seed, device)
    names = list(model.shared_parameters())
    fast_vanilla = config.balancer == "vanilla"
    amp = config.amp and device.type == "cuda"
    check_every = config.nan_check_every or (1 if device.type == "cpu" else 50)

    history: list[dict[str, Any]] = []
    best: dict[str, Any] = {"epoch": 0, "score": -math.inf, "valid": {}, "weights": None, "stale": 0}
    diag: list[dict[str, torch.Tensor]] = []
    start_epoch = 1
    if resume is not None:
        state = torch.load(resume, map_location=device, weights_only=False)
        if not state.get("resumable", True):
            raise ValueError(f"{resume} was saved when a loss turned non-finite, in the middle of an epoch; "
                             f"resume from the last end-of-epoch checkpoint (last.pt) instead")
        model.load_state_dict(state["model"])
        for opt, s in zip(optimizers, state["optimizers"]):
            opt.load_state_dict(s)
        balancer.load_state_dict(state["balancer"])
        gen.set_state(state["sampler_rng"])
        torch.set_rng_state(state["torch_rng"])
        if state["cuda_rng"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        history, best, diag = state["history"], state["best"], state["diagnostics"]
        start_epoch = state["epoch"] + 1

    if config.patience is not None and best["stale"] >= config.patience:
        start_epoch = config.epochs + 1  # the checkpointed run had already stopped early
    epochs = range(start_epoch, config.epochs + 1)
    if config.progress:
        from tqdm.auto import tqdm
        epochs = tqdm(epochs, desc=str(balancer), initial=start_epoch - 1, total=config.epochs)
    step = sum(h["steps"] for h in history)
    train_seconds = sum(h["train_seconds"] for h in history)
    def check_finite(first_step: int, epoch: int) -> None:
        try:
            _check_finite(pending, first_step, epoch, data.tasks)
        except NonFiniteLossError:
            if checkpoint_dir is not None:
                state = _state(model, optimizers, balancer, gen, epoch - 1, history, best, diag)
                save_checkpoint(Path(checkpoint_dir) / "nonfinite.pt", {**state, "resumable": False})
            raise
        pending.clear()

    pending: list[torch.Tensor] = []  # per-step losses not yet checked for NaN / inf
    for epoch in epochs:
        model.train()
        t0 = time.perf_counter()
        loss_sum = torch.zeros(len(data.tasks), device=device)
        n_steps = 0
        for users, items, labels in data.batches(config.batch_size, gen, num_neg=config.num_neg):
            want_diag = config.diagnostics_every > 0 and step % config.diagnostics_every == 0
            per_task = want_diag or not fast_vanilla  # vanilla without diagnostics: one summed backward
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                if per_task:
                    tg = engine(users, items, labels)
                    losses = tg.losses
                else:
                    losses = engine.backward_sum(users, items, labels)
            pending.append(losses.detach())
            if len(pending) >= check_every:
                check_finite(step - len(pending) + 1, epoch)
            if per_task:
                combined = balancer(tg.shared)
                engine.write(tg, combined)
                if want_diag:
                    diag.append(_diagnostic_rows(step, epoch, tg, getattr(balancer, "last_weights", None)))
            for opt in optimizers:
                opt.step()
                opt.zero_grad(set_to_none=True)
            loss_sum += losses.detach().float()
            step += 1
            n_steps += 1
        if pending:
            check_finite(step - len(pending), epoch)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t_train = time.perf_counter() - t0
        train_seconds += t_train
        t1 = time.perf_counter()
        valid = evaluate(model, data, "valid", batch_users=config.eval_batch_users)
        row: dict[str, Any] = {"epoch": epoch, "steps": n_steps, "train_seconds": t_train,
                               "eval_seconds": time.perf_counter() - t1}
        mean_loss = (loss_sum / max(n_steps, 1)).tolist()
        row.update({f"loss_{t}": v for t, v in zip(data.tasks, mean_loss)})
        row.update({f"valid_{k}": v for k, v in valid.items()})
        history.append(row)
        score = valid[config.select_metric]
        if score > best["score"]:
            weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
            best = {"epoch": epoch, "score": score, "valid": valid, "weights": weights, "stale": 0}
        else:
            best["stale"] += 1
        if checkpoint_dir is not None:
            save_checkpoint(Path(checkpoint_dir) / "last.pt",
                            _state(model, optimizers, balancer, gen, epoch, history, best, diag))
        if config.patience is not None and best["stale"] >= config.patience:
            break

    if best["weights"] is not None:
        model.load_state_dict(best["weights"])
    test = evaluate(model, data, "test", batch_users=config.eval_batch_users)
    return FitResult(history=pd.DataFrame(history), best_epoch=best["epoch"], valid=best["valid"], test=test,
                     diagnostics=_diagnostics_frame(diag, names, data.tasks) if config.diagnostics_every else None,
                     config=config, device=str(device), train_seconds=train_seconds, model=model,
                     label=str(balancer))
