"""What the notebooks share beyond the science: where their outputs go."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from mbkit.provenance import ROOT, jsonable
from mbkit.study.checks import committed_record, params_differ


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
            differ = params_differ(params, committed_record(notebook), notebook)
            if differ:
                key = json.dumps(jsonable(params), sort_keys=True).encode()
                scratch = ROOT / "build" / "explore" / f"{notebook}-{hashlib.sha256(key).hexdigest()[:8]}"
                out = [scratch / Path(d).name for d in directories]
                names = ", ".join(sorted(differ))
                print(f"parameters differ from the committed results ({names}): outputs go to {scratch}")
    for d in out:
        d.mkdir(parents=True, exist_ok=True)
    return out
