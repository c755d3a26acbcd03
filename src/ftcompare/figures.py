"""Figures of the report (matplotlib, Agg backend), each readable without the text.

  scores_<task>.png            per task and reported metric: bars per method with 95% CIs, the base model as a
                               reference line (its CI as a band), chance level for multiple choice
  delta_vs_base.png            every method - base delta with its paired 95% CI and p-value
  accuracy_vs_peak_memory.png  primary metric vs training peak memory, per task
  accuracy_vs_wall_time.png    primary metric vs training wall time, per task
  training_loss.png            training loss per step of every method (one panel per model)
  chat_stop_rate.png           chat only: share of replies that end their turn, 95% Wilson CIs, the 95% target
  chat_reply_length.png        chat only: reply lengths per variant and setting (box + points), max_new_tokens
  chat_template_tokens.png     chat only: one training conversation's tokens, special / in the loss / masked

Percent metrics are drawn x 100 (%); the others raw in their unit (analyze.metric_display).

Missing cells are never drawn as 0: they are left out and labelled "missing". PNGs are deterministic
(no software/date metadata; same inputs -> same bytes).
"""
from __future__ import annotations

from pathlib import Path

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
        if an.chat_tasks():
            from .analyze import chat_rows, template_view_paths

            if any(r.get("n") for r in chat_rows(an)):
                made["chat_stop_rate"] = _chat_stop_rate(an, out / "chat_stop_rate.png")
                made["chat_reply_length"] = _chat_reply_length(an, out / "chat_reply_length.png")
            views = template_view_paths(an)
            if views:
                made["chat_template_tokens"] = _chat_template_tokens(an, views, out / "chat_template_tokens.png")
    return made


def _score(an, cell, task, metric, filt):
    """(value, ci_low, ci_high, n) of one cell, or None when missing."""
    from .analyze import score_rows_cache

    for r in score_rows_cache(an, task):
        if (r["metric"], r["filter"], r["model"], r["evaluated"]) == (metric, filt, cell.model, cell.label):
            return r["value"], r["ci95_low"], r["ci95_high"], r["n"]
    return None


def _scores(an, task, path: Path) -> Path:
    from .analyze import metric_display, metric_name

    plt = _plt()
    reported = an.reported(task)
    colors = method_colors(list(an.exp.methods))
    models = an.models()
    ncols = min(len(reported), MAX_PANELS_PER_ROW)
    nrows = -(-len(reported) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(1.2 + 3.6 * ncols * max(1, len(models) * 0.8), 3.8 * nrows),
                             squeeze=False)
    for ax in list(axes.flat)[len(reported):]:
        ax.set_visible(False)
    ref = next(an.task_result(c, task) for c in an.cells if an.task_result(c, task))
    chance = ref.samples.chance() if ref.config.get("output_type") == "multiple_choice" else None
    legend: dict = {}
    for ax, (metric, filt) in zip(axes.flat, reported):
        d = metric_display(metric)
        k = d.scale
        top = max([k * s[2] for c in an.cells if (s := _score(an, c, task, metric, filt))] + [10 if d.percent else 0])
        low_y = 2 if d.percent else 0.02 * top   # where "missing" labels go
        off = 1 if d.percent else 0.01 * top     # value labels above the error bars
        handles = {}
        for gi, model in enumerate(models):
            cells = an.method_cells(model)
            width = 0.8 / max(1, len(cells))
            left, right = gi - 0.45, gi + 0.45
            base = _score(an, next(c for c in an.cells if c.model == model and c.method == "base"), task, metric, filt)
            if base:
                v, lo, hi, _ = base
                ax.fill_between([left, right], k * lo, k * hi, color=BASE_COLOR, alpha=0.12, lw=0)
                h = ax.hlines(k * v, left, right, colors=BASE_COLOR, linestyles="--", lw=1.5)
                handles.setdefault("base (95% CI band)", h)
                ax.text(right, k * v, f" base {d.value(v)}", va="center", ha="left", fontsize=7, color=BASE_COLOR)
            else:
                ax.text(gi, low_y, "base missing", ha="center", fontsize=7, color="red")
            for ci, cell in enumerate(cells):
                x = gi - 0.4 + width * (ci + 0.5)
                s = _score(an, cell, task, metric, filt)
                if s is None:
                    ax.text(x, low_y, f"{cell.label}: missing", rotation=90, ha="center", va="bottom", fontsize=7,
                            color="red")
                    continue
                v, lo, hi, _ = s
                b = ax.bar(x, k * v, width * 0.9, color=colors.get(cell.method, "#999999"),
                           hatch=VARIANT_HATCH.get(cell.variant, ""), edgecolor="white", lw=0.5)
                ax.errorbar(x, k * v, yerr=[[k * (v - lo)], [k * (hi - v)]], fmt="none", ecolor="black",
                            elinewidth=1, capsize=3)
                ax.text(x, k * hi + off, d.value(v), ha="center", va="bottom", fontsize=7)
                handles.setdefault(cell.label, b)
        if chance is not None:
            h = ax.axhline(100 * chance, color="black", ls=":", lw=1)
            handles.setdefault(f"chance ({100 * chance:.0f}%)", h)
        ax.set_xticks(range(len(models)), [f"model {m}" for m in models])
        ax.set_xlim(-0.6, len(models) - 0.4 + 0.35)
        if d.percent:
            ax.set_ylim(0, min(100, top + 12) if top < 88 else 105)
        else:
            ax.set_ylim(0, 1.15 * top if top > 0 else 1)
        ax.set_ylabel(f"{metric_name(metric, filt)} ({d.unit})")
        ax.set_title(f"{metric_name(metric, filt)}" + (" (primary)" if (metric, filt) == reported[0] else ""))
        for k, h in handles.items():
            legend.setdefault(k, h)
    fig.suptitle(f"{task} — experiment {an.experiment}: n = {ref.n}, {ref.n_shot}-shot; "
                 "error bars / band: 95% Wilson CI")
    _legend_below(fig, legend)
    return _save(fig, path)


