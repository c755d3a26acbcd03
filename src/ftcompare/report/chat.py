"""Chat: conversational behaviour from the generation tasks (replies to held-out prompts; per item whether
the reply ended its turn, its length, overlap with the reference) and the reference-reply likelihood task.
Read by field names from results and samples, whoever generated the replies."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from .. import paths
from .checks import Inputs
from .display import md_table, metric_display, pct
from .load import RunId, TaskResult, read_chat_samples

CHAT_STOP_TARGET = 0.95        # a fine-tuned chat model should end its turn on >= 95% of held-out prompts
CHAT_EXAMPLES = 5              # prompts shown side by side in the record
CHAT_CELL_CHARS = 160          # a side-by-side cell is cut after this many characters
NO_EOT_MARK = "⟨no end-of-turn⟩"
LOOP_NGRAM, LOOP_TIMES = 4, 3  # a decoding loop: a word 4-gram three or more times

CHAT_COLUMNS = ["experiment", "model", "evaluated", "method", "variant", "task", "setting", "n", "stopped",
                "stop_rate", "stop_ci95_low", "stop_ci95_high", "length_mean", "chrf", "bleu", "rougeL", "distinct_1",
                "distinct_2", "corpus_distinct_1", "corpus_distinct_2", "reply_bpb_task", "reply_bpb"]


def _num(v):
    return v if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def setting_name(inp: Inputs, task: str) -> str:
    """The generation setting a task runs (evaluation.generation.settings name), else its metadata's, else the task."""
    gen = getattr(inp.exp.evaluation, "generation", None)
    if gen is not None:
        names = dict(zip(gen.task_names(), gen.settings))
        if task in names:
            return names[task]
    ref = inp.ref_result(task)
    return str(((ref.config.get("metadata") or {}) if ref else {}).get("setting") or task)


def bpb_task(inp: Inputs) -> str | None:
    """The lm-eval task scoring held-out reference replies (reply_nll, reply_bytes), if any."""
    return next((t for t in inp.tasks if ("reply_nll", "none") in inp.reported(t)), None)


def reply_bits_per_byte(tr: TaskResult) -> float | None:
    """Bits per UTF-8 byte over all replies: mean nll (nats) / ln 2 / mean bytes."""
    nll, nbytes = tr.values.get(("reply_nll", "none")), tr.values.get(("reply_bytes", "none"))
    return nll / math.log(2) / nbytes if nll is not None and nbytes else None


def _generation_info(inp: Inputs, task: str) -> list[dict]:
    return [((ev.block.get("generation") or {}).get(task) or {}) for ev in inp.evals.values()]


def generation_settings(inp: Inputs, task: str) -> dict:
    """The generate() keywords of a setting: the experiment config's, else what the results say."""
    gen = getattr(inp.exp.evaluation, "generation", None)
    name = setting_name(inp, task)
    if gen is not None and name in gen.settings:
        return dict(gen.settings[name])
    for info in _generation_info(inp, task):
        if isinstance(info.get("settings"), dict):
            return dict(info["settings"])
    ref = inp.ref_result(task)
    kwargs = dict(ref.config.get("generation_kwargs") or {}) if ref else {}
    return {k: v for k, v in kwargs.items() if k not in ("until", "max_gen_toks", "max_new_tokens")}


def greedy_task(inp: Inputs) -> str | None:
    """The setting the stop-rate target and the side-by-side table use: the first without sampling."""
    tasks = inp.chat_tasks()
    return next((t for t in tasks if not generation_settings(inp, t).get("do_sample")), tasks[0] if tasks else None)


def max_new_tokens(inp: Inputs, task: str) -> int | None:
    gen = getattr(inp.exp.evaluation, "generation", None)
    if gen is not None:
        return gen.max_new_tokens
    for ev in inp.evals.values():
        info = (ev.block.get("generation") or {}).get(task) or {}
        for src in (info.get("settings") or {}, (ev.tasks[task].config if task in ev.tasks else {})
                    .get("generation_kwargs") or {}):
            for key in ("max_new_tokens", "max_gen_toks"):
                if isinstance(src.get(key), int):
                    return src[key]
    return None


