"""`python -m ftcompare <stage> ...`: one command per stage; the Makefile says in which order.

  prepare-base --model 135m                                   convert a packaged GGUF once
  train   --experiment default --model 135m --method lora [section.key=value ...]
  merge   --experiment default --model 135m --method lora [section.key=value ...]
  resolve --experiment default --model 135m --method lora    (write-if-changed config stamps for make)
  list    models|methods|tasks|variants --experiment default  (for the Makefile)

Errors the user can fix print one line `error: ...` and exit 2.
"""
from __future__ import annotations

import argparse
import errno
import os
import sys

from . import config, paths
from .errors import FtcError


def setup_environment(offline: bool) -> None:
    """Project-local HF cache; offline experiments never reach a hub. Must run before HF libraries import."""
    os.environ.setdefault("HF_HOME", str(paths.HF_HOME))
    if offline:
        for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
            os.environ.setdefault(var, "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


def add_run_identity(p: argparse.ArgumentParser, method_help: str = "configs/methods/<name>.yaml") -> None:
    """--experiment / --model / --method: how every stage names the run it works on."""
    p.add_argument("--experiment", default=os.environ.get("EXPERIMENT", "default"),
                   help="configs/experiments/<name>.yaml (default: $EXPERIMENT or 'default')")
    p.add_argument("--model", required=True, help="model alias: configs/models/<alias>.yaml")
    p.add_argument("--method", required=True, help=method_help)


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
    p.add_argument("--eval", action="store_true", help="evaluation settings -> evaluation_results/<exp>/eval_settings.json")
    p.add_argument("overrides", nargs="*")

    p = sub.add_parser("list", help="print names for the Makefile")
    p.add_argument("what", choices=["models", "methods", "adapter-methods", "tasks", "variants", "all-models",
                                    "all-methods"])
    p.add_argument("--experiment", default=os.environ.get("EXPERIMENT", "default"))
    return ap


def _experiment(name: str) -> config.ExperimentConfig:
    exp = config.load("experiments", name)
    setup_environment(exp.offline)
    return exp


def _resolve(args) -> config.RunConfig:
    _experiment(args.experiment)
    return config.resolve_run(args.experiment, args.model, args.method, config.parse_overrides(args.overrides))


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
        print(f"[train] {run.experiment}/{run.model.alias}/{run.method.name} is up to date (config {run.hash()}); "
              "--force re-trains")
        return 0
    train(run)
    return 0


def cmd_merge(args) -> int:
    from .merge import merge

    _experiment(args.experiment)
    config.load("models", args.model), config.load("methods", args.method)  # unknown names: one clear line
    merge(config.load_run(args.experiment, args.model, args.method))
    return 0


def cmd_resolve(args) -> int:
    import dataclasses
    import json

    from .io import write_if_changed

    if args.eval:
        exp = config.load("experiments", args.experiment)
        settings = dataclasses.asdict(exp.evaluation)
        out = paths.EVAL_RESULTS / exp.name / "eval_settings.json"
        text = json.dumps({"config_hash": config.config_hash(settings), "evaluation": settings}, indent=2) + "\n"
    else:
        if not (args.model and args.method):
            raise FtcError("resolve needs --model and --method (or --eval)")
        run = _resolve(args)
        out = paths.run_dir(run.experiment, run.model.alias, run.method.name) / "resolved.json"
        text = json.dumps({"config_hash": run.hash(), "config": run.to_dict()}, indent=2) + "\n"
    if write_if_changed(out, text):
        print(f"[resolve] {out.relative_to(paths.ROOT)} changed")
    return 0


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
    print(" ".join({"models": exp.models, "methods": exp.methods, "tasks": exp.evaluation.all_tasks(),
                    "variants": exp.evaluation.variants}[args.what]))
    return 0


COMMANDS = {"prepare-base": cmd_prepare_base, "train": cmd_train, "merge": cmd_merge, "resolve": cmd_resolve,
            "list": cmd_list}


def _cmd_analyze(args) -> int:
    """analyze results: checked tables, figures and models_evaluation_record.md"""
    from . import report

    return report.run(args.experiment, args.allow_missing)


def register(name: str, parser_fn, command_fn) -> None:
    """Later stages (evaluate, analyze) add their sub-command here."""
    EXTRA.append((name, parser_fn, command_fn))


EXTRA: list = []


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    from . import report  # the analyzer (imports no ML library)

    if not any(name == "analyze" for name, _, _ in EXTRA):
        register("analyze", report.add_arguments, _cmd_analyze)
    from . import evaluate as _evaluate  # noqa: F401  (registers `evaluate`; imports no ML library)
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, parser_fn, command_fn in EXTRA:
        parser_fn(sub.add_parser(name, help=(command_fn.__doc__ or "").strip().splitlines()[0] if command_fn.__doc__ else None))
        COMMANDS[name] = command_fn
    args = parser.parse_args(argv)
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
