"""Progress bars on stderr or as a notebook widget, never on stdout (whose text nbval compares).

`progress=True` or `"auto"`: tqdm.auto (a widget bar in JupyterLab when ipywidgets is installed, else a text
bar); `"text"`: always a plain text bar on stderr (papermill, logs); `False`: none.
"""

from __future__ import annotations

import sys
from typing import Any

PROGRESS_CHOICES = (True, False, "auto", "text")


def check_progress(progress: Any) -> None:
    if not any(progress is c or (isinstance(c, str) and progress == c) for c in PROGRESS_CHOICES):
        raise ValueError(f"progress={progress!r}; use True or 'auto' (widget in JupyterLab, text elsewhere), "
                         "'text' (text bar on stderr) or False")


def progress_bar(progress: bool | str, **kwargs: Any) -> Any:
    """A tqdm bar for `progress` (see the module docstring), or None when it is off."""
    check_progress(progress)
    if progress is False:
        return None
    if progress == "text":
        from tqdm.std import tqdm
        return tqdm(file=sys.stderr, **kwargs)
    from tqdm.auto import tqdm
    return tqdm(**kwargs)
