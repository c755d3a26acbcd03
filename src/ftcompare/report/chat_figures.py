"""Chat figures (only for experiments with generation tasks), drawn from `ChatData` (built by the report).

  chat_stop_rate.png        share of replies that end their turn, 95% Wilson CIs, the stop-rate target
  chat_reply_length.png     reply lengths per variant and setting (box + points), max_new_tokens
  chat_template_tokens.png  one training conversation's tokens: special / in the loss / masked
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from .figures import STYLE, VARIANT_HATCH, Bar, FigureData, Interval, _legend_below, _plt, _save, method_colors

STOP_TARGET_COLOR = "#d62728"


@dataclass(frozen=True)
class ChatData:
    tasks: tuple[tuple[str, str], ...]             # (task, setting name)
    stop: Mapping[tuple[Bar, str], tuple[Interval, int]]   # (bar, task) -> stop rate with CI, n
    lengths: Mapping[tuple[Bar, str], tuple[float, ...]]  # (bar, task) -> reply lengths by doc_id
    max_new_tokens: int | None
    stop_target: float
    template_views: Mapping[str, dict]             # model -> template_view.json contents


def write_chat_figures(data: FigureData, out: Path) -> dict[str, Path]:
    """The chat section's figures (data.chat must be set), in the style of figures.write_figures."""
    with _plt().rc_context(STYLE):
        return _write_chat_figures(data, out)


def _write_chat_figures(data: FigureData, out: Path) -> dict[str, Path]:
    made = {}
    if data.chat.stop:
        made["chat_stop_rate"] = _chat_stop_rate(data, out / "chat_stop_rate.png")
        made["chat_reply_length"] = _chat_reply_length(data, out / "chat_reply_length.png")
    if data.chat.template_views:
        made["chat_template_tokens"] = _chat_template_tokens(data, out / "chat_template_tokens.png")
    return made


def _chat_cells(data: FigureData, model: str) -> list[Bar]:
    return [c for c in data.bars if c.model == model]


def _chat_grid(data: FigureData, cell_width: float):
    """The figure of a per-model chat panel: one group of slots per setting, one slot per evaluated variant.
    -> (fig, [(ax, model, slot width, [(task, cell, x), ...])])."""
    plt = _plt()
    tasks = [t for t, _ in data.chat.tasks]
    n_cells = max(len(_chat_cells(data, m)) for m in data.models)
    fig, axes = plt.subplots(1, len(data.models), squeeze=False,
                             figsize=(1.5 + (0.5 + cell_width * n_cells) * len(tasks) * len(data.models), 3.8))
    panels = []
    for ax, model in zip(axes[0], data.models):
        cells = _chat_cells(data, model)
        width = 0.8 / max(1, len(cells))
        slots = [(task, cell, gi - 0.4 + width * (ci + 0.5)) for gi, task in enumerate(tasks)
                 for ci, cell in enumerate(cells)]
        panels.append((ax, model, width, slots))
    return fig, panels


def _missing(ax, x: float, y: float, cell: Bar) -> None:
    ax.text(x, y, f"{cell.label}: missing", rotation=90, ha="center", va="bottom", fontsize=7, color="red")


def _setting_axis(ax, chat: ChatData) -> None:
    ax.set_xticks(range(len(chat.tasks)), [f"setting {s}" for _, s in chat.tasks])
    ax.set_xlim(-0.6, len(chat.tasks) - 0.4)


def _chat_stop_rate(data: FigureData, path: Path) -> Path:
    """Per model a panel; per setting a group of bars (one per evaluated variant) with 95% Wilson CIs."""
    chat = data.chat
    colors = method_colors(data.methods)
    fig, panels = _chat_grid(data, 0.45)
    legend: dict = {}
    for ax, model, width, slots in panels:
        for task, cell, x in slots:
            r = chat.stop.get((cell, task))
            if r is None:
                _missing(ax, x, 2, cell)
                continue
            v, lo, hi = 100 * r[0].value, 100 * r[0].low, 100 * r[0].high
            b = ax.bar(x, v, width * 0.9, color=colors.get(cell.method, "#999999"),
                       hatch=VARIANT_HATCH.get(cell.variant, ""), edgecolor="white", lw=0.5)
            ax.errorbar(x, v, yerr=[[v - lo], [hi - v]], fmt="none", ecolor="black", elinewidth=1, capsize=3)
            ax.text(x, hi + 1, f"{v:.0f}", ha="center", va="bottom", fontsize=7)
            legend.setdefault(cell.label, b)
        h = ax.axhline(100 * chat.stop_target, color=STOP_TARGET_COLOR, ls=":", lw=1.2)
        legend.setdefault(f"target: {100 * chat.stop_target:.0f}% of prompts", h)
        ns = sorted({n for (bar, _), (_, n) in chat.stop.items() if bar.model == model and n})
        _setting_axis(ax, chat)
        ax.set_ylim(0, 112)
        ax.set_ylabel("replies that end their turn (%)")
        ax.set_title(f"model {model} (n = {', '.join(map(str, ns))} prompts)")
    fig.suptitle(f"Stop rate at end-of-turn — experiment {data.experiment}; error bars: 95% Wilson CI")
    _legend_below(fig, legend)
    return _save(fig, path)


def _chat_reply_length(data: FigureData, path: Path) -> Path:
    """Per model a panel; per setting a group of boxes (one per variant) with every reply as a point."""
    chat = data.chat
    colors = method_colors(data.methods)
    fig, panels = _chat_grid(data, 0.5)
    legend: dict = {}
    top = 0.0
    for ax, model, width, slots in panels:
        for task, cell, x in slots:
            values = list(chat.lengths.get((cell, task), ()))
            if not values:
                _missing(ax, x, 0, cell)
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
        mnt = chat.max_new_tokens
        if mnt is not None:
            h = ax.axhline(mnt, color=STOP_TARGET_COLOR, ls=":", lw=1.2)
            legend.setdefault(f"max_new_tokens = {mnt} (a reply here did not end its turn)", h)
            top = max(top, mnt)
        _setting_axis(ax, chat)
        ax.set_ylim(0, 1.08 * top if top > 0 else 1)
        ax.set_ylabel("reply length (tokens, end-of-turn excluded)")
        ax.set_title(f"model {model}")
    fig.suptitle(f"Reply lengths — experiment {data.experiment}; box: quartiles and median, whiskers 1.5 IQR, "
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


def _chat_template_tokens(fd: FigureData, path: Path) -> Path:
    from matplotlib.patches import Patch, Rectangle

    plt = _plt()
    data = dict(fd.chat.template_views)
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
    fig.suptitle(f"One training conversation as tokenized for training — experiment {fd.experiment} "
                 "(· space, ↵ newline)", fontsize=10)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.legend(handles=handles, loc="lower center", ncol=3, frameon=False, bbox_to_anchor=(0.5, 0.0))
    return _save(fig, path)
