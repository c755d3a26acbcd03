"""Figures of the report (matplotlib, Agg backend), each readable without the text. They receive the
report's data (`FigureData`, built by the report) and import nothing from it.

  scores_<task>.png            per task and reported metric: bars per method with 95% CIs, the base model as a
                               reference line (its CI as a band), chance level for multiple choice
  delta_vs_base.png            every method - base delta with its paired 95% CI and p-value
  accuracy_vs_peak_memory.png  primary metric vs peak memory of the training steps, per task
  accuracy_vs_train_time.png   primary metric vs time of the training steps (all processes), per task
  training_loss.png            training loss per step of every method (one panel per model)
  chat_*.png                   chat only (chat_figures.py)

Percent metrics are drawn x 100 (%); the others raw in their unit (each panel's `display`).

Missing cells are never drawn as 0: they are left out and labelled "missing". PNGs are deterministic
(no software/date metadata; same inputs -> same bytes).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

BASE_COLOR = "#555555"
MAX_PANELS_PER_ROW = 4
PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf"]
VARIANT_HATCH = {"merged": "", "adapter": "//"}
VARIANT_MARKER = {"merged": "o", "adapter": "s"}
DPI = 110
STYLE = {
    "font.size": 9, "axes.titlesize": 10, "axes.labelsize": 9, "legend.fontsize": 8, "figure.titlesize": 11,
    "axes.spines.top": False, "axes.spines.right": False, "axes.grid": True, "grid.alpha": 0.3,
    "axes.axisbelow": True, "svg.hashsalt": "ftcompare", "path.simplify": False,
}
CI_NAMES = {"Newcombe paired score": "Newcombe", "paired bootstrap": "paired bootstrap"}


# --------------------------------------------------------------------------------------------------
# What the figures are drawn from
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Bar:
    """One evaluated model (a bar, a point, a box)."""
    model: str
    method: str               # "base" for the untuned model
    variant: str
    label: str                # how the report names it
    seed: int | None = None   # training seed in a seeded experiment

    @property
    def is_base(self) -> bool:
        return self.method == "base"


@dataclass(frozen=True)
class Interval:
    value: float
    low: float
    high: float


@dataclass(frozen=True)
class ScorePanel:
    """One reported metric of a task."""
    name: str                 # e.g. "exact_match (strict-match)"
    display: object           # .percent, .scale, .unit, .value(x): how the report shows the metric
    scores: Mapping[Bar, Interval]


@dataclass(frozen=True)
class TaskScores:
    task: str
    n: int
    n_shot: object
    chance: float | None      # multiple choice: mean 1/#choices
    panels: tuple[ScorePanel, ...]   # reported metrics, primary first


@dataclass(frozen=True)
class Delta:
    """One method - base comparison."""
    task: str
    metric_name: str
    display: object
    model: str
    method: str
    label: str
    n: int
    delta: float
    low: float
    high: float
    significant: bool         # after Holm
    p_text: str               # e.g. "p=0.123  Holm 0.456"
    ci_method: str


@dataclass(frozen=True)
class TrainRun:
    model: str
    method: str
    peak_memory_mb: float | None
    train_s: float | None             # optimizer steps' time, summed over the run's processes
    learning_rate: float | None
    steps: tuple[int, ...]    # logged steps with a loss
    losses: tuple[float, ...]
    val_loss: float | None


@dataclass(frozen=True)
class FigureData:
    experiment: str
    methods: tuple[str, ...]             # colour order
    models: tuple[str, ...]
    bars: tuple[Bar, ...]                # every expected cell, grid order (base first per model)
    tasks: tuple[TaskScores, ...]        # tasks with something to report
    deltas: tuple[Delta, ...]
    runs: Mapping[tuple[str, str, int | None], TrainRun]   # (model, method, seed or None)
    peak_memory_kinds: tuple[str, ...]
    chat: object = None                  # chat_figures.ChatData, or None without generation tasks

    def method_bars(self, model: str) -> list[Bar]:
        return [b for b in self.bars if b.model == model and not b.is_base]

    def base_bar(self, model: str) -> Bar:
        return next(b for b in self.bars if b.model == model and b.is_base)


# --------------------------------------------------------------------------------------------------
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


def method_colors(methods) -> dict[str, str]:
    colors = {m: PALETTE[i % len(PALETTE)] for i, m in enumerate(methods)}
    colors["base"] = BASE_COLOR
    return colors


def write_figures(data: FigureData, out: Path) -> dict[str, Path]:
    """Write every figure of `data` into folder `out`; returns {key: path}."""
    plt = _plt()
    made: dict[str, Path] = {}
    with plt.rc_context(STYLE):
        for ts in data.tasks:
            made[f"scores_{ts.task}"] = _scores(data, ts, out / f"scores_{ts.task}.png")
        if data.deltas:
            made["delta_vs_base"] = _delta(data, out / "delta_vs_base.png")
        if data.runs and data.tasks:
            made["accuracy_vs_peak_memory"] = _cost_scatter(data, "peak_memory_mb", "peak memory in training steps (MB)",
                                                            out / "accuracy_vs_peak_memory.png")
            made["accuracy_vs_train_time"] = _cost_scatter(data, "train_s", "training steps' time (s, all processes)",
                                                           out / "accuracy_vs_train_time.png")
        if any(run.steps for run in data.runs.values()):
            made["training_loss"] = _loss(data, out / "training_loss.png")
    return made


def _scores(data: FigureData, ts: TaskScores, path: Path) -> Path:
    plt = _plt()
    colors = method_colors(data.methods)
    models = data.models
    ncols = min(len(ts.panels), MAX_PANELS_PER_ROW)
    nrows = -(-len(ts.panels) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(1.2 + 3.6 * ncols * max(1, len(models) * 0.8), 3.8 * nrows),
                             squeeze=False)
    for ax in list(axes.flat)[len(ts.panels):]:
        ax.set_visible(False)
    legend: dict = {}
    for pi, (ax, panel) in enumerate(zip(axes.flat, ts.panels)):
        d = panel.display
        k = d.scale
        top = max([k * s.high for c in data.bars if (s := panel.scores.get(c))] + [10 if d.percent else 0])
        low_y = 2 if d.percent else 0.02 * top   # where "missing" labels go
        off = 1 if d.percent else 0.01 * top     # value labels above the error bars
        handles = {}
        for gi, model in enumerate(models):
            cells = data.method_bars(model)
            width = 0.8 / max(1, len(cells))
            left, right = gi - 0.45, gi + 0.45
            base = panel.scores.get(data.base_bar(model))
            if base:
                ax.fill_between([left, right], k * base.low, k * base.high, color=BASE_COLOR, alpha=0.12, lw=0)
                h = ax.hlines(k * base.value, left, right, colors=BASE_COLOR, linestyles="--", lw=1.5)
                handles.setdefault("base (95% CI band)", h)
                ax.text(right, k * base.value, f" base {d.value(base.value)}", va="center", ha="left", fontsize=7,
                        color=BASE_COLOR)
            else:
                ax.text(gi, low_y, "base missing", ha="center", fontsize=7, color="red")
            for ci, cell in enumerate(cells):
                x = gi - 0.4 + width * (ci + 0.5)
                s = panel.scores.get(cell)
                if s is None:
                    ax.text(x, low_y, f"{cell.label}: missing", rotation=90, ha="center", va="bottom", fontsize=7,
                            color="red")
                    continue
                v, lo, hi = s.value, s.low, s.high
                b = ax.bar(x, k * v, width * 0.9, color=colors.get(cell.method, "#999999"),
                           hatch=VARIANT_HATCH.get(cell.variant, ""), edgecolor="white", lw=0.5)
                ax.errorbar(x, k * v, yerr=[[k * (v - lo)], [k * (hi - v)]], fmt="none", ecolor="black",
                            elinewidth=1, capsize=3)
                ax.text(x, k * hi + off, d.value(v), ha="center", va="bottom", fontsize=7)
                handles.setdefault(cell.label, b)
        if ts.chance is not None:
            h = ax.axhline(100 * ts.chance, color="black", ls=":", lw=1)
            handles.setdefault(f"chance ({100 * ts.chance:.0f}%)", h)
        ax.set_xticks(range(len(models)), [f"model {m}" for m in models])
        ax.set_xlim(-0.6, len(models) - 0.4 + 0.35)
        if d.percent:
            ax.set_ylim(0, min(100, top + 12) if top < 88 else 105)
        else:
            ax.set_ylim(0, 1.15 * top if top > 0 else 1)
        ax.set_ylabel(f"{panel.name} ({d.unit})")
        ax.set_title(panel.name + (" (primary)" if pi == 0 else ""))
        for key, h in handles.items():
            legend.setdefault(key, h)
    fig.suptitle(f"{ts.task} — experiment {data.experiment}: n = {ts.n}, {ts.n_shot}-shot; "
                 "error bars / band: 95% Wilson CI")
    _legend_below(fig, legend)
    return _save(fig, path)


def _delta(data: FigureData, path: Path) -> Path:
    """One panel per unit (percentage points, tokens, nats, ...): deltas of different units never share an axis."""
    plt = _plt()
    comps = data.deltas
    groups: dict = {}
    for c in comps:
        groups.setdefault((not c.display.percent, c.display.unit), []).append(c)
    title = (f"Change vs the untuned base model — experiment {data.experiment}\n"
             "filled = significant after Holm (p < 0.05); hollow = no difference detected")
    if len(groups) == 1:
        fig, ax = plt.subplots(figsize=(8.5, 0.9 + 0.32 * len(comps)))
        _delta_panel(data, ax, comps)
        ax.set_title(title, fontsize=9)
    else:
        keys = sorted(groups)
        heights = [0.9 + 0.32 * len(groups[k]) for k in keys]
        fig, axes = plt.subplots(len(keys), 1, figsize=(8.5, sum(heights)), squeeze=False,
                                 gridspec_kw={"height_ratios": heights})
        for ax, key in zip(axes[:, 0], keys):
            _delta_panel(data, ax, groups[key])
        axes[0, 0].set_title(title, fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def _delta_panel(data: FigureData, ax, comps) -> None:
    colors = method_colors(data.methods)
    d = comps[0].display
    k = d.scale
    rows = list(reversed(comps))  # first comparison at the top
    span = max([abs(c.low) for c in rows] + [abs(c.high) for c in rows] + [0.01]) * k
    for y, c in enumerate(rows):
        color = colors.get(c.method, "#999999")
        # max(0, .): a bootstrap interval of a constant delta can miss it by a rounding error
        ax.errorbar(k * c.delta, y, xerr=[[max(0.0, k * (c.delta - c.low))], [max(0.0, k * (c.high - c.delta))]],
                    fmt="o", color=color, mfc=color if c.significant else "white", mec=color, ms=6, capsize=3,
                    lw=1.3)
        ax.text(span * 1.08, y, f"n={c.n}  {c.p_text}", va="center", fontsize=7)
    ax.axvline(0, color="black", lw=1)
    ax.set_yticks(range(len(rows)), [f"{c.task} · {c.metric_name} · {c.model} · {c.label}" for c in rows])
    ax.set_xlim(-span * 1.05, span * 1.05)
    ax.set_ylim(-0.7, len(rows) - 0.3)
    cis = " / ".join(dict.fromkeys(CI_NAMES.get(c.ci_method, c.ci_method) for c in comps))
    ax.set_xlabel(f"method − base ({d.axis_unit}); bars: paired 95% CI ({cis})")


def _cost_scatter(data: FigureData, key: str, xlabel: str, path: Path) -> Path:
    plt = _plt()
    colors = method_colors(data.methods)
    fig, axes = plt.subplots(1, len(data.tasks), figsize=(0.6 + 3.6 * len(data.tasks), 3.6), squeeze=False)
    legend: dict = {}
    for ax, ts in zip(axes[0], data.tasks):
        panel = ts.panels[0]
        d = panel.display
        k = d.scale
        for model in data.models:
            base = panel.scores.get(data.base_bar(model))
            if base:
                h = ax.axhline(k * base.value, color=BASE_COLOR, ls="--", lw=1)
                legend.setdefault("base (untuned model)", h)
            for cell in data.method_bars(model):
                run = data.runs.get((model, cell.method, cell.seed))
                s = panel.scores.get(cell)
                if run is None or s is None or getattr(run, key) is None:
                    continue
                x = float(getattr(run, key))
                v, lo, hi = s.value, s.low, s.high
                h = ax.errorbar(x, k * v, yerr=[[k * (v - lo)], [k * (hi - v)]], fmt=VARIANT_MARKER.get(
                    cell.variant, "o"), color=colors.get(cell.method, "#999999"), capsize=3, ms=7)
                if len(data.models) > 1:
                    ax.annotate(model, (x, k * v), textcoords="offset points", xytext=(6, 4), fontsize=7)
                legend.setdefault(cell.label, h)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(f"{panel.name} ({d.unit})")
        ax.set_title(ts.task)
        ax.margins(x=0.25, y=0.15)
    what = "peak memory: " + ", ".join(data.peak_memory_kinds) if key == "peak_memory_mb" else \
        "optimizer steps only: no warm-up excluded, no saves, no evaluation"
    fig.suptitle(f"Score (primary metric, 95% Wilson CI) vs training cost — experiment {data.experiment} ({what})")
    _legend_below(fig, legend)
    return _save(fig, path)


def _loss(data: FigureData, path: Path) -> Path:
    from matplotlib.ticker import MaxNLocator

    plt = _plt()
    colors = method_colors(data.methods)
    models = [m for m in data.models if any(k[0] == m for k in data.runs)]
    fig, axes = plt.subplots(1, len(models), figsize=(0.6 + 5 * len(models), 3.8), squeeze=False)
    legend: dict = {}
    has_val = False
    for ax, model in zip(axes[0], models):
        for (_, method, _), run in sorted(((k, r) for k, r in data.runs.items() if k[0] == model),
                                          key=lambda kr: (data.methods.index(kr[0][1]), kr[0][2] or 0)):
            if not run.steps:   # (one line per run: a seeded experiment draws each seed in its method's colour)
                continue
            steps, loss, lr = list(run.steps), list(run.losses), run.learning_rate
            (h,) = ax.plot(steps, loss, color=colors.get(method), lw=1.4, marker="." if len(steps) < 40 else None)
            legend.setdefault(f"{method} (peak lr {lr:g})" if isinstance(lr, (int, float)) else method, h)
            if run.val_loss is not None and steps:
                ax.plot([steps[-1]], [run.val_loss], marker="x", ms=8, color=colors.get(method), ls="none")
                has_val = True
        ax.set_xlabel("optimizer step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("training loss (completion tokens)")
        ax.set_title(f"model {model}")
    if has_val:
        legend["validation loss (end)"] = axes[0][0].plot([], [], marker="x", color="black", ls="none")[0]
    fig.suptitle(f"Training loss per step — experiment {data.experiment}")
    _legend_below(fig, legend)
    return _save(fig, path)
