"""One training entry point for every method: `train(run, max_steps=..., stop_at=...) -> TrainResult` (validation loss).

setup (data, model + method) -> transformers Trainer (loop, optimizer, schedule, checkpoints, resume,
accelerate/DDP) -> save -> summary. Outputs, at fixed paths under models/<experiment>/<model>/<method>/:
  config.json          resolved config + its hash (written first: a checkpoint from another config is discarded)
  checkpoints/         Trainer checkpoints every train.save_steps (the last train.save_total_limit kept)
  train_log.jsonl      one line per logged step: loss, lr, grad_norm, tokens/s, peak memory, a hash of its batch
  cost_log.jsonl       one line per optimizer step and checkpoint save, of every process of the run (cost.py)
  tensorboard/         train.report_to=tensorboard: the same steps as TensorBoard events (tracking.py)
  template_view.json   chat data: one training conversation as tokens, special or not, trained or not
  final/               the trained weights: full model, or the LoRA adapter (+ tokenizer)
  train_summary.json   written last: params, validation loss (+ perplexity), and the training cost: "cost" (cost.py:
                       steady-state tokens/s and samples/s of the optimizer steps alone, summed over every process
                       of a resumed run; peak memory inside steps; save and evaluation time; MFU). The top-level
                       wall_time_s / tokens_per_second / peak_memory_mb are the older whole-process figures (the
                       last process's loop including warm-up and saves; the peak after the final evaluation).
"""
from __future__ import annotations

import json
import math
import os
import resource
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from . import cost as cost_mod
from . import data as data_mod
from . import paths
from .config import RunConfig
from .io import atomic_dir, atomic_write_json, atomic_write_text, read_json
from .manifest import manifest, now
from .hub import check_run, revisions
from .tracking import trackers


@dataclass
class TrainResult:
    val_loss: float
    summary: dict
    output_dir: Path


