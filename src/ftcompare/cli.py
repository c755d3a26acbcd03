"""`python -m ftcompare <stage> ...`: one command per stage; the Makefile says in which order.

  prepare-base --model 135m                                   convert a packaged GGUF once
  train   --experiment default --model 135m --method lora [section.key=value ...]
  merge   --experiment default --model 135m --method lora [section.key=value ...]
  resolve --experiment default --eval --run 135m/lora ...   (write-if-changed config stamps for make)
  list    models|methods|seeds|tasks|variants --experiment default  (for the Makefile)
  (train, merge, evaluate: --seed K names one seed of an experiment with train.seeds; resolve: --run M/METHOD/seed-K)
  evaluate --experiment default --model 135m --method lora --variant merged   (see ftcompare.evaluate)
  analyze [--experiment default] [--allow-missing]            tables, figures, the record
  search  --experiment default --model 135m --method lora --space lora [--storage URL]
  search-args --model 135m --method full lora                 (SEARCH=... in make: overrides for one run)
  export  --experiment default --model 135m --method lora     (16-bit safetensors + GGUF, round-trip checked)

This module is the top of the one-way dependency graph: cli -> stages (train, merge, evaluate, search, export,
the report) -> building blocks (config, paths, io, data, modeling, ...). It builds every sub-command itself;
no module imports it.

Errors the user can fix print one line `error: ...` and exit 2.
"""
from __future__ import annotations

import argparse
import errno
import os
import sys

from . import config, paths
from .environment import setup_environment, tune_allocator
from .errors import FtcError


def _report():
    """The report stage (its add_arguments / run). The one place that names its module."""
    from . import report

    return report


def add_run_identity(p: argparse.ArgumentParser, method_help: str = "configs/methods/<name>.yaml") -> None:
    """--experiment / --model / --method: how every stage names the run it works on."""
    p.add_argument("--experiment", default=os.environ.get("EXPERIMENT", "default"),
                   help="configs/experiments/<name>.yaml (default: $EXPERIMENT or 'default')")
    p.add_argument("--model", required=True, help="model alias: configs/models/<alias>.yaml")
    p.add_argument("--method", required=True, help=method_help)
    p.add_argument("--seed", type=int, help="one of the experiment's train.seeds (runs under <method>/seed-<k>/); "
                   "experiments with one seed take none")


