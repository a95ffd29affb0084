"""The state of one training run, what makes a run identifiable (its configuration and its data), and the
patience rule that decides when it stops.

`RunState` holds everything `fit` needs to continue a run (model, optimizers, balancer, RNG streams,
history, best epoch, diagnostics) together with the run's identity (the full `TrainConfig` as a dict, the
data fingerprint, the code version and the history of resumes). Checkpoints are `RunState.checkpoint()`
dicts of tensors and plain values: they load with `torch.load(weights_only=True)` and `load_checkpoint`
checks their schema. `check_resume` refuses a checkpoint whose configuration or data differ from the
current run except in `RESUMABLE_CHANGES`.

`improved` and `exhausted` are the early-stopping rule, the one that `fit` applies, that a resumed run
re-applies and that `check_resume` replays on a checkpoint's history (`stopping_epoch`).

What may write into a run's folder is `mbkit.rundir`'s.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mbkit.provenance import code_version
from mbkit.utils import atomic_write

SCHEMA = "mbkit-run/2"
# Settings that may differ between a checkpoint and the run that resumes it: how long to train and how
# the run is watched or evaluated in batches, never what is trained. (Not diagnostics_every: it moves
# Vanilla from its one-backward path to the per-task one, whose float sums differ in their last bits.)
RESUMABLE_CHANGES: frozenset[str] = frozenset(
    {"epochs", "patience", "progress", "device", "eval_batch_users", "nan_check_every", "test_mask", "threads"})
# Settings added after runs were recorded without them: such a run behaved as the value given here (runs
# before `threads` ran with the process's setting, one thread under the make targets).
LATER_SETTINGS: dict[str, Any] = {"test_mask": "train", "threads": 1, "aux_grad_scale": 1.0}
_CHECKPOINT_KEYS = frozenset({"schema", "config", "fingerprint", "code", "resumes", "epoch", "resumable",
                              "model", "optimizers", "balancer", "sampler_rng", "torch_rng", "cuda_rng",
                              "history", "best", "diagnostics"})


class CheckpointError(ValueError):
    """A checkpoint cannot be read, or belongs to another run; the message says what to do."""


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def data_fingerprint(data: Any) -> dict[str, Any]:
    """Identity of a `TaskData`: how it was made (filter, split seed) and what it holds, with where it was read
    from and what the reader skipped or found outside the log's window as information (`INFORMATION`).

    The hash covers the held-out (valid, test) pairs and the training positives with their labels, in raw
    ids when known, so two splits of the same log, or two filters, never share a fingerprint.
    """
    meta = dict(getattr(data, "meta", {}) or {})

    def pairs(users: torch.Tensor, items: torch.Tensor) -> np.ndarray:
        u, i = users.cpu().numpy(), items.cpu().numpy()
        if data.user_ids is not None and data.item_ids is not None:
            u, i = data.user_ids[u], data.item_ids[i]
        return np.stack([u.astype(np.int64), i.astype(np.int64)], axis=1)

    def csr_pairs(csr: Any) -> np.ndarray:
        rows = torch.repeat_interleave(torch.arange(data.n_users, device=csr.indptr.device), csr.row_lengths())
        return pairs(rows, csr.indices)

    h = hashlib.sha256()
    for part in (csr_pairs(data.valid_csr), csr_pairs(data.test_csr), pairs(data.users, data.items),
                 data.labels.cpu().numpy().astype(np.float32)):
        h.update(np.ascontiguousarray(part).tobytes())
    return {
        "source": meta.get("source"),
        "filter": meta.get("filter"),
        "target": data.target,
        "tasks": list(data.tasks),
        "split_seed": meta.get("split_seed"),
        "fractions": meta.get("fractions"),
        "n_users": int(data.n_users),
        "n_items": int(data.n_items),
        "train_positives": int(data.users.numel()),
        "valid_pairs": int(data.valid_csr.indices.numel()),
        "test_pairs": int(data.test_csr.indices.numel()),
        "sha256": h.hexdigest(),
        "rows": meta.get("rows"),
        "split": meta.get("split"),
    }


def _plain(x: Any) -> Any:
    """Config values as JSON and a checkpoint store them (tuples become lists)."""
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x


def config_differences(saved: dict[str, Any], current: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """{setting: (saved, current)} for every setting whose value differs (tuples and lists compare equal);
    a run configuration saved before a setting of `LATER_SETTINGS` existed has that setting's value."""
    saved, current = _plain(saved), _plain(current)
    if "balancer" in saved:  # a run configuration (not a data fingerprint)
        saved = {**LATER_SETTINGS, **saved}
    return {k: (saved.get(k), current.get(k)) for k in sorted(set(saved) | set(current))
            if saved.get(k) != current.get(k)}


# Fingerprint entries kept with a run as information, not as its identity: the same pairs read from another
# path (or from a byte-identical copy) are the same data.
INFORMATION: frozenset[str] = frozenset({"source", "rows", "split"})


