"""Results with provenance: every JSON that mbkit writes says which code, packages, device and seed made it."""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import numpy as np

import mbkit

ROOT = Path(__file__).resolve().parent.parent


def git_commit() -> str | None:
    """The repository's HEAD commit, suffixed `-dirty` when tracked files differ; None outside a checkout."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def provenance(device: Any = None) -> dict[str, Any]:
    """Code version, package versions, device and time of a result."""
    import pandas
    import torch

    dev = str(device) if device is not None else None
    info: dict[str, Any] = {
        "mbkit": mbkit.__version__,
        "git_commit": git_commit(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "pandas": pandas.__version__,
        "platform": platform.platform(),
        "device": dev,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    if dev is not None and dev.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(torch.device(dev))
    else:
        info["cpu_threads"] = torch.get_num_threads()
    return info


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, Path):
        return str(x)
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating, float)):
        x = float(x)
        return x if math.isfinite(x) else None
    if hasattr(x, "tolist"):
        return x.tolist()
    return x


def write_json(path: str | Path, payload: dict[str, Any], device: Any = None) -> Path:
    """Write `payload` plus a `provenance` block as indented JSON; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    body = dict(_jsonable(payload))
    body["provenance"] = provenance(device)
    path.write_text(json.dumps(body, indent=2, sort_keys=False) + "\n")
    return path


def read_json(path: str | Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text())


def output_dirs(*directories: str | Path) -> list[Path]:
    """The notebooks' output folders, redirected under `$MBKIT_OUTPUT_ROOT` when it is set.

    `make test` sets it so that re-executing the notebooks never rewrites the committed `figures/` and
    `results/`; papermill runs and interactive sessions leave it unset and write in place.
    """
    root = os.environ.get("MBKIT_OUTPUT_ROOT")
    out = [Path(root) / Path(d).name if root else Path(d) for d in directories]
    for d in out:
        d.mkdir(parents=True, exist_ok=True)
    return out
