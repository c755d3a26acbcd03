"""Training cost accounting: what the optimizer steps alone cost, summed over every process of a run.

A run's processes (the first, and each one resumed after a kill) append to one ledger, <run>/cost_log.jsonl:
  {"kind": "session", "session": k, "resumed_from": ...}    a process starts training
  {"kind": "step", "session": k, "step": n, "seconds": ..., "tokens": ..., "tokens_processed": ..., "samples": ...,
   "memory_mb": ..., "warmup": bool}                        one optimizer step, on_step_begin -> on_step_end
  {"kind": "save", "session": k, "step": n, "seconds": ...} one checkpoint save (Trainer._save_checkpoint)
A step's time covers forward, backward, clipping, optimizer and scheduler; not fetching its batches (the Trainer
fetches them before on_step_begin), logging, checkpoint saves or evaluation, which are timed apart.
`summarize` turns the ledger into the summary's "cost" block: per process and summed over processes. Steps that
a resumed process re-did after a kill count twice there (that compute was spent twice); the log of the model's
trajectory (train_log.jsonl) has each step once.

Rates are steady state: the first WARMUP_STEPS optimizer steps of every process (allocator growth, lazy
initialisation, kernel selection) are left out of tokens/s and samples/s; they still count in the totals.

MFU = flops_per_token x processed tokens/s / the matmul peak measured at start-up (`matmul_peak`, stored in the
run manifest). flops_per_token counts the weight matmuls of every linear layer (LM head included; the input
embedding is a lookup; attention's score/value products, which grow with sequence length, are left out):
  trainable weights, N_trainable: 6 per weight (forward 2, input gradient 2, weight gradient 2): full = 6N
  frozen weights, N_frozen (LoRA/QLoRA/DoRA's base, bf16 or NF4): 4 per weight (forward 2, input gradient 2)
so LoRA-family runs use 4 N_frozen + 6 N_trainable. Activation checkpointing's recomputed forward is not counted
(model FLOPs, not hardware FLOPs), so MFU is lower than the hardware's utilisation when it is on.
"""
from __future__ import annotations

import functools
import json
import math
import os
import threading
import time
from pathlib import Path

WARMUP_STEPS = 2          # optimizer steps per process left out of the steady-state rates
LEDGER = "cost_log.jsonl"
RSS_SAMPLE_S = 0.02       # CPU: RSS sampled every 20 ms while a step runs (plus once at each step's end)
FLOP_FORMULA = ("4 N_frozen + 6 N_trainable FLOPs per token; N = weights of the linear layers (LM head included, "
                "input embedding and attention products excluded)")


def rss_mb() -> float:
    """The process's current resident memory."""
    try:
        import psutil

        return psutil.Process().memory_info().rss / 2**20
    except ImportError:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def matmul_peak(seconds: float = 2.0) -> dict:
    """The device's matmul throughput, measured: a square matmul (fp32 on CPU, bf16 on GPU) timed a few times,
    best of them (a few seconds at most). The denominator of MFU. Measured once per process and thread count
    (a search calls train() once per trial)."""
    import torch

    return dict(_matmul_peak(seconds, torch.cuda.is_available(), torch.get_num_threads()))


@functools.lru_cache(maxsize=None)
def _matmul_peak(seconds: float, cuda: bool, threads: int) -> dict:
    import torch

    n, dtype = (8192, torch.bfloat16) if cuda else (1024, torch.float32)
    a = torch.randn(n, n, dtype=dtype, device="cuda" if cuda else "cpu")
    b = torch.randn(n, n, dtype=dtype, device=a.device)
    best, spent, reps = math.inf, 0.0, 0
    while reps < 3 or (spent < seconds and reps < 10):
        if cuda:
            torch.cuda.synchronize()
        t = time.perf_counter()
        a @ b
        if cuda:
            torch.cuda.synchronize()
        dt = time.perf_counter() - t
        spent += dt
        reps += 1
        if reps > 1:  # the first is warm-up
            best = min(best, dt)
    return {"device": "cuda" if cuda else "cpu", "dtype": str(dtype).removeprefix("torch."), "n": n,
            "threads": torch.get_num_threads(), "reps": reps, "tflops": round(2 * n**3 / best / 1e12, 4)}


