"""Figures of the report (matplotlib, Agg backend), each readable without the text.

  scores_<task>.png            per task and reported metric: bars per method with 95% CIs, the base model as a
                               reference line (its CI as a band), chance level for multiple choice
  delta_vs_base.png            every method - base delta with its paired 95% CI and p-value
  accuracy_vs_peak_memory.png  primary metric vs training peak memory, per task
  accuracy_vs_wall_time.png    primary metric vs training wall time, per task
  training_loss.png            training loss per step of every method (one panel per model)

Missing cells are never drawn as 0: they are left out and labelled "missing". PNGs are deterministic
(no software/date metadata; same inputs -> same bytes).
"""
from __future__ import annotations

from pathlib import Path

BASE_COLOR = "#555555"
PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf"]
VARIANT_HATCH = {"merged": "", "adapter": "//"}
VARIANT_MARKER = {"merged": "o", "adapter": "s"}
DPI = 110
STYLE = {
    "font.size": 9, "axes.titlesize": 10, "axes.labelsize": 9, "legend.fontsize": 8, "figure.titlesize": 11,
    "axes.spines.top": False, "axes.spines.right": False, "axes.grid": True, "grid.alpha": 0.3,
    "axes.axisbelow": True, "svg.hashsalt": "ftcompare", "path.simplify": False,
}


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    fig.savefig(path, dpi=DPI, metadata={"Software": None}, bbox_inches="tight", pad_inches=0.15)
    _plt().close(fig)
    return path


def _legend_below(fig, entries: dict) -> None:
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    if entries:
        fig.legend(list(entries.values()), list(entries.keys()), loc="lower center", ncol=min(len(entries), 6),
                   frameon=False, bbox_to_anchor=(0.5, 0.0))


def method_colors(methods: list[str]) -> dict[str, str]:
    colors = {m: PALETTE[i % len(PALETTE)] for i, m in enumerate(methods)}
    colors["base"] = BASE_COLOR
    return colors


def write_figures(an, out: Path) -> dict[str, Path]:
    """Write every figure of analysis `an` into folder `out`; returns {key: path}."""
    plt = _plt()
    made: dict[str, Path] = {}
    with plt.rc_context(STYLE):
        for task in an.tasks:
            if an.reported(task):
                made[f"scores_{task}"] = _scores(an, task, out / f"scores_{task}.png")
        vb = [c for c in an.comparisons if c.kind == "vs base"]
        if vb:
            made["delta_vs_base"] = _delta(an, vb, out / "delta_vs_base.png")
        if an.training and any(an.reported(t) for t in an.tasks):
            made["accuracy_vs_peak_memory"] = _cost_scatter(an, "peak_memory_mb", "training peak memory (MB)",
                                                            out / "accuracy_vs_peak_memory.png")
            made["accuracy_vs_wall_time"] = _cost_scatter(an, "wall_time_s", "training wall time (s)",
                                                          out / "accuracy_vs_wall_time.png")
        if any(run.log for run in an.training.values()):
            made["training_loss"] = _loss(an, out / "training_loss.png")
    return made


def _score(an, cell, task, metric, filt):
    """(value, ci_low, ci_high, n) of one cell, or None when missing."""
    from .analyze import score_rows_cache

    for r in score_rows_cache(an, task):
        if (r["metric"], r["filter"], r["model"], r["evaluated"]) == (metric, filt, cell.model, cell.label):
            return r["value"], r["ci95_low"], r["ci95_high"], r["n"]
    return None