def _run_args(p: argparse.ArgumentParser) -> None:
    add_run_identity(p)
    p.add_argument("overrides", nargs="*", help="section.key=value (sections: experiment, model, method, data, train)")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m ftcompare", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("prepare-base", help="convert a packaged model to a HF checkpoint under models/base/")
    p.add_argument("--model", required=True)

    p = sub.add_parser("train", help="train one (model, method) of an experiment")
    _run_args(p)
    p.add_argument("--force", action="store_true", help="re-train even if train_summary.json matches the config")

    p = sub.add_parser("merge", help="merge a trained run into a plain checkpoint (<run>/merged/)")
    add_run_identity(p)

    p = sub.add_parser("resolve", help="write a run's resolved config (or the experiment's evaluation settings) "
                       "only if it changed: what make uses to invalidate exactly what a config change affects")
    p.add_argument("--experiment", default=os.environ.get("EXPERIMENT", "default"))
    p.add_argument("--model")
    p.add_argument("--method")
    p.add_argument("--seed", type=int, help="with --model/--method: one of the experiment's train.seeds")
    p.add_argument("--run", action="append", default=[], metavar="MODEL/METHOD[/seed-K]",
                   help="a run's resolved config (repeatable; what make does for every run before it plans)")
    p.add_argument("--eval", action="store_true", help="evaluation settings -> evaluation_results/<exp>/eval_settings.json")
    p.add_argument("--search", help="search names whose winners' overrides apply to each run (make's SEARCH=)")
    p.add_argument("overrides", nargs="*")

    p = sub.add_parser("evaluate", help="evaluate one model variant with lm-eval (fixed paths under evaluation_results/)")
    add_run_identity(p, method_help="base (the untuned model) or a method: configs/methods/<name>.yaml")
    p.add_argument("--variant", default="merged", help="merged (<run>/merged/) or adapter (<run>/final/ on its base)")
    p.add_argument("--tasks", help="comma-separated task names (default: the experiment's evaluation.tasks)")
    p.add_argument("--limit", type=int, help="first N documents of every task (overrides evaluation.limit)")
    p.add_argument("--batch-size", type=int, help="overrides evaluation.batch_size")
    p.add_argument("--force", action="store_true", help="re-evaluate even if results.json matches the settings")

    p = sub.add_parser("analyze", help="analyze results: checked tables, figures and models_evaluation_record.md")
    _report().add_arguments(p)
    p = sub.add_parser("search", help="successive-halving hyperparameter search (Optuna) -> results/search/<name>/")
    p.add_argument("--experiment", default=os.environ.get("EXPERIMENT", "default"))
    p.add_argument("--model", help="model alias (default: the space file's model)")
    p.add_argument("--method", help="method (default: the space file's method)")
    p.add_argument("--space", required=True, help="configs/search/<name>.yaml")
    p.add_argument("--name", help="study and folder name (default: the space name); one search per method")
    p.add_argument("--storage", help="Optuna storage URL shared by several workers (default: sqlite under "
                   "results/search/<name>/)")
    p.add_argument("--report-only", action="store_true", help="write the outputs of the study as it is, train nothing")

    p = sub.add_parser("search-args", help="print the overrides that searches give one (model, method) run")
    p.add_argument("--experiment", default=os.environ.get("EXPERIMENT", "default"))
    p.add_argument("--model", required=True)
    p.add_argument("--method", required=True)
    p.add_argument("names", nargs="+", help="search names (results/search/<name>/best_overrides.yaml)")

    p = sub.add_parser("list", help="print names for the Makefile")
    p.add_argument("what", choices=["models", "methods", "adapter-methods", "seeds", "tasks", "variants",
                                    "all-models", "all-methods"])
    p.add_argument("--experiment", default=os.environ.get("EXPERIMENT", "default"))

    from .export import add_arguments as export_arguments

    export_arguments(sub.add_parser("export", help="export a trained variant (16-bit safetensors + GGUF, round-trip "
                                    "checked) or, with --report, write the experiment's round-trip table"))
    return ap


def _experiment(name: str) -> config.ExperimentConfig:
    exp = config.load("experiments", name)
    setup_environment(exp.offline)
    return exp


def _resolve(args) -> config.RunConfig:
    _experiment(args.experiment)
    return config.resolve_run(args.experiment, args.model, args.method, config.parse_overrides(args.overrides),
                              seed=args.seed)


def cmd_prepare_base(args) -> int:
    model = config.load("models", args.model)
    setup_environment(offline=model.source != "hub" or os.environ.get("HF_HUB_OFFLINE") == "1")
    from .assets import prepare_base

    prepare_base(model)
    return 0


def cmd_train(args) -> int:
    run = _resolve(args)
    from .train import is_done, train

    if is_done(run) and not args.force:
        print(f"[train] {run.experiment}/{run.label} is up to date (config {run.hash()}); "
              "--force re-trains")
        return 0
    train(run)
    return 0


def cmd_merge(args) -> int:
    from .merge import merge

    exp = _experiment(args.experiment)
    config.load("models", args.model), config.load("methods", args.method)  # unknown names: one clear line
    merge(config.load_run(args.experiment, args.model, args.method, config.check_seed(exp, args.seed)))
    return 0


