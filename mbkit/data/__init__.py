"""The data layer: raw UserBehavior log -> filtered log -> leakage-free split -> device-resident task samples.

The pipeline of the thesis (the original MetaBalance data code was never released), one module per step:

1. `read`: `read_userbehavior` reads the Tianchi UserBehavior-2017 file as published, validating every row
   (`load.load_filtered` streams the same validation over the 3.5 GB file in bounded memory).
2. `filter`: `filter_log` keeps users with >= 10 distinct purchased items and items with >= 10 distinct
   buyers; `log_stats` and `table1_comparison` give the thesis's Table 1.
3. `split`: `build_task_data` splits the distinct purchase pairs 70/15/15, removes held-out purchase pairs
   from every auxiliary behavior, and builds the training positives with one 0/1 label per task;
   `TaskData.batches` yields shuffled mini-batches with freshly drawn negatives, as device tensor slices.

`synthetic.synthesize`, a documented generative model in the same schema, is the built-in default log;
`public.fetch(name)` brings the field's public multi-behavior sets into the same schema (verified downloads at
pinned commits, `download`). `DataConfig` holds the settings of the whole pipeline in one place
(`DataConfig().load()`; `data` is "synthetic", a path, or a fetched set's name).
"""

from mbkit.data.csr import CSR
from mbkit.data.filter import (filter_log, log_stats, raw_behavior_counts, table1_comparison, table1_ratios,
                               thesis_stats)
from mbkit.data.load import DataConfig, load_filtered
from mbkit.data.public import fetch
from mbkit.data.read import read_userbehavior, write_userbehavior
from mbkit.data.schema import (BEHAVIORS, COLUMNS, DEFAULT_FILTER_MODE, FILTER_MODES, STATS_COLUMNS, THESIS_STATS,
                               WINDOW, FilterMode)
from mbkit.data.split import LeakageError, TaskData, build_task_data, check_no_leakage, sample_summary
from mbkit.data.synthetic import synthesize

__all__ = [
    "BEHAVIORS", "COLUMNS", "CSR", "DEFAULT_FILTER_MODE", "DataConfig", "FILTER_MODES", "FilterMode", "LeakageError",
    "STATS_COLUMNS", "THESIS_STATS", "TaskData", "WINDOW", "build_task_data", "check_no_leakage", "fetch", "filter_log",
    "load_filtered", "log_stats", "raw_behavior_counts", "read_userbehavior", "sample_summary", "synthesize",
    "table1_comparison", "table1_ratios", "thesis_stats", "write_userbehavior",
]
