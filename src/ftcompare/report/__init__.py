"""The report: evaluation + training outputs -> checked tables, figures and models_evaluation_record.md.

`python analyze_results.py [--experiment default] [--allow-missing]` (also `python -m ftcompare analyze`).

Reads, for one experiment (configs/experiments/<name>.yaml gives the expected grid
models x (base + methods x evaluation.variants) x evaluation.tasks):
  evaluation_results/<exp>/<model>/{base,<method>-<variant>}/results.json + samples_<task>.jsonl
  models/<exp>/<model>/<method>/{train_summary.json, config.json, train_log.jsonl}
Writes (layout in results/README.md; `default` at the top, other experiments under results/<exp>/) the tidy
results/model_comparison/all_results.csv, per-task tables, training cost, the chat tables (with generation tasks),
figures and the record.

Every check that fails prints one line `<file>: <field>: <what is wrong>` and the analyzer exits 1 without
writing anything. A missing evaluation or training run is such a failure too, unless --allow-missing: then it
is listed as missing in the record (never plotted or tabulated as 0).
Outputs depend only on the inputs: no clock, no random state (seeded), no absolute paths.

Modules, in the order they run: load (typed inputs), checks (integrity, comparability: `Inputs`), compare
(scores and paired comparisons), chat, analysis (`Analysis`), tables, figure_data -> figures / chat_figures,
record (-> templates/record.md.j2).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from .layout import DEFAULT_EXPERIMENT, RESULTS_README, all_results_csv, check_experiment_name, figures_dir, rel, \
    record_path, tables_dir

__all__ = ["run", "add_arguments", "main", "DEFAULT_EXPERIMENT"]


def run(experiment: str = DEFAULT_EXPERIMENT, allow_missing: bool = False, out=None, err=None) -> int:
    """Analyze one experiment; returns the exit code (0 ok, 1 a check failed: one line per problem)."""
    out, err = out or sys.stdout, err or sys.stderr   # the streams of now, not of the first import
    from .. import paths
    from ..io import atomic_dir, atomic_write_text
    from .analysis import analyze
    from .chat import CHAT_COLUMNS, chat_markdown
    from .checks import build_inputs
    from .display import to_csv
    from .figure_data import figure_data
    from .figures import write_figures
    from .record import macro, render_record
    from .seeds import SEED_COLUMNS, SEED_TEST_COLUMNS, analyze_seeds, spread_rows, test_rows
    from .tables import (COMPARISON_COLUMNS, COST_COLUMNS, SCORE_COLUMNS, TIDY_COLUMNS, comparison_rows,
                         continuous_markdown, cost_markdown, cost_rows, peak_memory_kinds, pooled_bpb_markdown,
                         score_rows, task_markdown, tidy_rows)

    check_experiment_name(experiment)
    inp = build_inputs(experiment)
    for p in inp.warnings:
        print(f"warning: {p.line()} (experiment other than '{experiment}': left out of all_results.csv)", file=err)
    fatal = inp.fatal(allow_missing)
    if fatal:
        for p in fatal:
            print(f"error: {p.line()}", file=err)
        missing_only = all(p.kind == "missing" for p in fatal)
        print(f"analyze: {len(fatal)} problem(s); nothing written" +
              (" (missing results: finish the pipeline, or pass --allow-missing to report what exists)"
               if missing_only else ""), file=err)
        return 1
    an = analyze(inp)

    tables = {}
    for task in inp.tasks:
        if not inp.reported(task):
            continue
        tables[f"{task}_scores.csv"] = to_csv(score_rows(an.experiment, an.scores[task]), SCORE_COLUMNS)
        tables[f"{task}_comparisons.csv"] = to_csv(comparison_rows(an.experiment, an.comparisons, task),
                                                   COMPARISON_COLUMNS)
        tables[f"{task}.md"] = task_markdown(inp, task, an.scores[task], an.comparisons)
        tables[f"{task}.md"] += pooled_bpb_markdown(inp, task)   # "" unless the task scores gold texts
        if inp.continuous(task):  # multiple choice: the metrics re-derived from the log-likelihoods
            cont = continuous_markdown(inp, task, an.continuous_scores.get(task, ()), an.continuous)
            tables[f"{task}.md"] += f"\n{cont}" if cont else ""
            tables[f"{task}_continuous_scores.csv"] = to_csv(
                score_rows(an.experiment, an.continuous_scores.get(task, ())), SCORE_COLUMNS)
            tables[f"{task}_continuous_comparisons.csv"] = to_csv(
                comparison_rows(an.experiment, an.continuous, task), COMPARISON_COLUMNS)
    if inp.chat_tasks():
        tables["chat_behaviour.csv"] = to_csv(list(an.chat_rows), CHAT_COLUMNS)
        tables["chat_behaviour.md"] = "\n\n".join(f"**model {m}**\n\n" + chat_markdown(inp, an.chat_rows, m)
                                                    for m in inp.models()) + "\n"
    seeds = analyze_seeds(an)
    if seeds is not None:   # a seeded experiment (train.seeds): spread across seeds, differences against it
        tables["seed_variation.csv"] = to_csv(spread_rows(an.experiment, seeds), SEED_COLUMNS)
        tables["seed_variation_tests.csv"] = to_csv(test_rows(an.experiment, seeds), SEED_TEST_COLUMNS)
    tables["training_cost.csv"] = to_csv(cost_rows(inp), COST_COLUMNS)
    tables["training_cost.md"] = f"{cost_markdown(inp)}\n\n{macro('peak_memory_note')(peak_memory_kinds(inp))}\n"
    tidy = to_csv(tidy_rows(inp.all_evaluations), TIDY_COLUMNS)

    fig_dir = figures_dir(an.experiment)
    with atomic_dir(fig_dir) as tmp:
        fd = figure_data(an)
        made = write_figures(fd, Path(tmp))
        if fd.chat is not None:  # (chat_figures builds on figures, one way)
            from .chat_figures import write_chat_figures

            made.update(write_chat_figures(fd, Path(tmp)))
    figure_files = {k: fig_dir / p.name for k, p in made.items()}
    with atomic_dir(tables_dir(an.experiment)) as tmp:
        for name, text in tables.items():
            atomic_write_text(Path(tmp) / name, text)
        if an.experiment == DEFAULT_EXPERIMENT:
            atomic_write_text(Path(tmp) / "all_results.csv", tidy)
    if an.experiment != DEFAULT_EXPERIMENT:
        atomic_write_text(all_results_csv(), tidy)
    readme = paths.RESULTS / "README.md"
    if not readme.is_file() or readme.read_text() != RESULTS_README:
        atomic_write_text(readme, RESULTS_README)
    record = record_path(an.experiment)
    atomic_write_text(record, render_record(an, allow_missing, figure_files, seeds))
    print(f"[analyze] {an.experiment}: {len(inp.evals)} evaluations, {len(inp.training)} training runs, "
          f"{len(an.comparisons)} paired comparisons ({sum(c.significant for c in an.comparisons)} significant "
          f"after Holm), {len(inp.missing)} missing -> {rel(record)}, {rel(tables_dir(an.experiment))}/, "
          f"{rel(fig_dir)}/ ({len(made)} figures)", file=out)
    return 0


def add_arguments(p) -> None:
    """The `analyze` arguments (analyze_results.py and `python -m ftcompare analyze`)."""
    p.add_argument("--experiment", default=os.environ.get("EXPERIMENT", DEFAULT_EXPERIMENT),
                   help="configs/experiments/<name>.yaml (default: $EXPERIMENT or 'default')")
    p.add_argument("--allow-missing", action="store_true",
                   help="report missing evaluations/runs as missing instead of failing (integrity failures still fail)")


def main(argv: list[str] | None = None) -> int:
    """analyze_results.py: parse the arguments, run; a usage error is one line and exit 2."""
    import argparse

    from ..errors import FtcError

    ap = argparse.ArgumentParser(prog="analyze_results.py", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(ap)
    args = ap.parse_args(argv)
    try:
        return run(args.experiment, args.allow_missing)
    except FtcError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
