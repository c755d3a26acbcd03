"""How numbers are shown: metric display (percent or raw unit), p-values, markdown tables and CSV cells."""
from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass


# Percent metrics (0/1 accuracies and other fractions) x 100 as % and their deltas as percentage points; the
# others raw, in their own unit. A metric not listed here is shown as a percentage.
@dataclass(frozen=True)
class Display:
    percent: bool
    unit: str         # table headers and axis labels
    words: str        # after a number or a delta in sentences ("points", "tokens", "bits/byte")
    digits: int = 1

    @property
    def scale(self) -> int:
        return 100 if self.percent else 1

    def value(self, x: float, extra: int = 0) -> str:
        return f"{self.scale * x:.{self.digits + extra}f}"

    def delta(self, x: float) -> str:
        v = self.scale * x
        if round(v, self.digits) == 0:
            v = 0.0
        return f"{v:+.{self.digits}f}"

    def with_unit(self, x: float) -> str:
        """A score in a sentence: '51.0%', '23.4 tokens', '1.234 nats', '12.3' (0-100 scales)."""
        return self.value(x) + ("%" if self.percent else f" {self.words}" if self.words != "points" else "")

    @property
    def axis_unit(self) -> str:
        """The unit of a delta axis in words."""
        return "percentage points" if self.percent else self.unit if self.unit != "0–100" else \
            "points on a 0–100 scale"


PERCENT = Display(True, "%", "points")
RAW_METRICS: dict[str, Display] = {
    "length": Display(False, "tokens", "tokens"),
    "chrf": Display(False, "0–100", "points"),
    "bleu": Display(False, "0–100", "points"),
    "rougeL": Display(False, "0–100", "points"),
    "reply_nll": Display(False, "nats", "nats", 3),
    # multiple choice, re-derived from the per-choice log-likelihoods (report.mc); gold_prob is a percentage
    "gold_logprob": Display(False, "nats", "nats", 3),
    "margin_norm": Display(False, "nats/char", "nats per character", 4),
    # GSM8K gold-solution likelihood (lm-evaluation-harness/tasks/ftc_gsm8k_bpb)
    "gold_bpb": Display(False, "bits/byte", "bits per byte", 4),
    "gold_nll": Display(False, "nats", "nats", 3),
    "gold_bytes": Display(False, "bytes", "bytes", 1),
}
# Direction when results.json does not say: neutral (None) for lengths, lower for nats, else higher.
DEFAULT_HIGHER_IS_BETTER = {"length": None, "reply_nll": False, "gold_bpb": False, "gold_nll": False,
                            "gold_bytes": None}
# Names in sentences and section headers for the metrics whose key says little (others: the key itself).
METRIC_LABELS = {
    "gold_logprob": "gold log-prob (log-softmax of the choices' log-likelihoods, at the gold choice)",
    "gold_prob": "gold probability (softmax over the choices, at the gold choice)",
    "margin_norm": "length-normalized margin (gold − best other choice, log-likelihood per character, as acc_norm)",
    "gold_bpb": "gold-solution bits per byte",
    "gold_nll": "gold-solution negative log-likelihood",
}
SHORT_LABELS = {"gold_logprob": "gold log-prob", "gold_prob": "gold probability",
                "margin_norm": "length-normalized margin", "gold_bpb": "gold-solution bits/byte",
                "gold_nll": "gold-solution NLL"}


def metric_label(metric: str, short: bool = True) -> str:
    return (SHORT_LABELS if short else METRIC_LABELS).get(metric, metric)


def metric_display(metric: str) -> Display:
    return RAW_METRICS.get(metric, PERCENT)


def metric_name(metric: str, filt: str) -> str:
    return metric if filt == "none" else f"{metric} ({filt})"


def pct(x: float, digits: int = 1) -> str:
    return f"{100 * x:.{digits}f}"


def fmt_p(p: float) -> str:
    if p != p:
        return "n/a"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def p_is(p: float) -> str:
    """'=0.012', '<0.001' or ' n/a': what follows a 'p' in prose."""
    text = fmt_p(p)
    return text if text.startswith("<") else f" {text}" if text == "n/a" else f"={text}"


def fmt_int(v) -> str:
    return "" if v is None else f"{int(v):,}"


def fmt_float(v, digits: int) -> str:
    return "" if v is None else f"{float(v):,.{digits}f}"


def md_table(header: list[str], rows: list[list], align: str | None = None) -> str:
    align = align or "l" + "r" * (len(header) - 1)
    sep = ["---:" if a == "r" else ":---" for a in align]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(sep) + " |"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _csv_cell(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, (dict, list)):
        return json.dumps(v, sort_keys=True)
    return str(v)


def to_csv(rows: list[dict], columns: list[str]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    for r in rows:
        w.writerow([_csv_cell(r.get(c)) for c in columns])
    return buf.getvalue()
