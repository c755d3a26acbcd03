"""The figures' data, taken from the analysis (figures.py and chat_figures.py draw only what they get here)."""
from __future__ import annotations

import json

from .analysis import Analysis
from .chat import CHAT_STOP_TARGET, max_new_tokens, setting_name, template_view_paths
from .chat_figures import ChatData
from .display import fmt_p, metric_display, metric_name
from .figures import Bar, Delta, FigureData, Interval, ScorePanel, TaskScores, TrainRun
from .tables import peak_memory_kinds


def figure_data(an: Analysis) -> FigureData:
    inp = an.inputs
    bars = {c: Bar(c.model, c.method, c.variant, c.label, c.seed) for c in inp.cells}
    tasks = []
    for task in inp.tasks:
        reported = inp.reported(task)
        if not reported:
            continue
        ref = inp.ref_result(task)
        panels = []
        for metric, filt in reported:
            scores = {bars[s.run]: Interval(s.value, s.ci_low, s.ci_high) for s in an.scores.get(task, ())
                      if (s.metric, s.filter) == (metric, filt)}
            panels.append(ScorePanel(metric_name(metric, filt), metric_display(metric), scores))
        chance = ref.samples.chance() if ref.config.get("output_type") == "multiple_choice" else None
        tasks.append(TaskScores(task, ref.n, ref.n_shot, chance, tuple(panels)))
    deltas = tuple(Delta(c.task, metric_name(c.metric, c.filter), metric_display(c.metric), c.model, c.second.method,
                         c.second.label, c.paired.n, c.paired.delta, c.paired.ci_low, c.paired.ci_high, c.significant,
                         f"p={fmt_p(c.paired.p_value)}  Holm {fmt_p(c.p_holm)}", c.paired.ci_method)
                   for c in an.comparisons if c.kind == "vs base")
    runs = {}
    for (model, method, seed), run in inp.training.items():
        logged = [r for r in run.log if r.get("loss") is not None]
        s = run.summary
        c = s.get("cost") or {}  # training steps only (ftcompare.cost); runs trained before it: no point
        runs[(model, method, seed)] = TrainRun(model, method, c.get("peak_train_memory_mb"), c.get("train_s"),
                                         (run.config or {}).get("method", {}).get("learning_rate"),
                                         tuple(r["step"] for r in logged), tuple(r["loss"] for r in logged),
                                         s.get("val_loss"))
    return FigureData(inp.experiment, tuple(inp.exp.methods), tuple(inp.models()), tuple(bars.values()),
                      tuple(tasks), deltas, runs, tuple(peak_memory_kinds(inp)), _chat_data(an, bars))


def _chat_data(an: Analysis, bars) -> ChatData | None:
    inp = an.inputs
    chat_tasks = inp.chat_tasks()
    if not chat_tasks:
        return None
    stop = {(bars[r["run"]], r["task"]): (Interval(r["stop_rate"], r["stop_ci95_low"], r["stop_ci95_high"]), r["n"])
            for r in an.chat_rows if r.get("n") is not None}
    lengths = {}
    for cell in inp.cells:
        for task in chat_tasks:
            tr = inp.task_result(cell, task)
            if tr is not None:
                lengths[(bars[cell], task)] = tuple(v for _, v in sorted(tr.samples.outcomes("length", "none").items()))
    views = {m: json.loads(p.read_text()) for m, p in template_view_paths(inp).items()}
    return ChatData(tuple((t, setting_name(inp, t)) for t in chat_tasks), stop, lengths,
                    max_new_tokens(inp, chat_tasks[0]), CHAT_STOP_TARGET, views)
