"""Training cost per method, side by side (`make bench`): tokens/s (real and computed, padding included),
samples/s, MFU and peak memory of the training steps, as train_summary.json's "cost" block records them
(ftcompare.cost: the bench only prints them).

Each method trains for a few steps in its own process into a temp folder (nothing under models/ is touched), with
one checkpoint save (the last step) and one evaluation, timed apart. Numbers are for this machine only.
  .venv/bin/python bench/bench.py [--model 135m] [--steps 6] [--methods full lora qlora]
  .venv/bin/python bench/bench.py --device cuda --arch 1b    # random-initialised shape of bench/arch.yaml
--arch builds a random-initialised checkpoint of that architecture locally (bench/arch.yaml; the embedded 135m
tokenizer), in bf16 with bf16 training on cuda: cost only, no network, no licence.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
ARCHS = Path(__file__).with_name("arch.yaml")

CHILD = """
import json, sys
from ftcompare import config
from ftcompare.environment import setup_environment
setup_environment(offline=True)
from ftcompare.train import train
run = config.resolve_run("default", sys.argv[1], sys.argv[2], config.parse_overrides(sys.argv[4:]))
res = train(run, output_dir=sys.argv[3])
print("BENCH " + json.dumps(res.summary))
"""


def build_arch(name: str, out: Path, device: str) -> Path:
    """A random-initialised checkpoint of bench/arch.yaml's `name` (+ the embedded 135m tokenizer) in `out`."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    shapes = yaml.safe_load(ARCHS.read_text())
    if name not in shapes:
        raise SystemExit(f"error: --arch {name}: not in {ARCHS.relative_to(ROOT)} (have: {', '.join(shapes)})")
    tok_dir = ROOT / "models" / "base" / "135m"
    if not (tok_dir / "tokenizer.json").is_file():
        raise SystemExit(f"error: {tok_dir.relative_to(ROOT)} is not prepared (its tokenizer is used); run make setup")
    shape = dict(shapes[name])
    tok = AutoTokenizer.from_pretrained(tok_dir)
    cfg = AutoConfig.for_model(shape.pop("model_type"), **shape, bos_token_id=tok.bos_token_id,
                               eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="135m", help="a configured model (configs/models/); --arch replaces it")
    ap.add_argument("--arch", help="a random-initialised shape of bench/arch.yaml, e.g. 1b")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--methods", nargs="+", default=["full", "lora", "qlora"])
    ap.add_argument("--batch", type=int, default=8, help="per-device training batch")
    ap.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                    help="training overrides for every method, e.g. train.padding_free=true train.optim=adamw_torch_fused")
    args = ap.parse_args()
    from ftcompare.cost import WARMUP_STEPS

    if args.steps <= WARMUP_STEPS:
        print(f"error: --steps must exceed the {WARMUP_STEPS} warm-up steps left out of the rates", file=sys.stderr)
        return 2
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if args.device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    else:
        import torch

        if not torch.cuda.is_available():
            print("error: --device cuda: torch sees no CUDA device here", file=sys.stderr)
            return 2
    work = Path(tempfile.mkdtemp(prefix="ftcompare-bench-"))
    try:
        overrides = [f"train.max_steps={args.steps}", f"train.save_steps={args.steps}", "data.n_val=16",
                     "train.warmup_steps=0", f"train.per_device_train_batch_size={args.batch}", *args.set]
        model = args.model
        if args.arch:
            path = build_arch(args.arch, work / f"arch-{args.arch}", args.device)
            model = "135m"  # its settings (LoRA targets) with the random checkpoint in place of the weights
            overrides += ["model.source=local", f"model.path={path}", f"model.alias=random-{args.arch}",
                          f"model.dtype={'bfloat16' if args.device == 'cuda' else 'float32'}"]
        if args.device == "cuda":
            overrides += ["train.bf16=true"]
        rows = []
        for method in args.methods:
            out = work / method
            r = subprocess.run([sys.executable, "-c", CHILD, model, method, str(out), *overrides], cwd=ROOT,
                               capture_output=True, text=True, env=env)
            line = next((x for x in r.stdout.splitlines() if x.startswith("BENCH ")), None)
            if r.returncode != 0 or line is None:
                print(f"error: {method} failed:\n{r.stderr[-1500:]}", file=sys.stderr)
                return 1
            rows.append((method, json.loads(line[6:])))
            shutil.rmtree(out, ignore_errors=True)  # weights and checkpoints: not needed any more
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(table(rows, args))
    return 0


def table(rows, args) -> str:
    s0 = rows[0][1]
    hw, peak = s0["manifest"]["hardware"], s0["manifest"].get("matmul_peak") or {}
    what = f"random-initialised {args.arch} (bench/arch.yaml)" if args.arch else f"model {args.model}"
    where = hw["gpu"] or f"{hw['cpu']} x{hw['cores']} cores"
    lines = [f"\n{what}, {args.steps} steps x batch {args.batch}{', ' + ' '.join(args.set) if args.set else ''}, first {s0['cost']['warmup_steps_excluded_per_process']}"
             f" left out of the rates; {where}; MFU against each process's own matmul peak "
             f"({peak.get('dtype')} {peak.get('n')}x{peak.get('n')}, {peak.get('threads')} threads); "
             f"memory: {s0['cost']['memory_kind']}",
             f"{'method':8} {'s/step':>7} {'tok/s':>9} {'computed':>9} {'samples/s':>9} {'MFU %':>7} {'peak TF/s':>9} "
             f"{'peak MB':>9} {'save s':>7} {'eval s':>7} {'trainable':>13}  FLOPs/token"]
    for method, s in rows:
        c = s["cost"]
        sps = c["steady_train_s"] / c["steady_steps"] if c["steady_steps"] else float("nan")
        mfu = 100 * c["mfu"] if c["mfu"] is not None else float("nan")
        formula = "6N" if c["n_frozen_linear"] == 0 else "4N_frozen+6N_trainable"
        lines.append(f"{method:8} {sps:7.3f} {c['tokens_per_second']:9.1f} {c['tokens_processed_per_second']:9.1f} "
                     f"{c['samples_per_second']:9.2f} {mfu:7.2f} {c['matmul_peak_tflops'] or float('nan'):9.4f} {c['peak_train_memory_mb']:9.0f} "
                     f"{c['save_s'] + c['final_save_s']:7.2f} {c['eval_s']:7.2f} {s['trainable_params']:13,d}  "
                     f"{c['flops_per_token']:.3g} ({formula})")
    lines.append("tok/s: real tokens; computed: positions the model ran, padding included (MFU uses these); "
                 "save s: checkpoint + final weights")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
