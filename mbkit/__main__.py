"""Command line: `python -m mbkit {data,train,grid,reproduce} ...` (`--help` on each documents every option)."""

from __future__ import annotations

import argparse
import ast
import json
import sys
from pathlib import Path


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, no usage dump
        self.exit(2, f"mbkit: error: {message} (see `python -m mbkit {self.prog.split()[-1]} --help`)\n")


def _add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default="synthetic",
                   help="'synthetic' (built-in default log) or a path to UserBehavior.csv / .zip / .csv.gz")
    p.add_argument("--target", default="buy", help="target behavior (default: buy)")
    p.add_argument("--filter-mode", default="once", choices=["once", "kcore"],
                   help="one pass of the 10/10 thresholds, or iterate to a fixed point (default: once)")
    p.add_argument("--min-user-items", type=int, default=10, help="min distinct purchased items per user")
    p.add_argument("--min-item-users", type=int, default=10, help="min distinct buyers per item")
    p.add_argument("--skip-bad-rows", action="store_true", help="skip malformed rows (their count is reported)")
    p.add_argument("--split-seed", type=int, default=0, help="seed of the 70/15/15 purchase split (default: 0)")


def _balancer_args(items: list[str]) -> dict[str, object]:
    """`["c=0.5", "granularity=flat"]` -> `{"c": 0.5, "granularity": "flat"}` (literals, else strings)."""
    out: dict[str, object] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.isidentifier():
            raise ValueError(f"--balancer-arg {item!r}: expected NAME=VALUE, e.g. --balancer-arg c=0.5")
        try:
            out[name] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[name] = value
    return out


