"""Where a training step's time goes: torch.profiler over steps 4 and 5 of a 6-step run of the default experiment
(one method, CPU), op time summed by category (matmul, attention, loss, optimizer, other) and the 25 costliest ops.
  .venv/bin/python bench/profile_train.py lora [train.padding_free=false ...]
Outputs go to a temp folder."""
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from ftcompare import config
from ftcompare.environment import setup_environment
setup_environment(offline=True)
import torch, transformers
from transformers import TrainerCallback
method = sys.argv[1]; overrides = sys.argv[2:]
prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
class P(TrainerCallback):
    def on_step_begin(self, args, state, control, **kw):
        if state.global_step == 3: prof.__enter__()
    def on_step_end(self, args, state, control, **kw):
        if state.global_step == 5: prof.__exit__(None, None, None)
orig = transformers.Trainer.__init__
def init(self, *a, **k):
    k["callbacks"] = list(k.get("callbacks") or []) + [P()]
    orig(self, *a, **k)
transformers.Trainer.__init__ = init
import ftcompare.train as T
run = config.resolve_run("default", "135m", method, config.parse_overrides(["train.max_steps=6", "train.save_steps=6", "data.n_val=16", "train.warmup_steps=0", *overrides]))
with tempfile.TemporaryDirectory() as d:
    res = T.train(run, output_dir=d)
ev = prof.key_averages()
tot = {}
def cat(name):
    n = name.lower()
    if any(k in n for k in ("adam", "_foreach", "optimizer")): return "optimizer"
    if any(k in n for k in ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear")): return "matmul"
    if "scaled_dot_product" in n or "attention" in n: return "attention"
    if any(k in n for k in ("log_softmax", "nll_loss", "cross_entropy")): return "loss"
    return None
rows = sorted(ev, key=lambda e: -e.self_cpu_time_total)
total = sum(e.self_cpu_time_total for e in ev)
for e in rows:
    c = cat(e.key) or "other"
    tot[c] = tot.get(c, 0) + e.self_cpu_time_total
print(method, overrides, "self CPU total s", round(total / 1e6, 2), {k: round(v / 1e6, 2) for k, v in sorted(tot.items(), key=lambda x: -x[1])})
for e in rows[:25]:
    print(f"{e.key[:60]:60} {e.self_cpu_time_total/1e6:8.3f} s  calls {e.count}")
print("cost", json.dumps({k: res.summary["cost"][k] for k in ("tokens_per_second", "tokens_processed_per_second", "mfu")}))