def _delta(an, comps, path: Path) -> Path:
    """One panel per unit (percentage points, tokens, bits/byte, ...): deltas of different units never share an axis."""
    from .analyze import metric_display

    plt = _plt()
    groups: dict = {}
    for c in comps:
        d = metric_display(c.metric)
        groups.setdefault((not d.percent, d.unit), []).append(c)
    title = (f"Change vs the untuned base model — experiment {an.experiment}\n"
             "filled = significant after Holm (p < 0.05); hollow = no difference detected")
    if len(groups) == 1:
        fig, ax = plt.subplots(figsize=(8.5, 0.9 + 0.32 * len(comps)))
        _delta_panel(an, ax, comps)
        ax.set_title(title, fontsize=9)
    else:
        keys = sorted(groups)
        heights = [0.9 + 0.32 * len(groups[k]) for k in keys]
        fig, axes = plt.subplots(len(keys), 1, figsize=(8.5, sum(heights)), squeeze=False,
                                 gridspec_kw={"height_ratios": heights})
        for ax, key in zip(axes[:, 0], keys):
            _delta_panel(an, ax, groups[key])
        axes[0, 0].set_title(title, fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


CI_NAMES = {"Newcombe paired score": "Newcombe", "paired bootstrap": "paired bootstrap"}


def _delta_panel(an, ax, comps) -> None:
    from .analyze import ALPHA, fmt_p, metric_display, metric_name

    colors = method_colors(list(an.exp.methods))
    d = metric_display(comps[0].metric)
    k = d.scale
    rows = list(reversed(comps))  # first comparison at the top
    span = max([abs(c.paired.ci_low) for c in rows] + [abs(c.paired.ci_high) for c in rows] + [0.01]) * k
    for y, c in enumerate(rows):
        p = c.paired
        method = c.second.rsplit("-", 1)[0]
        color = colors.get(method, "#999999")
        sig = c.p_holm < ALPHA
        # max(0, .): a bootstrap interval of a constant delta can miss it by a rounding error
        ax.errorbar(k * p.delta, y, xerr=[[max(0.0, k * (p.delta - p.ci_low))], [max(0.0, k * (p.ci_high - p.delta))]],
                    fmt="o", color=color, mfc=color if sig else "white", mec=color, ms=6, capsize=3, lw=1.3)
        ax.text(span * 1.08, y, f"n={p.n}  p={fmt_p(p.p_value)}  Holm {fmt_p(c.p_holm)}", va="center", fontsize=7)
    ax.axvline(0, color="black", lw=1)
    labels = [f"{c.task} · {metric_name(c.metric, c.filter)} · {c.model} · {c.second}" for c in rows]
    ax.set_yticks(range(len(rows)), labels)
    ax.set_xlim(-span * 1.05, span * 1.05)
    ax.set_ylim(-0.7, len(rows) - 0.3)
    unit = "percentage points" if d.percent else d.unit if d.unit != "0–100" else "points on a 0–100 scale"
    cis = " / ".join(dict.fromkeys(CI_NAMES.get(c.paired.ci_method, c.paired.ci_method) for c in comps))
    ax.set_xlabel(f"method − base ({unit}); bars: paired 95% CI ({cis})")


def _cost_scatter(an, key: str, xlabel: str, path: Path) -> Path:
    from .analyze import metric_display, metric_name

    plt = _plt()
    colors = method_colors(list(an.exp.methods))
    tasks = [t for t in an.tasks if an.reported(t)]
    fig, axes = plt.subplots(1, len(tasks), figsize=(0.6 + 3.6 * len(tasks), 3.6), squeeze=False)
    kinds = sorted({str(r.summary.get("peak_memory_kind")) for r in an.training.values()})
    legend: dict = {}
    for ax, task in zip(axes[0], tasks):
        metric, filt = an.reported(task)[0]
        d = metric_display(metric)
        k = d.scale
        for model in an.models():
            base = _score(an, next(c for c in an.cells if c.model == model and c.method == "base"), task, metric, filt)
            if base:
                h = ax.axhline(k * base[0], color=BASE_COLOR, ls="--", lw=1)
                legend.setdefault("base (untuned model)", h)
            for cell in an.method_cells(model):
                run = an.training.get((model, cell.method))
                s = _score(an, cell, task, metric, filt)
                if run is None or s is None or run.summary.get(key) is None:
                    continue
                x = float(run.summary[key])
                v, lo, hi, _ = s
                h = ax.errorbar(x, k * v, yerr=[[k * (v - lo)], [k * (hi - v)]], fmt=VARIANT_MARKER.get(
                    cell.variant, "o"), color=colors.get(cell.method, "#999999"), capsize=3, ms=7)
                if len(an.models()) > 1:
                    ax.annotate(model, (x, k * v), textcoords="offset points", xytext=(6, 4), fontsize=7)
                legend.setdefault(cell.label, h)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(f"{metric_name(metric, filt)} ({d.unit})")
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


# --------------------------------------------------------------------------------------------------
# Chat figures (only for experiments with generation tasks)
# --------------------------------------------------------------------------------------------------
STOP_TARGET_COLOR = "#d62728"


def _chat_cells(an, model):
    return [c for c in an.cells if c.model == model]


def _chat_stop_rate(an, path: Path) -> Path:
    """Per model a panel; per setting a group of bars (one per evaluated variant) with 95% Wilson CIs."""
    from .analyze import CHAT_STOP_TARGET, chat_rows, setting_name

    plt = _plt()
    colors = method_colors(list(an.exp.methods))
    tasks = an.chat_tasks()
    models = an.models()
    rows = {(r["model"], r["evaluated"], r["task"]): r for r in chat_rows(an)}
    n_cells = max(len(_chat_cells(an, m)) for m in models)
    fig, axes = plt.subplots(1, len(models), figsize=(1.5 + (0.5 + 0.45 * n_cells) * len(tasks) * len(models), 3.8),
                             squeeze=False)
    legend: dict = {}
    for ax, model in zip(axes[0], models):
        cells = _chat_cells(an, model)
        width = 0.8 / max(1, len(cells))
        for gi, task in enumerate(tasks):
            for ci, cell in enumerate(cells):
                x = gi - 0.4 + width * (ci + 0.5)
                r = rows.get((model, cell.label, task))
                if r is None or r.get("n") is None:
                    ax.text(x, 2, f"{cell.label}: missing", rotation=90, ha="center", va="bottom", fontsize=7,
                            color="red")
                    continue
                v, lo, hi = 100 * r["stop_rate"], 100 * r["stop_ci95_low"], 100 * r["stop_ci95_high"]
                b = ax.bar(x, v, width * 0.9, color=colors.get(cell.method, "#999999"),
                           hatch=VARIANT_HATCH.get(cell.variant, ""), edgecolor="white", lw=0.5)
                ax.errorbar(x, v, yerr=[[v - lo], [hi - v]], fmt="none", ecolor="black", elinewidth=1, capsize=3)
                ax.text(x, hi + 1, f"{v:.0f}", ha="center", va="bottom", fontsize=7)
                legend.setdefault(cell.label, b)
        h = ax.axhline(100 * CHAT_STOP_TARGET, color=STOP_TARGET_COLOR, ls=":", lw=1.2)
        legend.setdefault(f"target: {100 * CHAT_STOP_TARGET:.0f}% of prompts", h)
        ns = sorted({r["n"] for r in rows.values() if r["model"] == model and r.get("n")})
        ax.set_xticks(range(len(tasks)), [f"setting {setting_name(t)}" for t in tasks])
        ax.set_xlim(-0.6, len(tasks) - 0.4)
        ax.set_ylim(0, 112)
        ax.set_ylabel("replies that end their turn (%)")
        ax.set_title(f"model {model} (n = {', '.join(map(str, ns))} prompts)")
    fig.suptitle(f"Stop rate at end-of-turn — experiment {an.experiment}; error bars: 95% Wilson CI")
    _legend_below(fig, legend)
    return _save(fig, path)


def _chat_reply_length(an, path: Path) -> Path:
    """Per model a panel; per setting a group of boxes (one per variant) with every reply as a point."""
    from .analyze import max_new_tokens, setting_name

    plt = _plt()
    colors = method_colors(list(an.exp.methods))
    tasks = an.chat_tasks()
    models = an.models()
    n_cells = max(len(_chat_cells(an, m)) for m in models)
    fig, axes = plt.subplots(1, len(models), figsize=(1.5 + (0.5 + 0.5 * n_cells) * len(tasks) * len(models), 3.8),
                             squeeze=False)
    legend: dict = {}
    top = 0.0
    for ax, model in zip(axes[0], models):
        cells = _chat_cells(an, model)
        width = 0.8 / max(1, len(cells))
        for gi, task in enumerate(tasks):
            for ci, cell in enumerate(cells):
                x = gi - 0.4 + width * (ci + 0.5)
                tr = an.task_result(cell, task)
                values = [v for _, v in sorted(tr.samples.outcomes("length", "none").items())] if tr else []
                if not values:
                    ax.text(x, 0, f"{cell.label}: missing", rotation=90, ha="center", va="bottom", fontsize=7,
                            color="red")
                    continue
                color = colors.get(cell.method, "#999999")
                bp = ax.boxplot([values], positions=[x], widths=width * 0.75, patch_artist=True, showfliers=False,
                                manage_ticks=False, medianprops={"color": "black", "lw": 1.2})
                for patch in bp["boxes"]:
                    patch.set_facecolor(color)
                    patch.set_alpha(0.35)
                    patch.set_hatch(VARIANT_HATCH.get(cell.variant, ""))
                # points spread deterministically across the box (golden-ratio offsets, no random state)
                xs = [x + width * 0.6 * (((i * 0.6180339887) % 1.0) - 0.5) for i in range(len(values))]
                ax.scatter(xs, values, s=7, color=color, alpha=0.7, lw=0, zorder=3)
                top = max(top, max(values))
                legend.setdefault(cell.label, bp["boxes"][0])
        mnt = max_new_tokens(an, tasks[0])
        if mnt is not None:
            h = ax.axhline(mnt, color=STOP_TARGET_COLOR, ls=":", lw=1.2)
            legend.setdefault(f"max_new_tokens = {mnt} (a reply here did not end its turn)", h)
            top = max(top, mnt)
        ax.set_xticks(range(len(tasks)), [f"setting {setting_name(t)}" for t in tasks])
        ax.set_xlim(-0.6, len(tasks) - 0.4)
        ax.set_ylim(0, 1.08 * top if top > 0 else 1)
        ax.set_ylabel("reply length (tokens, end-of-turn excluded)")
        ax.set_title(f"model {model}")
    fig.suptitle(f"Reply lengths — experiment {an.experiment}; box: quartiles and median, whiskers 1.5 IQR, "
                 "dots: every reply")
    _legend_below(fig, legend)
    return _save(fig, path)


TOKEN_ROW_CHARS = 110         # characters per row of token boxes
TOKEN_MAX = 220               # tokens drawn (the rest is counted in the title)
TOKEN_LABEL_CHARS = 16        # a longer token text is cut
TRAINED_COLOR = "#8fd18f"
MASKED_COLOR = "#d9d9d9"


TOKEN_FONT = "DejaVu Sans Mono"     # monospace: a box's width follows from its number of characters
_FONT_CHARS: set[int] = set()


def _font_chars() -> set[int]:
    """Code points TOKEN_FONT can draw (others become □ instead of a missing-glyph warning)."""
    if not _FONT_CHARS:
        from matplotlib import font_manager
        from matplotlib.ft2font import FT2Font

        path = font_manager.findfont(font_manager.FontProperties(family=TOKEN_FONT))
        _FONT_CHARS.update(FT2Font(path).get_charmap())
    return _FONT_CHARS


def token_label(text: str) -> str:
    """A token's text made visible in one box: spaces ·, newlines ↵, tabs →, empty ∅, undrawable □."""
    label = str(text).replace(" ", "·").replace("\n", "↵").replace("\r", "␍").replace("\t", "→") or "∅"
    chars = _font_chars()
    label = "".join(ch if ord(ch) in chars else "□" for ch in label)
    return label if len(label) <= TOKEN_LABEL_CHARS else label[:TOKEN_LABEL_CHARS - 1] + "…"


def token_rows(tokens: list[dict], row_chars: int = TOKEN_ROW_CHARS) -> list[list[tuple[float, dict, str]]]:
    """Wrap token boxes into rows: [(x in characters, token, label), ...] per row; a newline token ends a row."""
    rows, row, x = [], [], 0.0
    for tok in tokens:
        label = token_label(tok.get("text", ""))
        w = len(label) + 1.0
        if row and x + w > row_chars:
            rows.append(row)
            row, x = [], 0.0
        row.append((x, tok, label))
        x += w
        if "\n" in str(tok.get("text", "")):
            rows.append(row)
            row, x = [], 0.0
    if row:
        rows.append(row)
    return rows


def _chat_template_tokens(an, views: dict, path: Path) -> Path:
    import json

    from matplotlib.patches import Patch, Rectangle

    plt = _plt()
    data = {m: json.loads(p.read_text()) for m, p in views.items()}
    wrapped = {m: token_rows((v.get("tokens") or [])[:TOKEN_MAX]) for m, v in data.items()}
    char_in = 0.085                                      # inches per character column
    row_in = 0.26
    heights = [0.6 + row_in * max(1, len(r)) for r in wrapped.values()]
    fig, axes = plt.subplots(len(data), 1, figsize=(0.4 + TOKEN_ROW_CHARS * char_in, sum(heights)), squeeze=False,
                             gridspec_kw={"height_ratios": heights})
    fontsize = char_in * 72 / 0.602 * 0.92               # DejaVu Sans Mono: advance 0.602 em
    for ax, (model, view) in zip(axes[:, 0], data.items()):
        rows = wrapped[model]
        tokens = view.get("tokens") or []
        for ri, row in enumerate(rows):
            y = -ri
            for x, tok, label in row:
                special = bool(tok.get("special"))
                ax.add_patch(Rectangle((x + 0.1, y - 0.4), len(label) + 0.8, 0.8,
                                       facecolor=TRAINED_COLOR if tok.get("trained") else MASKED_COLOR,
                                       edgecolor="black" if special else "#888888", lw=1.3 if special else 0.4))
                ax.text(x + 0.5 + len(label) / 2, y, label, ha="center", va="center", family=TOKEN_FONT,
                        fontsize=fontsize, fontweight="bold" if special else "normal", parse_math=False)
        ax.set_xlim(0, TOKEN_ROW_CHARS)
        ax.set_ylim(-len(rows) + 0.4, 0.6)
        ax.axis("off")
        n_tr = sum(1 for t in tokens if t.get("trained"))
        shown = min(len(tokens), TOKEN_MAX)
        more = f"; first {shown} of {len(tokens)} tokens shown" if len(tokens) > shown else ""
        ax.set_title(f"model {model} ({view.get('template_source', '?')} template; end-of-turn "
                     f"{view.get('end_of_turn', '?')}): {n_tr} of {len(tokens)} tokens in the loss{more}",
                     fontsize=9, loc="left")
    handles = [Patch(facecolor=TRAINED_COLOR, edgecolor="#888888", label="in the loss (trained)"),
               Patch(facecolor=MASKED_COLOR, edgecolor="#888888", label="masked (label −100)"),
               Patch(facecolor="white", edgecolor="black", lw=1.3, label="special token (bold, outlined)")]
    fig.suptitle(f"One training conversation as tokenized for training — experiment {an.experiment} "
                 "(· space, ↵ newline)", fontsize=10)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.legend(handles=handles, loc="lower center", ncol=3, frameon=False, bbox_to_anchor=(0.5, 0.0))
    return _save(fig, path)