def cmd_resolve(args) -> int:
    import dataclasses
    import json

    from .io import write_if_changed

    outputs: list[tuple] = []
    if args.eval:
        exp = config.load("experiments", args.experiment)
        settings = dataclasses.asdict(exp.evaluation)
        outputs.append((paths.EVAL_RESULTS / exp.name / "eval_settings.json",
                        json.dumps({"config_hash": config.config_hash(settings), "evaluation": settings}, indent=2) + "\n"))
    runs = [_parse_run(r) for r in args.run]
    if args.model or args.method:
        if not (args.model and args.method):
            raise FtcError("resolve needs --model and --method together")
        runs.append((args.model, args.method, args.seed))
    if not (runs or args.eval):
        raise FtcError("resolve needs --model and --method, --run MODEL/METHOD, or --eval")
    if runs:
        _experiment(args.experiment)
    for r in runs:
        overrides = list(args.overrides)
        if args.search:
            from .search_report import overrides_for

            overrides += overrides_for(args.search.split(), args.experiment, r[0], r[1])
        run = config.resolve_run(args.experiment, r[0], r[1], config.parse_overrides(overrides), seed=r[2])
        outputs.append((run.dir / "resolved.json",
                        json.dumps({"config_hash": run.hash(), "config": run.to_dict()}, indent=2) + "\n"))
    for out, text in outputs:
        if write_if_changed(out, text):
            print(f"[resolve] {out.relative_to(paths.ROOT)} changed", file=sys.stderr)
    return 0


def _parse_run(text: str) -> tuple[str, str, int | None]:
    """MODEL/METHOD[/seed-K] (make's run names, config.run_path) -> (model, method, seed or None)."""
    parts = text.split("/")
    seed = None
    if len(parts) == 3 and parts[2].startswith(paths.SEED_PREFIX) and parts[2][len(paths.SEED_PREFIX):].isdigit():
        seed = int(parts[2][len(paths.SEED_PREFIX):])
    elif len(parts) != 2 or not all(parts):
        raise FtcError(f"--run {text}: expected MODEL/METHOD or MODEL/METHOD/seed-K (e.g. 135m/lora, 135m/lora/seed-43)")
    return parts[0], parts[1], seed


def cmd_list(args) -> int:
    if args.what == "all-models":
        print(" ".join(config.available("models")))
        return 0
    if args.what == "all-methods":
        print(" ".join(config.available("methods")))
        return 0
    exp = config.load("experiments", args.experiment)
    if args.what == "adapter-methods":
        print(" ".join(m for m in exp.methods if config.load("methods", m).uses_adapter))
        return 0
    if args.what == "seeds":  # empty for a single-seed experiment: its runs have no seed-<k> level
        print(" ".join(map(str, exp.train.seeds or [])))
        return 0
    print(" ".join({"models": exp.models, "methods": exp.methods, "tasks": exp.evaluation.all_tasks(),
                    "variants": exp.evaluation.variants}[args.what]))
    return 0


def cmd_evaluate(args) -> int:
    _experiment(args.experiment)  # before transformers / lm_eval are imported
    tune_allocator()              # forwards reuse freed memory (no page faults); evaluation measures no memory
    from .evaluate import evaluate_variant

    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()] if args.tasks else None
    return evaluate_variant(args.experiment, args.model, args.method, args.variant, tasks, args.limit,
                            args.batch_size, args.force, seed=args.seed)


def cmd_analyze(args) -> int:
    return _report().run(args.experiment, args.allow_missing)


def cmd_search(args) -> int:
    _experiment(args.experiment)
    from .search import search

    out = search(args.experiment, args.model, args.method, args.space, storage=args.storage, name=args.name,
                 report_only=args.report_only)
    print(f"[search] results: {out.relative_to(paths.ROOT) if out.is_relative_to(paths.ROOT) else out}")
    return 0


def cmd_search_args(args) -> int:
    from .search_report import overrides_for

    print(" ".join(overrides_for(args.names, args.experiment, args.model, args.method)))
    return 0


def cmd_export(args) -> int:
    _experiment(args.experiment)
    from .export import main as export_main

    return export_main(args)


COMMANDS = {"prepare-base": cmd_prepare_base, "train": cmd_train, "merge": cmd_merge, "resolve": cmd_resolve,
            "list": cmd_list, "evaluate": cmd_evaluate, "analyze": cmd_analyze, "search": cmd_search,
            "search-args": cmd_search_args, "export": cmd_export}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except FtcError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            print(f"error: no space left on device while writing {e.filename or 'an output'}; free disk space "
                  "and re-run (finished outputs are kept, partial ones were removed)", file=sys.stderr)
            return 2
        raise
    except KeyboardInterrupt:
        print("error: interrupted; re-run the same command to resume (finished outputs are kept)", file=sys.stderr)
        return 130
