"""The training loop: device-agnostic, balancer-agnostic, dataset-agnostic.

`fit(data, config)` trains a `SharedBottomNeuMF` on a `TaskData` with one balancer and returns a `FitResult`
(history, best-epoch validation and test metrics, optional gradient diagnostics, a provenance record).

The step is the clean order: per-task gradients of the current parameters first, the balancer combines
them, then every optimizer steps. (The original MetaBalance example stepped the towers' optimizer before
back-propagating the shared part through them; PyTorch >= 1.5 raises on that, older versions silently used
the updated towers. mbkit does not copy it.)

Everything a run needs to continue is one `mbkit.checkpoint.RunState` (model, optimizers, balancer, RNG
streams, history, best epoch, with the configuration and the data fingerprint that identify the run);
checkpoints are its `checkpoint()` and a resume is checked against it before anything trains.
"""

from __future__ import annotations

import dataclasses
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pandas as pd
import torch

from mbkit import balancers as _balancers
from mbkit import diagnostics
from mbkit.checkpoint import (RunState, check_resume, data_fingerprint, exhausted, improved, load_checkpoint,
                              resume_entry)
from mbkit.data.split import TaskData
from mbkit.grads import MODES, GradEngine
from mbkit.metrics import MASKS, evaluate, metric_keys
from mbkit.model import ModelConfig, SharedBottomNeuMF
from mbkit.optim import make_optimizers
from mbkit.provenance import write_json
from mbkit.rundir import Replaced, claim_run_dir, lock_run_dir
from mbkit.utils import (atomic_write, check_progress, cpu_threads, make_generator, progress_bar, resolve_device,
                         seed_everything, setting)


METRIC_KEYS: tuple[str, ...] = tuple(metric_keys((10, 20)))
MAX_NEGATIVES = 1000  # an epoch's samples are (1 + num_neg) x the training positives, held on the device


class NonFiniteLossError(RuntimeError):
    """A task's loss became NaN or infinite; the message names the step and the task."""


def _progress(text: str) -> bool | str:
    return False if text == "off" else text