def _parser() -> argparse.ArgumentParser:
    from mbkit.balancers import REGISTRY

    root = _Parser(prog="mbkit", description=__doc__)
    sub = root.add_subparsers(dest="command", required=True, parser_class=_Parser)

    d = sub.add_parser("data", help="print the Table-1 statistics of a log (raw and filtered)")
    _add_data_args(d)

    t = sub.add_parser("train", help="train one model with one balancer and write its results")
    _add_data_args(t)
    t.add_argument("--balancer", default="vanilla",
                   help=f"one of {', '.join(REGISTRY)}, or several joined by '+' (e.g. metabalance+pcgrad_adjusted)")
    t.add_argument("--balancer-arg", action="append", default=[], metavar="NAME=VALUE",
                   help="another argument of the balancer, e.g. c=0.5 for cagrad or alpha=1.5 for gradnorm "
                        "(VALUE is read as a Python literal; repeat for several)")
    t.add_argument("--relax-factor", type=float, default=None, help="MetaBalance relax factor r in [0, 1]")
    t.add_argument("--beta", type=float, default=None, help="MetaBalance moving-average factor")
    t.add_argument("--strategy", default=None, choices=["both", "reduce", "enlarge"], help="MetaBalance strategy")
    t.add_argument("--epochs", type=int, default=20)
    t.add_argument("--batch-size", type=int, default=256)
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--num-neg", type=int, default=4)
    t.add_argument("--mode", default="compact", choices=["compact", "dense"],
                   help="compact: only touched embedding rows are updated (SparseAdam semantics); dense: the original's dense Adam")
    t.add_argument("--patience", type=int, default=None, help="early-stopping patience in epochs")
    t.add_argument("--test-mask", default="train", choices=["train", "train+valid"],
                   help="what test ranking masks: training items (the study's protocol, default) or training and "
                        "validation items")
    t.add_argument("--diagnostics-every", type=int, default=0, help="sample gradient diagnostics every N steps")
    t.add_argument("--amp", action="store_true", help="bf16 autocast (CUDA only)")
    t.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--out", default=None, help="output folder (default: the --resume checkpoint's folder, else "
                   "runs/<balancer>-seed<seed>); a folder holding another run is refused unless --overwrite")
    t.add_argument("--resume", default=None, help="checkpoint to resume from (OUT/last.pt); refused when its "
                   "settings or data differ from this run's (except epochs, patience, progress and device)")
    t.add_argument("--overwrite", action="store_true", help="replace the run already in --out")
    t.add_argument("--progress", default="auto", choices=["auto", "text", "off"],
                   help="epoch progress bar on stderr (default: auto)")
    t.add_argument("--no-progress", action="store_true", help="hide the progress bar (same as --progress off)")

    g = sub.add_parser("grid", help="train the grid of notebook 03, 04 or 06 from a params file, on this process or "
                       "on Ray, into per-run records that the notebook then reads (no notebook server needed)")
    g.add_argument("notebook", choices=["03_relax_factor", "04_method_comparison", "06_all_methods"],
                   help="whose grid: its parameters are the notebook's defaults, overridden by --params")
    g.add_argument("--params", default="notebooks/params/default.yaml",
                   help="parameter file (YAML) as for `reproduce`; its paths are relative to notebooks/")
    g.add_argument("--runs-dir", default=None,
                   help="folder of the per-run records and checkpoints (default: the params file's runs_dir)")
    g.add_argument("--executor", default=None, choices=["local", "ray"],
                   help="local: one run after another in this process; ray: one Ray task per run "
                        "(default: the params file's executor, else local)")
    g.add_argument("--address", default=None,
                   help="Ray cluster address (head node host:port, or 'auto'); default: the params file's "
                        "ray_address, else a local Ray on this machine")
    g.add_argument("--runs-per-gpu", type=int, default=None, help="Ray: runs that share one GPU (default 1)")
    g.add_argument("--cpus-per-run", type=int, default=None, help="Ray: CPUs (and torch threads) per run (default 1)")
    g.add_argument("--max-retries", type=int, default=2, help="Ray: retries of a failed run, each resuming from "
                   "its checkpoint (default 2)")
    g.add_argument("--progress", default="auto", choices=["auto", "text", "off"], help="progress bar on stderr")

    r = sub.add_parser("reproduce", help="run the numbered notebooks with papermill")
    r.add_argument("--params", default="notebooks/params/default.yaml", help="parameter file (YAML)")
    r.add_argument("--out", default="build/executed", help="folder for the executed notebooks")
    r.add_argument("--only", default=None, help="run only notebooks whose name contains this")
    r.add_argument("--jobs", type=int, default=1, help="notebooks executed at once, each in its own process "
                   "(default 1; `make reproduce` uses 2, one per core)")
    r.add_argument("--update-notebooks", action="store_true",
                   help="afterwards, copy the executed notebooks over notebooks/ (maintainers, before a commit)")
    return root


def _check_data_args(args: argparse.Namespace) -> None:
    """What can be checked before the log is read (reading the real log takes a minute)."""
    from mbkit.data import BEHAVIORS

    if args.data != "synthetic":
        path = Path(args.data)
        if not path.exists():
            raise ValueError(f"--data {path}: no such file; pass the path of UserBehavior.csv (or its .zip / "
                             ".csv.gz), or 'synthetic'")
        if not path.is_file():
            raise ValueError(f"--data {path} is a folder; pass the UserBehavior.csv file inside it")
    if args.target not in BEHAVIORS:
        raise ValueError(f"--target {args.target!r} is not a behavior; use one of {', '.join(BEHAVIORS)}")
    for flag, value in (("--min-user-items", args.min_user_items), ("--min-item-users", args.min_item_users),
                        ("--split-seed", args.split_seed)):
        if value < 0:
            raise ValueError(f"{flag} {value} must be >= 0")


def _task_data(args: argparse.Namespace, seed: int, device: str):
    from mbkit.data import build_task_data, load_filtered
    stats, log = load_filtered(args.data, target=args.target, mode=args.filter_mode,
                               min_user_items=args.min_user_items, min_item_users=args.min_item_users,
                               skip_bad_rows=args.skip_bad_rows)
    return stats, build_task_data(log, target=args.target, seed=seed, device=device)