def linear_weights(model) -> tuple[int, int]:
    """(N_frozen, N_trainable): weights of the leaf linear layers (nn.Linear, bitsandbytes 4-bit, LoRA's A/B),
    by their logical shape in_features x out_features."""
    frozen = trainable = 0
    for m in model.modules():
        w = getattr(m, "weight", None)
        if next(m.children(), None) is not None or w is None or not hasattr(m, "in_features"):
            continue
        n = int(m.in_features) * int(m.out_features)
        if w.requires_grad:
            trainable += n
        else:
            frozen += n
    return frozen, trainable


def flops_per_token(n_frozen: int, n_trainable: int) -> int:
    return 4 * n_frozen + 6 * n_trainable


class MemoryProbe:
    """Peak memory inside training steps only. CUDA: peak stats reset at each step's start, read at its end.
    CPU: resident memory sampled by a light thread while a step runs, and at its end."""

    def __init__(self):
        import torch

        self.cuda = torch.cuda.is_available()
        self.kind = "cuda_max_allocated_in_steps" if self.cuda else "cpu_rss_sampled_in_steps"
        self._peak = 0.0
        self._active = threading.Event()
        self._closed = False
        if not self.cuda:
            threading.Thread(target=self._sample, daemon=True).start()

    def _sample(self):
        while True:
            self._active.wait()
            if self._closed:
                return
            self._peak = max(self._peak, rss_mb())
            time.sleep(RSS_SAMPLE_S)

    def begin(self):
        if self.cuda:
            import torch

            torch.cuda.reset_peak_memory_stats()
        self._peak = 0.0
        self._active.set()

    def close(self):
        """Training is over: the sampling thread ends."""
        self._closed = True
        self._active.set()

    def end(self) -> float:
        self._active.clear()
        if self.cuda:
            import torch

            return torch.cuda.max_memory_allocated() / 2**20
        return max(self._peak, rss_mb())


class ValTokenLoss:
    """The mean token loss of evaluation forwards (model not training): each batch's mean loss weighted by its
    count of predicted tokens, so exact whatever the batch sizes (Trainer's eval_loss weights batches by
    examples)."""

    def __init__(self, model):
        self.loss_sum, self.tokens = 0.0, 0
        model.register_forward_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs, output):
        labels = kwargs.get("labels")
        loss = getattr(output, "loss", None)
        if module.training or labels is None or loss is None:
            return
        n = int((labels[..., 1:] != -100).sum())
        self.loss_sum += float(loss.detach()) * n
        self.tokens += n

    def mean(self) -> float | None:
        """Over every process of a distributed launch (a collective: call it on all of them)."""
        import torch
        import torch.distributed as dist

        loss_sum, tokens = self.loss_sum, self.tokens
        if dist.is_available() and dist.is_initialized():
            t = torch.tensor([loss_sum, float(tokens)], dtype=torch.float64,
                             device="cuda" if dist.get_backend() == "nccl" else "cpu")
            dist.all_reduce(t)
            loss_sum, tokens = float(t[0]), int(t[1])
        return loss_sum / tokens if tokens else None


def start_session(out: Path, resume: str | None) -> int:
    """A process starts training: a fresh run empties the ledger; a resumed one appends. Returns its index."""
    path = out / LEDGER
    if resume is None:
        path.unlink(missing_ok=True)
    k = sum(1 for r in read_ledger(path) if r["kind"] == "session")
    _append(path, {"kind": "session", "session": k, "resumed_from": Path(resume).name if resume else None})
    return k