def fingerprint_differences(saved: dict[str, Any], current: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """{entry: (saved, current)} for every entry of two data fingerprints that identifies the data and differs:
    sizes, filter and split first (they say more than the hash that follows from them), the hash last."""
    keys = [k for k in current if k not in INFORMATION and k != "sha256"] + ["sha256"]
    return {k: (saved.get(k), current.get(k)) for k in keys if _plain(saved.get(k)) != _plain(current.get(k))}


@dataclass
class RunState:
    """Everything a run needs to continue, and its identity. Live objects, not copies."""

    config: dict[str, Any]  # dataclasses.asdict(TrainConfig)
    fingerprint: dict[str, Any]  # data_fingerprint(data)
    model: torch.nn.Module
    optimizers: list[torch.optim.Optimizer]
    balancer: Any
    sampler: torch.Generator  # negatives and shuffling
    epoch: int = 0  # completed epochs
    history: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] = field(default_factory=lambda: {"epoch": 0, "score": -math.inf, "valid": {},
                                                          "weights": None, "stale": 0})
    diagnostics: list[dict[str, torch.Tensor]] = field(default_factory=list)
    resumes: list[dict[str, Any]] = field(default_factory=list)  # one entry per resume, oldest first
    code: dict[str, Any] = field(default_factory=code_version)

    def checkpoint(self, resumable: bool = True) -> dict[str, Any]:
        """A dict of tensors and plain values (loads with weights_only=True)."""
        return {
            "schema": SCHEMA, "config": _plain(self.config), "fingerprint": self.fingerprint, "code": self.code,
            "resumes": self.resumes, "epoch": self.epoch, "resumable": resumable,
            "model": self.model.state_dict(), "optimizers": [o.state_dict() for o in self.optimizers],
            "balancer": self.balancer.state_dict(), "sampler_rng": self.sampler.get_state(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            "history": self.history, "best": self.best, "diagnostics": self.diagnostics,
        }

    def save(self, path: str | Path, resumable: bool = True) -> Path:
        """Write the checkpoint atomically (temporary file, then rename)."""
        state = self.checkpoint(resumable)
        return atomic_write(path, lambda tmp: torch.save(state, tmp))

    def restore(self, ckpt: dict[str, Any], source: str | Path) -> None:
        """Load a checked checkpoint (`load_checkpoint` + `check_resume`) into the live objects."""
        try:
            self.model.load_state_dict(ckpt["model"])
            if len(ckpt["optimizers"]) != len(self.optimizers):
                raise ValueError(f"{len(ckpt['optimizers'])} optimizer states for {len(self.optimizers)} optimizers")
            for opt, s in zip(self.optimizers, ckpt["optimizers"]):
                opt.load_state_dict(s)
            self.balancer.load_state_dict(ckpt["balancer"])
            self.sampler.set_state(ckpt["sampler_rng"])
            torch.set_rng_state(ckpt["torch_rng"])
        except (RuntimeError, ValueError, KeyError, TypeError) as e:
            raise CheckpointError(f"{source}: its saved state does not fit this run ({str(e).splitlines()[0]}); "
                                  "start a new run without resume") from None
        if ckpt["cuda_rng"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(ckpt["cuda_rng"])
        self.epoch, self.history, self.best = int(ckpt["epoch"]), ckpt["history"], ckpt["best"]
        self.diagnostics = ckpt["diagnostics"]
        self.resumes = list(ckpt["resumes"])
        self.code = dict(ckpt["code"])


def _load_error(e: Exception) -> str:
    """The informative line of a torch.load failure (weights_only errors bury it under advice)."""
    advice = ("Weights only load failed", "Please file an issue", "Check the documentation")
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip() and not ln.strip().startswith(advice)]
    return (lines or [type(e).__name__])[0].rstrip(".")[:160]


_CHECKPOINT_TYPES: dict[str, type | tuple[type, ...]] = {
    "schema": str, "config": dict, "fingerprint": dict, "code": dict, "resumes": list, "epoch": int,
    "resumable": bool, "model": dict, "optimizers": list, "balancer": dict, "sampler_rng": torch.Tensor,
    "torch_rng": torch.Tensor, "cuda_rng": (list, type(None)), "history": list, "best": dict, "diagnostics": list}
_BEST_KEYS = frozenset({"epoch", "score", "valid", "weights", "stale"})


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read (to CPU) and schema-check an mbkit checkpoint; any other file raises `CheckpointError`.

    Tensors stay on the CPU: RNG states must, and `load_state_dict` copies the rest onto the run's device.
    """
    path = Path(path)
    todo = "pass the last.pt of an mbkit run, or start a new run without --resume"
    if path.is_dir():
        hint = f" (e.g. {path / 'last.pt'})" if (path / "last.pt").is_file() else ""
        raise CheckpointError(f"resume {path} is a folder; pass the checkpoint file inside it{hint}")
    if not path.is_file():
        raise CheckpointError(f"resume {path}: no such file; {todo}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"resume {path} is an empty file (an interrupted copy?); {todo}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for files that are not its zip format
        raise CheckpointError(f"resume {path} is not a readable mbkit checkpoint ({_load_error(e)}); {todo}") from None
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"resume {path} holds a {type(ckpt).__name__}, not an mbkit checkpoint; {todo}")
    if ckpt.get("schema") != SCHEMA:
        found = ckpt.get("schema", "none: saved by an mbkit older than run fingerprints, or not by mbkit")
        raise CheckpointError(f"resume {path} has checkpoint schema {found!r}, expected {SCHEMA!r}; "
                              "it cannot be resumed safely, start a new run without --resume")
    missing = sorted(_CHECKPOINT_KEYS - set(ckpt))
    if missing:
        raise CheckpointError(f"resume {path} lacks {missing}; the file is damaged, start a new run without --resume")
    for key, kind in _CHECKPOINT_TYPES.items():
        value = ckpt[key]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            expected = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
            raise CheckpointError(f"resume {path}: its {key} is a {type(value).__name__}, not a {expected}; the file "
                                  "is damaged or was not written by mbkit: start a new run without --resume")
    if set(ckpt["best"]) != _BEST_KEYS or not all(isinstance(row, dict) for row in ckpt["history"]):
        raise CheckpointError(f"resume {path}: its best epoch or history is not mbkit's; the file is damaged or was "
                              "not written by mbkit: start a new run without --resume")
    if not ckpt["resumable"]:
        last = path.with_name("last.pt")
        todo = (f"resume from the last end-of-epoch checkpoint ({last}) instead" if last.is_file() else
                "no epoch had finished, so there is no checkpoint to resume: start a new run (with a lower learning "
                "rate, or after checking the data)")
        raise CheckpointError(f"resume {path} was saved when a loss turned non-finite, in the middle of an epoch; "
                              f"{todo}")
    return ckpt


def improved(score: float, best: float) -> bool:
    """The patience rule, part 1: an epoch improves on the best one only with a strictly better score."""
    return score > best


def exhausted(stale: int, patience: int | None) -> bool:
    """The patience rule, part 2: a run stops once `patience` epochs in a row did not improve (never if None)."""
    return patience is not None and stale >= patience


def stopping_epoch(scores: list[float], patience: int | None) -> int | None:
    """The epoch (1-based) at which the patience rule ends a run with these validation scores, or None."""
    best, stale = -math.inf, 0
    for epoch, score in enumerate(scores, start=1):
        if improved(score, best):
            best, stale = score, 0
        else:
            stale += 1
        if exhausted(stale, patience):
            return epoch
    return None


def check_resume(ckpt: dict[str, Any], config: dict[str, Any], fingerprint: dict[str, Any] | None,
                 source: str | Path) -> dict[str, tuple[Any, Any]]:
    """Refuse a checkpoint of another run; return the allowed changes ({setting: (saved, current)}).

    `fingerprint=None` checks the configuration only (before the data are read).
    """
    changed = config_differences(ckpt["config"], config)
    wrong = {k: v for k, v in changed.items() if k not in RESUMABLE_CHANGES}
    if wrong:
        k, (old, new) = next(iter(wrong.items()))
        more = f" (and {', '.join(list(wrong)[1:])})" if len(wrong) > 1 else ""
        raise CheckpointError(f"cannot resume {source}: it was trained with {k}={old!r}, this run asks for "
                              f"{k}={new!r}{more}; use the checkpoint's settings, or start a new run in another "
                              "folder without --resume")
    if "patience" in changed and config.get("patience") is not None:
        stop = stopping_epoch([row[f"valid_{config['select_metric']}"] for row in ckpt["history"]],
                              int(config["patience"]))
        if stop is not None and stop < int(ckpt["epoch"]):
            raise CheckpointError(f"cannot resume {source}: with patience={config['patience']} it would have stopped "
                                  f"at epoch {stop}, but it trained on to epoch {ckpt['epoch']}; resume with its "
                                  f"patience={ckpt['config'].get('patience')!r}, or start a new run in another "
                                  "folder without --resume")
    if int(ckpt["epoch"]) > int(config["epochs"]):
        raise CheckpointError(f"cannot resume {source}: it has trained {ckpt['epoch']} epochs, more than the "
                              f"epochs={config['epochs']} asked for; ask for at least {ckpt['epoch']} epochs, or "
                              "start a new run in another folder without --resume")
    if fingerprint is not None:
        data_changed = fingerprint_differences(ckpt["fingerprint"], fingerprint)
        if data_changed:
            k, (old, new) = next(iter(data_changed.items()))
            what = "its held-out and training pairs differ" if k == "sha256" else f"{k}={old!r} there, {new!r} here"
            raise CheckpointError(f"cannot resume {source}: it was trained on other data ({what}); use the same "
                                  "data, filter and split seed, or start a new run in another folder without "
                                  "--resume")
    return {k: v for k, v in changed.items() if k in RESUMABLE_CHANGES}


def resume_entry(ckpt: dict[str, Any], changed: dict[str, tuple[Any, Any]], source: str | Path) -> dict[str, Any]:
    """One line of a run's resume history."""
    return {"from_epoch": int(ckpt["epoch"]), "checkpoint": str(source), "at": _now(),
            "changed": {k: list(v) for k, v in changed.items()}, **code_version()}