def end_of_turn(inp: Inputs, task: str) -> str | None:
    return next((info["end_of_turn"] for info in _generation_info(inp, task) if info.get("end_of_turn")), None)


def stop_counts(tr: TaskResult) -> tuple[int, int]:
    """(replies that ended their turn, replies) of a generation task."""
    out = tr.samples.outcomes("stopped", "none")
    return int(round(math.fsum(out.values()))), len(out)


def meets_stop_target(k: int, n: int) -> bool:
    return n > 0 and 100 * k >= round(100 * CHAT_STOP_TARGET) * n


def chat_rows(inp: Inputs) -> tuple[dict, ...]:
    """One row per (model, evaluated variant, generation setting); missing cells keep n empty."""
    from ..stats import wilson_ci

    bt = bpb_task(inp)
    rows = []
    for cell in inp.cells:
        ev = inp.evals.get(cell)
        btr = inp.task_result(cell, bt) if bt else None
        for task in inp.chat_tasks():
            row = {"experiment": inp.experiment, "model": cell.model, "evaluated": cell.label, "run": cell,
                   "method": cell.method, "variant": cell.variant, "task": task, "setting": setting_name(inp, task),
                   "reply_bpb_task": bt, "reply_bpb": reply_bits_per_byte(btr) if btr else None}
            tr = inp.task_result(cell, task)
            if tr is not None and ("stopped", "none") in tr.values:
                k, n = stop_counts(tr)
                lo, hi = wilson_ci(k, n)
                info = (ev.block.get("generation") or {}).get(task) or {}
                row.update({"n": n, "stopped": k, "stop_rate": tr.values[("stopped", "none")],
                            "stop_ci95_low": round(lo, 6), "stop_ci95_high": round(hi, 6),
                            "length_mean": tr.values.get(("length", "none")),
                            **{m: tr.values.get((m, "none")) for m in ("chrf", "bleu", "rougeL", "distinct_1",
                                                                       "distinct_2")},
                            "corpus_distinct_1": _num(info.get("corpus_distinct_1")),
                            "corpus_distinct_2": _num(info.get("corpus_distinct_2"))})
            rows.append(row)
    return tuple(rows)


def chat_markdown(inp: Inputs, rows, model: str) -> str:
    bt = bpb_task(inp)
    out, seen = [], set()

    def v(x, metric):
        return "" if x is None else metric_display(metric).value(x)

    for r in rows:
        if r["model"] != model:
            continue
        first = r["evaluated"] not in seen
        seen.add(r["evaluated"])
        bpb = ("missing" if r["reply_bpb"] is None else f"{r['reply_bpb']:.3f}") if first else ""
        if r.get("n") is None:
            out.append([r["evaluated"], r["setting"], "missing"] + [""] * 9 + ([bpb] if bt else []))
            continue
        out.append([r["evaluated"], r["setting"], r["n"],
                    f"{pct(r['stop_rate'])} [{pct(r['stop_ci95_low'])}, {pct(r['stop_ci95_high'])}]",
                    v(r["length_mean"], "length"), v(r["chrf"], "chrf"), v(r["bleu"], "bleu"),
                    v(r["rougeL"], "rougeL"), v(r["distinct_1"], "distinct_1"), v(r["distinct_2"], "distinct_2"),
                    v(r["corpus_distinct_1"], "distinct_1"), v(r["corpus_distinct_2"], "distinct_2")]
                   + ([bpb] if bt else []))
    header = ["evaluated", "setting", "n", "stop rate % [95% CI]", "mean length, tokens", "chrF", "BLEU", "ROUGE-L",
              "distinct-1 %", "distinct-2 %", "corpus distinct-1 %", "corpus distinct-2 %"]
    header += [f"reply bits/byte ({bt}, lower is better)"] if bt else []
    return md_table(header, out, "ll" + "r" * (len(header) - 2))


