"""Results with provenance: every JSON that mbkit writes says which code, packages, device and seed made it."""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import platform
import subprocess
from pathlib import Path
from typing import Any

import numpy as np

from mbkit._version import __version__
from mbkit.utils import atomic_write

ROOT = Path(__file__).resolve().parent.parent


# What decides the numbers: the package, its dependency pins and the parameter files. Notebooks, figures
# and results are outputs that `make reproduce` rewrites, so they do not make a record "dirty".
CODE_PATHS = ("mbkit", "pyproject.toml", "requirements", "notebooks/params", "Makefile")


def git_commit() -> str | None:
    """HEAD's commit; when the code (`CODE_PATHS`) differs from it, suffixed `-dirty-` and a hash of that
    difference (two different edits never look alike); None outside a checkout."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True)
        diff = subprocess.run(["git", "diff", "HEAD", "--", *CODE_PATHS], cwd=ROOT, capture_output=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    if not diff.stdout.strip():
        return head.stdout.strip()
    return f"{head.stdout.strip()}-dirty-{hashlib.sha256(diff.stdout).hexdigest()[:8]}"


def provenance(device: Any = None) -> dict[str, Any]:
    """Code version, package versions, device and time of a result."""
    import pandas
    import torch

    dev = str(device) if device is not None else None
    info: dict[str, Any] = {
        "mbkit": __version__,
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


def jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
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
    """Write `payload` plus a `provenance` block as indented JSON, atomically; returns the path."""
    body = dict(jsonable(payload))
    body["provenance"] = provenance(device)
    return atomic_write(path, json.dumps(body, indent=2, sort_keys=False) + "\n")


def read_json(path: str | Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text())


def code_version() -> dict[str, Any]:
    """The package version and commit that a run or a checkpoint records."""
    return {"mbkit": __version__, "git_commit": git_commit()}