def _train(args: argparse.Namespace) -> None:
    import dataclasses

    from mbkit.runstate import check_resume, claim_run_dir, load_checkpoint
    from mbkit.train import TrainConfig, fit
    from mbkit.utils import resolve_device

    kw = {k: v for k, v in (("relax_factor", args.relax_factor), ("beta", args.beta),
                            ("strategy", args.strategy)) if v is not None}
    kw.update(_balancer_args(args.balancer_arg))
    progress = False if args.no_progress or args.progress == "off" else args.progress
    config = TrainConfig(balancer=args.balancer, balancer_kwargs=kw, epochs=args.epochs,
                         batch_size=args.batch_size, lr=args.lr, num_neg=args.num_neg, seed=args.seed,
                         mode=args.mode, device=args.device, patience=args.patience, test_mask=args.test_mask,
                         diagnostics_every=args.diagnostics_every, amp=args.amp, progress=progress)
    _check_data_args(args)
    try:
        resolve_device(args.device)
    except RuntimeError as e:
        raise ValueError(f"--device {args.device!r} is not a device ({str(e).splitlines()[0]}); use auto, cpu, "
                         "cuda or cuda:N") from None
    if args.resume is not None:
        check_resume(load_checkpoint(args.resume), dataclasses.asdict(config), None, args.resume)
    default_out = Path(args.resume).parent if args.resume else Path(f"runs/{args.balancer}-seed{args.seed}")
    out = Path(args.out or default_out)
    claim_run_dir(out, resume=args.resume, overwrite=args.overwrite, clear=False, flag="--out")  # cleared by fit
    _, data = _task_data(args, args.split_seed, args.device)
    result = fit(data, config, checkpoint_dir=out, resume=args.resume, overwrite=args.overwrite)
    result.save(out)
    print(json.dumps({"label": result.label, "best_epoch": result.best_epoch,
                      "test": {k: round(v, 4) for k, v in result.test.items()}, "out": str(out)}))


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _grid(args: argparse.Namespace) -> None:
    """Build the notebook's data and grid exactly as the notebook does (same working directory, same
    configurations), so that its records are the ones the notebook reads afterwards."""
    import ast
    import contextlib
    import signal

    import papermill

    from mbkit.reproduce import NOTEBOOK_DIR, check_params, load_params

    every = load_params(args.params)
    check_params(every)
    declared = papermill.inspect_notebook(str(NOTEBOOK_DIR / f"{args.notebook}.ipynb"))
    p = {name: ast.literal_eval(spec["default"]) for name, spec in declared.items()}
    p.update(every[args.notebook])
    cli = {"runs_dir": str(Path(args.runs_dir).resolve()) if args.runs_dir else None, "executor": args.executor,
           "ray_address": args.address, "runs_per_gpu": args.runs_per_gpu, "cpus_per_run": args.cpus_per_run}
    p.update({k: v for k, v in cli.items() if v is not None})
    if p.get("runs_dir") is None:
        raise ValueError(f"the grid command keeps one record per run: pass --runs-dir, or set runs_dir in the "
                         f"{args.notebook} section of {args.params}")
    with contextlib.chdir(NOTEBOOK_DIR):  # the params files' paths are relative to notebooks/, as for papermill
        previous = signal.signal(signal.SIGTERM, _interrupt)  # a scheduler's SIGTERM ends the grid as Ctrl-C does
        try:
            _run_grid(args, p)
        finally:
            signal.signal(signal.SIGTERM, previous)


