"""Training throughput and memory per method on the embedded model: prints a table (`make bench`).

Each method trains for a few steps in its own process (so peak RSS is per method) into a temp folder;
nothing under models/ is touched. Numbers are for this machine: compare only runs on the same hardware.
  .venv/bin/python bench/bench.py [--model 135m] [--steps 6] [--methods full lora qlora]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = """
import json, sys, time
from ftcompare import config
from ftcompare.environment import setup_environment
setup_environment(offline=True)
from ftcompare.train import train
run = config.resolve_run("default", sys.argv[1], sys.argv[2], config.parse_overrides(sys.argv[4:]))
res = train(run, output_dir=sys.argv[3])
print("BENCH " + json.dumps(res.summary))
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="135m")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--methods", nargs="+", default=["full", "lora", "qlora"])
    args = ap.parse_args()
    rows = []
    for method in args.methods:
        with tempfile.TemporaryDirectory() as tmp:
            overrides = [f"train.max_steps={args.steps}", "train.save_steps=1000", "data.n_val=16", "train.warmup_steps=0"]
            r = subprocess.run([sys.executable, "-c", CHILD, args.model, method, tmp, *overrides], cwd=ROOT,
                               capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
            line = next((x for x in r.stdout.splitlines() if x.startswith("BENCH ")), None)
            if r.returncode != 0 or line is None:
                print(f"error: {method} failed:\n{r.stderr[-1500:]}", file=sys.stderr)
                return 1
            s = json.loads(line[6:])
            logs = [json.loads(x) for x in (Path(tmp) / "train_log.jsonl").read_text().splitlines()]
            steady = logs[1:] or logs  # the first step includes warm-up
            sec_per_step = (steady[-1]["elapsed_s"] - logs[0]["elapsed_s"]) / max(len(steady) - (1 if logs[1:] else 0), 1)
            rows.append((method, s["global_step"], sec_per_step, s["tokens_per_second"], s["peak_memory_mb"],
                         s["trainable_params"], s["peak_memory_kind"]))
    hw = json.loads(line[6:])["manifest"]["hardware"]
    print(f"\nmodel {args.model}, {args.steps} steps, batch 8, {hw['cpu']} x{hw['cores']} cores, gpu={hw['gpu']}")
    print(f"{'method':8} {'steps':>5} {'s/step':>8} {'tok/s':>8} {'peak MB':>9} {'trainable':>12}  memory kind")
    for m, n, sps, tps, mem, tr, kind in rows:
        print(f"{m:8} {n:5d} {sps:8.2f} {tps:8.1f} {mem:9.0f} {tr:12,d}  {kind}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
