"""Evaluation speed: the stock `lm_eval` CLI vs `python -m ftcompare evaluate`, side by side, same scores.

For each variant (the untuned base model, then every merged variant of the experiment that exists), on the
experiment's own tasks, n-shot, limits, batch size and seeds:
  stock   one `lm_eval --model hf` CLI call per task (the CLI takes one --limit and one --num_fewshot per call),
          what a user of lm-eval runs: it indexes the built-in task YAMLs and loads the model on every call
  ftc     `python -m ftcompare evaluate --force` (one process; the model loaded once; lm-eval model ftc-hf)
Prints wall time per variant and the ratio, and every task's score from both. Outputs go to a temp folder
(nothing under evaluation_results/ is touched).
  .venv/bin/python bench/eval_bench.py [--experiment default] [--variants base lora ...] [--limit N]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from ftcompare import config, paths  # noqa: E402

METRICS = ("acc", "acc_norm", "exact_match", "gold_bpb")
CONTINUOUS = {"gold_bpb": 1e-5}  # a mean of log-likelihoods: equal up to float summation order (|d| <= this)


def same(key: str, a, b) -> bool:
    tol = CONTINUOUS.get(key.split(",")[0])
    return a == b if tol is None else (b is not None and abs(a - b) <= tol)


def same_task(sa: dict, sb: dict) -> bool:
    return sa.keys() == sb.keys() and all(same(k, sa[k], sb[k]) for k in sa)


def scores(results: dict, task: str) -> dict[str, float]:
    r = results["results"][task]
    return {k: v for k, v in r.items() if isinstance(v, (int, float)) and k.split(",")[0] in METRICS}


def run_stock(model_path: Path, exp: config.ExperimentConfig, tasks: list[str], limit: int | None, out: Path):
    ev = exp.evaluation
    total, res, per_task = 0.0, {}, {}
    for task in tasks:
        cmd = [str(ROOT / ".venv/bin/lm_eval"), "--model", "hf",
               "--model_args", f"pretrained={model_path},dtype={'float32'}",
               "--tasks", task, "--batch_size", str(ev.batch_size), "--output_path", str(out / task),
               "--log_samples", "--include_path", str(paths.ROOT / ev.include_path),
               "--seed", f"{ev.seed},{ev.seed},{ev.seed},{ev.seed}"]
        n_shot = ev.num_fewshot.get(task)
        if n_shot is not None:
            cmd += ["--num_fewshot", str(n_shot)]
        lim = limit or ev.limit.get(task)
        if lim:
            cmd += ["--limit", str(lim)]
        t = time.perf_counter()
        r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        per_task[task] = time.perf_counter() - t
        total += per_task[task]
        if r.returncode != 0:
            raise SystemExit(f"error: stock lm_eval failed on {task}:\n{r.stderr[-2000:]}")
        f = sorted((out / task).rglob("results_*.json"))[-1]
        res[task] = scores(json.loads(f.read_text()), task)
    return total, res, per_task


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--experiment", default="default")
    ap.add_argument("--model", default="135m")
    ap.add_argument("--variants", nargs="+", help="base and/or methods (merged); default: base + every trained one")
    ap.add_argument("--limit", type=int, help="first N documents of every task (default: the experiment's limits)")
    args = ap.parse_args()
    exp = config.load("experiments", args.experiment)
    tasks = list(exp.evaluation.tasks)
    variants = args.variants or ["base"] + [m for m in exp.methods
                                            if (paths.run_dir(args.experiment, args.model, m) / "merged" /
                                                "merge_manifest.json").is_file()]
    rows, times = [], []
    for v in variants:
        model_path = (paths.base_dir(args.model) if v == "base"
                      else paths.run_dir(args.experiment, args.model, v) / "merged")
        with tempfile.TemporaryDirectory() as tmp:
            stock_s, stock, stock_t = run_stock(model_path, exp, tasks, args.limit, Path(tmp) / "stock")
            # ftcompare writes to its fixed evaluation folder: evaluate into a copy of the project layout
            ftc_s, ftc, ftc_t = run_ftc_isolated(args.experiment, args.model, v, args.limit, Path(tmp) / "ftc")
        rows.append((v, stock_s, ftc_s, stock, ftc))
        times.append((v, stock_t, ftc_t))
        ok_v = all(same_task(stock[t], ftc[t]) for t in tasks)
        print(f"[bench] {v}: stock CLI {stock_s:.1f} s, ftcompare {ftc_s:.1f} s, ratio {ftc_s / stock_s:.2f}, "
              f"scores identical: {ok_v}", flush=True)

    import platform

    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor())
    print(f"\nevaluation, experiment {args.experiment}, model {args.model}, tasks {', '.join(tasks)}; "
          f"{cpu} x{os.cpu_count()} cores")
    print(f"{'variant':10} {'stock s':>8} {'ftc s':>8} {'ratio':>6}  scores (stock | ftcompare)")
    for v, a, b, sa, sb in rows:
        cells = []
        for t in tasks:
            for k in sa[t]:
                mark = "" if same(k, sa[t][k], sb[t].get(k)) else "  DIFFERENT"
                cells.append(f"{t.replace('ftc_', '')}/{k.split(',')[0]}{'/' + k.split(',')[1] if k.split(',')[1] != 'none' else ''}"
                             f" {sa[t][k]:.{6 if k.split(',')[0] in CONTINUOUS else 4}f} | {sb[t].get(k, float('nan')):.{6 if k.split(',')[0] in CONTINUOUS else 4}f}{mark}")
        print(f"{v:10} {a:8.1f} {b:8.1f} {b / a:6.2f}  " + "; ".join(cells))
    print("\nseconds per task: stock = its whole CLI call (start-up, task index, model load, run); ftcompare = the "
          "task inside one process (after one model load)")
    print(f"{'variant':10} " + " ".join(f"{t.replace('ftc_', '')[:14]:>22}" for t in tasks) + f" {'ftc load+start-up':>18}")
    for v, st, ft in times:
        print(f"{v:10} " + " ".join(f"{st[t]:9.1f} | {ft[t]:9.1f} ".rjust(22) for t in tasks)
              + f" {ft['_rest']:18.1f}")
    ok = all(same_task(sa[t], sb[t]) for _, _, _, sa, sb in rows for t in tasks)
    print("scores identical in every variant and task (gold_bpb: within 1e-5)" if ok else "SCORES DIFFER (see DIFFERENT above)")
    return 0 if ok else 1


def run_ftc_isolated(experiment: str, model: str, variant: str, limit: int | None, root: Path):
    """`ftcompare evaluate` in a temporary project root whose configs, tasks and models link to this one's,
    so its fixed output folder is a temporary one. -> (wall seconds, {task: scores})."""
    root.mkdir(parents=True)
    for name in ("configs", "lm-evaluation-harness", "models"):
        (root / name).symlink_to(paths.ROOT / name)
    (root / "evaluation_results").mkdir()
    cmd = [sys.executable, "-m", "ftcompare", "evaluate", "--experiment", experiment, "--model", model,
           "--method", variant, "--force"]
    if limit:
        cmd += ["--limit", str(limit)]
    env = {**os.environ, "FTCOMPARE_ROOT": str(root), "PYTHONPATH": str(ROOT / "src")}
    t = time.perf_counter()
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t
    if r.returncode != 0:
        raise SystemExit(f"error: ftcompare evaluate failed:\n{r.stderr[-2000:]}")
    res = json.loads(next((root / "evaluation_results").rglob("results.json")).read_text())
    per_task = dict(res["ftcompare"]["seconds_per_task"])
    per_task["_rest"] = wall - sum(per_task.values())
    return wall, {t: scores(res, t) for t in res["ftcompare"]["tasks"]}, per_task


if __name__ == "__main__":
    raise SystemExit(main())