def _run_grid(args: argparse.Namespace, p: dict) -> None:
    import pandas as pd

    from mbkit import data as mbd
    from mbkit.experiments import EXECUTORS, notebook_grid, run_grid, run_name, summarize

    executor = p.get("executor", "local")
    if executor not in EXECUTORS:
        raise ValueError(f"executor {executor!r}: use local or ray")
    if executor == "ray":
        from mbkit.ray_grid import import_ray
        import_ray()
    if p["data"] != "synthetic" and not Path(p["data"]).is_file():
        raise ValueError(f"data {p['data']!r} (relative to notebooks/): no such file; put the log there or set data "
                         f"in {args.params}")
    methods, seeds, base = notebook_grid(args.notebook, p)
    runs_dir = Path(p["runs_dir"])
    folders = [runs_dir / run_name(m, s) for m in methods for s in seeds]
    done = sum((f / "metrics.json").is_file() for f in folders)
    part = sum((f / "last.pt").is_file() and not (f / "metrics.json").is_file() for f in folders)
    print(f"{args.notebook}: {len(folders)} runs in {runs_dir.resolve()}: {done} finished (read from their "
          f"records), {part} to resume from a checkpoint, {len(folders) - done - part} to train", flush=True)
    size = (int(p["world_users"]), int(p["world_items"])) if p["data"] == "synthetic" and "world_users" in p else None
    _, log = mbd.load_filtered(p["data"], target=p["target"], mode=p["filter_mode"], synthetic_size=size)
    data = mbd.build_task_data(log, target=p["target"], seed=p["split_seed"], device=p["device"])
    progress = False if args.progress == "off" else args.progress
    runs = run_grid(data, methods, seeds, base, runs_dir=runs_dir, progress=progress, executor=executor,
                    ray_address=p.get("ray_address"), runs_per_gpu=int(p.get("runs_per_gpu", 1)),
                    cpus_per_run=int(p.get("cpus_per_run", 1)), max_retries=args.max_retries)
    table = pd.concat({split: summarize(runs, split=split, metrics=["ndcg@10"]) for split in ("valid", "test")},
                      axis=1)
    print(table.round(4).to_string())
    print(f"all {len(folders)} runs are recorded in {runs_dir.resolve()}; the notebook with runs_dir={p['runs_dir']!r} "
          "reads them instead of training")


def _message(e: BaseException) -> str:
    """One readable line for an error: never a bare key or errno."""
    if isinstance(e, OSError) and e.strerror:
        where = f"{e.filename}: " if e.filename is not None else ""
        return f"{where}{e.strerror}; check the path and its permissions"
    if isinstance(e, KeyError):
        return f"missing entry {e.args[0]!r} ({e.__class__.__name__}); please report this with the command you ran"
    text = str(e).strip()
    return text or type(e).__name__


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "data":
            from mbkit.data import load_filtered
            _check_data_args(args)
            stats, _ = load_filtered(args.data, target=args.target, mode=args.filter_mode,
                                     min_user_items=args.min_user_items, min_item_users=args.min_item_users,
                                     skip_bad_rows=args.skip_bad_rows)
            print(stats.to_string())
            if stats.attrs.get("out_of_window_rows"):
                print(f"rows dated outside the log's 9 days (kept): {stats.attrs['out_of_window_rows']:,}")
        elif args.command == "train":
            _train(args)
        elif args.command == "grid":
            _grid(args)
        elif args.command == "reproduce":
            from mbkit.reproduce import run_notebooks
            run_notebooks(args.params, args.out, only=args.only, jobs=args.jobs)
            if args.update_notebooks:
                from mbkit.reproduce import store_executed
                for path in store_executed(args.out):
                    print(f"updated {path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path}")
    except (ValueError, KeyError, OSError, ImportError) as e:
        print(f"mbkit: error: {_message(e)}", file=sys.stderr)
        return 2
    except RuntimeError as e:  # NonFiniteLossError and friends: the message is the diagnosis
        print(f"mbkit: error: {_message(e)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        if args.command == "grid":
            print("mbkit: grid interrupted; finished runs are recorded and unfinished ones keep their last "
                  "epoch's checkpoint in the runs folder: run the same command again to train only the rest",
                  file=sys.stderr)
            return 130
        print("mbkit: interrupted; completed epochs are in the output folder's last.pt (use --resume)",
              file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