def read_ledger(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _append(path: Path, rec: dict) -> None:
    with open(path, "a") as f:  # one line per event: a killed process leaves every finished step behind
        f.write(json.dumps(rec) + "\n")


def cost_meter(out: Path, session: int, counter, world_size: int, main: bool):
    """A TrainerCallback timing each optimizer step (see the module docstring); `wrap_saves(trainer)` times the
    checkpoint saves. counter: train._PositionCounter (positions computed, examples)."""
    from transformers import TrainerCallback

    path = out / LEDGER

    class CostMeter(TrainerCallback):
        def __init__(self):
            self.memory = MemoryProbe()
            self.steps_here = 0

        def on_step_begin(self, args, state, control, **kw):
            self.memory.begin()
            self.begin = (time.perf_counter(), state.num_input_tokens_seen, counter.total, counter.samples)

        def on_step_end(self, args, state, control, **kw):
            if self.memory.cuda:
                import torch

                torch.cuda.synchronize()
            t, tokens, processed, samples = self.begin
            rec = {"kind": "step", "session": session, "step": state.global_step,
                   "seconds": round(time.perf_counter() - t, 6), "tokens": state.num_input_tokens_seen - tokens,
                   # per process: x world size (the processes of a launch get batches of the same shape)
                   "tokens_processed": (counter.total - processed) * world_size,
                   "samples": (counter.samples - samples) * world_size,
                   "memory_mb": round(self.memory.end(), 1), "warmup": self.steps_here < WARMUP_STEPS}
            self.steps_here += 1
            if main:
                _append(path, rec)

        def on_train_end(self, args, state, control, **kw):
            self.memory.close()

        def wrap_saves(self, trainer):
            save = trainer._save_checkpoint

            def timed(*a, **kw):
                t = time.perf_counter()
                save(*a, **kw)
                if main:
                    _append(path, {"kind": "save", "session": session, "step": trainer.state.global_step,
                                   "seconds": round(time.perf_counter() - t, 6)})

            trainer._save_checkpoint = timed

    return CostMeter()


def _rate(num, seconds):
    return round(num / seconds, 3) if seconds else None


def summarize(out: Path, flops: int, peak: dict | None, memory_kind: str) -> dict:
    """The "cost" block of train_summary.json, from the ledger: per process, and summed over processes."""
    recs = read_ledger(out / LEDGER)
    sessions = []
    for s in (r for r in recs if r["kind"] == "session"):
        steps = [r for r in recs if r["kind"] == "step" and r["session"] == s["session"]]
        saves = [r for r in recs if r["kind"] == "save" and r["session"] == s["session"]]
        steady = [r for r in steps if not r["warmup"]]
        sessions.append({
            "session": s["session"], "resumed_from": s["resumed_from"], "steps": len(steps),
            "steady_steps": len(steady),
            "train_s": round(sum(r["seconds"] for r in steps), 6),
            "steady_train_s": round(sum(r["seconds"] for r in steady), 6),
            "tokens": sum(r["tokens"] for r in steps),
            "tokens_processed": sum(r["tokens_processed"] for r in steps),
            "samples": sum(r["samples"] for r in steps),
            "steady_tokens": sum(r["tokens"] for r in steady),
            "steady_tokens_processed": sum(r["tokens_processed"] for r in steady),
            "steady_samples": sum(r["samples"] for r in steady),
            "saves": len(saves), "save_s": round(sum(r["seconds"] for r in saves), 6),
            "peak_train_memory_mb": max((r["memory_mb"] for r in steps), default=None),
        })
    total = {k: sum(s[k] for s in sessions) for k in ("steps", "steady_steps", "train_s", "steady_train_s",
                                                      "tokens", "tokens_processed", "samples", "steady_tokens",
                                                      "steady_tokens_processed", "steady_samples", "saves", "save_s")}
    total["train_s"], total["steady_train_s"], total["save_s"] = (round(total[k], 6) for k in
                                                                  ("train_s", "steady_train_s", "save_s"))
    sec = total["steady_train_s"]
    processed_per_s = _rate(total["steady_tokens_processed"], sec)
    peak_tflops = (peak or {}).get("tflops")
    return {
        "warmup_steps_excluded_per_process": WARMUP_STEPS,
        "processes": len(sessions),
        **total,
        "tokens_per_second": _rate(total["steady_tokens"], sec),              # steady state, real tokens
        "tokens_processed_per_second": processed_per_s,                       # steady state, padding included
        "samples_per_second": _rate(total["steady_samples"], sec),
        "peak_train_memory_mb": max((s["peak_train_memory_mb"] for s in sessions
                                     if s["peak_train_memory_mb"] is not None), default=None),
        "memory_kind": memory_kind,
        "flops_per_token": flops, "flop_formula": FLOP_FORMULA,
        "matmul_peak_tflops": peak_tflops,
        # positions computed (padding included) are what the matmuls ran on
        "mfu": round(flops * processed_per_s / (peak_tflops * 1e12), 6) if processed_per_s and peak_tflops else None,
        "sessions": sessions,
    }