def _scores(an, task, path: Path) -> Path:
    from .analyze import metric_name

    plt = _plt()
    reported = an.reported(task)
    colors = method_colors(list(an.exp.methods))
    models = an.models()
    fig, axes = plt.subplots(1, len(reported), figsize=(1.2 + 3.6 * len(reported) * max(1, len(models) * 0.8), 3.8),
                             squeeze=False)
    ref = next(an.task_result(c, task) for c in an.cells if an.task_result(c, task))
    chance = ref.samples.chance() if ref.config.get("output_type") == "multiple_choice" else None
    legend: dict = {}
    for ax, (metric, filt) in zip(axes[0], reported):
        handles = {}
        for gi, model in enumerate(models):
            cells = an.method_cells(model)
            width = 0.8 / max(1, len(cells))
            left, right = gi - 0.45, gi + 0.45
            base = _score(an, next(c for c in an.cells if c.model == model and c.method == "base"), task, metric, filt)
            if base:
                v, lo, hi, _ = base
                ax.fill_between([left, right], 100 * lo, 100 * hi, color=BASE_COLOR, alpha=0.12, lw=0)
                h = ax.hlines(100 * v, left, right, colors=BASE_COLOR, linestyles="--", lw=1.5)
                handles.setdefault("base (95% CI band)", h)
                ax.text(right, 100 * v, f" base {100 * v:.1f}", va="center", ha="left", fontsize=7, color=BASE_COLOR)
            else:
                ax.text(gi, 2, "base missing", ha="center", fontsize=7, color="red")
            for ci, cell in enumerate(cells):
                x = gi - 0.4 + width * (ci + 0.5)
                s = _score(an, cell, task, metric, filt)
                if s is None:
                    ax.text(x, 2, f"{cell.label}: missing", rotation=90, ha="center", va="bottom", fontsize=7,
                            color="red")
                    continue
                v, lo, hi, _ = s
                b = ax.bar(x, 100 * v, width * 0.9, color=colors.get(cell.method, "#999999"),
                           hatch=VARIANT_HATCH.get(cell.variant, ""), edgecolor="white", lw=0.5)
                ax.errorbar(x, 100 * v, yerr=[[100 * (v - lo)], [100 * (hi - v)]], fmt="none", ecolor="black",
                            elinewidth=1, capsize=3)
                ax.text(x, 100 * hi + 1, f"{100 * v:.1f}", ha="center", va="bottom", fontsize=7)
                handles.setdefault(cell.label, b)
        if chance is not None:
            h = ax.axhline(100 * chance, color="black", ls=":", lw=1)
            handles.setdefault(f"chance ({100 * chance:.0f}%)", h)
        ax.set_xticks(range(len(models)), [f"model {m}" for m in models])
        ax.set_xlim(-0.6, len(models) - 0.4 + 0.35)
        top = max([100 * s[2] for c in an.cells if (s := _score(an, c, task, metric, filt))] + [10])
        ax.set_ylim(0, min(100, top + 12) if top < 88 else 105)
        ax.set_ylabel(f"{metric_name(metric, filt)} (%)")
        ax.set_title(f"{metric_name(metric, filt)}" + (" (primary)" if (metric, filt) == reported[0] else ""))
        for k, h in handles.items():
            legend.setdefault(k, h)
    fig.suptitle(f"{task} — experiment {an.experiment}: n = {ref.n}, {ref.n_shot}-shot; "
                 "error bars / band: 95% Wilson CI")
    _legend_below(fig, legend)
    return _save(fig, path)