def peak_memory_mb() -> float:
    """Peak memory so far: max allocated on the GPU, else the process's peak RSS."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _step_logger(log_path: Path, session: dict, stop_at: int | None = None):
    from transformers import TrainerCallback

    class StepLogger(TrainerCallback):
        """Per logged step to JSONL: loss, lr, grad_norm, tokens seen, tokens/s, peak memory."""

        def __init__(self):
            self.last_time = None
            self.last_tokens = 0

        def on_train_begin(self, args, state, control, **kw):
            self.last_time = time.time()
            self.last_tokens = state.num_input_tokens_seen
            session.update(t0=self.last_time, tokens0=state.num_input_tokens_seen)

        def on_log(self, args, state, control, logs=None, **kw):
            if not state.is_world_process_zero or logs is None or "loss" not in logs:
                return
            t = time.time()
            tokens = state.num_input_tokens_seen
            rec = {
                "step": state.global_step,
                "loss": logs["loss"],
                "lr": logs.get("learning_rate"),
                "grad_norm": logs.get("grad_norm"),
                "tokens_seen": tokens,
                "tokens_per_second": round((tokens - self.last_tokens) / max(t - self.last_time, 1e-9), 2),
                # positions the model computed since the last line, padding included (= the real tokens when
                # train.padding_free)
                "tokens_processed": session["counter"].take() if "counter" in session else None,
                # the token ids and labels this step trained on, hashed: equal across methods (tests/test_confound.py)
                "batch_sha256": session["digest"].take() if "digest" in session else None,
                "peak_memory_mb": round(peak_memory_mb(), 1),
                "elapsed_s": round(t - session["t0"], 2),
            }
            self.last_time, self.last_tokens = t, tokens
            with open(log_path, "a") as f:
                f.write(json.dumps(rec) + "\n")

        def on_step_end(self, args, state, control, **kw):
            if stop_at is not None and state.global_step >= stop_at:  # a search rung: stop here, checkpointed
                control.should_training_stop = control.should_save = True
            # Fault injection for tests/test_resume.py: a real SIGKILL at a chosen step.
            if os.environ.get("FTCOMPARE_KILL_AT_STEP") == str(state.global_step):
                os.kill(os.getpid(), 9)

        def on_save(self, args, state, control, **kw):
            # Called after Trainer finished writing (and rotating) checkpoints: only now is it complete.
            ckpt = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if state.is_world_process_zero and ckpt.is_dir():
                (ckpt / COMPLETE).write_text("ok\n")

    return StepLogger()


COMPLETE = ".ftcompare-complete"  # marker of a fully written checkpoint (Trainer's own writes are not atomic)


def _training_args(run: RunConfig, out: Path, max_steps: int):
    import torch
    from transformers import TrainingArguments

    t = run.train
    return TrainingArguments(
        output_dir=str(out / "checkpoints"),
        max_steps=max_steps,
        per_device_train_batch_size=t.per_device_train_batch_size,
        per_device_eval_batch_size=t.per_device_eval_batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        learning_rate=run.method.learning_rate,
        lr_scheduler_type=t.lr_scheduler_type,
        warmup_steps=t.warmup_steps,
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        optim=t.optim,
        logging_steps=t.logging_steps,
        save_strategy="steps",
        save_steps=t.save_steps,
        save_total_limit=t.save_total_limit,
        seed=t.seed,
        data_seed=t.seed,
        bf16=t.bf16,
        activation_checkpointing=t.gradient_checkpointing,  # every method alike (a speed setting, not a method)
        activation_checkpointing_kwargs={"use_reentrant": False},
        use_cpu=not torch.cuda.is_available(),
        dataloader_num_workers=t.dataloader_num_workers,
        include_num_input_tokens_seen="non_padding",
        remove_unused_columns=False,
        report_to=[],
        eval_strategy="no",
        save_only_model=False,
        disable_tqdm=False,
    )


def _collator(run: RunConfig, tokenizer):
    """Padded batches, or (train.padding_free) one flattened row per micro-batch with restarting position ids
    and no attention mask, so that attention stays within each example (TOOLCHAIN.md: exact same per-token
    log-probs; the Trainer must not pass use_cache=True or a mask, and it does not)."""
    if run.train.padding_free:
        from transformers import DataCollatorWithFlattening

        return DataCollatorWithFlattening(return_position_ids=True, separator_id=-100)
    return data_mod.collator(tokenizer)


class _PositionCounter:
    """Counts the positions the model computes (input_ids.numel(), padding included) and the examples (rows, or
    in a flattened row the position-id restarts), with a forward pre-hook: exact whatever the dataloader
    prefetches. `n` is taken by the step log; `total` and `samples` only grow (cost.py reads differences)."""

    def __init__(self, model):
        self.n = self.total = self.samples = 0
        model.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is not None:
            self.n += int(ids.numel())
            self.total += int(ids.numel())
            pos = kwargs.get("position_ids")
            flat = pos is not None and kwargs.get("attention_mask") is None and ids.shape[0] == 1
            self.samples += int((pos == 0).sum()) if flat else int(ids.shape[0])

    def take(self) -> int | None:
        n, self.n = self.n, 0
        return n or None


class _BatchDigest:
    """sha256 of the input_ids and labels of every training batch the model computed since the last logged step
    (a forward pre-hook, like _PositionCounter): what each step saw, comparable across methods and runs."""

    def __init__(self, model):
        import hashlib

        self._new = hashlib.sha256
        self.h = self._new()
        model.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs):
        if not module.training:
            return  # validation batches belong to no step
        for key in ("input_ids", "labels"):
            t = kwargs.get(key, args[0] if key == "input_ids" and args else None)
            if t is not None:
                self.h.update(key.encode() + t.detach().cpu().numpy().tobytes())

    def take(self) -> str:
        d, self.h = self.h.hexdigest()[:16], self._new()
        return d


def _last_checkpoint(out: Path, config_hash: str, target: int | None = None) -> str | None:
    """The last *complete* checkpoint of *this* config, to resume from. Checkpoints of another config are
    removed (resuming them would mix two runs), and so are partial ones (killed while being written), and
    those at or past `target` (the step to stop at: Trainer cannot resume at it without one step more)."""
    ckpt_dir = out / "checkpoints"
    cfg_file = out / "config.json"
    if not ckpt_dir.is_dir():
        return None
    if not cfg_file.is_file() or read_json(cfg_file).get("config_hash") != config_hash:
        shutil.rmtree(ckpt_dir, ignore_errors=True)  # every process of a distributed launch gets here
        return None
    complete = []
    for d in ckpt_dir.glob("checkpoint-*"):
        if (d / COMPLETE).is_file() and (target is None or int(d.name.split("-")[1]) < target):
            complete.append((int(d.name.split("-")[1]), d))
        else:
            shutil.rmtree(d, ignore_errors=True)
    return str(max(complete)[1]) if complete else None


def _trim_log(log_path: Path, resume: str | None) -> None:
    """A resumed run re-does the steps after its checkpoint: drop their old log lines."""
    if resume is None:
        log_path.unlink(missing_ok=True)
        return
    if log_path.is_file():
        step = int(Path(resume).name.split("-")[1])
        keep = [line for line in log_path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
        atomic_write_text(log_path, "".join(line + "\n" for line in keep))


def _is_main_process() -> bool:
    """Process 0 of a distributed launch (torchrun / accelerate set RANK), or the only process."""
    return int(os.environ.get("RANK", "0")) == 0


def _save_final(trainer, tokenizer, run: RunConfig, out: Path) -> None:
    """final/ appears complete or not at all. Every process takes part in save_model (FSDP and ZeRO-3 gather
    the weights for it) into one shared folder; process 0 adds the tokenizer and moves it into place."""
    shared = out / ".final.partial"
    main = trainer.is_world_process_zero()
    if main:
        shutil.rmtree(shared, ignore_errors=True)
        shared.mkdir()
    trainer.accelerator.wait_for_everyone()
    trainer.save_model(str(shared))
    trainer.accelerator.wait_for_everyone()
    if not main:
        return
    with atomic_dir(out / "final") as tmp:
        for f in shared.iterdir():
            os.replace(f, Path(tmp) / f.name)
        tokenizer.save_pretrained(str(tmp))
        if run.method.uses_adapter:  # peft stores the base path verbatim: make it absolute (TOOLCHAIN.md)
            cfg_path = Path(tmp) / "adapter_config.json"
            cfg = json.loads(cfg_path.read_text())
            from .assets import base_model_path

            cfg["base_model_name_or_path"] = base_model_path(run.model)
            cfg_path.write_text(json.dumps(cfg, indent=2))
    shutil.rmtree(shared, ignore_errors=True)


def is_done(run: RunConfig, out: Path | None = None) -> bool:
    out = out or run.dir
    summary = out / "train_summary.json"
    return summary.is_file() and read_json(summary).get("config_hash") == run.hash()


def train(run: RunConfig, max_steps: int | None = None, output_dir: Path | None = None,
          stop_at: int | None = None) -> TrainResult:
    """Train one (model, method) run for `max_steps` (default: the config's step budget), resuming from its
    last checkpoint. `stop_at`: stop (and checkpoint) at that step of the max_steps schedule, so a later call
    with a larger `stop_at` continues exactly where this one stopped (a search rung; ftcompare.search).
    Returns the validation loss (the number a hyperparameter search ranks by)."""
    check_run(run)  # hub model/dataset reachable at its pinned revision (seconds), before anything is written
    import torch
    from transformers import Trainer

    if max_steps is not None:
        run.train.max_steps = max_steps
    out = Path(output_dir or run.dir)
    out.mkdir(parents=True, exist_ok=True)
    config_hash = run.hash()
    if run.train.num_threads:
        torch.set_num_threads(run.train.num_threads)
    matmul_peak = cost_mod.matmul_peak()  # the MFU denominator, on this device with these threads (seconds)

    if stop_at is not None and not 0 < stop_at <= run.train.max_steps:
        raise ValueError(f"stop_at={stop_at} is outside 1..{run.train.max_steps}")
    resume = _last_checkpoint(out, config_hash, stop_at or run.train.max_steps)
    log_path = out / "train_log.jsonl"
    started = now()
    if _is_main_process():  # distributed launch: process 0 writes the run's files, every process trains
        _trim_log(log_path, resume)
        (out / "train_summary.json").unlink(missing_ok=True)
        atomic_write_json(out / "config.json", {"config_hash": config_hash, "config": run.to_dict()})

    from .modeling import build_for_training, count_params, load_tokenizer

    chat = run.data.format == "chat"
    tokenizer = load_tokenizer(run.model, chat=chat)
    train_ex = data_mod.load_split(run.data, "train")
    val_ex = data_mod.load_split(run.data, "val")
    train_ds, train_stats = data_mod.tokenize(train_ex, tokenizer, run.data, run.train.max_length,
                                              f"data '{run.data.name}' train")
    val_ds, val_stats = data_mod.tokenize(val_ex, tokenizer, run.data, run.train.max_length, f"data '{run.data.name}' val")
    if chat:  # what the tokenizer makes of a conversation, and which tokens are trained (a figure of the record)
        from .chat import prepare_tokenizer, template_view

        chat_info = prepare_tokenizer(tokenizer, run.model)
        if _is_main_process():
            atomic_write_json(out / "template_view.json",
                              template_view(tokenizer, train_ex[0]["messages"], run.model.alias, chat_info))

    model = build_for_training(run, tokenizer)
    trainable, total = count_params(model)
    from .modeling import precision

    precision_used = precision(model, run.train.bf16)
    print(f"[train] {run.experiment}/{run.label}: {trainable:,} trainable of {total:,} params "
          f"({100 * trainable / total:.2f}%), {len(train_ds)} train / {len(val_ds)} val examples, "
          f"{run.train.max_steps} steps" + (f", resuming from {Path(resume).name}" if resume else ""), flush=True)

    session = {"t0": time.time(), "tokens0": 0, "counter": _PositionCounter(model), "digest": _BatchDigest(model)}
    val_tokens = cost_mod.ValTokenLoss(model)
    n_frozen, n_trainable = cost_mod.linear_weights(model)
    main = _is_main_process()
    meter = cost_mod.cost_meter(out, cost_mod.start_session(out, resume) if main else 0, session["counter"],
                                int(os.environ.get("WORLD_SIZE", "1")), main)
    trainer = Trainer(
        model=model,
        args=_training_args(run, out, run.train.max_steps),
        train_dataset=train_ds,
        eval_dataset=val_ds,
        data_collator=_collator(run, tokenizer),
        processing_class=tokenizer,
        callbacks=[meter, _step_logger(log_path, session, stop_at), *trackers(run, out, resume)],
    )
    meter.wrap_saves(trainer)
    result = trainer.train(resume_from_checkpoint=resume)
    wall = time.time() - session["t0"]
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()  # the evaluation's peak apart from training's
    t_eval = time.perf_counter()
    val_loss = float(trainer.evaluate()["eval_loss"])
    val_token_loss = val_tokens.mean()  # every process takes part
    eval_s = time.perf_counter() - t_eval
    eval_peak = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None

    t_save = time.perf_counter()
    _save_final(trainer, tokenizer, run, out)
    final_save_s = time.perf_counter() - t_save
    if not trainer.is_world_process_zero():
        return TrainResult(val_loss=val_loss, summary={}, output_dir=out)

    steps = [json.loads(line) for line in log_path.read_text().splitlines()] if log_path.exists() else []
    tokens = trainer.state.num_input_tokens_seen
    summary = {
        "experiment": run.experiment,
        "model": run.model.alias,
        "method": run.method.name,
        "config_hash": config_hash,
        "max_steps": run.train.max_steps,
        "global_step": trainer.state.global_step,
        "examples_seen": trainer.state.global_step * run.train.per_device_train_batch_size
        * run.train.gradient_accumulation_steps * trainer.args.world_size,
        "tokens_seen": tokens,
        "tokens_processed": sum(s.get("tokens_processed") or 0 for s in steps) or None,  # padding included
        "padding_free": run.train.padding_free,
        # whole-process figures, kept for older readers: the last process's training loop including warm-up and
        # checkpoint saves, and the process's peak memory read after the final evaluation. The record uses "cost".
        "wall_time_s": round(wall, 2),
        "tokens_per_second": round((tokens - session["tokens0"]) / wall, 2),
        "peak_memory_mb": round(peak_memory_mb(), 1),
        "peak_memory_kind": "cuda_max_allocated" if torch.cuda.is_available() else "cpu_max_rss",
        "cost": {**cost_mod.summarize(out, cost_mod.flops_per_token(n_frozen, n_trainable), matmul_peak,
                                      meter.memory.kind),
                 "n_frozen_linear": n_frozen, "n_trainable_linear": n_trainable,
                 "eval_s": round(eval_s, 6), "final_save_s": round(final_save_s, 6),
                 "eval_peak_memory_mb": round(eval_peak, 1) if eval_peak is not None else None},
        "trainable_params": trainable,
        "precision": precision_used,  # parameter dtypes by kind, as trained (the precision policy)
        "activation_checkpointing": bool(getattr(trainer.model, "is_activation_checkpointing", False)),
        "total_params": total,
        "trainable_percent": round(100 * trainable / total, 4),
        "train_loss_first": steps[0]["loss"] if steps else None,
        "train_loss_last": steps[-1]["loss"] if steps else None,
        "train_loss_mean": result.training_loss,
        "val_loss": val_loss,  # Trainer's eval_loss: eval batches' mean token losses, averaged per example
        "val_token_loss": val_token_loss,  # the mean loss over every predicted validation token
        "val_perplexity": round(math.exp(val_token_loss), 6) if val_token_loss is not None else None,
        "n_train_examples": len(train_ds),
        "n_val_examples": len(val_ds),
        "data_fingerprint_train": data_mod.fingerprint(train_ex),
        "data_fingerprint_val": data_mod.fingerprint(val_ex),
        "data_format": run.data.format,
        "data_stats": {"train": train_stats, "val": val_stats},  # chat: conversations shortened/dropped to fit
        "resumed_from": Path(resume).name if resume else None,
        "started": started,
        "finished": now(),
        "manifest": manifest(seed=run.train.seed, hub=revisions(run), matmul_peak=matmul_peak),
    }
    atomic_write_json(out / "train_summary.json", summary)  # last: its presence means the run is done
    print(f"[train] done in {wall:.0f} s, {tokens} tokens, val_loss {val_loss:.4f} -> "
          f"{(out / 'train_summary.json').relative_to(paths.ROOT) if out.is_relative_to(paths.ROOT) else out}", flush=True)
    return TrainResult(val_loss=val_loss, summary=summary, output_dir=out)
