"""mbkit: a reproducible companion to MetaBalance (He et al., WWW 2022) and its PCGrad follow-up (Lee 2023).

The method sits at the top of the package, the machinery in packages of their own; imports point one way,
utilities <- data <- method <- training <- study <- command line:

    mbkit.data        the UserBehavior log: read and validate, filter (Table 1), split, the synthetic world
    mbkit.model       the shared-bottom NeuMF, one tower per task
    mbkit.grads       every task's gradient of the shared tensors in one batched backward
    mbkit.optim       the optimisers of a run (SparseAdam's rule on touched rows, or dense Adam)
    mbkit.balancers   MetaBalance, PCGrad and the field's baselines: pure functions of per-task gradients
    mbkit.metrics     full-ranking NDCG / Recall / Precision @ K;  mbkit.popularity: the popularity floor
    mbkit.train       the training loop;  mbkit.checkpoint: a run's identity, checkpoints and resume checks
    mbkit.study       grids of runs (local or Ray), statistics, reproduction checks, plots, notebook helpers
    mbkit.cli         `python -m mbkit {data,train,grid,reproduce}`

A run on a small built-in world:

    >>> import mbkit
    >>> stats, data = mbkit.DataConfig(synthetic_size=(3000, 1000), min_user_items=5,
    ...                                min_item_users=5).load(device="cpu")
    >>> config = mbkit.TrainConfig(balancer="metabalance", balancer_kwargs={"relax_factor": 0.7}, epochs=1,
    ...                            progress=False, device="cpu")
    >>> result = mbkit.fit(data, config)
    >>> result.label, sorted(result.test)[:2]
    ('MetaBalance (r=0.7)', ['ndcg@10', 'ndcg@20'])
"""

from mbkit._version import __version__
from mbkit.balancers import REGISTRY, make
from mbkit.checkpoint import load_checkpoint
from mbkit.data import DataConfig, TaskData, build_task_data, filter_log, load_filtered, read_userbehavior, synthesize
from mbkit.grads import GradEngine
from mbkit.metrics import evaluate
from mbkit.model import ModelConfig, SharedBottomNeuMF
from mbkit.popularity import most_popular
from mbkit.study.grid import Executor, run_grid
from mbkit.study.methods import Method
from mbkit.study.stats import paired_change
from mbkit.study.tables import summarize
from mbkit.train import FitResult, TrainConfig, fit

__all__ = [
    "DataConfig", "Executor", "FitResult", "GradEngine", "Method", "ModelConfig", "REGISTRY", "SharedBottomNeuMF",
    "TaskData", "TrainConfig", "__version__", "build_task_data", "evaluate", "filter_log", "fit", "load_checkpoint",
    "load_filtered", "make", "most_popular", "paired_change", "read_userbehavior", "run_grid", "summarize",
    "synthesize",
]