def _delta(an, comps, path: Path) -> Path:
    from .analyze import ALPHA, fmt_p, metric_name

    plt = _plt()
    colors = method_colors(list(an.exp.methods))
    rows = list(reversed(comps))  # first comparison at the top
    fig, ax = plt.subplots(figsize=(8.5, 0.9 + 0.32 * len(rows)))
    span = max([abs(c.paired.ci_low) for c in rows] + [abs(c.paired.ci_high) for c in rows] + [0.01]) * 100
    for y, c in enumerate(rows):
        p = c.paired
        method = c.second.rsplit("-", 1)[0]
        color = colors.get(method, "#999999")
        sig = c.p_holm < ALPHA
        ax.errorbar(100 * p.delta, y, xerr=[[100 * (p.delta - p.ci_low)], [100 * (p.ci_high - p.delta)]],
                    fmt="o", color=color, mfc=color if sig else "white", mec=color, ms=6, capsize=3, lw=1.3)
        ax.text(span * 1.08, y, f"n={p.n}  p={fmt_p(p.p_value)}  Holm {fmt_p(c.p_holm)}", va="center", fontsize=7)
    ax.axvline(0, color="black", lw=1)
    labels = [f"{c.task} · {metric_name(c.metric, c.filter)} · {c.model} · {c.second}" for c in rows]
    ax.set_yticks(range(len(rows)), labels)
    ax.set_xlim(-span * 1.05, span * 1.05)
    ax.set_ylim(-0.7, len(rows) - 0.3)
    ax.set_xlabel("method − base (percentage points); bars: paired 95% CI (Newcombe)")
    ax.set_title(f"Change vs the untuned base model — experiment {an.experiment}\n"
                 "filled = significant after Holm (p < 0.05); hollow = no difference detected", fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def _cost_scatter(an, key: str, xlabel: str, path: Path) -> Path:
    from .analyze import metric_name

    plt = _plt()
    colors = method_colors(list(an.exp.methods))
    tasks = [t for t in an.tasks if an.reported(t)]
    fig, axes = plt.subplots(1, len(tasks), figsize=(0.6 + 3.6 * len(tasks), 3.6), squeeze=False)
    kinds = sorted({str(r.summary.get("peak_memory_kind")) for r in an.training.values()})
    legend: dict = {}
    for ax, task in zip(axes[0], tasks):
        metric, filt = an.reported(task)[0]
        for model in an.models():
            base = _score(an, next(c for c in an.cells if c.model == model and c.method == "base"), task, metric, filt)
            if base:
                h = ax.axhline(100 * base[0], color=BASE_COLOR, ls="--", lw=1)
                legend.setdefault("base (untuned model)", h)
            for cell in an.method_cells(model):
                run = an.training.get((model, cell.method))
                s = _score(an, cell, task, metric, filt)
                if run is None or s is None or run.summary.get(key) is None:
                    continue
                x = float(run.summary[key])
                v, lo, hi, _ = s
                h = ax.errorbar(x, 100 * v, yerr=[[100 * (v - lo)], [100 * (hi - v)]], fmt=VARIANT_MARKER.get(
                    cell.variant, "o"), color=colors.get(cell.method, "#999999"), capsize=3, ms=7)
                if len(an.models()) > 1:
                    ax.annotate(model, (x, 100 * v), textcoords="offset points", xytext=(6, 4), fontsize=7)
                legend.setdefault(cell.label, h)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(f"{metric_name(metric, filt)} (%)")
        ax.set_title(task)
        ax.margins(x=0.25, y=0.15)
    what = "peak memory: " + ", ".join(kinds) if key == "peak_memory_mb" else "wall time of the training loop"
    fig.suptitle(f"Score (primary metric, 95% Wilson CI) vs training cost — experiment {an.experiment} ({what})")
    _legend_below(fig, legend)
    return _save(fig, path)


def _loss(an, path: Path) -> Path:
    from matplotlib.ticker import MaxNLocator

    plt = _plt()
    colors = method_colors(list(an.exp.methods))
    models = [m for m in an.models() if any(an.training.get((m, x)) for x in an.exp.methods)]
    fig, axes = plt.subplots(1, len(models), figsize=(0.6 + 5 * len(models), 3.8), squeeze=False)
    legend: dict = {}
    has_val = False
    for ax, model in zip(axes[0], models):
        for method in an.exp.methods:
            run = an.training.get((model, method))
            if run is None or not run.log:
                continue
            steps = [r["step"] for r in run.log if r.get("loss") is not None]
            loss = [r["loss"] for r in run.log if r.get("loss") is not None]
            lr = (run.config or {}).get("method", {}).get("learning_rate")
            (h,) = ax.plot(steps, loss, color=colors.get(method), lw=1.4, marker="." if len(steps) < 40 else None)
            legend.setdefault(f"{method} (peak lr {lr:g})" if isinstance(lr, (int, float)) else method, h)
            if run.summary.get("val_loss") is not None and steps:
                ax.plot([steps[-1]], [run.summary["val_loss"]], marker="x", ms=8, color=colors.get(method), ls="none")
                has_val = True
        ax.set_xlabel("optimizer step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("training loss (completion tokens)")
        ax.set_title(f"model {model}")
    if has_val:
        legend["validation loss (end)"] = axes[0][0].plot([], [], marker="x", color="black", ls="none")[0]
    fig.suptitle(f"Training loss per step — experiment {an.experiment}")
    _legend_below(fig, legend)
    return _save(fig, path)
