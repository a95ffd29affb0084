"""Command line: `python -m mbkit {data,train,grid,reproduce} ...` (`--help` on each documents every option).

The flags of `data`, `train` and `grid` are generated from the configuration dataclasses (`DataConfig`,
`TrainConfig`, `Executor`): every field is a flag with its default and its help, so a setting is defined
once, where the code that uses it reads it.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import json
import sys
import types
import typing
import warnings
from pathlib import Path
from typing import Any

from mbkit.data import public
from mbkit.data.load import DataConfig
from mbkit.data.schema import BEHAVIORS
from mbkit.study.grid import Executor
from mbkit.train import TrainConfig


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, no usage dump
        self.exit(2, f"mbkit: error: {message} (see `python -m mbkit {self.prog.split()[-1]} --help`)\n")


def _name_value(item: str) -> tuple[str, Any]:
    """"c=0.5" -> ("c", 0.5): VALUE as a Python literal, else as a string."""
    name, sep, value = item.partition("=")
    if not sep or not name.isidentifier():
        raise argparse.ArgumentTypeError(f"{item!r}: expected NAME=VALUE, e.g. c=0.5")
    try:
        return name, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return name, value


def _optional(kind: type):
    def parse(text: str) -> Any:
        return None if text.lower() == "none" else kind(text)
    parse.__name__ = kind.__name__  # argparse names the type in its error messages
    return parse


def _choice(parse, choices):
    def check(text: str) -> Any:
        if text not in choices:
            raise argparse.ArgumentTypeError(f"invalid choice: {text!r} (choose from {', '.join(choices)})")
        return parse(text)
    return check


def _shown(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        return " ".join(map(str, value)) or "none"
    return "none" if value is None else str(value)


def add_settings(parser: argparse.ArgumentParser, cls: type, *, skip: tuple[str, ...] = (),
                 defaults: dict[str, str] | None = None) -> None:
    """One flag per field of the dataclass `cls`: `--field-name` (or the field's `flag`), typed by its
    annotation, with its help and default. `defaults` maps fields to the text shown instead of their default;
    their flags default to None ("not given"), for settings that come from elsewhere unless given."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        meta, kind = f.metadata, hints[f.name]
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        shown = (defaults or {}).get(f.name, _shown(default))
        kw: dict[str, Any] = {"dest": f.name, "help": f"{meta.get('help', '')} (default: {shown})",
                              "default": None if f.name in (defaults or {}) else default}
        args = typing.get_args(kind)
        optional = isinstance(kind, types.UnionType) and type(None) in args
        base = next((a for a in args if a is not type(None)), kind) if optional else kind
        if "parse" in meta:
            kw["type"] = _choice(meta["parse"], meta["choices"]) if "choices" in meta else meta["parse"]
            kw["metavar"] = "{" + ",".join(meta["choices"]) + "}" if "choices" in meta else None
        elif base is bool:
            kw["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(base) is dict:
            kw.update(action="append", type=_name_value, metavar="NAME=VALUE", default=[])
        elif typing.get_origin(base) is tuple:
            items = typing.get_args(base)
            kw.update(type=items[0], nargs="+" if items[-1] is Ellipsis else len(items))
        elif optional:
            kw.update(type=_optional(base), metavar=base.__name__.upper() + "|none")
        else:
            kw["type"] = base
        if "choices" in meta and "parse" not in meta:
            kw["choices"] = meta["choices"]
        if "metavar" in meta:
            kw["metavar"] = meta["metavar"]
        parser.add_argument(meta.get("flag", "--" + f.name.replace("_", "-")), **kw)


def settings(args: argparse.Namespace, cls: type, **extra: Any) -> Any:
    """The dataclass `cls` from the parsed flags that `add_settings` made (given flags only, if None means
    "not given"), plus `extra`."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}
    for f in dataclasses.fields(cls):
        if typing.get_origin(typing.get_type_hints(cls)[f.name]) is dict and f.name in values:
            values[f.name] = dict(values[f.name])
    return cls(**{**values, **extra})


def _parser() -> argparse.ArgumentParser:
    from mbkit.balancers import STRATEGIES

    root = _Parser(prog="mbkit", description=__doc__.split("\n\n")[0])
    sub = root.add_subparsers(dest="command", required=True, parser_class=_Parser)

    d = sub.add_parser("data", help="print the Table-1 statistics of a log (raw and filtered); `data list` shows the "
                       "public sets, `data fetch NAME` brings one into the cache")
    add_settings(d, DataConfig)
    sets = d.add_subparsers(dest="data_command", parser_class=_Parser)
    f = sets.add_parser("fetch", help="download a public set at its pinned commit (or copy it from a folder), verify "
                        "every file against its git blob id and convert it to the canonical log")
    f.add_argument("name", choices=public.names(), help="the set (`mbkit data list`)")
    f.add_argument("--from", dest="source_dir", default=None, metavar="DIR",
                   help="a folder holding the set's files under their repository paths, downloaded by hand (offline)")
    f.add_argument("--progress", default="auto", choices=["auto", "text", "off"], help="download progress on stderr")
    sets.add_parser("list", help="the public sets: source, behaviors, size, own split, whether each is in the cache")

    t = sub.add_parser("train", help="train one model with one balancer and write its results")
    add_settings(t, DataConfig)
    add_settings(t, TrainConfig)
    mb = t.add_argument_group("MetaBalance's arguments (shortcuts for --balancer-arg NAME=VALUE)")
    mb.add_argument("--relax-factor", type=float, default=None, help="relax factor r in [0, 1]")
    mb.add_argument("--beta", type=float, default=None, help="moving-average factor in [0, 1)")
    mb.add_argument("--strategy", default=None, choices=STRATEGIES, help="which auxiliary gradients are rescaled")
    t.add_argument("--out", default=None, help="output folder (default: the --resume checkpoint's folder, else "
                   "runs/<balancer>-seed<seed>); a folder holding another run is refused unless --overwrite")
    t.add_argument("--resume", default=None, help="checkpoint to resume from (OUT/last.pt); refused when its "
                   "settings or data differ from this run's (except epochs, patience, progress and device)")
    t.add_argument("--overwrite", action="store_true", help="replace the run already in --out")

    g = sub.add_parser("grid", help="train the grid of notebook 03, 04 or 06 from a params file, on this process or "
                       "on Ray, into per-run records that the notebook then reads (no notebook server needed)")
    g.add_argument("notebook", choices=["03_relax_factor", "04_method_comparison", "06_all_methods"],
                   help="whose grid: its parameters are the notebook's defaults, overridden by --params")
    g.add_argument("--params", default="notebooks/params/default.yaml",
                   help="parameter file (YAML) as for `reproduce`; its paths are relative to notebooks/")
    g.add_argument("--runs-dir", default=None,
                   help="folder of the per-run records and checkpoints (default: the params file's runs_dir)")
    add_settings(g, Executor, defaults={f.name: "the params file's, else " + _shown(f.default)
                                        for f in dataclasses.fields(Executor)})
    g.add_argument("--progress", default="auto", choices=["auto", "text", "off"], help="progress bar on stderr")

    r = sub.add_parser("reproduce", help="run the numbered notebooks with papermill")
    r.add_argument("--params", default="notebooks/params/default.yaml", help="parameter file (YAML)")
    r.add_argument("--out", default="build/executed", help="folder for the executed notebooks")
    r.add_argument("--only", default=None, help="run only notebooks whose name contains this")
    r.add_argument("--jobs", type=int, default=1, help="notebooks executed at once, each in its own process "
                   "(default 1; `make reproduce` uses 2, one per core)")
    r.add_argument("--update-notebooks", action="store_true",
                   help="afterwards, copy the executed notebooks over notebooks/ (maintainers, before a commit)")
    r.add_argument("--keep-readme", action="store_true",
                   help="do not rewrite README.md's results block from results/ afterwards (the default rewrites it)")
    return root


def _data(args: argparse.Namespace) -> None:
    if args.data_command == "list":
        import pandas as pd

        print(pd.DataFrame(public.listing()).set_index("name").to_string())
        print(f"cache: {public.cache_dir()} (MBKIT_CACHE sets another). {public.LICENCE}")
        return
    if args.data_command == "fetch":
        counts = public.fetch(args.name, args.source_dir, progress=False if args.progress == "off" else args.progress)
        rows = ", ".join(f"{counts[b]:,} {b}" for b in BEHAVIORS if counts[b])
        print(f"{args.name}: ready in {public.folder(args.name)} ({counts['users']:,} users, {counts['items']:,} "
              f"items; {rows}); use it as --data {args.name}")
        return
    stats, _ = settings(args, DataConfig).read()
    print(stats.to_string())
    if stats.attrs.get("out_of_window_rows"):
        print(f"rows dated outside the log's 9 days (kept): {stats.attrs['out_of_window_rows']:,}")


def _rows_line(data) -> str | None:
    """What the reader counted and kept or skipped, in words (None when there is nothing to say)."""
    rows = (data.meta or {}).get("rows") or {}
    parts = []
    if rows.get("outside_window"):
        parts.append(f"{rows['outside_window']:,} rows dated outside the log's 9 days (kept)")
    if rows.get("skipped"):
        parts.append(f"{rows['skipped']:,} malformed rows skipped")
    return f"data {data.meta.get('source')}: " + ", ".join(parts) if parts else None


def _train(args: argparse.Namespace) -> None:
    from mbkit.checkpoint import check_resume, load_checkpoint
    from mbkit.rundir import claim_run_dir, lock_run_dir, probe_run_dir
    from mbkit.study.methods import Method
    from mbkit.study.runs import run_name
    from mbkit.train import fit
    from mbkit.utils import resolve_device

    shortcuts = {k: v for k, v in (("relax_factor", args.relax_factor), ("beta", args.beta),
                                   ("strategy", args.strategy)) if v is not None}
    config = settings(args, TrainConfig, balancer_kwargs={**shortcuts, **dict(args.balancer_kwargs)})
    data_config = settings(args, DataConfig)  # checks what it can before the log is read
    resolve_device(config.device)  # e.g. cuda on a machine without a GPU
    if args.resume is not None:
        check_resume(load_checkpoint(args.resume), dataclasses.asdict(config), None, args.resume)
    default = Path("runs") / run_name(Method("", config.balancer, config.balancer_kwargs), config.seed)
    out = Path(args.out or (Path(args.resume).parent if args.resume else default))
    probe_run_dir(out, flag="--out")
    args.out_folder = out  # for the message of an interruption
    with lock_run_dir(out, flag="--out"):  # held until the run ends: a second run on this folder fails at once
        claim_run_dir(out, resume=args.resume, overwrite=args.overwrite, clear=False, flag="--out")
        _, data = data_config.load(config.device)
        if (line := _rows_line(data)) is not None:
            print(line, file=sys.stderr)
        result = fit(data, config, checkpoint_dir=out, resume=args.resume, overwrite=args.overwrite)
        result.save(out)
    print(json.dumps({"label": result.label, "best_epoch": result.best_epoch,
                      "test": {k: round(v, 4) for k, v in result.test.items()}, "out": str(out),
                      "rows": data.meta.get("rows")}))


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _grid(args: argparse.Namespace) -> None:
    """Build the notebook's data and grid exactly as the notebook does (same working directory, same
    configurations), so that its records are the ones the notebook then reads."""
    import contextlib
    import signal

    import papermill

    from mbkit.study.reproduce import NOTEBOOK_DIR, check_params, load_params

    every = load_params(args.params)
    check_params(every, args.params)
    declared = papermill.inspect_notebook(str(NOTEBOOK_DIR / f"{args.notebook}.ipynb"))
    p = {name: ast.literal_eval(spec["default"]) for name, spec in declared.items()}
    p.update(every[args.notebook])
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(Executor)}
    given["runs_dir"] = str(Path(args.runs_dir).resolve()) if args.runs_dir else None
    p.update({k: v for k, v in given.items() if v is not None})
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

    from mbkit.study import tune
    from mbkit.study.grid import run_grid
    from mbkit.study.methods import notebook_grid
    from mbkit.study.runs import run_name
    from mbkit.study.tables import summarize

    executor = Executor(**{f.name: p[f.name] for f in dataclasses.fields(Executor) if f.name in p})
    if executor.executor == "ray":
        from mbkit.study.ray_executor import import_ray
        import_ray()
    size = (int(p["world_users"]), int(p["world_items"])) if p["data"] == "synthetic" and "world_users" in p else None
    try:
        data_config = DataConfig(data=p["data"], target=p["target"], filter_mode=p["filter_mode"],
                                 min_user_items=p.get("min_user_items", 10), min_item_users=p.get("min_item_users", 10),
                                 split=p.get("split", "project"), split_seed=p["split_seed"], synthetic_size=size)
    except ValueError as e:
        raise ValueError(f"{e} (a params file's paths are relative to notebooks/)") from None
    methods, seeds, base = notebook_grid(args.notebook, p)
    runs_dir = Path(p["runs_dir"])
    tuning = " (after tuning Vanilla: tune_vanilla is on)" if p.get("tune_vanilla") else ""
    folders = [runs_dir / run_name(m, s) for m in methods for s in seeds]
    done = sum((f / "metrics.json").is_file() for f in folders)
    part = sum((f / "last.pt").is_file() and not (f / "metrics.json").is_file() for f in folders)
    print(f"{args.notebook}: {len(folders)} runs in {runs_dir.resolve()}: {done} finished (read from their "
          f"records), {part} to resume from a checkpoint, {len(folders) - done - part} to train{tuning}", flush=True)
    _, data = data_config.load(p["device"])
    if (line := _rows_line(data)) is not None:
        print(line, flush=True)
    progress = False if args.progress == "off" else args.progress
    base, table = tune.notebook_base(data, base, p, seeds, runs_dir=runs_dir, progress=progress,
                                     **dataclasses.asdict(executor))
    if table is not None:
        print(table.round(4).to_string(index=False))
        print(f"every method trains at lr={base.lr:g}, dropout={base.dropout:g}, {base.num_neg} negatives per positive "
              "(Vanilla's best on validation)", flush=True)
    runs = run_grid(data, methods, seeds, base, runs_dir=runs_dir, progress=progress,
                    **dataclasses.asdict(executor))
    table = pd.concat({split: summarize(runs, split=split, metrics=["ndcg@10"]) for split in ("valid", "test")},
                      axis=1)
    print(table.round(4).to_string())
    print(f"all {len(folders)} runs are recorded in {runs_dir.resolve()}; the notebook with runs_dir={p['runs_dir']!r} "
          "reads them instead of training")


def _reproduce(args: argparse.Namespace) -> None:
    from mbkit.provenance import ROOT
    from mbkit.study.headline import update_readme
    from mbkit.study.reproduce import differ_from_the_cells, load_params, run_notebooks, store_executed

    if args.update_notebooks and (differ := differ_from_the_cells(load_params(args.params))):
        raise ValueError(f"--update-notebooks stores the executed notebooks under their committed parameters cells, "
                         f"but {args.params} computes something else ({'; '.join(differ)}); run without "
                         "--update-notebooks, or change the notebooks' parameters cells first")
    run_notebooks(args.params, args.out, only=args.only, jobs=args.jobs)
    if args.update_notebooks:
        for path in store_executed(args.out, only=args.only):
            print(f"updated {path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path}")
    if not args.keep_readme and (ROOT / "README.md").is_file() and update_readme(ROOT / "README.md"):
        print("updated README.md's results block from results/")


def _message(e: BaseException) -> str:
    """One readable line for an error: never a bare key or errno."""
    if isinstance(e, OSError) and e.strerror:
        where = f"{e.filename}: " if e.filename is not None else ""
        todo = "" if "; " in e.strerror else "; check the path and its permissions"
        return f"{where}{e.strerror}{todo}"
    if isinstance(e, KeyError):
        return f"missing entry {e.args[0]!r} ({e.__class__.__name__}); please report this with the command you ran"
    text = str(e).strip()
    return text or type(e).__name__


COMMANDS = {"data": _data, "train": _train, "grid": _grid, "reproduce": _reproduce}


def _warning(message, category, filename, lineno, line=None) -> str:
    return f"mbkit: warning: {message}\n"


def main(argv: list[str] | None = None) -> int:
    warnings.formatwarning = _warning  # one line each, without the source line that raised it
    args = _parser().parse_args(argv)
    try:
        COMMANDS[args.command](args)
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
        out = getattr(args, "out_folder", None)
        if out is not None and (out / "last.pt").is_file():
            print(f"mbkit: interrupted; the completed epochs are in {out / 'last.pt'} (resume with --resume "
                  f"{out / 'last.pt'})", file=sys.stderr)
        else:
            print("mbkit: interrupted before the first epoch finished; nothing of this run was saved (a run the "
                  "folder held before is kept): start it again", file=sys.stderr)
        return 130
    return 0
