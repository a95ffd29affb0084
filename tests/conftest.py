"""Fixtures shared by the tests (the constants behind them are in tests/helpers.py)."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from helpers import FILTER, WORLD
from mbkit.data import TaskData, build_task_data, filter_log, synthesize


@pytest.fixture(scope="session")
def small_log() -> pd.DataFrame:
    """The small synthetic world, raw (read-only: copy before changing it)."""
    return synthesize(**WORLD)


@pytest.fixture(scope="session")
def filtered(small_log) -> pd.DataFrame:
    """The small world after the filter (read-only)."""
    return filter_log(small_log, **FILTER)


@pytest.fixture(scope="session")
def task_data(filtered) -> TaskData:
    """The small world's split on the CPU (read-only: `dataclasses.replace` it to change a field)."""
    return build_task_data(filtered, seed=0, device="cpu")


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module of K x K arithmetic on tiny tensors, where OpenMP threads only add
    overhead (a lot on a shared machine): `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