@dataclass
class TrainConfig:
    """Everything that decides how one run trains; `dataclasses.asdict` of it identifies the run."""

    balancer: str = setting("vanilla", "a name from mbkit.balancers, or several joined by '+' (e.g. "
                            "metabalance+pcgrad_adjusted)")
    balancer_kwargs: dict[str, Any] = setting(
        help="an argument of the balancer, e.g. relax_factor=0.7 for metabalance or c=0.5 for cagrad (VALUE is read "
             "as a Python literal; repeat for several)", factory=dict, flag="--balancer-arg")
    epochs: int = setting(20, "training epochs at most (the study trains 20)")
    batch_size: int = setting(256, "samples per step (the original's batch size)")
    lr: float = setting(1e-3, "Adam learning rate (the original's)")
    weight_decay: float = setting(1e-7, "Adam weight decay (the original's); compact mode leaves the tables out")
    num_neg: int = setting(4, "sampled negatives per positive, redrawn every epoch")
    aux_grad_scale: float = setting(1.0, "multiplies the gradient every auxiliary task sends into the shared bottom "
                                    "(its own tower trains as before): the imbalance dial of notebook 05 (1: the "
                                    "study's plain gradients)")
    seed: int = setting(0, "seeds the initialisation, dropout, negatives, shuffling and PCGrad's task order")
    mode: str = setting("compact", "compact: the batch's embedding rows, SparseAdam's update; dense: the original's "
                        "dense Adam over whole tables", choices=MODES)
    device: str = setting("auto", "auto (CUDA when visible, else CPU), cpu, cuda or cuda:N")
    select_metric: str = setting("ndcg@10", "the validation metric that picks the best epoch", choices=METRIC_KEYS)
    patience: int | None = setting(None, "stop after this many epochs without a better validation metric "
                                   "(none: train every epoch, keep the best)")
    diagnostics_every: int = setting(0, "sample per-task gradient diagnostics every N steps (0: off)")
    amp: bool = setting(False, "bf16 autocast for the forward pass (CUDA only)")
    nan_check_every: int = setting(0, "steps between finiteness checks of the losses; 0: every step on CPU (a bad "
                                   "step is never applied), 50 on CUDA (up to 49 bad steps may be applied)")
    eval_batch_users: int | None = setting(None, "users per ranking batch (none: chosen from the item count)")
    test_mask: str = setting("train", "test ranking masks training items (train, the study's protocol) or training "
                             "and validation items (train+valid)", choices=MASKS)
    progress: bool | str = setting(True, "epoch bar: auto (a widget in JupyterLab, text elsewhere), text, or off",
                                   choices=("auto", "text", "off"), parse=_progress)
    threads: int = setting(1, "CPU threads of each op while training and ranking; 1 suits this model's small ops and "
                           "keeps a busy machine from stalling them (0: torch's default, every core)")
    emb_dim: int = setting(64, "size of each of NeuMF's four embeddings (the study's)")
    mlp_layers: tuple[int, ...] = setting((32, 16, 8), "widths of NeuMF's MLP branch (the study's)")
    tower_layers: tuple[int, ...] = setting((64, 32), "hidden widths of each task's tower (the study's)")
    dropout: float = setting(0.5, "dropout probability in the MLP branch and the towers (the study's)")

    def __post_init__(self) -> None:
        if self.select_metric not in METRIC_KEYS:
            raise ValueError(f"select_metric={self.select_metric!r}; use one of {METRIC_KEYS}")
        if self.patience is not None and self.patience < 1:
            raise ValueError(f"patience={self.patience} must be >= 1 (or None to train every epoch)")
        if self.mode not in MODES:
            raise ValueError(f"mode must be 'compact' or 'dense', got {self.mode!r}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError(f"epochs and batch_size must be >= 1, got {self.epochs} and {self.batch_size}")
        for name in ("num_neg", "seed", "diagnostics_every", "nan_check_every", "threads"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 0")
        if not 0 < self.lr <= 1 or not 0 <= self.weight_decay < math.inf:
            raise ValueError(f"lr={self.lr} must lie in (0, 1] (the study's is 1e-3) and weight_decay="
                             f"{self.weight_decay} be finite and >= 0")
        if not 0 < self.aux_grad_scale < math.inf:
            raise ValueError(f"aux_grad_scale={self.aux_grad_scale} must be a finite factor > 0 (1: the study's "
                             "gradients; 0.01 or 100 make the auxiliary gradients a hundred times weaker or stronger)")
        if self.num_neg > MAX_NEGATIVES:
            raise ValueError(f"num_neg={self.num_neg}: at most {MAX_NEGATIVES} negatives per positive (an epoch holds "
                             f"1 + num_neg samples per positive in memory; the study uses 4)")
        if self.eval_batch_users is not None and self.eval_batch_users < 1:
            raise ValueError(f"eval_batch_users={self.eval_batch_users} must be >= 1 (or None to choose it)")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout={self.dropout} must be in [0, 1)")
        if self.test_mask not in MASKS:
            raise ValueError(f"test_mask={self.test_mask!r}; use 'train' (the study's protocol) or 'train+valid'")
        check_progress(self.progress)
        if self.device != "auto":
            try:
                torch.device(self.device)
            except (RuntimeError, TypeError) as e:
                raise ValueError(f"device={self.device!r} is not a device ({str(e).splitlines()[0]}); use auto, cpu, "
                                 "cuda or cuda:N") from None
        if not isinstance(self.balancer_kwargs, dict):
            raise ValueError(f"balancer_kwargs must be a dict, got {type(self.balancer_kwargs).__name__}")
        _balancers.make(self.balancer, **self.balancer_kwargs)  # unknown names and bad arguments fail here
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
    fingerprint: dict[str, Any] = field(default_factory=dict)  # the data it was trained on (data_fingerprint)
    resumes: list[dict[str, Any]] = field(default_factory=list)  # one entry per resume of the run
    code: dict[str, Any] = field(default_factory=dict)  # mbkit version and commit that started the run

    def summary(self) -> dict[str, Any]:
        return {"label": self.label, "balancer": self.config.balancer, "seed": self.config.seed,
                "best_epoch": self.best_epoch, "valid": self.valid, "test": self.test,
                "train_seconds": self.train_seconds,
                "steps": int(self.history["steps"].sum()) if "steps" in self.history else 0,
                "epochs_trained": len(self.history),
                "config": dataclasses.asdict(self.config),
                "data": self.fingerprint, "code": self.code, "resumes": self.resumes}

    def save(self, out: str | Path) -> Path:
        """Write history.csv, diagnostics.csv and metrics.json (with provenance) into `out`, each atomically.

        metrics.json comes last: a folder with a metrics.json holds a finished run.
        """
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write(out / "history.csv", self.history.to_csv(index=False))
        if self.diagnostics is not None:
            atomic_write(out / "diagnostics.csv", self.diagnostics.to_csv(index=False))
        write_json(out / "metrics.json", self.summary(), device=self.device)
        return out


def build_model(data: TaskData, config: TrainConfig, device: torch.device) -> SharedBottomNeuMF:
    cfg = ModelConfig(n_users=data.n_users, n_items=data.n_items, n_tasks=len(data.tasks),
                      emb_dim=config.emb_dim, mlp_layers=config.mlp_layers,
                      tower_layers=config.tower_layers, dropout=config.dropout)
    return SharedBottomNeuMF(cfg).to(device)


def new_run(data: TaskData, config: TrainConfig, device: torch.device,
            fingerprint: dict[str, Any] | None = None) -> tuple[RunState, GradEngine]:
    """A fresh run of `config` on `data` (seeded model, optimizers, balancer, sampler) and its gradient engine:
    the one set-up that `fit` trains and that `mbkit.study.cost.step_times` times."""
    seed_everything(config.seed)
    model = build_model(data, config, device)
    run = RunState(config=dataclasses.asdict(config), fingerprint=fingerprint or {}, model=model,
                   optimizers=make_optimizers(model, config.mode, lr=config.lr, weight_decay=config.weight_decay),
                   balancer=make_balancer(config), sampler=make_generator(config.seed, device))
    scale = [1.0] + [float(config.aux_grad_scale)] * (len(data.tasks) - 1)
    return run, GradEngine(model, mode=config.mode, grad_scale=scale)


def _check_finite(pending: list[torch.Tensor], first_step: int, epoch: int, tasks: tuple[str, ...]) -> None:
    losses = torch.stack(pending)  # (S, K)
    bad = ~torch.isfinite(losses)
    if bool(bad.any()):
        s, k = (int(v) for v in bad.nonzero()[0])
        raise NonFiniteLossError(
            f"the loss of task {tasks[k]!r} is {losses[s, k].item()} at step {first_step + s} (epoch {epoch}, "
            f"steps counted from 0 over the run). Lower the learning rate, check the input data, "
            f"or turn amp off")


def make_balancer(config: TrainConfig) -> Any:
    kwargs = dict(config.balancer_kwargs)
    if "seed" in _balancers.accepted_kwargs(config.balancer):  # PCGrad's task order follows the run's seed
        kwargs.setdefault("seed", config.seed)
    return _balancers.make(config.balancer, **kwargs)


class _FiniteGuard:
    """Per-step losses not yet checked for NaN / inf; checked in blocks to spare host syncs on CUDA."""

    def __init__(self, every: int, tasks: tuple[str, ...], checkpoint_dir: str | Path | None) -> None:
        self.every, self.tasks, self.checkpoint_dir = every, tasks, checkpoint_dir
        self.pending: list[torch.Tensor] = []

    def add(self, losses: torch.Tensor, step: int, epoch: int, run: RunState) -> None:
        self.pending.append(losses)
        if len(self.pending) >= self.every:
            self.flush(step - len(self.pending) + 1, epoch, run)

    def flush(self, first_step: int, epoch: int, run: RunState) -> None:
        if not self.pending:
            return
        try:
            _check_finite(self.pending, first_step, epoch, self.tasks)
        except NonFiniteLossError:
            if self.checkpoint_dir is not None:  # the state before the epoch's steps is not kept: save this one
                run.save(Path(self.checkpoint_dir) / "nonfinite.pt", resumable=False)
            raise
        self.pending.clear()


PATHS = ("sum", "representation", "parameters")


def step_path(config: TrainConfig, balancer: Any, diagnose: bool = False) -> str:
    """How a step computes its gradients. "sum": one backward of the summed loss (Vanilla). "representation":
    the towers' per-task gradients of h, combined by the balancer, then one backward through the bottom (a
    balancer of `level` "representation", and those with `scalar_weights`, whose sum_k w_k g_k over the
    parameters is exactly the backward of sum_k w_k dL_k/dh). "parameters": every shared tensor's per-task
    gradients in one batched backward. Diagnostics (`diagnose`) need the parameters' per-task gradients."""
    if getattr(balancer, "level", "parameters") == "representation":
        return "representation"
    if diagnose:
        return "parameters"
    if config.balancer == "vanilla":
        return "sum"
    return "representation" if getattr(balancer, "scalar_weights", False) else "parameters"


def train_step(run: RunState, engine: GradEngine, users: torch.Tensor, items: torch.Tensor, labels: torch.Tensor,
               *, path: str = "parameters", amp: bool = False,
               check: Callable[[torch.Tensor], None] | None = None) -> tuple[torch.Tensor, Any]:
    """One optimisation step of `run` on a batch along `path` (see `step_path`): the per-task gradients, the
    balancer's combination written back, every optimizer's step. `check(losses)` sees the (K,) per-task
    losses before anything is updated. A balancer that `uses_losses_after_step` (FAMO) then gets the same
    batch's losses after the step. Returns the losses and the per-task gradients (None on the "sum" path)."""
    if path not in PATHS:
        raise ValueError(f"path={path!r}; use one of {PATHS}")
    tg = None
    balancer = run.balancer
    with torch.autocast(users.device.type, dtype=torch.bfloat16, enabled=amp):
        if path == "sum":
            losses = engine.backward_sum(users, items, labels)
        else:
            tg = (engine.representation if path == "representation" else engine)(users, items, labels)
            losses = tg.losses
    losses = losses.detach()
    if check is not None:
        check(losses)
    if tg is not None:
        # (K,) per-task mean losses of this batch, target first, for balancers that weigh by loss
        uses_losses = getattr(balancer, "uses_losses", False)
        combined = balancer(tg.shared, losses=losses) if uses_losses else balancer(tg.shared)
        if tg.bottom is not None:
            tg.bottom(combined[0])
            engine.write_towers(tg)
        else:
            engine.write(tg, combined)
    for opt in run.optimizers:
        opt.step()
        opt.zero_grad(set_to_none=True)
    if getattr(balancer, "uses_losses_after_step", False):
        with torch.no_grad(), torch.autocast(users.device.type, dtype=torch.bfloat16, enabled=amp):
            after = engine.losses(users, items, labels)
        balancer.after_step(after)
    return losses, tg


def _train_epoch(run: RunState, data: TaskData, engine: GradEngine, config: TrainConfig, guard: _FiniteGuard,
                 step: int, epoch: int, amp: bool) -> tuple[int, torch.Tensor]:
    """One epoch of steps; returns the global step count after it and the (K,) summed per-task losses."""
    run.model.train()
    loss_sum = torch.zeros(len(data.tasks), device=data.device)
    for users, items, labels in data.batches(config.batch_size, run.sampler, num_neg=config.num_neg):
        want_diag = config.diagnostics_every > 0 and step % config.diagnostics_every == 0
        losses, tg = train_step(run, engine, users, items, labels, path=step_path(config, run.balancer, want_diag),
                                amp=amp,
                                check=lambda losses: guard.add(losses, step, epoch, run))
        if want_diag:
            run.diagnostics.append(diagnostics.sample(step, epoch, tg, getattr(run.balancer, "last_weights", None)))
        loss_sum += losses.float()
        step += 1
    guard.flush(step - len(guard.pending), epoch, run)
    return step, loss_sum


def check_data(data: TaskData, config: TrainConfig) -> None:
    """What the data must hold for `config` to train and be evaluated, checked before any step: purchases in
    both held-out splits, enough items for the largest K, an auxiliary task for a balancer to balance."""
    for split in ("valid", "test"):
        if data.eval_users(split).numel() == 0:
            raise ValueError(f"the {split} split holds no {data.target!r} pair, so no epoch can be evaluated; use a "
                             "larger log, lower the filter thresholds or change the split fractions")
    k = max(int(key.split("@")[1]) for key in METRIC_KEYS)
    if data.n_items < k:
        raise ValueError(f"the data have {data.n_items} items, fewer than the K={k} of the metrics every epoch "
                         "reports (NDCG@20, Recall@20); use a log with more items or lower the filter thresholds")
    if len(data.tasks) == 1 and config.balancer not in ("vanilla", "single_task"):
        raise ValueError(f"the data have one task ({data.target!r}) and no auxiliary behavior, so {config.balancer!r} "
                         "has nothing to balance and would train as Vanilla; train balancer='vanilla', or use a log "
                         "with auxiliary behaviors")
    positives = data.labels.sum(0).tolist()
    for task, n in zip(data.tasks[1:], positives[1:]):
        if n == 0:
            warnings.warn(f"auxiliary task {task!r} has no training positive (its pairs are all held-out purchases, "
                          "or there are none): its tower learns negatives only and adds nothing but noise to the "
                          "shared layers", stacklevel=3)


def fit(data: TaskData, config: TrainConfig | None = None, *, checkpoint_dir: str | Path | None = None,
        resume: str | Path | None = None, overwrite: bool = False,
        on_epoch: Callable[[int, int], None] | None = None) -> FitResult:
    """Train with `config.balancer`, evaluate on validation every epoch, return the best epoch's metrics.

    `checkpoint_dir` receives `last.pt` after every epoch (and `nonfinite.pt` if a loss turns NaN); the run
    holds the folder's lock throughout (`mbkit.rundir`), so a second run there fails at once. A folder that
    already holds a run is refused unless `resume` lies in it or `overwrite=True`, which sets the old run
    aside until this run's first checkpoint exists (and puts it back if this run fails before). `resume`
    continues from such a checkpoint and reproduces the uninterrupted run on CPU; it is refused when the
    checkpoint's configuration (except `RESUMABLE_CHANGES`) or data fingerprint differ from this run's.
    `on_epoch(epoch, epochs)` is called after every completed epoch (e.g. by a grid's progress bar).
    """
    config = config or TrainConfig()
    with cpu_threads(config.threads):
        return _claim_and_fit(data, config, checkpoint_dir, resume, overwrite, on_epoch)


def _claim_and_fit(data: TaskData, config: TrainConfig, checkpoint_dir: str | Path | None, resume: str | Path | None,
                   overwrite: bool, on_epoch: Callable[[int, int], None] | None) -> FitResult:
    ckpt = load_checkpoint(resume) if resume is not None else None
    if ckpt is not None:
        check_resume(ckpt, dataclasses.asdict(config), None, resume)  # no data work for a wrong checkpoint
    if checkpoint_dir is None:
        return _fit(data, config, ckpt, resume, None, None, on_epoch)
    with lock_run_dir(checkpoint_dir):
        replaced = claim_run_dir(checkpoint_dir, resume=resume, overwrite=overwrite)
        try:
            return _fit(data, config, ckpt, resume, Path(checkpoint_dir), replaced, on_epoch)
        finally:
            if replaced is not None:
                replaced.done() if (Path(checkpoint_dir) / "last.pt").exists() else replaced.undo()


def _fit(data: TaskData, config: TrainConfig, ckpt: dict[str, Any] | None, resume: str | Path | None,
         checkpoint_dir: Path | None, replaced: Replaced | None,
         on_epoch: Callable[[int, int], None] | None) -> FitResult:
    device = resolve_device(config.device)
    if data.device != device:
        data = data.to(device)
    check_data(data, config)
    fingerprint = data_fingerprint(data)
    changed = check_resume(ckpt, dataclasses.asdict(config), fingerprint, resume) if ckpt is not None else {}

    run, engine = new_run(data, config, device, fingerprint)
    model = run.model
    if ckpt is not None:
        run.restore(ckpt, resume)
        run.resumes.append(resume_entry(ckpt, changed, resume))
    # the tensors a balancer sees: the shared parameters, or the shared representation h
    rep = getattr(run.balancer, "level", "parameters") == "representation"
    names = ["representation"] if rep else list(model.shared_parameters())
    amp = config.amp and device.type == "cuda"
    guard = _FiniteGuard(config.nan_check_every or (1 if device.type == "cpu" else 50), data.tasks, checkpoint_dir)

    start_epoch = run.epoch + 1
    if exhausted(run.best["stale"], config.patience):
        start_epoch = config.epochs + 1  # the checkpointed run had already stopped early
    bar = progress_bar(config.progress, desc=str(run.balancer), initial=start_epoch - 1, total=config.epochs,
                       unit="epoch")
    step = sum(h["steps"] for h in run.history)
    train_seconds = sum(h["train_seconds"] for h in run.history)
    try:
        for epoch in range(start_epoch, config.epochs + 1):
            t0 = time.perf_counter()
            first = step
            step, loss_sum = _train_epoch(run, data, engine, config, guard, step, epoch, amp)
            end_epoch = getattr(run.balancer, "end_epoch", None)
            if callable(end_epoch):
                end_epoch()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t_train = time.perf_counter() - t0
            train_seconds += t_train
            t1 = time.perf_counter()
            valid = evaluate(model, data, "valid", batch_users=config.eval_batch_users)
            n_steps = step - first
            row: dict[str, Any] = {"epoch": epoch, "steps": n_steps, "train_seconds": t_train,
                                   "eval_seconds": time.perf_counter() - t1}
            row.update({f"loss_{t}": v for t, v in zip(data.tasks, (loss_sum / max(n_steps, 1)).tolist())})
            row.update({f"valid_{k}": v for k, v in valid.items()})
            run.history.append(row)
            run.epoch = epoch
            score = valid[config.select_metric]
            if improved(score, run.best["score"]):
                weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
                run.best = {"epoch": epoch, "score": score, "valid": valid, "weights": weights, "stale": 0}
            else:
                run.best["stale"] += 1
            if checkpoint_dir is not None:
                run.save(checkpoint_dir / "last.pt")
                if replaced is not None:  # the new run has a checkpoint: the old one may go
                    replaced.done()
            if bar is not None:
                bar.update(1)
            if on_epoch is not None:
                on_epoch(epoch, config.epochs)
            if exhausted(run.best["stale"], config.patience):
                break
    finally:
        if bar is not None:
            bar.close()

    best = run.best
    if best["weights"] is not None:
        model.load_state_dict(best["weights"])
    test = evaluate(model, data, "test", batch_users=config.eval_batch_users, mask=config.test_mask)
    return FitResult(history=pd.DataFrame(run.history), best_epoch=best["epoch"], valid=best["valid"], test=test,
                     diagnostics=(diagnostics.frame(run.diagnostics, names, data.tasks)
                                  if config.diagnostics_every else None),
                     config=config, device=str(device), train_seconds=train_seconds, model=model,
                     label=str(run.balancer), fingerprint=fingerprint, resumes=run.resumes, code=run.code)
