"""Results with provenance: every JSON that mbkit writes says which code, packages, device and seed made it."""

from __future__ import annotations

import datetime as _dt
import hashlib
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
    """Write `payload` plus a `provenance` block as indented JSON, atomically; returns the path.

    The text goes to a temporary file in the same folder, then replaces `path` in one rename, so an
    interrupted write leaves the previous file or the new one, never a truncated one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    body = dict(_jsonable(payload))
    body["provenance"] = provenance(device)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(body, indent=2, sort_keys=False) + "\n")
    os.replace(tmp, path)
    return path


def read_json(path: str | Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text())


def output_dirs(*directories: str | Path, notebook: str | None = None,
                params: dict[str, Any] | None = None) -> list[Path]:
    """The notebook's output folders: in place, under `$MBKIT_OUTPUT_ROOT`, or in a scratch folder.

    - `$MBKIT_OUTPUT_ROOT` set (`make test`, the browser test): everything goes under it.
    - `notebook` and `params` given, and the committed `results/<notebook>.json` was made with other
      parameters: the outputs go to `build/explore/<notebook>-<hash of params>/`, and a line says so.
      Exploring in JupyterLab never rewrites the committed figures and results.
    - otherwise in place (`make reproduce` with the parameters that produced the committed results).
    """
    root = os.environ.get("MBKIT_OUTPUT_ROOT")
    if root:
        out = [Path(root) / Path(d).name for d in directories]
    else:
        out = [Path(d) for d in directories]
        if notebook is not None and params is not None:
            from mbkit.checks import committed_record, params_differ

            differ = params_differ(params, committed_record(notebook))
            if differ:
                key = json.dumps(_jsonable(params), sort_keys=True).encode()
                scratch = ROOT / "build" / "explore" / f"{notebook}-{hashlib.sha256(key).hexdigest()[:8]}"
                out = [scratch / Path(d).name for d in directories]
                names = ", ".join(sorted(differ))
                print(f"parameters differ from the committed results ({names}): outputs go to {scratch}")
    for d in out:
        d.mkdir(parents=True, exist_ok=True)
    return out