def is_loop(reply: str, n: int = LOOP_NGRAM, times: int = LOOP_TIMES) -> bool:
    """A decoding loop: some word n-gram occurs `times` times or more in the reply."""
    words = reply.lower().split()
    counts: dict[tuple, int] = {}
    for i in range(len(words) - n + 1):
        g = tuple(words[i:i + n])
        counts[g] = counts.get(g, 0) + 1
        if counts[g] >= times:
            return True
    return False


@dataclass(frozen=True)
class StopTarget:
    """One evaluated model against the stop-rate target (greedy setting)."""
    run: RunId
    stopped: int | None       # None: missing
    n: int | None
    ci_low: float | None
    ci_high: float | None
    open: int                 # replies that ran to the token budget
    loops: int                # ... of which repeat a word n-gram (decoding loops)

    @property
    def rate(self) -> float:
        return self.stopped / self.n

    @property
    def meets(self) -> bool:
        return meets_stop_target(self.stopped, self.n)


def stop_targets(inp: Inputs) -> list[StopTarget]:
    from ..stats import wilson_ci

    gt = greedy_task(inp)
    out = []
    for cell in inp.cells:
        tr = inp.task_result(cell, gt)
        if tr is None or ("stopped", "none") not in tr.values:
            out.append(StopTarget(cell, None, None, None, None, 0, 0))
            continue
        k, n = stop_counts(tr)
        lo, hi = wilson_ci(k, n)
        open_ = [s["reply"] for s in read_chat_samples(tr.samples.path).values() if s["stopped"] == 0]
        out.append(StopTarget(cell, k, n, lo, hi, len(open_), sum(is_loop(r) for r in open_)))
    return out


def chat_cell(text, limit: int = CHAT_CELL_CHARS) -> str:
    """One markdown table cell: newlines shown as ↵, cut after `limit` characters (…), pipes and markup escaped."""
    if text is None:
        return ""
    flat = str(text).replace("\r\n", "\n").replace("\n", "↵")
    if len(flat) > limit:
        flat = flat[:limit - 1].rstrip() + "…"
    for a, b in (("\\", "\\\\"), ("|", "\\|"), ("<", "&lt;"), ("*", "\\*"), ("`", "\\`")):
        flat = flat.replace(a, b)
    return flat


def _last_user(messages: list) -> str:
    users = [m for m in messages if isinstance(m, dict) and m.get("role") == "user"]
    if not users:
        return ""
    return ("…" if len(messages) > 1 else "") + str(users[-1].get("content", ""))


def chat_examples_markdown(inp: Inputs, model: str) -> str:
    gt = greedy_task(inp)
    cells = [c for c in inp.cells if c.model == model]
    texts = {}
    for c in cells:
        tr = inp.task_result(c, gt)
        if tr is not None:
            texts[c] = read_chat_samples(tr.samples.path)
    if not texts:
        return "*(no replies: the evaluations are missing)*"
    first = texts.get(RunId(model, "base")) or next(iter(texts.values()))
    rows = []
    for d in sorted(first)[:CHAT_EXAMPLES]:
        doc = first[d]
        row = [d, chat_cell(_last_user(doc["messages"])), chat_cell(doc["reference"])]
        for c in cells:
            t = texts.get(c, {}).get(d)
            if t is None:
                row.append("missing")
                continue
            reply = chat_cell(t["reply"]) if t["reply"] else "*(empty)*"
            row.append(reply + (f" {NO_EOT_MARK}" if t["stopped"] == 0 else ""))
        rows.append(row)
    return md_table(["doc", "last user message", "reference reply", *[c.label for c in cells]], rows,
                    "r" + "l" * (2 + len(cells)))


def template_view_paths(inp: Inputs) -> dict[str, Path]:
    """model -> models/<exp>/<model>/<first method>/template_view.json (the train stage's token/mask view)."""
    out = {}
    for model in inp.models():
        if inp.exp.methods:
            p = paths.run_dir(inp.experiment, model, inp.exp.methods[0], inp.seeds[0]) / "template_view.json"
            if p.is_file():
                out[model] = p
    return out
